"""How fast `tsky jobs queue` answers with many finished jobs (default 10,000).

    python bench/jobs_queue.py [--jobs 10000]

It starts its own dev server (SQLite file) and worker in a temp TSKY_HOME, submits N jobs that have
nothing to run (they finish without a cluster, so filling the history is quick), waits until all are
closed, then times the CLI (a fresh process each time, as a user runs it) and the API call behind it:
the default view (the latest 50, from a window of job ids) and `--all` (every job). Prints figures,
never pass/fail, and cleans up after itself.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stack import Stack, count, machine
from tsky.client import jobs as api
from tsky.spec.loader import load_pipeline

CLOSED = "WorkflowType = 'ManagedJob' AND ExecutionStatus != 'Running'"
BATCH = 1000


async def fill(stack: Stack, jobs: int) -> float:
    """Submit `jobs` jobs with nothing to run, in batches; seconds until all are closed."""
    client = await stack.client()
    pipeline = load_pipeline("name: filler\nsetup: 'true'\n")
    user = getpass.getuser()
    started = time.monotonic()
    for first in range(0, jobs, BATCH):
        n = min(BATCH, jobs - first)
        await api.submit(client, stack.settings, pipeline, user=user, user_hash="bench", num_jobs=n)
        while await count(client, CLOSED) < first + n // 2:  # keep the backlog bounded
            await asyncio.sleep(1)
        print(f"  ... {first + n} submitted, {await count(client, CLOSED)} closed", flush=True)
    while (closed := await count(client, CLOSED)) < jobs:
        await asyncio.sleep(2)
    print(f"  ... {closed} closed", flush=True)
    return time.monotonic() - started


async def api_times(stack: Stack, rounds: int) -> tuple[float, float]:
    client = await stack.client()
    user = getpass.getuser()
    latest, everything = [], []
    for _ in range(rounds):
        t = time.monotonic()
        await api.latest_jobs(client, user=user, limit=50)
        latest.append(time.monotonic() - t)
        t = time.monotonic()
        await api.list_jobs(client, user=user)
        everything.append(time.monotonic() - t)
    return statistics.median(latest), statistics.median(everything)


def cli_time(stack: Stack, rounds: int, *args: str) -> float:
    times = []
    for _ in range(rounds):
        took, done = stack.tsky("jobs", "queue", *args)
        if done.returncode != 0:
            raise SystemExit(f"tsky jobs queue {' '.join(args)} failed: {done.stderr}")
        times.append(took)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each query (median shown)")
    args = parser.parse_args()
    where = machine()
    print(f"machine at start: {where}", flush=True)
    with Stack(workers=1) as stack:
        fill_s = asyncio.run(fill(stack, args.jobs))
        baseline = cli_time(stack, args.rounds, "--limit", "1", "--status", "FAILED_CONTROLLER")
        default_cli = cli_time(stack, args.rounds)
        all_cli = cli_time(stack, args.rounds, "--all")
        latest_api, all_api = asyncio.run(api_times(stack, args.rounds))
    print()
    print(f"tsky jobs queue with {args.jobs} finished jobs (dev server on SQLite, one worker)")
    print(f"machine: {where}")
    print(f"filling: {fill_s:.0f} s ({args.jobs / fill_s:.1f} jobs/s, jobs with nothing to run)")
    print(
        f"`tsky jobs queue` (latest 50):  {default_cli:.2f} s wall, CLI start-up included; API call {latest_api:.3f} s"
    )
    print(f"`tsky jobs queue --all`:        {all_cli:.2f} s wall; API {all_api:.3f} s")
    print(f"a near-empty answer, for scale: {baseline:.2f} s (CLI start-up and connection)")


if __name__ == "__main__":
    main()
