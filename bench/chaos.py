"""Chaos: spot jobs on the local simulator with preemptions at random; do they all finish, how fast do
they come back, and does anything leak?

    python -m bench.chaos [--jobs 20] [--job-seconds 40] [--every 2] [--regions 3] [--per-job 2]

It starts its own dev server and worker in a temp TSKY_HOME (bench/_stack.py), submits N spot jobs
spread by price over a few simulated regions, and while they run preempts a random RUNNING job every
`--every` seconds, each at most `--per-job` times (`tsky debug preempt`'s code path). It prints jobs
succeeded, recoveries, the mean and max time from a preemption to that job RUNNING again, and leaked
clusters (must be 0). Not run in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from datetime import UTC, datetime

from bench._stack import Stack, machine
from tsky.activities.clouds.local import LocalBackend, preempt_job
from tsky.cli import api
from tsky.spec.ids import job_workflow_id
from tsky.spec.loader import load_pipeline
from tsky.spec.status import ManagedJobStatus
from tsky.workflows.managed_job import ManagedJobWorkflow


def config(regions: int) -> dict[str, object]:
    return {
        "jobs": {
            "watch": {"poll_seconds": 1, "heartbeat_timeout_seconds": 15},
            "launch_backoff": {"initial_seconds": 2, "max_seconds": 10},
        },
        "local": {
            "regions": [
                {"name": f"region-{i}", "instance_types": [{"name": "local", "price": 1.0, "spot_price": 0.2 + i / 10}]}
                for i in range(regions)
            ]
        },
    }


async def run(stack: Stack, jobs: int, job_seconds: int, every: float, per_job: int) -> None:
    client = await stack.client()
    spec = f"name: chaos\nresources:\n  use_spot: true\nrun: |\n  for i in $(seq 1 {job_seconds}); do sleep 1; done\n"
    ids = await api.submit(
        client, stack.settings, load_pipeline(spec), user="bench", user_hash="bench000", num_jobs=jobs
    )
    print(f"submitted {len(ids)} spot jobs of {job_seconds}s; preempting a RUNNING one every {every}s "
          f"(at most {per_job} per job)", flush=True)  # fmt: skip
    rng = random.Random(7)
    preemptions: list[tuple[int, datetime]] = []
    while True:
        rows = [r for r in await api.list_jobs(client, user=None) if r.job_id in ids]
        if len(rows) == len(ids) and all(r.status.is_terminal() for r in rows):
            break
        hit = {job_id: sum(1 for j, _ in preemptions if j == job_id) for job_id in ids}
        running = [r.job_id for r in rows if r.status is ManagedJobStatus.RUNNING and hit[r.job_id] < per_job]
        if running:
            victim = rng.choice(running)
            if preempt_job(stack.settings, victim):
                preemptions.append((victim, datetime.now(UTC)))
        await asyncio.sleep(every)

    back: list[float] = []
    for job_id, at in preemptions:
        state = await client.get_workflow_handle(job_workflow_id(job_id)).query(ManagedJobWorkflow.state)
        starts = [a.started_at for a in state.tasks[0].attempts if a.started_at and a.started_at > at]
        if starts:
            back.append((min(starts) - at).total_seconds())
    succeeded = sum(r.status is ManagedJobStatus.SUCCEEDED for r in rows)
    leaked = await LocalBackend(stack.settings).list_clusters()
    print(f"machine: {machine()}")
    print(f"jobs succeeded:              {succeeded} / {len(ids)}")
    print(f"preemptions injected:        {len(preemptions)}")
    print(f"recoveries (#RECOVERIES):    {sum(r.recoveries for r in rows)}")
    if back:
        print(f"preemption → RUNNING again:  mean {statistics.mean(back):.1f}s, max {max(back):.1f}s")
    print(f"leaked clusters:             {len(leaked)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--job-seconds", type=int, default=40)
    parser.add_argument("--every", type=float, default=2.0)
    parser.add_argument("--regions", type=int, default=3)
    parser.add_argument("--per-job", type=int, default=2, help="most preemptions of one job")
    args = parser.parse_args()
    started = time.monotonic()
    with Stack(config=config(args.regions)) as stack:
        asyncio.run(run(stack, args.jobs, args.job_seconds, args.every, args.per_job))
    print(f"wall time:                   {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
