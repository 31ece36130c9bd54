"""Launching and tearing down clusters, and copying a task's files onto them.

`launch_cluster` tries the candidates in the order the workflow gave (the recovery policy decides that
order) and reports every failure with its kind, so the workflow can tell "no capacity anywhere, back off"
from "this can never work, fail now". `teardown_cluster` returns only once the backend confirms.
"""

from __future__ import annotations

import os
from pathlib import Path

from temporalio import activity

from tsky.activities.clouds import get_backend
from tsky.activities.clouds.base import CapacityError, PrecheckError
from tsky.activities.heartbeat import heartbeating
from tsky.spec.activity_io import (
    ActivityName,
    LaunchFailure,
    LaunchInput,
    LaunchResult,
    SyncInput,
    TeardownInput,
)
from tsky.spec.settings import Settings

logger = activity.logger


class ClusterActivities:
    def __init__(self, settings: Settings):
        self.settings = settings

    @activity.defn(name=ActivityName.LAUNCH)
    async def launch_cluster(self, inp: LaunchInput) -> LaunchResult:
        failures: list[LaunchFailure] = []
        for candidate in inp.candidates:
            backend = get_backend(candidate.cloud, self.settings)
            try:
                async with heartbeating(candidate.infra):
                    cluster = await backend.provision(inp.cluster_name, candidate, inp.num_nodes, inp.meta)
                return LaunchResult(cluster=cluster, chosen=candidate, failures=failures)
            except PrecheckError as err:
                failures.append(LaunchFailure(candidate=candidate, kind="precheck", message=str(err)))
            except Exception as err:  # capacity, or a fault worth retrying later: both mean "try elsewhere"
                kind = "capacity" if isinstance(err, CapacityError) else "error"
                failures.append(LaunchFailure(candidate=candidate, kind=kind, message=str(err) or repr(err)))
            # Whatever the failed try left behind (a half-made cluster) goes before the next one.
            async with heartbeating(candidate.infra):
                await backend.teardown(inp.cluster_name, None)
        return LaunchResult(failures=failures)

    @activity.defn(name=ActivityName.SYNC_FILES)
    async def sync_files(self, inp: SyncInput) -> None:
        """Copy the workdir and local file mounts to every node (idempotent: copies overwrite)."""
        backend = get_backend(inp.cluster.backend, self.settings)
        task = inp.task
        async with heartbeating("sync"):
            for node in inp.cluster.nodes:
                agent = backend.node(inp.cluster, node.rank)
                if isinstance(task.workdir, str):
                    await agent.sync_dir(task.workdir, "sky_workdir")
                for dest, source in task.file_mounts.items():
                    if not isinstance(source, str) or "://" in source:
                        continue  # buckets are mounted by the storage step
                    src = Path(os.path.expanduser(source))
                    if src.is_dir():
                        await agent.sync_dir(str(src), dest)
                    else:
                        await agent.sync_file(str(src), dest)

    @activity.defn(name=ActivityName.TEARDOWN)
    async def teardown_cluster(self, inp: TeardownInput) -> None:
        backend = get_backend(inp.backend, self.settings)
        async with heartbeating(inp.cluster_name):
            await backend.teardown(inp.cluster_name, inp.cluster)
        logger.info("cluster %s torn down", inp.cluster_name)
