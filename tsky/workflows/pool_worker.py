"""PoolWorkerWorkflow: the life of one pool worker, a child of its pool's workflow.

plan -> launch (backoff while no capacity) -> sync files -> setup once -> READY -> watch the nodes until
one is lost -> PREEMPTED. Whatever happens, the cluster is torn down at the end (no cancel arriving
meanwhile cuts that short) and the pool is told the worker is gone. The pool stops a worker by cancelling this
workflow; the worker then tears down and ends normally (its pool knows why).

Each transition is reported to the pool with a signal (`pool_worker_report`). The pool starts workers with
parent_close_policy ABANDON on purpose: the pool continues-as-new, which closes its run and would
otherwise cancel every worker; `down` stops them one by one instead. A worker whose pool is gone (a
report finds no pool) tears itself down.

The same activities as jobs (by name): plan_task, launch_cluster, sync_files, run_setup,
teardown_cluster, plus watch_cluster for an idle worker's health.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception
from temporalio.workflow import ActivityCancellationType

T = TypeVar("T")

with workflow.unsafe.imports_passed_through():
    from tsky.contract.activity_io import (
        ActivityName,
        ClusterInfo,
        ErrorType,
        JobMeta,
        LaunchInput,
        LaunchResult,
        PhaseInput,
        PhaseResult,
        PlanInput,
        PlanResult,
        SyncInput,
        SyncResult,
        TeardownInput,
        WatchClusterInput,
    )
    from tsky.contract.ids import LAUNCH_QUEUE, WATCH_QUEUE, pool_workflow_id
    from tsky.contract.logs import pool_worker_log_path
    from tsky.contract.pool_state import POOL_WORKER_WORKFLOW, REPORT_SIGNAL, WorkerInput, WorkerReport
    from tsky.spec.requests import Candidate
    from tsky.spec.status import PoolWorkerStatus
    from tsky.workflows.calls import call_activity
    from tsky.workflows.recovery import launch_backoff
    from tsky.workflows.shield import to_the_end

W = PoolWorkerStatus

_LAUNCH_TIMEOUT = timedelta(hours=2)
_SETUP_TIMEOUT = timedelta(days=7)
_WATCH_TIMEOUT = timedelta(days=3650)
_TEARDOWN_TIMEOUT = timedelta(minutes=20)
_TEARDOWN_GIVE_UP = timedelta(hours=1)
_PLAN_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_attempts=5)
_LAUNCH_RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_attempts=3)
_TEARDOWN_RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=1))
_WATCH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=[ErrorType.CLUSTER_LOST, ErrorType.UNREACHABLE],
)


class _WorkerEnded(Exception):
    """The worker cannot serve (failed for good, lost, or its pool is gone): report it and tear down."""

    def __init__(self, status: PoolWorkerStatus, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@workflow.defn(name=POOL_WORKER_WORKFLOW)
class PoolWorkerWorkflow:
    @workflow.init
    def __init__(self, inp: WorkerInput) -> None:
        self.inp = inp
        self.status = W.PROVISIONING
        self._cluster: ClusterInfo | None = None
        self._launching: list[str] = []  # backends a launch in flight may have used
        self._pool_gone = False
        self._ending = False  # reporting how it ended: a missing pool no longer matters

    @workflow.query(description="This worker's status.")
    def state(self) -> str:
        return self.status.value

    @workflow.run
    async def run(self, inp: WorkerInput) -> None:
        ended: _WorkerEnded | None = None
        try:
            await self._serve()
        except _WorkerEnded as err:
            ended = err
        except BaseException as err:
            # The pool stops a worker by cancelling it: tear down and end normally.
            if not is_cancelled_exception(err):
                raise
            self.status = W.SHUTTING_DOWN
        # From here on a stop request changes nothing (the worker is ending anyway), so none may cut the
        # teardown or the last report short: the pool waits for `gone`.
        await to_the_end(lambda: self._end(ended))

    async def _end(self, ended: _WorkerEnded | None) -> None:
        self._ending = True
        if ended is not None:
            await self._report(ended.status, reason=ended.reason)
        await self._teardown()
        await self._report(self.status, gone=True)

    async def _serve(self) -> None:
        await self._report(W.PROVISIONING)
        task = self.inp.version.task
        plan = await self._activity(
            ActivityName.PLAN,
            PlanInput(meta=self._meta(), task=task),
            PlanResult,
            LAUNCH_QUEUE,
            timeout=timedelta(minutes=5),
            retry=_PLAN_RETRY,
        )
        if plan.infeasible_reason or not plan.candidates:
            raise _WorkerEnded(W.FAILED_PROVISION, plan.infeasible_reason or "No resources satisfy the request.")
        cluster, chosen = await self._launch(plan.candidates)
        await self._report(W.STARTING, cluster=cluster, candidate=chosen)
        try:
            if task.workdir or task.file_mounts:
                await self._activity(
                    ActivityName.SYNC_FILES,
                    SyncInput(meta=self._meta(), cluster=cluster, task=task),
                    SyncResult,
                    LAUNCH_QUEUE,
                    timeout=_LAUNCH_TIMEOUT,
                    heartbeat=timedelta(seconds=self.inp.policy.watch_heartbeat_timeout_seconds),
                    retry=_LAUNCH_RETRY,
                )
            if task.setup:
                result = await self._activity(
                    ActivityName.SETUP,
                    PhaseInput(
                        meta=self._meta(),
                        cluster=cluster,
                        phase="setup",
                        attempt=0,
                        task=task,
                        sealed_secrets=self.inp.version.sealed_secrets,
                        gpus_per_node=chosen.accelerator_count,
                        poll_seconds=self.inp.policy.watch_poll_seconds,
                        status_check_min_elapsed_seconds=self.inp.policy.status_check_min_elapsed_seconds,
                        status_check_min_retries=self.inp.policy.status_check_min_retries,
                        log_path=pool_worker_log_path(self.inp.pool, self.inp.worker_id, "setup"),
                    ),
                    PhaseResult,
                    LAUNCH_QUEUE,
                    timeout=_SETUP_TIMEOUT,
                    heartbeat=timedelta(seconds=self.inp.policy.watch_heartbeat_timeout_seconds),
                    retry=_WATCH_RETRY,
                    cancellation=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                )
                failed = [code for code in result.exit_codes if code]
                if failed:
                    raise _WorkerEnded(W.FAILED_SETUP, f"Setup exited with exit code {failed[0]}.")
            await self._report(W.READY)
            lost = await self._activity(
                ActivityName.WATCH_CLUSTER,
                WatchClusterInput(
                    cluster=cluster,
                    poll_seconds=self.inp.policy.watch_poll_seconds,
                    status_check_min_elapsed_seconds=self.inp.policy.status_check_min_elapsed_seconds,
                    status_check_min_retries=self.inp.policy.status_check_min_retries,
                ),
                str,
                WATCH_QUEUE,
                timeout=_WATCH_TIMEOUT,
                heartbeat=timedelta(seconds=self.inp.policy.watch_heartbeat_timeout_seconds),
                retry=_WATCH_RETRY,
            )
            raise _WorkerEnded(W.PREEMPTED, lost)
        except ActivityError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type in (ErrorType.CLUSTER_LOST, ErrorType.UNREACHABLE):
                raise _WorkerEnded(W.PREEMPTED, cause.message) from err
            raise

    async def _launch(self, candidates: list[Candidate]) -> tuple[ClusterInfo, Candidate]:
        """Launch rounds until a candidate has room; capacity shortages back off without end."""
        round_index = 0
        while True:
            self._launching = sorted({c.cloud for c in candidates})
            result = await self._activity(
                ActivityName.LAUNCH,
                LaunchInput(
                    meta=self._meta(),
                    cluster_name=self.inp.cluster_name,
                    launch=0,
                    candidates=candidates,
                    num_nodes=self.inp.version.task.num_nodes,
                ),
                LaunchResult,
                LAUNCH_QUEUE,
                timeout=_LAUNCH_TIMEOUT,
                heartbeat=timedelta(seconds=self.inp.policy.watch_heartbeat_timeout_seconds),
                retry=_LAUNCH_RETRY,
            )
            if result.cluster is not None and result.chosen is not None:
                self._cluster = result.cluster
                self._launching = []
                return result.cluster, result.chosen
            self._launching = []
            prechecks = [f.message for f in result.failures if f.kind == "precheck"]
            if result.failures and len(prechecks) == len(result.failures):
                raise _WorkerEnded(W.FAILED_PROVISION, "; ".join(dict.fromkeys(prechecks)))
            delay = launch_backoff(self.inp.policy, round_index, workflow.random())
            await self._report(W.PROVISIONING, reason=f"No capacity; retrying in {delay:.0f}s.")
            await workflow.sleep(timedelta(seconds=delay), summary="launch backoff")
            round_index += 1

    async def _teardown(self) -> None:
        targets: list[TeardownInput] = []
        if self._cluster is not None:
            targets.append(
                TeardownInput(cluster_name=self._cluster.name, backend=self._cluster.backend, cluster=self._cluster)
            )
        else:
            targets += [TeardownInput(cluster_name=self.inp.cluster_name, backend=b) for b in self._launching]
        for target in targets:
            try:
                await self._activity(
                    ActivityName.TEARDOWN,
                    target,
                    type(None),
                    LAUNCH_QUEUE,
                    timeout=_TEARDOWN_TIMEOUT,
                    heartbeat=timedelta(seconds=self.inp.policy.watch_heartbeat_timeout_seconds),
                    retry=_TEARDOWN_RETRY,
                    schedule_to_close=_TEARDOWN_GIVE_UP,
                )
            except ActivityError as err:
                if is_cancelled_exception(err):
                    raise
                self.status = W.FAILED_CLEANUP
                workflow.logger.error("teardown of %s failed: %s", target.cluster_name, err.cause or err)
        self._cluster = None
        self._launching = []

    async def _report(
        self,
        status: PoolWorkerStatus,
        *,
        cluster: ClusterInfo | None = None,
        candidate: Candidate | None = None,
        reason: str | None = None,
        gone: bool = False,
    ) -> None:
        """Tell the pool. A pool that no longer exists ends this worker (unless it is ending anyway)."""
        self.status = status
        if self._pool_gone:
            return
        report = WorkerReport(
            worker_id=self.inp.worker_id,
            status=self.status,
            cluster=cluster,
            candidate=candidate,
            reason=reason,
            gone=gone,
        )
        try:
            await workflow.get_external_workflow_handle(pool_workflow_id(self.inp.pool)).signal(REPORT_SIGNAL, report)
        except ApplicationError as err:
            self._pool_gone = True
            if not self._ending:
                raise _WorkerEnded(W.SHUTTING_DOWN, f"Pool '{self.inp.pool}' is gone: {err.message}") from err

    def _meta(self) -> JobMeta:
        name = self.inp.cluster_name
        return JobMeta(
            job_id=0,
            job_name=self.inp.pool,
            task_index=0,
            task_name=self.inp.pool,
            task_id=name,
            task_ids=[name],
            user=self.inp.version.user,
            pool=self.inp.pool,
        )

    async def _activity(self, name: str, arg: Any, result_type: type[T], task_queue: str, **options: Any) -> T:
        return await call_activity(
            name,
            arg,
            result_type,
            task_queue,
            summary=f"{name} (pool {self.inp.pool}, worker {self.inp.worker_id})",
            **options,
        )
