"""Heartbeating while an activity awaits something slow (a VM booting, a teardown confirming)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from temporalio import activity


@asynccontextmanager
async def heartbeating(*details: Any, every: float | None = None) -> AsyncIterator[None]:
    """Heartbeat `details` until the block ends (by default four times per heartbeat timeout), so a dead
    worker is noticed within the heartbeat timeout and a cancel request reaches the block."""
    if every is None:
        timeout = activity.info().heartbeat_timeout
        every = timeout.total_seconds() / 4 if timeout else 5.0

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


class ThrottledHeartbeat:
    """`activity.heartbeat` for a loop that polls often: it passes a beat on when the details changed
    and at most every `heartbeat timeout / 4` seconds, or when nothing changed for that long. The SDK
    already limits what reaches the server (every 0.8 x the timeout at most), but each call still costs
    the worker a task and an encoding; with thousands of watchers polling every few seconds that was
    most of an idle worker's CPU."""

    def __init__(self) -> None:
        timeout = activity.info().heartbeat_timeout
        self.every = timeout.total_seconds() / 4 if timeout else 5.0
        self._last: Any = None
        self._at = float("-inf")

    def __call__(self, details: Any) -> None:
        now = time.monotonic()
        if now - self._at >= self.every or (details != self._last and now - self._at >= self.every / 4):
            activity.heartbeat(details)
            self._last = details
            self._at = now
