"""Deterministic workflow code only. Workflows import `tsky.spec` and call activities by name.

This package imports nothing at import time, and `WORKFLOWS` (what a worker registers) is built on
first use: the workflow sandbox re-imports a workflow's module *and its package* for every workflow
run, so eager imports here would load every workflow module into each job's sandbox (about 250 KB and
15-90 ms of CPU per job instead of about 50 KB and 5 ms).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name != "WORKFLOWS":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from tsky.workflows.id_registry import IdRegistryWorkflow
    from tsky.workflows.managed_job import ManagedJobWorkflow
    from tsky.workflows.pool import PoolWorkflow
    from tsky.workflows.pool_worker import PoolWorkerWorkflow
    from tsky.workflows.scheduled_job import ScheduledJobWorkflow
    from tsky.workflows.scheduler import SchedulerWorkflow
    from tsky.workflows.sweeper import SweeperWorkflow

    workflows: list[type] = [
        ManagedJobWorkflow,
        IdRegistryWorkflow,
        SchedulerWorkflow,
        SweeperWorkflow,
        PoolWorkflow,
        PoolWorkerWorkflow,
        ScheduledJobWorkflow,
    ]
    return workflows
