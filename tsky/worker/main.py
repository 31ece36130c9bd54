"""The worker process: every workflow on the control queue, the launch activities on the launch queue
(bounded: SkyPilot's launch limit), the watchers on the watch queue (thousands of cheap coroutines)."""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from tsky.activities import scheduling
from tsky.activities.cancel import CancelActivities
from tsky.activities.cluster import ClusterActivities
from tsky.activities.controller_log import ControllerLogActivities
from tsky.activities.job_ids import JobIdActivities
from tsky.activities.orchestration import OrchestrationActivities
from tsky.activities.plan_activity import PlanningActivities
from tsky.activities.pool import PoolActivities
from tsky.activities.sweeper import SweeperActivities
from tsky.activities.watch import PhaseActivities
from tsky.contract.ids import CONTROL_QUEUE, LAUNCH_QUEUE, WATCH_QUEUE
from tsky.spec.settings import Settings
from tsky.worker.interceptors import WorkerInterceptor
from tsky.worker.metrics import start_gauges
from tsky.worker.process import compile_workflow_modules, raise_open_files_limit, worker_identity
from tsky.workflows import WORKFLOWS

logger = logging.getLogger("tsky.worker")


def workflow_runner() -> SandboxedWorkflowRunner:
    """Our pure spec and contract packages are shared with the sandbox instead of re-imported for every workflow run:
    tens of KB per cached workflow instead of megabytes."""
    compile_workflow_modules()
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules("tsky.spec", "tsky.contract")
    )


def build_workers(client: Client, settings: Settings) -> list[Worker]:
    cluster = ClusterActivities(settings)
    phases = PhaseActivities(settings)
    cancel = CancelActivities(client, settings)
    pool = PoolActivities(settings)
    planning = PlanningActivities(settings)
    controller_log = ControllerLogActivities(settings)
    job_ids = JobIdActivities(client, settings)
    sweeper = SweeperActivities(settings, client)
    orchestration = OrchestrationActivities(client, settings)
    controller = settings.jobs.controller
    shutdown = timedelta(seconds=settings.worker.graceful_shutdown_seconds)
    common: dict[str, Any] = {
        "graceful_shutdown_timeout": shutdown,
        "interceptors": [WorkerInterceptor()],
        "identity": worker_identity(settings),  # carries this worker's limits, for `tsky server status`
    }
    return [
        Worker(
            client,
            task_queue=CONTROL_QUEUE,
            workflows=WORKFLOWS,
            activities=[
                controller_log.append_controller_log,
                scheduling.request_slot,
                scheduling.ended_jobs,
                # For workflows that start managed jobs as children (tsky.client.child).
                job_ids.allocate_job_id,
                job_ids.job_result,
                orchestration.notify_webhook,
            ],
            workflow_runner=workflow_runner(),
            max_cached_workflows=controller.max_cached_workflows,
            sticky_queue_schedule_to_start_timeout=timedelta(seconds=settings.worker.sticky_schedule_to_start_seconds),
            **common,
        ),
        Worker(
            client,
            task_queue=LAUNCH_QUEUE,
            activities=[
                planning.plan_task,
                cluster.launch_cluster,
                cluster.sync_files,
                cluster.teardown_cluster,
                cluster.cleanup_job,
                phases.run_setup,
                sweeper.sweep_clusters,
                orchestration.copy_run_uploads,
            ],
            max_concurrent_activities=settings.launch_concurrency(),
            **common,
        ),
        Worker(
            client,
            task_queue=WATCH_QUEUE,
            # A cancel's stop and teardown run here, beside the watchers, so a bulk cancel is not held to the
            # launch concurrency (a cloud's throttling of many teardowns at once is retried with backoff).
            activities=[
                phases.run_and_watch,
                phases.stop_phase,
                cancel.stop_phase_and_teardown,
                pool.watch_cluster,
                orchestration.wait_for_jobs,
            ],
            max_concurrent_activities=controller.watch_concurrency,
            # A watcher's heartbeats reach the server every 0.8 x its heartbeat timeout (24 s at the default
            # 30 s): about 80 RPCs/s for 2,000 running jobs, the main steady load on the server.
            max_heartbeat_throttle_interval=timedelta(seconds=60),
            **common,
        ),
    ]


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    from tsky.client.connect import connect
    from tsky.worker.sweeper import ensure_sweeper

    raise_open_files_limit()
    client = await connect(settings, metrics_port=settings.worker.metrics_port)
    start_gauges(client)  # tsky_jobs{status}, when this worker exports metrics
    workers = build_workers(client, settings)
    await ensure_sweeper(client, settings)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logger.info(
        "tsky worker up: launch concurrency %d, watch concurrency %d, cached workflows %d",
        settings.launch_concurrency(),
        settings.jobs.controller.watch_concurrency,
        settings.jobs.controller.max_cached_workflows,
    )
    runs = [asyncio.create_task(w.run()) for w in workers]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*runs, stopper], return_when=asyncio.FIRST_COMPLETED)
    logger.info("tsky worker shutting down (in-flight activities get %ss)", settings.worker.graceful_shutdown_seconds)
    await asyncio.gather(*(w.shutdown() for w in workers))
    for task in done:
        if task is not stopper and task.exception():
            raise task.exception()  # type: ignore[misc]
