"""The running-jobs limit (`jobs.controller.max_running_jobs`): one entity workflow grants slots.

A job whose request carries a limit asks for a slot before its first launch (`acquire`, sent by a local
activity with signal-with-start, so the first such job creates this workflow) and waits PENDING for the
`slot_granted` signal; it gives the slot back on every ending (`release`, which also withdraws a job
cancelled while it waits). Waiting jobs are granted as slots free up, higher `priority` first and in
job-id (submission) order within a priority, as SkyPilot's scheduler does. The limit is the
one of the latest request: a config change applies from the next submission on.

A holder that dies without releasing (a terminated workflow) is found by reconciling against the job
workflows' state in visibility while jobs wait; a grant to a job that no longer runs fails and frees its
slot at once. The workflow continues-as-new, carrying holders and waiters, well before its history or
outgoing-signal limits; signals arriving meanwhile are not lost (the server refuses a continue-as-new
while new signals are pending, and the next run gets them).
"""

from __future__ import annotations

import asyncio
import functools
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from tsky.contract.activity_io import ActivityName
    from tsky.contract.ids import job_workflow_id
    from tsky.contract.names import Query, Signal, WorkflowType
    from tsky.contract.scheduling import (
        EndedJobsInput,
        SchedulerState,
        SchedulerStatus,
        SlotRequest,
    )


_PATCH_LATE_WAITERS = "scheduler-reconciles-late-waiters"


@workflow.defn(name=WorkflowType.SCHEDULER)
class SchedulerWorkflow:
    @workflow.init
    def __init__(self, state: SchedulerState) -> None:
        self.reconcile_seconds = state.reconcile_seconds
        self.actions_per_run = state.actions_per_run
        self.limit = state.limit
        self.holders = set(state.holders)
        self.waiters = set(state.waiters)
        self.priorities = dict(state.priorities)
        self.actions = 0

    @workflow.signal(
        name=Signal.ACQUIRE_SLOT, description="A job asks for a running slot (answered by `slot_granted`)."
    )
    def acquire(self, req: SlotRequest) -> None:
        self.actions += 1
        self.limit = req.limit
        if req.job_id not in self.holders:
            self.waiters.add(req.job_id)
            if req.priority:
                self.priorities[req.job_id] = req.priority

    @workflow.signal(
        name=Signal.RELEASE_SLOT, description="A job ended, or was cancelled while waiting: free its slot."
    )
    def release(self, job_id: int) -> None:
        self.actions += 1
        self.holders.discard(job_id)
        self.waiters.discard(job_id)
        self.priorities.pop(job_id, None)

    @workflow.query(
        name=Query.SCHEDULER_STATUS,
        description="The limit, the jobs holding a slot, and the jobs waiting in grant order.",
    )
    def status(self) -> SchedulerStatus:
        return SchedulerStatus(limit=self.limit, holders=sorted(self.holders), waiters=self._grant_order())

    def _grant_order(self) -> list[int]:
        """Higher priority first; FIFO (job-id order) within a priority."""
        return sorted(self.waiters, key=lambda job_id: (-self.priorities.get(job_id, 0), job_id))

    def _free(self) -> int:
        return len(self.waiters) if self.limit is None else max(0, self.limit - len(self.holders))

    def _rotate(self) -> bool:
        return self.actions >= self.actions_per_run or workflow.info().is_continue_as_new_suggested()

    def _wakes(self, blocked: bool, late_waiters_reconciled: bool) -> bool:
        """Whether the loop has work: a slot for a waiter, time to rotate, or (with no waiter when it
        went to sleep) a first waiter behind full slots, whose wait needs the reconcile timer armed."""
        if (self.waiters and self._free() > 0) or self._rotate():
            return True
        return late_waiters_reconciled and not blocked and bool(self.waiters)

    @workflow.run
    async def run(self, state: SchedulerState) -> None:
        # Runs from before waited, with no waiter, only for a free slot: a job that came to wait behind
        # a holder that then ended unannounced was never reconciled (the timer below was never armed).
        late_waiters_reconciled = workflow.patched(_PATCH_LATE_WAITERS)
        while not self._rotate():
            if self.waiters and self._free():
                await self._grant()
                continue
            blocked = bool(self.waiters)  # every slot held: a silent holder would block them for ever
            try:
                await workflow.wait_condition(
                    functools.partial(self._wakes, blocked, late_waiters_reconciled),
                    timeout=timedelta(seconds=self.reconcile_seconds) if blocked else None,
                    timeout_summary="reconcile",
                )
            except TimeoutError:
                await self._reconcile()
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(
            SchedulerState(
                limit=self.limit,
                holders=sorted(self.holders),
                waiters=sorted(self.waiters),
                priorities={j: p for j, p in self.priorities.items() if j in self.waiters},
                reconcile_seconds=self.reconcile_seconds,
                actions_per_run=self.actions_per_run,
            )
        )

    async def _grant(self) -> None:
        # Histories from before priorities granted in job-id order (the same order when all are 0).
        order = self._grant_order() if workflow.patched("scheduler-grants-by-priority") else sorted(self.waiters)
        chosen = order[: self._free()]
        self.waiters.difference_update(chosen)
        for job_id in chosen:
            self.priorities.pop(job_id, None)
        self.holders.update(chosen)
        self.actions += len(chosen)

        async def tell(job_id: int) -> None:
            try:
                await workflow.get_external_workflow_handle(job_workflow_id(job_id)).signal(Signal.SLOT_GRANTED)
            except FailureError:
                self.holders.discard(job_id)  # the job ended before its turn: the slot goes to the next one

        await asyncio.gather(*(tell(job_id) for job_id in chosen))

    async def _reconcile(self) -> None:
        """Free the slots and places of jobs whose workflow closed without a word (e.g. terminated)."""
        ended: list[int] = await workflow.execute_activity(
            ActivityName.ENDED_JOBS,
            EndedJobsInput(job_ids=sorted(self.holders | self.waiters)),
            result_type=list[int],
            start_to_close_timeout=timedelta(minutes=2),
        )
        self.holders.difference_update(ended)
        self.waiters.difference_update(ended)
        for job_id in ended:
            self.priorities.pop(job_id, None)
