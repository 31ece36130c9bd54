"""Watching a job's output over SSH through one long-lived stream per node, and its polling fallback:
real dev server, real worker, real sshd nodes."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.backends.followers import log_followers
from tests.backends.sshd import SSHNode, SSHNodes
from tests.backends.test_ssh_backend import write_pools
from tests.harness import TskyEnv, WorkerProc, wait_until
from tests.integration.test_jobs_cli import no_tagged_processes, wait_status

pytestmark = pytest.mark.integration

LINES = 40
COUNTING = f"""\
name: ssh-counting
run: for i in $(seq 1 {LINES}); do echo "line $i"; sleep 0.25; done
"""


def _stat(pid: int) -> tuple[str, int]:
    """(command name, parent pid) of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.index("(") + 1 : stat.rindex(")")], int(stat[stat.rindex(")") + 2 :].split()[1])


def followers(node: SSHNode) -> list[int]:
    """The node's log followers, one per streamed phase."""
    return log_followers(node.pids())


def session_of(pid: int) -> int:
    """The sshd process that serves the connection a process was started through."""
    while True:
        name, parent = _stat(pid)
        if name.startswith("sshd") and _stat(parent)[0].startswith("sshd"):
            return pid
        pid = parent


def lines_written(node: SSHNode) -> int:
    return sum(log.read_text().count("\n") for log in (node.home / ".tsky" / "clusters").glob("*/*/run*.log"))


def numbered_lines(env: TskyEnv, job_id: int) -> list[int]:
    logs = env.tsky("jobs", "logs", str(job_id), "--no-follow").stdout
    return [int(n) for n in re.findall(r"^\(ssh-counting, pid=\d+\) line (\d+)$", logs, re.M)]


def test_a_broken_stream_is_reattached_without_losing_or_repeating_a_line(
    tsky_env: TskyEnv, ssh_nodes: SSHNodes, worker: WorkerProc
) -> None:
    node = ssh_nodes.start()
    write_pools(tsky_env.home, ssh_nodes, {"p": [node]})
    job = tsky_env.write("counting.yaml", COUNTING)
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", "--infra", "ssh/p", str(job)).returncode == 0

    # The connection carrying the stream drops mid-phase (its sshd dies): the watcher opens a new one.
    [first] = wait_until(lambda: lines_written(node) >= 8 and followers(node), 60, what="a streamed phase")
    os.kill(session_of(first), signal.SIGKILL)
    [second] = wait_until(lambda: [p for p in followers(node) if p != first], 30, what="a re-attached stream")
    # Then the follower itself is killed: its channel ends without the phase's end.
    wait_until(lambda: lines_written(node) >= 20, 60, what="more output")
    os.kill(second, signal.SIGKILL)
    wait_until(lambda: [p for p in followers(node) if p not in (first, second)], 30, what="a second re-attach")

    wait_status(tsky_env, 1, "SUCCEEDED", timeout=120)
    assert numbered_lines(tsky_env, 1) == list(range(1, LINES + 1))


def test_cancel_kills_a_streamed_job_and_its_follower(
    tsky_env: TskyEnv, ssh_nodes: SSHNodes, worker: WorkerProc
) -> None:
    node = ssh_nodes.start()
    write_pools(tsky_env.home, ssh_nodes, {"p": [node]})
    job = tsky_env.write("sleeper.yaml", "name: sleeper\nrun: echo started; sleep 600\n")
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", "--infra", "ssh/p", str(job)).returncode == 0
    wait_until(lambda: lines_written(node) >= 1 and followers(node), 60, what="a streamed phase")

    assert tsky_env.tsky("jobs", "cancel", "-y", "1").returncode == 0
    wait_status(tsky_env, 1, "CANCELLED", timeout=60)
    assert no_tagged_processes("sleeper-1")
    wait_until(lambda: not followers(node), 10, what="the follower to end with its job")  # within tail's 1 s check


def test_polling_when_streaming_is_off(tsky_env: TskyEnv, ssh_nodes: SSHNodes) -> None:
    tsky_env.configure({"jobs": {"watch": {"stream": False}}})
    tsky_env.start_worker()
    node = ssh_nodes.start()
    write_pools(tsky_env.home, ssh_nodes, {"p": [node]})
    job = tsky_env.write("counting.yaml", COUNTING)
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", "--infra", "ssh/p", str(job)).returncode == 0

    wait_until(lambda: lines_written(node) >= 8, 60, what="output")
    assert followers(node) == []
    wait_status(tsky_env, 1, "SUCCEEDED", timeout=120)
    assert numbered_lines(tsky_env, 1) == list(range(1, LINES + 1))
