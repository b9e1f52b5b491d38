"""The envelope every queue message shares, and the one-field ``data`` wire format."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

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


# PostgreSQL cannot store NUL in text (nor look it up), so the API takes it nowhere.
NUL = "\x00"
NO_NUL = "text may not contain NUL (U+0000)"


def has_nul(value: Any) -> bool:
    """Whether a JSON value holds NUL in a string, at any depth."""
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, dict):
        return any(has_nul(key) or has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(has_nul(item) for item in value)
    return False


class JsonInput(BaseModel):
    """What a client sends as JSON, read as its JSON Schema reads it: a value of another JSON
    type is refused (no 0 for false, no "22" for 22, which lax validation would convert), and a
    number without a fraction is an integer (3.0 for 3), as in JSON Schema. Text with NUL is
    refused too (``NO_NUL``).

    Enum fields say ``strict=False``: their values arrive as strings, and strict validation of
    Python data wants the enum's members."""

    model_config = ConfigDict(strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _as_json_schema_reads_it(cls, value: Any) -> Any:
        if has_nul(value):
            raise ValueError(NO_NUL)
        return int(value) if isinstance(value, float) and value.is_integer() else value


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class ReadModel(BaseModel):
    """A record read from a database row (``from_attributes``), its timestamps in UTC."""

    model_config = ConfigDict(from_attributes=True)

    @field_validator("*", mode="after")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        return as_utc(value) if isinstance(value, datetime) else value


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
