"""A cancel of a running phase in one activity: `stop_phase_and_teardown`.

Stopping the phase, letting the job's watcher store the processes' last lines, and tearing the cluster
down used to be two activities with the watcher's end between them, four workflow tasks per cancel: in a
bulk cancel the engine's rate of workflow tasks was the bound. Here they are one activity. The watcher
stays the only one that copies output (it alone knows its offsets); this activity stops the processes,
waits until the job's watcher has returned (in this process when it runs here, the usual case; else
asked from Temporal), and only then tears down, so no line the stopped processes printed is lost.
"""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.client import Client

from tsky.activities.heartbeat import heartbeating
from tsky.activities.watch import watcher_here
from tsky.contract.activity_io import ActivityName, StopAndTeardownInput
from tsky.ops.clouds import get_backend
from tsky.spec.settings import Settings

_WATCHERS = {ActivityName.SETUP.value, ActivityName.RUN.value}
# How often to ask whether the watcher has returned: soon at first (it returns at its next poll, ~2 s),
# then less often, so that a thousand cancels at once do not flood the server with questions.
_FIRST_ASK, _LAST_ASK = 0.5, 4.0


class CancelActivities:
    def __init__(self, client: Client, settings: Settings):
        self.client = client
        self.settings = settings

    @activity.defn(name=ActivityName.STOP_AND_TEARDOWN)
    async def stop_phase_and_teardown(self, inp: StopAndTeardownInput) -> None:
        stop, teardown = inp.stop, inp.teardown
        backend = get_backend(teardown.backend, self.settings)
        info = activity.info()
        assert info.workflow_id is not None and info.workflow_run_id is not None  # always a job's activity
        beside = watcher_here(info.workflow_id, info.workflow_run_id)  # looked up before the stop ends it
        async with heartbeating(teardown.cluster_name):
            try:
                nodes = stop.cluster.nodes
                await asyncio.gather(
                    *(backend.node(stop.cluster, n.rank).stop_phase(stop.phase, stop.grace_seconds) for n in nodes)
                )
            except Exception as err:  # e.g. unreachable: the watcher ends by its own window, teardown kills the rest
                activity.logger.warning("could not stop %s on %s: %s", stop.phase, stop.cluster.name, err)
            if beside is not None:
                await beside.ended.wait()
            if beside is None or not beside.final:
                await self._watcher_returned(info.workflow_id, info.workflow_run_id)
            await backend.teardown(teardown.cluster_name, teardown.cluster)
        activity.logger.info("cluster %s torn down", teardown.cluster_name)

    async def _watcher_returned(self, workflow_id: str, run_id: str) -> None:
        """Until the job has no watcher pending (it may run in another worker process, or be retried)."""
        handle = self.client.get_workflow_handle(workflow_id, run_id=run_id)
        pause = _FIRST_ASK
        while True:
            pending = (await handle.describe()).raw_description.pending_activities
            if not any(p.activity_type.name in _WATCHERS for p in pending):
                return
            await asyncio.sleep(pause)
            pause = min(_LAST_ASK, pause * 2)
