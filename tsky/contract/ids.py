"""Names that several processes must agree on: task queues, workflow ids, cluster names."""

from __future__ import annotations

import hashlib
import re

CONTROL_QUEUE = "tsky-control"  # every workflow, and the controller-log local activity
LAUNCH_QUEUE = "tsky-launch"  # plan, provision, setup, teardown: bounded concurrency
WATCH_QUEUE = "tsky-watch"  # run_and_watch: thousands of cheap heartbeating coroutines

JOB_WORKFLOW_PREFIX = "tsky-job-"
POOL_WORKFLOW_PREFIX = "tsky-pool-"
ID_REGISTRY_WORKFLOW_ID = "tsky-id-registry"
SWEEPER_WORKFLOW_ID = "tsky-sweeper"
SCHEDULER_WORKFLOW_ID = "tsky-scheduler"

_CLUSTER_NAME_MAX = 25


def job_workflow_id(job_id: int) -> str:
    return f"{JOB_WORKFLOW_PREFIX}{job_id}"


def pool_workflow_id(pool: str) -> str:
    return f"{POOL_WORKFLOW_PREFIX}{pool}"


def pool_worker_workflow_id(pool: str, worker_id: int) -> str:
    return f"{POOL_WORKFLOW_PREFIX}{pool}/worker-{worker_id}"


def pool_worker_from_workflow_id(workflow_id: str) -> tuple[str, int] | None:
    """(pool, worker id) of a pool worker's workflow id, else None."""
    head, sep, tail = workflow_id.partition("/worker-")
    if not sep or not head.startswith(POOL_WORKFLOW_PREFIX) or not tail.isdigit():
        return None
    return head[len(POOL_WORKFLOW_PREFIX) :], int(tail)


def pool_worker_cluster_name(pool: str, worker_id: int) -> str:
    """`<pool>-w<id>`, DNS-safe: job clusters end in `-<job id>` (or `-t<k>` / `-r<n>`), so the two never meet."""
    return f"{_dns_label(pool)}-w{worker_id}"


def _dns_label(name: str) -> str:
    label = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")
    return re.sub(r"-{2,}", "-", label) or "task"


def cluster_name(task_name: str, job_id: int, task_index: int, launch: int) -> str:
    """The cluster of one launch of one task, SkyPilot-style (`<task>-<job id>`).

    The name is a pure function of (job, task, launch) so that a retried provision adopts the cluster
    the first try created instead of making a second one. Pipelines add `-t<k>`, relaunches `-r<n>`.
    Long task names are cut and get a short hash, as SkyPilot does, so names stay unique and DNS-safe.
    """
    base = _dns_label(task_name)
    if len(base) > _CLUSTER_NAME_MAX:
        digest = hashlib.md5(base.encode(), usedforsecurity=False).hexdigest()[:2]
        base = f"{base[: _CLUSTER_NAME_MAX - 3].rstrip('-')}-{digest}"
    name = f"{base}-{job_id}"
    if task_index:
        name += f"-t{task_index}"
    if launch:
        name += f"-r{launch}"
    return name


def owner_id(temporal_address: str | None, namespace: str, host: str, home: str) -> str:
    """10 hex characters naming the tsky installation that launched a cluster (a label on cloud clusters).

    Jobs live in one Temporal namespace, so a sweeper may only judge clusters whose job ids are its own:
    the same cloud account can hold clusters of other users' embedded servers, or of another namespace.
    An embedded server is identified by its host and home, a shared server by its address."""
    where = temporal_address or f"embedded:{host}:{home}"
    return hashlib.sha256(f"{where}/{namespace}".encode()).hexdigest()[:10]


def user_hash(user: str, host: str) -> str:
    """8 hex characters identifying a user, as SkyPilot's `user_hash`."""
    return hashlib.sha256(f"{user}@{host}".encode()).hexdigest()[:8]
