"""Cleanup that a cancel must not cut short, for workflow code (docs/architecture.md, "Changing a workflow").

Cancelling a workflow cancels the task that awaits an activity, which cancels the activity: a teardown
in flight would be abandoned. Running the work in its own task and awaiting it through
`asyncio.shield` keeps it going.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


async def shielded(work: Callable[[], Awaitable[None]]) -> None:
    """Run `work` to completion even if the workflow is cancelled meanwhile; then re-raise the cancel."""
    task = asyncio.ensure_future(work())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


async def to_the_end(work: Callable[[], Awaitable[None]]) -> None:
    """Run `work` to completion whatever cancel requests arrive meanwhile, and swallow them: for work
    that is itself the answer to a cancel (a worker tearing down because it was told to stop)."""
    task = asyncio.ensure_future(work())
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    task.result()
