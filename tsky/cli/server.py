"""`tsky server up|down|status`, `tsky worker`, `tsky dashboard`: the embedded stack and the Web UI."""

from __future__ import annotations

import asyncio
import webbrowser
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import quote

import typer

from tsky.cli.common import console, fail, settings, ui_base
from tsky.contract.names import WorkflowType
from tsky.spec.settings import Settings

server_app = typer.Typer(help="The embedded Temporal server and worker daemon.", no_args_is_help=True)


def _external(s: Settings) -> str:
    return (
        f"tsky uses the Temporal service at {s.temporal.address} (TSKY_TEMPORAL_ADDRESS / temporal.address); "
        "it never starts a server of its own then. Run workers there with `tsky worker`."
    )


def _print_status(s: Settings) -> bool:
    from tsky.client.embedded import read_server_state, read_worker_state, worker_outdated

    server = read_server_state(s)
    worker = read_worker_state(s)
    server_up = server is not None and server.running()
    worker_up = worker is not None and worker.running()
    if server is not None and server_up:
        console.print(f"Temporal server: running (pid {server.pid})")
        console.print(f"  gRPC address:  {server.address}")
        console.print(f"  Web UI:        {server.ui_url}")
    else:
        stale = " (stale pid file)" if server is not None and server.pid is not None else ""
        console.print(f"Temporal server: stopped{stale}")
    if worker is not None and worker_up:
        console.print(f"Worker:          running (pid {worker.pid}), log {s.home / 'logs' / 'worker.log'}")
        outdated = worker_outdated(s)
        loaded = (
            datetime.fromtimestamp(worker.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            if worker.started_at
            else "?"
        )
        console.print(
            f"Config:          {worker.config_file or s.config_file}, loaded {loaded} "
            + (f"({outdated}: the next tsky command replaces it)" if outdated else "(current)")
        )
    else:
        console.print(f"Worker:          stopped{' (stale pid file)' if worker is not None else ''}")
    if server_up:
        from tsky.cli.worker_status import print_live_status

        print_live_status(console, s)  # what the running workers use, asked from the server
    else:
        console.print(
            f"Worker limits:   launch concurrency {s.launch_concurrency()}, "
            f"watch concurrency {s.jobs.controller.watch_concurrency}, "
            f"max running jobs {s.jobs.controller.max_running_jobs or 'unlimited'} (this config)"
        )
    console.print(f"State:           {s.home}")
    return server_up and worker_up


@server_app.command()
def up() -> None:
    """Start the embedded Temporal server and worker (harmless if they already run)."""
    from tsky.client.embedded import EmbeddedError, start_server, start_worker

    s = settings()
    if not s.embedded:
        fail(_external(s))
    try:
        _, server_started = start_server(s)
        _, worker_started = start_worker(s)
    except EmbeddedError as err:
        fail(str(err), code=1)
    if not (server_started or worker_started):
        console.print("Already running.")
    _print_status(s)


@server_app.command()
def down() -> None:
    """Stop the embedded worker and server (jobs resume when they start again)."""
    from tsky.client.embedded import stop_all

    s = settings()
    if not s.embedded:
        fail(_external(s))
    from tsky.cli.waiting import spinner

    grace = s.worker.graceful_shutdown_seconds
    with spinner(f"Stopping the worker (running activities get up to {grace:.0f}s to hand over) and the server"):
        stopped = stop_all(s)
    console.print("Stopped " + " and ".join(stopped) + "." if stopped else "Nothing was running.")


@server_app.command()
def status() -> None:
    """Show the server's address, the Web UI URL, both pids and the worker's limits."""
    s = settings()
    if not s.embedded:
        from tsky.cli.worker_status import print_live_status

        console.print(_external(s))
        print_live_status(console, s)
        raise typer.Exit(0)
    raise typer.Exit(0 if _print_status(s) else 1)


def worker() -> None:
    """Run a worker in the foreground (the production form; many may run against one Temporal)."""
    from tsky.worker.main import run_worker

    s = settings()
    if s.embedded:
        from tsky.client.embedded import start_server

        start_server(s)
    asyncio.run(run_worker(s))


def dashboard(
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Only print the URL.")] = False,
) -> None:
    """Print (and open) the Temporal Web UI, filtered to tsky's managed jobs."""
    s = settings()
    base = ui_base(s)
    if base is None:
        fail("No Web UI known: start the embedded stack (`tsky server up`) or set TSKY_TEMPORAL_UI_URL.")
    query = quote(f"WorkflowType = '{WorkflowType.MANAGED_JOB}'")
    url = f"{base}/namespaces/{s.temporal.namespace}/workflows?query={query}"
    console.print(url)
    if not no_browser:
        webbrowser.open(url)


def register(root: typer.Typer) -> None:
    root.add_typer(server_app, name="server")
    root.command("worker")(worker)
    root.command("dashboard")(dashboard)
