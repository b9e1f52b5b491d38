"""Secrets at rest: a ``Vault`` encrypts them with Fernet (AES-128-CBC + HMAC-SHA256).

The key comes from ``ORCHESTRATOR_SECRET_KEY``, else from ``<home>/secret.key``, which the first
process to need it creates (mode 0600). Creation is atomic: a complete file is linked into place,
so two processes starting together end up with the same key, never with two.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from core.secret_files import ensure_secret_file
from core.settings import Settings


class VaultError(Exception):
    """A key that cannot be used, or a secret that this key cannot open."""


class Vault:
    def __init__(self, key: str | bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            # Said without the key: the message may end up in a log.
            raise VaultError(
                "the secret key is not a valid Fernet key (32 url-safe base64-encoded bytes)"
            ) from None

    def __repr__(self) -> str:
        return "Vault(<key hidden>)"

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode("ascii")

    def encrypt(self, text: str) -> str:
        return self._fernet.encrypt(text.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise VaultError(
                "cannot decrypt a stored secret: it was encrypted with another key (did "
                "ORCHESTRATOR_SECRET_KEY or <home>/secret.key change?), or it is damaged"
            ) from None

    @classmethod
    def from_settings(cls, settings: Settings) -> Vault:
        """The vault of ORCHESTRATOR_SECRET_KEY, else of ``<home>/secret.key`` (made if missing)."""
        if settings.secret_key is not None:
            try:
                return cls(settings.secret_key.get_secret_value().strip())
            except VaultError:
                raise VaultError(
                    "ORCHESTRATOR_SECRET_KEY is not a valid Fernet key (32 url-safe "
                    "base64-encoded bytes)"
                ) from None
        key = ensure_key_file(settings.secret_key_file)
        try:
            return cls(key)
        except VaultError:
            path = settings.secret_key_file
            raise VaultError(f"{path} does not hold a valid Fernet key") from None


def ensure_key_file(path: Path) -> str:
    """The key in ``path``; a new one written there (0600) first if there is none."""
    key = ensure_secret_file(path, Vault.generate_key)
    if not key:
        raise VaultError(f"{path} is empty; remove it to make a new key (stored secrets are lost)")
    return key
