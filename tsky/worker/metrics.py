"""`tsky_jobs{status}`: how many managed jobs are in each in-progress status, for dashboards.

Counted from visibility (one count query per status) every `interval` seconds by each worker that
exports metrics; every worker reports the same global figure, so take `max` across workers. Ended jobs
are counted by the workflows themselves (`tsky_job_status_changes`, see tsky.workflows.metrics).
"""

from __future__ import annotations

import asyncio
import logging

from temporalio.client import Client
from temporalio.runtime import Runtime

from tsky.contract import search_attributes as sa
from tsky.contract.names import WorkflowType
from tsky.spec.status import ManagedJobStatus

logger = logging.getLogger("tsky.worker")

IN_PROGRESS = [
    ManagedJobStatus.PENDING,
    ManagedJobStatus.STARTING,
    ManagedJobStatus.RUNNING,
    ManagedJobStatus.RECOVERING,
    ManagedJobStatus.CANCELLING,
]


async def report_jobs_by_status(client: Client, runtime: Runtime, interval: float = 30) -> None:
    gauge = runtime.metric_meter.create_gauge("tsky_jobs", "Managed jobs in each in-progress status")
    while True:
        try:
            for status in IN_PROGRESS:
                running = f"WorkflowType = '{WorkflowType.MANAGED_JOB}' AND ExecutionStatus = 'Running'"
                query = f"{running} AND {sa.STATUS.name} = '{status}'"
                gauge.set((await client.count_workflows(query)).count, {"status": status.value})
        except Exception as err:  # a metric must never take the worker down; the next round retries
            logger.warning("could not count jobs by status: %s", err)
        await asyncio.sleep(interval)


_running: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly: keep them


def start_gauges(client: Client) -> None:
    """Start the gauge loop when this client exports metrics (it was given a runtime of its own)."""
    runtime = client.service_client.config.runtime
    if runtime is not None:
        task = asyncio.create_task(report_jobs_by_status(client, runtime))
        _running.add(task)
        task.add_done_callback(_running.discard)
