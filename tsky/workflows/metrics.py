"""tsky's metrics from inside the ManagedJob workflow: replay-safe counters on the worker's metric meter,
exported with the SDK's own on the worker's Prometheus endpoint (`worker.metrics_port`).

- `tsky_job_status_changes{status}`: jobs entering each status they publish (STARTING counts jobs that
  started, a terminal status counts endings, PENDING jobs that waited for a running slot or capacity);
- `tsky_job_recoveries`: recoveries (a relaunch after preemption, or a restart after a failure).
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

from tsky.contract import search_attributes as sa


def on_publish(published: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Count what changed since the job last published its search attributes (call before `published`
    takes the new values)."""
    meter = workflow.metric_meter()
    status = wanted[sa.STATUS.name]
    if published.get(sa.STATUS.name) != status:
        meter.create_counter("tsky_job_status_changes", "Managed jobs entering each status").add(1, {"status": status})
    added = int(wanted[sa.RECOVERIES.name] or 0) - int(published.get(sa.RECOVERIES.name) or 0)
    if added > 0:
        meter.create_counter("tsky_job_recoveries", "Recoveries of managed jobs").add(added)
