"""The pool's decisions as pure functions of its state: how many workers it wants, which to start, which
to retire, and which job gets which worker. Deterministic inside the workflow, table-tested on their own.

| situation                                             | decision                                        |
|-------------------------------------------------------|-------------------------------------------------|
| fewer serving workers of the current version than the | start the missing ones; while older workers     |
| target                                                | still serve (rolling update), one at a time     |
| a worker of the current version failed setup or       | replace it, but stop after 3 such failures in a |
| provisioning for good                                 | row (until the next apply)                      |
| more workers of the current version than the target   | stop idle ones (never one running a job)        |
| older-version workers while new ones get READY        | retire one old worker per new READY one: idle   |
|                                                       | ones at once, busy ones once their job ends     |
| a worker preempted or failed                          | stop it; a replacement is started               |
| a READY idle worker and waiting jobs                  | the lowest job id gets it (newest version first)|

Autoscaling is SkyPilot's QueueLengthAutoscaler: with no job waiting the target is 0, above the queue
threshold it grows by one, below it shrinks by one, never to 0 while jobs wait, clipped to
[min_workers, max_workers]; a new target is taken only once it has been wanted for the upscale /
downscale delay (at once when the target is 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from tsky.contract.pool_state import AutoscalerState, PoolRequest, PoolState, WorkerState
from tsky.spec.pool import PoolSpec
from tsky.spec.status import PoolStatus, PoolWorkerStatus

W = PoolWorkerStatus
MAX_FAILURES_IN_A_ROW = 3
_NOT_READY = (W.PENDING, W.PROVISIONING, W.STARTING)


def initial_target(spec: PoolSpec, current: int | None) -> int:
    """The target after an apply: `workers` when given (clipped to the bounds), else the current one."""
    wanted = spec.initial_workers if spec.workers is not None or current is None else current
    return max(spec.min_size, min(spec.max_size, wanted))


def autoscale(spec: PoolSpec, state: AutoscalerState, queue_length: int, now: datetime) -> AutoscalerState:
    """The next autoscaler state (a fixed-size pool always wants `workers`)."""
    if not spec.autoscaling:
        return AutoscalerState(target=spec.initial_workers)
    current = state.target
    threshold = spec.target_queue_length
    if queue_length == 0:
        proposed = 0
    elif queue_length > threshold:
        proposed = current + 1
    elif queue_length < threshold:
        proposed = current - 1
    else:
        proposed = current
    if proposed == 0 and queue_length > 0:
        proposed = 1  # never scale to zero with jobs waiting
    proposed = max(spec.min_size, min(spec.max_size, proposed))
    if proposed == current:
        return AutoscalerState(target=current)
    if current == 0:
        return AutoscalerState(target=proposed)  # nothing serves: no reason to wait
    if proposed > current:
        since = state.upscale_since or now
        if now - since >= timedelta(seconds=spec.upscale_delay_seconds):
            return AutoscalerState(target=proposed)
        return AutoscalerState(target=current, upscale_since=since)
    since = state.downscale_since or now
    if now - since >= timedelta(seconds=spec.downscale_delay_seconds):
        return AutoscalerState(target=proposed)
    return AutoscalerState(target=current, downscale_since=since)


def next_decision_at(spec: PoolSpec, state: AutoscalerState) -> datetime | None:
    """When a pending hysteresis would change the target (the pool wakes up then)."""
    if state.upscale_since is not None:
        return state.upscale_since + timedelta(seconds=spec.upscale_delay_seconds)
    if state.downscale_since is not None:
        return state.downscale_since + timedelta(seconds=spec.downscale_delay_seconds)
    return None


@dataclass
class Plan:
    launch: int = 0  # new workers of the current version
    stop: list[int] = field(default_factory=list)  # idle workers to tear down now
    drain: list[int] = field(default_factory=list)  # busy workers to tear down once their job ends
    assign: list[tuple[PoolRequest, int]] = field(default_factory=list)  # request -> worker id


def _retire_order(worker: WorkerState) -> tuple[int, int]:
    """Not-ready workers first (nothing invested yet), then idle ones, then busy; newest first."""
    rank = 0 if worker.status in _NOT_READY else (1 if worker.idle() else 2)
    return rank, -worker.worker_id


def plan(state: PoolState, target: int) -> Plan:
    out = Plan()
    version = state.version
    if version is None or state.shutting_down:
        return out
    serving = [w for w in state.workers if w.serving()]
    new = [w for w in serving if w.version == version.version]
    old = [w for w in serving if w.version != version.version]
    new_ready = [w for w in new if w.status in (W.READY, W.BUSY)]
    new_pending = [w for w in new if w.status in _NOT_READY]

    missing = target - len(new)
    if missing > 0 and state.version_failures < MAX_FAILURES_IN_A_ROW:
        # Rolling: while older workers still serve, bring new ones up one at a time.
        out.launch = (0 if new_pending else 1) if old else missing

    # One old worker retires for each new one that is READY; the rest keep serving meanwhile.
    keep_old = max(0, target - len(new_ready))
    for worker in sorted(old, key=_retire_order)[: max(0, len(old) - keep_old)]:
        (out.stop if worker.idle() else out.drain).append(worker.worker_id)
    # Shrinking removes only idle workers; busy ones are looked at again when their job ends.
    surplus = [w for w in sorted(new, key=_retire_order) if w.idle()][: max(0, len(new) - target)]
    out.stop += [w.worker_id for w in surplus]
    # Workers taken out of service (lost, failed, drained) are torn down once no job holds them.
    out.stop += [
        w.worker_id
        for w in state.workers
        if not w.serving() and not w.stop_requested and not w.gone and w.idle() and w.worker_id not in out.stop
    ]

    leaving = set(out.stop) | set(out.drain)
    free = [w for w in serving if w.status is W.READY and w.idle() and w.worker_id not in leaving]
    free.sort(key=lambda w: (w.version != version.version, w.worker_id))
    waiting = sorted(state.queue, key=lambda r: (r.job_id, r.key))
    out.assign = [(req, w.worker_id) for req, w in zip(waiting, free, strict=False)]
    return out


def pool_status(state: PoolState) -> PoolStatus:
    if state.shutting_down:
        return PoolStatus.SHUTTING_DOWN
    if state.version is None:
        return PoolStatus.CONTROLLER_INIT
    live = [w for w in state.workers if w.live()]
    if any(w.status in (W.READY, W.BUSY) for w in live):
        return PoolStatus.READY
    if live:
        return PoolStatus.REPLICA_INIT
    if state.version_failures >= MAX_FAILURES_IN_A_ROW:
        return PoolStatus.FAILED
    return PoolStatus.NO_REPLICA
