"""Which infra tsky may plan on: `tsky check` and the planner's list of enabled infra.

Every check is local and fast: it looks for credentials and config files and never calls the network
(no cloud API, no instance-metadata server), so it can run on every plan.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from tsky.ops.clouds.ssh_pools import PoolFileError, parse_pool
from tsky.spec.settings import Settings

INFRA_NAMES = ("local", "ssh", "aws", "gcp", "k8s")
SSH_POOLS_FILE = "ssh_node_pools.yaml"
# The fields google.auth needs for each kind of credentials file; checked here by reading the file, since
# google.auth.default() may probe the GCE metadata server over the network.
_GCP_CREDENTIAL_KEYS = {
    "authorized_user": ("client_id", "client_secret", "refresh_token"),
    "service_account": ("client_email", "private_key", "token_uri"),
    "external_account": ("audience", "subject_token_type"),
    "external_account_authorized_user": ("audience", "refresh_token", "token_url"),
    "impersonated_service_account": ("service_account_impersonation_url", "source_credentials"),
}


# Each cloud's SDK comes with an extra of the tsky package (the light install has none of them).
_CLOUD_SDKS = {"aws": ("boto3", "aws"), "gcp": ("google-cloud-compute", "gcp"), "k8s": ("kubernetes", "kubernetes")}


class NodeShape(BaseModel):
    """What one node of an ssh pool (or a k8s context) offers, when declared; unknown fields fit anything."""

    model_config = ConfigDict(frozen=True)

    vcpus: float | None = None
    memory_gb: float | None = None
    accelerators: dict[str, float] = {}


class InfraStatus(BaseModel):
    name: str  # one of INFRA_NAMES
    enabled: bool
    reason: str  # where the credentials come from when enabled; what is missing when not
    regions: list[str] = []  # local regions, ssh pools, k8s contexts
    shapes: dict[str, NodeShape] = {}  # per region, where the config declares one
    spot: bool = False  # existing machines offer spot only where configured (k8s spot node selectors)


class EnabledInfra(BaseModel):
    """An infra the planner may use. `regions` None: every region the catalog (or settings) lists."""

    cloud: str
    regions: list[str] | None = None
    shapes: dict[str, NodeShape] = {}
    spot: bool = False


def check_infra(settings: Settings, only: Iterable[str] | None = None) -> list[InfraStatus]:
    """The status of each infra (or of those in `only`), in INFRA_NAMES order."""
    checks: dict[str, Callable[[Settings], InfraStatus]] = {
        "local": _check_local,
        "ssh": _check_ssh,
        "aws": _check_aws,
        "gcp": _check_gcp,
        "k8s": _check_k8s,
    }
    wanted = set(only) if only is not None else set(INFRA_NAMES)
    return [_missing_sdk(name) or checks[name](settings) for name in INFRA_NAMES if name in wanted]


class RecentInfraCheck:
    """`check_infra` for a worker, answered from a check at most `max_age` seconds old.

    A worker plans every launch, and looking up cloud credentials (botocore reads its files and builds
    a session each time) took a fifth of a worker's CPU in a burst of 800 launches. Credentials or pool
    files added meanwhile count from the next check."""

    def __init__(self, settings: Settings, max_age: float = 10.0):
        self.settings = settings
        self.max_age = max_age
        self._last: tuple[float, list[InfraStatus]] | None = None

    def statuses(self) -> list[InfraStatus]:
        now = time.monotonic()
        if self._last is None or now - self._last[0] >= self.max_age:
            self._last = (now, check_infra(self.settings))
        return self._last[1]


def _missing_sdk(name: str) -> InfraStatus | None:
    """Disabled, naming the extra to install, when the cloud's SDK is not installed (read from the
    installed distributions: importing an SDK to find out would cost the start-up time it saves)."""
    if name not in _CLOUD_SDKS:
        return None
    package, extra = _CLOUD_SDKS[name]
    try:
        distribution(package)
    except PackageNotFoundError:
        return InfraStatus(name=name, enabled=False, reason=f"{package} is not installed: pip install 'tsky[{extra}]'")
    return None


def enabled_infra(statuses: Iterable[InfraStatus]) -> list[EnabledInfra]:
    return [
        EnabledInfra(cloud=s.name, regions=s.regions or None, shapes=s.shapes, spot=s.spot)
        for s in statuses
        if s.enabled
    ]


def _check_local(settings: Settings) -> InfraStatus:
    regions = [region.name for region in settings.local.regions]
    return InfraStatus(
        name="local",
        enabled=True,
        reason=f"simulated on this host ({len(regions)} region{'s' if len(regions) != 1 else ''})",
        regions=regions,
    )


def _check_ssh(settings: Settings) -> InfraStatus:
    path = settings.home / SSH_POOLS_FILE
    if not path.exists():
        return InfraStatus(name="ssh", enabled=False, reason=f"no node pool file at {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        return InfraStatus(name="ssh", enabled=False, reason=f"{path} is not readable YAML: {err}")
    if not isinstance(data, dict) or not data:
        return InfraStatus(
            name="ssh", enabled=False, reason=f"{path} lists no pools (expected `<pool>: {{hosts: [...]}}`)"
        )
    pools: list[str] = []
    shapes: dict[str, NodeShape] = {}
    problems: list[str] = []
    for name, pool in data.items():
        if not isinstance(pool, dict) or not pool.get("hosts") or not isinstance(pool["hosts"], list):
            problems.append(f"pool '{name}' has no `hosts` list")
            continue
        try:
            parse_pool(str(name), pool)  # each host entry, as the ssh backend reads it
        except PoolFileError as err:
            problems.append(str(err))
            continue
        pools.append(str(name))
        shape = _ssh_shape(pool)
        if shape is not None:
            shapes[str(name)] = shape
    if not pools:
        return InfraStatus(name="ssh", enabled=False, reason=f"{path}: " + "; ".join(problems))
    reason = f"node pools from {path}" + (f" (skipped: {'; '.join(problems)})" if problems else "")
    return InfraStatus(name="ssh", enabled=True, reason=reason, regions=pools, shapes=shapes)


def _ssh_shape(pool: dict[str, Any]) -> NodeShape | None:
    """Optional per-pool `vcpus`, `memory_gb` and `accelerators: {H100: 8}`: without them an ssh node is
    only known at launch, so the planner cannot promise it a GPU."""
    keys = {"vcpus", "memory_gb", "accelerators"} & pool.keys()
    if not keys:
        return None
    try:
        return NodeShape(**{key: pool[key] for key in keys})
    except ValueError:
        return None


def _check_aws(settings: Settings) -> InfraStatus:
    return check_aws_credentials()


def check_aws_credentials() -> InfraStatus:
    """Whether AWS credentials are configured here, looked up offline: the one check for `tsky check`,
    the planner and `tsky catalog refresh aws` alike."""
    import botocore.session

    try:
        session = botocore.session.Session()
        resolver = session.get_component("credential_provider")
        # The instance-metadata and container providers call the network; everything else reads env and files.
        for provider in ("iam-role", "container-role"):
            resolver.remove(provider)
        credentials = session.get_credentials()
    except Exception as err:  # a malformed config file, a failing credential_process: say so, stay offline
        return InfraStatus(name="aws", enabled=False, reason=f"AWS credentials could not be read: {err}")
    if credentials is not None:
        return InfraStatus(name="aws", enabled=True, reason=f"credentials from {credentials.method}")
    if os.environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or os.environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        return InfraStatus(name="aws", enabled=True, reason="container credentials (ECS/EKS task role)")
    return InfraStatus(
        name="aws",
        enabled=False,
        reason="no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, "
        "or run `aws configure`)",
    )


def _check_gcp(settings: Settings) -> InfraStatus:
    explicit = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    config_dir = os.environ.get("CLOUDSDK_CONFIG") or str(Path.home() / ".config" / "gcloud")
    path = Path(explicit) if explicit else Path(config_dir) / "application_default_credentials.json"
    if not path.is_file():
        where = "GOOGLE_APPLICATION_CREDENTIALS points to a missing file" if explicit else f"no {path}"
        return InfraStatus(
            name="gcp",
            enabled=False,
            reason=f"no GCP credentials ({where}; run `gcloud auth application-default login` "
            "or set GOOGLE_APPLICATION_CREDENTIALS)",
        )
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return InfraStatus(name="gcp", enabled=False, reason=f"{path} is not readable JSON: {err}")
    kind = info.get("type") if isinstance(info, dict) else None
    missing = [key for key in _GCP_CREDENTIAL_KEYS.get(str(kind), ()) if not info.get(key)]
    if kind not in _GCP_CREDENTIAL_KEYS or missing:
        problem = f"missing {', '.join(missing)}" if missing else f"unknown credential type {kind!r}"
        return InfraStatus(name="gcp", enabled=False, reason=f"{path} is not usable: {problem}")
    project = (
        info.get("project_id")
        or info.get("quota_project_id")
        or os.environ.get("GOOGLE_CLOUD_PROJECT")
        or os.environ.get("CLOUDSDK_CORE_PROJECT")
    )
    suffix = f", project {project}" if project else ", project unknown (set GOOGLE_CLOUD_PROJECT)"
    return InfraStatus(name="gcp", enabled=True, reason=f"{kind} credentials from {path}{suffix}")


def _check_k8s(settings: Settings) -> InfraStatus:
    env = os.environ.get("KUBECONFIG")
    paths = [Path(p).expanduser() for p in env.split(os.pathsep) if p] if env else [Path.home() / ".kube/config"]
    contexts: list[str] = []
    current: str | None = None
    for path in paths:
        try:
            config = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(config, dict):
            continue
        # Like kubectl: the first file that sets current-context wins.
        current = current or config.get("current-context") or None
        for entry in config.get("contexts") or []:
            if isinstance(entry, dict) and entry.get("name") and entry["name"] not in contexts:
                contexts.append(str(entry["name"]))
    k8s = settings.kubernetes
    shapes = {
        name: NodeShape(**shape.model_dump()) for name, shape in k8s.node_shapes.items() if shape.model_fields_set
    }
    spot = bool(k8s.spot_node_selector or k8s.spot_tolerations)
    where = ", ".join(str(p) for p in paths)
    if contexts and k8s.allowed_contexts:
        chosen_list = [c for c in k8s.allowed_contexts if c in contexts]
        missing = [c for c in k8s.allowed_contexts if c not in contexts]
        if not chosen_list:
            reason = f"none of kubernetes.allowed_contexts ({', '.join(missing)}) is in {where}"
            return InfraStatus(name="k8s", enabled=False, reason=reason)
        reason = f"contexts {', '.join(chosen_list)} from {where}" + (
            f" (not found: {', '.join(missing)})" if missing else ""
        )
        return InfraStatus(name="k8s", enabled=True, reason=reason, regions=chosen_list, shapes=shapes, spot=spot)
    if contexts:
        # SkyPilot's default: only the current context is used (others may be clusters nobody meant to share).
        chosen = current if current in contexts else contexts[0]
        return InfraStatus(
            name="k8s",
            enabled=True,
            reason=f"context {chosen} from {where}",
            regions=[chosen],
            shapes=shapes,
            spot=spot,
        )
    token = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    if os.environ.get("KUBERNETES_SERVICE_HOST") and token.exists():
        return InfraStatus(
            name="k8s",
            enabled=True,
            reason="in-cluster service account",
            regions=["in-cluster"],
            shapes=shapes,
            spot=spot,
        )
    return InfraStatus(
        name="k8s",
        enabled=False,
        reason=f"no kubeconfig with contexts at {', '.join(str(p) for p in paths)} and not running in a cluster",
    )
