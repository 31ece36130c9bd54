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
    pairs: list[SearchAttributePair[Any]] = [
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
    if req.orchestration.schedule:  # set only on scheduled runs: `tsky jobs queue --schedule NAME`
        pairs.append(SearchAttributePair(sa.SCHEDULE, req.orchestration.schedule))
    return TypedSearchAttributes(pairs)


def memo(req: JobRequest) -> dict[str, Any]:
    """The per-task rows `tsky jobs queue` shows before the workflow has published its own, and the job's
    links to other jobs (`queue -v`)."""
    tasks = req.pipeline.tasks
    return {
        "tasks": [
            TaskState(index=i, name=t.name or "", task_id="").model_dump(mode="json") for i, t in enumerate(tasks)
        ],
        **links(req),
    }


def links(req: JobRequest) -> dict[str, Any]:
    """The job's relations, kept in its memo: the schedule that started it, the jobs it waits for, the job
    it resumes."""
    orch = req.orchestration
    found: dict[str, Any] = {}
    if orch.schedule:
        found["schedule"] = orch.schedule
    if orch.after:
        found["after"] = orch.after
    if orch.relaunch is not None:
        found["relaunch_of"] = orch.relaunch.of_job
    return found


def summary(req: JobRequest) -> str:
    tasks = req.pipeline.tasks
    resources = requested_label(tasks[0].num_nodes, tasks[0].requests().options)
    text = f"tsky job {req.job_id}: {req.name} ({len(tasks)} task{'s' if len(tasks) > 1 else ''}, {resources})"
    return text.encode()[:_SUMMARY_LIMIT].decode(errors="ignore")


def details(req: JobRequest) -> str:
    spec = f"Spec (secrets redacted):\n\n```yaml\n{req.pipeline.to_yaml()}\n```"
    text = f"Submitted by **{req.user}**.{_links_line(req)} {spec}"
    return text[:_DETAILS_LIMIT]


def _links_line(req: JobRequest) -> str:
    """The job's relations, for its Web UI page."""
    orch = req.orchestration
    parts = []
    if orch.relaunch is not None:
        done = ", ".join(map(str, orch.relaunch.skip_tasks)) or "none"
        parts.append(f"Relaunch of job **{orch.relaunch.of_job}** (tasks done there: {done}).")
    if orch.schedule:
        parts.append(f"Started by schedule **{orch.schedule}**.")
    if orch.after:
        parts.append(
            f"Runs after job {', '.join(map(str, orch.after))}{' (whatever they end with)' if orch.after_any else ''}."
        )
    return "".join(f" {p}" for p in parts)
