"""Waits a user can see: every CLI step that can take seconds shows what it waits for, with the time
elapsed, and a wait that needs a worker ends with a clear message when no worker polls for the work
instead of hanging."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from tsky.cli.common import err_console
from tsky.contract.ids import CONTROL_QUEUE
from tsky.spec.settings import Settings

if TYPE_CHECKING:  # the Temporal SDK is imported by the waits themselves: `--dryrun` never loads it
    from temporalio.client import Client

T = TypeVar("T")

# Shown without a terminal only when a step outlasts this: quick steps print nothing.
_QUIET_SECONDS = 3.0
# How often a wait asks the server whether a worker polls, and how long none may poll before the wait
# gives up: a worker just started needs a few seconds before its first poll.
_CHECK_SECONDS = 3.0
NO_WORKER_GRACE_SECONDS = 20.0
# The server lists a poller until minutes after its last poll; an idle live worker polls again at
# least once a minute (the long-poll timeout), so an older poll means that worker is gone.
_POLLER_FRESH = timedelta(seconds=90)


class NoWorkerError(Exception):
    """Nothing polls the task queue a wait depends on; the message says where tsky looked and what to do."""


@contextmanager
def spinner(text: str, *, announce: bool = False) -> Iterator[None]:
    """A spinner with the elapsed time on a terminal; elsewhere one line, printed at once with `announce`,
    otherwise only once the step has taken a few seconds."""
    if err_console.is_terminal:
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=err_console, transient=True) as progress:
            progress.add_task(text, total=None)
            yield
        return
    timer = threading.Timer(0 if announce else _QUIET_SECONDS, lambda: err_console.print(f"{text}..."))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


async def workers_polling(client: Client, queue: str = CONTROL_QUEUE) -> int:
    """How many workers polled `queue` for workflow tasks lately."""
    from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    reply = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        ),
        timeout=timedelta(seconds=5),
    )
    now = datetime.now(UTC)
    return sum(
        1
        for p in reply.pollers
        if not p.HasField("last_access_time") or now - p.last_access_time.ToDatetime(UTC) < _POLLER_FRESH
    )


def _no_worker_message(s: Settings, why: str) -> str:
    where = f"{s.temporal.address or 'the embedded server'} (namespace {s.temporal.namespace})"
    if s.embedded:
        fix = f"run `tsky server up` (it restarts the embedded worker) and see {s.home / 'logs' / 'worker.log'}"
    else:
        fix = "start one with `tsky worker` on a host that reaches this Temporal service"
    return (
        f"No tsky worker is polling the task queue {CONTROL_QUEUE} on {where} ({why}), so nothing would "
        f"act on this. Nothing is lost: {fix}."
    )


async def _revive_embedded_stack(s: Settings) -> None:
    """Restart the embedded server or worker if either died (or the worker lost its server): reading two
    pid files, cheap enough for every check."""
    from tsky.client.embedded import ensure_up

    await asyncio.to_thread(ensure_up, s)


async def with_worker(client: Client, s: Settings, work: Awaitable[T], *, grace: float = NO_WORKER_GRACE_SECONDS) -> T:
    """Await `work`, which only a worker can complete. A dead embedded server or worker is restarted at
    once; after `grace` seconds with no worker polling the control queue, NoWorkerError ends the wait."""
    from temporalio.service import RPCError

    task = asyncio.ensure_future(work)
    missing_since: float | None = None
    try:
        while True:
            done, _ = await asyncio.wait([task], timeout=_CHECK_SECONDS)
            if done:
                return task.result()
            if s.embedded:
                await _revive_embedded_stack(s)
            try:
                polling = await workers_polling(client)
                why = "none polled in the last minute"
            except RPCError as err:
                polling, why = 0, f"the server did not answer: {err.message}"
            if polling:
                missing_since = None
                continue
            missing_since = missing_since or time.monotonic()
            if time.monotonic() - missing_since > grace:
                raise NoWorkerError(_no_worker_message(s, why))
    finally:
        task.cancel()
