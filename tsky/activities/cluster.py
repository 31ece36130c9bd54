"""Launching and tearing down clusters, copying a task's files onto them, and cleaning up after a job.

`launch_cluster` tries the candidates in the order the workflow gave (the recovery policy decides that
order; a job's first launch plans them itself, in the planner's order) and reports every failure with
its kind, so the workflow can tell "no capacity anywhere, back off" from "this can never work, fail now".
`teardown_cluster` returns only once the backend confirms.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from tsky.activities.heartbeat import heartbeating
from tsky.contract.activity_io import (
    ANY_ENABLED_BACKEND,
    ActivityName,
    CleanupJobInput,
    ErrorType,
    LaunchFailure,
    LaunchInput,
    LaunchResult,
    PlanResult,
    SyncInput,
    SyncResult,
    TeardownInput,
)
from tsky.ops.clouds import get_backend
from tsky.ops.clouds.base import CapacityError, PrecheckError
from tsky.ops.infra_check import RecentInfraCheck, check_infra
from tsky.ops.mounts import FileSync, storages
from tsky.ops.planning import plan_for_task
from tsky.ops.storage import get_store
from tsky.ops.uploads import UploadError, remove_uploads
from tsky.spec.settings import Settings
from tsky.spec.task import Task

logger = activity.logger


class ClusterActivities:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.infra = RecentInfraCheck(settings)

    def _plan(self, task: Task) -> PlanResult:
        return plan_for_task(task, self.settings, self.infra.statuses())

    @activity.defn(name=ActivityName.LAUNCH)
    async def launch_cluster(self, inp: LaunchInput) -> LaunchResult:
        plan: PlanResult | None = None
        candidates = inp.candidates
        if inp.plan is not None:
            async with heartbeating("plan"):
                plan = await asyncio.to_thread(self._plan, inp.plan)
            if plan.infeasible_reason or not plan.candidates:
                return LaunchResult(plan=plan)
            candidates = plan.candidates
        failures: list[LaunchFailure] = []
        for candidate in candidates:
            try:
                backend = get_backend(candidate.cloud, self.settings)
            except KeyError as err:  # a cloud tsky cannot launch on: never worth retrying
                failures.append(LaunchFailure(candidate=candidate, kind="precheck", message=str(err)))
                continue
            try:
                async with heartbeating(candidate.infra):
                    cluster = await backend.provision(inp.cluster_name, candidate, inp.num_nodes, inp.meta)
                return LaunchResult(cluster=cluster, chosen=candidate, failures=failures, plan=plan)
            except PrecheckError as err:
                failures.append(LaunchFailure(candidate=candidate, kind="precheck", message=str(err)))
            except Exception as err:  # capacity, or a fault worth retrying later: both mean "try elsewhere"
                kind = "capacity" if isinstance(err, CapacityError) else "error"
                failures.append(LaunchFailure(candidate=candidate, kind=kind, message=str(err) or repr(err)))
            # Whatever the failed try left behind (a half-made cluster) goes before the next one.
            async with heartbeating(candidate.infra):
                await backend.teardown(inp.cluster_name, None)
        return LaunchResult(failures=failures, plan=plan)

    @activity.defn(name=ActivityName.SYNC_FILES)
    async def sync_files(self, inp: SyncInput) -> SyncResult:
        """Down: the workdir, file mounts and buckets onto every node (idempotent: copies overwrite).
        Up: the nodes' cached copies of mounted buckets back into the buckets. See `mounts.py`.

        A problem the job's spec causes (a missing bucket, a bad path) fails fast as PrecheckError."""
        backend = get_backend(inp.cluster.backend, self.settings)
        task = inp.task
        scratch_root = self.settings.home / "tmp"
        scratch_root.mkdir(parents=True, exist_ok=True)
        try:
            async with heartbeating("sync", inp.direction):
                with tempfile.TemporaryDirectory(dir=scratch_root, prefix="sync-") as scratch:
                    files = FileSync(self.settings, inp.cluster.backend, Path(scratch))
                    agents = [backend.node(inp.cluster, node.rank) for node in inp.cluster.nodes]
                    if inp.direction == "up":
                        for dest, storage in storages(task):
                            where = files.location(storage)
                            for agent in agents:
                                await files.write_back(agent, storage, where, dest)
                        return SyncResult()
                    buckets = {dest: await files.bucket_of(storage) for dest, storage in storages(task)}
                    for agent in agents:
                        if isinstance(task.workdir, str):
                            await files.put(agent, task.workdir, "sky_workdir")
                        for dest, source in task.file_mounts.items():
                            if isinstance(source, str):
                                await files.put(agent, source, dest)
                            else:
                                await files.put_storage(agent, source, buckets[dest], dest)
                        await files.mount_buckets(agent)
                    return SyncResult(notes=files.notes)
        except PrecheckError as err:
            raise ApplicationError(str(err), type=ErrorType.PRECHECK, non_retryable=True) from err

    @activity.defn(name=ActivityName.CLEANUP_JOB)
    async def cleanup_job(self, inp: CleanupJobInput) -> None:
        """Remove what a job made for itself: its uploads (a prefix of the intermediate bucket, the whole
        temporary bucket, or its file-store directory) and its `persistent: false` buckets. Idempotent."""
        async with heartbeating("cleanup", inp.job_id):
            await asyncio.to_thread(self._cleanup, inp)

    def _cleanup(self, inp: CleanupJobInput) -> None:
        try:
            remove_uploads(self.settings, inp.uploads)
        except UploadError as err:
            raise ApplicationError(str(err), non_retryable=True) from err
        for ref in inp.buckets:
            get_store(ref.store, self.settings).delete_bucket(ref.name)
        logger.info("job %s cleaned up", inp.job_id)

    @activity.defn(name=ActivityName.TEARDOWN)
    async def teardown_cluster(self, inp: TeardownInput) -> None:
        async with heartbeating(inp.cluster_name):
            if inp.backend == ANY_ENABLED_BACKEND:
                statuses = await asyncio.to_thread(check_infra, self.settings)
                backends = [s.name for s in statuses if s.enabled]
            else:
                backends = [inp.backend]
            for name in backends:
                await get_backend(name, self.settings).teardown(inp.cluster_name, inp.cluster)
        logger.info("cluster %s torn down", inp.cluster_name)
