"""The job's lifecycle limits as pure functions of its state (docs/lifecycle.md): which limit stops a task
next and when, how to reach a cluster kept for debugging, and the cost lines of the controller log.

| limit                   | counts                                                | on expiry                      |
|-------------------------|-------------------------------------------------------|--------------------------------|
| task `max_duration`     | wall time from the task's first RUNNING, recoveries,  | stop, tear down, FAILED        |
|                         | backoff and setup included                            | "exceeded max_duration 10h"    |
| job `max_cost`          | every cluster's price x its time, debug holds too     | stop, tear down, FAILED        |
|                         | (a timer from the current hourly rate, not polling)   | "exceeded max_cost $X (...)"   |
| `keep_on_failure`       | after a task FAILED / FAILED_SETUP (user error only)  | the hold ends, tear down       |
| `spot_fallback_after N` | preemptions of one task                               | relaunches use on-demand       |
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime

from tsky.contract.activity_io import ClusterInfo
from tsky.contract.job import Attempt, JobState, TaskState
from tsky.spec.lifecycle import (
    Lifecycle,
    dollars,
    exceeded_max_cost,
    exceeded_max_duration,
    format_duration,
    seconds_until_cost,
)
from tsky.spec.task import Task


@dataclass(frozen=True)
class Limit:
    """The limit that stops the task first if nothing changes: in `seconds`, for `kind`."""

    kind: str  # "max_duration" | "max_cost"
    seconds: float


def next_limit(job: JobState, ts: TaskState, task: Task, lifecycle: Lifecycle, now: datetime) -> Limit | None:
    """The nearest limit for the task running now; None when no limit can be reached (no max_duration, or
    not RUNNING yet; no max_cost, or nothing billing). Recomputed whenever a cluster starts or stops billing."""
    limits: list[Limit] = []
    max_duration = task.max_duration_seconds()
    if max_duration is not None and ts.start_at is not None:
        limits.append(Limit("max_duration", max(max_duration - (now - ts.start_at).total_seconds(), 0.0)))
    if lifecycle.max_cost is not None:
        hourly = sum(t.hourly_price for t in job.tasks if t.billing_since is not None)
        left = seconds_until_cost(job.cost(now), hourly, lifecycle.max_cost)
        if left is not None:
            limits.append(Limit("max_cost", left))
    return min(limits, key=lambda limit: limit.seconds, default=None)


def limit_reason(limit: Limit, job: JobState, task: Task, lifecycle: Lifecycle, now: datetime) -> str:
    if limit.kind == "max_duration":
        return exceeded_max_duration(task.max_duration_seconds() or 0.0)
    return exceeded_max_cost(lifecycle.max_cost or 0.0, job.cost(now))


def debug_access(cluster: ClusterInfo) -> str:
    """How a user gets onto the head node of a cluster kept for debugging, per backend."""
    head = cluster.nodes[0] if cluster.nodes else None
    if head is None:
        return f"`tsky status` lists {cluster.name}"
    if cluster.backend == "local":
        return f"cd {shlex.quote(head.host_id)}"
    if cluster.backend == "k8s":
        namespace = cluster.extra.get("namespace", "default")
        return f"kubectl exec -it -n {shlex.quote(namespace)} {shlex.quote(head.host_id)} -- bash"
    user = f"{head.ssh_user}@" if head.ssh_user else ""
    port = f" -p {head.ssh_port}" if head.ssh_port and head.ssh_port != 22 else ""
    key = {"aws": " -i ~/.tsky/ssh/tsky-aws", "gcp": " -i ~/.tsky/ssh/tsky-gcp"}.get(cluster.backend, "")
    return f"ssh{key}{port} {user}{head.ip}"


def attempt_cost_line(index: int, ts: TaskState, attempt: Attempt, job: JobState, now: datetime) -> str:
    """The controller-log line for an attempt's cost, and the job's running total."""
    candidate = attempt.candidate
    market = "spot" if candidate and candidate.use_spot else "on-demand"
    rate = f"{dollars(candidate.hourly_cost)}/h" if candidate else "no price"
    ran = (attempt.ended_at - attempt.started_at).total_seconds() if attempt.ended_at and attempt.started_at else 0.0
    return (
        f"Task {index} ({ts.name}) attempt {attempt.index} cost {dollars(attempt.cost_usd or 0.0)} "
        f"({market}, {rate} for {format_duration(ran)}); job so far {dollars(job.cost(now))}, wasted "
        f"{dollars(job.wasted_cost())} (estimated from catalog prices)."
    )
