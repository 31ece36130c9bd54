"""A crash of any tsky process never loses, duplicates or orphans a job."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import DevServer, TskyEnv, WorkerProc, wait_until, world_on
from tests.integration.test_jobs_cli import wait_status

pytestmark = pytest.mark.integration

STEPS = 12


def counting_job(env: TskyEnv) -> tuple[Path, Path]:
    """A job that records each start of `run` and prints STEPS numbered lines, one per second."""
    runs = env.home / "runs.txt"
    spec = f"""\
name: counter
run: |
  echo started >> {runs}
  for i in $(seq 1 {STEPS}); do echo "line $i"; sleep 1; done
"""
    return env.write("counter.yaml", spec), runs


def assert_complete_log(output: str) -> None:
    numbers = [int(n) for n in re.findall(r"\(counter, pid=\d+\) line (\d+)", output)]
    assert numbers == list(range(1, STEPS + 1)), output


def test_worker_sigkill_mid_run_reattaches_without_rerun(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    job, runs = counting_job(tsky_env)
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(job)).returncode == 0
    log = tsky_env.home / "logs" / "jobs" / "1" / "task-0" / "attempt-0" / "run.log"
    wait_until(lambda: log.exists() and "line 3" in log.read_text(), 60, what="three lines of output")
    worker.kill9()
    tsky_env.start_worker()
    wait_status(tsky_env, 1, "SUCCEEDED", timeout=120)
    assert runs.read_text().count("started") == 1
    logs = tsky_env.tsky("jobs", "logs", "1", "--no-follow")
    assert_complete_log(logs.stdout)


@pytest.fixture
def persistent_env(tmp_path: Path) -> Iterator[TskyEnv]:
    """A world with its own dev server on a database file, so the server itself can be restarted."""
    server = DevServer()
    server.start(db=tmp_path / "temporal.db")
    with world_on(server, tmp_path) as env:
        yield env


def test_server_restart_mid_job_loses_nothing(persistent_env: TskyEnv) -> None:
    env = persistent_env
    env.start_worker()
    job, runs = counting_job(env)
    assert env.tsky("jobs", "launch", "-y", "-d", str(job)).returncode == 0
    log = env.home / "logs" / "jobs" / "1" / "task-0" / "attempt-0" / "run.log"
    wait_until(lambda: log.exists() and "line 3" in log.read_text(), 60, what="three lines of output")
    env.server.stop()
    wait_until(lambda: "line 8" in log.read_text(), 30, what="the job to keep running without the server")
    env.server.start()
    wait_status(env, 1, "SUCCEEDED", timeout=120)
    assert runs.read_text().count("started") == 1
    assert_complete_log(env.tsky("jobs", "logs", "1", "--no-follow").stdout)
