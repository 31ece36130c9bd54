"""Deterministic workflow code only. Workflows import `tsky.spec` and call activities by name."""

from __future__ import annotations

from tsky.workflows.id_registry import IdRegistryWorkflow
from tsky.workflows.managed_job import ManagedJobWorkflow
from tsky.workflows.pool import PoolWorkflow
from tsky.workflows.pool_worker import PoolWorkerWorkflow
from tsky.workflows.scheduler import SchedulerWorkflow
from tsky.workflows.sweeper import SweeperWorkflow

WORKFLOWS: list[type] = [
    ManagedJobWorkflow,
    IdRegistryWorkflow,
    SchedulerWorkflow,
    SweeperWorkflow,
    PoolWorkflow,
    PoolWorkerWorkflow,
]
