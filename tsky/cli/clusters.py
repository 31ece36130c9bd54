"""`tsky status` (live clusters) and `tsky debug preempt` (the local simulator's preemption)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer

from tsky.cli.common import ago, console, err_console, fail, run, settings, table
from tsky.spec.settings import Settings
from tsky.spec.status import JobExitCode

if TYPE_CHECKING:
    from tsky.client.clusters import ClusterView

debug_app = typer.Typer(help="Tools for trying recovery on the local simulator.", no_args_is_help=True)


def status(
    all_infra: Annotated[
        bool,
        typer.Option("--all-infra", help="Every enabled infra (clouds, k8s, ssh pools), with each cluster's job."),
    ] = False,
) -> None:
    """List the live clusters tsky has launched on the local infra (or on every enabled infra)."""
    s = settings()
    if all_infra:
        run(_status_all_infra(s))
        return
    from tsky.client.clusters import local_clusters

    records = asyncio.run(local_clusters(s))
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


async def _status_all_infra(s: Settings) -> None:
    from datetime import UTC, datetime

    from tsky.client.clusters import UNKNOWN_JOB, survey
    from tsky.client.connect import ConnectError, connect

    try:
        client = await connect(s)
    except ConnectError as err:
        client = None
        err_console.print(f"Job states unknown: {err}")
    found = await survey(s, client)
    for infra, error in sorted(found.errors.items()):
        err_console.print(f"Could not list clusters on {infra}: {error}")
    if not found.clusters:
        console.print("No tsky clusters on any enabled infra.")
        return

    def job_cells(view: ClusterView) -> list[str]:
        if not view.ours:
            return ["(another tsky installation)", "-"]
        if view.job is None:
            return ["? (Temporal not reachable)", "?"]
        if view.job.status == UNKNOWN_JOB:
            return ["UNKNOWN (no such job)", "no"]
        return [view.job.status, "yes" if view.job.live else "no"]

    rows = [
        [
            v.record.name,
            "-" if v.record.job_id is None else str(v.record.job_id),
            *job_cells(v),
            f"{v.record.backend} ({v.record.region})",
            str(v.record.nodes),
            v.record.extra.get("instance_type", "-") + ("[Spot]" if v.record.extra.get("spot") == "True" else ""),
            v.record.state,
            ago(datetime.fromtimestamp(v.record.launched_at, UTC) if v.record.launched_at else None),
        ]
        for v in sorted(found.clusters, key=lambda v: (v.record.backend, v.record.name))
    ]
    headers = ["NAME", "JOB", "JOB STATUS", "JOB LIVE", "INFRA", "NODES", "INSTANCE", "STATUS", "LAUNCHED"]
    console.out(table(headers, rows))
    if any(v.orphaned for v in found.clusters):
        console.print("Clusters whose job is not live are torn down by the sweeper after its grace period.")


@debug_app.command()
def preempt(
    job_id: Annotated[int | None, typer.Argument(help="The managed job whose cluster to preempt.")] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Select the job by name.")] = None,
) -> None:
    """Preempt a job's local cluster as a cloud would: its processes die, its nodes report PREEMPTED.

    A job still starting is waited for until its cluster is up."""
    s = settings()
    if job_id is None and name is None:
        fail("Give a job id or --name.")
    names = run(_preempt_when_up(s, job_id, name))
    console.print(f"Preempted {', '.join(names)}; the job will recover.")


async def _preempt_when_up(s: Settings, job_id: int | None, name: str | None) -> list[str]:
    from tsky.cli.common import client_for
    from tsky.cli.jobs import _resolve_job as resolve_job
    from tsky.client import jobs as api
    from tsky.client.clusters import preempt_job

    client = await client_for(s, start=False)
    resolved = await resolve_job(client, job_id, name, running_only=True)
    while True:
        row = await api.get_job(client, resolved)
        if row is None:
            fail(f"Job {resolved} not found.", code=JobExitCode.NOT_FOUND)
        if row.status.is_terminal() or row.closed:
            fail(f"Job {resolved} has ended ({row.status.value}): nothing to preempt.")
        names = preempt_job(s, resolved)
        if not names:
            # A pool job runs on a worker of its pool, which no job owns: preempt the worker it is on.
            names = await _preempt_pool_worker(s, resolved)
        if names:
            return names
        await asyncio.sleep(0.5)


async def _preempt_pool_worker(s: Settings, job_id: int) -> list[str]:
    from tsky.cli.common import client_for
    from tsky.client.clusters import preempt_cluster_named
    from tsky.client.pools import job_worker

    name = await job_worker(await client_for(s, start=False), job_id)
    return [name] if name is not None and preempt_cluster_named(s, name) else []


def register(root: typer.Typer) -> None:
    root.command("status")(status)
    root.add_typer(debug_app, name="debug")
