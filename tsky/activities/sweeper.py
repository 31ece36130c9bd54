"""The sweeper's activity, and the survey behind `tsky status --all-infra`.

A survey lists the clusters tsky launched on every enabled infra and looks up each cluster's job
(`tsky-job-<id>`, one describe per job). The sweep tears down the clusters of this installation whose
job is terminal or unknown once they have been seen so for the grace period. Rules that keep it safe:
- a cluster whose job's workflow is running is never touched, whatever its state;
- a pool worker's cluster (no job's) is never touched while its worker workflow runs;
- a cluster launched by another installation (another namespace, another user's embedded server, see
  `ids.owner_id`) is never judged: its job ids are not ours;
- when a job cannot be looked up (Temporal unreachable), the sweep fails and deletes nothing;
- an infra that cannot be listed is skipped this time, the others are still swept;
- a cluster whose name another installation also uses on that backend is left alone (teardown is by name).

With `jobs.logs.retention_days` set, the sweep also deletes the logs of ended jobs last written before then.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from tsky.activities.clouds import backend_names, get_backend
from tsky.activities.clouds.base import ClusterRecord, owner_of
from tsky.activities.heartbeat import heartbeating
from tsky.activities.infra_check import check_infra
from tsky.activities.log_store import log_store
from tsky.activities.pool import (
    cancel_orphaned_pool_workers,
    live_pool_worker_clusters,
    release_workers_of_ended_jobs,
)
from tsky.spec import search_attributes as sa
from tsky.spec.activity_io import ActivityName, SweepInput, SweepResult
from tsky.spec.ids import job_workflow_id
from tsky.spec.settings import Settings

logger = activity.logger

UNKNOWN_JOB = "UNKNOWN"  # no such job in this namespace


@dataclass
class JobLookup:
    status: str  # the job's status (RUNNING, SUCCEEDED, ...), or UNKNOWN_JOB
    live: bool  # its workflow is still running: its cluster is its own business


@dataclass
class ClusterView:
    record: ClusterRecord
    ours: bool  # launched by this installation (only then is `job` looked up)
    job: JobLookup | None  # None: not looked up (not ours, no client, or no job id)

    @property
    def key(self) -> str:
        return f"{self.record.backend}/{self.record.region}/{self.record.name}"

    @property
    def orphaned(self) -> bool:
        """Ours, and its job is known not to be running: the sweeper's business."""
        return self.ours and self.job is not None and not self.job.live


@dataclass
class Survey:
    clusters: list[ClusterView]
    errors: dict[str, str]  # infra that could not be listed -> why


async def list_all_clusters(settings: Settings) -> tuple[list[ClusterRecord], dict[str, str]]:
    """The clusters on every enabled infra that has a backend; an infra that fails is reported, not fatal."""
    statuses = await asyncio.to_thread(check_infra, settings)
    known = backend_names()
    names = [s.name for s in statuses if s.enabled and s.name in known]
    results = await asyncio.gather(
        *(get_backend(name, settings).list_clusters() for name in names), return_exceptions=True
    )
    records: list[ClusterRecord] = []
    errors: dict[str, str] = {}
    for name, result in zip(names, results, strict=True):
        if isinstance(result, BaseException):
            errors[name] = str(result) or repr(result)
        else:
            records.extend(result)
    return records, errors


async def lookup_job(client: Client, job_id: int) -> JobLookup:
    try:
        description = await client.get_workflow_handle(job_workflow_id(job_id)).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return JobLookup(status=UNKNOWN_JOB, live=False)
        raise
    live = description.status == WorkflowExecutionStatus.RUNNING
    status = description.typed_search_attributes.get(sa.STATUS)
    if not status:
        status = description.status.name if description.status is not None else UNKNOWN_JOB
    return JobLookup(status=status, live=live)


async def survey(settings: Settings, client: Client | None) -> Survey:
    """Every tsky cluster on every enabled infra, with its job looked up (when `client` is given)."""
    records, errors = await list_all_clusters(settings)
    me = owner_of(settings)
    ours = [r.owner is None or r.owner == me for r in records]
    job_ids = sorted({r.job_id for r, mine in zip(records, ours, strict=True) if mine and r.job_id is not None})
    jobs: dict[int, JobLookup] = {}
    if client is not None:
        lookups = await asyncio.gather(*(lookup_job(client, job_id) for job_id in job_ids))
        jobs = dict(zip(job_ids, lookups, strict=True))
    views = [
        ClusterView(record=r, ours=mine, job=jobs.get(r.job_id) if r.job_id is not None else None)
        for r, mine in zip(records, ours, strict=True)
    ]
    if client is not None:
        workers = await live_pool_worker_clusters(client)
        for view in views:
            if view.ours and view.record.name in workers:
                view.job = JobLookup(status="POOL WORKER", live=True)
        # A cluster without a job id belongs to no job: as unknown as a job that never existed.
        for view in views:
            if view.ours and view.job is None:
                view.job = JobLookup(status=UNKNOWN_JOB, live=False)
    return Survey(clusters=views, errors=errors)


async def expire_logs(settings: Settings, client: Client) -> list[int]:
    """Delete the logs of jobs that ended and were last written more than the retention ago."""
    days = settings.jobs.logs.retention_days
    if days is None:
        return []
    store = log_store(settings)
    deleted = []
    for job_id in await store.job_logs_older_than(datetime.now(UTC) - timedelta(days=days)):
        if not (await lookup_job(client, job_id)).live:
            await store.delete_job(job_id)
            deleted.append(job_id)
    return deleted


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
