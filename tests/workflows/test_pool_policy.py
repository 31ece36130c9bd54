"""The pool's decisions (tsky.workflows.pool_policy), one table row at a time: pure functions, no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tsky.contract.pool_state import AutoscalerState, PoolRequest, PoolState, PoolVersion, WorkerState
from tsky.spec.loader import load_pipeline
from tsky.spec.pool import PoolSpec
from tsky.spec.status import PoolStatus
from tsky.spec.status import PoolWorkerStatus as W
from tsky.workflows.pool_policy import MAX_FAILURES_IN_A_ROW, autoscale, initial_target, plan, pool_status

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TASK = load_pipeline("setup: echo hi\n").tasks[0]


def version(number: int = 1, **spec: int) -> PoolVersion:
    return PoolVersion(version=number, task=TASK, spec=PoolSpec(**spec or {"workers": 3}), fingerprint="f")


def worker(worker_id: int, status: W = W.READY, version: int = 1, job: int | None = None) -> WorkerState:
    return WorkerState(
        worker_id=worker_id,
        version=version,
        cluster_name=f"p-w{worker_id}",
        status=W.BUSY if job is not None else status,
        lease=f"{job}-0-0" if job is not None else None,
        job_id=job,
    )


def request(job_id: int) -> PoolRequest:
    return PoolRequest(key=f"{job_id}-0-0", job_id=job_id, workflow_id=f"tsky-job-{job_id}")


def state(workers: list[WorkerState], number: int = 1, queue: tuple[int, ...] = (), **kw: int) -> PoolState:
    return PoolState(name="p", version=version(number), workers=workers, queue=[request(j) for j in queue], **kw)


# -- sizing ------------------------------------------------------------------------------------------


def test_a_new_pool_starts_all_its_workers_at_once() -> None:
    assert plan(state([]), 3).launch == 3


def test_a_lost_worker_is_stopped_and_replaced() -> None:
    lost = worker(2, W.PREEMPTED)
    lost.draining = True
    decided = plan(state([worker(1), lost, worker(3)]), 3)
    assert decided.launch == 1 and decided.stop == [2]


def test_growing_adds_workers_and_touches_none() -> None:
    decided = plan(state([worker(1), worker(2), worker(3)]), 5)
    assert decided.launch == 2 and decided.stop == [] and decided.drain == []


def test_shrinking_stops_idle_workers_only_newest_first() -> None:
    decided = plan(state([worker(1, job=7), worker(2), worker(3), worker(4, job=8)]), 1)
    assert decided.stop == [3, 2] and decided.drain == []  # busy workers wait for their jobs to end


def test_not_ready_workers_go_before_ready_ones() -> None:
    decided = plan(state([worker(1), worker(2, W.PROVISIONING), worker(3)]), 2)
    assert decided.stop == [2]


def test_repeated_setup_failures_stop_the_replacements() -> None:
    failed = state([], version_failures=MAX_FAILURES_IN_A_ROW)
    assert plan(failed, 3).launch == 0
    assert pool_status(failed) is PoolStatus.FAILED


# -- rolling update ----------------------------------------------------------------------------------


def test_a_new_version_rolls_one_worker_at_a_time() -> None:
    old = [worker(1), worker(2, job=5), worker(3)]
    assert plan(state(old, number=2), 3).launch == 1  # the first new worker
    provisioning = plan(state([*old, worker(4, W.PROVISIONING, version=2)], number=2), 3)
    assert provisioning.launch == 0 and provisioning.stop == []  # wait for it; old ones keep serving


def test_each_ready_new_worker_retires_one_old_one_idle_first_busy_drained() -> None:
    old = [worker(1), worker(2, job=5), worker(3, job=6)]
    one_ready = plan(state([*old, worker(4, version=2)], number=2), 3)
    assert one_ready.stop == [1] and one_ready.drain == [] and one_ready.launch == 1
    old[0].draining = old[0].stop_requested = True
    two_ready = plan(state([*old, worker(4, version=2), worker(5, version=2)], number=2), 3)
    assert two_ready.drain == [3] and two_ready.launch == 1  # a busy old worker: drained, its job keeps running


def test_a_drained_worker_is_stopped_once_its_job_ends() -> None:
    drained = worker(2)
    drained.draining = True
    assert plan(state([worker(1, version=2), drained], number=2), 1).stop == [2]


# -- assignment --------------------------------------------------------------------------------------


def test_waiting_jobs_get_ready_idle_workers_in_job_id_order() -> None:
    workers = [worker(1, job=3), worker(2), worker(3, W.STARTING), worker(4)]
    decided = plan(state(workers, queue=(9, 4, 7)), 4)
    assert [(r.job_id, w) for r, w in decided.assign] == [(4, 2), (7, 4)]


def test_new_version_workers_are_handed_out_first_and_leaving_ones_never() -> None:
    decided = plan(state([worker(1), worker(2, version=2)], number=2, queue=(1, 2)), 1)
    assert decided.stop == [1]
    assert [(r.job_id, w) for r, w in decided.assign] == [(1, 2)]


# -- autoscaling -------------------------------------------------------------------------------------

AUTO = PoolSpec(min_workers=0, max_workers=3, upscale_delay_seconds=10, downscale_delay_seconds=20)


@pytest.mark.parametrize(
    ("target", "queue", "wanted"),
    [
        (0, 0, 0),  # idle and empty: stays at zero
        (0, 1, 1),  # a job arrives at an empty pool: at once (nothing to wait for)
        (0, 5, 1),  # from zero, one step
        (3, 9, 3),  # clipped to max_workers
    ],
)
def test_autoscaler_immediate_decisions(target: int, queue: int, wanted: int) -> None:
    assert autoscale(AUTO, AutoscalerState(target=target), queue, T0).target == wanted


def test_autoscaler_grows_by_one_after_the_upscale_delay() -> None:
    first = autoscale(AUTO, AutoscalerState(target=1), 3, T0)
    assert first.target == 1 and first.upscale_since == T0
    assert autoscale(AUTO, first, 3, T0 + timedelta(seconds=9)).target == 1
    assert autoscale(AUTO, first, 3, T0 + timedelta(seconds=10)).target == 2


def test_autoscaler_goes_back_to_zero_after_the_downscale_delay_and_forgets_a_blip() -> None:
    idle = autoscale(AUTO, AutoscalerState(target=2), 0, T0)
    assert idle.target == 2 and idle.downscale_since == T0
    blip = autoscale(AUTO, idle, 1, T0 + timedelta(seconds=5))  # queue == threshold: no change wanted
    assert blip.downscale_since is None
    assert autoscale(AUTO, idle, 0, T0 + timedelta(seconds=20)).target == 0


def test_autoscaler_keeps_min_workers_and_a_fixed_pool_its_size() -> None:
    floor = PoolSpec(min_workers=1, max_workers=3, downscale_delay_seconds=0)
    assert autoscale(floor, AutoscalerState(target=2), 0, T0).target == 1
    assert autoscale(PoolSpec(workers=4), AutoscalerState(target=0), 9, T0).target == 4


def test_apply_sets_the_target_from_workers_or_keeps_it() -> None:
    assert initial_target(PoolSpec(workers=2, min_workers=0, max_workers=5), 4) == 2
    assert initial_target(PoolSpec(min_workers=1, max_workers=5), 4) == 4
    assert initial_target(PoolSpec(min_workers=1, max_workers=5), None) == 1
    assert initial_target(PoolSpec(min_workers=0, max_workers=2), 4) == 2  # clipped to the new bounds
