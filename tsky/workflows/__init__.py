"""Deterministic workflow code only. Workflows import `tsky.contract`/`tsky.spec` and call activities by name.

Where things live (a new workflow feature goes beside its concern):
- managed_job: the ManagedJob loop (per task: plan, launch, phases, decide, recover or finish);
  job_state (its state in one object, a task's status moves), job_phases (one attempt on the cluster),
  job_teardown (clean-up), running_slot (the running-jobs limit), pool_lease (a pool job's worker),
  visibility (search attributes, memo, Web UI details, controller log);
- cluster_lifecycle: plan, launch rounds with backoff, sync, phases, teardown, with every timeout and
  retry policy: shared by ManagedJob and PoolWorker;
- recovery: the pure recovery policy (what to do after an attempt) and the launch order/backoff;
- pool, pool_policy, pool_worker: pools; scheduler, id_registry, sweeper: the other entity workflows.

Import rules, for the workflow sandbox: it re-imports a workflow's module *and its package* for every
workflow run. So this package imports nothing at import time, and `WORKFLOWS` (what a worker registers)
is built on first use: eager imports here would load every workflow module into each job's sandbox
(about 250 KB and 15-90 ms of CPU per job instead of about 50 KB and 5 ms). And a workflow module
imports its helpers inside `workflow.unsafe.imports_passed_through()` as `import tsky.workflows.x as x`
or `from tsky.workflows.x import name`, never `from tsky.workflows import x`: the sandbox re-imports a
submodule named that way for every run (`python -m bench.workflow_sandbox` prints the cost).
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
