"""Pipelines end to end through the CLI: tasks in order on fresh clusters, data passed through a bucket
mounted at /checkpoint, failure and cancel semantics, preemption and worker crashes mid-pipeline."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import EXAMPLES, TskyEnv, WorkerProc, wait_until
from tests.integration.test_jobs_cli import no_tagged_processes, queue_json, wait_status

pytestmark = pytest.mark.integration


@pytest.fixture
def host_checkpoint() -> Iterator[None]:
    """The seed's pipeline mounts a bucket at /checkpoint. A mount point missing on the host is created
    (empty) by the job; the test removes it again if it made it, and checks the host saw no data."""
    path = Path("/checkpoint")
    existed = path.exists()
    yield
    if not existed and path.is_dir():
        assert not any(path.iterdir()), "the job's files leaked into the host's /checkpoint"
        path.rmdir()


def rows(env: TskyEnv, job_id: int) -> list[str]:
    """The lines of `tsky jobs queue` for one job: the pipeline row and its ` ↳` rows."""
    out = env.tsky("jobs", "queue").stdout
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"^{job_id}\s", line))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith(" ↳"):
            break
        block.append(line)
    return block


def test_seed_pipeline_passes_the_checkpoint_through_a_bucket(
    tsky_env: TskyEnv, worker: WorkerProc, host_checkpoint: None
) -> None:
    result = tsky_env.tsky("jobs", "launch", "-y", str(EXAMPLES / "pipeline.yaml"))
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Managed job finished: 1 (status: SUCCEEDED)." in out
    # eval read what train wrote, through /checkpoint (a `local` bucket bound in each job's namespace)
    train_id = re.search(r"\(train, pid=\d+\) Saved /checkpoint/model", out)
    assert train_id, out
    model = re.search(r"\(eval, pid=\d+\) model trained by (sky-managed-\S+_train-eval_train_1-0)", out)
    assert model, out
    block = rows(tsky_env, 1)
    assert len(block) == 3 and "SUCCEEDED" in block[0], block
    assert re.search(r"↳\s+0\s+train\s.*SUCCEEDED", block[1]) and re.search(r"↳\s+1\s+eval\s.*SUCCEEDED", block[2])
    bucket = tsky_env.home / "buckets" / "tsky-train-eval-checkpoints"
    assert (bucket / "model").read_text().strip() == f"model trained by {model.group(1)}"
    # each task ran on its own cluster, torn down when it ended
    controller = tsky_env.tsky("jobs", "logs", "--controller", "1").stdout
    assert "Cluster train-1 torn down." in controller and "Cluster eval-1-t1 torn down." in controller
    assert tsky_env.tsky("status").stdout.strip() == "No live clusters."
    # logs by task index or name
    eval_logs = tsky_env.tsky("jobs", "logs", "1", "eval", "--no-follow").stdout
    assert "model trained by" in eval_logs and "Training..." not in eval_logs
    train_logs = tsky_env.tsky("jobs", "logs", "1", "0", "--no-follow").stdout
    assert "Training..." in train_logs and "Evaluating" not in train_logs


def test_failed_task_cancels_the_rest_and_the_job_fails_with_exit_100(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    spec = tsky_env.write(
        "fail.yaml",
        "name: pipe\n---\nname: first\nrun: echo first here; exit 3\n---\nname: second\nrun: echo second here\n",
    )
    result = tsky_env.tsky("jobs", "launch", "-y", str(spec))
    assert result.returncode == 100, result.stdout + result.stderr
    assert "Managed job finished: 1 (status: FAILED)." in result.stdout
    assert "first here" in result.stdout and "second here" not in result.stdout
    job = queue_json(tsky_env)[0]
    assert job["status"] == "FAILED"
    assert [t["status"] for t in job["tasks"]] == ["FAILED", "CANCELLED"]  # type: ignore[index]
    block = rows(tsky_env, 1)
    assert "FAILED" in block[0] and "CANCELLED" in block[2], block
    controller = tsky_env.tsky("jobs", "logs", "--controller", "1").stdout
    assert "Launching second" not in controller  # the later task never got a cluster
    assert tsky_env.tsky("status").stdout.strip() == "No live clusters."


def test_cancel_applies_to_the_whole_pipeline(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    marker = tsky_env.home / "first-started"
    spec = tsky_env.write(
        "long.yaml", f"name: pipe\n---\nname: first\nrun: touch {marker}; sleep 600\n---\nname: second\nrun: echo no\n"
    )
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(spec)).returncode == 0
    wait_until(marker.exists, 60, what="the first task to run")
    assert "RUNNING (task: 0)" in rows(tsky_env, 1)[0]
    assert tsky_env.tsky("jobs", "cancel", "-y", "1").returncode == 0
    wait_status(tsky_env, 1, "CANCELLED", timeout=60)
    job = queue_json(tsky_env)[0]
    assert [t["status"] for t in job["tasks"]] == ["CANCELLED", "CANCELLED"]  # type: ignore[index]
    assert wait_until(lambda: no_tagged_processes("first-1"), 10, what="the task's processes to die")
    assert tsky_env.tsky("status").stdout.strip() == "No live clusters."


def test_preempted_first_task_recovers_then_the_second_runs(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    marker = tsky_env.home / "first-ran"
    spec = tsky_env.write(
        "spot.yaml",
        f"""\
name: pipe
---
name: first
resources:
  use_spot: true
run: |
  echo "first is $SKYPILOT_TASK_ID"
  if [ -e {marker} ]; then echo "first resumed"; else touch {marker}; echo "first waiting"; sleep 600; fi
---
name: second
run: |
  echo "second ran"
  echo "$SKYPILOT_TASK_IDS"
""",
    )
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(spec)).returncode == 0
    wait_until(marker.exists, 60, what="the first task to run")
    preempt = tsky_env.tsky("debug", "preempt", "1")
    assert preempt.returncode == 0, preempt.stdout + preempt.stderr
    wait_status(tsky_env, 1, "SUCCEEDED", timeout=120)
    job = queue_json(tsky_env)[0]
    first, second = job["tasks"]  # type: ignore[misc]
    assert first["status"] == second["status"] == "SUCCEEDED"
    assert first["recovery_count"] == 1 and second["recovery_count"] == 0
    logs = tsky_env.tsky("jobs", "logs", "1", "--no-follow").stdout
    assert logs.index("first waiting") < logs.index("first resumed") < logs.index("second ran"), logs
    # SkyPilot's task ids: one per task, stable across the recovery, all of them in SKYPILOT_TASK_IDS.
    first_ids = set(re.findall(r"first is (sky-managed-\S+_pipe_first_1-0)$", logs, re.M))
    assert len(first_ids) == 1 and logs.count("first is") == 2, logs
    ids = re.findall(r"\(second, pid=\d+\) (sky-managed-\S+)$", logs, re.M)
    assert ids[0] in first_ids and re.fullmatch(r"sky-managed-\S+_pipe_second_1-1", ids[1]), ids
    assert tsky_env.tsky("status").stdout.strip() == "No live clusters."


def test_worker_killed_between_tasks_and_during_the_second_finishes_without_rerunning(
    tsky_env: TskyEnv, worker: WorkerProc
) -> None:
    runs = tsky_env.home / "runs"
    runs.mkdir()
    spec = tsky_env.write(
        "steps.yaml",
        f"""\
name: pipe
---
name: first
run: |
  echo started >> {runs}/first
  for i in 1 2 3; do echo "first $i"; sleep 1; done
---
name: second
setup: |
  echo started >> {runs}/second-setup
  echo "second setting up"; sleep 2
run: |
  echo started >> {runs}/second
  for i in $(seq 1 6); do echo "second $i"; sleep 1; done
""",
    )
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(spec)).returncode == 0
    controller = tsky_env.home / "logs" / "jobs" / "1" / "controller.log"
    setup_log = tsky_env.home / "logs" / "jobs" / "1" / "task-1" / "attempt-0" / "setup.log"
    # Between the tasks: task 0 is done and torn down, task 1's cluster is being set up (its `run` has not
    # started). The worker dies inside a heartbeating activity, so the next one takes over in seconds.
    wait_until(lambda: setup_log.exists() and "second setting up" in setup_log.read_text(), 60, 0.05)
    assert "Task 0 (first) SUCCEEDED" in controller.read_text()
    worker.kill9()
    second = tsky_env.start_worker()
    log = tsky_env.home / "logs" / "jobs" / "1" / "task-1" / "attempt-0" / "run.log"
    wait_until(lambda: log.exists() and "second 2" in log.read_text(), 90, 0.05, what="the second task to run")
    assert "RUNNING (task: 1)" in rows(tsky_env, 1)[0]
    second.kill9()
    tsky_env.start_worker()
    wait_status(tsky_env, 1, "SUCCEEDED", timeout=120)
    assert (runs / "first").read_text() == "started\n"
    assert (runs / "second").read_text() == "started\n"
    assert (runs / "second-setup").read_text() == "started\n"
    out = tsky_env.tsky("jobs", "logs", "1", "--no-follow").stdout
    assert [int(n) for n in re.findall(r"\(first, pid=\d+\) first (\d)", out)] == [1, 2, 3], out
    assert [int(n) for n in re.findall(r"\(second, pid=\d+\) second (\d)", out)] == [1, 2, 3, 4, 5, 6], out
    assert tsky_env.tsky("status").stdout.strip() == "No live clusters."
