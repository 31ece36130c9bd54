"""The pure lifecycle rules (tsky.workflows.limits): which limit comes first, and how a user gets on a
cluster kept for debugging, per backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tsky.contract.activity_io import ClusterInfo, NodeInfo
from tsky.contract.job import JobState, TaskState
from tsky.spec.lifecycle import Lifecycle
from tsky.spec.loader import load_pipeline
from tsky.workflows.limits import debug_access, next_limit

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _job(**task: object) -> tuple[JobState, TaskState]:
    ts = TaskState(index=0, name="t", task_id="x", **task)  # type: ignore[arg-type]
    return JobState(job_id=1, name="t", user="u", submitted_at=NOW, tasks=[ts]), ts


def test_the_nearest_limit_wins_and_nothing_billing_sets_no_budget_timer() -> None:
    task = load_pipeline("name: t\nmax_duration: 1h\nrun: x\n").tasks[0]
    job, ts = _job(start_at=NOW - timedelta(minutes=50), cost_usd=9.0, hourly_price=6.0, billing_since=NOW)
    # max_duration has 10 minutes left; $0.50 of budget at $6/h lasts 5.
    limit = next_limit(job, ts, task, Lifecycle(max_cost=9.5), NOW)
    assert limit is not None and (limit.kind, limit.seconds) == ("max_cost", 300)
    assert next_limit(job, ts, task, Lifecycle(max_cost=20), NOW).kind == "max_duration"  # type: ignore[union-attr]
    idle, idle_ts = _job(cost_usd=9.0)
    assert next_limit(idle, idle_ts, load_pipeline("name: t\nrun: x\n").tasks[0], Lifecycle(max_cost=20), NOW) is None


def test_debug_access_per_backend() -> None:
    def cluster(backend: str, **node: object) -> ClusterInfo:
        head = NodeInfo(rank=0, ip="10.0.0.5", host_id="i-123", **node)  # type: ignore[arg-type]
        return ClusterInfo(name="c", backend=backend, region="r", instance_type="n", nodes=[head],
                           extra={"namespace": "ml"})  # fmt: skip

    assert debug_access(cluster("local")) == "cd i-123"
    assert debug_access(cluster("aws", ssh_user="ubuntu", ssh_port=22)) == "ssh -i ~/.tsky/ssh/tsky-aws ubuntu@10.0.0.5"
    assert debug_access(cluster("ssh", ssh_user="me", ssh_port=2222)) == "ssh -p 2222 me@10.0.0.5"
    assert debug_access(cluster("k8s")) == "kubectl exec -it -n ml i-123 -- bash"
