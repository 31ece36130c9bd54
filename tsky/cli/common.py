"""What every command shares: the console, settings, errors that end a command cleanly, the client."""

from __future__ import annotations

import asyncio
import getpass
import socket
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from tsky.contract.ids import user_hash
from tsky.spec.settings import Settings, SettingsError, load_settings, merge_settings
from tsky.spec.status import JobExitCode

if TYPE_CHECKING:
    from temporalio.client import Client

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

T = TypeVar("T")


class UsageError(Exception):
    """Bad input from the user: printed as one paragraph, exit code 2, nothing started."""


class NotFound(Exception):
    """A job, job name or pool that does not exist: one line, exit code 102 (SkyPilot's NOT_FOUND)."""


def fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]Error:[/] {message}", markup=True)
    raise typer.Exit(code)


def settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as err:
        fail(str(err))


def settings_with(configs: list[str]) -> Settings:
    """Settings with `--config` overrides for one command, as SkyPilot's flag: each item is a YAML file
    of settings (the shape of config.yaml) or `key.path=value`; later items win."""
    import yaml
    from rich.markup import escape

    overrides: dict[str, Any] = {}
    for item in configs:
        if "=" in item and not Path(item).is_file():
            key, _, raw = item.partition("=")
            value: Any = yaml.safe_load(raw) if raw else None
            for part in reversed(key.strip().split(".")):
                value = {part: value}
            layer = value
        else:
            try:
                layer = yaml.safe_load(Path(item).read_text())
            except (OSError, yaml.YAMLError) as err:
                fail(escape(f"--config {item}: not a readable YAML file nor key.path=value ({err})."))
            if not isinstance(layer, dict):
                fail(f"--config {item}: expected a mapping of settings sections (jobs:, local:, temporal:).")
        overrides = merge_settings(overrides, layer)
    try:
        return load_settings(overrides=overrides)
    except SettingsError as err:
        fail(escape(f"--config: {err}"))


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's async body; the errors a user can cause become clean messages."""
    from tsky.cli.waiting import NoWorkerError
    from tsky.client.codec import CodecKeyError
    from tsky.client.connect import ConnectError
    from tsky.client.embedded import EmbeddedError
    from tsky.client.pools import PoolUpdateRejected

    try:
        return asyncio.run(coro)
    except NotFound as err:
        fail(str(err), code=JobExitCode.NOT_FOUND)
    except (UsageError, SettingsError, CodecKeyError, PoolUpdateRejected) as err:
        fail(str(err))
    except (ConnectError, EmbeddedError, NoWorkerError) as err:
        fail(str(err), code=1)
    except KeyboardInterrupt:
        err_console.print("Interrupted.")
        raise typer.Exit(130) from None


async def client_for(s: Settings, *, start: bool = True) -> Client:
    """Connect, starting the embedded server and worker first when they are not running."""
    from tsky.client.connect import connect
    from tsky.client.embedded import ensure_up, read_server_state, worker_outdated

    if s.embedded and start:
        from tsky.cli.waiting import spinner

        before = read_server_state(s)
        outdated = worker_outdated(s)
        if before is None or not before.running():
            with spinner("Starting tsky's embedded Temporal server and worker (tsky server up)", announce=True):
                await asyncio.to_thread(ensure_up, s)
        else:
            if outdated:
                err_console.print(f"{outdated}: replacing it (jobs carry on)...")
            await asyncio.to_thread(ensure_up, s)
    return await connect(s)


def current_user() -> str:
    return getpass.getuser()


def current_user_hash() -> str:
    return user_hash(current_user(), socket.gethostname())


def ui_base(s: Settings) -> str | None:
    if s.temporal.ui_url:
        return s.temporal.ui_url.rstrip("/")
    if s.embedded:
        from tsky.client.embedded import read_server_state

        state = read_server_state(s)
        return state.ui_url if state else None
    return None


def workflow_url(s: Settings, workflow_id: str) -> str | None:
    base = ui_base(s)
    return f"{base}/namespaces/{s.temporal.namespace}/workflows/{workflow_id}" if base else None


# -- time formatting as SkyPilot's queue shows it ------------------------------------------------------


def ago(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "-"
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    for unit, size in (("day", 86400), ("hr", 3600), ("min", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "a few secs ago" if seconds >= 10 else "just now"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain, borderless, left-aligned table like SkyPilot's (easy to read and to grep)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


# SkyPilot's colours for managed-job statuses (sky/jobs/state.py); shown only on a terminal.
STATUS_COLORS = {
    "PENDING": "blue",
    "STARTING": "blue",
    "RUNNING": "green",
    "RECOVERING": "cyan",
    "SUCCEEDED": "green",
    "CANCELLING": "yellow",
    "CANCELLED": "yellow",
}


def status_color(status: str) -> str:
    return STATUS_COLORS.get(status, "red" if status.startswith("FAILED") else "")


def with_status_colors(text: str, column: str = "STATUS") -> Text:
    """A `table()` whose `column` cells are coloured by status (rich drops the colour off a terminal)."""
    lines = text.split("\n")
    styled = Text(text)
    start = lines[0].find(column)
    if start < 0:
        return styled
    offset = 0
    for line in lines:
        status = line[start:].split(" ", 1)[0] if len(line) > start else ""
        if color := status_color(status):
            styled.stylize(color, offset + start, offset + start + len(status))
        offset += len(line) + 1
    return styled
