"""A pool's state and the messages between a pool, its workers and the jobs it serves.

A pool is one long-lived workflow (`tsky-pool-<name>`, `PoolWorkflow`) that owns its workers; each worker's
lifecycle (provision, setup, health watch, teardown) is a child workflow (`PoolWorkerWorkflow`). They talk:
- CLI -> pool: the `apply` update (a new version), the `snapshot` and `current_version` queries, and
  cancel (`tsky jobs pool down`);
- job -> pool: `pool_request` (a worker, please) and `pool_release` (done with it, or withdrawn);
- pool -> job: `pool_grant` (the worker, or why there will be none);
- worker -> pool: `pool_worker_report` on each transition, and once more when its cluster is gone.
Every message carries a key (a job's acquisition key, a worker id), so a repeated one changes nothing.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from tsky.contract.activity_io import ClusterInfo
from tsky.contract.job import JobPolicy
from tsky.spec.pool import PoolSpec
from tsky.spec.requests import Candidate
from tsky.spec.status import PoolStatus, PoolWorkerStatus
from tsky.spec.task import Pipeline, Task

W = PoolWorkerStatus
# A worker that is, or may soon be, able to take jobs.
LIVE_STATUSES = frozenset({W.PENDING, W.PROVISIONING, W.STARTING, W.READY, W.BUSY})
# Deterministic failures: a replacement would fail the same way.
FAILED_FOR_GOOD = frozenset({W.FAILED_PROVISION, W.FAILED_SETUP})


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


def as_pool_job(pipeline: Pipeline) -> Pipeline:
    """A pipeline as a pool runs it: only `run` (and envs, secrets, resources). The workers did the pool's
    setup and hold its workdir and file mounts; a job's own are ignored (SkyPilot's rule)."""
    tasks = [t.model_copy(update={"setup": None, "workdir": None, "file_mounts": {}}) for t in pipeline.tasks]
    return pipeline.model_copy(update={"tasks": tasks})


def pool_not_found(name: str) -> str:
    """SkyPilot's reason for a job whose pool is gone (FAILED_NO_RESOURCE)."""
    return f"Pool '{name}' does not exist."


class PoolVersion(_Model):
    """One `apply`: what every worker of this version is made of."""

    version: int
    task: Task  # setup, resources, workdir, file mounts, envs; never `run`. Secrets redacted.
    spec: PoolSpec
    sealed_secrets: dict[str, str] = {}
    # A digest of everything but `pool:` (secret values included): equal digests mean an update in place.
    fingerprint: str
    user: str = ""  # who applied it (SKYPILOT_USER on the workers)
    applied_at: datetime | None = None


class PoolApply(_Model):
    """The `apply` update: create the pool, resize it, or roll its workers to a new configuration."""

    task: Task
    spec: PoolSpec
    sealed_secrets: dict[str, str] = {}
    fingerprint: str
    user: str = ""
    policy: JobPolicy = JobPolicy()


class ApplyResult(_Model):
    version: int
    created: bool
    in_place: bool  # no worker is recreated


class WorkerState(_Model):
    worker_id: int
    version: int
    cluster_name: str
    status: PoolWorkerStatus = PoolWorkerStatus.PENDING
    cluster: ClusterInfo | None = None
    candidate: Candidate | None = None
    launched_at: datetime | None = None
    lease: str | None = None  # the acquisition key of the job using it
    job_id: int | None = None
    draining: bool = False  # takes no new job; shut down once idle
    stop_requested: bool = False  # its workflow was asked to tear the cluster down
    gone: bool = False  # its workflow ended: no cluster left (kept only to show a failure)
    reason: str | None = None

    def live(self) -> bool:
        return self.status in LIVE_STATUSES and not self.stop_requested and not self.gone

    def serving(self) -> bool:
        return self.live() and not self.draining

    def idle(self) -> bool:
        return self.lease is None


class PoolRequest(_Model):
    """A job asking for a whole worker. The key is unique per (job, task, attempt)."""

    key: str
    job_id: int
    workflow_id: str


class PoolGrant(_Model):
    """The pool's answer: a worker, or (cluster None) the reason there will be none."""

    key: str
    workflow_id: str
    worker_id: int | None = None
    cluster: ClusterInfo | None = None
    candidate: Candidate | None = None
    error: str | None = None


class PoolRelease(_Model):
    """A job done with its worker (or withdrawing its request). `lost`: the worker was preempted or
    stopped answering under the job, so it must be replaced."""

    key: str
    lost: bool = False
    reason: str = ""


class WorkerReport(_Model):
    worker_id: int
    status: PoolWorkerStatus
    cluster: ClusterInfo | None = None
    candidate: Candidate | None = None
    reason: str | None = None
    gone: bool = False


class AutoscalerState(_Model):
    """The target size, and since when a different target has been wanted (hysteresis)."""

    target: int = 0
    upscale_since: datetime | None = None
    downscale_since: datetime | None = None


class PoolState(_Model):
    """Everything the pool knows; the input of each run (continue-as-new carries it over whole)."""

    name: str
    created_at: datetime | None = None
    version: PoolVersion | None = None
    workers: list[WorkerState] = []
    next_worker_id: int = 1
    queue: list[PoolRequest] = []  # jobs waiting for a worker
    outbox: list[PoolGrant] = []  # grants decided but not yet sent
    autoscaler: AutoscalerState = AutoscalerState()
    policy: JobPolicy = JobPolicy()
    version_failures: int = 0  # workers of the current version that failed for good, in a row
    shutting_down: bool = False

    def worker(self, worker_id: int) -> WorkerState | None:
        return next((w for w in self.workers if w.worker_id == worker_id), None)

    def leased(self, key: str) -> WorkerState | None:
        return next((w for w in self.workers if w.lease == key), None)


class WorkerInput(_Model):
    """What a PoolWorkerWorkflow needs: which worker it is and what to make it of."""

    pool: str
    worker_id: int
    cluster_name: str
    version: PoolVersion
    policy: JobPolicy = JobPolicy()


class PoolSnapshot(_Model):
    """What `tsky jobs pool status` shows (the `snapshot` query)."""

    name: str
    status: PoolStatus
    version: int
    created_at: datetime | None = None
    spec: PoolSpec | None = None
    requested: str = "-"  # SkyPilot's REQUESTED label of the workers' resources
    target: int = 0
    workers: list[WorkerState] = []
    queued_jobs: list[int] = []
