"""The first admin and their key, written into the home for the CLI to find."""

from __future__ import annotations

import os
from pathlib import Path

from sqlmodel import col, select

from api.db import Database
from api.models import ApiKey, User
from api.services.keys import generate_key, hash_key

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
