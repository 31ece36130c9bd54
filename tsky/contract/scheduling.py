"""The running-jobs limit's contract: what jobs and the scheduler workflow (`tsky-scheduler`) exchange.

Pure models, shared with the workflow sandbox, so a job pays nothing to import them.
"""

from __future__ import annotations

from pydantic import BaseModel

from tsky.contract.ids import SCHEDULER_WORKFLOW_ID

__all__ = ["SCHEDULER_WORKFLOW_ID"]  # its callers find the scheduler's id here too

WAITING_DETAILS = "Waiting for other jobs to launch"


class SlotRequest(BaseModel):
    job_id: int
    limit: int
    priority: int = 0  # `resources.priority` / `--priority`: higher is granted first, FIFO within a priority


class SchedulerState(BaseModel):
    """What one run of the scheduler hands to the next."""

    limit: int | None = None
    holders: list[int] = []
    waiters: list[int] = []
    priorities: dict[int, int] = {}  # waiters' priorities other than 0
    # While jobs wait and every slot is held, how often to look for holders that ended unannounced.
    reconcile_seconds: float = 60
    # Signals handled plus grants sent before continuing as new (a run may send at most 2,000 signals).
    actions_per_run: int = 1000


class SchedulerStatus(BaseModel):
    limit: int | None
    holders: list[int]
    waiters: list[int]  # in grant order


class EndedJobsInput(BaseModel):
    job_ids: list[int]
