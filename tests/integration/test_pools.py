"""Pools end to end: the real dev server, a real worker process, the local infra and the CLI.

A pool is the workflow `tsky-pool-<name>`; its workers are local clusters `<pool>-w<id>`. Workers write
one line per setup run into a file of the test's home, and jobs write `start`/`end` lines with times, so
the tests can count setups and how many jobs ran at once from what really ran.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import DevServer, TskyEnv, WorkerProc, wait_until, world_on
from tests.integration.test_jobs_cli import no_tagged_processes, queue_json, wait_status
from tests.integration.test_sweeper import local_only, sweeper_state
from tsky.client import jobs as api
from tsky.client import pools as pool_api
from tsky.client.connect import DATA_CONVERTER
from tsky.contract.ids import pool_workflow_id
from tsky.contract.pool_state import PoolSnapshot, PoolState, WorkerState
from tsky.spec.status import PoolWorkerStatus

pytestmark = pytest.mark.integration

W = PoolWorkerStatus

POOL = """\
pool:
  workers: {workers}
resources:
  cpus: 1+
setup: |
  echo "{tag} $(basename $(dirname $(dirname $PWD)))" >> {setups}
  echo "Worker ready."
"""

BATCH = """\
name: batch
resources:
  cpus: 1+
setup: echo "a job's setup never runs on a pool"
run: |
  echo "start $SKYPILOT_JOB_RANK $(date +%s.%N)" >> {events}
  echo "Job rank $SKYPILOT_JOB_RANK of $SKYPILOT_NUM_JOBS on $(basename $(dirname $(dirname $PWD)))"
  sleep {sleep}
  echo "end $SKYPILOT_JOB_RANK $(date +%s.%N)" >> {events}
"""

# Runs until the test creates the `go` file: a job that is RUNNING for as long as the test needs.
HOLD = """\
name: hold
run: |
  echo "running on $(basename $(dirname $(dirname $PWD)))"
  while [ ! -e {go} ]; do sleep 0.2; done
  echo done
"""


def snapshot(env: TskyEnv, name: str) -> PoolSnapshot | None:
    async def query() -> PoolSnapshot | None:
        return await pool_api.get_pool(await env.client(), name)

    return asyncio.run(query())


def live(pool: PoolSnapshot | None) -> list[WorkerState]:
    return [w for w in pool.workers if w.live()] if pool else []


def wait_workers(env: TskyEnv, name: str, count: int, version: int | None = None, timeout: float = 90) -> PoolSnapshot:
    """Until the pool has exactly `count` live workers, all READY or BUSY (and of `version`, if given)."""

    def done() -> PoolSnapshot | None:
        pool = snapshot(env, name)
        workers = live(pool)
        ok = len(workers) == count and all(w.status in (W.READY, W.BUSY) for w in workers)
        ok = ok and (version is None or all(w.version == version for w in workers))
        return pool if ok else None

    return wait_until(done, timeout, interval=0.5, what=f"{count} ready workers in pool {name}")


def write_pool(env: TskyEnv, workers: int, tag: str = "setup", file: str = "pool.yaml") -> Path:
    return env.write(file, POOL.format(workers=workers, tag=tag, setups=env.home / "setups.txt"))


def setups(env: TskyEnv, tag: str = "setup") -> list[str]:
    path = env.home / "setups.txt"
    return [line for line in path.read_text().splitlines() if line.startswith(tag)] if path.exists() else []


def run_logs(env: TskyEnv, job_id: int) -> str:
    paths = sorted((env.home / "logs" / "jobs" / str(job_id)).glob("task-0/attempt-*/run.log"))
    return "".join(p.read_text() for p in paths)


def most_at_once(events: Path) -> int:
    """The most jobs whose run overlapped, from the start/end times they wrote."""
    changes = []
    for line in events.read_text().splitlines():
        kind, _rank, stamp = line.split()
        changes.append((float(stamp), 1 if kind == "start" else -1))
    running = peak = 0
    for _stamp, delta in sorted(changes, key=lambda c: (c[0], c[1])):
        running += delta
        peak = max(peak, running)
    return peak


def apply_pool(env: TskyEnv, name: str, yaml_path: Path) -> str:
    result = env.tsky("jobs", "pool", "apply", "-p", name, str(yaml_path), "-y")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def job_processes(pool: str) -> bool:
    """Whether a job's run phase (`<pool>-w<id>/<rank>:run-j<job>-...`) still has a process."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if f"TSKY_PROCESS_TAG={pool}-w".encode() in environ and b":run-j" in environ:
            return True
    return False


def no_clusters(env: TskyEnv) -> bool:
    clusters = env.home / "clusters"
    return not clusters.exists() or not any(p.is_dir() for p in clusters.iterdir())


def test_seed_transcript_three_workers_ten_jobs(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    env = tsky_env
    out = apply_pool(env, "gpu-pool", write_pool(env, 3))
    assert "Worker policy:  Fixed-size (3 workers)" in out
    assert "Pool name: gpu-pool" in out
    assert "tsky jobs launch --pool gpu-pool --num-jobs 10 <yaml_file>" in out
    assert "✓ Successfully created pool 'gpu-pool'." in out

    events = env.home / "events.txt"
    job = env.write("batch.yaml", BATCH.format(events=events, sleep=1))
    result = env.tsky("jobs", "launch", "-p", "gpu-pool", "--num-jobs", "10", "-y", str(job))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Submitting to pool 'gpu-pool' with 10 jobs." in result.stdout
    assert "setup will be ignored when submit jobs to pool" in result.stderr
    assert "Jobs submitted with IDs: 1,2,3,4,5,6,7,8,9,10." in result.stdout
    assert "To cancel all jobs on the pool: tsky jobs cancel --pool gpu-pool" in result.stdout

    async def sample() -> tuple[int, int, bool]:
        client = await env.client()
        rows = await api.list_jobs(client, user=None)
        pool = await pool_api.get_pool(client, "gpu-pool")
        busy = len([w for w in live(pool) if w.status is W.BUSY])
        running = len([r for r in rows if r.status.value == "RUNNING"])
        return running, busy, len(rows) == 10 and all(r.status.is_terminal() for r in rows)

    peak_running = peak_busy = 0

    def all_ended() -> bool:
        nonlocal peak_running, peak_busy
        running, busy, ended = asyncio.run(sample())
        peak_running, peak_busy = max(peak_running, running), max(peak_busy, busy)
        return ended

    wait_until(all_ended, 180, interval=0.2, what="the 10 jobs to end")
    jobs = queue_json(env)
    assert sorted(j["status"] for j in jobs) == ["SUCCEEDED"] * 10, jobs
    assert all(j["pool"] == "gpu-pool" for j in jobs)
    ranks = sorted(int(m) for j in range(1, 11) for m in re.findall(r"Job rank (\d+) of 10", run_logs(env, j)))
    assert ranks == list(range(10))
    assert "setup never runs" not in "".join(run_logs(env, j) for j in range(1, 11))
    assert 1 <= peak_running <= 3 and 1 <= peak_busy <= 3
    assert most_at_once(events) <= 3
    assert len(setups(env)) == 3

    assert "Worker ready." in env.tsky("jobs", "pool", "logs", "gpu-pool", "1").stdout
    status = env.tsky("jobs", "pool", "status", "gpu-pool")
    assert status.returncode == 0, status.stderr
    assert re.search(r"^gpu-pool\s+1\s+\S+.*READY\s+3/3$", status.stdout, re.M), status.stdout
    assert "POOL_NAME  ID  VERSION  LAUNCHED" in status.stdout
    assert len(re.findall(r"^gpu-pool\s+\d\s+1\s+.*Local \(local\)\s+1x\(cpus=.*READY\s+-$", status.stdout, re.M)) == 3

    down = env.tsky("jobs", "pool", "down", "gpu-pool", "-y")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "Pool 'gpu-pool' is scheduled to be terminated." in down.stdout
    wait_until(lambda: snapshot(env, "gpu-pool") is None and no_clusters(env), 60, what="the pool to be gone")


def test_preempted_busy_worker_job_recovers_elsewhere_and_pool_heals(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    env = tsky_env
    apply_pool(env, "p", write_pool(env, 3))
    first = wait_workers(env, "p", 3)
    go = env.home / "go"
    job = env.write("hold.yaml", HOLD.format(go=go))
    assert env.tsky("jobs", "launch", "-p", "p", "-d", "-y", str(job)).returncode == 0
    wait_until(lambda: "running on" in run_logs(env, 1), 60, what="the job to run")
    before = re.findall(r"running on (\S+)", run_logs(env, 1))[0]

    result = env.tsky("debug", "preempt", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Preempted {before}" in result.stdout
    wait_until(lambda: len(re.findall(r"running on (\S+)", run_logs(env, 1))) == 2, 60, what="the job to rerun")
    after = re.findall(r"running on (\S+)", run_logs(env, 1))[1]
    assert after != before
    go.touch()
    wait_status(env, 1, "SUCCEEDED")
    job_row = queue_json(env)[0]
    assert job_row["recoveries"] == 1

    healed = wait_workers(env, "p", 3)
    lost_id = next(w.worker_id for w in first.workers if w.cluster_name == before)
    assert lost_id not in [w.worker_id for w in live(healed)]
    assert len(setups(env)) == 4  # three, then one replacement

    # Cancelling the pool's jobs stops only their processes: the workers stay, READY.
    go.unlink()
    assert env.tsky("jobs", "launch", "-p", "p", "--num-jobs", "2", "-y", str(job)).returncode == 0
    wait_until(lambda: all("running on" in run_logs(env, j) for j in (2, 3)), 60, what="both jobs to run")
    result = env.tsky("jobs", "cancel", "-p", "p", "-y")
    assert "Jobs with IDs 2, 3 are scheduled to be cancelled." in result.stdout, result.stdout + result.stderr
    for job_id in (2, 3):
        wait_status(env, job_id, "CANCELLED")
    kept = wait_workers(env, "p", 3)
    assert sorted(w.worker_id for w in live(kept)) == sorted(w.worker_id for w in live(healed))
    assert wait_until(lambda: not job_processes("p"), 10, what="the jobs' processes to die")


def test_apply_three_to_five_adds_two_and_recreates_none(tsky_env: TskyEnv, tmp_path: Path) -> None:
    env = tsky_env
    # The sweeper runs all along with no grace period: pool workers belong to no job, yet are not swept.
    env.configure({"jobs": {"sweeper": {"enabled": True, "interval_seconds": 1, "grace_seconds": 0}}})
    env.start_worker(extra_env=local_only(tmp_path))
    apply_pool(env, "p", write_pool(env, 3))
    before = {w.worker_id: (w.cluster_name, w.launched_at) for w in live(wait_workers(env, "p", 3))}

    result = env.tsky("jobs", "pool", "apply", "-p", "p", "--workers", "5", "-y")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Pool 'p' update scheduled." in result.stdout
    assert "Successfully updated pool 'p' to version 2." in result.stdout
    after = {w.worker_id: (w.cluster_name, w.launched_at) for w in live(wait_workers(env, "p", 5, version=2))}
    assert {k: after[k] for k in before} == before  # the same three workers, untouched
    assert len(set(after) - set(before)) == 2
    seen = sweeper_state(env).sweeps
    wait_until(lambda: sweeper_state(env).sweeps >= seen + 3, 60, what="three more sweeps")
    assert {w.worker_id: (w.cluster_name, w.launched_at) for w in live(wait_workers(env, "p", 5))} == after
    assert len(setups(env)) == 5

    # Terminated from outside (the Web UI), the pool cannot stop its workers: the sweeper cancels them,
    # and each tears its cluster down.
    async def terminate_pool() -> None:
        client = await env.client()
        await client.get_workflow_handle(pool_workflow_id("p")).terminate("by hand")

    asyncio.run(terminate_pool())
    wait_until(lambda: no_clusters(env), 60, what="the orphaned workers to tear their clusters down")
    assert wait_until(lambda: no_tagged_processes("p-w"), 10, what="the workers' processes to die")


def test_apply_changed_setup_replaces_every_worker_while_jobs_run(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    env = tsky_env
    apply_pool(env, "p", write_pool(env, 3, tag="v1"))
    old = {w.worker_id for w in live(wait_workers(env, "p", 3))}
    go = env.home / "go"
    job = env.write("hold.yaml", HOLD.format(go=go))
    assert env.tsky("jobs", "launch", "-p", "p", "--num-jobs", "2", "-y", str(job)).returncode == 0
    wait_until(lambda: all("running on" in run_logs(env, j) for j in (1, 2)), 60, what="both jobs to run")

    out = apply_pool(env, "p", write_pool(env, 3, tag="v2", file="pool-v2.yaml"))
    assert "Successfully updated pool 'p' to version 2." in out

    def rolled() -> bool:
        new = [w for w in live(snapshot(env, "p")) if w.version == 2 and w.status is W.READY]
        return len(new) == 3

    wait_until(rolled, 120, interval=0.5, what="three new workers")
    # The old workers that run the jobs are drained, not killed: both jobs are still running.
    assert [j["status"] for j in queue_json(env)] == ["RUNNING", "RUNNING"]
    busy = [w for w in snapshot(env, "p").workers if w.status is W.BUSY]  # type: ignore[union-attr]
    assert len(busy) == 2 and {w.worker_id for w in busy} <= old
    go.touch()
    for job_id in (1, 2):
        wait_status(env, job_id, "SUCCEEDED")
    final = wait_workers(env, "p", 3, version=2)
    assert not old & {w.worker_id for w in final.workers}
    assert all(j["recoveries"] == 0 for j in queue_json(env))
    assert len(setups(env, "v1")) == 3 and len(setups(env, "v2")) == 3


@pytest.fixture
def can_env(tmp_path: Path) -> Iterator[TskyEnv]:
    """A dev server that suggests continue-as-new after 40 events, so the pool does it many times."""
    server = DevServer("--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=40")
    server.start()
    with world_on(server, tmp_path) as env:
        yield env


def test_continue_as_new_while_jobs_wait_loses_and_repeats_nothing(can_env: TskyEnv) -> None:
    env = can_env
    env.start_worker()
    apply_pool(env, "p", write_pool(env, 1))
    events = env.home / "events.txt"
    job = env.write("batch.yaml", BATCH.format(events=events, sleep=0.2))
    assert env.tsky("jobs", "launch", "-p", "p", "--num-jobs", "8", "-y", str(job)).returncode == 0

    def ended() -> bool:
        jobs = queue_json(env)
        return len(jobs) == 8 and all(j["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") for j in jobs)

    wait_until(ended, 180, interval=1, what="the 8 jobs to end")
    jobs = queue_json(env)
    assert [j["status"] for j in jobs] == ["SUCCEEDED"] * 8
    assert all(j["tasks"][0]["attempt_count"] == 1 for j in jobs)  # type: ignore[index]
    ranks = sorted(int(m) for j in range(1, 9) for m in re.findall(r"Job rank (\d+) of 8", run_logs(env, j)))
    assert ranks == list(range(8))
    assert most_at_once(events) == 1

    async def carried_queues() -> list[int]:
        """For each run of the pool: how many waiting jobs its input (the state carried over) held."""
        client = await env.client()
        sizes = []
        async for run in client.list_workflows("WorkflowId = 'tsky-pool-p'"):
            history = client.get_workflow_handle(run.id, run_id=run.run_id).fetch_history_events()
            first = await anext(aiter(history))
            payload = first.workflow_execution_started_event_attributes.input.payloads[0]
            sizes.append(len(DATA_CONVERTER.payload_converter.from_payload(payload, PoolState).queue))
        return sizes

    queues = asyncio.run(carried_queues())
    assert len(queues) >= 3  # the pool continued-as-new at least twice...
    assert any(queues)  # ...and at least once with jobs waiting in its queue
    assert len(setups(env)) == 1


def test_autoscaling_from_zero_up_for_a_job_and_back_to_zero(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    env = tsky_env
    spec = env.write(
        "auto.yaml",
        f"""\
pool:
  min_workers: 0
  max_workers: 2
  upscale_delay_seconds: 1
  downscale_delay_seconds: 2
resources:
  cpus: 1+
setup: echo "setup" >> {env.home / "setups.txt"}
""",
    )
    out = apply_pool(env, "auto", spec)
    assert "Autoscaling from 0 to 2 workers (queue threshold: 1)" in out
    pool = snapshot(env, "auto")
    assert pool is not None and pool.workers == [] and pool.status.value == "NO_REPLICA"

    job = env.write("one.yaml", "name: one\nrun: echo scaled up; sleep 1\n")
    assert env.tsky("jobs", "launch", "-p", "auto", "-d", "-y", str(job)).returncode == 0
    wait_until(lambda: live(snapshot(env, "auto")), 30, what="a worker to appear")
    wait_status(env, 1, "SUCCEEDED")
    assert "scaled up" in run_logs(env, 1)
    wait_until(lambda: (p := snapshot(env, "auto")) is not None and not p.workers, 60, what="scale back to 0")
    wait_until(lambda: no_clusters(env), 30, what="the worker's cluster to go")
    assert len(setups(env)) == 1


def test_down_cancels_jobs_and_leaves_nothing(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    env = tsky_env
    apply_pool(env, "p", write_pool(env, 1))
    go = env.home / "go"
    job = env.write("hold.yaml", HOLD.format(go=go))
    assert env.tsky("jobs", "launch", "-p", "p", "--num-jobs", "2", "-y", str(job)).returncode == 0
    # One job runs on the only worker (whichever asked first), the other waits PENDING.
    running = wait_until(lambda: [j for j in (1, 2) if "running on" in run_logs(env, j)], 60, what="a job to run")
    wait_status(env, 3 - running[0], "PENDING")

    result = env.tsky("jobs", "pool", "down", "p", "-y")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Pool(s) has 2 nonterminal jobs: 1, 2 so it is not yet safe to down." in result.stderr
    assert "Pool 'p' is scheduled to be terminated." in result.stdout
    assert [j["status"] for j in queue_json(env)] == ["CANCELLED", "CANCELLED"]
    wait_until(lambda: snapshot(env, "p") is None and no_clusters(env), 60, what="the pool to be gone")
    assert wait_until(lambda: no_tagged_processes("p-w"), 10, what="the workers' processes to die")
    assert env.tsky("status").stdout.strip() == "No live clusters."
    assert "No existing pools." in env.tsky("jobs", "pool", "status").stdout
    assert json.loads(env.tsky("jobs", "pool", "status", "--json").stdout) == []

    # A pool that is gone: the CLI refuses to submit to it, and a job that still asks for it fails.
    refused = env.tsky("jobs", "launch", "-p", "p", "-y", str(job))
    assert refused.returncode == 102 and "Pool 'p' not found." in refused.stderr

    async def submit() -> int:
        from tsky.cli.common import current_user, current_user_hash
        from tsky.spec.loader import load_pipeline
        from tsky.spec.settings import load_settings

        client = await env.client()
        settings = load_settings(env.home)
        user, user_hash = current_user(), current_user_hash()
        ids = await api.submit(client, settings, load_pipeline(job), user=user, user_hash=user_hash, pool="p")
        return ids[0]

    orphan = asyncio.run(submit())
    wait_status(env, orphan, "FAILED_NO_RESOURCE")
    row = next(j for j in queue_json(env) if j["job_id"] == orphan)
    assert row["tasks"][0]["failure_reason"] == "Pool 'p' does not exist."  # type: ignore[index]


def test_num_jobs_without_a_pool_gives_each_job_its_own_cluster_and_rank(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    env = tsky_env
    job = env.write("batch.yaml", BATCH.format(events=env.home / "events.txt", sleep=0))
    result = env.tsky("jobs", "launch", "--num-jobs", "3", "-y", str(job))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Submitting 3 managed jobs. Each job will be launched on its own cluster." in result.stdout
    assert "Jobs submitted with IDs: 1,2,3." in result.stdout
    assert "To cancel all these jobs:     tsky jobs cancel 1 2 3" in result.stdout
    for job_id in (1, 2, 3):
        wait_status(env, job_id, "SUCCEEDED")
        # Ranks follow job ids; each job ran on a cluster of its own (`<name>-<job id>`).
        assert f"Job rank {job_id - 1} of 3 on batch-{job_id}" in run_logs(env, job_id)


def test_a_pool_job_terminated_outside_tsky_gives_its_worker_back(tsky_env: TskyEnv, tmp_path: Path) -> None:
    env = tsky_env
    env.configure({"jobs": {"sweeper": {"enabled": True, "interval_seconds": 1, "grace_seconds": 0}}})
    env.start_worker(extra_env=local_only(tmp_path))
    apply_pool(env, "p", write_pool(env, 1))
    job = env.write("hold.yaml", HOLD.format(go=env.home / "go"))
    assert env.tsky("jobs", "launch", "-p", "p", "-y", "-d", str(job)).returncode == 0
    wait_until(lambda: "running on" in run_logs(env, 1), 60, what="the job to run on the worker")

    async def terminate_job() -> None:  # what an operator does from the Web UI
        client = await env.client()
        await client.get_workflow_handle("tsky-job-1").terminate("by hand")

    asyncio.run(terminate_job())
    # The sweeper has the pool take the worker back as lost: it is replaced, the job's processes go with it.
    assert wait_until(lambda: not job_processes("p"), 60, what="the terminated job's processes to die")
    wait_workers(env, "p", 1)
    quick = env.write("quick.yaml", "name: quick\nrun: echo next job\n")
    assert env.tsky("jobs", "launch", "-p", "p", "-y", str(quick)).returncode == 0
    assert "next job" in run_logs(env, 2)
