"""The names of a job's logs in the log store (`tsky.ops.log_store`): keys such as
`jobs/7/task-0/attempt-1/run.log`, which the `local` store keeps as files under `$TSKY_HOME/logs/`.

Workers write, the CLI reads; both use these names. Logs never travel through Temporal history.
Every attempt of every task keeps its own log, so the output before a preemption is never lost.
"""

from __future__ import annotations


def phase_log_key(job_id: int, task_index: int, attempt: int, phase: str) -> str:
    """Output of one phase (setup, then run) of one attempt, each line prefixed `(task, pid=N)`, the
    nodes' lines merged. One writer at a time, so a retried watcher can truncate it to the size it last
    reported and carry on: no line lost, none written twice."""
    return f"jobs/{job_id}/task-{task_index}/attempt-{attempt}/{phase}.log"


def controller_log_key(job_id: int) -> str:
    """The job's decisions with times: provisioning, transitions, recoveries, errors."""
    return f"jobs/{job_id}/controller.log"


def pool_worker_log_key(pool: str, worker_id: int, phase: str = "setup") -> str:
    return f"pools/{pool}/worker-{worker_id}/{phase}.log"


def pool_worker_log_path(pool: str, worker_id: int, phase: str) -> str:
    """A pool worker's own output (its setup), relative to `$TSKY_HOME`: it is no job's."""
    return f"logs/{pool_worker_log_key(pool, worker_id, phase)}"
