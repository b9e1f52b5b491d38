"""Where the gateway sends model API calls and the keys it adds to them.

Read apart from ``core.settings.Settings`` so the keys live only in the process that serves the
gateway. Base URLs have no ``/v1``: the gateway appends the path the agent asked for. The package
caches' URLs are where the gateway forwards a Worker's ``/registry/...`` requests.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.egress import parse_allowlist

# PyPI's index and the host of its files: the URLs a uv lockfile names.
PYPI_HOSTS = ("pypi.org", "files.pythonhosted.org")


class ModelPrice(BaseModel):
    """USD per million tokens. Cached input costs ``cache_read`` / ``cache_write`` when given."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float | None = Field(default=None, ge=0)
    cache_write: float | None = Field(default=None, ge=0)


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ORCHESTRATOR_", extra="ignore", populate_by_name=True
    )

    anthropic_base_url: str = "https://api.anthropic.com"
    openai_base_url: str = "https://api.openai.com"
    anthropic_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("ANTHROPIC_API_KEY", "ORCHESTRATOR_ANTHROPIC_API_KEY"),
    )
    openai_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "ORCHESTRATOR_OPENAI_API_KEY"),
    )
    anthropic_version: str = Field(
        default="2023-06-01", description="Sent when the agent names no anthropic-version"
    )
    gateway_prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="JSON {model: {input, output, cache_read?, cache_write?}} over the defaults",
    )
    # The package caches (stack/registries.py) a Worker reaches at /registry/<name>/ of its socket.
    pypi_cache_url: str = Field(
        default="http://127.0.0.1:8712", description="The PyPI cache (the stack sets it)"
    )
    npm_cache_url: str = Field(
        default="http://127.0.0.1:8713", description="The npm cache (the stack sets it)"
    )
    gateway_connect_timeout: float = Field(default=10.0, gt=0)
    gateway_read_timeout: float = Field(
        default=600.0, gt=0, description="Longest silence in an upstream answer (long thinking)"
    )
    egress_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(PYPI_HOSTS),
        description="Hosts a Worker may reach through the egress proxy: comma-separated names or "
        "addresses, *.example.com for the names under example.com; empty: none. The default, "
        "PyPI's index and files, is what uv's project commands need (see infra/workers.py)",
    )

    @field_validator("egress_allowlist", mode="before")
    @classmethod
    def _split_allowlist(cls, value: object) -> object:
        # The environment gives one comma-separated string, not JSON.
        return value.split(",") if isinstance(value, str) else value

    @field_validator("egress_allowlist")
    @classmethod
    def _check_allowlist(cls, value: list[str]) -> list[str]:
        return parse_allowlist(value)  # normalised; a bad entry raises, naming it

    @property
    def registries(self) -> dict[str, str]:
        """The package caches by the name a Worker's request path gives."""
        return {"pypi": self.pypi_cache_url, "npm": self.npm_cache_url}
