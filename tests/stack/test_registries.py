"""How the stack configures the package caches: a private upstream's token reaches its cache's
environment only, never a configuration file, a command line or another service."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from core.settings import Settings
from stack import registries, services

TOKEN = "tok/en:with@odd%chars"


def with_tokens(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path,
        pypi_index_url="https://pypi.internal.example/simple/",
        pypi_index_token=TOKEN,
        npm_registry_url="https://npm.internal.example/",
        npm_registry_token=TOKEN,
    )


def test_the_pypi_token_is_only_in_proxpis_index_url(tmp_path: Path) -> None:
    settings = with_tokens(tmp_path)
    service = services.pypi_cache(settings)
    index = urlsplit(service.env["PROXPI_INDEX_URL"])
    # Percent-encoded, so a token with URL characters still reaches the index whole.
    assert (index.username, index.hostname, index.path) == (
        "__token__",
        "pypi.internal.example",
        "/simple/",
    )
    assert index.password == "tok%2Fen%3Awith%40odd%25chars"
    assert service.env["PROXPI_DOWNLOAD_TIMEOUT"] == str(registries.PROXPI_DOWNLOAD_TIMEOUT_S)
    assert TOKEN not in " ".join(service.argv) and "tok" not in service.address
    without = services.pypi_cache(Settings(home=tmp_path))
    assert without.env["PROXPI_INDEX_URL"] == "https://pypi.org/simple/"


def test_verdaccios_configuration_names_the_variable_not_the_token(tmp_path: Path) -> None:
    settings = with_tokens(tmp_path)
    path = registries.write_verdaccio_config(settings)
    text = path.read_text()
    assert TOKEN not in text and path.stat().st_mode & 0o077 == 0
    config = json.loads(text)  # JSON is YAML: what verdaccio reads
    uplink = config["uplinks"]["upstream"]
    assert uplink["url"] == "https://npm.internal.example/"
    assert uplink["auth"] == {"type": "bearer", "token_env": registries.VERDACCIO_TOKEN_ENV}
    assert config["url_prefix"] == "/registry/npm/"
    assert str(settings.registries_dir) in config["storage"]
    service = services.npm_cache(settings)
    assert service.env == {registries.VERDACCIO_TOKEN_ENV: TOKEN}
    assert (
        "auth"
        not in json.loads(registries.verdaccio_config(Settings(home=tmp_path)))["uplinks"][
            "upstream"
        ]
    )


def test_no_other_service_inherits_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_PYPI_INDEX_TOKEN", TOKEN)
    monkeypatch.setenv("ORCHESTRATOR_NPM_REGISTRY_TOKEN", TOKEN)
    settings = Settings(home=tmp_path)
    assert settings.pypi_index_token is not None  # read by the supervisor, which hands it on
    assert TOKEN not in json.dumps(services.child_env(settings))
    for service in services.applications(settings):
        assert TOKEN not in json.dumps(service.env), service.name
    assert TOKEN not in repr(settings)  # a SecretStr
