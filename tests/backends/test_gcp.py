"""The `gcp` backend against the fake Compute Engine REST API (`fake_gce.py`: no GCE emulator exists), its
nodes reached over real SSH on sshd nodes standing in for the instances (`stand_ins.py`): on-demand and
spot clusters with their labels, metadata and scheduling, adoption, node states (a SPOT preemption flipped
by the test), capacity and precheck errors, teardown that leaves nothing behind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.backends import stand_ins
from tests.backends.fake_gce import FakeCompute
from tests.backends.sshd import SSHNodes
from tests.integration.test_jobs_cli import no_tagged_processes
from tsky.contract.activity_io import JobMeta
from tsky.ops.clouds import ssh_runner
from tsky.ops.clouds.base import CapacityError, PrecheckError
from tsky.ops.clouds.gcp import GcpBackend
from tsky.spec.requests import Candidate
from tsky.spec.settings import Settings
from tsky.spec.status import NodeState

pytestmark = pytest.mark.asyncio


@pytest.fixture
def gce() -> Iterator[FakeCompute]:
    fake = FakeCompute().start()
    yield fake
    fake.stop()
    assert not fake.names(), f"instances left behind: {fake.names()}"


@pytest_asyncio.fixture(loop_scope="session")
async def pool() -> AsyncIterator[None]:
    yield
    await ssh_runner.close_all()


def gcp_config(gce: FakeCompute, key: Path | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "project": "tsky-test",
        "api_endpoint": gce.url,
        "anonymous_credentials": True,
        "ssh_user": "root",
        **({"ssh_private_key": str(key)} if key else {}),
        "provision_timeout": 20,
        "state_check_seconds": 1,
        **extra,
    }


def stand_in_nodes(home: Path, nodes: SSHNodes, count: int) -> dict[str, str]:
    """`count` new sshd nodes standing in for the instances of the tsky home `home`: the gcp setting."""
    return stand_ins.use(home, [nodes.start().endpoint for _ in range(count)])


def meta(job_id: int) -> JobMeta:
    return JobMeta(job_id=job_id, job_name="j", task_index=0, task_name="j", task_id="t", task_ids=["t"], user="u")


def candidate(**kwargs: Any) -> Candidate:
    base: dict[str, Any] = {
        "cloud": "gcp",
        "region": "us-central1",
        "zone": "us-central1-a",
        "instance_type": "n2-standard-4",
        "vcpus": 4,
        "memory_gb": 16,
    }
    return Candidate(**{**base, **kwargs})


async def test_on_demand_and_spot_clusters_states_and_teardown(
    gce: FakeCompute, ssh_nodes: SSHNodes, tmp_path: Path, pool: None
) -> None:
    nodes = stand_in_nodes(tmp_path, ssh_nodes, 3)
    backend = GcpBackend(Settings(home=tmp_path, gcp=gcp_config(gce, ssh_nodes.client_key, **nodes)))

    od = await backend.provision("od-1", candidate(), 2, meta(1))
    assert (od.backend, od.region, od.zone, od.use_spot, len(od.nodes)) == (
        "gcp",
        "us-central1",
        "us-central1-a",
        False,
        2,
    )
    names = [n.host_id for n in od.nodes]
    assert names == [f"od-1-{backend.owner[:6]}-0", f"od-1-{backend.owner[:6]}-1"]
    inserted = len(gce.inserted)
    assert await backend.provision("od-1", candidate(), 2, meta(1)) == od  # adopted: nothing inserted
    assert len(gce.inserted) == inserted

    instance = gce.instance(names[1])
    assert instance is not None and instance["status"] == "RUNNING"
    labels = instance["labels"]
    assert labels["tsky-cluster"] == "od-1" and labels["tsky-job-id"] == "1" and labels["tsky-task"] == "0"
    assert labels["tsky-launch"] == "0" and labels["tsky-rank"] == "1" and labels["tsky-owner"] == backend.owner
    assert instance["machineType"].endswith("/zones/us-central1-a/machineTypes/n2-standard-4")
    assert instance["scheduling"] == {"onHostMaintenance": "MIGRATE"}
    [item] = instance["metadata"]["items"]
    assert item["key"] == "ssh-keys" and item["value"].startswith("root:ssh-ed25519 ")
    assert instance["networkInterfaces"][0]["accessConfigs"][0]["type"] == "ONE_TO_ONE_NAT"

    # The nodes are real: a phase runs over SSH on the sshd node standing in for each instance.
    agent = backend.node(od, 1)
    await agent.start_phase("run-a0", "echo hello from $SKYPILOT_NODE_RANK", {"SKYPILOT_NODE_RANK": "1"})
    deadline = time.monotonic() + 20
    while (await agent.phase_status("run-a0")).exit_code is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert await agent.read_log("run-a0", 0, 1000) == b"hello from 1\n"

    spot_gpu = candidate(zone="us-central1-b", instance_type="n1-highmem-8", accelerator="T4", accelerator_count=1)
    spot = await backend.provision("spot-2-r1", spot_gpu.model_copy(update={"use_spot": True}), 1, meta(2))
    sp = gce.instance(spot.nodes[0].host_id)
    assert sp is not None and sp["labels"]["tsky-launch"] == "1"
    assert sp["scheduling"] == {
        "provisioningModel": "SPOT",
        "instanceTerminationAction": "DELETE",
        "onHostMaintenance": "TERMINATE",
        "automaticRestart": False,
    }
    assert sp["guestAccelerators"] == [
        {"acceleratorType": "zones/us-central1-b/acceleratorTypes/nvidia-tesla-t4", "acceleratorCount": 1}
    ]

    assert await backend.node_states(od) == [NodeState.UP, NodeState.UP]
    assert await backend.node_states(spot) == [NodeState.UP]
    records = {r.name: r for r in await backend.list_clusters()}
    assert set(records) == {"od-1", "spot-2-r1"}
    assert (records["od-1"].job_id, records["od-1"].nodes, records["od-1"].owner) == (1, 2, backend.owner)
    assert records["spot-2-r1"].extra == {"zone": "us-central1-b", "instance_type": "n1-highmem-8", "spot": "True"}

    gce.preempt(spot.nodes[0].host_id)  # GCE takes the SPOT VM back and deletes it
    # The watcher asks for a fresh answer once it sees something happen (a process ended, a node silent).
    assert await backend.node_states(spot, fresh=True) == [NodeState.PREEMPTED]
    # An on-demand instance deleted behind tsky's back is gone, not preempted.
    gce.delete("tsky-test", "us-central1-a", names[0])
    while gce.operation("tsky-test", "us-central1-a", gce.operations_for(names[0])[-1])[1]["status"] != "DONE":
        pass
    assert await backend.node_states(od, fresh=True) == [NodeState.GONE, NodeState.UP]

    await backend.teardown("od-1", od)
    await backend.teardown("spot-2-r1", None)  # by name only, as after a failed launch or from the sweeper
    await backend.teardown("spot-2-r1", None)  # idempotent
    assert gce.names() == []
    assert await backend.list_clusters() == []
    assert no_tagged_processes("od-1/") and no_tagged_processes("spot-2-r1/")


async def test_a_terminated_spot_vm_is_preempted(
    gce: FakeCompute, ssh_nodes: SSHNodes, tmp_path: Path, pool: None
) -> None:
    nodes = stand_in_nodes(tmp_path, ssh_nodes, 1)
    backend = GcpBackend(Settings(home=tmp_path, gcp=gcp_config(gce, ssh_nodes.client_key, **nodes)))
    spot = await backend.provision("stop-3", candidate(use_spot=True), 1, meta(3))
    gce.preempt(spot.nodes[0].host_id, delete=False)  # a STOP termination action keeps it TERMINATED
    assert await backend.node_states(spot, fresh=True) == [NodeState.PREEMPTED]
    [record] = await backend.list_clusters()
    assert record.state == "PREEMPTED"
    await backend.teardown("stop-3", spot)
    assert gce.names() == []


async def test_capacity_and_precheck_errors_leave_nothing(gce: FakeCompute, tmp_path: Path) -> None:
    backend = GcpBackend(Settings(home=tmp_path, gcp=gcp_config(gce)))
    gce.exhausted_zones.add("us-central1-a")
    with pytest.raises(CapacityError, match="ZONE_RESOURCE_POOL_EXHAUSTED"):
        await backend.provision("full-4", candidate(use_spot=True), 1, meta(4))
    await backend.teardown("full-4", None)

    gce.quota_exceeded = True
    with pytest.raises(CapacityError, match="Quota 'CPUS' exceeded"):
        await backend.provision("quota-5", candidate(zone="us-central1-c"), 2, meta(5))
    await backend.teardown("quota-5", None)
    gce.quota_exceeded = False

    with pytest.raises(PrecheckError, match="needs a zone"):
        await backend.provision("nozone-6", candidate(zone=None), 1, meta(6))
    missing_key = GcpBackend(Settings(home=tmp_path, gcp=gcp_config(gce, tmp_path / "nokey")))
    with pytest.raises(PrecheckError, match="does not exist"):
        await missing_key.provision("nokey-7", candidate(zone="us-central1-f"), 1, meta(7))
    unsafe = GcpBackend(Settings(home=tmp_path, gcp={"project": "p", "anonymous_credentials": True}))
    with pytest.raises(PrecheckError, match="only for a local fake"):
        await unsafe.provision("anon-8", candidate(), 1, meta(8))
    # tsky's own key was made on first use (0600), and no instance exists anywhere.
    assert (tmp_path / "ssh" / "tsky-gcp").stat().st_mode & 0o777 == 0o600
    assert gce.names() == []


async def test_resource_labels_become_instance_labels(
    gce: FakeCompute, ssh_nodes: SSHNodes, tmp_path: Path, pool: None
) -> None:
    nodes = stand_in_nodes(tmp_path, ssh_nodes, 1)
    backend = GcpBackend(Settings(home=tmp_path, gcp=gcp_config(gce, ssh_nodes.client_key, **nodes)))
    info = await backend.provision("lab-1", candidate(labels=(("team", "ml"), ("tsky-cluster", "mine"))), 1, meta(1))
    instance = gce.instance(info.nodes[0].host_id)
    assert instance is not None
    assert instance["labels"]["team"] == "ml"
    assert instance["labels"]["tsky-cluster"] == "lab-1"  # tsky's own label (the sweeper's) wins a clash
    await backend.teardown("lab-1", info)
