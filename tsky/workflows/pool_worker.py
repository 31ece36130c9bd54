"""PoolWorkerWorkflow: the life of one pool worker, a child of its pool's workflow.

plan -> launch (backoff while no capacity) -> sync files -> setup once -> READY -> watch the nodes until
one is lost -> PREEMPTED. Whatever happens, the cluster is torn down at the end (no cancel arriving
meanwhile cuts that short) and the pool is told the worker is gone. The pool stops a worker by cancelling this
workflow; the worker then tears down and ends normally (its pool knows why).

Each transition is reported to the pool with a signal (`pool_worker_report`). The pool starts workers with
parent_close_policy ABANDON on purpose: the pool continues-as-new, which closes its run and would
otherwise cancel every worker; `down` stops them one by one instead. A worker whose pool is gone (a
report finds no pool) tears itself down.

Its cluster steps are tsky.workflows.cluster_lifecycle's, shared with jobs (plan_task, launch_cluster, sync_files,
run_setup, teardown_cluster), plus watch_cluster for an idle worker's health.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    import tsky.workflows.cluster_lifecycle as lifecycle
    from tsky.contract.activity_io import ActivityName, ClusterInfo, JobMeta, WatchClusterInput
    from tsky.contract.ids import WATCH_QUEUE, pool_workflow_id
    from tsky.contract.logs import pool_worker_log_path
    from tsky.contract.names import Query, Signal, WorkflowType
    from tsky.contract.pool_state import WorkerInput, WorkerReport
    from tsky.spec.requests import Candidate
    from tsky.spec.status import PoolWorkerStatus
    from tsky.workflows.shield import to_the_end

W = PoolWorkerStatus

_IDLE_WATCH_TIMEOUT = timedelta(days=3650)  # a READY worker is watched for as long as it lives


class _WorkerEnded(Exception):
    """The worker cannot serve (failed for good, lost, or its pool is gone): report it and tear down."""

    def __init__(self, status: PoolWorkerStatus, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@workflow.defn(name=WorkflowType.POOL_WORKER)
class PoolWorkerWorkflow:
    @workflow.init
    def __init__(self, inp: WorkerInput) -> None:
        self.inp = inp
        self.status = W.PROVISIONING
        heartbeat = timedelta(seconds=inp.policy.watch_heartbeat_timeout_seconds)
        self.calls = lifecycle.Calls(f"pool {inp.pool}, worker {inp.worker_id}", heartbeat)
        self.hold = lifecycle.ClusterHold()  # what the teardown at the end removes
        self._pool_gone = False
        self._ending = False  # reporting how it ended: a missing pool no longer matters

    @workflow.query(name=Query.POOL_WORKER_STATE, description="This worker's status.")
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
        cluster, chosen = await self._provision()
        await self._report(W.STARTING, cluster=cluster, candidate=chosen)
        task = self.inp.version.task
        try:
            if task.workdir or task.file_mounts:
                await lifecycle.sync_files(self.calls, self._meta(), cluster, task, "down")
            if task.setup:
                setup = lifecycle.phase_input(
                    self._meta(),
                    cluster,
                    "setup",
                    0,
                    task,
                    self.inp.policy,
                    sealed_secrets=self.inp.version.sealed_secrets,
                    gpus_per_node=chosen.accelerator_count,
                    log_path=pool_worker_log_path(self.inp.pool, self.inp.worker_id, "setup"),
                )
                result = await lifecycle.start_phase(self.calls, setup)
                failed = [code for code in result.exit_codes if code]
                if failed:
                    raise _WorkerEnded(W.FAILED_SETUP, f"Setup exited with exit code {failed[0]}.")
            await self._report(W.READY)
            lost = await self.calls(
                ActivityName.WATCH_CLUSTER,
                WatchClusterInput(
                    cluster=cluster,
                    poll_seconds=self.inp.policy.watch_poll_seconds,
                    status_check_min_elapsed_seconds=self.inp.policy.status_check_min_elapsed_seconds,
                    status_check_min_retries=self.inp.policy.status_check_min_retries,
                ),
                str,
                WATCH_QUEUE,
                timeout=_IDLE_WATCH_TIMEOUT,
                heartbeat=self.calls.heartbeat,
                retry=lifecycle.WATCH_RETRY,
            )
            raise _WorkerEnded(W.PREEMPTED, lost)
        except ActivityError as err:
            evidence = lifecycle.lost_cluster(err)
            if evidence is not None:
                raise _WorkerEnded(W.PREEMPTED, evidence.message) from err
            raise

    async def _provision(self) -> tuple[ClusterInfo, Candidate]:
        """Plan, then launch rounds until a candidate has room; capacity shortages back off without end."""

        async def no_capacity(delay: float) -> None:
            await self._report(W.PROVISIONING, reason=f"No capacity; retrying in {delay:.0f}s.")

        task = self.inp.version.task
        try:
            candidates = await lifecycle.plan(self.calls, self._meta(), task)
            spec = lifecycle.Launch(
                meta=self._meta(),
                name=self.inp.cluster_name,
                launch=0,
                num_nodes=task.num_nodes,
                candidates=candidates,
                policy=self.inp.policy,
            )
            return await lifecycle.launch(self.calls, self.hold, spec, log=workflow.logger.info, on_backoff=no_capacity)
        except lifecycle.Infeasible as err:
            raise _WorkerEnded(W.FAILED_PROVISION, err.reason) from None

    async def _teardown(self) -> None:
        for name, err in await lifecycle.teardown(self.calls, self.hold, on_down=lambda name: None):
            self.status = W.FAILED_CLEANUP
            workflow.logger.error("teardown of %s failed: %s", name, err.cause or err)

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
            await workflow.get_external_workflow_handle(pool_workflow_id(self.inp.pool)).signal(
                Signal.POOL_WORKER_REPORT, report
            )
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
