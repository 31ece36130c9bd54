"""How a ManagedJob workflow is started, wherever it is started from (the CLI, or a user's workflow
as a child): its search attributes, memo and Web UI texts. One place, so every job shows up alike in
`tsky jobs queue` and the Web UI."""

from __future__ import annotations

from typing import Any

from temporalio.common import SearchAttributePair, TypedSearchAttributes

from tsky.contract import search_attributes as sa
from tsky.contract.job import JobRequest, TaskState
from tsky.spec.requests import requested_label
from tsky.spec.status import ManagedJobStatus

_SUMMARY_LIMIT = 200  # bytes: the Web UI's one-line summary
_DETAILS_LIMIT = 20_000


def search_attributes(req: JobRequest) -> TypedSearchAttributes:
    tasks = req.pipeline.tasks
    return TypedSearchAttributes(
        [
            SearchAttributePair(sa.JOB_ID, req.job_id),
            SearchAttributePair(sa.JOB_NAME, req.name),
            SearchAttributePair(sa.USER, req.user),
            SearchAttributePair(sa.STATUS, ManagedJobStatus.PENDING.value),
            SearchAttributePair(sa.RECOVERIES, 0),
            SearchAttributePair(sa.PRIORITY, req.priority),
            SearchAttributePair(sa.RESOURCES, requested_label(tasks[0].num_nodes, tasks[0].requests().options)),
            SearchAttributePair(sa.POOL, req.pool or ""),
            SearchAttributePair(sa.SUBMITTED_AT, req.submitted_at),
        ]
    )


def memo(req: JobRequest) -> dict[str, Any]:
    """The per-task rows `tsky jobs queue` shows before the workflow has published its own."""
    tasks = req.pipeline.tasks
    return {
        "tasks": [
            TaskState(index=i, name=t.name or "", task_id="").model_dump(mode="json") for i, t in enumerate(tasks)
        ]
    }


def summary(req: JobRequest) -> str:
    tasks = req.pipeline.tasks
    resources = requested_label(tasks[0].num_nodes, tasks[0].requests().options)
    text = f"tsky job {req.job_id}: {req.name} ({len(tasks)} task{'s' if len(tasks) > 1 else ''}, {resources})"
    return text.encode()[:_SUMMARY_LIMIT].decode(errors="ignore")


def details(req: JobRequest) -> str:
    text = f"Submitted by **{req.user}**. Spec (secrets redacted):\n\n```yaml\n{req.pipeline.to_yaml()}\n```"
    return text[:_DETAILS_LIMIT]
