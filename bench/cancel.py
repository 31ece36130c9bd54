"""Bulk cancel: N running jobs (default 1,000) cancelled at once with `tsky jobs cancel --all`.

    python bench/cancel.py [--jobs 1000] [--trivial 300]

It starts its own dev server (SQLite file) and worker in a temp TSKY_HOME, measures the engine's bare
rate (a one-activity workflow, as `bench/scale.py` does) so the figures can be read against the machine's
load, submits N jobs that block until released, waits until all are RUNNING, runs
`tsky jobs cancel --all -y`, and measures the time until every job is CANCELLED and until no job process
is left; then it counts, from the jobs' histories, the workflow tasks and events each cancel cost. Prints
figures, never pass/fail, and cleans up after itself.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import getpass
import os
import sys
import time
import uuid
from pathlib import Path

from temporalio.api.enums.v1 import EventType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import trivial
from bench._stack import Stack, count_status, machine, tagged_processes, wait_for
from bench.round_trips import HEADER, histories, split, total
from tsky.client import jobs as api
from tsky.spec.loader import load_pipeline

CANCEL_REQUESTED = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED


async def bench(stack: Stack, jobs: int, timeout: float, trivials: int) -> dict[str, float]:
    client = await stack.client()
    figures: dict[str, float] = {}
    if trivials:
        worker = stack.spawn([sys.executable, "-m", "bench.trivial", stack.address, "default"], "trivial")
        await trivial.measure(client, 20)  # warm-up (also waits for the worker to poll)
        figures["trivial_wf_per_s"] = await trivial.measure(client, trivials)
        worker.terminate()
        worker.wait()
    name = f"cancel-{uuid.uuid4().hex[:6]}"
    gate = stack.home / "gate"
    gate.touch()
    with gate.open() as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        pipeline = load_pipeline(f"name: {name}\nrun: exec flock -s {gate} true\n")
        user = getpass.getuser()
        ids = await api.submit(client, stack.settings, pipeline, user=user, user_hash="bench", num_jobs=jobs)
        figures["to_running_s"] = await wait_for(
            "RUNNING", jobs, lambda: count_status(client, "RUNNING"), timeout, interval=0.5
        )
        await asyncio.sleep(5)
        figures["processes_before"] = tagged_processes(f"{name}-")
        cpu_before = {group: stack.sampler.cpu(group) for group in ("workers", "server")}
        started = time.monotonic()
        figures["cli_s"], done = stack.tsky("jobs", "cancel", "--all", "-y")
        if done.returncode != 0:
            raise SystemExit(f"tsky jobs cancel failed: {done.stderr}")
        # Both ends are watched together: the last job CANCELLED, and the last job process gone.
        shown = started
        while "to_cancelled_s" not in figures or "to_no_process_s" not in figures:
            now = time.monotonic()
            if "to_cancelled_s" not in figures and await count_status(client, "CANCELLED") >= jobs:
                figures["to_cancelled_s"] = now - started
                for group, before in cpu_before.items():
                    figures[f"{group}_cpu_s"] = stack.sampler.cpu(group) - before
            if "to_no_process_s" not in figures and tagged_processes(f"{name}-") == 0:
                figures["to_no_process_s"] = now - started
            if now - shown >= 10:
                print(f"  ... {now - started:.0f} s after the command: {sorted(figures)}", flush=True)
                shown = now
            if now - started > timeout:
                raise SystemExit(f"gave up after {timeout:.0f} s: {figures}")
            await asyncio.sleep(0.5)
    cancels = total([split(h, CANCEL_REQUESTED)[1] for h in await histories(client, ids)])
    print(f"\nper cancel, from the request on (all {jobs} jobs):\n{HEADER}\n{cancels.row('bulk cancel', jobs)}")
    figures["workflow_tasks_per_cancel"] = cancels.workflow_tasks / jobs
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--trivial", type=int, default=300, help="trivial workflows for the bare rate; 0 skips")
    args = parser.parse_args()
    where = machine()
    print(f"machine at start: {where}", flush=True)
    with Stack(workers=1) as stack:
        f = asyncio.run(bench(stack, args.jobs, args.timeout, args.trivial))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print()
    print(f"bulk cancel of {args.jobs} running jobs (dev server on SQLite, one worker, local infra)")
    print(f"machine: {where}; load average at the end {load}")
    if "trivial_wf_per_s" in f:
        bare = f["trivial_wf_per_s"]
        print(f"engine bare throughput (1-activity workflow, same run): {bare:.1f} workflows/s")
    print(f"all RUNNING after submit:      {f['to_running_s']:.1f} s ({int(f['processes_before'])} job processes)")
    print(f"`tsky jobs cancel --all -y`:   {f['cli_s']:.1f} s")
    print(f"all CANCELLED after:           {f['to_cancelled_s']:.1f} s from the command")
    print(f"no job process left after:     {f['to_no_process_s']:.1f} s from the command")
    rate = args.jobs / f["to_cancelled_s"]
    print(
        f"cancel rate:                   {rate:.1f} jobs/s"
        + (f" = {rate / f['trivial_wf_per_s']:.2f} x the bare workflow rate" if "trivial_wf_per_s" in f else "")
    )
    print(f"workflow tasks per cancel:     {f['workflow_tasks_per_cancel']:.2f}")
    busy = {group: f[f"{group}_cpu_s"] / f["to_cancelled_s"] for group in ("workers", "server")}
    print(
        f"CPU until all CANCELLED:       worker {f['workers_cpu_s']:.1f} s ({busy['workers']:.0%} of one core), "
        f"server {f['server_cpu_s']:.1f} s ({busy['server']:.0%})"
    )


if __name__ == "__main__":
    main()
