"""Settings: `$TSKY_HOME/config.yaml` (SkyPilot's key names where one exists) plus `TSKY_*` variables.

Loading reads files, so it is a function, never done at import. Workflows never load settings: the
values that steer a job's decisions travel in its request (`JobPolicy`), so every worker replays a job
the same way whatever its own config says.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from tsky.spec.status import ManagedJobStatus


def _factory_path(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
        raise ValueError(f"{value!r} is not `package.module:callable` (e.g. `mycompany.tsky_hooks:addresses`)")
    return value


FactoryPath = Annotated[str, AfterValidator(_factory_path)]  # a callable the worker imports


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ControllerSettings(_Section):
    # How many provision/setup/teardown activities one worker process runs at once.
    # SkyPilot launches at most 4 x vCPU at a time; None means that default for this host.
    launch_concurrency: int | None = Field(default=None, ge=1)
    # How many jobs may be RUNNING at once across all workers; None means no limit.
    max_running_jobs: int | None = Field(default=None, ge=1)
    # How many run_and_watch activities one worker process may run at once.
    watch_concurrency: int = Field(default=5000, ge=1)
    # Workflows kept in the worker's cache; sized for the number of live jobs.
    max_cached_workflows: int = Field(default=5000, ge=0)


class StatusCheckSettings(_Section):
    # A cluster that cannot be reached is declared lost only after BOTH budgets are spent.
    min_elapsed_seconds: float = Field(default=60, ge=0)
    min_retries: int = Field(default=5, ge=0)


class LaunchBackoffSettings(_Section):
    initial_seconds: float = Field(default=60, ge=0)
    multiplier: float = Field(default=1.6, ge=1)
    max_seconds: float = Field(default=300, ge=0)
    jitter: float = Field(default=0.4, ge=0, le=1)


class WatchSettings(_Section):
    poll_seconds: float = Field(default=2, gt=0)
    # Stream each node's output over one long-lived channel where the node can (SSH), instead of two
    # commands per poll; false polls (e.g. nodes behind a firewall that cuts idle sessions).
    stream: bool = True
    heartbeat_timeout_seconds: float = Field(default=30, gt=0)


class SweeperSettings(_Section):
    """The sweeper: tears down tsky-tagged clusters whose job ended or never existed (leak backstop)."""

    enabled: bool = True
    interval_seconds: float = Field(default=60, gt=0)
    # How long a cluster must be seen without a live job before it is torn down: room for the job's
    # own teardown, and for a job that is just being started.
    grace_seconds: float = Field(default=300, ge=0)


class LogsSettings(_Section):
    """Where job and controller logs live (see tsky.ops.log_store)."""

    # `local`: $TSKY_HOME/logs on the worker (one host). `s3://bucket/prefix` or `gs://bucket/prefix`: any
    # host with access reads them (S3-compatible stores: AWS_ENDPOINT_URL).
    store: str = Field(default="local", pattern=r"^(local|s3://[^/]+.*|gs://[^/]+.*)$")
    # Days to keep a job's logs after their last write; the sweeper deletes older ones. None: forever.
    retention_days: float | None = Field(default=None, gt=0)


class NotifySettings(_Section):
    """Webhooks every job of this user POSTs its transitions to (besides `jobs launch --notify URL`)."""

    urls: list[str] = []
    # Only these statuses (e.g. [SUCCEEDED, FAILED]); empty: every transition.
    statuses: list[ManagedJobStatus] = []


class JobsSettings(_Section):
    controller: ControllerSettings = ControllerSettings()
    status_check: StatusCheckSettings = StatusCheckSettings()
    launch_backoff: LaunchBackoffSettings = LaunchBackoffSettings()
    watch: WatchSettings = WatchSettings()
    sweeper: SweeperSettings = SweeperSettings()
    logs: LogsSettings = LogsSettings()
    bucket: str | None = Field(default=None, pattern=r"^(https|s3|gs|r2|cos|local)://.+")
    force_disable_cloud_bucket: bool = False
    notify: NotifySettings = NotifySettings()


class LocalInstanceType(_Section):
    name: str
    vcpus: float | None = None  # None: this host's
    memory_gb: float | None = None  # None: this host's
    accelerators: dict[str, float] = {}
    price: float = 0.0
    spot_price: float | None = None


class LocalRegion(_Section):
    name: str
    zones: list[str] = []
    capacity_nodes: int | None = Field(default=None, ge=0)  # None: unlimited
    spot: bool = True
    instance_types: list[LocalInstanceType] = [LocalInstanceType(name="local")]
    # How long a new cluster takes to come up here (a VM's boot time); 0: at once.
    provision_seconds: float = Field(default=0.0, ge=0)


class LocalSettings(_Section):
    """The `local` infra: a simulator of a multi-region cloud made of process groups on this host."""

    regions: list[LocalRegion] = [LocalRegion(name="local")]
    # Chance per status check that a spot node is preempted (chaos); 0 disables.
    spot_preemption_probability: float = Field(default=0.0, ge=0, le=1)


class NodeShapeSettings(_Section):
    """What one node offers, declared for the planner where it cannot be known offline."""

    vcpus: float | None = Field(default=None, gt=0)
    memory_gb: float | None = Field(default=None, gt=0)
    accelerators: dict[str, float] = {}


class KubernetesSettings(_Section):
    """The `k8s` infra: one pod per node, in the kubeconfig's current context or `allowed_contexts`."""

    allowed_contexts: list[str] | None = None  # None: only the current context (SkyPilot's default)
    namespace: str = "default"
    # Any image with bash, tar and coreutils; tsky execs its phases in the pod.
    image: str = "python:3.11-slim"
    # Seconds a pod may stay unschedulable before the launch counts as "no capacity" and tries elsewhere.
    provision_timeout: float = Field(default=10, gt=0)
    # How often watchers ask the API server about their pods: one pod list per namespace for all of them.
    state_check_seconds: float = Field(default=10, gt=0)
    # How spot pods reach spot nodes; k8s offers spot only when one of these is set.
    spot_node_selector: dict[str, str] = {}
    spot_tolerations: list[dict[str, Any]] = []
    # A node label whose value names the GPU type (e.g. skypilot.co/accelerator): GPU pods select it.
    accelerator_label: str | None = None
    # Per context, what one node offers; without it the planner cannot promise GPUs there.
    node_shapes: dict[str, NodeShapeSettings] = {}
    # How a pod of a task that mounts a bucket live (MOUNT, MOUNT_CACHED) gets /dev/fuse: the extended
    # resource a FUSE device plugin advertises (SkyPilot's fuse device manager: smarter-devices/fuse; the
    # pod also gets CAP_SYS_ADMIN, as SkyPilot's do), `privileged` (a privileged container), or `none` (no
    # FUSE here: such a task fails its prechecks on this infra).
    fuse_device: str = "smarter-devices/fuse"


class GcpSettings(_Section):
    """The `gcp` infra: Compute Engine instances, reached over SSH with tsky's own key."""

    project: str | None = None  # None: from the credentials file, GOOGLE_CLOUD_PROJECT or CLOUDSDK_CORE_PROJECT
    image: str = "projects/debian-cloud/global/images/family/debian-12"
    vpc_name: str = "default"
    use_internal_ips: bool = False  # reach instances on their internal address (the worker runs in the VPC)
    # How the worker reaches an instance over SSH when not at its own address (NAT, overlay network,
    # inventory): a `package.module:callable` taking the Settings and returning an AddressResolver
    # (clouds/addresses.py). None: the instance's public (or internal) address, port 22.
    ssh_address_resolver: FactoryPath | None = None
    ssh_user: str = "tsky"
    # None: $TSKY_HOME/ssh/tsky-gcp (created on first use); its public half goes in the instances' metadata.
    ssh_private_key: str | None = None
    # Seconds for new instances to run and answer SSH (and for deletions to be confirmed).
    provision_timeout: float = Field(default=600, gt=0)
    # How often watchers ask GCE about their nodes: one aggregated list per project for all of them.
    state_check_seconds: float = Field(default=15, gt=0)
    # A local fake of the Compute API (tests). Never set for Google itself.
    api_endpoint: str | None = None
    anonymous_credentials: bool = False  # only with api_endpoint


class AwsSettings(_Section):
    """The `aws` infra: EC2 instances, reached over SSH with tsky's own key. Credentials: boto3's usual chain."""

    ami: str | dict[str, str] | None = None  # an AMI id, or region -> AMI id; None: latest Ubuntu 22.04 (Canonical)
    ssh_user: str = "ubuntu"
    # None: $TSKY_HOME/ssh/tsky-aws (created on first use), imported as key pair `tsky-<hash of the key>`.
    ssh_private_key: str | None = None
    key_name: str | None = None  # an existing EC2 key pair holding ssh_private_key's public half
    security_group: str = "tsky"  # a name (created in the default VPC: SSH open, all traffic within) or an sg- id
    use_internal_ips: bool = False  # reach instances on their private address (the worker runs in the VPC)
    ssh_address_resolver: FactoryPath | None = None  # as in GcpSettings
    regions: list[str] | None = None  # where listing and teardown-by-name look; None: every EC2 region
    # Seconds for new instances to run and answer SSH (and for terminations to be confirmed).
    provision_timeout: float = Field(default=600, gt=0)
    # How often watchers ask EC2 about their nodes: one DescribeInstances (paginated) per region for all of them.
    state_check_seconds: float = Field(default=15, gt=0)
    endpoint_url: str | None = None  # an EC2 endpoint override (tests: moto). Never set for AWS itself.


class StoreSettings(_Section):
    # An S3-compatible (MinIO, Ceph, R2, a private S3) or GCS-compatible endpoint; the environment's
    # AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (S3) and STORAGE_EMULATOR_HOST (GCS) win over it.
    endpoint_url: str | None = None


class StorageSettings(_Section):
    """Buckets: uploads, intermediate buckets, mounts and cleanup all use these endpoints."""

    s3: StoreSettings = StoreSettings()
    gcs: StoreSettings = StoreSettings()


class TemporalSettings(_Section):
    address: str | None = None  # None: the embedded dev server
    namespace: str = "default"
    api_key: str | None = None
    tls: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    ui_url: str | None = None
    # End-to-end payload encryption (see tsky.client.codec): base64 keys, comma-separated, the first encrypts.
    encryption_key: str | None = None
    encryption_key_file: str | None = None  # one base64 key per line, after encryption_key's


class WorkerSettings(_Section):
    metrics_port: int | None = None  # Prometheus scrape port; None disables
    # Where the scrape port listens: 0.0.0.0 in a container, so Prometheus can reach it.
    metrics_address: str = "127.0.0.1"
    graceful_shutdown_seconds: float = 30
    # How long a workflow task waits for the worker that last ran the workflow before any worker may
    # take it: the delay a crashed worker adds to its jobs.
    sticky_schedule_to_start_seconds: float = 10


class Settings(_Section):
    home: Path
    jobs: JobsSettings = JobsSettings()
    local: LocalSettings = LocalSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()
    gcp: GcpSettings = GcpSettings()
    aws: AwsSettings = AwsSettings()
    storage: StorageSettings = StorageSettings()
    temporal: TemporalSettings = TemporalSettings()
    worker: WorkerSettings = WorkerSettings()

    @property
    def config_file(self) -> Path:
        return self.home / "config.yaml"

    @property
    def embedded(self) -> bool:
        """True when tsky runs (and may start) its own Temporal dev server."""
        return self.temporal.address is None

    def launch_concurrency(self) -> int:
        return self.jobs.controller.launch_concurrency or 4 * (os.cpu_count() or 1)


class SettingsError(Exception):
    """config.yaml is unreadable or invalid; the message names the file, the key and the fix."""


# Environment variables win over the file, so one config file can serve many processes.
_ENV_OVERRIDES = {
    "TSKY_TEMPORAL_ADDRESS": ("temporal", "address"),
    "TSKY_TEMPORAL_NAMESPACE": ("temporal", "namespace"),
    "TSKY_TEMPORAL_API_KEY": ("temporal", "api_key"),
    "TSKY_TEMPORAL_TLS_CERT": ("temporal", "tls_cert"),
    "TSKY_TEMPORAL_TLS_KEY": ("temporal", "tls_key"),
    "TSKY_TEMPORAL_TLS_CA": ("temporal", "tls_ca"),
    "TSKY_TEMPORAL_UI_URL": ("temporal", "ui_url"),
    "TSKY_ENCRYPTION_KEY": ("temporal", "encryption_key"),
    "TSKY_ENCRYPTION_KEY_FILE": ("temporal", "encryption_key_file"),
    "TSKY_METRICS_PORT": ("worker", "metrics_port"),
    "TSKY_METRICS_ADDRESS": ("worker", "metrics_address"),
}


def tsky_home() -> Path:
    return Path(os.environ.get("TSKY_HOME") or Path.home() / ".tsky").expanduser()


def merge_settings(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` laid over `base`, section by section and key by key."""
    merged = dict(base)
    for key, value in extra.items():
        old = merged.get(key)
        merged[key] = merge_settings(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return merged


def load_settings(home: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """config.yaml, then `TSKY_*` variables, then `overrides` (a command's `--config`), later winning."""
    home = home or tsky_home()
    path = home / "config.yaml"
    data: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise SettingsError(f"{path}: not valid YAML ({err}). Fix the file or remove it.") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise SettingsError(f"{path}: expected a mapping of sections (jobs:, local:, temporal:).")
        data = loaded or {}
    for var, (section, key) in _ENV_OVERRIDES.items():
        if os.environ.get(var):
            data.setdefault(section, {})[key] = os.environ[var]
    if os.environ.get("TSKY_LOG_STORE"):
        data.setdefault("jobs", {}).setdefault("logs", {})["store"] = os.environ["TSKY_LOG_STORE"]
    if os.environ.get("TSKY_TEMPORAL_TLS", "").lower() in ("1", "true", "yes"):
        data.setdefault("temporal", {})["tls"] = True
    data = merge_settings(data, overrides or {})
    try:
        return Settings(home=home, **data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors(include_url=False))
        raise SettingsError(f"{path}: {problems}. Fix these keys (see README, 'Settings').") from err
