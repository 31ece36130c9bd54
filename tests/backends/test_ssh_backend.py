"""The `ssh` backend against real sshd nodes: claims (adopt, capacity, concurrent launches), node states,
teardown that leaves nothing behind, and the records the sweeper lists."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from tests.backends.sshd import SSHNode, SSHNodes
from tsky.contract.activity_io import ClusterInfo, JobMeta, NodeInfo
from tsky.ops.clouds import ssh_runner
from tsky.ops.clouds.base import CapacityError, PrecheckError
from tsky.ops.clouds.ssh import SSHBackend
from tsky.ops.clouds.ssh_runner import NodeUnreachable, SSHOptions
from tsky.spec.requests import Candidate
from tsky.spec.settings import load_settings
from tsky.spec.status import NodeState

pytestmark = pytest.mark.asyncio

FAST = SSHOptions(connect_timeout=3, keepalive_interval=1, keepalive_count_max=2, command_timeout=20)


def write_pools(home: Path, nodes: SSHNodes, pools: dict[str, list[SSHNode]]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    data = {
        name: {
            "user": "root",
            "identity_file": str(nodes.client_key),
            "hosts": [{"ip": n.addr, "port": n.port} for n in members],
        }
        for name, members in pools.items()
    }
    (home / "ssh_node_pools.yaml").write_text(yaml.safe_dump(data))


def meta(job_id: int) -> JobMeta:
    return JobMeta(job_id=job_id, job_name="j", task_index=0, task_name="j", task_id="t", task_ids=["t"], user="u")


def candidate(pool: str) -> Candidate:
    return Candidate(cloud="ssh", region=pool, instance_type="node", vcpus=1, memory_gb=1)


@pytest_asyncio.fixture(loop_scope="session")
async def pool() -> AsyncIterator[None]:
    yield
    await ssh_runner.close_all()


def claim_link(node: SSHNode) -> Path:
    """Where the ssh backend records who holds `node`: named by host, as hosts may share one home."""
    return node.home / ".tsky" / "claims" / node.endpoint


def claim_of(node: SSHNode) -> str | None:
    link = claim_link(node)
    return str(link.readlink()) if link.is_symlink() else None


async def test_claims_adopt_capacity_states_and_teardown(ssh_nodes: SSHNodes, pool: None, tmp_path: Path) -> None:
    nodes = [ssh_nodes.start() for _ in range(3)]
    home = tmp_path / "home"
    write_pools(home, ssh_nodes, {"p": nodes})
    backend = SSHBackend(load_settings(home), FAST)

    info = await backend.provision("a-1", candidate("p"), 2, meta(1))
    assert [n.ip for n in info.nodes] == [nodes[0].addr, nodes[1].addr]  # pool order
    assert info.backend == "ssh" and info.region == "p"
    owner = backend.owner
    assert claim_of(nodes[0]) == claim_of(nodes[1]) == f"a-1@{owner}" and claim_of(nodes[2]) is None
    again = await backend.provision("a-1", candidate("p"), 2, meta(1))
    assert again == info  # a retried provision adopts its hosts

    with pytest.raises(CapacityError, match="2 free host\\(s\\) needed, 1 available \\(2 in use"):
        await backend.provision("b-2", candidate("p"), 2, meta(2))
    assert claim_of(nodes[2]) is None  # the failed launch let go of what it took
    with pytest.raises(PrecheckError, match="has 3 host"):
        await backend.provision("c-3", candidate("p"), 4, meta(3))
    with pytest.raises(PrecheckError, match="pool 'nope' is not in"):
        await backend.provision("c-3", candidate("nope"), 1, meta(3))

    agents = [backend.node(info, r) for r in range(2)]
    for agent in agents:
        await agent.start_phase("run-a0", "setsid sleep 300 & sleep 300", {})
    await agents[0].sync_dir(str(tmp_path), "sky_workdir")
    assert await backend.node_states(info) == [NodeState.UP, NodeState.UP]

    [record] = await backend.list_clusters()
    assert (record.name, record.region, record.job_id, record.nodes, record.owner) == ("a-1", "p", 1, 2, owner)
    assert record.extra["hosts"] == f"{nodes[0].addr}:{nodes[0].port},{nodes[1].addr}:{nodes[1].port}"

    # A host that answers without the cluster's claim: the cluster is gone there.
    claim_link(nodes[1]).unlink()
    assert await backend.node_states(info, fresh=True) == [NodeState.UP, NodeState.GONE]

    await backend.teardown("a-1", info)
    for node in nodes[:2]:
        assert claim_of(node) is None
        assert not (node.home / ".tsky/clusters/a-1").exists() and not (node.home / "sky_workdir").exists()
        assert node.count("sleep") == 0
    await backend.teardown("a-1", info)  # idempotent
    assert await backend.list_clusters() == []

    # A tsky pool's worker cluster belongs to its pool, not to a job.
    worker = await backend.provision("w-1", candidate("p"), 1, meta(0).model_copy(update={"pool": "workers"}))
    [record] = await backend.list_clusters()
    assert (record.name, record.pool, record.job_id) == ("w-1", "workers", None)
    assert worker.extra == {"node_pool": "p", "pool": "workers"}
    await backend.teardown("w-1", worker)


async def test_a_host_with_max_clusters_runs_several_clusters(ssh_nodes: SSHNodes, pool: None, tmp_path: Path) -> None:
    """An on-premises box with 8 GPUs runs several small jobs at once: `max_clusters` lets one host hold
    that many clusters, each with its own claim, processes and files; one more waits for room."""
    node = ssh_nodes.start()
    home = tmp_path / "home"
    write_pools(home, ssh_nodes, {"p": [node]})
    pools = yaml.safe_load((home / "ssh_node_pools.yaml").read_text())
    pools["p"]["max_clusters"] = 2
    (home / "ssh_node_pools.yaml").write_text(yaml.safe_dump(pools))
    backends = [SSHBackend(load_settings(home), FAST) for _ in range(3)]  # three workers at the same moment
    results = await asyncio.gather(
        *(b.provision(f"s-{i}", candidate("p"), 1, meta(i)) for i, b in enumerate(backends)), return_exceptions=True
    )
    won = [r for r in results if isinstance(r, ClusterInfo)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 2 and len(lost) == 1 and isinstance(lost[0], CapacityError), results
    backend = backends[0]
    for info in won:
        agent = backend.node(info, 0)
        await agent.start_phase("run-a0", "echo $TSKY_PROCESS_TAG; sleep 300", {})
        assert await backend.node_states(info) == [NodeState.UP]
    await backend.node(won[0], 0).sync_dir(str(tmp_path / "home"), "sky_workdir")
    assert sorted(r.name for r in await backend.list_clusters()) == sorted(i.name for i in won)

    # One cluster ends: only its processes and files go; the host's shared workdir stays for the other.
    await backend.teardown(won[0].name, won[0])
    assert node.count("sleep") == 1
    assert not (node.home / f".tsky/clusters/{won[0].name}").exists()
    assert (node.home / f".tsky/clusters/{won[1].name}").exists() and (node.home / "sky_workdir").exists()
    assert await backend.node_states(won[1], fresh=True) == [NodeState.UP]
    again = await backend.provision("s-9", candidate("p"), 1, meta(9))  # the freed room is taken again
    for info in (won[1], again):
        await backend.teardown(info.name, info)
    assert list((node.home / ".tsky/claims").iterdir()) == [] and not (node.home / "sky_workdir").exists()
    assert node.count("sleep") == 0


async def test_concurrent_launches_never_share_a_host(ssh_nodes: SSHNodes, pool: None, tmp_path: Path) -> None:
    nodes = [ssh_nodes.start() for _ in range(3)]
    home = tmp_path / "home"
    write_pools(home, ssh_nodes, {"p": nodes})
    # Two workers (two backends, separate settings objects) launching at the same moment.
    backends = [SSHBackend(load_settings(home), FAST) for _ in range(2)]
    results = await asyncio.gather(
        *(b.provision(f"x-{i}", candidate("p"), 2, meta(i)) for i, b in enumerate(backends)), return_exceptions=True
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1 and len(lost) == 1 and isinstance(lost[0], CapacityError), results
    claims = [claim_of(n) for n in nodes]
    assert claims.count(f"{won[0].name}@{backends[0].owner}") == 2 and claims.count(None) == 1
    await backends[0].teardown(won[0].name, None)  # found by scanning the pools, as after a failed launch
    assert [claim_of(n) for n in nodes] == [None, None, None]


async def test_dead_host_is_unreachable_then_skipped_by_teardown(
    ssh_nodes: SSHNodes, pool: None, tmp_path: Path
) -> None:
    nodes = [ssh_nodes.start() for _ in range(3)]
    home = tmp_path / "home"
    write_pools(home, ssh_nodes, {"p": nodes})
    backend = SSHBackend(load_settings(home), FAST)
    info = await backend.provision("d-1", candidate("p"), 2, meta(1))
    nodes[1].kill()
    with pytest.raises(NodeUnreachable):
        await backend.node_states(info)
    await backend.teardown("d-1", info)  # the live host is cleaned, the dead one skipped
    assert claim_of(nodes[0]) is None
    # The pool now has two live hosts: a 2-node cluster fits, without the dead one.
    again = await backend.provision("d-1-r1", candidate("p"), 2, meta(1))
    assert [n.ip for n in again.nodes] == [nodes[0].addr, nodes[2].addr]
    with pytest.raises(CapacityError, match="unreachable"):
        await backend.provision("e-2", candidate("p"), 1, meta(2))
    await backend.teardown("d-1-r1", again)


async def test_a_host_claimed_in_the_old_layout_stays_its_jobs(ssh_nodes: SSHNodes, pool: None, tmp_path: Path) -> None:
    """A cluster launched before claims were keyed by host (`~/.tsky/claim`, meta in the cluster's
    directory) keeps its host across the upgrade: UP, never handed to another cluster, freed by teardown."""
    nodes = [ssh_nodes.start() for _ in range(2)]
    home = tmp_path / "home"
    write_pools(home, ssh_nodes, {"p": nodes})
    backend = SSHBackend(load_settings(home), FAST)
    old_dir = nodes[0].home / ".tsky" / "clusters" / "old-1"
    old_dir.mkdir(parents=True)
    (old_dir / "meta").write_text(f"job_id=1\ntask_index=0\nowner={backend.owner}\n")
    (nodes[0].home / ".tsky" / "claim").symlink_to(f"old-1@{backend.owner}")
    old = ClusterInfo(
        name="old-1",
        backend="ssh",
        region="p",
        instance_type="node",
        nodes=[NodeInfo(rank=0, ip=nodes[0].addr, host_id=nodes[0].endpoint, ssh_port=nodes[0].port, ssh_user="root")],
    )
    assert await backend.node_states(old) == [NodeState.UP]

    new = await backend.provision("new-2", candidate("p"), 1, meta(2))
    assert [n.ip for n in new.nodes] == [nodes[1].addr]  # not the old cluster's host
    with pytest.raises(CapacityError):
        await backend.provision("new-3", candidate("p"), 1, meta(3))

    await backend.teardown("old-1", old)
    assert not (nodes[0].home / ".tsky" / "claim").is_symlink() and not old_dir.exists()
    await backend.teardown("new-2", new)
