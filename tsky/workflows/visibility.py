"""What a ManagedJob shows the world: search attributes (queue, Web UI filters), memo (per-task rows for
the queue), current details (Web UI) and the controller log (its decisions, with times).

Lines are buffered with `log` and written, with everything else that changed, by `publish`: one local
activity per publish, never a write per line. A new column of `tsky jobs queue` or a new controller-log
line goes here (a new search attribute must also be registered: tsky.contract.search_attributes).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate

with workflow.unsafe.imports_passed_through():
    import tsky.workflows.metrics as metrics
    from tsky.contract import search_attributes as sa
    from tsky.contract.activity_io import ActivityName, ControllerLogInput
    from tsky.contract.job import JobState
    from tsky.spec.lifecycle import dollars
    from tsky.workflows.recovery import Outcome

_PUBLISHED_ATTRIBUTES = (sa.STATUS, sa.RECOVERIES, sa.INFRA, sa.STARTED_AT, sa.ENDED_AT)


class Visibility:
    """One job's published state: what it last wrote (only changes are written) and the controller-log
    lines not yet written."""

    def __init__(self, job: JobState) -> None:
        self.job = job
        self.published: dict[str, Any] = {}
        self.lines: list[str] = []
        self.seq = 0  # the controller log's next line number

    def log(self, message: str) -> None:
        stamp = workflow.now().strftime("%Y-%m-%d %H:%M:%S")
        self.lines.append(f"{stamp} | {message}")

    def log_cluster_job_status(self, outcome: Outcome) -> None:
        """SkyPilot's controller-log line for how the job ended on its cluster (scripts grep it). Always
        logged next to another line, so it never adds a controller-log write of its own."""
        status = outcome.cluster_job_status()
        if status is not None:
            self.log(f"Job status: JobStatus.{status}")

    async def publish(self) -> None:
        """Show the state; only what changed is written."""
        job = self.job
        job_status = job.status
        current = job.current_task()
        started = [t.start_at for t in job.tasks if t.start_at]
        wanted: dict[str, Any] = {
            sa.STATUS.name: job_status.value,
            sa.RECOVERIES.name: sum(t.recovery_count for t in job.tasks),
            sa.INFRA.name: current.infra or "",
            sa.STARTED_AT.name: min(started) if started else None,
            sa.ENDED_AT.name: current.end_at if job_status.is_terminal() else None,
        }
        metrics.on_publish(self.published, wanted)
        keys = {k.name: k for k in _PUBLISHED_ATTRIBUTES}
        updates: list[SearchAttributeUpdate] = []
        for name, value in wanted.items():
            if self.published.get(name) != value:
                key = keys[name]
                updates.append(key.value_unset() if value is None else key.value_set(value))
                self.published[name] = value
        if updates:
            workflow.upsert_search_attributes(updates)
        memo = [t.model_dump(mode="json", exclude={"attempts"}) for t in job.tasks]
        if self.published.get("memo") != memo:
            workflow.upsert_memo({"tasks": memo})
            self.published["memo"] = memo
        workflow.set_current_details(self._details_markdown())
        if self.lines:
            lines, self.lines = self.lines, []
            first = self.seq
            self.seq += len(lines)
            await workflow.execute_local_activity(
                ActivityName.CONTROLLER_LOG,
                ControllerLogInput(job_id=job.job_id, first_seq=first, lines=lines),
                start_to_close_timeout=timedelta(seconds=30),
            )

    def _details_markdown(self) -> str:
        job = self.job
        rows = "\n".join(
            f"| {t.index} | {t.name} | {t.status.value} | {t.recovery_count} | {t.infra or '-'} | "
            f"{(t.details or t.failure_reason or '').replace('|', '/')} |"
            for t in job.tasks
        )
        cost = f"\n\nEstimated cost: {dollars(job.cost(workflow.now()))} (wasted {dollars(job.wasted_cost())})"
        return (
            f"**Job {job.job_id}** `{job.name}` — **{job.status.value}**\n\n"
            "| task | name | status | recoveries | infra | details |\n|---|---|---|---|---|---|\n" + rows + cost
        )
