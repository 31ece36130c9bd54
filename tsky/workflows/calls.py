"""Calling an activity by name from workflow code, with every option spelled out at the call site.

Workflows never import activity bodies (they pull in cloud SDKs); they call them by the names in
`tsky.contract.activity_io.ActivityName`, and tests register fakes under the same names.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityCancellationType

T = TypeVar("T")


async def call_activity(name: str, arg: Any, result_type: type[T], task_queue: str, **options: Any) -> T:
    return await start_activity(name, arg, result_type, task_queue, **options)


def start_activity(
    name: str,
    arg: Any,
    result_type: type[T],
    task_queue: str,
    *,
    timeout: timedelta,
    retry: RetryPolicy,
    summary: str,
    heartbeat: timedelta | None = None,
    schedule_to_close: timedelta | None = None,
    cancellation: ActivityCancellationType = ActivityCancellationType.TRY_CANCEL,
) -> workflow.ActivityHandle[T]:
    """The same call, handing back the running activity (for a caller that must act on a cancel itself)."""
    return workflow.start_activity(
        name,
        arg,
        result_type=result_type,
        task_queue=task_queue,
        start_to_close_timeout=timeout,
        schedule_to_close_timeout=schedule_to_close,
        heartbeat_timeout=heartbeat,
        retry_policy=retry,
        cancellation_type=cancellation,
        summary=summary,
    )
