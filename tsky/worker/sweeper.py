"""Starting the sweeper workflow from every worker, idempotently."""

from __future__ import annotations

import logging

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from tsky.contract.ids import CONTROL_QUEUE, SWEEPER_WORKFLOW_ID
from tsky.spec.settings import Settings
from tsky.workflows.sweeper import SweeperState, SweeperWorkflow

logger = logging.getLogger("tsky.worker")


async def ensure_sweeper(client: Client, settings: Settings) -> None:
    """Start `tsky-sweeper` unless it already runs; a worker that cannot start it still serves jobs."""
    if not settings.jobs.sweeper.enabled:
        return
    try:
        await client.start_workflow(
            SweeperWorkflow.run,
            SweeperState(interval_seconds=settings.jobs.sweeper.interval_seconds),
            id=SWEEPER_WORKFLOW_ID,
            task_queue=CONTROL_QUEUE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary="Tears down tsky clusters whose job ended or never existed",
        )
    except Exception:
        logger.exception("could not start the sweeper workflow %s", SWEEPER_WORKFLOW_ID)
