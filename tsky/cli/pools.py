"""`tsky jobs pool ...`: apply, status, down, logs — SkyPilot's pool commands and output (docs/pools.md).

Also the pool side of `tsky jobs launch -p NAME` (its notices, `prepare_pool_launch`).
"""

from __future__ import annotations

import asyncio
import re
import secrets as random_hex
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tsky.cli.common import (
    NotFound,
    client_for,
    console,
    current_user,
    err_console,
    fail,
    run,
    settings,
)
from tsky.cli.pool_status import status
from tsky.contract.job import JobPolicy
from tsky.contract.logs import pool_worker_log_key
from tsky.contract.pool_state import PoolApply, PoolVersion, as_pool_job
from tsky.spec.envs import env_overrides, secret_overrides
from tsky.spec.errors import SpecError
from tsky.spec.loader import apply_overrides, load_pool
from tsky.spec.pool import PoolSpec
from tsky.spec.requests import requested_label
from tsky.spec.secrets import load_key, seal
from tsky.spec.settings import Settings
from tsky.spec.status import JobExitCode
from tsky.spec.task import Pipeline, Task

if TYPE_CHECKING:
    from temporalio.client import Client

app = typer.Typer(help="Pools of warm workers that managed jobs run on.", no_args_is_help=True)

# SkyPilot's cluster-name rule, which pool names follow.
_NAME_RE = re.compile(r"[a-zA-Z]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?")
_DOWN_WAIT_SECONDS = 300  # SkyPilot waits this long for the cancelled jobs to end


@dataclass
class _TaskFlags:
    """`apply`'s task overrides: the same as `tsky jobs launch`'s, minus --name."""

    env: list[str]
    env_file: Path | None
    secret: list[str]
    secret_file: Path | None
    workdir: str | None
    infra: str | None
    use_spot: bool | None
    cpus: str | None
    memory: str | None
    gpus: str | None
    instance_type: str | None
    num_nodes: int | None


def _load(path: Path, name: str, flags: _TaskFlags) -> tuple[PoolSpec, Task, list[str]]:
    warnings: list[str] = []
    spec, task = load_pool(
        path,
        env_overrides=env_overrides(flags.env, [flags.env_file] if flags.env_file else None),
        secret_overrides=secret_overrides(flags.secret, [flags.secret_file] if flags.secret_file else None),
        warnings=warnings,
    )
    pipeline, more = apply_overrides(
        Pipeline(name=name, tasks=[task]),
        infra=flags.infra,
        cpus=flags.cpus,
        memory=flags.memory,
        gpus=flags.gpus,
        instance_type=flags.instance_type,
        use_spot=flags.use_spot,
        num_nodes=flags.num_nodes,
        workdir=flags.workdir,
    )
    return spec, pipeline.tasks[0], warnings + more


def _print_created(name: str) -> None:
    console.print(f"Pool name: {name}")
    console.print("📋 Useful Commands", style="bold cyan")
    console.print(f"├── To submit jobs to the pool: tsky jobs launch --pool {name} <yaml_file>")
    console.print(f"├── To submit multiple jobs:    tsky jobs launch --pool {name} --num-jobs 10 <yaml_file>")
    console.print(f"├── To check the pool status:   tsky jobs pool status {name}")
    console.print(f"├── To terminate the pool:      tsky jobs pool down {name}")
    console.print(f"└── To update the number of workers: tsky jobs pool apply --pool {name} --workers 5")
    console.print()
    console.print(f"[green]✓ Successfully created pool {name!r}.[/]")


@app.command()
def apply(
    pool_yaml: Annotated[Path | None, typer.Argument(help="A task YAML with a `pool:` section.")] = None,
    pool: Annotated[str | None, typer.Option("--pool", "-p", help="The pool's name (default: generated).")] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Resize an existing pool to N workers (needs -p, no YAML).")
    ] = None,
    mode: Annotated[
        str, typer.Option("--mode", help="How workers are replaced on update: rolling (blue_green: not yet).")
    ] = "rolling",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Skip the confirmation prompt.")] = False,
    env: Annotated[list[str] | None, typer.Option("--env", help="KEY=VALUE, or KEY to take it from here.")] = None,
    env_file: Annotated[Path | None, typer.Option("--env-file", help="A dotenv file of envs.")] = None,
    secret: Annotated[list[str] | None, typer.Option("--secret", help="KEY=VALUE, or KEY from here.")] = None,
    secret_file: Annotated[Path | None, typer.Option("--secret-file", help="A dotenv file of secrets.")] = None,
    workdir: Annotated[str | None, typer.Option("--workdir", help="Override the workdir.")] = None,
    infra: Annotated[str | None, typer.Option("--infra", help="cloud[/region[/zone]], k8s/<ctx>, ssh/<pool>.")] = None,
    use_spot: Annotated[bool | None, typer.Option("--use-spot/--no-use-spot", help="Use spot instances.")] = None,
    cpus: Annotated[str | None, typer.Option("--cpus", help="vCPUs per node: N or N+.")] = None,
    memory: Annotated[str | None, typer.Option("--memory", help="Memory per node in GB: N or N+.")] = None,
    gpus: Annotated[str | None, typer.Option("--gpus", help="Accelerators per node, e.g. A100:8.")] = None,
    instance_type: Annotated[str | None, typer.Option("--instance-type", "-t", help="Instance type.")] = None,
    num_nodes: Annotated[int | None, typer.Option("--num-nodes", help="Number of nodes per worker.")] = None,
) -> None:
    """Create a pool from a pool YAML, or update it (a new version): workers are set up once, then take jobs."""
    from tsky.cli.plan_table import render_plan
    from tsky.client.infra import plan_for_task

    if mode == "blue_green":
        fail(
            "--mode blue_green is not supported yet: tsky updates pools with --mode rolling (the default). To have "
            "new workers READY before the old ones go, apply the new YAML as a second pool (tsky jobs pool apply -p "
            "NEW new.yaml), launch onto it, then take the old one down (tsky jobs pool down OLD)."
        )
    if mode != "rolling":
        fail(f"--mode {mode!r} is not a mode: use rolling (the default).")
    if workers is not None and pool_yaml is not None:
        fail("Cannot specify both --workers and POOL_YAML: give a YAML to apply, or -p NAME --workers N to resize.")
    if workers is not None and pool is None:
        # SkyPilot's words, which scripts grep.
        fail("A pool name must be provided to update the number of workers. Use -p/--pool NAME --workers N.")
    if workers is None and pool_yaml is None:
        fail("Give a pool YAML (tsky jobs pool apply -p NAME pool.yaml), or -p NAME --workers N to resize a pool.")
    if workers is not None and workers < 0:
        fail(f"--workers must be at least 0 (got {workers}).")
    name = pool or f"tsky-pool-{random_hex.token_hex(2)}"
    if not _NAME_RE.fullmatch(name):
        fail(
            f"Invalid pool name {name!r}: it must start with a letter, end with a letter or digit, and hold only "
            "letters, digits, '-', '_' and '.'."
        )
    s = settings()

    if pool_yaml is not None:
        flags = _TaskFlags(
            env or [], env_file, secret or [], secret_file, workdir, infra, use_spot, cpus, memory, gpus,
            instance_type, num_nodes,
        )  # fmt: skip
        try:
            spec, task, warnings = _load(pool_yaml, name, flags)
        except SpecError as err:
            fail(str(err))
        from tsky.client import pools as pool_api

        sealed = seal(task.secrets, load_key(s.home, create=True)) if task.secrets else {}
        req = PoolApply(
            task=task,
            spec=spec,
            sealed_secrets=sealed,
            fingerprint=pool_api.fingerprint(task),
            user=current_user(),
            policy=JobPolicy.from_settings(s),
        )
        console.print("Pool spec:")
        console.print(f"Worker policy:  {spec.describe()}")
        console.print()
        result = plan_for_task(task, s)
        if not yes or result.infeasible_reason or not result.candidates:
            console.print("Each pool worker will use the following resources (estimated):")
            render_plan(console, task.name, task.num_nodes, result)
        if result.infeasible_reason or not result.candidates:
            fail(f"Nothing was applied: {result.infeasible_reason or 'no resources satisfy the request.'}")
        for warning in warnings:
            err_console.print(f"[yellow]Warning: {warning}[/]")
    else:
        assert workers is not None
        version = run(_current(s, name))
        try:
            spec = PoolSpec.model_validate({**version.spec.model_dump(exclude_none=True), "workers": workers})
        except ValueError as err:
            fail(f"--workers {workers}: {err}")
        req = PoolApply(
            task=version.task,
            spec=spec,
            sealed_secrets=version.sealed_secrets,
            fingerprint=version.fingerprint,
            user=current_user(),
            policy=JobPolicy.from_settings(s),
        )
        console.print(f"Worker policy:  {spec.describe()}")
    if not yes:
        typer.confirm(f"Applying config to pool {name!r}. Proceed?", default=True, abort=True)

    async def body() -> None:
        from tsky.client import pools as pool_api  # the Temporal client: only for commands that talk to it

        client = await client_for(s)
        result = await pool_api.apply(client, name, req)
        if result.created:
            _print_created(name)
            return
        console.print(f"Pool {name!r} update scheduled.")
        console.print(f"[green]Successfully updated pool {name!r} to version {result.version}.[/]")
        if not result.in_place:
            console.print(f"Workers are updating, use `tsky jobs pool logs {name} <worker_id>` to see their setup.")

    run(body())


async def _current(s: Settings, name: str) -> PoolVersion:
    from tsky.client import pools as pool_api

    client = await client_for(s)
    version = await pool_api.current_version(client, name)
    if version is None:
        raise NotFound(f"Pool {name!r} not found: create it with `tsky jobs pool apply -p {name} pool.yaml`.")
    return version


# -- status ------------------------------------------------------------------------------------------


app.command()(status)  # registered here, after apply: SkyPilot's order in `tsky jobs pool -h`


@app.command()
def down(
    names: Annotated[list[str] | None, typer.Argument(help="The pools to take down.")] = None,
    all_pools: Annotated[bool, typer.Option("--all", "-a", help="Every pool.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Skip the confirmation prompts.")] = False,
    purge: Annotated[
        bool, typer.Option("--purge", "-p", help="Also succeed for pools already gone (failed ones included).")
    ] = False,
) -> None:
    """Take pools down: cancel their waiting and running jobs, tear every worker down.

    A worker whose teardown fails never stops the pool from ending (it is reported FAILED_CLEANUP), so
    --purge has only to skip the pools that no longer exist."""
    if bool(names) == all_pools:
        fail("Give pool names, or --all (not both).")
    s = settings()

    async def body() -> int:
        from tsky.client import jobs as api  # the Temporal client: only for commands that talk to it
        from tsky.client import pools as pool_api

        client = await client_for(s)
        existing = {p.name: p for p in await pool_api.list_pools(client)}
        targets = sorted(existing) if all_pools else list(names or [])
        # Idempotent, as SkyPilot's: a pool already down is nothing to do, so scripts can clean up twice
        # (--purge only makes that explicit).
        for name in [n for n in targets if n not in existing]:
            console.print(f"Pool {name!r} not found. Skipped.")
        targets = [n for n in targets if n in existing]
        if not targets:
            console.print("No pool to terminate.")
            return 0
        listed = ", ".join(repr(n) for n in targets)
        jobs = [j for n in targets for j in await pool_api.pool_jobs(client, n)]
        if jobs:
            ids = ", ".join(str(j.job_id) for j in jobs)
            err_console.print(
                f"[yellow]Pool(s) has {len(jobs)} nonterminal jobs: {ids} so it is not yet safe to down.[/]"
            )
            if not yes and not typer.confirm("Cancel these jobs?", default=False):
                raise typer.Abort()
            await api.cancel(client, [j.job_id for j in jobs])
            from tsky.cli.waiting import spinner, with_worker

            with spinner(f"Waiting for the {len(jobs)} cancelled jobs to end"):
                await with_worker(client, s, _wait_jobs_ended(client, targets))
        if not yes:
            typer.confirm(f"Terminating pool(s) {listed}. Proceed?", default=True, abort=True)
        for name in targets:
            await pool_api.down(client, name)
            console.print(f"Pool {name!r} is scheduled to be terminated.")
        return 0

    raise typer.Exit(run(body()))


async def _wait_jobs_ended(client: Client, pools: list[str]) -> None:
    from tsky.client import pools as pool_api

    deadline = time.monotonic() + _DOWN_WAIT_SECONDS
    while time.monotonic() < deadline:
        if not [j for n in pools for j in await pool_api.pool_jobs(client, n)]:
            return
        await asyncio.sleep(2)
    err_console.print("[yellow]Some jobs are still ending; the pool tells any that remain it is gone.[/]")


# -- logs --------------------------------------------------------------------------------------------


@app.command()
def logs(
    pool: Annotated[str, typer.Argument(help="The pool.")],
    worker_ids: Annotated[
        list[int] | None, typer.Argument(help="Workers (IDs in `tsky jobs pool status`); default: all.")
    ] = None,
    do_follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Keep streaming while workers are being set up.")
    ] = True,
    controller: Annotated[
        bool, typer.Option("--controller", help="The pool's view of its workers instead of their setup output.")
    ] = False,
    tail: Annotated[int | None, typer.Option("--tail", help="Start with only the last N lines.")] = None,
) -> None:
    """Print pool workers' setup output (or, with --controller, the pool's account of its workers)."""
    s = settings()
    if tail is not None and tail < 0:
        fail(f"--tail must be at least 0 (got {tail}).")
    if controller:
        raise typer.Exit(run(_follow_pool_controller(s, pool, do_follow)))
    raise typer.Exit(run(_worker_setup_logs(s, pool, list(worker_ids or []), tail, do_follow)))


def _print_lines(data: bytes, tail: int | None) -> int:
    """Print the complete lines of `data` (its last `tail` only, if given); returns the offset printed up to."""
    end = data.rfind(b"\n") + 1
    lines = data[:end].splitlines(keepends=True)
    shown = lines if tail is None else lines[len(lines) - tail :] if tail else []
    console.out(b"".join(shown).decode(errors="replace"), end="")
    return end


_SETTING_UP = frozenset({"PENDING", "PROVISIONING", "STARTING"})


async def _worker_setup_logs(s: Settings, pool: str, ids: list[int], tail: int | None, follow: bool) -> int:
    """Print the workers' setup logs from the log store; with `follow`, keep streaming while any of them
    is still being set up. Without ids: every worker the pool has."""
    from tsky.client.logs import log_store

    store = log_store(s)
    snapshot = None
    if not ids or follow:
        from tsky.client import pools as pool_api  # the Temporal client: only when the pool must be asked

        client = await client_for(s)
        snapshot = await pool_api.get_pool(client, pool)
        if snapshot is None and not ids:
            raise NotFound(f"Pool {pool!r} not found.")
        if not ids and snapshot is not None:
            ids = sorted(w.worker_id for w in snapshot.workers)
    offsets: dict[str, int] = {}
    for worker_id in ids:
        key = pool_worker_log_key(pool, worker_id)
        offsets[key] = _print_lines(await store.read(key), tail)
    found = any(offsets.values())
    while follow and snapshot is not None:
        workers = [w for w in snapshot.workers if w.worker_id in ids]
        if not any(w.status.value in _SETTING_UP for w in workers):
            break
        await asyncio.sleep(1)
        for key, offset in offsets.items():
            offsets[key] = offset + _print_lines(await store.read(key, offset), None)
        found = found or any(offsets.values())
        snapshot = await pool_api.get_pool(client, pool)
    if not found:
        which = f"worker {ids[0]}" if len(ids) == 1 else "any worker"
        raise NotFound(f"No setup log for {which} of pool {pool!r} (yet).")
    return 0


async def _follow_pool_controller(s: Settings, pool: str, follow: bool) -> int:
    """One line per worker state the pool reports (and per change, with follow), until Ctrl-C or the
    pool is gone: tsky's pool keeps its decisions in its workflow, not in a log file."""
    from tsky.client import pools as pool_api  # the Temporal client: only for commands that talk to it

    client = await client_for(s)
    seen: dict[int, str] = {}
    found = False
    while True:
        snapshot = await pool_api.get_pool(client, pool)
        if snapshot is None:
            if not found:
                raise NotFound(f"Pool {pool!r} not found.")
            console.print(f"Pool {pool!r} is down.")
            return 0
        found = True
        stamp = datetime.now(UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")
        for w in snapshot.workers:
            line = f"Worker {w.worker_id} ({w.cluster_name}, version {w.version}): {w.status.value}"
            line += f", job {w.job_id}" if w.job_id is not None else ""
            line += f" - {w.reason}" if w.reason else ""
            if seen.get(w.worker_id) != line:
                seen[w.worker_id] = line
                console.print(f"{stamp} | {line}")
        if not follow:
            return 0
        await asyncio.sleep(2)


# -- `tsky jobs launch -p` ---------------------------------------------------------------------------


def prepare_pool_launch(pool: str, num_jobs: int, pipeline: Pipeline, *, yes: bool) -> Pipeline:
    """SkyPilot's notices for a launch onto a pool; the pipeline without what a pool job ignores (setup,
    workdir, file mounts). An unknown pool is a usage error."""
    s = settings()

    async def exists() -> bool:
        from tsky.client import pools as pool_api  # the Temporal client: only for commands that talk to it

        client = await client_for(s)
        return await pool_api.get_pool(client, pool) is not None

    if not run(exists()):
        message = f"Pool {pool!r} not found. Create it with `tsky jobs pool apply -p {pool} pool.yaml`."
        fail(message, code=JobExitCode.NOT_FOUND)
    console.print(f"Submitting to pool {pool!r} with {num_jobs} job{'s' if num_jobs != 1 else ''}.")
    tasks = pipeline.tasks
    ignored = [
        label
        for label, present in (
            ("setup", any(t.setup for t in tasks)),
            ("workdir", any(t.workdir for t in tasks)),
            ("file_mounts", any(t.file_mounts for t in tasks)),
        )
        if present
    ]
    if ignored:
        err_console.print(
            f"[yellow]{'/'.join(ignored)} will be ignored when submit jobs to pool. To update a pool, please use "
            f"`tsky jobs pool apply -p {pool} new-pool.yaml`.[/]"
        )
    if not yes:
        first = tasks[0]
        console.print(f"Managed job {pipeline.name!r} will be launched on (estimated):")
        console.print(
            f"Use resources from pool {pool!r}: {requested_label(first.num_nodes, first.requests().options)}."
        )
    return as_pool_job(pipeline)
