"""Managed jobs as child workflows: the README's example (examples/child_workflow.py) run as a user runs
it, against the real dev server and a real tsky worker; cancel and terminate of the parent."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import pytest
from temporalio.client import WorkflowExecutionStatus

from tests.harness import EXAMPLES, TskyEnv, WorkerProc, wait_until
from tests.integration.test_jobs_cli import no_tagged_processes, queue_json, wait_status
from tests.integration.test_pipelines import host_checkpoint  # noqa: F401  (fixture)

# The example mounts a bucket at /checkpoint: every test removes the (empty) mount point it made.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("host_checkpoint")]

EXAMPLE = str(EXAMPLES / "child_workflow.py")


def run_example(env: TskyEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, EXAMPLE, *args], capture_output=True, text=True, timeout=180, env=env.environ, cwd=env.home
    )


def start_example(env: TskyEnv, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, EXAMPLE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env.environ,
        cwd=env.home,
    )


def parent_status(env: TskyEnv, workflow_id: str) -> WorkflowExecutionStatus | None:
    async def describe() -> WorkflowExecutionStatus | None:
        return (await (await env.client()).get_workflow_handle(workflow_id).describe()).status

    return asyncio.run(describe())


def end_parent(env: TskyEnv, workflow_id: str, how: str) -> None:
    async def act() -> None:
        handle = (await env.client()).get_workflow_handle(workflow_id)
        await (handle.cancel() if how == "cancel" else handle.terminate("test: terminate the parent"))

    asyncio.run(act())


def training_started(env: TskyEnv) -> bool:
    log = env.home / "logs" / "jobs" / "1" / "task-0" / "attempt-0" / "run.log"
    return log.exists() and "Training..." in log.read_text()


def test_train_then_eval_as_children_of_a_user_workflow(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    result = run_example(tsky_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"train: job 1 SUCCEEDED \(train SUCCEEDED; 1 attempt\(s\)\)", result.stdout), result.stdout
    assert re.search(r"eval: job 2 SUCCEEDED \(eval SUCCEEDED; 1 attempt\(s\)\)", result.stdout), result.stdout
    # Child jobs are ordinary jobs: in the queue, with logs; eval read what train wrote.
    jobs = {j["job_id"]: j for j in queue_json(tsky_env)}
    assert jobs[1]["name"] == "train" and jobs[2]["name"] == "eval"
    assert jobs[1]["status"] == jobs[2]["status"] == "SUCCEEDED"
    logs = tsky_env.tsky("jobs", "logs", "2", "--no-follow").stdout
    assert re.search(r"\(eval, pid=\d+\) model trained by sky-managed-\S+_train_1-0", logs), logs
    # Ids stay unique and monotonic across children and the CLI.
    job = tsky_env.write("after.yaml", "name: after\nrun: echo after\n")
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(job)).returncode == 0
    assert wait_status(tsky_env, 3, "SUCCEEDED")
    assert tsky_env.tsky("status").stdout.strip() == "No live clusters."


def test_failed_training_skips_evaluation(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    result = run_example(tsky_env, "--fail-training")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "train: job 1 FAILED" in result.stdout and "eval: not run" in result.stdout
    assert [j["job_id"] for j in queue_json(tsky_env)] == [1]


@pytest.mark.parametrize("how", ["cancel", "terminate"])
def test_ending_the_parent_cancels_the_job_and_leaves_nothing(tsky_env: TskyEnv, worker: WorkerProc, how: str) -> None:
    parent = f"parent-{how}"
    proc = start_example(tsky_env, "--id", parent, "--train-seconds", "600")
    try:
        wait_until(lambda: training_started(tsky_env), 60, what="the training job to run")
        end_parent(tsky_env, parent, how)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1 and f"Workflow {parent} ended" in out, out + err
    # cancel: the parent waits for the job's teardown; terminate: REQUEST_CANCEL asks the job to cancel.
    wait_status(tsky_env, 1, "CANCELLED", timeout=60)
    expected = WorkflowExecutionStatus.CANCELED if how == "cancel" else WorkflowExecutionStatus.TERMINATED
    assert parent_status(tsky_env, parent) == expected
    assert wait_until(lambda: no_tagged_processes("train-1"), 10, what="the job's processes to die")
    assert tsky_env.tsky("status").stdout.strip() == "No live clusters."
    assert [j["job_id"] for j in queue_json(tsky_env)] == [1]  # eval never started


def test_a_child_job_cancelled_from_the_cli_returns_a_cancelled_result(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    proc = start_example(tsky_env, "--id", "parent-x", "--train-seconds", "600")
    try:
        wait_until(lambda: training_started(tsky_env), 60, what="the training job to run")
        assert tsky_env.tsky("jobs", "cancel", "-y", "1").returncode == 0
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The parent is not failed: it gets the job's final state and decides (here: no evaluation).
    assert "train: job 1 CANCELLED (train CANCELLED; 1 attempt(s))" in out, out + err
    assert "eval: not run" in out
    assert parent_status(tsky_env, "parent-x") == WorkflowExecutionStatus.COMPLETED
    assert tsky_env.tsky("status").stdout.strip() == "No live clusters."
