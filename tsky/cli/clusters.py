"""`tsky status` (live clusters) and `tsky debug preempt` (the local simulator's preemption)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from tsky.activities.clouds import get_backend
from tsky.activities.clouds.local import preempt_job
from tsky.cli.common import ago, console, fail, settings, table

debug_app = typer.Typer(help="Tools for trying recovery on the local simulator.", no_args_is_help=True)


def status() -> None:
    """List the live clusters tsky has launched on the local infra."""
    s = settings()
    records = asyncio.run(get_backend("local", s).list_clusters())
    if not records:
        console.print("No live clusters.")
        return
    from datetime import UTC, datetime

    rows = [
        [
            r.name,
            "-" if r.job_id is None else str(r.job_id),
            f"{r.backend} ({r.region})",
            str(r.nodes),
            r.extra.get("instance_type", "-") + ("[Spot]" if r.extra.get("spot") == "True" else ""),
            r.state,
            ago(datetime.fromtimestamp(r.launched_at, UTC) if r.launched_at else None),
        ]
        for r in sorted(records, key=lambda r: r.name)
    ]
    console.out(table(["NAME", "JOB", "INFRA", "NODES", "INSTANCE", "STATUS", "LAUNCHED"], rows))


@debug_app.command()
def preempt(job_id: Annotated[int, typer.Argument(help="The managed job whose cluster to preempt.")]) -> None:
    """Preempt a job's local cluster as a cloud would: its processes die, its nodes report PREEMPTED."""
    names = preempt_job(settings(), job_id)
    if not names:
        fail(f"Job {job_id} has no live cluster on the local infra.")
    console.print(f"Preempted {', '.join(names)}; the job will recover.")


def register(root: typer.Typer) -> None:
    root.command("status")(status)
    root.add_typer(debug_app, name="debug")
