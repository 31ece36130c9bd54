"""The survey behind `tsky status --all-infra` and the sweeper: every tsky cluster, with its job.

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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from tsky.contract import search_attributes as sa
from tsky.contract.ids import job_workflow_id
from tsky.ops.clouds import backend_names, get_backend
from tsky.ops.clouds.base import ClusterRecord, owner_of
from tsky.ops.infra_check import check_infra
from tsky.ops.log_store import log_store
from tsky.ops.pool_queries import live_pool_worker_clusters
from tsky.spec.settings import Settings

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
