"""Pipelines, file syncing and per-job cleanup in the ManagedJob workflow, with fake activities on the
time-skipping server: which sync and cleanup steps run, in what order, on every ending."""

from __future__ import annotations

import asyncio

import pytest
from temporalio import activity
from temporalio.exceptions import ApplicationError

from tests.workflows.fakes import FakeCloud, running
from tests.workflows.test_recovery_table import _expect_cancelled, request, run_job
from tsky.contract.activity_io import ActivityName, ErrorType, SyncInput, SyncResult
from tsky.contract.ids import CONTROL_QUEUE
from tsky.spec.status import ManagedJobStatus as S
from tsky.spec.storage import BucketRef, BucketURL, UploadLocation
from tsky.workflows.managed_job import ManagedJobWorkflow

pytestmark = pytest.mark.asyncio

PIPE = """\
name: pipe
---
name: a
file_mounts:
  /ckpt:
    name: scratch-bucket
    persistent: false
  /data:
    name: s3-data
    store: s3
    mode: MOUNT
run: x
---
name: b
file_mounts:
  /ckpt:
    name: scratch-bucket
    persistent: false
run: y
"""


async def test_each_task_syncs_its_files_and_the_job_cleans_up_once() -> None:
    cloud = FakeCloud()
    result = await run_job(cloud, PIPE)
    assert [t.status for t in result.tasks] == [S.SUCCEEDED, S.SUCCEEDED]
    # No upload after the phases: an s3 MOUNT is live on the nodes and each phase flushes its own writes.
    assert cloud.syncs == [("a", "down"), ("b", "down")]
    assert cloud.launched == ["a-1", "b-1-t1"] and cloud.live_clusters() == set()
    # the ephemeral bucket is deleted once, after both tasks: tasks share it
    assert len(cloud.cleanups) == 1
    assert cloud.cleanups[0].buckets == [BucketRef(store="local", name="scratch-bucket")]


async def test_no_cleanup_step_when_a_job_has_nothing_to_clean() -> None:
    cloud = FakeCloud()
    result = await run_job(cloud, "name: plain\nrun: x\n")
    assert result.status is S.SUCCEEDED
    assert cloud.cleanups == [] and cloud.syncs == []


async def test_uploads_are_cleaned_up_when_a_task_fails_and_later_tasks_are_cancelled() -> None:
    cloud = FakeCloud(run_script=[[3]])
    req = request("name: pipe\n---\nname: a\nrun: x\n---\nname: b\nrun: y\n")
    where = BucketURL(store="s3", bucket="inter", prefix="job-1-abcd1234")
    req.uploads = [UploadLocation(bucket=where)]
    async with running(cloud) as env:
        result = await env.client.execute_workflow(
            ManagedJobWorkflow.run, req, id="tsky-job-1", task_queue=CONTROL_QUEUE
        )
    assert [t.status for t in result.tasks] == [S.FAILED, S.CANCELLED]
    assert result.status is S.FAILED
    assert [c.uploads for c in cloud.cleanups] == [[UploadLocation(bucket=where)]]


async def test_a_sync_precheck_error_fails_prechecks_and_still_cleans_up() -> None:
    class MissingBucket(FakeCloud):
        @activity.defn(name=ActivityName.SYNC_FILES)
        async def sync(self, inp: SyncInput) -> SyncResult:
            raise ApplicationError("bucket s3://nope does not exist", type=ErrorType.PRECHECK, non_retryable=True)

    cloud = MissingBucket()
    result = await run_job(cloud, PIPE)
    assert [t.status for t in result.tasks] == [S.FAILED_PRECHECKS, S.CANCELLED]
    assert "s3://nope does not exist" in (result.tasks[0].failure_reason or "")
    assert cloud.live_clusters() == set()
    assert len(cloud.cleanups) == 1


async def test_cancel_mid_pipeline_cancels_the_rest_tears_down_and_cleans_up() -> None:
    cloud = FakeCloud(run_blocks=True)
    req = request(PIPE)
    req.uploads = [UploadLocation(path="/nowhere/uploads/job-1-x")]
    async with running(cloud) as env:
        handle = await env.client.start_workflow(ManagedJobWorkflow.run, req, id="tsky-job-1", task_queue=CONTROL_QUEUE)
        with env.auto_time_skipping_disabled():
            await asyncio.wait_for(cloud.run_started.wait(), 30)
            await handle.cancel()
        state = await _expect_cancelled(handle)
    assert [t.status for t in state.tasks] == [S.CANCELLED, S.CANCELLED]
    assert cloud.torn_down == ["a-1"]
    assert len(cloud.cleanups) == 1 and cloud.cleanups[0].uploads == req.uploads
