"""Watching an idle pool worker: one long heartbeating activity per worker that returns only when the
worker's cluster is lost (a node preempted, stopped or gone, or unreachable past the status-check
window). A busy worker is watched by its job's run_and_watch as well; whichever notices first tells."""

from __future__ import annotations

import asyncio
import logging

from temporalio import activity

from tsky.activities.watch import ReachabilityWindow
from tsky.contract.activity_io import ActivityName, WatchClusterInput
from tsky.ops.clouds import get_backend
from tsky.spec.settings import Settings

logger = logging.getLogger(__name__)


class PoolActivities:
    def __init__(self, settings: Settings):
        self.settings = settings

    @activity.defn(name=ActivityName.WATCH_CLUSTER)
    async def watch_cluster(self, inp: WatchClusterInput) -> str:
        backend = get_backend(inp.cluster.backend, self.settings)
        window = ReachabilityWindow(inp.status_check_min_elapsed_seconds, inp.status_check_min_retries)
        every = max(inp.poll_seconds, backend.state_check_seconds)
        while True:
            pause = every
            try:
                states = await backend.node_states(inp.cluster)
                lost = [f"node {rank} is {state.value}" for rank, state in enumerate(states) if state.is_lost()]
                if lost:
                    return f"Cluster {inp.cluster.name} lost: {', '.join(lost)}"
                window.ok()
            except Exception as err:  # could not ask: lost only past the window
                activity.logger.warning("status check of %s failed: %s", inp.cluster.name, err)
                if window.failed():
                    return f"Cluster {inp.cluster.name} unreachable for {window.failures} checks: {err}"
                pause = window.backoff()
            activity.heartbeat()
            try:
                await asyncio.sleep(pause)
            except asyncio.CancelledError:
                details = activity.cancellation_details()
                if details is not None and details.cancel_requested:
                    return "stopped"  # the worker is being shut down: nothing to report, no noise in the log
                raise
