"""Scripts written for `sky jobs` keep working: SkyPilot 0.14.1's smoke-test style shell lines (grep, awk
by column position, wc -l) run against tsky's output on the real stack (dev server, worker, local backend)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import TSKY, TskyEnv, WorkerProc, wait_until

pytestmark = pytest.mark.integration

# Fails on each attempt; one restart on errors, so two attempts (SkyPilot's test_managed_jobs_failed_setup-ish).
FLAKY = """\
name: flaky
resources:
  job_recovery:
    max_restarts_on_errors: 1
run: |
  echo "attempt output"
  exit 1
"""

OK = """\
name: fine
setup: echo "setting up"
run: echo "all good"
"""


def sh(env: TskyEnv, script: str, extra_env: dict[str, str] | None = None) -> str:
    """Run a shell line as a user's script would (`tsky` is SkyPilot's `sky`); its stdout, stripped."""
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", script.replace("sky ", f"{TSKY} ")],
        capture_output=True,
        text=True,
        timeout=180,
        env={**env.environ, **(extra_env or {})},
        cwd=env.home,
    )
    assert done.returncode == 0, f"{script}\n{done.stdout}\n{done.stderr}"
    return done.stdout.strip()


def queue_json(env: TskyEnv) -> dict[int, dict[str, object]]:
    result = env.tsky("jobs", "queue", "-o", "json", "-a")
    assert result.returncode == 0, result.stderr
    return {int(str(j["job_id"])): j for j in json.loads(result.stdout)}


def wait_ended(env: TskyEnv, job_id: int, timeout: float = 120) -> str:
    def ended() -> str | None:
        job = queue_json(env).get(job_id)
        return str(job["status"]) if job and job["ended_at"] else None

    return str(wait_until(ended, timeout, 1, what=f"job {job_id} to end"))


def test_job_logs_controller_log_and_queue_read_as_skypilot_s(
    tsky_env: TskyEnv, worker: WorkerProc, tmp_path: Path
) -> None:
    flaky, ok = tsky_env.write("flaky.yaml", FLAKY), tsky_env.write("ok.yaml", OK)
    assert "Managed job ID: 1" in sh(tsky_env, f"sky jobs launch -y -d {flaky}")
    assert wait_ended(tsky_env, 1) == "FAILED"
    assert "Managed job ID: 2" in sh(tsky_env, f"sky jobs launch -y -d {ok}")
    assert wait_ended(tsky_env, 2) == "SUCCEEDED"

    # The job log, per attempt: SkyPilot's start line, and its failure line with the return codes.
    log = tmp_path / "flaky.log"
    sh(tsky_env, f"sky jobs logs -n flaky | tee {log} || true")
    assert sh(tsky_env, f'cat {log} | grep "Job started. Streaming logs..." | wc -l') == "2"
    assert sh(tsky_env, f'cat {log} | grep "Job 1 failed" | wc -l') == "2"
    assert sh(tsky_env, f'grep -c "ERROR: Job 1 failed with return code list: \\[1\\]" {log}') == "2"

    # The controller log: cluster up, and the job's status on its cluster.
    controller = sh(tsky_env, "sky jobs logs --controller 2 --no-follow")
    assert "✓ Cluster launched: fine-2" in controller, controller
    assert sh(tsky_env, 'sky jobs logs --controller 2 | grep "Job status: JobStatus.SUCCEEDED" | wc -l') == "1"
    assert "Job status: JobStatus.SETTING_UP" in controller
    assert "Job status: JobStatus.FAILED" in sh(tsky_env, "sky jobs logs --controller 1 --no-follow || true")

    # The queue, by column position: $1 is the id, $(NF-3) the #RECOVERIES, then STATUS, PROGRESS, POOL.
    header = sh(tsky_env, "sky jobs queue | grep '^ID'").split()
    assert header[-4:] == ["#RECOVERIES", "STATUS", "PROGRESS", "POOL"], header
    recoveries = queue_json(tsky_env)[1]["recoveries"]
    assert sh(tsky_env, "sky jobs queue | grep flaky | awk '{print $1}'") == "1"
    assert sh(tsky_env, "sky jobs queue | grep flaky | awk '{print $(NF-3)}'") == str(recoveries)
    assert sh(tsky_env, "sky jobs queue | grep fine | awk '{print $(NF-2), $(NF-1), $NF}'") == "SUCCEEDED - -"
    verbose = sh(tsky_env, "sky jobs queue -v")
    assert "SCHED. STATE" in verbose and "GIT_COMMIT" in verbose
    assert sh(tsky_env, "sky jobs queue -v | grep fine | grep -c DONE") == "1"

    # Queue filters: output format, submission window, infra.
    assert {j["job_id"] for j in json.loads(sh(tsky_env, "sky jobs queue -o json"))} == {1, 2}
    assert sh(tsky_env, "sky jobs queue --since 1h | grep -c -E 'flaky|fine'") == "2"
    assert "No in-progress" in sh(tsky_env, "sky jobs queue --before 2000-01-01")
    assert sh(tsky_env, "sky jobs queue --before 2000-01-01 | grep -c -E 'flaky|fine' || true") == "0"
    assert sh(tsky_env, "sky jobs queue --infra local | grep -c -E 'flaky|fine'") == "2"
    assert sh(tsky_env, "sky jobs queue --infra aws/us-east-1 | grep -c -E 'flaky|fine' || true") == "0"

    # queue -r: the table again and again until Ctrl-C.
    screen = tmp_path / "screen.txt"
    with screen.open("w") as out:
        live = subprocess.Popen([TSKY, "jobs", "queue", "-r"], stdout=out, env=tsky_env.environ, cwd=tsky_env.home)
        wait_until(lambda: screen.read_text().count("Managed jobs") >= 2, 60, 0.5, what="two redraws")
        live.send_signal(signal.SIGINT)
        assert live.wait(30) == 130
    assert screen.read_text().count("#RECOVERIES") >= 2

    # logs --tail N, and --sync-down: every attempt's logs and the controller log in a local folder.
    assert sh(tsky_env, "sky jobs logs 2 --tail 1").splitlines()[0].endswith("all good")
    home = tmp_path / "user-home"
    out = sh(tsky_env, "sky jobs logs 1 --sync-down || true", {"HOME": str(home)})
    folder = home / "sky_logs" / "managed_jobs" / "job-1"
    assert str(folder) in out
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.log")) == [
        "controller.log",
        "task-0/attempt-0/run.log",
        "task-0/attempt-1/run.log",
    ]


POOL = """\
pool:
  workers: 1
resources:
  cpus: 1+
setup: echo "Worker ready."
"""

HOLD = """\
name: hold
resources:
  cpus: 1+
run: |
  echo "holding"
  sleep 600
"""


def test_pool_lines_and_cancel_by_pool_read_as_skypilot_s(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    pool, hold = tsky_env.write("pool.yaml", POOL), tsky_env.write("hold.yaml", HOLD)
    # SkyPilot's smoke test: resizing without a name names what is missing.
    out = sh(tsky_env, 'sky jobs pool apply --workers 2 -y 2>&1 | grep "A pool name must be provided" || true')
    assert "A pool name must be provided to update the number of workers." in out
    sh(tsky_env, f"sky jobs pool apply -p P {pool} -y")
    wait_until(lambda: "READY" in sh(tsky_env, "sky jobs pool status P"), 120, 1, what="the pool's worker to be READY")
    assert "Worker ready." in sh(tsky_env, "sky jobs pool logs P 1 --no-follow --tail 1")
    assert "Worker 1 (" in sh(tsky_env, "sky jobs pool logs P --no-follow --controller")

    assert "Jobs submitted with IDs: 1,2." in sh(tsky_env, f"sky jobs launch -p P --num-jobs 2 -y {hold}")

    def running() -> int | None:  # both ask the pool at once: either may get the worker first
        return next((i for i, j in queue_json(tsky_env).items() if j["status"] == "RUNNING"), None)

    on_worker = wait_until(running, 120, 1, what="a job running on the worker")
    waiting = 3 - on_worker
    # The job on the worker: `P (worker=1)` in POOL, ALIVE in SCHED. STATE; the other one WAITING.
    assert sh(tsky_env, f"sky jobs queue | awk '$1 == {on_worker}' | grep -o 'P (worker=1)'") == "P (worker=1)"
    assert sh(tsky_env, f"sky jobs queue -v | awk '$1 == {on_worker}' | grep -c ALIVE") == "1"
    assert sh(tsky_env, f"sky jobs queue -v | awk '$1 == {waiting}' | grep -c WAITING") == "1"

    assert "are scheduled to be cancelled" in sh(tsky_env, "sky jobs cancel --pool P -y")
    # A pool job cancelled right after launch ends too (SkyPilot's smoke test allows it 15 s).
    assert "Managed job ID: 3" in sh(tsky_env, f"sky jobs launch -p P -d -y {hold}")
    started = time.monotonic()
    sh(tsky_env, "sky jobs cancel -y 3")
    wait_until(lambda: queue_json(tsky_env)[3]["status"] == "CANCELLED", 60, 0.5, what="job 3 cancelled")
    print(f"pool job cancelled right after launch: CANCELLED in {time.monotonic() - started:.1f}s")
    wait_until(lambda: not sh(tsky_env, "sky jobs queue --skip-finished | awk '$1 ~ /^[0-9]+$/'"), 60, 1)
    assert sh(tsky_env, "sky jobs cancel --pool P -y") == "No running job found in pool 'P'."
    assert {j["status"] for j in queue_json(tsky_env).values()} == {"CANCELLED"}
    sh(tsky_env, "sky jobs pool down P -y")


def test_priority_orders_jobs_waiting_for_a_running_slot(tsky_env: TskyEnv) -> None:
    tsky_env.configure({"jobs": {"controller": {"max_running_jobs": 1}}})
    tsky_env.start_worker()
    order, gate = tsky_env.home / "order.txt", tsky_env.home / "gate"

    def job(name: str, priority: int | None = None) -> str:
        path = tsky_env.write(f"{name}.yaml", f"name: {name}\nrun: |\n  echo {name} >> {order}\n")
        if priority is not None:
            path.write_text(path.read_text().replace("run:", f"resources:\n  priority: {priority}\nrun:"))
        return str(path)

    holder = tsky_env.write("holder.yaml", f"name: holder\nrun: |\n  while [ ! -e {gate} ]; do sleep 0.2; done\n")
    sh(tsky_env, f"sky jobs launch -y -d {holder}")
    wait_until(lambda: queue_json(tsky_env)[1]["status"] == "RUNNING", 120, 1, what="the holder to run")
    # FIFO within a priority, higher first: submitted low, mid, high, mid2 -> granted high, mid, mid2, low.
    sh(tsky_env, f"sky jobs launch -y -d {job('low')}")
    sh(tsky_env, f"sky jobs launch -y -d {job('mid', 5)}")
    sh(tsky_env, f"sky jobs launch -y -d --priority 10 {job('high')}")
    sh(tsky_env, f"sky jobs launch -y -d {job('mid2', 5)}")
    wait_until(
        lambda: sh(tsky_env, "sky jobs queue -v | grep -c WAITING || true") == "4", 60, 1, what="four jobs waiting"
    )
    gate.touch()
    wait_until(lambda: len(queue_json(tsky_env)) == 5 and all(j["ended_at"] for j in queue_json(tsky_env).values()),
               180, 1, what="every job to end")  # fmt: skip
    assert order.read_text().split() == ["high", "mid", "mid2", "low"]
