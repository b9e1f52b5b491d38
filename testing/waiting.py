"""Waiting on a condition, never on the clock: poll until true, fail clearly at a deadline."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(
    check: Callable[[], Awaitable[T]],
    what: str = ...,
    *,
    within: float = ...,
    interval: float = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T],
    what: str = ...,
    *,
    within: float = ...,
    interval: float = ...,
) -> T: ...


async def eventually(
    check: Callable[[], Any],
    what: str = "the condition",
    *,
    within: float = 30.0,
    interval: float = 0.05,
) -> Any:
    """Poll ``check`` (a coroutine function or a plain one) until it returns something truthy,
    and return that; fail at the deadline naming ``what`` and the last value seen."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)
