"""Secrets: values encrypted with the Vault, addressed everywhere else as ``secret:<id>``.

A value is never logged, returned, put in an event or in a queue message: only names and
references leave this module, and plaintext only through ``resolve_secret_ref`` (for the activity
that writes it to a server).
"""

from __future__ import annotations

import re

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.crypto import Vault
from core.logging import get_logger
from db.errors import Invalid, NotFound
from db.tables import Secret, SecretKind, utcnow

log = get_logger(__name__)

ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
NAME_MAX_LENGTH = 200
ENV_NAME_RULE = (
    "secret names are environment variable names: upper-case letters, digits and '_', "
    "not starting with a digit (e.g. DATABASE_URL)"
)
REF_PREFIX = "secret:"
_REF = re.compile(r"^secret:([0-9a-f]{32})$")


def secret_ref(secret: Secret) -> str:
    return f"{REF_PREFIX}{secret.id}"


def check_name(name: str) -> None:
    if len(name) > NAME_MAX_LENGTH or not ENV_NAME.match(name):
        raise Invalid(f"invalid secret name {name!r}: {ENV_NAME_RULE}")


async def _find(session: AsyncSession, project_id: str | None, name: str) -> Secret | None:
    owner = (
        col(Secret.project_id).is_(None)
        if project_id is None
        else col(Secret.project_id) == project_id
    )
    query = select(Secret).where(owner, col(Secret.name) == name)
    return (await session.exec(query)).first()


async def stage_secret(
    session: AsyncSession,
    vault: Vault,
    project_id: str | None,
    name: str,
    value: str,
    kind: SecretKind = SecretKind.env,
) -> tuple[Secret, bool]:
    """Add or replace a secret in the session's transaction (not committed); True if new."""
    ciphertext = vault.encrypt(value)
    secret = await _find(session, project_id, name)
    if secret is not None:
        secret.ciphertext = ciphertext
        secret.kind = kind
        secret.updated_at = utcnow()
        session.add(secret)
        return secret, False
    secret = Secret(project_id=project_id, name=name, kind=kind, ciphertext=ciphertext)
    session.add(secret)
    return secret, True


async def set_secret(
    session: AsyncSession,
    vault: Vault,
    project_id: str | None,
    name: str,
    value: str,
    kind: SecretKind = SecretKind.env,
) -> tuple[Secret, bool]:
    """Create or replace a secret and commit; returns it and whether it is new."""
    if kind is SecretKind.env:
        check_name(name)
    for attempt in (1, 2):
        secret, created = await stage_secret(session, vault, project_id, name, value, kind)
        try:
            await session.commit()
        except IntegrityError:
            # Another request created the same name between our look-up and our commit:
            # replace its value instead (last writer wins, as for any replacement).
            await session.rollback()
            if attempt == 2:
                raise
            continue
        log.info("secret stored", project_id=project_id, name=name, created=created)
        return secret, created
    raise AssertionError("unreachable")


async def list_secrets(session: AsyncSession, project_id: str) -> list[Secret]:
    query = select(Secret).where(col(Secret.project_id) == project_id).order_by(col(Secret.name))
    return list((await session.exec(query)).all())


async def get_secret(session: AsyncSession, project_id: str | None, name: str) -> Secret:
    secret = await _find(session, project_id, name)
    if secret is None:
        raise NotFound(f"no secret named {name!r}")
    return secret


async def delete_secret(session: AsyncSession, project_id: str, name: str) -> None:
    secret = await get_secret(session, project_id, name)
    await session.delete(secret)
    await session.commit()
    log.info("secret removed", project_id=project_id, name=name)


async def missing_secrets(session: AsyncSession, project_id: str, names: list[str]) -> list[str]:
    """Which of ``names`` the project has no secret for (for a deploy that needs them)."""
    have = {secret.name for secret in await list_secrets(session, project_id)}
    return [name for name in names if name not in have]


async def project_env(session: AsyncSession, vault: Vault, project_id: str) -> dict[str, str]:
    """The project's secrets by name, decrypted: for the activity that hands them to a server."""
    return {s.name: vault.decrypt(s.ciphertext) for s in await list_secrets(session, project_id)}


async def project_secret_refs(session: AsyncSession, project_id: str) -> dict[str, str]:
    """Each of the project's secret names and its ``secret:<id>`` reference."""
    return {secret.name: secret_ref(secret) for secret in await list_secrets(session, project_id)}


async def resolve_secret_ref(session: AsyncSession, vault: Vault, ref: str) -> str:
    """The plaintext a ``secret:<id>`` reference stands for; for the activity that uses it.

    Raises ValueError for a malformed reference, NotFound for an unknown one and
    core.crypto.VaultError when the key cannot open it.
    """
    match = _REF.match(ref)
    if match is None:
        # Not echoed: a value passed here by mistake must not reach a log.
        raise ValueError("not a secret reference: expected secret:<32 hex digits>")
    secret = await session.get(Secret, match.group(1))
    if secret is None:
        raise NotFound(f"secret {ref} not found")
    return vault.decrypt(secret.ciphertext)
