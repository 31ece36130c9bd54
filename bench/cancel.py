"""Bulk cancel: N running jobs (default 1,000) cancelled at once with `tsky jobs cancel --all`.

    python bench/cancel.py [--jobs 1000]

It starts its own dev server (SQLite file) and worker in a temp TSKY_HOME, submits N jobs that block
until released, waits until all are RUNNING, runs `tsky jobs cancel --all -y`, and measures the time
until every job is CANCELLED and until no job process is left. Prints figures, never pass/fail, and
cleans up after itself.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import getpass
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stack import Stack, count_status, machine, tagged_processes, wait_for
from tsky.client import jobs as api
from tsky.spec.loader import load_pipeline


async def bench(stack: Stack, jobs: int, timeout: float) -> dict[str, float]:
    client = await stack.client()
    name = f"cancel-{uuid.uuid4().hex[:6]}"
    gate = stack.home / "gate"
    gate.touch()
    figures: dict[str, float] = {}
    with gate.open() as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        pipeline = load_pipeline(f"name: {name}\nrun: exec flock -s {gate} true\n")
        user = getpass.getuser()
        await api.submit(client, stack.settings, pipeline, user=user, user_hash="bench", num_jobs=jobs)
        figures["to_running_s"] = await wait_for(
            "RUNNING", jobs, lambda: count_status(client, "RUNNING"), timeout, interval=0.5
        )
        await asyncio.sleep(5)
        figures["processes_before"] = tagged_processes(f"{name}-")
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
            if "to_no_process_s" not in figures and tagged_processes(f"{name}-") == 0:
                figures["to_no_process_s"] = now - started
            if now - shown >= 10:
                print(f"  ... {now - started:.0f} s after the command: {sorted(figures)}", flush=True)
                shown = now
            if now - started > timeout:
                raise SystemExit(f"gave up after {timeout:.0f} s: {figures}")
            await asyncio.sleep(0.5)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    where = machine()
    print(f"machine at start: {where}", flush=True)
    with Stack(workers=1) as stack:
        f = asyncio.run(bench(stack, args.jobs, args.timeout))
    print()
    print(f"bulk cancel of {args.jobs} running jobs (dev server on SQLite, one worker, local infra)")
    print(f"machine: {where}")
    print(f"all RUNNING after submit:      {f['to_running_s']:.1f} s ({int(f['processes_before'])} job processes)")
    print(f"`tsky jobs cancel --all -y`:   {f['cli_s']:.1f} s")
    print(f"all CANCELLED after:           {f['to_cancelled_s']:.1f} s from the command")
    print(f"no job process left after:     {f['to_no_process_s']:.1f} s from the command")


if __name__ == "__main__":
    main()
