"""Liveness: the one route that needs no key, for supervisors and load balancers."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str = "ok"


@router.get("/health", summary="Is the API up")
async def health() -> Health:
    return Health()
