"""Following a job: print its output from the log store as it grows, across tasks and recoveries,
until the job ends. Used by `tsky jobs launch` (without -d) and `tsky jobs logs`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from temporalio.client import Client

from tsky.cli.api import JobRow, get_job
from tsky.cli.waiting import with_worker
from tsky.spec.logs import controller_log, phase_log
from tsky.spec.settings import Settings
from tsky.spec.status import ManagedJobStatus

_POLL_SECONDS = 0.5


@dataclass
class _Cursor:
    offsets: dict[Path, int] = field(default_factory=dict)

    def drain(self, path: Path, out: Console) -> None:
        """Print what `path` gained since the last call (whole lines only while it may still grow)."""
        offset = self.offsets.get(path, 0)
        try:
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        if end:
            out.out(data[:end].decode(errors="replace"), end="", highlight=False)
            self.offsets[path] = offset + end


def _attempt_logs(home: Path, row: JobRow, task_filter: int | None) -> list[Path]:
    paths = []
    for task in row.tasks:
        if task_filter is not None and task.index != task_filter:
            continue
        for attempt in range(task.attempt_count):
            paths += [phase_log(home, row.job_id, task.index, attempt, p) for p in ("setup", "run")]
    return paths


def _banner(row: JobRow, seen: dict[int, tuple[ManagedJobStatus, int]], out: Console) -> None:
    """One line when a task changes status in a way a user watching the logs should know about."""
    for task in row.tasks:
        before = seen.get(task.index)
        now = (task.status, task.attempt_count)
        if before == now:
            continue
        seen[task.index] = now
        label = f"task {task.index} ({task.name})" if len(row.tasks) > 1 else "job"
        if task.status is ManagedJobStatus.RECOVERING:
            out.print(f"[yellow]⚙︎ The {label} is recovering: {task.details or 'cluster preempted or failed'}[/]")
        elif task.status is ManagedJobStatus.PENDING and task.details:
            out.print(f"[yellow]⚙︎ The {label} is waiting: {task.details}[/]")
        elif task.status is ManagedJobStatus.STARTING and (before is None or before[0] is not task.status):
            out.print(f"[cyan]⚙︎ Launching the {label}...[/]")


async def follow(
    client: Client,
    settings: Settings,
    job_id: int,
    out: Console,
    *,
    task: int | None = None,
    controller: bool = False,
    follow: bool = True,
) -> ManagedJobStatus | None:
    """Print the job's logs; with `follow`, keep going until the job ends. Returns its last status
    (None if the job does not exist). A follow ends with NoWorkerError when no worker is left to move
    the job on."""
    stream = _stream(client, settings, job_id, out, task=task, controller=controller, follow=follow)
    return await with_worker(client, settings, stream) if follow else await stream


async def _stream(
    client: Client,
    settings: Settings,
    job_id: int,
    out: Console,
    *,
    task: int | None,
    controller: bool,
    follow: bool,
) -> ManagedJobStatus | None:
    cursor = _Cursor()
    seen: dict[int, tuple[ManagedJobStatus, int]] = {}
    while True:
        row = await get_job(client, job_id)
        if row is None:
            return None
        if controller:
            cursor.drain(controller_log(settings.home, job_id), out)
        else:
            # Output first: what a task printed before it ended comes before the banner of what followed.
            for path in _attempt_logs(settings.home, row, task):
                cursor.drain(path, out)
            if follow:
                _banner(row, seen, out)
        if row.closed or not follow:
            return row.status
        await asyncio.sleep(_POLL_SECONDS)
