"""tsky's activity interceptor, on every worker:

- Hand-over on a graceful stop: an activity still running when its worker stops fails at once with a
  retryable error, so the server retries it on another worker right away. Left to the SDK, such an
  activity completes as "cancelled", which the server refuses (nobody asked to cancel it); it then waits
  out its heartbeat timeout (minutes for a launch) before anyone retries it. The activities are written
  for retries: a watcher re-attaches to the processes it left running (it stops them only on a cancel
  the workflow asked for), a launch adopts the cluster its first try made.
- `tsky_launches{outcome}`: launch attempts that got a cluster (`launched`), found no capacity or only
  failing candidates (`no_resources`), or raised (`error`), for the worker's Prometheus endpoint.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from tsky.contract.activity_io import ActivityName, LaunchResult

WORKER_SHUTDOWN = "WorkerShutdown"


class _Activity(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        launch = activity.info().activity_type == ActivityName.LAUNCH
        try:
            result = await self.next.execute_activity(input)
        except asyncio.CancelledError:
            details = activity.cancellation_details()
            if details is not None and details.worker_shutdown and not details.cancel_requested:
                raise ApplicationError(
                    f"worker {activity.info().task_queue} shut down; retrying on another worker",
                    type=WORKER_SHUTDOWN,
                    category=ApplicationErrorCategory.BENIGN,  # expected: logged without a traceback
                ) from None
            raise
        except Exception:
            if launch:
                _count_launch("error")
            raise
        if launch:
            _count_launch("launched" if isinstance(result, LaunchResult) and result.cluster else "no_resources")
        return result


def _count_launch(outcome: str) -> None:
    counter = activity.metric_meter().create_counter("tsky_launches", "Launch attempts by outcome")
    counter.add(1, {"outcome": outcome})


class WorkerInterceptor(Interceptor):
    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Activity(next)
