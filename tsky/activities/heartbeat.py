"""Heartbeating while an activity awaits something slow (a VM booting, a teardown confirming)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from temporalio import activity


@asynccontextmanager
async def heartbeating(*details: Any, every: float = 5.0) -> AsyncIterator[None]:
    """Heartbeat `details` every `every` seconds until the block ends, so a dead worker is noticed
    within the heartbeat timeout and a cancel request reaches the block."""

    async def beat() -> None:
        while True:
            activity.heartbeat(*details)
            await asyncio.sleep(every)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
