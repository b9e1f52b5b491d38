"""The package caches sealed Workers install through: proxpi for PyPI, verdaccio for npm.

Both are well-kept caching registries run as services of the embedded stack, on loopback ports
of their own; a Worker reaches them only through its task's gateway socket
(``/registry/pypi/...``, ``/registry/npm/...``: gateway/app.py). What they download stays under
``<home>/registries``, so the second Worker that installs a package downloads nothing upstream.

Credentials of a private upstream live only in the cache's own process environment: proxpi reads
its index URL (with the token as the basic-auth password) from the environment, verdaccio reads
the uplink's token from the variable its configuration names (``token_env``). Neither is ever
written to a file, a command line or a log (proxpi masks passwords in URLs it logs).

Each logs the requests it sends upstream, which is how anyone (and the tests) can see that a
cached install asked upstream for nothing: proxpi at DEBUG logs ``Refreshing '<package>'`` for an
index page and ``Downloading '<url>'`` for a file; verdaccio logs each uplink request as a JSON
line whose ``request.url`` is upstream's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from core.paths import REPO_ROOT
from core.settings import Settings

PYPI_CACHE = "pypi-cache"
NPM_CACHE = "npm-cache"
# Where scripts/install.sh installs verdaccio (with the machine's node and npm).
VERDACCIO_DIR = REPO_ROOT / ".verdaccio"
VERDACCIO_TOKEN_ENV = "ORCHESTRATOR_NPM_UPLINK_TOKEN"
# Long enough for any wheel or tarball: below it proxpi would send the client to the upstream
# file's URL instead, which a sealed Worker cannot reach.
PROXPI_DOWNLOAD_TIMEOUT_S = 600
# One process (the index cache is in its memory), threads for concurrent Workers.
GUNICORN_THREADS = 8
GUNICORN_TIMEOUT_S = 900


def pypi_cache_dir(settings: Settings) -> Path:
    return settings.registries_dir / "pypi"


def npm_cache_dir(settings: Settings) -> Path:
    return settings.registries_dir / "npm"


def with_credentials(url: str, username: str, password: str) -> str:
    """``url`` with ``username:password@`` in its authority (both percent-encoded)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}"
    return urlunsplit((parts.scheme, f"{userinfo}@{host}{port}", parts.path, parts.query, ""))


def pypi_cache_argv(settings: Settings, gunicorn: str) -> list[str]:
    return [
        gunicorn,
        *("--bind", f"{settings.host}:{settings.pypi_cache_port}"),
        *("--workers", "1", "--threads", str(GUNICORN_THREADS)),
        *("--timeout", str(GUNICORN_TIMEOUT_S)),
        # On SIGTERM: proxpi's download threads never end by themselves; nothing is lost (a
        # file is cached once it is whole), so do not wait long for them.
        *("--graceful-timeout", "3"),
        # proxpi's own logger class: gunicorn's lines go through proxpi's logging set-up.
        *("--logger-class", "proxpi.server._GunicornLogger"),
        "proxpi.server:app",
    ]


def pypi_cache_env(settings: Settings) -> dict[str, str]:
    """proxpi's whole configuration: it reads nothing else."""
    index = settings.pypi_index_url
    if settings.pypi_index_token is not None:
        token = settings.pypi_index_token.get_secret_value()
        index = with_credentials(index, settings.pypi_index_username, token)
    return {
        "PROXPI_INDEX_URL": index,
        "PROXPI_INDEX_TTL": str(settings.registry_metadata_ttl_s),
        "PROXPI_CACHE_DIR": str(pypi_cache_dir(settings) / "files"),
        "PROXPI_DOWNLOAD_TIMEOUT": str(PROXPI_DOWNLOAD_TIMEOUT_S),
        # DEBUG: each upstream request is a line ("Refreshing", "Downloading").
        "PROXPI_LOGGING_LEVEL": "DEBUG",
    }


def verdaccio_bin() -> Path:
    return VERDACCIO_DIR / "node_modules" / ".bin" / "verdaccio"


def verdaccio_config(settings: Settings) -> str:
    """verdaccio's configuration (JSON is YAML): storage in the home, one uplink, no token."""
    uplink: dict[str, object] = {
        "url": settings.npm_registry_url,
        # A package's versions are trusted this long: a second install asks upstream nothing.
        "maxage": f"{settings.registry_metadata_ttl_s}s",
        "cache": True,
        "timeout": "60s",
    }
    if settings.npm_registry_token is not None:
        # The name of a variable of verdaccio's own environment, never the token itself.
        uplink["auth"] = {"type": "bearer", "token_env": VERDACCIO_TOKEN_ENV}
    storage = npm_cache_dir(settings)
    config = {
        "storage": str(storage / "storage"),
        "plugins": str(storage / "plugins"),
        # Tarball URLs verdaccio writes into metadata: the Host the Worker used (the gateway
        # keeps it) and this prefix, so they lead back through the Worker's registry path.
        "url_prefix": "/registry/npm/",
        "uplinks": {"upstream": uplink},
        # Nobody signs up or publishes: the cache only reads.
        "auth": {"htpasswd": {"file": str(storage / "htpasswd"), "max_users": -1}},
        "packages": {
            "**": {"access": "$all", "publish": "$authenticated", "proxy": "upstream"},
        },
        "web": {"enable": False},
        "log": {"type": "stdout", "format": "json", "level": "http"},
    }
    return json.dumps(config, indent=2) + "\n"


def write_verdaccio_config(settings: Settings) -> Path:
    """Write verdaccio's configuration (0600) under its storage; returns its path."""
    root = npm_cache_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(verdaccio_config(settings))
    temporary.replace(path)
    return path


def npm_cache_argv(settings: Settings, config: Path) -> list[str]:
    listen = f"{settings.host}:{settings.npm_cache_port}"
    return [str(verdaccio_bin()), "--config", str(config), "--listen", listen]


def npm_cache_env(settings: Settings) -> dict[str, str]:
    if settings.npm_registry_token is None:
        return {}
    return {VERDACCIO_TOKEN_ENV: settings.npm_registry_token.get_secret_value()}
