"""The `plan_task` activity: the planner (planning.py, which the CLI imports without Temporal) for the workflow."""

from __future__ import annotations

import asyncio

from temporalio import activity

from tsky.activities.heartbeat import heartbeating
from tsky.contract.activity_io import ActivityName, PlanInput, PlanResult
from tsky.ops.infra_check import RecentInfraCheck
from tsky.ops.planning import plan_for_task
from tsky.spec.settings import Settings


class PlanningActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.infra = RecentInfraCheck(settings)

    @activity.defn(name=ActivityName.PLAN)
    async def plan_task(self, inp: PlanInput) -> PlanResult:
        # Milliseconds of file reads and arithmetic, but off the event loop all the same; heartbeats let
        # a dead worker be noticed within the heartbeat timeout rather than the start-to-close one.
        async with heartbeating("plan"):
            return await asyncio.to_thread(lambda: plan_for_task(inp.task, self.settings, self.infra.statuses()))
