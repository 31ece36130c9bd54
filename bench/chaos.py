"""Chaos: every fault at once on the local simulator. Do all jobs finish, how fast do they come back,
does any `run` execute twice, and does anything leak?

    python -m bench.chaos [--jobs 200] [--job-seconds 150] [--regions 3] [--preemptions 100]
                          [--worker-kills 5] [--server-kills 1] [--every 0.5] [--deadline-minutes 40]

It starts its own dev server in a temp TSKY_HOME (bench/_stack.py) and the embedded worker daemon with
`tsky server up`, submits N spot jobs spread by price over a few simulated regions, and while they run:
preempts a random RUNNING job every `--every` seconds (at most twice per job) until `--preemptions` are
done; at random moments in between, kill -9s the worker (the next `tsky jobs queue` starts a new one)
and the Temporal server (the next `tsky jobs queue` restarts it, on its port, with a new worker).

Every `run` appends its pid to a marker file named after its attempt's cluster, so a `run` started twice
within one attempt shows as a file with two lines. It prints jobs by final status, recoveries,
preemptions by what they did (caused a recovery; hit a job whose run had ended and which was tearing
down, or whose run had not begun: no recovery expected; or hit an attempt that never ended: a stuck
job), preemption → RUNNING again p50/p95/max for those that caused a recovery, runs executed twice,
leaked clusters and job processes, attempts that reached RUNNING without a run log, and what any job
still going at the deadline was doing. Not run in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from temporalio.client import Client

from bench._stack import Stack, machine
from tsky.client import jobs as api
from tsky.client.jobs import JobRow
from tsky.contract.ids import job_workflow_id
from tsky.contract.job import JobState
from tsky.contract.logs import phase_log_key
from tsky.ops.clouds.local import LocalBackend, preempt_job
from tsky.spec.loader import load_pipeline
from tsky.spec.status import ManagedJobStatus
from tsky.workflows.managed_job import ManagedJobWorkflow

TSKY = str(Path(sys.executable).parent / "tsky")


RECOVERED = "caused a recovery"
AFTER_RUN = "hit after its run ended"  # the job was tearing down: RUNNING until the teardown is done
BEFORE_RUN = "hit before its run began"  # provisioning or setup: the attempt is relaunched, not counted
NOT_HANDLED = "not handled (attempt open)"  # its attempt never ended: a stuck job
UNKNOWN = "attempt not found"


@dataclass
class Preemption:
    job_id: int
    at: datetime
    clusters: list[str]  # the job's live clusters, all preempted

    def outcome(self, state: JobState) -> str:
        """What the preemption did to the attempt whose cluster it hit, from the job's attempt history."""
        hit = [a for a in state.tasks[0].attempts if a.cluster_name in self.clusters]
        if not hit:
            return UNKNOWN
        attempt = hit[-1]
        if attempt.cause is None:
            return NOT_HANDLED
        if attempt.cause not in ("preempted", "unreachable"):
            return AFTER_RUN  # the run had ended (its exit code decided the attempt) before the node went
        return RECOVERED if attempt.started_at is not None and attempt.started_at <= self.at else BEFORE_RUN


def config(regions: int) -> dict[str, object]:
    return {
        "jobs": {
            "watch": {"poll_seconds": 1, "heartbeat_timeout_seconds": 15},
            "launch_backoff": {"initial_seconds": 2, "max_seconds": 10},
            "sweeper": {"enabled": False},
        },
        "worker": {"graceful_shutdown_seconds": 5},
        "local": {
            "regions": [
                {"name": f"region-{i}", "instance_types": [{"name": "local", "price": 1.0, "spot_price": 0.2 + i / 10}]}
                for i in range(regions)
            ]
        },
    }


def job_spec(markers: Path, seconds: int) -> str:
    # The attempt's cluster name, from SKYPILOT_CLUSTER_INFO, names the marker file.
    cluster = '$(echo "$SKYPILOT_CLUSTER_INFO" | sed \'s/.*"cluster_name": "\\([^"]*\\)".*/\\1/\')'
    return (
        "name: chaos\nresources:\n  use_spot: true\nrun: |\n"
        f"  echo $$ >> {markers}/{cluster}\n"
        f"  for i in $(seq 1 {seconds}); do sleep 1; done\n"
    )


def embedded_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """The tsky CLI as a user runs it on this home: it (re)starts the embedded server and worker."""
    env = {k: v for k, v in os.environ.items() if k != "TSKY_TEMPORAL_ADDRESS"}
    env["TSKY_HOME"] = str(stack.home)
    return subprocess.run([TSKY, *args], env=env, capture_output=True, text=True, timeout=600)


def _pid(path: Path) -> int:
    return int(json.loads(path.read_text())["pid"])


async def run(stack: Stack, args: argparse.Namespace) -> None:
    markers = stack.home / "markers"
    markers.mkdir()
    up = embedded_cli(stack, "server", "up")
    assert up.returncode == 0, up.stdout + up.stderr
    client: Client = await stack.client()
    ids = await api.submit(
        client,
        stack.settings,
        load_pipeline(job_spec(markers, args.job_seconds)),
        user="bench",
        user_hash="bench000",
        num_jobs=args.jobs,
    )
    print(f"submitted {len(ids)} spot jobs of {args.job_seconds}s over {args.regions} regions", flush=True)
    rng = random.Random(7)
    # Faults happen once the given number of preemptions is done: random moments within the preemptions.
    kill_at = sorted(rng.sample(range(1, args.preemptions), args.worker_kills + args.server_kills))
    server_kill_at = set(rng.sample(kill_at, args.server_kills))
    preemptions: list[Preemption] = []
    faults: list[str] = []
    deadline = time.monotonic() + args.deadline_minutes * 60
    rows: list[JobRow] = []
    while time.monotonic() < deadline:
        try:
            rows = [r for r in await api.list_jobs(client, user=None) if r.job_id in ids]
        except Exception as err:  # the server is restarting
            print(f"  (listing failed: {err})", flush=True)
            await asyncio.sleep(2)
            continue
        if len(rows) == len(ids) and all(r.status.is_terminal() for r in rows):
            break
        hit = Counter(p.job_id for p in preemptions)
        # Preempt a job again only once it recovered from the last preemption (visibility lags a little).
        running = [
            r.job_id
            for r in rows
            if r.status is ManagedJobStatus.RUNNING and hit[r.job_id] < 2 and r.recoveries == hit[r.job_id]
        ]
        if running and len(preemptions) < args.preemptions:
            victim = rng.choice(running)
            if clusters := preempt_job(stack.settings, victim):
                preemptions.append(Preemption(victim, datetime.now(UTC), clusters))
        while kill_at and len(preemptions) >= kill_at[0]:
            at = kill_at.pop(0)
            if at in server_kill_at:
                victim_file, what = stack.home / "server.json", "Temporal server"
            else:
                victim_file, what = stack.home / "worker.json", "worker"
            pid = _pid(victim_file)
            os.kill(pid, signal.SIGKILL)
            started = time.monotonic()
            queue = embedded_cli(stack, "jobs", "queue")  # the CLI notices and starts a new one
            took = time.monotonic() - started
            faults.append(f"kill -9 {what} (pid {pid}) after {at} preemptions: `tsky jobs queue` exit "
                          f"{queue.returncode} in {took:.1f}s")  # fmt: skip
            print("  " + faults[-1], flush=True)
            if what == "Temporal server":
                stack.server_pid = _pid(stack.home / "server.json")
                client = await stack.client()
        await asyncio.sleep(args.every)

    states: dict[int, JobState] = {}
    for job_id in ids:
        handle = client.get_workflow_handle(job_workflow_id(job_id))
        states[job_id] = await handle.query(ManagedJobWorkflow.state)
    back: list[float] = []
    for p in preemptions:
        starts = [a.started_at for a in states[p.job_id].tasks[0].attempts if a.started_at and a.started_at > p.at]
        if p.outcome(states[p.job_id]) == RECOVERED and starts:
            back.append((min(starts) - p.at).total_seconds())
    outcomes = Counter(p.outcome(states[p.job_id]) for p in preemptions)
    twice = {m.name: n for m in markers.iterdir() if (n := len(m.read_text().split())) > 1}
    missing_logs = [
        (job_id, a.index)
        for job_id, state in states.items()
        for a in state.tasks[0].attempts
        if (a.started_at or (a.cluster_name and (markers / a.cluster_name).exists()))
        and not (stack.home / "logs" / phase_log_key(job_id, 0, a.index, "run")).exists()
    ]
    await asyncio.sleep(5)  # teardowns just requested finish
    leaked = await LocalBackend(stack.settings).list_clusters()
    leaked_processes = stack.job_processes()
    statuses = Counter(r.status.value for r in rows)
    print(f"machine:                     {machine()}")
    print(f"jobs by final status:        {dict(statuses)} (of {len(ids)})")
    print(f"preemptions injected:        {len(preemptions)}")
    for outcome in (RECOVERED, AFTER_RUN, BEFORE_RUN, NOT_HANDLED, UNKNOWN):
        print(f"  {outcome + ':':<26} {outcomes[outcome]}")
    servers = sum("Temporal server" in f for f in faults)
    print(f"faults:                      {len(faults) - servers} worker kill -9, {servers} server kill -9")
    print(f"recoveries (#RECOVERIES):    {sum(r.recoveries for r in rows)}")
    if len(back) >= 2:
        q = statistics.quantiles(back, n=20, method="inclusive")
        print(
            f"preemption → RUNNING again:  p50 {statistics.median(back):.1f}s, p95 {q[18]:.1f}s, max {max(back):.1f}s"
        )
    print(f"runs executed twice / attempt: {len(twice)} {twice or ''}")
    print(f"leaked clusters:             {len(leaked)}")
    print(f"leaked job processes:        {len(leaked_processes)}")
    print(f"attempts without a run log:  {len(missing_logs)} {missing_logs or ''}")
    for row in rows:
        if not row.status.is_terminal():  # what a job still going at the deadline was doing
            task = states[row.job_id].tasks[0]
            attempts = "; ".join(f"#{a.index} {a.cluster_name} {a.cause or 'no end yet'}" for a in task.attempts)
            print(f"not finished: job {row.job_id} {row.status.value} ({task.details or '-'}): {attempts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--job-seconds", type=int, default=150)
    parser.add_argument("--regions", type=int, default=3)
    parser.add_argument("--preemptions", type=int, default=100)
    parser.add_argument("--worker-kills", type=int, default=5)
    parser.add_argument("--server-kills", type=int, default=1)
    parser.add_argument("--every", type=float, default=0.5, help="seconds between preemptions")
    parser.add_argument("--deadline-minutes", type=float, default=40, help="report whatever state then")
    args = parser.parse_args()
    started = time.monotonic()
    with Stack(workers=0, config=config(args.regions)) as stack:
        try:
            asyncio.run(run(stack, args))
        finally:
            embedded_cli(stack, "server", "down")
    print(f"wall time:                   {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
