"""The per-job controller log: the workflow's decisions, with times, in the log store.

A local activity, run by the workflow's own worker: cheap (one marker event, no task dispatch).
Lines carry sequence numbers so a retried call never writes a line twice.
"""

from __future__ import annotations

from temporalio import activity

from tsky.spec.activity_io import ActivityName, ControllerLogInput
from tsky.spec.logs import controller_log
from tsky.spec.settings import Settings


class ControllerLogActivities:
    def __init__(self, settings: Settings):
        self.settings = settings

    @activity.defn(name=ActivityName.CONTROLLER_LOG)
    async def append_controller_log(self, inp: ControllerLogInput) -> None:
        path = controller_log(self.settings.home, inp.job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        seq_file = path.with_name("controller.seq")
        written = int(seq_file.read_text()) if seq_file.exists() else inp.first_seq - 1
        fresh = inp.lines[max(0, written + 1 - inp.first_seq) :]
        if not fresh:
            return
        with path.open("a") as log:
            log.writelines(line + "\n" for line in fresh)
        seq_file.write_text(str(inp.first_seq + len(inp.lines) - 1))
