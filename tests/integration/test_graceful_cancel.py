"""`tsky jobs cancel --graceful`: the job's processes get SIGTERM and up to `--graceful-timeout` seconds to
save their work before SIGKILL; without `--graceful` the grace is a few seconds, as before."""

from __future__ import annotations

import pytest

from tests.harness import TskyEnv, wait_until
from tests.integration.test_cancel import END_WITHIN, SLOW_HEARTBEATS, assert_nothing_left, job_log, launch
from tests.integration.test_jobs_cli import wait_status

pytestmark = pytest.mark.integration

# Saving takes 6 s: far longer than the default cancel's grace (3 s), far less than the graceful one (30 s).
SAVER = """\
name: saver
run: |
  trap 'echo "got SIGTERM, saving"; sleep 6; echo saved; exit 0' TERM
  echo working
  while true; do sleep 0.2; done
"""


def _cancel(env: TskyEnv, *flags: str) -> tuple[int, str]:
    job_id = launch(env, SAVER)
    wait_until(lambda: "working" in job_log(env, job_id), 60, what="run running")
    result = env.tsky("jobs", "cancel", "-y", *flags, str(job_id))
    assert result.returncode == 0, result.stdout + result.stderr
    assert wait_status(env, job_id, "CANCELLED", timeout=END_WITHIN) == "CANCELLED"
    return job_id, job_log(env, job_id)


def test_graceful_cancel_lets_the_job_save_before_it_is_killed(tsky_env: TskyEnv) -> None:
    tsky_env.configure(SLOW_HEARTBEATS)
    tsky_env.start_worker()
    job_id, log = _cancel(tsky_env, "--graceful", "--graceful-timeout", "30")
    assert "got SIGTERM, saving" in log and "saved" in log, log
    assert_nothing_left(tsky_env, job_id, f"saver-{job_id}")


def test_default_cancel_kills_the_job_after_a_short_grace(tsky_env: TskyEnv) -> None:
    tsky_env.configure(SLOW_HEARTBEATS)
    tsky_env.start_worker()
    job_id, log = _cancel(tsky_env)
    assert "got SIGTERM, saving" in log and "saved" not in log, log
    assert_nothing_left(tsky_env, job_id, f"saver-{job_id}")
