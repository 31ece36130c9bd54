"""Managed jobs end to end through the CLI: real dev server, real worker processes, the local backend."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time

import pytest

from tests.harness import TskyEnv, WorkerProc, wait_until

pytestmark = pytest.mark.integration

HELLO = """\
name: hello-sky
setup: echo "Running setup."
run: echo "Hello, SkyPilot!"
"""


def queue_json(env: TskyEnv) -> list[dict[str, object]]:
    result = env.tsky("jobs", "queue", "--json", "-a")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def job_status(env: TskyEnv, job_id: int) -> str | None:
    for job in queue_json(env):
        if job["job_id"] == job_id:
            return str(job["status"])
    return None


def wait_status(env: TskyEnv, job_id: int, *statuses: str, timeout: float = 90) -> str:
    return wait_until(
        lambda: (s := job_status(env, job_id)) in statuses and s, timeout, what=f"job {job_id} in {statuses}"
    )


def no_tagged_processes(cluster_prefix: str) -> bool:
    """True when no process carries the tag of a cluster whose name starts with `cluster_prefix`."""
    needle = f"TSKY_PROCESS_TAG={cluster_prefix}".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if needle in environ:
            return False
    return True


def test_hello_job_succeeds_streams_logs_and_cleans_up(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    job = tsky_env.write("hello.yaml", HELLO)
    result = tsky_env.tsky("jobs", "launch", "-y", str(job))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\(hello-sky, pid=\d+\) Hello, SkyPilot!", result.stdout)
    assert re.search(r"\(setup pid=\d+\) Running setup\.", result.stdout)
    assert "Managed job finished: 1 (status: SUCCEEDED)." in result.stdout
    assert "tsky jobs cancel 1" in result.stdout

    logs = tsky_env.tsky("jobs", "logs", "1", "--no-follow")
    assert logs.returncode == 0
    assert "Hello, SkyPilot!" in logs.stdout

    queue = tsky_env.tsky("jobs", "queue")
    assert re.search(r"^1\s+-\s+hello-sky\s+1x\[CPU:1\+\].*SUCCEEDED", queue.stdout, re.M), queue.stdout

    controller = tsky_env.tsky("jobs", "logs", "--controller", "1")
    assert "torn down" in controller.stdout
    assert not (tsky_env.home / "clusters" / "hello-sky-1").exists()
    assert tsky_env.tsky("status").stdout.strip() == "No live clusters."


def test_failing_run_is_failed_exit_100_and_failing_setup_is_failed_setup(
    tsky_env: TskyEnv, worker: WorkerProc
) -> None:
    bad_run = tsky_env.write("bad_run.yaml", "name: bad\nrun: echo about to fail; exit 3\n")
    result = tsky_env.tsky("jobs", "launch", "-y", str(bad_run))
    assert result.returncode == 100, result.stdout + result.stderr
    assert "Managed job finished: 1 (status: FAILED)." in result.stdout
    assert "about to fail" in result.stdout

    bad_setup = tsky_env.write("bad_setup.yaml", "name: badsetup\nsetup: exit 7\nrun: echo never\n")
    result = tsky_env.tsky("jobs", "launch", "-y", str(bad_setup))
    assert result.returncode == 100
    assert "(status: FAILED_SETUP)" in result.stdout
    assert "never" not in result.stdout.replace("tsky", "")
    jobs = {j["job_id"]: j for j in queue_json(tsky_env)}
    assert jobs[1]["status"] == "FAILED"
    assert "exit code 3" in str(jobs[1]["tasks"][0]["failure_reason"])  # type: ignore[index]
    assert jobs[2]["status"] == "FAILED_SETUP"


def test_two_nodes_run_with_ranks_and_skypilot_env(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    job = tsky_env.write(
        "multi.yaml",
        """\
name: multi
num_nodes: 2
envs:
  GREETING: hi
setup: echo "setup rank $SKYPILOT_SETUP_NODE_RANK"
run: |
  echo "rank=$SKYPILOT_NODE_RANK nodes=$SKYPILOT_NUM_NODES job=$SKYPILOT_MANAGED_JOB_ID greeting=$GREETING"
  echo "task_id=$SKYPILOT_TASK_ID"
""",
    )
    result = tsky_env.tsky("jobs", "launch", "-y", str(job))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"\(head, rank=0, pid=\d+\) rank=0 nodes=2 job=1 greeting=hi", out), out
    assert re.search(r"\(worker1, rank=1, pid=\d+, ip=127\.0\.0\.1\) rank=1 nodes=2 job=1 greeting=hi", out), out
    assert "setup rank 0" in out and "setup rank 1" in out
    assert re.search(r"task_id=sky-managed-\d{4}(-\d\d){5}-\d{6}_multi_1-0", out), out


def test_bad_input_gets_clear_errors_without_tracebacks(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    bad = tsky_env.write("bad.yaml", "name: x\nrunn: echo hi\n")
    result = tsky_env.tsky("jobs", "launch", "-y", str(bad))
    assert result.returncode == 2
    assert "did you mean 'run'" in (result.stdout + result.stderr).lower()
    assert "Traceback" not in result.stderr

    missing = tsky_env.tsky("jobs", "launch", "-y", "nope.yaml")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr

    unknown = tsky_env.tsky("jobs", "logs", "99", "--no-follow")
    assert unknown.returncode == 102
    assert "Job 99 not found" in unknown.stderr

    job = tsky_env.write("ok.yaml", "name: ok\nrun: echo done\n")
    assert tsky_env.tsky("jobs", "launch", "-y", str(job)).returncode == 0
    # Cancelling an ended job is a no-op, as in SkyPilot (cleanup scripts rely on it).
    again = tsky_env.tsky("jobs", "cancel", "-y", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Job 1 is already in terminal state SUCCEEDED. Skipped." in again.stdout
    assert "No job to cancel." in again.stdout

    # An id, name or pool that never existed: one line, exit 102, from every command.
    for args, message in [
        (("jobs", "cancel", "-y", "999"), "Job 999 not found."),
        (("jobs", "logs", "-n", "nosuch"), "No managed job found with name 'nosuch'."),
        (("debug", "preempt", "999"), "Job 999 not found."),
        (("jobs", "pool", "status", "nopool"), "Pool(s) 'nopool' not found."),
        (("jobs", "pool", "logs", "nopool", "1"), "No setup log for worker 1 of pool 'nopool'"),
        (("jobs", "launch", "-y", "-p", "nopool", str(job)), "Pool 'nopool' not found."),
    ]:
        lookup = tsky_env.tsky(*args)
        assert lookup.returncode == 102, (args, lookup.stdout, lookup.stderr)
        assert message in lookup.stderr and "Traceback" not in lookup.stderr, (args, lookup.stderr)
    # Taking down a pool that is not there is a no-op, as in SkyPilot.
    down = tsky_env.tsky("jobs", "pool", "down", "-y", "nopool")
    assert down.returncode == 0 and "No pool to terminate." in down.stdout, down.stdout + down.stderr

    none = tsky_env.tsky("jobs", "cancel", "-y")
    assert none.returncode == 2 and "Can only specify one of" in none.stderr


def test_unreachable_external_server_is_a_clear_error(tsky_env: TskyEnv) -> None:
    tsky_env.configure({"temporal": {"address": "127.0.0.1:9"}})
    result = tsky_env.tsky("jobs", "queue", timeout=60)
    assert result.returncode == 1
    assert "Cannot reach Temporal at 127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("phase", ["STARTING", "setup", "run"])
def test_cancel_in_each_phase_leaves_nothing_behind(tsky_env: TskyEnv, worker: WorkerProc, phase: str) -> None:
    marker = tsky_env.home / "started"
    job_id = 1
    if phase == "STARTING":
        # One node of capacity, held by a first job: the second waits in launch backoff until cancelled.
        tsky_env.configure({"local": {"regions": [{"name": "local", "capacity_nodes": 1}]}})
        blocker = tsky_env.write("blocker.yaml", f"name: blocker\nrun: touch {marker}; sleep 600\n")
        assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(blocker)).returncode == 0
        wait_until(marker.exists, 60, what="the blocker to run")
        job_id = 2
        spec = "name: c\nrun: sleep 600\n"
    elif phase == "setup":
        spec = f"name: c\nsetup: touch {marker}; sleep 600\nrun: echo never\n"
    else:
        spec = f"name: c\nrun: touch {marker}; sleep 600\n"
    job = tsky_env.write("c.yaml", spec)
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(job)).returncode == 0
    if phase == "STARTING":
        wait_status(tsky_env, job_id, "PENDING")
    else:
        wait_until(marker.exists, 60, what="the phase to start")
    if phase == "run":
        # JOB DURATION includes the stretch still running, as SkyPilot's does (not only finished ones).
        time.sleep(2)
        queue = tsky_env.tsky("jobs", "queue").stdout
        row = next(line for line in queue.splitlines() if line.startswith(f"{job_id} "))
        columns = re.split(r"\s{2,}", row)
        assert columns[-4:] == ["0", "RUNNING", "-", "-"], row  # #RECOVERIES STATUS PROGRESS POOL
        assert columns[-5] not in ("0s", "-"), queue
    result = tsky_env.tsky("jobs", "cancel", "-y", str(job_id))
    assert f"Job with ID {job_id} is scheduled to be cancelled." in result.stdout, result.stdout + result.stderr
    wait_status(tsky_env, job_id, "CANCELLED", timeout=60)
    logs = tsky_env.tsky("jobs", "logs", str(job_id))
    assert logs.returncode == 103
    prefix = f"c-{job_id}"
    assert wait_until(lambda: no_tagged_processes(prefix), 10, what="the job's processes to die")
    assert not any((tsky_env.home / "clusters").glob(f"{prefix}*"))
    if phase == "STARTING":
        assert tsky_env.tsky("jobs", "cancel", "-y", "--all").returncode == 0
        wait_status(tsky_env, 1, "CANCELLED", timeout=60)


def test_a_job_terminated_outside_tsky_is_failed_controller_not_forever_running(
    tsky_env: TskyEnv, worker: WorkerProc
) -> None:
    marker = tsky_env.home / "started"
    job = tsky_env.write("t.yaml", f"name: t\nrun: touch {marker}; sleep 600\n")
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(job)).returncode == 0
    wait_until(marker.exists, 60, what="the job to run")

    async def terminate() -> None:  # what an operator does from the Web UI
        client = await tsky_env.client()
        await client.get_workflow_handle("tsky-job-1").terminate("by hand")

    asyncio.run(terminate())
    [row] = queue_json(tsky_env)
    assert row["status"] == "FAILED_CONTROLLER", row
    queue = tsky_env.tsky("jobs", "queue", "-v").stdout
    assert "The job's workflow was terminated outside tsky" in queue, queue
    assert tsky_env.tsky("jobs", "logs", "1").returncode == 100  # ends, instead of following forever
