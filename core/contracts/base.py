"""The envelope every queue message shares, and the one-field ``data`` wire format."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from core.ids import new_id

CONTRACT_VERSION = "1"
DATA_FIELD = "data"


class ContractError(ValueError):
    """A message that cannot be accepted; ``reason`` says why in words a person can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Strict(BaseModel):
    """Unknown fields are rejected: a typo in a producer must not vanish silently."""

    model_config = ConfigDict(extra="forbid")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(Strict):
    version: Literal["1"] = Field(default="1", description="Contract version")
    correlation_id: str = Field(default_factory=new_id, description="Ties a whole conversation")
    timestamp: datetime = Field(default_factory=utcnow)
    request_id: str = Field(default_factory=new_id, description="Unique per message")
    callback_stream: str | None = Field(
        default=None, description="A Redis stream that also receives this work's progress"
    )

    def to_fields(self) -> dict[str, str]:
        """The message as Redis stream fields: one field ``data`` holding the JSON."""
        return {DATA_FIELD: self.model_dump_json()}

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> Self:
        """Parse stream fields; raise ContractError with a readable reason when they are wrong."""
        return decode_fields(cls, fields)


def decode_fields(model: Any, fields: dict[Any, Any]) -> Any:
    """Parse the ``data`` field of a stream entry into ``model`` (a class or a union type)."""
    raw = _field(fields, DATA_FIELD)
    if raw is None:
        raise ContractError(f"the message has no '{DATA_FIELD}' field")
    return decode_json(model, raw)


def decode_json(model: Any, raw: str | bytes) -> Any:
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError(f"'{DATA_FIELD}' is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ContractError(f"'{DATA_FIELD}' must hold a JSON object")
    version = payload.get("version")
    if version is not None and version != CONTRACT_VERSION:
        raise ContractError(
            f"unsupported contract version {version!r}; this consumer speaks "
            f"version {CONTRACT_VERSION!r}"
        )
    try:
        return _adapter(model).validate_python(payload)
    except ValidationError as exc:
        raise ContractError(describe_validation_error(exc)) from None


@cache
def _adapter(model: Any) -> TypeAdapter[Any]:
    return TypeAdapter(model)


def _field(fields: dict[Any, Any], name: str) -> Any:
    if name in fields:
        return fields[name]
    return fields.get(name.encode())


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "message"
        if error["type"] == "missing":
            parts.append(f"missing field '{where}'")
        elif error["type"] == "extra_forbidden":
            parts.append(f"unknown field '{where}'")
        else:
            parts.append(f"'{where}': {error['msg']}")
    return "; ".join(parts)
