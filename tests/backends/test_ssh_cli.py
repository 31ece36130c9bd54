"""Managed jobs on SSH node pools through the CLI: real dev server, real worker, real sshd nodes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.backends.sshd import SSHNodes
from tests.backends.test_ssh_backend import claim_link, write_pools
from tests.harness import TskyEnv, WorkerProc, wait_until
from tests.integration.test_jobs_cli import no_tagged_processes, queue_json, wait_status

pytestmark = pytest.mark.integration

HELLO = """\
name: hello-sky
setup: echo "Running setup on $HOSTNAME_HINT."
run: echo "Hello, SkyPilot!"
envs:
  HOSTNAME_HINT: an ssh node
"""

TWO_NODES = """\
name: multi
num_nodes: 2
workdir: {workdir}
setup: echo "setup rank $SKYPILOT_SETUP_NODE_RANK"
run: |
  echo "rank=$SKYPILOT_NODE_RANK nodes=$SKYPILOT_NUM_NODES cwd=$(pwd) data=$(cat data.txt)"
  echo "$SKYPILOT_NODE_IPS" | tr '\\n' ' '; echo
"""


def claims(nodes: SSHNodes) -> list[str]:
    return [str(claim_link(n).readlink()) for n in nodes.nodes if claim_link(n).is_symlink()]


def test_hello_and_two_node_jobs_on_an_ssh_pool(tsky_env: TskyEnv, ssh_nodes: SSHNodes, worker: WorkerProc) -> None:
    nodes = [ssh_nodes.start() for _ in range(2)]
    write_pools(tsky_env.home, ssh_nodes, {"mypool": nodes})

    check = tsky_env.tsky("check")
    assert re.search(r"ssh.*enabled", check.stdout, re.I | re.S), check.stdout

    job = tsky_env.write("hello.yaml", HELLO)
    result = tsky_env.tsky("jobs", "launch", "-y", "--infra", "ssh/mypool", str(job))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\(setup pid=\d+\) Running setup on an ssh node\.", result.stdout), result.stdout
    assert re.search(r"\(hello-sky, pid=\d+\) Hello, SkyPilot!", result.stdout), result.stdout
    assert "Managed job finished: 1 (status: SUCCEEDED)." in result.stdout
    assert queue_json(tsky_env)[0]["infra"] == "SSH (mypool)"

    workdir = tsky_env.home / "project"
    workdir.mkdir()
    (workdir / "data.txt").write_text("synced")
    job = tsky_env.write("multi.yaml", TWO_NODES.format(workdir=workdir))
    result = tsky_env.tsky("jobs", "launch", "-y", "--infra", "ssh/mypool", str(job))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    home = Path.home()
    assert re.search(rf"\(head, rank=0, pid=\d+\) rank=0 nodes=2 cwd={home}/sky_workdir data=synced", out), out
    ip1 = re.escape(nodes[1].addr)
    assert re.search(rf"\(worker1, rank=1, pid=\d+, ip={ip1}\) rank=1 nodes=2 .* data=synced", out), out
    assert f"{nodes[0].addr} {nodes[1].addr}" in out
    assert "setup rank 0" in out and "setup rank 1" in out

    # Nothing left on the hosts: no claim, no files, no processes.
    assert claims(ssh_nodes) == []
    for node in nodes:
        assert not (node.home / "sky_workdir").exists()
        assert list((node.home / ".tsky" / "clusters").iterdir()) == []
    assert no_tagged_processes("multi-")


def test_node_killed_under_a_running_job_recovers_on_other_hosts(
    tsky_env: TskyEnv, ssh_nodes: SSHNodes, worker: WorkerProc, tmp_path: Path
) -> None:
    nodes = [ssh_nodes.start() for _ in range(3)]
    write_pools(tsky_env.home, ssh_nodes, {"p": nodes})
    flag, started = tmp_path / "recover-now", tmp_path / "started"
    job = tsky_env.write(
        "kill.yaml",
        f"""\
name: kill
num_nodes: 2
run: |
  if [ -e {flag} ]; then echo "done on rank $SKYPILOT_NODE_RANK"; exit 0; fi
  touch {started}-$SKYPILOT_NODE_RANK
  sleep 600
""",
    )
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", "--infra", "ssh/p", str(job)).returncode == 0
    wait_until(lambda: Path(f"{started}-0").exists() and Path(f"{started}-1").exists(), 60, what="both ranks")
    assert len(claims(ssh_nodes)) == 2 and not claim_link(nodes[2]).exists()

    nodes[1].kill()  # rank 1's machine dies, with the job's processes on it
    flag.touch()
    wait_status(tsky_env, 1, "SUCCEEDED", timeout=120)
    [row] = queue_json(tsky_env)
    assert row["recoveries"] == 1
    controller = tsky_env.tsky("jobs", "logs", "--controller", "1").stdout
    assert "unreachable" in controller, controller
    assert "Cluster launched: kill-1-r1." in controller, controller
    logs = tsky_env.tsky("jobs", "logs", "1", "--no-follow").stdout
    assert "done on rank 0" in logs and "done on rank 1" in logs, logs

    # The recovered cluster ran on the two live hosts; both are free again and clean.
    assert (nodes[2].home / ".tsky" / "clusters").exists()
    assert claims(ssh_nodes) == [f"kill-1@{_owner(nodes[1])}"]  # only the dead host keeps its stale claim
    for node in (nodes[0], nodes[2]):
        assert list((node.home / ".tsky" / "clusters").iterdir()) == []
    assert no_tagged_processes("kill-1")


def test_two_nodes_sharing_one_home_run_their_own_processes(
    tsky_env: TskyEnv, ssh_nodes: SSHNodes, worker: WorkerProc
) -> None:
    """On-premises clusters often mount /home over NFS: both hosts see the same ~/.tsky. Each node must
    still start, watch and print its own process, and the pool must hand both hosts out again after."""
    first = ssh_nodes.start()
    second = ssh_nodes.start(share_home_of=first)
    write_pools(tsky_env.home, ssh_nodes, {"nfs": [first, second]})
    job = tsky_env.write(
        "shared.yaml",
        """\
name: shared
num_nodes: 2
setup: echo "setup on node $SKYPILOT_SETUP_NODE_RANK"
run: echo "node $SKYPILOT_NODE_RANK pid $$ in $(readlink /proc/$$/ns/pid)"
""",
    )
    for job_id in (1, 2):  # the second job proves both hosts were freed and can be claimed again
        result = tsky_env.tsky("jobs", "launch", "-y", "--infra", "ssh/nfs", str(job))
        out = result.stdout
        assert result.returncode == 0, out + result.stderr
        assert f"Managed job finished: {job_id} (status: SUCCEEDED)." in out, out
        # Each rank's line comes from its own host's process (the hosts are separate pid namespaces, so
        # the namespace, not the pid number alone, tells the two processes apart).
        lines = re.findall(r"rank=(\d), pid=(\d+)[^)]*\) node (\d) pid (\d+) in (\S+)", out)
        assert sorted((rank, said) for rank, _, said, _, _ in lines) == [("0", "0"), ("1", "1")], out
        assert {ns for *_, ns in lines} == {first.pid_namespace, second.pid_namespace}, out
        assert "setup on node 0" in out and "setup on node 1" in out, out

    # A worker killed mid-run: the new one re-attaches to each node's own process (the node's state is
    # keyed by cluster, rank and host, nothing random), so `run` starts once per node and no line is lost.
    starts = tsky_env.home / "starts"
    counting = tsky_env.write(
        "counting.yaml",
        f"""\
name: counting
num_nodes: 2
run: |
  echo "$SKYPILOT_NODE_RANK" >> {starts}
  for i in 1 2 3 4 5 6; do echo "rank $SKYPILOT_NODE_RANK line $i"; sleep 1; done
""",
    )
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", "--infra", "ssh/nfs", str(counting)).returncode == 0
    wait_until(lambda: starts.exists() and len(starts.read_text().split()) == 2, 60, what="both ranks running")
    worker.kill9()
    tsky_env.start_worker()
    wait_status(tsky_env, 3, "SUCCEEDED", timeout=120)
    assert sorted(starts.read_text().split()) == ["0", "1"]
    logs = tsky_env.tsky("jobs", "logs", "3", "--no-follow").stdout
    for rank in ("0", "1"):
        assert re.findall(rf"rank {rank} line (\d)", logs) == list("123456"), logs

    assert not list(first.home.joinpath(".tsky", "clusters").iterdir())
    assert no_tagged_processes("shared-") and no_tagged_processes("counting-")


def _owner(node) -> str:  # type: ignore[no-untyped-def]
    return str(claim_link(node).readlink()).rpartition("@")[2]
