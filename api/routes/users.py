"""Users: who the caller is; admins manage the others."""

from __future__ import annotations

from fastapi import APIRouter, Depends, status

from api.deps import AdminUser, CurrentUser, DbSession, full_key
from api.problems import Forbidden, problem_responses
from api.schemas import UserCreate, UserRead
from core.contracts.chat import TelegramId
from db import users

router = APIRouter(prefix="/users", tags=["users"], responses=problem_responses(403))


@router.get("/me", summary="The caller")
async def me(user: CurrentUser) -> UserRead:
    return UserRead.model_validate(user)


@router.get("", summary="All users, or the one with a Telegram ID (admin)")
async def list_users(
    _: AdminUser, session: DbSession, telegram_id: TelegramId | None = None
) -> list[UserRead]:
    # A list even when filtered: "no such user" is an empty answer, not an error (the bot asks
    # this for every stranger who writes to it).
    found = await users.list_users(session, telegram_id=telegram_id)
    return [UserRead.model_validate(user) for user in found]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a user (admin)",
    dependencies=[Depends(full_key)],
    responses=problem_responses(409),
)
async def create_user(data: UserCreate, _: AdminUser, session: DbSession) -> UserRead:
    user = await users.create_user(
        session, name=data.name, telegram_id=data.telegram_id, is_admin=data.is_admin
    )
    return UserRead.model_validate(user)


@router.get(
    "/{user_id}",
    summary="One user (the caller, or any for an admin)",
    responses=problem_responses(404),
)
async def get_user(user_id: str, caller: CurrentUser, session: DbSession) -> UserRead:
    if user_id != caller.id and not caller.is_admin:
        raise Forbidden("only an admin may read other users")
    return UserRead.model_validate(await users.get_user(session, user_id))
