"""The `gcp` infra: Compute Engine instances through google-cloud-compute (REST), reached over SSH with the
shared runner (`ssh_runner.py`).

A cluster is a set of instances `<cluster>-<owner>-<rank>` in one zone, labelled with the cluster, job id,
task, launch, rank and owner keys of `labels.py` (the owner: the installation, `base.owner_of`): the sweeper finds
them, and two installations sharing a project never touch each other's instances. Provisioning is
idempotent: live instances of the cluster are adopted (an insert of an existing name is a 409), stopped or
dying leftovers are deleted first. Spot instances use the SPOT provisioning model with
`instanceTerminationAction: DELETE`, so GCE deletes what it preempts. tsky's SSH key (created on first use
unless `gcp.ssh_private_key` is set) goes into each instance's `ssh-keys` metadata.

Node state comes from the instance, as one aggregated list of the installation's instances shared by every
watcher of the worker (`state_checks.py`), and, for a spot instance that is gone, from the zone's
`compute.instances.preempted` operations:

| instance                                     | on-demand | spot      |
|----------------------------------------------|-----------|-----------|
| PROVISIONING, STAGING, RUNNING               | UP        | UP        |
| STOPPING, STOPPED, SUSPENDING, SUSPENDED, TERMINATED | STOPPED | PREEMPTED |
| gone                                         | GONE      | PREEMPTED (a preempted operation names it), else GONE |

Errors: ZONE_RESOURCE_POOL_EXHAUSTED(_WITH_DETAILS), quota exceeded and other stock-outs → CapacityError;
rate limits (429, 403 rateLimitExceeded / userRateLimitExceeded) → ThrottledError, after the call was sent
again a few times with backoff; invalid requests, missing images/networks/projects, permissions, credentials
→ PrecheckError; 5xx → TransientError. Teardown deletes and waits until no instance of the cluster is left.

Operations are waited for with `*_unary` calls and `ZoneOperationsClient.wait`: the library's own poller
(behind `insert().result()`) is built without the client options, so with an `api_endpoint` override it
would poll compute.googleapis.com. Every client call blocks, so it runs in a thread. Credentials: Google's
application default credentials; anonymous only for a local fake (`gcp.api_endpoint`, tests). Instances are
reached over SSH where `addresses.py`'s resolver says (by default their external address, or the internal one
with `gcp.use_internal_ips`).

Why one module of this size: it is one `Backend` (see `base.py`), one module by design (`get_backend`
loads it with its SDK); the SSH runner and label keys are shared (`ssh_runner.py`, `labels.py`).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncssh
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from tsky.contract.activity_io import ClusterInfo, JobMeta, NodeInfo
from tsky.ops.clouds import labels as keys
from tsky.ops.clouds.addresses import CloudInstance, address_resolver
from tsky.ops.clouds.base import (
    CapacityError,
    ClusterRecord,
    PrecheckError,
    ThrottledError,
    TransientError,
    owner_of,
)
from tsky.ops.clouds.labels import Listed, cluster_records
from tsky.ops.clouds.ssh_runner import SSHNodeAgent, SSHOptions, SSHTarget, cluster_node, wait_reachable
from tsky.ops.clouds.state_checks import SharedStateChecks
from tsky.spec.requests import Candidate
from tsky.spec.settings import GcpSettings, Settings
from tsky.spec.status import NodeState

NAME = "gcp"

LIVE = ("PROVISIONING", "STAGING", "RUNNING")
PREEMPTED_OPERATION = "compute.instances.preempted"
CAPACITY_MARKERS = ("RESOURCE_POOL_EXHAUSTED", "QUOTA_EXCEEDED", "QUOTA EXCEEDED", "STOCKOUT", "DOES NOT HAVE ENOUGH")
# GCE says "403 rateLimitExceeded" (its message reads "Quota exceeded for quota metric 'Queries'"): a rate
# limit, not a quota of resources nor a permission problem.
THROTTLE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED"}
THROTTLE_ATTEMPTS = 5  # a throttled call is sent again after 0.5, 1, 2, 4 s (with jitter) before giving up
PRECHECK_CODES = {"INVALID_FIELD_VALUE", "RESOURCE_NOT_FOUND", "NOT_FOUND", "PERMISSION_DENIED", "FORBIDDEN"}
# N1 machines take GPUs as guest accelerators; A2/A3/G2 machine types come with theirs.
GUEST_ACCELERATORS = {
    "T4": "nvidia-tesla-t4",
    "V100": "nvidia-tesla-v100",
    "P100": "nvidia-tesla-p100",
    "P4": "nvidia-tesla-p4",
    "K80": "nvidia-tesla-k80",
}
DONE = compute_v1.Operation.Status.DONE


def _capacity(text: str) -> bool:
    upper = text.upper()
    return any(marker in upper for marker in CAPACITY_MARKERS)


def _error(err: BaseException, what: str) -> BaseException:
    """The client's exceptions as the backend protocol's typed errors."""
    if isinstance(err, gexc.GoogleAPICallError):
        text = f"{what}: {err.message}"
        reasons = {e.get("reason") for e in err.errors if isinstance(e, dict)} | {err.reason}
        if isinstance(err, gexc.TooManyRequests) or reasons & THROTTLE_REASONS:
            return ThrottledError(text)
        if _capacity(str(err)) or any(isinstance(e, dict) and e.get("reason") == "quotaExceeded" for e in err.errors):
            return CapacityError(text)
        if isinstance(err, gexc.BadRequest | gexc.NotFound | gexc.Forbidden | gexc.Unauthorized):
            return PrecheckError(text)
        return TransientError(text)
    if isinstance(err, auth_exceptions.DefaultCredentialsError | auth_exceptions.RefreshError):
        return PrecheckError(f"{what}: GCP credentials: {err} (run `gcloud auth application-default login`)")
    return err


def _operation_error(op: compute_v1.Operation, what: str) -> Exception:
    errors = list(op.error.errors) if op.error else []
    text = f"{what}: " + "; ".join(f"{e.code}: {e.message}" for e in errors)
    if any(_capacity(e.code) or _capacity(e.message) for e in errors):
        return CapacityError(text)
    if any(e.code in THROTTLE_REASONS for e in errors) or op.http_error_status_code == 429:
        return ThrottledError(text)
    if any(e.code in PRECHECK_CODES for e in errors) or op.http_error_status_code in (400, 403, 404):
        return PrecheckError(text)
    return TransientError(text)


def _zone_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def _spot(instance: compute_v1.Instance) -> bool:
    return bool(instance.scheduling and instance.scheduling.provisioning_model == "SPOT")


def _timestamp(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp() if text else None
    except ValueError:
        return None


def node_state(instance: compute_v1.Instance | None, spot: bool, preempted: bool = False) -> NodeState:
    """One instance's state as the table in the module docstring says."""
    if instance is None:
        return NodeState.PREEMPTED if spot and preempted else NodeState.GONE
    if instance.status in LIVE:
        return NodeState.UP
    return NodeState.PREEMPTED if spot else NodeState.STOPPED


class GcpBackend:
    name = NAME

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cfg: GcpSettings = settings.gcp
        self.state_check_seconds = self.cfg.state_check_seconds
        self.owner = owner_of(settings)
        self.options = SSHOptions()
        self.addresses = address_resolver(
            settings, "gcp.ssh_address_resolver", self.cfg.ssh_address_resolver, self.cfg.use_internal_ips
        )
        self._instances: compute_v1.InstancesClient | None = None
        self._operations: compute_v1.ZoneOperationsClient | None = None
        self._project: str | None = self.cfg.project
        # project -> every instance of this installation (by `zone/name`), one aggregated list for all watchers
        self.state_checks: SharedStateChecks[str] = SharedStateChecks(self._owned_instances, self.state_check_seconds)

    # -- plumbing ------------------------------------------------------------------------------------

    def _clients(self) -> tuple[compute_v1.InstancesClient, compute_v1.ZoneOperationsClient]:
        if self._instances is None or self._operations is None:
            if self.cfg.anonymous_credentials and not self.cfg.api_endpoint:
                raise PrecheckError("gcp.anonymous_credentials is only for a local fake: set gcp.api_endpoint too")
            options = ClientOptions(api_endpoint=self.cfg.api_endpoint) if self.cfg.api_endpoint else None
            credentials = AnonymousCredentials() if self.cfg.anonymous_credentials else None
            try:
                self._instances = compute_v1.InstancesClient(
                    credentials=credentials, transport="rest", client_options=options
                )
                self._operations = compute_v1.ZoneOperationsClient(
                    credentials=credentials, transport="rest", client_options=options
                )
            except Exception as err:
                raise _error(err, "creating Compute Engine clients") from err
        return self._instances, self._operations

    def project(self) -> str:
        if self._project is None:
            project = os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("CLOUDSDK_CORE_PROJECT")
            if not project:
                import google.auth

                try:
                    _, project = google.auth.default()
                except auth_exceptions.DefaultCredentialsError as err:
                    raise _error(err, "finding the GCP project") from err
            if not project:
                raise PrecheckError("no GCP project: set gcp.project in config.yaml or GOOGLE_CLOUD_PROJECT")
            self._project = project
        return self._project

    async def _send(self, fn: Any, /, **kwargs: Any) -> Any:
        """`fn(**kwargs)` in a thread; a throttled call is sent again after a backoff (the client's own
        exceptions otherwise, for callers that handle some of them)."""
        for attempt in range(THROTTLE_ATTEMPTS):
            try:
                return await asyncio.to_thread(fn, **kwargs)
            except gexc.GoogleAPICallError as err:
                if attempt == THROTTLE_ATTEMPTS - 1 or not isinstance(_error(err, ""), ThrottledError):
                    raise
            await asyncio.sleep(0.5 * 2**attempt * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    async def _call(self, what: str, fn: Any, /, **kwargs: Any) -> Any:
        try:
            return await self._send(fn, **kwargs)
        except Exception as err:
            raise _error(err, what) from err

    async def _wait(self, zone: str, op: compute_v1.Operation, what: str) -> None:
        """Wait for a zone operation to end; its error, typed, if it failed."""
        _, operations = self._clients()
        deadline = time.monotonic() + self.cfg.provision_timeout
        while op.status != DONE:
            if time.monotonic() > deadline:
                raise TransientError(f"{what}: operation {op.name} not done after {self.cfg.provision_timeout:.0f}s")
            try:
                op = await self._call(what, operations.wait, project=self.project(), zone=zone, operation=op.name)
            except TransientError:
                await asyncio.sleep(1)  # a 5xx while polling says nothing about the operation: poll again
        if op.error and op.error.errors:
            raise _operation_error(op, what)

    def _filter(self, cluster_name: str | None = None) -> str:
        if cluster_name is None:
            return f"labels.{keys.CLUSTER}:*"
        return f'(labels.{keys.CLUSTER} = "{cluster_name}") (labels.{keys.OWNER} = "{self.owner}")'

    async def _list_zone(self, zone: str, filter_: str) -> list[compute_v1.Instance]:
        instances, _ = self._clients()

        def call() -> list[compute_v1.Instance]:
            request = compute_v1.ListInstancesRequest(project=self.project(), zone=zone, filter=filter_)
            return list(instances.list(request=request))

        return list(await self._call(f"listing instances in {zone}", call))

    async def _list_all(self, filter_: str) -> list[tuple[str, compute_v1.Instance]]:
        """(zone, instance) for every instance of the project matching `filter_`, in one aggregated list."""
        instances, _ = self._clients()

        def call() -> list[tuple[str, compute_v1.Instance]]:
            request = compute_v1.AggregatedListInstancesRequest(project=self.project(), filter=filter_)
            return [
                (_zone_of(key), instance)
                for key, scoped in instances.aggregated_list(request=request)
                for instance in scoped.instances
            ]

        return list(await self._call("listing instances", call))

    # -- SSH ---------------------------------------------------------------------------------------

    def private_key_path(self) -> Path:
        if self.cfg.ssh_private_key:
            return Path(self.cfg.ssh_private_key).expanduser()
        return self.settings.home / "ssh" / "tsky-gcp"

    def _public_key(self) -> str:
        """tsky's SSH key for GCE (created on first use unless configured), public half in OpenSSH format."""
        path = self.private_key_path()
        if not path.exists():
            if self.cfg.ssh_private_key:
                raise PrecheckError(f"gcp.ssh_private_key {path} does not exist")
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(path.name + ".tmp")
            asyncssh.generate_private_key("ssh-ed25519", comment="tsky").write_private_key(str(tmp))
            tmp.chmod(0o600)
            tmp.rename(path)
        try:
            key = asyncssh.read_private_key(str(path))
        except (OSError, asyncssh.KeyImportError) as err:
            raise PrecheckError(f"cannot read the SSH key {path}: {err}") from err
        return key.export_public_key("openssh").decode().strip()

    def _ssh_target(self, node: NodeInfo) -> SSHTarget:
        return SSHTarget(node.ip, node.ssh_port or 22, node.ssh_user or self.cfg.ssh_user, str(self.private_key_path()))

    def node(self, cluster: ClusterInfo, rank: int) -> SSHNodeAgent:
        return cluster_node(self._ssh_target(cluster.nodes[rank]), cluster.name, rank, self.options)

    def _instance(self, zone: str, cluster_name: str, rank: int, instance: compute_v1.Instance) -> CloudInstance:
        nic = instance.network_interfaces[0] if instance.network_interfaces else None
        return CloudInstance(
            backend=NAME,
            place=zone,
            instance_id=instance.name,
            cluster=cluster_name,
            rank=rank,
            public_ip=nic.access_configs[0].nat_i_p if nic and nic.access_configs else "",
            private_ip=nic.network_i_p if nic else "",
        )

    async def _node_info(self, zone: str, cluster_name: str, rank: int, instance: compute_v1.Instance) -> NodeInfo:
        address = await self.addresses.address(self._instance(zone, cluster_name, rank, instance))
        return NodeInfo(
            rank=rank, ip=address.host, host_id=instance.name, ssh_port=address.port, ssh_user=self.cfg.ssh_user
        )

    # -- provisioning ----------------------------------------------------------------------------------

    def instance_name(self, cluster_name: str, rank: int) -> str:
        """Unique per installation (two users' `train-1` never collide in a project); starts with a letter."""
        base = cluster_name if cluster_name[:1].isalpha() else f"tsky-{cluster_name}"
        return f"{base}-{self.owner[:6]}-{rank}"

    def instance_resource(
        self, name: str, rank: int, candidate: Candidate, zone: str, meta: JobMeta, cluster_name: str
    ) -> compute_v1.Instance:
        labels = {
            **dict(candidate.labels),  # the user's first: tsky's own labels (the sweeper's) win a clash
            keys.CLUSTER: cluster_name,
            keys.JOB: str(meta.job_id),
            keys.TASK: str(meta.task_index),
            keys.LAUNCH: launch.group(1) if (launch := re.search(r"-r(\d+)$", cluster_name)) else "0",
            keys.RANK: str(rank),
            keys.OWNER: self.owner,
        }
        gpu = bool(candidate.accelerator and candidate.accelerator_count > 0)
        if candidate.use_spot:
            scheduling = compute_v1.Scheduling(
                provisioning_model="SPOT",
                instance_termination_action="DELETE",
                on_host_maintenance="TERMINATE",
                automatic_restart=False,
            )
        else:
            scheduling = compute_v1.Scheduling(on_host_maintenance="TERMINATE" if gpu else "MIGRATE")
        access = (
            [] if self.cfg.use_internal_ips else [compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")]
        )
        instance = compute_v1.Instance(
            name=name,
            machine_type=f"zones/{zone}/machineTypes/{candidate.instance_type}",
            labels=labels,
            scheduling=scheduling,
            disks=[
                compute_v1.AttachedDisk(
                    boot=True,
                    auto_delete=True,
                    initialize_params=compute_v1.AttachedDiskInitializeParams(
                        source_image=candidate.image_id or self.cfg.image, disk_size_gb=candidate.disk_size_gb
                    ),
                )
            ],
            network_interfaces=[
                compute_v1.NetworkInterface(network=f"global/networks/{self.cfg.vpc_name}", access_configs=access)
            ],
            metadata=compute_v1.Metadata(
                items=[compute_v1.Items(key="ssh-keys", value=f"{self.cfg.ssh_user}:{self._public_key()}")]
            ),
        )
        if gpu and candidate.instance_type.startswith("n1-") and candidate.accelerator:
            kind = GUEST_ACCELERATORS.get(candidate.accelerator.upper())
            if kind is None:
                raise PrecheckError(f"GCP has no {candidate.accelerator} to attach to {candidate.instance_type}")
            instance.guest_accelerators = [
                compute_v1.AcceleratorConfig(
                    accelerator_type=f"zones/{zone}/acceleratorTypes/{kind}",
                    accelerator_count=int(candidate.accelerator_count),
                )
            ]
        return instance

    async def provision(self, cluster_name: str, candidate: Candidate, num_nodes: int, meta: JobMeta) -> ClusterInfo:
        zone = candidate.zone
        if not zone:
            raise PrecheckError(f"a GCP launch needs a zone (candidate {candidate.infra} has none)")
        instances_client, _ = self._clients()
        project = self.project()
        names = [self.instance_name(cluster_name, rank) for rank in range(num_nodes)]
        existing = {i.name: i for i in await self._list_zone(zone, self._filter(cluster_name))}
        # Stopped or dying leftovers of an earlier try (or extra nodes) go; live ones are adopted.
        stale = [n for n, i in existing.items() if i.status not in LIVE or n not in names]
        await self._delete(zone, stale, f"deleting leftovers of {cluster_name}")
        ops: list[compute_v1.Operation] = []
        for rank, name in enumerate(names):
            if name in existing and name not in stale:
                continue
            resource = self.instance_resource(name, rank, candidate, zone, meta, cluster_name)
            try:
                op = await self._send(
                    instances_client.insert_unary, project=project, zone=zone, instance_resource=resource
                )
            except gexc.Conflict:
                continue  # a retried provision: the first try's insert made it
            except Exception as err:
                raise _error(err, f"creating {name} in {zone}") from err
            ops.append(op)
        await asyncio.gather(*(self._wait(zone, op, f"creating {cluster_name} in {zone}") for op in ops))
        running = await self._wait_running(zone, cluster_name, names, candidate.use_spot)
        nodes = [await self._node_info(zone, cluster_name, rank, i) for rank, i in enumerate(running)]
        await asyncio.gather(
            *(wait_reachable(self._ssh_target(n), self.options, self.cfg.provision_timeout) for n in nodes)
        )
        return ClusterInfo(
            name=cluster_name,
            backend=NAME,
            region=candidate.region,
            zone=zone,
            instance_type=candidate.instance_type,
            use_spot=candidate.use_spot,
            nodes=nodes,
            extra={"job_id": str(meta.job_id), "task_index": str(meta.task_index), "project": project},
        )

    async def _wait_running(
        self, zone: str, cluster_name: str, names: list[str], spot: bool
    ) -> list[compute_v1.Instance]:
        """The instances once all run and have an address, in the order of `names`."""
        cluster_filter = self._filter(cluster_name)
        deadline = time.monotonic() + self.cfg.provision_timeout
        while True:
            found = {i.name: i for i in await self._list_zone(zone, cluster_filter) if i.name in names}
            missing = [n for n in names if n not in found]
            ended = [n for n, i in found.items() if i.status not in LIVE]
            if spot and (missing or ended):
                # A spot instance taken back while booting: this zone has no room for us now.
                raise CapacityError(f"spot instance(s) {', '.join(missing + ended)} in {zone} preempted while starting")
            if missing or ended:
                raise TransientError(f"instance(s) {', '.join(missing + ended)} in {zone} ended while starting")
            instances = [found[n] for n in names]
            addressed = [self._instance(zone, cluster_name, 0, i) for i in instances]
            if all(i.status == "RUNNING" for i in instances) and all(a.public_ip or a.private_ip for a in addressed):
                return instances
            if time.monotonic() > deadline:
                raise TransientError(f"instances in {zone} not running after {self.cfg.provision_timeout:.0f}s")
            await asyncio.sleep(2)

    async def _delete(self, zone: str, names: list[str], what: str) -> None:
        instances_client, _ = self._clients()
        ops = []
        for name in names:
            try:
                ops.append(
                    await self._send(instances_client.delete_unary, project=self.project(), zone=zone, instance=name)
                )
            except gexc.NotFound:
                continue  # already gone
            except Exception as err:
                raise _error(err, f"{what}: deleting {name}") from err
        await asyncio.gather(*(self._wait(zone, op, what) for op in ops))

    # -- the protocol ------------------------------------------------------------------------------------

    async def _owned_instances(self, project: str) -> dict[str, Any]:
        found = await self._list_all(f'labels.{keys.OWNER} = "{self.owner}"')
        return {f"{zone}/{instance.name}": instance for zone, instance in found}

    async def node_states(self, cluster: ClusterInfo, fresh: bool = False) -> list[NodeState]:
        zone = cluster.zone or ""
        keys = [f"{zone}/{node.host_id}" for node in cluster.nodes]
        try:
            snap = await self.state_checks.snapshot(self.project(), fresh)
            if not fresh and any(k not in snap.items for k in keys):
                # Missing from a listing older than the question is no evidence (a cluster launched since).
                snap = await self.state_checks.snapshot(self.project(), fresh=True)
            preempted: set[str] = set()
            if cluster.use_spot and any(k not in snap.items for k in keys):
                preempted = await self._preempted(zone)
        except ThrottledError:
            return [NodeState.UNKNOWN] * len(cluster.nodes)
        states = []
        for node, key in zip(cluster.nodes, keys, strict=True):
            instance = snap.items.get(key)
            spot = cluster.use_spot if instance is None else _spot(instance)
            states.append(node_state(instance, spot, node.host_id in preempted))
        return states

    async def _preempted(self, zone: str) -> set[str]:
        """Names of the zone's instances that GCE preempted (its `compute.instances.preempted` operations)."""
        _, operations = self._clients()

        def call() -> list[compute_v1.Operation]:
            query = f'operationType = "{PREEMPTED_OPERATION}"'
            request = compute_v1.ListZoneOperationsRequest(project=self.project(), zone=zone, filter=query)
            return list(operations.list(request=request))

        return {_zone_of(op.target_link) for op in await self._call(f"listing operations in {zone}", call)}

    async def teardown(self, cluster_name: str, cluster: ClusterInfo | None) -> None:
        deadline = time.monotonic() + self.cfg.provision_timeout
        while True:
            if cluster is not None and cluster.zone:
                found = [(cluster.zone, i) for i in await self._list_zone(cluster.zone, self._filter(cluster_name))]
            else:
                found = await self._list_all(self._filter(cluster_name))
            if not found:
                return
            for zone, instance in found:
                rank = int(instance.labels.get(keys.RANK, "0"))
                await self.addresses.released(self._instance(zone, cluster_name, rank, instance))
            for zone in sorted({z for z, _ in found}):
                await self._delete(zone, [i.name for z, i in found if z == zone], f"tearing down {cluster_name}")
            if time.monotonic() > deadline:
                raise TransientError(f"{len(found)} instance(s) of {cluster_name} still exist after deletion")

    async def list_clusters(self) -> list[ClusterRecord]:
        listed = [
            Listed(
                place=zone,
                labels=dict(instance.labels),
                state=node_state(instance, _spot(instance)),
                launched_at=_timestamp(instance.creation_timestamp),
                resource=instance,
            )
            for zone, instance in await self._list_all(self._filter())
        ]
        return cluster_records(NAME, listed, _describe)


def _describe(zone: str, members: list[compute_v1.Instance]) -> tuple[str, dict[str, str]]:
    return _region_of(zone), {
        "zone": zone,
        "instance_type": _zone_of(members[0].machine_type),
        "spot": str(_spot(members[0])),
    }


def make_backend(settings: Settings) -> GcpBackend:
    return GcpBackend(settings)
