"""README claims that had no test: concurrent launches get dense ids, FAILOVER restarts on the same live
cluster, exit code 101 for a job not finished, and `tsky jobs logs` following across a worker kill."""

from __future__ import annotations

import re

import pytest

from tests.harness import TskyEnv, WorkerProc, wait_until
from tests.integration.test_durability import assert_complete_log, counting_job
from tests.integration.test_jobs_cli import queue_json, wait_status

pytestmark = pytest.mark.integration


def test_twenty_launches_at_once_from_separate_processes_get_twenty_dense_ids(
    tsky_env: TskyEnv, worker: WorkerProc
) -> None:
    launches = [tsky_env.tsky_background("jobs", "launch", "-y", "-d", f"echo launch {i}") for i in range(20)]
    outputs = [proc.communicate(timeout=300) for proc in launches]
    ids = []
    for proc, (out, err) in zip(launches, outputs, strict=True):
        assert proc.returncode == 0, out + err
        ids += [int(n) for n in re.findall(r"Managed job ID: (\d+)", out)]
    assert sorted(ids) == list(range(1, 21)), ids
    wait_until(lambda: all(row["status"] == "SUCCEEDED" for row in queue_json(tsky_env)), 240, 1, "20 jobs done")
    assert sorted(int(str(row["job_id"])) for row in queue_json(tsky_env)) == list(range(1, 21))


def test_failover_restarts_on_the_same_live_cluster_and_logs_exits_101_until_done(
    tsky_env: TskyEnv, worker: WorkerProc
) -> None:
    go = tsky_env.home / "go"
    job = tsky_env.write(
        "flaky.yaml",
        f"""\
name: flaky
resources:
  job_recovery:
    strategy: FAILOVER
    max_restarts_on_errors: 1
run: |
  if [ ! -e left-by-attempt-0 ]; then touch left-by-attempt-0; echo "attempt 0 fails"; exit 1; fi
  echo "attempt 1 finds attempt 0's file"
  while [ ! -e {go} ]; do sleep 0.2; done
  echo "attempt 1 done"
""",
    )
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(job)).returncode == 0
    wait_until(
        lambda: "attempt 1 finds" in tsky_env.tsky("jobs", "logs", "1", "--no-follow").stdout, 120, 1, "the restart"
    )
    running = tsky_env.tsky("jobs", "logs", "1", "--no-follow")
    assert running.returncode == 101, running.stdout + running.stderr  # not finished

    go.touch()
    wait_status(tsky_env, 1, "SUCCEEDED")
    done = tsky_env.tsky("jobs", "logs", "1", "--no-follow")
    assert done.returncode == 0 and "attempt 1 done" in done.stdout, done.stdout
    [row] = queue_json(tsky_env)
    assert row["recoveries"] == 1
    # One cluster, launched once: the restart reran `run` where attempt 0 left its file.
    controller = tsky_env.tsky("jobs", "logs", "--controller", "1").stdout
    assert len(re.findall(r"Cluster launched: flaky-1\.", controller)) == 1, controller
    assert "Cluster launched: flaky-1-r" not in controller, controller


def test_following_logs_across_a_worker_kill_prints_every_line_once(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    job, runs = counting_job(tsky_env)
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(job)).returncode == 0
    follower = tsky_env.tsky_background("jobs", "logs", "1")
    log = tsky_env.home / "logs" / "jobs" / "1" / "task-0" / "attempt-0" / "run.log"
    wait_until(lambda: log.exists() and "line 3" in log.read_text(), 60, what="three lines of output")
    worker.kill9()
    tsky_env.start_worker()
    out, err = follower.communicate(timeout=180)
    assert follower.returncode == 0, out + err
    assert_complete_log(out)  # lines 1..12, each once, in order
    assert "Managed job finished: 1 (status: SUCCEEDED)." in out, out
    assert runs.read_text().count("started") == 1
