"""`tsky jobs cancel` in every phase of a job, on the real stack (dev server, worker, local infra).

Every test runs with a 10-minute heartbeat timeout: a cancel that only reached the job with a watcher's
next heartbeat would take minutes, so each test's bounded wait proves the workflow acts on the cancel
itself. Each one ends CANCELLED, with no job process and no cluster left, and a second cancel is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness import TSKY, TskyEnv, WorkerProc, wait_until
from tests.integration.test_jobs_cli import no_tagged_processes, queue_json, wait_status
from tsky.contract import search_attributes as sa
from tsky.contract.ids import job_workflow_id

pytestmark = pytest.mark.integration

SLOW_HEARTBEATS = {"jobs": {"watch": {"heartbeat_timeout_seconds": 600}}}
# Enough for any run in these tests to end; far less than one heartbeat timeout.
END_WITHIN = 90


def launch(env: TskyEnv, yaml_text: str) -> int:
    path = env.write("job.yaml", yaml_text)
    result = env.tsky("jobs", "launch", "-d", "-y", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    return max(int(job["job_id"]) for job in queue_json(env))  # type: ignore[call-overload]


def controller_log(env: TskyEnv, job_id: int) -> str:
    return env.tsky("jobs", "logs", "--controller", "--no-follow", str(job_id)).stdout


def job_log(env: TskyEnv, job_id: int) -> str:
    return env.tsky("jobs", "logs", "--no-follow", str(job_id)).stdout


async def _cancel_and_watch(env: TskyEnv, job_id: int) -> list[str]:
    """Cancel the job through the CLI (twice: the repeat must be harmless) and record every status the
    job shows until it ends, in order, polled far faster than a cancel takes."""
    client = await env.client()
    handle = client.get_workflow_handle(job_workflow_id(job_id))
    seen: list[str] = []

    async def status() -> str:
        desc = await handle.describe()
        return str(desc.typed_search_attributes.get(sa.STATUS))

    seen.append(await status())
    for attempt in range(2):
        cancel = await asyncio.create_subprocess_exec(
            TSKY, "jobs", "cancel", "-y", str(job_id), env=env.environ, cwd=env.home, stdout=subprocess.PIPE
        )
        while cancel.returncode is None:
            with_status = await status()
            if with_status != seen[-1]:
                seen.append(with_status)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cancel.wait(), 0.05)
        out, _ = await cancel.communicate()
        if attempt == 0:  # the repeat may find the job cancelled already
            assert cancel.returncode == 0, out
            assert b"scheduled to be cancelled" in out
    deadline = asyncio.get_running_loop().time() + END_WITHIN
    while seen[-1] not in ("CANCELLED", "FAILED_CONTROLLER", "SUCCEEDED", "FAILED"):
        assert asyncio.get_running_loop().time() < deadline, f"the cancel was not carried out; statuses: {seen}"
        current = await status()
        if current != seen[-1]:
            seen.append(current)
        await asyncio.sleep(0.05)
    return seen


def cancel_and_watch(env: TskyEnv, job_id: int) -> list[str]:
    return asyncio.run(_cancel_and_watch(env, job_id))


def assert_nothing_left(env: TskyEnv, job_id: int, cluster: str) -> None:
    assert wait_status(env, job_id, "CANCELLED") == "CANCELLED"
    assert no_tagged_processes(cluster), f"a process of {cluster} survived the cancel"
    assert not (env.home / "clusters" / cluster).exists()
    assert env.tsky("status").stdout.strip() == "No live clusters."
    # Cancelling an ended job changes nothing.
    env.tsky("jobs", "cancel", "-y", str(job_id))
    assert wait_status(env, job_id, "CANCELLED") == "CANCELLED"


def test_cancel_during_setup_is_not_lost(tsky_env: TskyEnv) -> None:
    """Issue 20: a cancel while `setup` ran was dropped when setup then finished: `run` started and the
    job stayed RUNNING for good, every later cancel printing "scheduled" and doing nothing."""
    tsky_env.configure(SLOW_HEARTBEATS)
    tsky_env.start_worker()
    job_id = launch(
        tsky_env,
        "name: slowsetup\nsetup: echo setup-begins; sleep 15; echo setup-ends\nrun: echo run-begins; sleep 600\n",
    )
    wait_until(lambda: "setup-begins" in job_log(tsky_env, job_id), 60, what="setup running")
    seen = cancel_and_watch(tsky_env, job_id)
    assert seen[-1] == "CANCELLED", seen
    assert "run-begins" not in job_log(tsky_env, job_id)
    assert_nothing_left(tsky_env, job_id, "slowsetup-1")


def test_cancel_during_run_shows_cancelling_then_cancelled(tsky_env: TskyEnv) -> None:
    """Issue 13: the job shows CANCELLING at once and ends with its processes killed and cluster gone,
    without waiting for the watcher's next heartbeat (10 minutes away here)."""
    tsky_env.configure(SLOW_HEARTBEATS)
    tsky_env.start_worker()
    job_id = launch(
        # One process left the job's process group (a daemon): it must die too.
        tsky_env,
        "name: longrun\nrun: |\n  setsid sleep 600 >/dev/null 2>&1 &\n  echo up; sleep 600\n",
    )
    wait_until(lambda: "up" in job_log(tsky_env, job_id), 60, what="run running")
    seen = cancel_and_watch(tsky_env, job_id)
    assert seen[0] == "RUNNING" and "CANCELLING" in seen and seen[-1] == "CANCELLED", seen
    assert seen.index("CANCELLING") < seen.index("CANCELLED")
    assert "Cancellation requested" in controller_log(tsky_env, job_id)
    assert_nothing_left(tsky_env, job_id, "longrun-1")


def test_cancel_pipeline_by_name_while_task_0_runs(tsky_env: TskyEnv) -> None:
    """Issue 20: a pipeline cancelled by name while its first task ran stayed RUNNING."""
    tsky_env.configure(SLOW_HEARTBEATS)
    tsky_env.start_worker()
    job_id = launch(
        tsky_env,
        "name: pipe\n---\nname: first\nrun: echo first-up; sleep 600\n---\nname: second\nrun: echo second-up\n",
    )
    wait_until(lambda: "first-up" in job_log(tsky_env, job_id), 60, what="task 0 running")
    result = tsky_env.tsky("jobs", "cancel", "-y", "-n", "pipe")
    assert result.returncode == 0, result.stdout + result.stderr
    assert wait_status(tsky_env, job_id, "CANCELLED", timeout=END_WITHIN) == "CANCELLED"
    job: dict[str, Any] = next(j for j in queue_json(tsky_env) if j["job_id"] == job_id)
    assert [t["status"] for t in job["tasks"]] == ["CANCELLED", "CANCELLED"]
    assert "second-up" not in job_log(tsky_env, job_id)
    assert_nothing_left(tsky_env, job_id, "first-1")


def _hold_teardown(cluster_dir: Path) -> Path:
    """A busy mount point inside the cluster's directory: the backend cannot remove it, so teardown
    keeps failing and retrying until the test unmounts it."""
    target = cluster_dir / "held"
    target.mkdir()
    empty = cluster_dir.parent.parent / "empty-for-hold"
    empty.mkdir(exist_ok=True)
    subprocess.run(["mount", "--bind", str(empty), str(target)], check=True)
    return target


@pytest.mark.parametrize("phase", ["planning", "launch", "backoff", "teardown"])
def test_cancel_in_each_phase_ends_cancelled_and_leaves_nothing(tsky_env: TskyEnv, phase: str) -> None:
    config: dict[str, Any] = dict(SLOW_HEARTBEATS)
    # "planning": cancelled right after submit, while the plan activity runs.
    if phase == "launch":
        config["local"] = {"regions": [{"name": "local", "provision_seconds": 600}]}
    elif phase == "backoff":
        config["local"] = {"regions": [{"name": "local", "capacity_nodes": 1}]}
    tsky_env.configure(config)
    worker: WorkerProc = tsky_env.start_worker()
    if phase == "backoff":  # takes the only node: the job under test waits for capacity
        blocker = launch(tsky_env, "name: blocker\nrun: sleep 600\n")
        wait_status(tsky_env, blocker, "RUNNING")
    release = tsky_env.home / "release"
    job_id = launch(tsky_env, f"name: phases\nrun: while [ ! -e {release} ]; do sleep 0.2; done\n")
    cluster = f"phases-{job_id}"
    cluster_dir = tsky_env.home / "clusters" / cluster
    held: Path | None = None
    try:
        if phase == "launch":
            wait_until(cluster_dir.exists, 60, what="the launch under way")
        elif phase == "backoff":
            wait_until(lambda: "retrying in" in controller_log(tsky_env, job_id), 60, what="launch backoff")
        elif phase == "teardown":
            wait_status(tsky_env, job_id, "RUNNING")
            held = _hold_teardown(cluster_dir)
            release.touch()
            # The teardown is under way once it has removed the node's files but not the held directory.
            wait_until(lambda: not (cluster_dir / "node-0").exists(), 60, what="teardown under way")
        seen = cancel_and_watch(tsky_env, job_id) if held is None else []
        if held is not None:
            for _ in range(2):
                assert tsky_env.tsky("jobs", "cancel", "-y", str(job_id)).returncode == 0
            # A cancel arriving mid-teardown waits for it: the job is not ended while its cluster is.
            assert cluster_dir.exists()
            assert wait_status(tsky_env, job_id, "CANCELLING", "RUNNING") in ("CANCELLING", "RUNNING")
            subprocess.run(["umount", str(held)], check=True)
            held = None
        else:
            assert seen[-1] == "CANCELLED", seen
    finally:
        if held is not None:
            subprocess.run(["umount", str(held)], check=False)
    if phase == "backoff":
        assert tsky_env.tsky("jobs", "cancel", "-y", str(blocker)).returncode == 0
        assert_nothing_left(tsky_env, blocker, "blocker-1")
    assert_nothing_left(tsky_env, job_id, cluster)
    assert worker.proc.poll() is None
