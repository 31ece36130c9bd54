"""`tsky jobs pool status`: SkyPilot's Pools and Pool Workers tables (and `--json`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from tsky.cli.common import (
    NotFound,
    ago,
    client_for,
    console,
    duration,
    run,
    settings,
    table,
)
from tsky.contract.pool_state import PoolSnapshot, WorkerState

if TYPE_CHECKING:
    pass


def _resources(worker: WorkerState) -> str:
    """SkyPilot's RESOURCES cell: `1x(gpus=H100:1, cpus=26, mem=234, a3-highgpu-1g, ...)`."""
    c = worker.candidate
    if c is None:
        return "-"
    nodes = len(worker.cluster.nodes) if worker.cluster else c.num_nodes
    parts = [f"gpus={c.accelerators_label()}"] if c.accelerator else []
    if c.vcpus:
        parts.append(f"cpus={c.vcpus:g}")
    if c.memory_gb:
        parts.append(f"mem={c.memory_gb:g}")
    parts.append(c.instance_type + ("[Spot]" if c.use_spot else ""))
    return f"{nodes}x({', '.join(parts)}, ...)"


def _workers_cell(pool: PoolSnapshot) -> str:
    """ready / total, SkyPilot's WORKERS column (total leaves failed workers out)."""
    live = [w for w in pool.workers if w.live()]
    ready = [w for w in live if w.status.value in ("READY", "BUSY")]
    return f"{len(ready)}/{len(live)}"


def _pools_table(pools: list[PoolSnapshot], verbose: bool, now: datetime) -> str:
    headers = ["NAME", "VERSION", "UPTIME", "STATUS", "WORKERS"]
    if verbose:
        headers += ["AUTOSCALING_POLICY", "REQUESTED_RESOURCES"]
    rows = []
    for p in pools:
        uptime = duration((now - p.created_at).total_seconds()) if p.created_at else "-"
        row = [p.name, str(p.version), uptime, p.status.value, _workers_cell(p)]
        if verbose:
            row += [p.spec.describe() if p.spec else "-", p.requested]
        rows.append(row)
    return table(headers, rows)


def _workers_table(pools: list[PoolSnapshot], now: datetime) -> str:
    headers = ["POOL_NAME", "ID", "VERSION", "LAUNCHED", "INFRA", "RESOURCES", "STATUS", "USED_BY"]
    rows = []
    for p in pools:
        for w in sorted(p.workers, key=lambda w: w.worker_id):
            rows.append(
                [
                    p.name,
                    str(w.worker_id),
                    str(w.version),
                    ago(w.launched_at, now),
                    w.candidate.display_infra() if w.candidate else "-",
                    _resources(w),
                    w.status.value,
                    str(w.job_id) if w.job_id is not None else "-",
                ]
            )
    return table(headers, rows)


def status(
    names: Annotated[list[str] | None, typer.Argument(help="Only these pools.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More columns.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON records.")] = False,
    show_all: Annotated[bool, typer.Option("--all", "-a", help="All information in full (as -v).")] = False,
) -> None:
    """Show pools and their workers."""
    verbose = verbose or show_all
    s = settings()

    async def body() -> None:
        from tsky.client import pools as pool_api  # the Temporal client: only for commands that talk to it

        client = await client_for(s)
        pools = await pool_api.list_pools(client)
        if names:
            pools = [p for p in pools if p.name in names]
        if as_json:
            console.out(json.dumps([p.model_dump(mode="json") for p in pools], indent=2))
            return
        if names and (missing := [n for n in names if n not in {p.name for p in pools}]):
            raise NotFound(f"Pool(s) {', '.join(repr(n) for n in missing)} not found.")
        if not pools:
            console.print("No existing pools.")
            return
        now = datetime.now(UTC)
        console.print("[bold cyan]Pools[/]")
        console.out(_pools_table(pools, verbose, now))
        console.print()
        console.print("[bold cyan]Pool Workers[/]")
        if any(p.workers for p in pools):
            console.out(_workers_table(pools, now))
        else:
            console.print("No workers.")

    run(body())


# -- down --------------------------------------------------------------------------------------------
