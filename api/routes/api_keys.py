"""API keys: create (the key is shown once), list, revoke."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response, status

from api.deps import CurrentUser, DbSession, full_key
from api.problems import Forbidden, problem_responses
from api.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyRead
from db import users
from db.tables import User

# A PO session's key cannot make keys: what it may do ends with its session.
router = APIRouter(
    prefix="/api-keys",
    tags=["api-keys"],
    dependencies=[Depends(full_key)],
    responses=problem_responses(403),
)


def _target_user(caller: User, user_id: str | None) -> str:
    """Whose keys: the caller's own, or anyone's for an admin."""
    if user_id is None or user_id == caller.id:
        return caller.id
    if not caller.is_admin:
        raise Forbidden("only an admin may manage another user's keys")
    return user_id


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a key",
    responses=problem_responses(404),
)
async def create_key(data: ApiKeyCreate, caller: CurrentUser, session: DbSession) -> ApiKeyCreated:
    owner = _target_user(caller, data.user_id)
    key, plaintext = await users.create_key(session, user_id=owner, name=data.name)
    return ApiKeyCreated.model_validate({**key.model_dump(), "key": plaintext})


@router.get("", summary="Keys of the caller (or of user_id, for an admin)")
async def list_keys(
    caller: CurrentUser, session: DbSession, user_id: str | None = None
) -> list[ApiKeyRead]:
    owner = _target_user(caller, user_id)
    return [ApiKeyRead.model_validate(k) for k in await users.list_keys(session, user_id=owner)]


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke a key",
    responses=problem_responses(404),
)
async def revoke_key(key_id: str, caller: CurrentUser, session: DbSession) -> Response:
    await users.revoke_key(session, key_id, owner_id=None if caller.is_admin else caller.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
