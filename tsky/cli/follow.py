"""Following a job: print its output from the log store as it grows, across tasks and recoveries,
until the job ends. Used by `tsky jobs launch` (without -d) and `tsky jobs logs`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from rich.console import Console
from temporalio.client import Client

from tsky.cli.waiting import with_worker
from tsky.client.jobs import JobRow, get_job
from tsky.client.logs import LogStore, log_store
from tsky.contract.logs import controller_log_key, phase_log_key
from tsky.spec.settings import Settings
from tsky.spec.status import ManagedJobStatus

_POLL_SECONDS = 0.5
_Reader = Callable[[str, int], Awaitable[bytes]]


@dataclass
class _Cursor:
    offsets: dict[str, int] = field(default_factory=dict)

    async def skip_to_tail(self, read: _Reader, keys: list[str], lines: int, out: Console) -> None:
        """Print only the last `lines` complete lines of these logs (in order) and mark all as read."""
        chunks: list[bytes] = []
        for key in keys:
            data = await read(key, 0)
            end = data.rfind(b"\n") + 1
            chunks += data[:end].splitlines(keepends=True)
            self.offsets[key] = end
        shown = chunks[len(chunks) - lines :] if lines else []
        out.out(b"".join(shown).decode(errors="replace"), end="", highlight=False)

    async def drain(self, read: _Reader, key: str, out: Console) -> None:
        """Print what the log `key` gained since the last call (whole lines only while it may still grow)."""
        offset = self.offsets.get(key, 0)
        data = await read(key, offset)
        end = data.rfind(b"\n") + 1
        if end:
            out.out(data[:end].decode(errors="replace"), end="", highlight=False)
            self.offsets[key] = offset + end


def _attempt_logs(row: JobRow, task_filter: int | None) -> list[str]:
    keys = []
    for task in row.tasks:
        if task_filter is not None and task.index != task_filter:
            continue
        for attempt in range(task.attempt_count):
            keys += [phase_log_key(row.job_id, task.index, attempt, p) for p in ("setup", "run")]
    return keys


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
    tail: int | None = None,
) -> ManagedJobStatus | None:
    """Print the job's logs; with `follow`, keep going until the job ends. Returns its last status
    (None if the job does not exist). `tail`: start with only the last N lines of what exists. A follow
    ends with NoWorkerError when no worker is left to move the job on."""
    stream = _stream(client, settings, job_id, out, task=task, controller=controller, follow=follow, tail=tail)
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
    tail: int | None,
) -> ManagedJobStatus | None:
    cursor = _Cursor()
    logs: LogStore = log_store(settings)
    seen: dict[int, tuple[ManagedJobStatus, int]] = {}
    while True:
        row = await get_job(client, job_id)
        if row is None:
            return None
        if tail is not None:
            if controller:
                await cursor.skip_to_tail(logs.read_lines, [controller_log_key(job_id)], tail, out)
            else:
                await cursor.skip_to_tail(logs.read, _attempt_logs(row, task), tail, out)
            tail = None
        if controller:
            await cursor.drain(logs.read_lines, controller_log_key(job_id), out)
        else:
            # Output first: what a task printed before it ended comes before the banner of what followed.
            for key in _attempt_logs(row, task):
                await cursor.drain(logs.read, key, out)
            if follow:
                _banner(row, seen, out)
        if row.closed or not follow:
            return row.status
        held = next((t for t in row.tasks if t.held_until), None)
        if held is not None and row.status.is_terminal():
            # The job has ended; only its debug hold goes on (`--keep-on-failure`): stop following.
            out.print(
                f"Task {held.index} ({held.name}) failed; its cluster is {held.details}. How to get on it: "
                f"`tsky jobs logs --controller {job_id}`; `tsky jobs cancel {job_id}` ends the hold."
            )
            return row.status
        await asyncio.sleep(_POLL_SECONDS)
