"""PoolWorkflow: one long-lived entity workflow per pool (`tsky-pool-<name>`) that owns warm workers.

It keeps the pool's state (versions, workers, the queue of waiting jobs) and decides; the work happens
elsewhere. Each worker's lifecycle is a child workflow (`PoolWorkerWorkflow`: provision, setup, health,
teardown), so the pool's own history holds only starts, stops and messages, and one pool copes with
tens of events per second. Jobs talk to it with signals (`pool_request` / `pool_release`) and get a
`pool_grant` signal back; workers report each transition. Handlers only record what they are told and
mark the state dirty; the main loop reconciles: it asks `pool_policy` what to do (autoscaler target,
workers to start / retire, job -> worker assignments) and does it.

Continue-as-new: once Temporal suggests it (or after many events / applies) the loop stops after a
reconcile, waits for handlers to finish and continues with the whole state, queue and pending grants
included, so no waiting job is lost or served twice. Workers are started with parent_close_policy
ABANDON for exactly this reason (closing a run would otherwise cancel them); `down` (a cancel of this
workflow) stops them explicitly: waiting jobs are told the pool is gone, every worker tears down, and
the workflow ends once all of them reported gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import is_cancelled_exception
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from tsky.contract.ids import CONTROL_QUEUE, pool_worker_cluster_name, pool_worker_workflow_id
    from tsky.contract.names import Query, Signal, Update, WorkflowType
    from tsky.contract.pool_state import (
        FAILED_FOR_GOOD,
        ApplyResult,
        AutoscalerState,
        PoolApply,
        PoolGrant,
        PoolRelease,
        PoolRequest,
        PoolSnapshot,
        PoolState,
        PoolVersion,
        WorkerInput,
        WorkerReport,
        WorkerState,
        pool_not_found,
    )
    from tsky.spec.requests import requested_label
    from tsky.spec.status import PoolWorkerStatus
    from tsky.workflows.pool_policy import autoscale, initial_target, next_decision_at, plan, pool_status
    from tsky.workflows.shield import shielded

W = PoolWorkerStatus

_MAX_EVENTS = 10_000  # continue-as-new by then even if the server never suggests it
_MAX_APPLIES = 500  # well below the 2,000 updates a run may take
_SIGNAL_BATCH = 500  # outgoing signals in flight at once (a run allows 2,000)
_KEPT_FAILURES = 10  # failed workers kept in the status table after their cluster is gone
_RECHECK_STOPPING = timedelta(minutes=1)


@workflow.defn(name=WorkflowType.POOL)
class PoolWorkflow:
    @workflow.init
    def __init__(self, state: PoolState) -> None:
        self.state = state.model_copy(deep=True)
        if self.state.created_at is None:
            self.state.created_at = workflow.now()
        self._dirty = True
        self._applies = 0

    @workflow.run
    async def run(self, state: PoolState) -> None:
        try:
            while True:
                # A cancel waits for the reconcile: a half-sent start or grant would be lost.
                await shielded(self._reconcile)
                if self._continue_as_new_due():
                    break
                await self._wait()
        except BaseException as err:
            if not is_cancelled_exception(err):
                raise
            await self._shut_down()
            raise
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(self.state)

    # -- messages --------------------------------------------------------------------------------------

    @workflow.update(name=Update.POOL_APPLY, description="Create, resize or update the pool; returns the new version.")
    def apply(self, req: PoolApply) -> ApplyResult:
        st = self.state
        previous = st.version
        number = previous.version + 1 if previous else 1
        # As SkyPilot: a workdir or file mounts are copied anew on every apply (their contents may have
        # changed under the same paths), so such a pool always gets new workers.
        files = bool(req.task.workdir or req.task.file_mounts)
        in_place = previous is not None and previous.fingerprint == req.fingerprint and not files
        st.version = PoolVersion(
            version=number,
            task=req.task,
            spec=req.spec,
            sealed_secrets=req.sealed_secrets,
            fingerprint=req.fingerprint,
            user=req.user,
            applied_at=workflow.now(),
        )
        st.policy = req.policy
        st.autoscaler = AutoscalerState(target=initial_target(req.spec, st.autoscaler.target if previous else None))
        st.version_failures = 0
        if in_place and previous is not None:
            # Same workers, new version: nothing to recreate.
            for worker in st.workers:
                if worker.version == previous.version and worker.live():
                    worker.version = number
        self._applies += 1
        self._dirty = True
        return ApplyResult(version=number, created=previous is None, in_place=in_place)

    @apply.validator
    def _validate_apply(self, req: PoolApply) -> None:
        if self.state.shutting_down:
            raise ValueError(f"Pool '{self.state.name}' is shutting down; apply again once `down` has finished.")

    @workflow.signal(name=Signal.POOL_REQUEST, description="A job asks for a whole worker.")
    def request(self, req: PoolRequest) -> None:
        st = self.state
        held = st.leased(req.key)
        if held is not None:  # asked again (a retry, or a job checking on us): the same answer
            st.outbox.append(_grant(req.key, req.workflow_id, held))
        elif st.shutting_down or st.version is None:
            st.outbox.append(PoolGrant(key=req.key, workflow_id=req.workflow_id, error=pool_not_found(st.name)))
        elif all(r.key != req.key for r in st.queue):
            st.queue.append(req)
        self._dirty = True

    @workflow.signal(name=Signal.POOL_RELEASE, description="A job is done with its worker, or withdraws its request.")
    def release(self, rel: PoolRelease) -> None:
        st = self.state
        st.queue = [r for r in st.queue if r.key != rel.key]
        worker = st.leased(rel.key)
        if worker is not None:
            worker.lease = None
            worker.job_id = None
            if rel.lost and worker.live():
                worker.status = W.PREEMPTED
                worker.reason = rel.reason or None
                worker.draining = True
            elif worker.status is W.BUSY:
                worker.status = W.READY
        self._dirty = True

    @workflow.signal(name=Signal.POOL_WORKER_REPORT, description="A worker's workflow reports a transition.")
    def worker_report(self, rep: WorkerReport) -> None:
        st = self.state
        worker = st.worker(rep.worker_id)
        if worker is None:
            return
        current = st.version is not None and worker.version == st.version.version
        if rep.cluster is not None:
            worker.cluster = rep.cluster
            worker.candidate = rep.candidate
            worker.launched_at = workflow.now()
        if rep.reason:
            worker.reason = rep.reason
        if rep.gone:
            worker.gone = True
            if rep.status in FAILED_FOR_GOOD or rep.status is W.FAILED_CLEANUP:
                worker.status = rep.status
                self._forget_old_failures()
            else:
                st.workers.remove(worker)
        elif rep.status in FAILED_FOR_GOOD or rep.status in (W.PREEMPTED, W.FAILED):
            worker.status = rep.status
            worker.draining = True
            if rep.status in FAILED_FOR_GOOD and current:
                st.version_failures += 1
        elif worker.stop_requested or not worker.live():
            pass  # already leaving: progress reports no longer matter
        elif rep.status is W.READY:
            worker.status = W.BUSY if worker.lease else W.READY
            if current:
                st.version_failures = 0
        else:
            worker.status = rep.status
        self._dirty = True

    @workflow.query(name=Query.POOL_SNAPSHOT, description="What `tsky jobs pool status` shows.")
    def snapshot(self) -> PoolSnapshot:
        st = self.state
        version = st.version
        return PoolSnapshot(
            name=st.name,
            status=pool_status(st),
            version=version.version if version else 0,
            created_at=st.created_at,
            spec=version.spec if version else None,
            requested=requested_label(version.task.num_nodes, version.task.requests().options) if version else "-",
            target=st.autoscaler.target,
            workers=st.workers,
            queued_jobs=sorted(r.job_id for r in st.queue),
        )

    @workflow.query(
        name=Query.POOL_VERSION, description="The current version's configuration (for `apply --workers N`)."
    )
    def current_version(self) -> PoolVersion | None:
        return self.state.version

    # -- the loop --------------------------------------------------------------------------------------

    async def _reconcile(self) -> None:
        self._dirty = False
        st = self.state
        version = st.version
        if version is not None and not st.shutting_down:
            st.autoscaler = autoscale(version.spec, st.autoscaler, len(st.queue), workflow.now())
            decided = plan(st, st.autoscaler.target)
            for worker_id in decided.drain:
                self._worker(worker_id).draining = True
            stopping = [self._worker(worker_id) for worker_id in decided.stop]
            for worker in stopping:
                self._mark_stopping(worker)
            for req, worker_id in decided.assign:
                worker = self._worker(worker_id)
                worker.lease = req.key
                worker.job_id = req.job_id
                worker.status = W.BUSY
                st.queue.remove(req)
                st.outbox.append(_grant(req.key, req.workflow_id, worker))
            starting = [self._new_worker(version) for _ in range(decided.launch)]
            await asyncio.gather(*(self._start(w) for w in starting), *(self._stop(w) for w in stopping))
        await self._flush_outbox()

    async def _wait(self) -> None:
        st = self.state
        deadline = next_decision_at(st.version.spec, st.autoscaler) if st.version else None
        timeout = None if deadline is None else (deadline - workflow.now()).total_seconds()
        if timeout is not None and timeout <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: self._dirty, timeout=timeout, timeout_summary="autoscaler")

    def _continue_as_new_due(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() > _MAX_EVENTS
            or self._applies >= _MAX_APPLIES
        )

    # -- workers ---------------------------------------------------------------------------------------

    def _worker(self, worker_id: int) -> WorkerState:
        worker = self.state.worker(worker_id)
        assert worker is not None
        return worker

    def _new_worker(self, version: PoolVersion) -> WorkerState:
        st = self.state
        worker_id = st.next_worker_id
        st.next_worker_id += 1
        worker = WorkerState(
            worker_id=worker_id,
            version=version.version,
            cluster_name=pool_worker_cluster_name(st.name, worker_id),
        )
        st.workers.append(worker)
        return worker

    async def _start(self, worker: WorkerState) -> None:
        st = self.state
        assert st.version is not None
        await workflow.start_child_workflow(
            WorkflowType.POOL_WORKER,
            WorkerInput(
                pool=st.name,
                worker_id=worker.worker_id,
                cluster_name=worker.cluster_name,
                version=st.version,
                policy=st.policy,
            ),
            id=pool_worker_workflow_id(st.name, worker.worker_id),
            task_queue=CONTROL_QUEUE,
            # The pool continues-as-new (which closes a run): its workers must outlive each run.
            parent_close_policy=ParentClosePolicy.ABANDON,
            static_summary=f"tsky pool {st.name}: worker {worker.worker_id} (version {worker.version})",
        )

    def _mark_stopping(self, worker: WorkerState) -> None:
        worker.stop_requested = True
        worker.draining = True
        if worker.status in (W.PENDING, W.PROVISIONING, W.STARTING, W.READY, W.BUSY):
            worker.status = W.SHUTTING_DOWN

    async def _stop(self, worker: WorkerState) -> None:
        """Ask the worker's workflow to tear down; it reports `gone` when done."""
        handle = workflow.get_external_workflow_handle(pool_worker_workflow_id(self.state.name, worker.worker_id))
        try:
            await handle.cancel()
        except Exception as err:
            if is_cancelled_exception(err):
                raise
            # Its workflow has ended already (and with it the cluster).
            if worker in self.state.workers and worker.status not in FAILED_FOR_GOOD:
                self.state.workers.remove(worker)
            worker.gone = True

    def _forget_old_failures(self) -> None:
        failed = [w for w in self.state.workers if w.gone]
        for worker in failed[: max(0, len(failed) - _KEPT_FAILURES)]:
            self.state.workers.remove(worker)

    # -- grants ----------------------------------------------------------------------------------------

    async def _flush_outbox(self) -> None:
        st = self.state
        while st.outbox:
            batch, st.outbox = st.outbox[:_SIGNAL_BATCH], st.outbox[_SIGNAL_BATCH:]
            await asyncio.gather(*(self._send(grant) for grant in batch))

    async def _send(self, grant: PoolGrant) -> None:
        try:
            await workflow.get_external_workflow_handle(grant.workflow_id).signal(Signal.POOL_GRANT, grant)
        except Exception as err:
            if is_cancelled_exception(err):
                raise
            # The job is gone: whatever it was given is free again.
            self.release(PoolRelease(key=grant.key))

    # -- down ------------------------------------------------------------------------------------------

    async def _shut_down(self) -> None:
        st = self.state
        st.shutting_down = True
        for req in st.queue:
            st.outbox.append(PoolGrant(key=req.key, workflow_id=req.workflow_id, error=pool_not_found(st.name)))
        st.queue = []
        stopping = [w for w in st.workers if not w.gone and not w.stop_requested]
        for worker in stopping:
            self._mark_stopping(worker)
        await asyncio.gather(*(self._stop(w) for w in stopping))
        while True:
            await self._flush_outbox()
            if all(w.gone for w in st.workers):
                return
            try:
                await workflow.wait_condition(
                    lambda: bool(st.outbox) or all(w.gone for w in st.workers),
                    timeout=_RECHECK_STOPPING,
                    timeout_summary="workers still shutting down",
                )
            except TimeoutError:
                # Ask again: a worker whose workflow ended without a word is found gone this way.
                await asyncio.gather(*(self._stop(w) for w in st.workers if not w.gone))


def _grant(key: str, workflow_id: str, worker: WorkerState) -> PoolGrant:
    return PoolGrant(
        key=key,
        workflow_id=workflow_id,
        worker_id=worker.worker_id,
        cluster=worker.cluster,
        candidate=worker.candidate,
    )
