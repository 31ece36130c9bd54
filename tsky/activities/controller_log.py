"""The per-job controller log: the workflow's decisions, with times, in the log store.

A local activity, run by the workflow's own worker: cheap (one marker event, no task dispatch).
Lines carry sequence numbers so a retried call never writes a line twice.
"""

from __future__ import annotations

from temporalio import activity

from tsky.contract.activity_io import ActivityName, ControllerLogInput
from tsky.contract.logs import controller_log_key
from tsky.ops.log_store import log_store
from tsky.spec.settings import Settings


class ControllerLogActivities:
    def __init__(self, settings: Settings):
        self.logs = log_store(settings)

    @activity.defn(name=ActivityName.CONTROLLER_LOG)
    async def append_controller_log(self, inp: ControllerLogInput) -> None:
        await self.logs.append_lines(controller_log_key(inp.job_id), inp.first_seq, inp.lines)
