"""Users and their API keys: authentication, creation, listing, revocation, the first admin.

A key is ``orch_<prefix>_<secret>``; only a SHA-256 of the whole key is stored. The prefix finds
the row without scanning; the hash is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.contracts.base import as_utc
from db.engine import Database
from db.errors import Conflict, NotFound
from db.tables import ApiKey, User, utcnow

KEY_SCHEME = "orch"


@dataclass(frozen=True)
class GeneratedKey:
    prefix: str
    plaintext: str
    key_hash: str


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def generate_key() -> GeneratedKey:
    prefix = secrets.token_hex(6)
    plaintext = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
    return GeneratedKey(prefix=prefix, plaintext=plaintext, key_hash=hash_key(plaintext))


def parse_prefix(plaintext: str) -> str | None:
    parts = plaintext.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_SCHEME or not parts[1]:
        return None
    return parts[1]


def matches(plaintext: str, key_hash: str) -> bool:
    return hmac.compare_digest(hash_key(plaintext), key_hash)


# Writing last_used_at on every request would make every read a write; once a minute is plenty.
LAST_USED_RESOLUTION = timedelta(minutes=1)


async def authenticate(session: AsyncSession, plaintext: str) -> tuple[User, ApiKey] | None:
    """The user owning this key and the key, or None when it is unknown, wrong or revoked."""
    prefix = parse_prefix(plaintext)
    if prefix is None:
        return None
    key = (await session.exec(select(ApiKey).where(ApiKey.prefix == prefix))).first()
    if key is None or key.revoked_at is not None or not matches(plaintext, key.key_hash):
        return None
    user = await session.get(User, key.user_id)
    if user is None:
        return None
    await _touch(session, key)
    return user, key


async def _touch(session: AsyncSession, key: ApiKey) -> None:
    now = utcnow()
    if key.last_used_at is not None and now - as_utc(key.last_used_at) < LAST_USED_RESOLUTION:
        return
    # Conditional, so concurrent requests with the same key write it once.
    stale = now - LAST_USED_RESOLUTION
    await session.exec(
        update(ApiKey)
        .where(
            col(ApiKey.id) == key.id,
            or_(col(ApiKey.last_used_at).is_(None), col(ApiKey.last_used_at) < stale),
        )
        .values(last_used_at=now)
        # Not evaluated in Python: SQLite hands back zone-less timestamps.
        .execution_options(synchronize_session=False)
    )
    await session.commit()


async def get_user(session: AsyncSession, user_id: str) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    return user


async def list_users(session: AsyncSession, *, telegram_id: int | None = None) -> list[User]:
    query = select(User).order_by(col(User.created_at))
    if telegram_id is not None:
        query = query.where(User.telegram_id == telegram_id)
    return list((await session.exec(query)).all())


async def create_user(
    session: AsyncSession, *, name: str, telegram_id: int | None = None, is_admin: bool = False
) -> User:
    user = User(name=name, telegram_id=telegram_id, is_admin=is_admin)
    session.add(user)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(f"a user with telegram_id {telegram_id} already exists") from None
    return user


async def create_key(session: AsyncSession, *, user_id: str, name: str) -> tuple[ApiKey, str]:
    """A new key of ``user_id``: the row, and the key's plaintext (shown once, never stored)."""
    await get_user(session, user_id)
    generated = generate_key()
    key = ApiKey(user_id=user_id, name=name, prefix=generated.prefix, key_hash=generated.key_hash)
    session.add(key)
    await session.commit()
    return key, generated.plaintext


async def list_keys(session: AsyncSession, *, user_id: str | None) -> list[ApiKey]:
    query = select(ApiKey).order_by(col(ApiKey.created_at))
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    return list((await session.exec(query)).all())


async def revoke_key(session: AsyncSession, key_id: str, *, owner_id: str | None) -> None:
    """Revoke a key (idempotent). ``owner_id`` limits it to that user's keys; None: any key."""
    key = await session.get(ApiKey, key_id)
    if key is None or (owner_id is not None and key.user_id != owner_id):
        # Someone else's key is reported missing rather than forbidden: no probing for ids.
        raise NotFound(f"API key {key_id} not found")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.add(key)
        await session.commit()


def session_key_name(chat_id: int) -> str:
    return f"po-session-{chat_id}"


async def issue_session_key(session: AsyncSession, *, user_id: str, chat_id: int) -> str:
    """A new key for the PO session of ``chat_id``, acting as ``user_id`` in that chat only;
    returns its plaintext. The chat's earlier session keys are revoked: only the Worker made
    last holds a working one."""
    await get_user(session, user_id)
    await session.exec(
        update(ApiKey)
        .where(col(ApiKey.chat_id) == chat_id, col(ApiKey.revoked_at).is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    generated = generate_key()
    session.add(
        ApiKey(
            user_id=user_id,
            name=session_key_name(chat_id),
            prefix=generated.prefix,
            key_hash=generated.key_hash,
            chat_id=chat_id,
        )
    )
    await session.commit()
    return generated.plaintext


async def admin_telegram_ids(session: AsyncSession) -> list[int]:
    """The Telegram ids of the admin users that have one: the chats told what concerns admins."""
    query = select(User.telegram_id).where(
        col(User.is_admin).is_(True), col(User.telegram_id).is_not(None)
    )
    return [int(telegram_id) for telegram_id in (await session.exec(query)).all() if telegram_id]


async def user_by_telegram_id(session: AsyncSession, telegram_id: int) -> User | None:
    return (await session.exec(select(User).where(User.telegram_id == telegram_id))).first()


BOOTSTRAP_USER = "admin"
BOOTSTRAP_KEY_NAME = "bootstrap"


async def ensure_admin_key(db: Database, key_file: Path) -> str:
    """Return a working admin key, creating the admin and the key file when needed.

    Idempotent: a key file whose key is still valid is kept, so restarts do not rotate it.
    """
    async with db.session() as session:
        if key_file.exists():
            existing = key_file.read_text().strip()
            row = (
                await session.exec(select(ApiKey).where(ApiKey.key_hash == hash_key(existing)))
            ).first()
            if row is not None and row.revoked_at is None:
                return existing
        admin = (
            await session.exec(
                select(User).where(col(User.is_admin).is_(True)).order_by(col(User.created_at))
            )
        ).first()
        if admin is None:
            admin = User(name=BOOTSTRAP_USER, is_admin=True)
            session.add(admin)
            await session.flush()
        key = generate_key()
        session.add(
            ApiKey(
                user_id=admin.id, name=BOOTSTRAP_KEY_NAME, prefix=key.prefix, key_hash=key.key_hash
            )
        )
        await session.commit()
    key_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = key_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.plaintext + "\n")
    tmp.replace(key_file)
    return key.plaintext
