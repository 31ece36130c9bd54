"""The SSH runner against real sshd nodes: exactly-once start, re-attach, log offsets, kill, env quoting,
file copies (rsync and SFTP), a dead node noticed."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.backends.sshd import SSHNode, SSHNodes
from tests.integration.test_jobs_cli import no_tagged_processes
from tsky.ops.clouds import ssh_runner
from tsky.ops.clouds.ssh_runner import NodeUnreachable, SSHNodeAgent, SSHOptions, SSHTarget

pytestmark = pytest.mark.asyncio

FAST = SSHOptions(connect_timeout=3, keepalive_interval=1, keepalive_count_max=2, command_timeout=20)


def agent(nodes: SSHNodes, node: SSHNode, options: SSHOptions = FAST, cluster: str = "c1") -> SSHNodeAgent:
    target = SSHTarget(node.addr, node.port, "root", str(nodes.client_key))
    return SSHNodeAgent(target, f".tsky/clusters/{cluster}", f"{cluster}/0", options=options)


@pytest_asyncio.fixture(loop_scope="session")
async def pool() -> AsyncIterator[None]:
    yield
    await ssh_runner.close_all()


async def wait_for(predicate, timeout: float = 20):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_start_once_reattach_logs_and_exit(ssh_nodes: SSHNodes, pool: None) -> None:
    node = ssh_nodes.start()
    a = agent(ssh_nodes, node)
    assert not (await a.phase_status("run-a0")).started
    script = "for i in 1 2 3; do echo line$i; done; cat /nonexistent; sleep 0.3; echo done; exit 5"
    # Racing starts (a retried activity, two workers) start the phase once.
    pids = await asyncio.gather(*(a.start_phase("run-a0", script, {"X": "1"}) for _ in range(5)))
    assert len(set(pids)) == 1

    # A different agent over a fresh connection (another worker) attaches to the same process.
    await ssh_runner.close_all()
    b = agent(ssh_nodes, node)
    assert await b.start_phase("run-a0", "echo never", {}) == pids[0]
    status = await wait_for(lambda: _ended(b, "run-a0"))
    assert status.exit_code == 5 and not status.alive and status.pid == pids[0]
    log = await b.read_log("run-a0", 0, 1 << 20)
    assert log.startswith(b"line1\nline2\nline3\n") and log.endswith(b"done\n")
    assert b"No such file or directory" in log
    assert status.log_size == len(log)
    assert await b.read_log("run-a0", 6, 6) == b"line2\n"
    assert await b.read_log("run-a0", len(log), 100) == b""
    assert await b.read_log("setup-a0", 0, 100) == b""
    # The node's files: the layout of phases.py, secrets-bearing files private.
    d = node.home / ".tsky/clusters/c1"
    assert (d / "run-a0.exit").read_text().strip() == "5"
    assert oct((d / "run-a0.env").stat().st_mode & 0o777) == "0o600"
    assert oct(d.stat().st_mode & 0o777) == "0o700"
    assert "never" not in (d / "run-a0.sh").read_text()


async def _ended(a: SSHNodeAgent, phase: str):  # type: ignore[no-untyped-def]
    status = await a.phase_status(phase)
    return status if status.exit_code is not None else None


async def test_env_values_reach_the_job_verbatim(ssh_nodes: SSHNodes, pool: None, tmp_path: Path) -> None:
    node = ssh_nodes.start()
    a = agent(ssh_nodes, node)
    pwned = node.home / "pwned"
    nasty = {
        "QUOTES": 'it\'s "quoted" `backticks`',
        "SUBST": "$(touch ~/pwned) ${HOME} $HOME",
        "NEWLINES": "a\nb\n\nc",
        "BACKSLASH": "\\n \\ \\\\",
        "SEMI": "x; touch ~/pwned; 'y",
        "UNICODE": "héllo ✓",
        "EMPTY": "",
    }
    script = "".join(f'printf "%s|" "${k}"\n' for k in nasty) + "umask\n"
    await a.start_phase("run-a0", script, nasty)
    await wait_for(lambda: _ended(a, "run-a0"))
    out = (await a.read_log("run-a0", 0, 1 << 20)).decode()
    values, umask = out.rsplit("|", 1)
    assert values.split("|") == list(nasty.values())
    assert umask.strip() == "0022"  # the job gets the usual umask, not the private one of tsky's files
    assert not pwned.exists()
    with pytest.raises(ValueError, match="invalid environment variable"):
        await a.start_phase("bad", "true", {"A;touch x": "1"})


async def test_stop_kills_group_and_daemonised_strays(ssh_nodes: SSHNodes, pool: None) -> None:
    node = ssh_nodes.start()
    a = agent(ssh_nodes, node)
    script = "setsid sleep 300 & sleep 300 & echo started; wait"
    await a.start_phase("run-a0", script, {})
    await wait_for(lambda: _logged(a, "run-a0", b"started"))
    assert node.count("sleep") == 2
    await a.stop_phase("run-a0", grace=1)
    status = await a.phase_status("run-a0")
    # Ended by the stop's SIGTERM, and reported as its shell reports that (the wrapper outlives it).
    assert status.exit_code == 128 + signal.SIGTERM and not status.alive
    assert node.count("sleep") == 0
    await a.stop_phase("run-a0")  # idempotent

    # terminate(): every phase of the node, the tagged strays, and the directories.
    await a.start_phase("setup-a0", "setsid sleep 300 & sleep 300", {})
    await a.sync_dir(str(_tree(node.dir / "src")), "sky_workdir")
    await a.terminate(grace=1, remove=["sky_workdir"])
    assert node.count("sleep") == 0
    assert not (node.home / ".tsky/clusters/c1").exists() and not (node.home / "sky_workdir").exists()
    await a.terminate()  # idempotent
    with pytest.raises(ValueError):
        await a.terminate(remove=["~"])


async def _logged(a: SSHNodeAgent, phase: str, text: bytes) -> bool:
    return text in await a.read_log(phase, 0, 1 << 16)


def _tree(root: Path) -> Path:
    (root / "sub dir").mkdir(parents=True)
    (root / "a.txt").write_text("A")
    (root / "sub dir" / "b.txt").write_text("B")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "link").symlink_to("a.txt")
    return root


@pytest.mark.parametrize("use_rsync", [True, False], ids=["rsync", "sftp"])
async def test_sync_dir_and_file(ssh_nodes: SSHNodes, pool: None, tmp_path: Path, use_rsync: bool) -> None:
    node = ssh_nodes.start()
    options = SSHOptions(connect_timeout=3, keepalive_interval=1, keepalive_count_max=2, use_rsync=use_rsync)
    a = agent(ssh_nodes, node, options)
    src = _tree(tmp_path / "src")
    await a.sync_dir(str(src), "sky_workdir")
    await a.sync_dir(str(src), "~/deep/er/copy")
    single = tmp_path / "data.bin"
    single.write_bytes(bytes(range(256)) * 100)
    await a.sync_file(str(single), "~/mounts/data.bin")
    await a.sync_file(str(single), str(node.dir / "abs" / "data.bin"))
    for dest in (node.home / "sky_workdir", node.home / "deep/er/copy"):
        assert (dest / "a.txt").read_text() == "A"
        assert (dest / "sub dir" / "b.txt").read_text() == "B"
        assert (dest / "run.sh").stat().st_mode & 0o111
        assert (dest / "link").is_symlink() and (dest / "link").read_text() == "A"
    assert (node.home / "mounts/data.bin").read_bytes() == single.read_bytes()
    assert (node.dir / "abs" / "data.bin").read_bytes() == single.read_bytes()
    # Copying again overwrites changed files.
    (src / "a.txt").write_text("A2")
    await a.sync_dir(str(src), "sky_workdir")
    assert (node.home / "sky_workdir/a.txt").read_text() == "A2"


async def test_dead_node_is_unreachable_and_a_fresh_one_is_reached(ssh_nodes: SSHNodes, pool: None) -> None:
    node = ssh_nodes.start()
    a = agent(ssh_nodes, node)
    await a.start_phase("run-a0", "sleep 300", {})
    assert (await a.phase_status("run-a0")).alive
    node.kill()
    assert no_tagged_processes("c1/0:")  # the job died with its node
    with pytest.raises(NodeUnreachable):
        await a.phase_status("run-a0")
    with pytest.raises(NodeUnreachable):
        await agent(ssh_nodes, node).read_log("run-a0", 0, 10)
    other = agent(ssh_nodes, ssh_nodes.start())
    assert not (await other.phase_status("run-a0")).started


async def test_connections_are_reused(ssh_nodes: SSHNodes, pool: None) -> None:
    node = ssh_nodes.start()
    a, b = agent(ssh_nodes, node), agent(ssh_nodes, node, cluster="c2")
    await asyncio.gather(*(x.phase_status("run") for x in (a, b) for _ in range(20)))
    # One TCP connection served all 40 calls of both agents: one sshd session process for it.
    sessions = (await a.run("pgrep -c -f 'sshd: root'")).stdout.strip()
    assert sessions == b"1"


async def test_a_silent_node_is_noticed_by_keepalives(ssh_nodes: SSHNodes, pool: None) -> None:
    node = ssh_nodes.start()
    # Commands may take long here: only the keepalives can notice the node went silent.
    patient = SSHOptions(connect_timeout=3, keepalive_interval=1, keepalive_count_max=2, command_timeout=600)
    a = agent(ssh_nodes, node, patient)
    assert not (await a.phase_status("run-a0")).started
    frozen = node.pids()
    for pid in frozen:  # the machine hangs: no RST, no answer, as after a power loss or a partition
        os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(NodeUnreachable) as err:
            await a.phase_status("run-a0")
        assert "timed out after 600" not in str(err.value)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)


async def test_a_phase_started_in_the_old_per_cluster_directory_is_reattached(ssh_nodes: SSHNodes, pool: None) -> None:
    """A job in flight across the upgrade that keyed node state by rank and host: its node's phase files
    are still directly under ~/.tsky/clusters/<cluster>, and `run` must not start a second time."""
    node = ssh_nodes.start()
    old = agent(ssh_nodes, node, cluster="inflight-1")  # the old layout: one directory per cluster
    pid = await old.start_phase("run-a0", "echo old; sleep 300", {})
    target = SSHTarget(node.addr, node.port, "root", str(ssh_nodes.client_key))
    new = ssh_runner.cluster_node(target, "inflight-1", 0, FAST)
    assert await new.start_phase("run-a0", "echo never", {}) == pid
    status = await new.phase_status("run-a0")
    assert status.started and status.alive and status.pid == pid
    assert await wait_for(lambda: new.read_log("run-a0", 0, 100)) == b"old\n"
    await new.terminate(grace=1.0, tag_prefix="inflight-1/")
    assert not (node.home / ".tsky" / "clusters" / "inflight-1").exists()
    assert node.count("sleep") == 0
