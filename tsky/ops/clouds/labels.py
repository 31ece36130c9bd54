"""The keys tsky puts on what it creates in a cloud (EC2 tags, GCE labels, pod labels), and how one listing
of tagged resources becomes the clusters `list_clusters` reports.

The keys are a contract with every cluster already running: the sweeper finds clusters, their job and
their owner by them, so a key is never renamed. Kubernetes pods carry the task index under their own key,
kept for the pods launched before the keys were shared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from tsky.ops.clouds.base import ClusterRecord
from tsky.spec.status import NodeState

CLUSTER = "tsky-cluster"
JOB = "tsky-job-id"
TASK = "tsky-task"
K8S_TASK = "tsky-task-index"
LAUNCH = "tsky-launch"
RANK = "tsky-rank"
OWNER = "tsky-owner"  # the installation (`base.owner_of`): two installations never touch each other's
POOL = "tsky-pool"  # a pool's worker belongs to its pool, not to the jobs it runs one after another
SPOT = "tsky-spot"

UNKNOWN_OWNER = "unknown"  # a resource without an owner key was not made by this code: never ours to sweep

R = TypeVar("R")


@dataclass(frozen=True)
class Listed(Generic[R]):
    """One tagged resource (instance, pod) of a listing."""

    place: str  # where it lives: region, zone or k8s context (a cluster never spans two)
    labels: Mapping[str, str]
    state: NodeState
    launched_at: float | None
    resource: R


def cluster_records(
    backend: str,
    listed: Iterable[Listed[R]],
    describe: Callable[[str, list[R]], tuple[str, dict[str, str]]],
) -> list[ClusterRecord]:
    """Group a listing into clusters by (place, cluster, owner), sorted. `describe(place, resources)` gives a
    cluster's region and its backend-specific `extra` fields."""
    groups: dict[tuple[str, str, str], list[Listed[R]]] = {}
    for item in listed:
        key = (item.place, item.labels[CLUSTER], item.labels.get(OWNER, UNKNOWN_OWNER))
        groups.setdefault(key, []).append(item)
    records = []
    for (place, name, owner), members in sorted(groups.items(), key=lambda group: group[0]):
        labels = members[0].labels
        job = labels.get(JOB, "")
        lost = sorted(m.state.value for m in members if m.state is not NodeState.UP)
        region, extra = describe(place, [m.resource for m in members])
        records.append(
            ClusterRecord(
                name=name,
                backend=backend,
                region=region,
                job_id=int(job) if job.isdigit() else None,
                nodes=len(members),
                state=lost[0] if lost else "UP",
                launched_at=min((m.launched_at for m in members if m.launched_at is not None), default=None),
                extra=extra,
                owner=owner,
                pool=labels.get(POOL),
            )
        )
    return records
