"""What the running workers actually use, for `tsky server status`: each worker polling the launch
queue (its identity carries its limits, see tsky.worker.process) and the running-jobs limit the
scheduler enforces. Asked from the Temporal service, so it shows workers on every host."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from rich.console import Console
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from tsky.contract.ids import LAUNCH_QUEUE, SCHEDULER_WORKFLOW_ID
from tsky.contract.names import Query
from tsky.contract.scheduling import SchedulerStatus
from tsky.spec.settings import Settings
from tsky.worker.process import parse_identity

_ASK_TIMEOUT = timedelta(seconds=5)


@dataclass
class LiveWorker:
    name: str  # pid@host
    limits: dict[str, int]
    last_poll: datetime | None


async def live_workers(client: Client) -> list[LiveWorker]:
    """The tsky workers that polled the launch queue lately (the server forgets a poller after a few
    minutes without a poll)."""
    reply = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=LAUNCH_QUEUE, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        ),
        timeout=_ASK_TIMEOUT,
    )
    workers = []
    for poller in reply.pollers:
        parsed = parse_identity(poller.identity)
        if parsed is None:
            continue
        seen = poller.last_access_time.ToDatetime(UTC) if poller.HasField("last_access_time") else None
        workers.append(LiveWorker(name=parsed[0], limits=parsed[1], last_poll=seen))
    return sorted(workers, key=lambda w: w.name)


async def running_limit(client: Client) -> SchedulerStatus | None:
    """The scheduler's limit, holders and waiters; None when no job ever asked for a slot."""
    handle = client.get_workflow_handle(SCHEDULER_WORKFLOW_ID)
    try:
        return await handle.query(Query.SCHEDULER_STATUS, result_type=SchedulerStatus, rpc_timeout=_ASK_TIMEOUT)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


def print_live_status(console: Console, s: Settings) -> None:
    """Print the workers' limits and the running-jobs limit, or why they could not be asked."""
    from tsky.client.connect import ConnectError, connect

    async def ask() -> tuple[list[LiveWorker], SchedulerStatus | str | None]:
        client = await connect(s)
        workers = await live_workers(client)
        try:
            limit: SchedulerStatus | str | None = await running_limit(client)
        except RPCError as err:  # e.g. no worker answers queries right now
            limit = f"unknown ({err.message})"
        return workers, limit

    try:
        workers, limit = asyncio.run(ask())
    except (ConnectError, RPCError) as err:
        console.print(f"Workers:         unknown: the Temporal service did not answer ({err})")
        return
    now = datetime.now(UTC)
    console.print(f"Workers:         {len(workers)} polling {LAUNCH_QUEUE}" + ("" if workers else " (none)"))
    for worker in workers:
        limits = worker.limits
        ago = f", last poll {(now - worker.last_poll).total_seconds():.0f}s ago" if worker.last_poll else ""
        console.print(
            f"  {worker.name}: launch concurrency {limits.get('launch', '?')}, "
            f"watch concurrency {limits.get('watch', '?')}, cached workflows {limits.get('cache', '?')}{ago}"
        )
    if limit is None:
        console.print("Running jobs:    no limit in force (no job was submitted with jobs.controller.max_running_jobs)")
    elif isinstance(limit, str):
        console.print(f"Running jobs:    limit {limit}")
    else:
        console.print(
            f"Running jobs:    limit {limit.limit} (from the latest submission): "
            f"{len(limit.holders)} holding a slot, {len(limit.waiters)} waiting"
        )
