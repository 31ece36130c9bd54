"""Every name tsky's workflows answer to: workflow types, signals, queries and updates, defined once.

These names are part of the contract, like the payloads: every recorded history and every running
workflow carries them, so renaming one strands the workflows already running (tests/replay catches it).
Workflows declare their handlers with these, and every caller (jobs, pools, the CLI, activities, users'
code) sends to them: a name written as a bare string elsewhere is a bug. Activity names are
`ActivityName` beside the activity inputs. (Plain string constants, not enums: a query name is shared
by several workflow types.)
"""

from __future__ import annotations

from typing import Final


class WorkflowType:
    MANAGED_JOB: Final = "ManagedJob"  # one per managed job: `tsky-job-<id>`
    POOL: Final = "TskyPool"  # one per pool: `tsky-pool-<name>`
    POOL_WORKER: Final = "TskyPoolWorker"  # a pool's worker, child of its pool
    SCHEDULER: Final = "TskyScheduler"  # the running-jobs limit
    ID_REGISTRY: Final = "TskyIdRegistry"  # hands out job ids
    SWEEPER: Final = "TskySweeper"  # tears down leaked clusters
    SCHEDULED_JOB: Final = "TskyScheduledJob"  # a schedule's run: starts one managed job as its child


class Signal:
    # scheduler -> job: you may launch (no payload)
    SLOT_GRANTED: Final = "slot_granted"
    # job -> scheduler (signal-with-start): SlotRequest
    ACQUIRE_SLOT: Final = "acquire"
    # job -> scheduler: the job id (a bare int); frees its slot or withdraws it from the wait
    RELEASE_SLOT: Final = "release"
    # CLI -> job: GracefulCancel, just before the cancel it qualifies
    GRACEFUL_CANCEL: Final = "graceful_cancel"
    # job -> pool: PoolRequest; pool -> job: PoolGrant; job -> pool: PoolRelease
    POOL_REQUEST: Final = "pool_request"
    POOL_GRANT: Final = "pool_grant"
    POOL_RELEASE: Final = "pool_release"
    # pool worker -> pool: WorkerReport
    POOL_WORKER_REPORT: Final = "pool_worker_report"


class Query:
    JOB_STATE: Final = "state"  # ManagedJob -> JobState
    POOL_WORKER_STATE: Final = "state"  # PoolWorker -> its PoolWorkerStatus value
    POOL_SNAPSHOT: Final = "snapshot"  # Pool -> PoolSnapshot
    POOL_VERSION: Final = "current_version"  # Pool -> PoolVersion | None
    SCHEDULER_STATUS: Final = "status"  # Scheduler -> SchedulerStatus
    SWEEPER_STATUS: Final = "status"  # Sweeper -> SweeperState
    NEXT_JOB_ID: Final = "next_id"  # IdRegistry -> int


class Update:
    POOL_APPLY: Final = "apply"  # Pool: PoolApply -> ApplyResult
    ALLOCATE_JOB_IDS: Final = "allocate"  # IdRegistry: AllocateRequest -> the first id
