"""A bug in a new release of the workflow code must not cost a running job anything: the workflow task
fails before any clean-up is scheduled, and a fixed worker replays the history and carries on."""

from __future__ import annotations

import asyncio
import sys

import pytest

from tests.workflows.fakes import FakeCloud, running
from tests.workflows.test_recovery_table import SPOT_JOB, request
from tsky.contract.ids import CONTROL_QUEUE
from tsky.spec.requests import Candidate
from tsky.spec.status import ManagedJobStatus as S
from tsky.workflows.managed_job import ManagedJobWorkflow

pytestmark = pytest.mark.asyncio


async def test_a_bug_leaves_the_job_intact_until_a_fixed_worker_resumes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    released = asyncio.Event()
    display_infra = Candidate.display_infra

    def buggy(self: Candidate) -> str:
        # The release's bug, hit right after the cluster is up (when the workflow records where it runs).
        if not released.is_set() and sys._getframe(1).f_code.co_name == "_run_attempts":
            raise RuntimeError("a bug in a new release")
        return display_infra(self)

    monkeypatch.setattr(Candidate, "display_infra", buggy)
    cloud = FakeCloud()
    async with running(cloud) as env:
        handle = await env.client.start_workflow(
            ManagedJobWorkflow.run, request(SPOT_JOB), id="tsky-job-1", task_queue=CONTROL_QUEUE
        )
        with env.auto_time_skipping_disabled():
            for _ in range(200):
                events = [e async for e in handle.fetch_history_events()]
                if any(e.HasField("workflow_task_failed_event_attributes") for e in events):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the bug never failed a workflow task")
            await asyncio.sleep(0.5)  # time for any (wrong) clean-up to show
            assert cloud.launched == ["train-1"] and cloud.torn_down == []  # the job is intact
            released.set()  # the fixed release is deployed
        result = await handle.result()
    assert result.status is S.SUCCEEDED
    assert cloud.launched == ["train-1"]  # resumed on its cluster, never launched again
    assert cloud.torn_down == ["train-1"]
