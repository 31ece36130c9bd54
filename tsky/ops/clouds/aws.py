"""The `aws` infra: EC2 instances through boto3, reached over SSH with the shared runner (`ssh_runner.py`).

A cluster is a set of instances tagged `tsky-cluster=<name>` (plus job id or pool, task, launch and the owner
id, so the sweeper can judge orphans: `labels.py`), launched in one all-or-nothing `run_instances` call (MinCount =
MaxCount), on demand or spot (`InstanceMarketOptions`, one-time, terminate on interruption). Provisioning
is idempotent: it first looks for the cluster's live instances and adopts them, and its `ClientToken` is
derived from the cluster name, the request and the instances already known, so a retried call returns the
same reservation. The key pair and the security group (SSH open, all traffic within the group) are created
on first use in each region and reused.

Node state comes from `describe_instances`, one paginated listing of the installation's instances per region
shared by every watcher of the worker (`state_checks.py`), and from the spot request where an ended spot
instance does not say why itself:

| instance state                 | on-demand | spot, interrupted by AWS | spot, otherwise |
|--------------------------------|-----------|--------------------------|-----------------|
| pending, running               | UP        | UP                       | UP              |
| stopping, stopped              | STOPPED   | PREEMPTED                | STOPPED         |
| shutting-down, terminated, gone| GONE      | PREEMPTED                | GONE            |

Errors: no capacity (InsufficientInstanceCapacity, MaxSpotInstanceCountExceeded, SpotMaxPriceTooLow,
Unsupported, …) → CapacityError; bad credentials or parameters → PrecheckError; throttling
(RequestLimitExceeded, Throttling; after botocore's own retries) → ThrottledError; 5xx and timeouts →
TransientError. Teardown terminates and waits until EC2 reports every instance terminated.

boto3 blocks, so every call runs in a thread. Credentials come the usual boto3 way (environment, profile,
SSO, instance role). Instances are reached over SSH where `addresses.py`'s resolver says (by default their
public address, or the private one with `aws.use_internal_ips`).

Why one module of this size: it is one `Backend` (see `base.py`), one module by design (`get_backend`
loads it with its SDK); the SSH runner and tag keys are shared (`ssh_runner.py`, `labels.py`).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

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
from tsky.spec.settings import AwsSettings, Settings
from tsky.spec.status import NodeState

NAME = "aws"

LIVE = ("pending", "running")
STOPPED = ("stopping", "stopped")
NOT_TERMINATED = ("pending", "running", "stopping", "stopped", "shutting-down")

CAPACITY_CODES = {
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientFreeAddressesInSubnet",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "MaxSpotInstanceCountExceeded",
    "SpotMaxPriceTooLow",
    "Unsupported",
}
PRECHECK_CODES = {
    "AuthFailure",
    "UnauthorizedOperation",
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "ExpiredToken",
    "OptInRequired",
    "Blocked",
    "MissingParameter",
    "InvalidInstanceType",
}
THROTTLE_CODES = {"RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled", "SlowDown"}
PRECHECK_PREFIXES = ("InvalidParameter", "InvalidAMIID", "InvalidKeyPair", "InvalidGroup", "InvalidSubnet")
# A spot request's status when AWS took the instance away (not when the user did).
_INTERRUPTED = re.compile(r"^(instance-(terminated|stopped)-(?!by-user)|marked-for-(termination|stop))")


def _error(err: BaseException, what: str) -> BaseException:
    """boto3's exceptions as the backend protocol's typed errors."""
    if isinstance(err, botocore.exceptions.ClientError):
        info = err.response.get("Error", {})
        code = str(info.get("Code", ""))
        text = f"{what}: {code}: {info.get('Message', '')}"
        if code in CAPACITY_CODES:
            return CapacityError(text)
        if code in THROTTLE_CODES:
            return ThrottledError(text)
        if code in PRECHECK_CODES or code.startswith(PRECHECK_PREFIXES):
            return PrecheckError(text)
        return TransientError(text)
    if isinstance(err, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return PrecheckError(f"{what}: AWS credentials are missing or incomplete ({err})")
    if isinstance(err, botocore.exceptions.BotoCoreError):
        return TransientError(f"{what}: {err}")
    return err


def _tags(items: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in items or []}


def _launch_of(cluster_name: str) -> int:
    """The launch number a cluster name carries (`-r<n>`, see `ids.cluster_name`)."""
    found = re.search(r"-r(\d+)$", cluster_name)
    return int(found.group(1)) if found else 0


def node_state(instance: dict[str, Any], spot_status: str | None = None) -> NodeState:
    """One instance's state as the table in the module docstring says."""
    state = instance["State"]["Name"]
    if state in LIVE:
        return NodeState.UP
    reason = str(instance.get("StateReason", {}).get("Code", ""))
    interrupted = instance.get("InstanceLifecycle") == "spot" and (
        reason.startswith("Server.Spot") or bool(spot_status and _INTERRUPTED.match(spot_status))
    )
    if interrupted:
        return NodeState.PREEMPTED
    return NodeState.STOPPED if state in STOPPED else NodeState.GONE


class AwsBackend:
    name = NAME

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cfg: AwsSettings = settings.aws
        self.state_check_seconds = self.cfg.state_check_seconds
        self.owner = owner_of(settings)
        self.options = SSHOptions()
        self.addresses = address_resolver(
            settings, "aws.ssh_address_resolver", self.cfg.ssh_address_resolver, self.cfg.use_internal_ips
        )
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()
        self._ready: dict[str, tuple[str, str]] = {}  # region -> (key pair name, security group id)
        self._amis: dict[tuple[str, str], str] = {}
        self._root_devices: dict[tuple[str, str], str] = {}
        # region -> every instance of this installation (by id), one paginated describe for all watchers
        self.state_checks: SharedStateChecks[str] = SharedStateChecks(self._owned_instances, self.state_check_seconds)

    # -- plumbing ------------------------------------------------------------------------------------

    def _client(self, region: str) -> Any:
        with self._clients_lock:  # boto3 sessions are not thread-safe; clients are
            if region not in self._clients:
                session = boto3.session.Session()
                self._clients[region] = session.client(
                    "ec2",
                    region_name=region,
                    endpoint_url=self.cfg.endpoint_url,
                    config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60),
                )
            return self._clients[region]

    async def _call(self, region: str, method: str, **kwargs: Any) -> Any:
        def call() -> Any:
            return getattr(self._client(region), method)(**kwargs)

        try:
            return await asyncio.to_thread(call)
        except Exception as err:
            raise _error(err, f"EC2 {method} in {region}") from err

    async def _instances(self, region: str, **kwargs: Any) -> list[dict[str, Any]]:
        """Every instance describe_instances returns (all pages)."""

        def call() -> list[dict[str, Any]]:
            pages = self._client(region).get_paginator("describe_instances").paginate(**kwargs)
            return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

        try:
            return await asyncio.to_thread(call)
        except Exception as err:
            raise _error(err, f"EC2 describe_instances in {region}") from err

    async def _cluster_instances(self, region: str, cluster_name: str, states: tuple[str, ...]) -> list[dict[str, Any]]:
        found = await self._instances(
            region,
            Filters=[
                {"Name": f"tag:{keys.CLUSTER}", "Values": [cluster_name]},
                # Another installation in the same account may have a cluster of the same name.
                {"Name": f"tag:{keys.OWNER}", "Values": [self.owner]},
                {"Name": "instance-state-name", "Values": list(states)},
            ],
        )
        # Stable ranks: launch order, then the index within a launch.
        return sorted(found, key=lambda i: (str(i.get("LaunchTime", "")), i.get("AmiLaunchIndex", 0), i["InstanceId"]))

    def _regions(self) -> list[str]:
        if self.cfg.regions:
            return list(self.cfg.regions)
        return boto3.session.Session().get_available_regions("ec2")

    # -- key pair, security group, image -------------------------------------------------------------

    def private_key_path(self) -> Path:
        return (
            Path(self.cfg.ssh_private_key).expanduser()
            if self.cfg.ssh_private_key
            else self.settings.home / "ssh" / "tsky-aws"
        )

    def _public_key(self) -> bytes:
        """tsky's SSH key (created on first use unless configured) in OpenSSH public format."""
        path = self.private_key_path()
        pub = Path(str(path) + ".pub")
        if not path.exists():
            if self.cfg.ssh_private_key:
                raise PrecheckError(f"aws.ssh_private_key {path} does not exist")
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import ed25519

            key = ed25519.Ed25519PrivateKey.generate()
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
                )
            )
            tmp.chmod(0o600)
            pub.write_bytes(
                key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
                + b" tsky\n"
            )
            tmp.rename(path)
        if not pub.exists():
            raise PrecheckError(f"{pub} is missing: tsky needs the public half of {path} to create the key pair")
        return pub.read_bytes()

    def _key_name(self, public_key: bytes) -> str:
        if self.cfg.key_name:
            return self.cfg.key_name
        # Named after the key itself, so installations with different keys never share a key pair.
        body = public_key.split()[1] if len(public_key.split()) > 1 else public_key
        return f"tsky-{hashlib.sha256(body).hexdigest()[:10]}"

    async def _ensure_key_pair(self, region: str) -> str:
        public_key = self._public_key()
        name = self._key_name(public_key)
        try:
            await self._call(region, "describe_key_pairs", KeyNames=[name])
            return name
        except PrecheckError as err:
            if "InvalidKeyPair.NotFound" not in str(err) or self.cfg.key_name:
                raise
        try:
            await self._call(region, "import_key_pair", KeyName=name, PublicKeyMaterial=public_key)
        except PrecheckError as err:
            if "InvalidKeyPair.Duplicate" not in str(err):  # a concurrent launch imported it first
                raise
        return name

    async def _ensure_security_group(self, region: str) -> str:
        group = self.cfg.security_group
        if group.startswith("sg-"):
            return group
        vpcs = await self._call(region, "describe_vpcs", Filters=[{"Name": "isDefault", "Values": ["true"]}])
        if not vpcs["Vpcs"]:
            raise PrecheckError(f"{region} has no default VPC: set aws.security_group to an existing sg-... id")
        vpc = vpcs["Vpcs"][0]["VpcId"]
        filters = [{"Name": "group-name", "Values": [group]}, {"Name": "vpc-id", "Values": [vpc]}]
        found = (await self._call(region, "describe_security_groups", Filters=filters))["SecurityGroups"]
        if found:
            return str(found[0]["GroupId"])
        try:
            created = await self._call(
                region, "create_security_group", GroupName=group, VpcId=vpc, Description="tsky: SSH and intra-cluster"
            )
            group_id = str(created["GroupId"])
        except PrecheckError as err:
            if "InvalidGroup.Duplicate" not in str(err):
                raise
            found = (await self._call(region, "describe_security_groups", Filters=filters))["SecurityGroups"]
            return str(found[0]["GroupId"])
        rules = [
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
            {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id}]},  # nodes talk to each other
        ]
        try:
            await self._call(region, "authorize_security_group_ingress", GroupId=group_id, IpPermissions=rules)
        except (PrecheckError, TransientError) as err:
            if "InvalidPermission.Duplicate" not in str(err):
                raise
        return group_id

    async def _ami(self, region: str, instance_type: str) -> str:
        configured = self.cfg.ami
        if isinstance(configured, str):
            return configured
        if isinstance(configured, dict) and region in configured:
            return configured[region]
        types = await self._call(region, "describe_instance_types", InstanceTypes=[instance_type])
        archs = types["InstanceTypes"][0]["ProcessorInfo"]["SupportedArchitectures"] if types["InstanceTypes"] else []
        arch = "arm64" if "arm64" in archs else "amd64"
        if (region, arch) not in self._amis:
            images = await self._call(
                region,
                "describe_images",
                Owners=["099720109477"],  # Canonical
                Filters=[
                    {"Name": "name", "Values": [f"ubuntu/images/hvm-ssd*/ubuntu-jammy-22.04-{arch}-server-*"]},
                    {"Name": "state", "Values": ["available"]},
                ],
            )
            if not images["Images"]:
                raise PrecheckError(f"no Ubuntu 22.04 ({arch}) image found in {region}: set aws.ami")
            newest = max(images["Images"], key=lambda i: i.get("CreationDate", ""))
            self._amis[(region, arch)] = str(newest["ImageId"])
        return self._amis[(region, arch)]

    async def _root_device(self, region: str, image: str) -> str:
        if (region, image) not in self._root_devices:
            found = await self._call(region, "describe_images", ImageIds=[image])
            if not found["Images"]:
                raise PrecheckError(f"image {image} does not exist in {region}: check image_id (or aws.ami)")
            self._root_devices[(region, image)] = str(found["Images"][0].get("RootDeviceName") or "/dev/sda1")
        return self._root_devices[(region, image)]

    # -- nodes ---------------------------------------------------------------------------------------

    def _ssh_target(self, node: NodeInfo) -> SSHTarget:
        return SSHTarget(node.ip, node.ssh_port or 22, node.ssh_user or self.cfg.ssh_user, str(self.private_key_path()))

    def node(self, cluster: ClusterInfo, rank: int) -> SSHNodeAgent:
        return cluster_node(self._ssh_target(cluster.nodes[rank]), cluster.name, rank, self.options)

    def _instance(self, region: str, cluster_name: str, rank: int, instance: dict[str, Any]) -> CloudInstance:
        return CloudInstance(
            backend=NAME,
            place=region,
            instance_id=instance["InstanceId"],
            cluster=cluster_name,
            rank=rank,
            public_ip=str(instance.get("PublicIpAddress") or ""),
            private_ip=str(instance.get("PrivateIpAddress") or ""),
        )

    async def _node_info(self, region: str, cluster_name: str, rank: int, instance: dict[str, Any]) -> NodeInfo:
        address = await self.addresses.address(self._instance(region, cluster_name, rank, instance))
        return NodeInfo(
            rank=rank,
            ip=address.host,
            host_id=instance["InstanceId"],
            ssh_port=address.port,
            ssh_user=self.cfg.ssh_user,
        )

    # -- protocol ------------------------------------------------------------------------------------

    async def provision(self, cluster_name: str, candidate: Candidate, num_nodes: int, meta: JobMeta) -> ClusterInfo:
        region = candidate.region
        key_name = await self._ensure_key_pair(region)
        group_id = await self._ensure_security_group(region)
        every = await self._cluster_instances(region, cluster_name, NOT_TERMINATED)
        live = [i for i in every if i["State"]["Name"] in LIVE]
        dead = [i["InstanceId"] for i in every if i["State"]["Name"] not in LIVE]
        if dead:  # stopped or dying leftovers of an earlier try: not worth adopting
            await self._call(region, "terminate_instances", InstanceIds=dead)
        if len(live) < num_nodes:
            live += await self._launch(
                region, cluster_name, candidate, num_nodes - len(live), meta, key_name, group_id, every
            )
        if len(live) > num_nodes:
            extra = [i["InstanceId"] for i in live[num_nodes:]]
            await self._call(region, "terminate_instances", InstanceIds=extra)
            live = live[:num_nodes]
        instances = await self._wait_running(region, [i["InstanceId"] for i in live])
        nodes = [await self._node_info(region, cluster_name, rank, i) for rank, i in enumerate(instances)]
        await asyncio.gather(
            *(wait_reachable(self._ssh_target(n), self.options, self.cfg.provision_timeout) for n in nodes)
        )
        return ClusterInfo(
            name=cluster_name,
            backend=NAME,
            region=region,
            zone=instances[0].get("Placement", {}).get("AvailabilityZone") or candidate.zone,
            instance_type=candidate.instance_type,
            use_spot=candidate.use_spot,
            nodes=nodes,
            extra={"pool": meta.pool}
            if meta.pool
            else {"job_id": str(meta.job_id), "task_index": str(meta.task_index)},
        )

    async def _launch(
        self,
        region: str,
        cluster_name: str,
        candidate: Candidate,
        count: int,
        meta: JobMeta,
        key_name: str,
        group_id: str,
        known: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        # The user's labels first: tsky's own tags (which the sweeper relies on) win a clash.
        tags = {**dict(candidate.labels), "Name": cluster_name, keys.CLUSTER: cluster_name, keys.OWNER: self.owner}
        if meta.pool:  # a tsky pool's worker belongs to its pool, not to the jobs it runs one after another
            tags[keys.POOL] = meta.pool
        else:
            tags |= {keys.JOB: str(meta.job_id), keys.TASK: str(meta.task_index)}
        tags[keys.LAUNCH] = str(_launch_of(cluster_name))
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        # The same request for the same cluster state gets the same token: a retried call (the worker died
        # before it saw the answer) returns the first call's reservation instead of launching again.
        request = [cluster_name, region, candidate.zone or "", candidate.instance_type, str(candidate.use_spot)]
        seed = "|".join([*request, str(count), *sorted(i["InstanceId"] for i in known)])
        image = candidate.image_id or await self._ami(region, candidate.instance_type)
        params: dict[str, Any] = {
            "ImageId": image,
            "InstanceType": candidate.instance_type,
            "MinCount": count,
            "MaxCount": count,
            "KeyName": key_name,
            "SecurityGroupIds": [group_id],
            "ClientToken": hashlib.sha256(seed.encode()).hexdigest()[:64],
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tag_list},
                {"ResourceType": "volume", "Tags": tag_list},
            ],
        }
        if candidate.zone:
            params["Placement"] = {"AvailabilityZone": candidate.zone}
        if candidate.disk_size_gb:
            # The image's own root volume is often 8 GB: resize it, as SkyPilot's disk_size does.
            root = await self._root_device(region, image)
            params["BlockDeviceMappings"] = [
                {
                    "DeviceName": root,
                    # Said explicitly: a mapping given at launch must never outlive the instance.
                    "Ebs": {"VolumeSize": candidate.disk_size_gb, "VolumeType": "gp3", "DeleteOnTermination": True},
                }
            ]
        if candidate.use_spot:
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
            }
        reservation = await self._call(region, "run_instances", **params)
        return list(reservation["Instances"])

    async def _wait_running(self, region: str, ids: list[str]) -> list[dict[str, Any]]:
        """The instances once all run and have an address, in the order of `ids`."""
        deadline = time.monotonic() + self.cfg.provision_timeout
        while True:
            try:
                found = {i["InstanceId"]: i for i in await self._instances(region, InstanceIds=ids)}
            except TransientError as err:
                if "InvalidInstanceID.NotFound" not in str(err) or time.monotonic() > deadline:
                    raise  # new ids can take a moment to show up
                found = {}
            instances = [found[i] for i in ids if i in found]
            gone = [i["InstanceId"] for i in instances if i["State"]["Name"] not in LIVE]
            if gone:
                # A spot instance taken back while booting: this place has no capacity for us now.
                raise CapacityError(f"instances {', '.join(gone)} in {region} ended while starting")
            if len(instances) == len(ids) and all(
                i["State"]["Name"] == "running" and (i.get("PublicIpAddress") or i.get("PrivateIpAddress"))
                for i in instances
            ):
                return instances
            if time.monotonic() > deadline:
                raise TransientError(f"instances in {region} not running after {self.cfg.provision_timeout:.0f}s")
            await asyncio.sleep(2)

    async def _owned_instances(self, region: str) -> dict[str, Any]:
        """Every instance this installation has in `region` (terminated ones too, while EC2 still shows
        them: they say why they ended), by id."""
        found = await self._instances(
            region, Filters=[{"Name": f"tag:{keys.OWNER}", "Values": [self.owner]}], MaxResults=1000
        )
        return {i["InstanceId"]: i for i in found}

    async def node_states(self, cluster: ClusterInfo, fresh: bool = False) -> list[NodeState]:
        try:
            snap = await self.state_checks.snapshot(cluster.region, fresh)
            if not fresh and any(n.host_id not in snap.items for n in cluster.nodes):
                # Missing from a listing older than the question is no evidence (a cluster launched since).
                snap = await self.state_checks.snapshot(cluster.region, fresh=True)
        except ThrottledError:
            return [NodeState.UNKNOWN] * len(cluster.nodes)
        found = [snap.items.get(n.host_id) for n in cluster.nodes]
        # Only a spot instance that ended without a spot reason of its own needs its request's word.
        unsure = [
            i["SpotInstanceRequestId"]
            for i in found
            if i is not None
            and i.get("SpotInstanceRequestId")
            and i["State"]["Name"] not in LIVE
            and not str(i.get("StateReason", {}).get("Code", "")).startswith("Server.Spot")
        ]
        spot_status: dict[str, str] = {}
        if unsure:
            answer = await self._call(cluster.region, "describe_spot_instance_requests", SpotInstanceRequestIds=unsure)
            spot_status = {
                r["SpotInstanceRequestId"]: r.get("Status", {}).get("Code", "") for r in answer["SpotInstanceRequests"]
            }
        return [
            NodeState.GONE if i is None else node_state(i, spot_status.get(i.get("SpotInstanceRequestId", "")))
            for i in found
        ]

    async def teardown(self, cluster_name: str, cluster: ClusterInfo | None) -> None:
        regions = [cluster.region] if cluster is not None else self._regions()
        results = await asyncio.gather(*(self._teardown_in(r, cluster_name) for r in regions), return_exceptions=True)
        problems = []
        for region, result in zip(regions, results, strict=True):
            if not isinstance(result, BaseException):
                continue
            # When searching every region, those this account cannot use hold nothing of ours.
            if cluster is None and ("OptInRequired" in str(result) or "AuthFailure" in str(result)):
                continue
            problems.append(f"{region}: {result}")
        if problems:
            raise TransientError(f"teardown of {cluster_name} not confirmed: " + "; ".join(problems))

    async def _teardown_in(self, region: str, cluster_name: str) -> None:
        every = await self._cluster_instances(region, cluster_name, (*NOT_TERMINATED, "terminated"))
        for rank, instance in enumerate(every):
            await self.addresses.released(self._instance(region, cluster_name, rank, instance))
        ids = [i["InstanceId"] for i in every if i["State"]["Name"] != "terminated"]
        if not ids:
            return
        await self._call(region, "terminate_instances", InstanceIds=ids)
        deadline = time.monotonic() + self.cfg.provision_timeout
        while True:
            left = [i for i in await self._instances(region, InstanceIds=ids) if i["State"]["Name"] != "terminated"]
            if not left:
                return
            if time.monotonic() > deadline:
                raise TransientError(
                    f"{len(left)} instance(s) of {cluster_name} in {region} still {left[0]['State']['Name']}"
                )
            await asyncio.sleep(5)

    async def list_clusters(self) -> list[ClusterRecord]:
        regions = self._regions()
        results = await asyncio.gather(*(self._list_in(r) for r in regions), return_exceptions=True)
        records: list[ClusterRecord] = []
        for result in results:
            if isinstance(result, BaseException):
                if "OptInRequired" in str(result) or "AuthFailure" in str(result):
                    continue  # a region this account does not use
                raise result
            records += result
        return records

    async def _list_in(self, region: str) -> list[ClusterRecord]:
        instances = await self._instances(
            region,
            Filters=[
                {"Name": "tag-key", "Values": [keys.CLUSTER]},
                {"Name": "instance-state-name", "Values": list(NOT_TERMINATED)},
            ],
        )
        listed = [
            Listed(
                place=region,
                labels=_tags(i.get("Tags")),
                state=node_state(i),
                launched_at=i["LaunchTime"].timestamp() if i.get("LaunchTime") else None,
                resource=i,
            )
            for i in instances
        ]
        return cluster_records(NAME, listed, _describe)


def _describe(region: str, members: list[dict[str, Any]]) -> tuple[str, dict[str, str]]:
    return region, {
        "instance_type": str(members[0].get("InstanceType", "")),
        "spot": str(members[0].get("InstanceLifecycle") == "spot"),
        "instances": ",".join(i["InstanceId"] for i in members),
    }


def make_backend(settings: Settings) -> AwsBackend:
    return AwsBackend(settings)
