"""The `aws` backend against moto's EC2 (real HTTP), its nodes reached over real SSH on sshd nodes standing in
for the instances (`stand_ins.py`, through the address resolver setting):
on-demand and spot clusters, adoption, node states (a spot interruption injected in moto), capacity and
precheck errors, teardown that leaves nothing behind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
import pytest_asyncio

from tests.backends import stand_ins
from tests.backends.conftest import MotoEC2
from tests.backends.sshd import SSHNodes
from tsky.contract.activity_io import JobMeta
from tsky.ops.clouds import ssh_runner
from tsky.ops.clouds.aws import AwsBackend, node_state
from tsky.ops.clouds.base import CapacityError, PrecheckError
from tsky.spec.requests import Candidate
from tsky.spec.settings import Settings, SettingsError, load_settings
from tsky.spec.status import NodeState

pytestmark = pytest.mark.asyncio


def aws_config(moto: MotoEC2, nodes: SSHNodes, **extra: Any) -> dict[str, Any]:
    return {
        "endpoint_url": moto.url,
        "regions": ["us-east-1"],
        "ami": moto.an_ami(),
        "ssh_user": "root",
        "ssh_private_key": str(nodes.client_key),
        "state_check_seconds": 1,
        "provision_timeout": 20,
        **extra,
    }


def stand_in_nodes(home: Path, nodes: SSHNodes, count: int) -> dict[str, str]:
    """`count` new sshd nodes standing in for the instances of the tsky home `home`: the aws setting."""
    return stand_ins.use(home, [nodes.start().endpoint for _ in range(count)])


def meta(job_id: int) -> JobMeta:
    return JobMeta(job_id=job_id, job_name="j", task_index=0, task_name="j", task_id="t", task_ids=["t"], user="u")


def candidate(spot: bool = False, itype: str = "m5.large", zone: str = "us-east-1a") -> Candidate:
    return Candidate(
        cloud="aws", region="us-east-1", zone=zone, instance_type=itype, vcpus=2, memory_gb=8, use_spot=spot
    )


@pytest_asyncio.fixture(loop_scope="session")
async def pool() -> AsyncIterator[None]:
    yield
    await ssh_runner.close_all()


async def test_on_demand_and_spot_clusters_states_and_teardown(
    moto_ec2: MotoEC2, ssh_nodes: SSHNodes, tmp_path: Path, pool: None
) -> None:
    nodes = stand_in_nodes(tmp_path, ssh_nodes, 4)
    backend = AwsBackend(Settings(home=tmp_path, aws=aws_config(moto_ec2, ssh_nodes, **nodes)))

    od = await backend.provision("od-1", candidate(), 2, meta(1))
    assert od.backend == "aws" and od.zone == "us-east-1a" and len(od.nodes) == 2 and not od.use_spot
    ids = [n.host_id for n in od.nodes]
    described = {i["InstanceId"]: i for i in moto_ec2.instances("od-1")}
    assert set(described) == set(ids)
    tags = {t["Key"]: t["Value"] for t in described[ids[0]]["Tags"]}
    assert tags["tsky-cluster"] == "od-1" and tags["tsky-job-id"] == "1" and tags["tsky-task"] == "0"
    assert tags["tsky-launch"] == "0" and tags["tsky-owner"] == backend.owner
    assert described[ids[0]]["KeyName"].startswith("tsky-")
    assert await backend.provision("od-1", candidate(), 2, meta(1)) == od  # adopted, nothing new launched
    assert len(moto_ec2.instances("od-1")) == 2

    # The nodes are real: phases run over SSH on the stand-in sshd nodes.
    agent = backend.node(od, 1)
    await agent.start_phase("run-a0", "echo hello from rank 1", {})
    assert (await agent.phase_status("run-a0")).started

    spot = await backend.provision("sp-2-r1", candidate(spot=True, zone="us-east-1b"), 1, meta(2))
    [instance] = moto_ec2.instances("sp-2-r1")
    assert instance["InstanceLifecycle"] == "spot" and instance["Placement"]["AvailabilityZone"] == "us-east-1b"
    assert {t["Key"]: t["Value"] for t in instance["Tags"]}["tsky-launch"] == "1"
    # Three live instances, three different sshd nodes.
    assert len({(n.ip, n.ssh_port) for n in [*od.nodes, *spot.nodes]}) == 3

    assert await backend.node_states(od) == [NodeState.UP, NodeState.UP]
    assert await backend.node_states(spot) == [NodeState.UP]
    records = {r.name: r for r in await backend.list_clusters()}
    assert set(records) == {"od-1", "sp-2-r1"}
    assert (records["od-1"].job_id, records["od-1"].nodes, records["od-1"].owner) == (1, 2, backend.owner)
    assert records["sp-2-r1"].extra["spot"] == "True"

    # AWS takes the spot instance back; an on-demand one is stopped by someone.
    moto_ec2.interrupt_spot(spot.nodes[0].host_id)
    # The watcher asks for a fresh answer once it sees something happen (a process ended, a node silent).
    assert await backend.node_states(spot, fresh=True) == [NodeState.PREEMPTED]
    moto_ec2.client().stop_instances(InstanceIds=[ids[1]])
    assert await backend.node_states(od, fresh=True) == [NodeState.UP, NodeState.STOPPED]

    worker = await backend.provision("w-1", candidate(), 1, meta(0).model_copy(update={"pool": "workers"}))
    record = next(r for r in await backend.list_clusters() if r.name == "w-1")
    assert (record.pool, record.job_id) == ("workers", None)
    await backend.teardown("w-1", worker)

    await backend.teardown("sp-2-r1", spot)
    await backend.teardown("od-1", None)  # by name only: every configured region is searched
    assert all(i["State"]["Name"] == "terminated" for i in moto_ec2.instances())
    assert await backend.list_clusters() == []
    assert await backend.node_states(od, fresh=True) == [NodeState.GONE, NodeState.GONE]
    await backend.teardown("od-1", od)  # idempotent
    # Told of the deletions, the stand-ins cleaned their nodes as EC2 would have: no process of either cluster is left.
    for node in ssh_nodes.nodes:
        assert not (node.home / ".tsky" / "clusters" / "od-1").exists()
    # Key pair and security group are shared by every cluster: kept, and reused by the next launch.
    client = moto_ec2.client()
    assert len(client.describe_key_pairs()["KeyPairs"]) == 1
    groups = client.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["tsky"]}])["SecurityGroups"]
    assert len(groups) == 1
    assert {p["FromPort"] for p in groups[0]["IpPermissions"] if p.get("FromPort")} == {22}


async def test_capacity_precheck_and_launch_failures(
    moto_ec2: MotoEC2, ssh_nodes: SSHNodes, tmp_path: Path, pool: None
) -> None:
    nodes = stand_in_nodes(tmp_path, ssh_nodes, 1)
    backend = AwsBackend(Settings(home=tmp_path, aws=aws_config(moto_ec2, ssh_nodes, **nodes)))
    codes: list[str] = []

    def refuse(params: dict[str, Any], **_: Any) -> None:
        if codes:
            code = codes.pop(0)
            raise botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "injected"}}, "RunInstances")

    backend._client("us-east-1").meta.events.register("provide-client-params.ec2.RunInstances", refuse)
    for code in ("InsufficientInstanceCapacity", "MaxSpotInstanceCountExceeded", "SpotMaxPriceTooLow", "Unsupported"):
        codes.append(code)
        with pytest.raises(CapacityError, match=code):
            await backend.provision("cap-1", candidate(spot=True), 1, meta(1))
    for code in ("AuthFailure", "UnauthorizedOperation", "InvalidParameterValue"):
        codes.append(code)
        with pytest.raises(PrecheckError, match=code):
            await backend.provision("cap-1", candidate(), 1, meta(1))
    codes.append("RequestLimitExceeded")
    with pytest.raises(Exception, match="RequestLimitExceeded") as err:
        await backend.provision("cap-1", candidate(), 1, meta(1))
    assert not isinstance(err.value, CapacityError | PrecheckError)
    assert moto_ec2.instances("cap-1") == []

    # No image configured and none of Canonical's in this (fake) region: say how to fix it.
    bare = AwsBackend(Settings(home=tmp_path, aws=aws_config(moto_ec2, ssh_nodes, ami=None, **nodes)))
    with pytest.raises(PrecheckError, match=r"set aws\.ami"):
        await bare.provision("img-1", candidate(), 1, meta(1))

    # A resolver the worker cannot import: a precheck error naming the setting.
    with pytest.raises(PrecheckError, match=r"aws\.ssh_address_resolver: cannot load 'tsky_nowhere:addresses'"):
        AwsBackend(
            Settings(home=tmp_path, aws=aws_config(moto_ec2, ssh_nodes, ssh_address_resolver="tsky_nowhere:addresses"))
        )

    # A node that never answers SSH: the launch fails (transient), and teardown by name leaves nothing.
    dead = stand_ins.use(tmp_path, ["127.0.0.1:9"])
    slow = AwsBackend(Settings(home=tmp_path, aws=aws_config(moto_ec2, ssh_nodes, provision_timeout=1, **dead)))
    with pytest.raises(ssh_runner.NodeUnreachable):
        await slow.provision("ssh-1", candidate(), 1, meta(1))
    await slow.teardown("ssh-1", None)
    assert all(i["State"]["Name"] == "terminated" for i in moto_ec2.instances("ssh-1"))


@pytest.mark.filterwarnings("ignore")
def test_a_resolver_setting_that_is_not_a_factory_path_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("aws:\n  ssh_address_resolver: my_addresses.py\n")
    with pytest.raises(
        SettingsError, match=r"aws\.ssh_address_resolver: .*'my_addresses\.py' is not `package\.module:callable`"
    ):
        load_settings(tmp_path)


@pytest.mark.filterwarnings("ignore")
def test_node_state_table() -> None:
    def inst(state: str, spot: bool, reason: str = "") -> dict[str, Any]:
        found: dict[str, Any] = {"State": {"Name": state}, "StateReason": {"Code": reason}}
        if spot:
            found["InstanceLifecycle"] = "spot"
        return found

    assert node_state(inst("pending", True)) is NodeState.UP
    assert node_state(inst("running", True), "marked-for-termination") is NodeState.UP  # still running
    assert node_state(inst("terminated", True, "Server.SpotInstanceTermination")) is NodeState.PREEMPTED
    assert node_state(inst("stopped", True, "Server.SpotInstanceShutdown")) is NodeState.PREEMPTED
    assert node_state(inst("terminated", True), "instance-terminated-no-capacity") is NodeState.PREEMPTED
    assert node_state(inst("terminated", True, "Client.UserInitiatedShutdown"), "instance-terminated-by-user") is (
        NodeState.GONE
    )
    assert node_state(inst("shutting-down", False)) is NodeState.GONE
    assert node_state(inst("stopping", False, "Client.UserInitiatedShutdown")) is NodeState.STOPPED
