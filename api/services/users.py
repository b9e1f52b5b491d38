"""Users and their API keys: authentication, creation, listing, revocation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.models import ApiKey, ApiKeyCreated, User, UserCreate, utcnow
from api.problems import Conflict, NotFound
from api.services.keys import generate_key, matches, parse_prefix

# Writing last_used_at on every request would make every read a write; once a minute is plenty.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def as_utc(value: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


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


async def create_user(session: AsyncSession, data: UserCreate) -> User:
    user = User(name=data.name, telegram_id=data.telegram_id, is_admin=data.is_admin)
    session.add(user)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(f"a user with telegram_id {data.telegram_id} already exists") from None
    return user


async def create_key(session: AsyncSession, *, user_id: str, name: str) -> ApiKeyCreated:
    await get_user(session, user_id)
    generated = generate_key()
    key = ApiKey(user_id=user_id, name=name, prefix=generated.prefix, key_hash=generated.key_hash)
    session.add(key)
    await session.commit()
    return ApiKeyCreated.model_validate({**key.model_dump(), "key": generated.plaintext})


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


async def user_by_telegram_id(session: AsyncSession, telegram_id: int) -> User | None:
    return (await session.exec(select(User).where(User.telegram_id == telegram_id))).first()
