"""Where a job's logs live in the log store (a directory under `$TSKY_HOME/logs/jobs/`).

Workers write, the CLI reads; both use these paths. Logs never travel through Temporal history.
Every attempt of every task keeps its own file, so the output before a preemption is never lost.
"""

from __future__ import annotations

from pathlib import Path


def jobs_log_root(home: Path) -> Path:
    return home / "logs" / "jobs"


def job_log_dir(home: Path, job_id: int) -> Path:
    return jobs_log_root(home) / str(job_id)


def attempt_dir(home: Path, job_id: int, task_index: int, attempt: int) -> Path:
    return job_log_dir(home, job_id) / f"task-{task_index}" / f"attempt-{attempt}"


def phase_log(home: Path, job_id: int, task_index: int, attempt: int, phase: str) -> Path:
    """Output of one phase (setup, then run) of one attempt, each line prefixed `(task, pid=N)`.

    One file per phase and attempt has a single writer, so a retried watcher can truncate it to the
    size it last reported and carry on: no line lost, none written twice."""
    return attempt_dir(home, job_id, task_index, attempt) / f"{phase}.log"


def pool_worker_log_path(pool: str, worker_id: int, phase: str) -> str:
    """A pool worker's own output (its setup), relative to `$TSKY_HOME`: it is no job's."""
    return f"logs/pools/{pool}/worker-{worker_id}/{phase}.log"


def pool_worker_log(home: Path, pool: str, worker_id: int, phase: str = "setup") -> Path:
    return home / pool_worker_log_path(pool, worker_id, phase)


def controller_log(home: Path, job_id: int) -> Path:
    """The job's decisions with times: provisioning, transitions, recoveries, errors."""
    return job_log_dir(home, job_id) / "controller.log"
