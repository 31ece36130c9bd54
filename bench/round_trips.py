"""Engine round-trips per job: the history events and workflow tasks of a hello job and of a cancel.

    python bench/round_trips.py [--jobs 3]

The rate at which the engine launches jobs, and cancels them, is bounded by how many workflow tasks,
activity tasks and history events each one costs (each is a few database writes on the server). This
script starts its own dev server (SQLite file) and worker in a temp TSKY_HOME, runs `--jobs` hello jobs
(`run: echo hello`) to the end and `--jobs` jobs that are cancelled while RUNNING, and prints, per job:
workflow tasks, activity tasks by name, markers (local activities and `workflow.patched` markers),
search-attribute upserts (with the patches' TemporalChangeVersion) and memo upserts, history events and
size, split into "until RUNNING" (up to the run activity's scheduling) and the rest, and for a cancel,
from the cancel request on. A one-activity workflow's figures are printed above them: the unit of the
bare rate `bench/scale.py` compares against. Counts, not
timings, so a loaded machine changes nothing but the wall time; the load average is printed anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import getpass
import os
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import trivial
from bench._stack import Stack, machine
from tsky.client import jobs as api
from tsky.contract.activity_io import ActivityName
from tsky.contract.ids import job_workflow_id
from tsky.spec.loader import load_pipeline


@dataclass
class Cost:
    """What a stretch of one workflow's history cost the engine."""

    workflow_tasks: int = 0
    activities: Counter[str] = field(default_factory=Counter)
    local_activities: int = 0
    search_attribute_upserts: int = 0
    memo_upserts: int = 0
    events: int = 0
    size: int = 0

    def add(self, event: HistoryEvent) -> None:
        kind = event.event_type
        self.events += 1
        self.size += event.ByteSize()
        if kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            self.workflow_tasks += 1
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            self.activities[event.activity_task_scheduled_event_attributes.activity_type.name] += 1
        elif kind == EventType.EVENT_TYPE_MARKER_RECORDED:
            self.local_activities += 1
        elif kind == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            self.search_attribute_upserts += 1
        elif kind == EventType.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED:
            self.memo_upserts += 1

    def row(self, label: str, jobs: int) -> str:
        per = jobs or 1
        acts = ", ".join(f"{name} {n / per:g}" for name, n in sorted(self.activities.items())) or "-"
        return (
            f"  {label:<22} {self.workflow_tasks / per:>5.1f} {sum(self.activities.values()) / per:>5.1f} "
            f"{self.local_activities / per:>5.1f} {self.search_attribute_upserts / per:>5.1f} "
            f"{self.memo_upserts / per:>5.1f} {self.events / per:>6.1f} {self.size / per / 1024:>7.1f}   {acts}"
        )


HEADER = "  stretch (per job)        WFTs   ATs  mark   SAs  memo events     KiB   activity tasks"


def split(history: WorkflowHistory, at: EventType.ValueType, activity: str | None = None) -> tuple[Cost, Cost]:
    """The history's cost before and from its first event of kind `at` (of `activity`, if given)."""
    before, after = Cost(), Cost()
    into = before
    for event in history.events:
        if into is before and event.event_type == at:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            if activity is None or name == activity:
                into = after
        into.add(event)
    return before, after


def total(costs: list[Cost]) -> Cost:
    out = Cost()
    for c in costs:
        out.workflow_tasks += c.workflow_tasks
        out.activities += c.activities
        out.local_activities += c.local_activities
        out.search_attribute_upserts += c.search_attribute_upserts
        out.memo_upserts += c.memo_upserts
        out.events += c.events
        out.size += c.size
    return out


async def histories(client: Client, ids: list[int]) -> list[WorkflowHistory]:
    return [await client.get_workflow_handle(job_workflow_id(i)).fetch_history() for i in ids]


async def hello(client: Client, stack: Stack, jobs: int) -> list[WorkflowHistory]:
    user = getpass.getuser()
    pipeline = load_pipeline(f"name: hello-{uuid.uuid4().hex[:6]}\nrun: echo hello\n")
    ids = await api.submit(client, stack.settings, pipeline, user=user, user_hash="bench", num_jobs=jobs)
    for job_id in ids:
        await api.wait(client, job_id)
    return await histories(client, ids)


async def cancelled(client: Client, stack: Stack, jobs: int) -> list[WorkflowHistory]:
    user = getpass.getuser()
    gate = stack.home / "gate"
    gate.touch()
    with gate.open() as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the jobs run until cancelled
        pipeline = load_pipeline(f"name: cancel-{uuid.uuid4().hex[:6]}\nrun: exec flock -s {gate} true\n")
        ids = await api.submit(client, stack.settings, pipeline, user=user, user_hash="bench", num_jobs=jobs)
        for job_id in ids:
            while (row := await api.get_job(client, job_id)) is None or row.status.value != "RUNNING":
                await asyncio.sleep(0.5)
        await asyncio.sleep(3)  # the watchers are in their steady poll, as in a bulk cancel
        await api.cancel(client, ids)
        for job_id in ids:
            await api.wait(client, job_id)
    return await histories(client, ids)


async def bare(client: Client, stack: Stack) -> WorkflowHistory:
    """The history of one one-activity workflow (the unit of `bench/scale.py`'s bare rate)."""
    worker = stack.spawn([sys.executable, "-m", "bench.trivial", stack.address, "default"], "trivial")
    try:
        handle = await client.start_workflow(
            trivial.Trivial.run, 1, id=f"trivial-{uuid.uuid4().hex[:8]}", task_queue=trivial.QUEUE
        )
        await handle.result()
        return await handle.fetch_history()
    finally:
        worker.terminate()
        worker.wait()


async def bench(stack: Stack, jobs: int) -> None:
    client = await stack.client()
    unit = Cost()
    for event in (await bare(client, stack)).events:
        unit.add(event)
    done = await hello(client, stack, jobs)
    stopped = await cancelled(client, stack, jobs)
    started = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    launch = [split(h, started, ActivityName.RUN) for h in done]
    cancel = [split(h, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED) for h in stopped]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nengine round-trips per job ({jobs} of each; dev server on SQLite, one worker, local infra)")
    print(f"load average at the end: {load} (counts do not depend on it)")
    print(HEADER)
    print(unit.row("one-activity workflow", 1))
    print(total([b for b, _ in launch]).row("hello: until RUNNING", jobs))
    print(total([a for _, a in launch]).row("hello: RUNNING to end", jobs))
    print(total([c for pair in launch for c in pair]).row("hello: whole job", jobs))
    print(total([a for _, a in cancel]).row("cancel: request to end", jobs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3)
    args = parser.parse_args()
    print(f"machine at start: {machine()}", flush=True)
    with Stack(workers=1) as stack:
        asyncio.run(bench(stack, args.jobs))


if __name__ == "__main__":
    main()
