"""The activities' names, inputs, outputs and error types: the contract between workflows and activities.

Workflows call activities by these names (never importing their bodies, which pull in cloud SDKs), and
tests register fakes under the same names.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from tsky.contract.job import JobPolicy
from tsky.spec.requests import Candidate
from tsky.spec.storage import BucketRef, UploadLocation
from tsky.spec.task import Task


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ActivityName(StrEnum):
    PLAN = "plan_task"
    LAUNCH = "launch_cluster"
    SYNC_FILES = "sync_files"
    SETUP = "run_setup"
    RUN = "run_and_watch"
    STOP_PHASE = "stop_phase"
    STOP_AND_TEARDOWN = "stop_phase_and_teardown"
    TEARDOWN = "teardown_cluster"
    WATCH_CLUSTER = "watch_cluster"
    CONTROLLER_LOG = "append_controller_log"
    CLEANUP_JOB = "cleanup_job"
    ALLOCATE_JOB_ID = "allocate_job_id"
    JOB_RESULT = "job_result"
    SWEEP = "sweep_clusters"
    REQUEST_SLOT = "request_running_slot"
    ENDED_JOBS = "ended_jobs"
    NOTIFY = "notify_webhook"  # tsky.activities.orchestration
    WAIT_FOR_JOBS = "wait_for_jobs"
    COPY_RUN_UPLOADS = "copy_run_uploads"


class ErrorType(StrEnum):
    """`ApplicationError.type` values the workflow tells apart. All are non-retryable at the activity
    level: the recovery policy in workflow code decides what happens next."""

    CAPACITY = "CapacityError"  # this place has no room now: try elsewhere, later
    PRECHECK = "PrecheckError"  # invalid request, no credentials: fail fast (FAILED_PRECHECKS)
    CLUSTER_LOST = "ClusterLost"  # positive evidence: a node is preempted, stopped or gone
    UNREACHABLE = "ClusterUnreachable"  # status checks failed past the window


class NodeInfo(_Model):
    rank: int
    ip: str  # what SKYPILOT_NODE_IPS shows
    host_id: str  # instance id, pod name, host name or local node directory
    ssh_port: int | None = None
    ssh_user: str | None = None


class ClusterInfo(_Model):
    """A provisioned cluster, as the backend that owns it needs to find it again."""

    name: str
    backend: str  # local | ssh | aws | gcp | k8s
    region: str
    zone: str | None = None
    instance_type: str
    use_spot: bool = False
    nodes: list[NodeInfo]
    extra: dict[str, str] = {}  # backend-specific handles (e.g. ssh pool, k8s namespace)


class JobMeta(_Model):
    """Who a cluster works for; tags clusters and fills SkyPilot's environment variables."""

    job_id: int
    job_name: str
    task_index: int
    task_name: str
    task_id: str
    task_ids: list[str]
    user: str
    rank: int = 0
    num_jobs: int = 1
    pool: str | None = None  # set for a pool's worker cluster (which belongs to no job)


class PlanInput(_Model):
    meta: JobMeta
    task: Task


class PlanResult(_Model):
    candidates: list[Candidate]
    # Set when no enabled infra can run any option: FAILED_PRECHECKS with this text.
    infeasible_reason: str | None = None


class LaunchInput(_Model):
    meta: JobMeta
    cluster_name: str
    launch: int
    candidates: list[Candidate]  # in the order to try them
    num_nodes: int
    # A job's first launch plans its task here first and tries the plan's candidates in order: one
    # activity (one engine round-trip) instead of a plan activity and a launch activity.
    plan: Task | None = None


class LaunchFailure(_Model):
    candidate: Candidate
    kind: str  # "capacity" | "precheck"
    message: str


class LaunchResult(_Model):
    cluster: ClusterInfo | None = None
    chosen: Candidate | None = None
    failures: list[LaunchFailure] = []
    plan: PlanResult | None = None  # the plan, when the launch made it (`LaunchInput.plan`)


class SyncInput(_Model):
    meta: JobMeta
    cluster: ClusterInfo
    task: Task
    # "down": workdir, file mounts and buckets onto the nodes (before setup). "up": the cached copies of
    # MOUNT / MOUNT_CACHED buckets back into their buckets (after the phases).
    direction: str = "down"


class SyncResult(_Model):
    notes: list[str] = []  # for the controller log: how each mount was realised where it is not obvious


class PhaseInput(_Model):
    """Start (or re-attach to) `setup` or `run` on every node and watch it to the end."""

    meta: JobMeta
    cluster: ClusterInfo
    phase: str  # "setup" | "run"
    attempt: int
    task: Task  # secrets redacted; the clear values are unsealed from sealed_secrets on the worker
    sealed_secrets: dict[str, str] = {}
    gpus_per_node: float = 0
    poll_seconds: float = 2
    status_check_min_elapsed_seconds: float = 60
    status_check_min_retries: int = 5
    # The phase's name on the nodes (default `<phase>-a<attempt>`): jobs sharing a pool worker need their own.
    node_key: str | None = None
    # Where the output goes, relative to $TSKY_HOME (default: the job's phase log); a pool worker's setup.
    log_path: str | None = None

    @property
    def key(self) -> str:
        """The phase's name on the nodes: what a watcher attaches to and a stop kills."""
        return self.node_key or f"{self.phase}-a{self.attempt}"


class PhaseResult(_Model):
    exit_codes: list[int]  # one per node, rank order


# How long a stopped phase's processes get between SIGTERM and SIGKILL, unless the cancel was graceful.
STOP_GRACE_SECONDS = 3.0


class StopPhaseInput(_Model):
    cluster: ClusterInfo
    phase: str
    grace_seconds: float = STOP_GRACE_SECONDS


class WatchClusterInput(_Model):
    """Watch an idle pool worker until a node is lost (or unreachable past the window)."""

    cluster: ClusterInfo
    poll_seconds: float = 2
    status_check_min_elapsed_seconds: float = 60
    status_check_min_retries: int = 5


# A TeardownInput.backend for a launch that planned its own candidates: the cluster may have been made on
# any infra the worker has enabled (the ones the planner considers), so it is removed from each.
ANY_ENABLED_BACKEND = "*"


class TeardownInput(_Model):
    cluster_name: str
    backend: str  # or ANY_ENABLED_BACKEND
    cluster: ClusterInfo | None = None


class StopAndTeardownInput(_Model):
    """A cancel of a running phase in one activity: stop the phase's processes, wait for the job's
    watcher to store their last lines and return, then tear the cluster down."""

    stop: StopPhaseInput
    teardown: TeardownInput


class ControllerLogInput(_Model):
    job_id: int
    first_seq: int  # sequence number of lines[0]; lines already written are skipped on retry
    lines: list[str]


class CleanupJobInput(_Model):
    job_id: int
    uploads: list[UploadLocation] = []
    buckets: list[BucketRef] = []  # `persistent: false` buckets


class AllocateJobInput(_Model):
    """A workflow asking tsky's worker for a job id (workflows cannot send updates themselves)."""

    request_id: str  # the same on every retry, so a retried allocation returns the same id


class AllocateJobResult(_Model):
    job_id: int
    user: str  # the worker's user and user hash, for jobs whose starter names none
    user_hash: str
    policy: JobPolicy  # from the worker's settings, as the CLI would fix it at submission


class JobResultInput(_Model):
    job_id: int


class SweepInput(_Model):
    # cluster key (`backend/region/name`) -> when a sweep first saw it without a live job (epoch seconds)
    orphans_since: dict[str, float] = {}


class SweepResult(_Model):
    orphans_since: dict[str, float] = {}
    torn_down: list[str] = []  # cluster keys
    live: int = 0  # clusters whose job is running (never touched)
    next_sweep_seconds: float = 60  # the worker's jobs.sweeper.interval_seconds
