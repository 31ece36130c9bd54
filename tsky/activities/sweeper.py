"""The sweeper's activity: tears down the clusters whose job ended (the rules are in `tsky.ops.sweeping`),
releases pool workers held by ended jobs, and expires old logs."""

from __future__ import annotations

import time

from temporalio import activity
from temporalio.client import Client

from tsky.activities.heartbeat import heartbeating
from tsky.contract.activity_io import ActivityName, SweepInput, SweepResult
from tsky.ops.clouds import get_backend
from tsky.ops.pool_queries import cancel_orphaned_pool_workers, release_workers_of_ended_jobs
from tsky.ops.sweeping import UNKNOWN_JOB, expire_logs, survey
from tsky.spec.settings import Settings

logger = activity.logger


class SweeperActivities:
    def __init__(self, settings: Settings, client: Client):
        self.settings = settings
        self.client = client

    @activity.defn(name=ActivityName.SWEEP)
    async def sweep_clusters(self, inp: SweepInput) -> SweepResult:
        config = self.settings.jobs.sweeper
        async with heartbeating("survey"):
            for worker in await cancel_orphaned_pool_workers(self.client):
                logger.info("sweeper: %s outlived its pool; cancelled (it tears its cluster down)", worker)
            for worker in await release_workers_of_ended_jobs(self.client, config.grace_seconds):
                logger.info("sweeper: %s was held by an ended job; released to be replaced", worker)
            found = await survey(self.settings, self.client)
        for infra, error in found.errors.items():
            logger.warning("sweeper: could not list clusters on %s: %s", infra, error)
        now = time.time()
        orphans: dict[str, float] = {}
        torn_down: list[str] = []
        live = 0
        # Teardown goes by name: where another installation has a cluster of the same name on the same
        # backend, a backend that does not scope teardown by owner could take both down.
        shared = {(v.record.backend, v.record.name) for v in found.clusters if not v.ours}
        for view in found.clusters:
            if not view.orphaned:
                live += view.ours
                continue
            if (view.record.backend, view.record.name) in shared:
                logger.warning("sweeper: %s shares its name with another installation's cluster; left alone", view.key)
                continue
            since = inp.orphans_since.get(view.key, now)
            orphans[view.key] = since
            if now - since < config.grace_seconds:
                continue
            job = view.job.status if view.job else UNKNOWN_JOB
            logger.info("sweeper: tearing down %s (job %s: %s)", view.key, view.record.job_id, job)
            backend = get_backend(view.record.backend, self.settings)
            try:
                async with heartbeating(view.key):
                    await backend.teardown(view.record.name, None)
            except Exception as err:  # one stuck cluster must not keep the others alive: next sweep retries
                logger.warning("sweeper: teardown of %s failed: %s", view.key, err)
                continue
            del orphans[view.key]
            torn_down.append(view.key)
        try:
            async with heartbeating("log retention"):
                expired = await expire_logs(self.settings, self.client)
            if expired:
                logger.info("sweeper: deleted the logs of jobs %s (past jobs.logs.retention_days)", expired)
        except Exception as err:  # an unreachable log store must not stop cluster sweeps: next sweep retries
            logger.warning("sweeper: log retention failed: %s", err)
        return SweepResult(
            orphans_since=orphans, torn_down=torn_down, live=live, next_sweep_seconds=config.interval_seconds
        )
