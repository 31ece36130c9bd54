"""`tsky jobs ...`: launch, queue, logs, cancel — SkyPilot's managed-jobs commands and output."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

import tsky.cli.launch_options as lo
from tsky.cli.common import (
    NotFound,
    UsageError,
    client_for,
    console,
    current_user,
    err_console,
    fail,
    run,
    settings,
    workflow_url,
)
from tsky.cli.queue import queue
from tsky.contract.activity_io import STOP_GRACE_SECONDS
from tsky.contract.ids import job_workflow_id
from tsky.contract.job import DEFAULT_GRACEFUL_TIMEOUT_SECONDS
from tsky.spec.settings import Settings
from tsky.spec.status import JobExitCode, ManagedJobStatus

if TYPE_CHECKING:
    from tsky.client import jobs as api

app = typer.Typer(help="Managed jobs: launch, queue, logs, cancel.", no_args_is_help=True)


def _useful_commands(job_id: int, url: str | None) -> None:
    console.print("📋 Useful Commands", style="bold cyan")
    console.print(f"Managed Job ID: {job_id}")
    if url:
        console.print(f"├── View in the Temporal Web UI:  {url}")
    console.print(f"├── To cancel the job:            tsky jobs cancel {job_id}")
    console.print(f"├── To stream job logs:           tsky jobs logs {job_id}")
    console.print(f"├── To stream controller logs:    tsky jobs logs --controller {job_id}")
    console.print("└── To view all managed jobs:     tsky jobs queue")


@app.command()
def launch(
    entrypoint: Annotated[list[str], typer.Argument(help="A task YAML, or a command to run as an inline task.")],
    name: Annotated[str | None, typer.Option("--name", "-n", help="Job name (overrides the YAML's).")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Skip the confirmation prompt.")] = False,
    detach_run: Annotated[bool, typer.Option("--detach-run", "-d", help="Return once the job is submitted.")] = False,
    dryrun: Annotated[bool, typer.Option("--dryrun", help="Show the plan; launch nothing.")] = False,
    env: lo.EnvOption = None,
    env_file: lo.EnvFileOption = None,
    secret: lo.SecretOption = None,
    secret_file: lo.SecretFileOption = None,
    workdir: Annotated[str | None, typer.Option("--workdir", help="Override the workdir.")] = None,
    infra: lo.InfraOption = None,
    use_spot: lo.UseSpotOption = None,
    cpus: lo.CpusOption = None,
    memory: lo.MemoryOption = None,
    gpus: lo.GpusOption = None,
    instance_type: lo.InstanceTypeOption = None,
    num_nodes: lo.NumNodesOption = None,
    disk_size: lo.DiskSizeOption = None,
    disk_tier: lo.DiskTierOption = None,
    network_tier: lo.NetworkTierOption = None,
    ports: lo.PortsOption = None,
    priority: lo.PriorityOption = None,
    git_url: lo.GitUrlOption = None,
    git_ref: lo.GitRefOption = None,
    config: lo.ConfigOption = None,
    async_call: Annotated[
        bool, typer.Option("--async/--no-async", help="Return once submitted, as -d (tsky has no API server).")
    ] = False,
    job_group: Annotated[str | None, typer.Option("--job-group", help="Job groups: not supported yet.")] = None,
    no_job_group: Annotated[
        bool, typer.Option("--no-job-group", help="Do not attach to a job group (default).")
    ] = False,
    image_id: lo.ImageIdOption = None,
    job_recovery: lo.JobRecoveryOption = None,
    pool: lo.PoolOption = None,
    num_jobs: Annotated[int, typer.Option("--num-jobs", help="Submit N copies (ranks 0..N-1).")] = 1,
    max_duration: Annotated[
        str | None, typer.Option("--max-duration", help="Stop each task after this wall time: 10h, 30m, 1h30m.")
    ] = None,
    keep_on_failure: Annotated[
        str | None,
        typer.Option("--keep-on-failure", help="Keep a failed task's cluster this long for debugging: 30m."),
    ] = None,
    max_cost: Annotated[
        str | None, typer.Option("--max-cost", help="Stop the job once its estimated cost passes this many $.")
    ] = None,
    # Orchestration (docs/orchestration.md)
    after: Annotated[
        list[str] | None, typer.Option("--after", help="Start once these jobs SUCCEEDED: ID[,ID...].")
    ] = None,
    after_any: Annotated[
        bool, typer.Option("--after-any", help="With --after: start once they ended, whatever their status.")
    ] = False,
    notify: lo.NotifyOption = None,
) -> None:
    """Launch a managed job from a SkyPilot task YAML (or a pipeline); stream its logs until it ends."""
    from tsky.cli.launching import LaunchOptions, launch_job

    if job_group is not None:
        fail(
            f"--job-group {job_group}: job groups (SkyPilot 0.14's dynamic job trees) are not supported yet in "
            "tsky. Launch the task as a job of its own (drop --job-group), or as a task of a pipeline YAML."
        )

    options = LaunchOptions(
        entrypoint=entrypoint,
        name=name,
        yes=yes,
        detach_run=detach_run or async_call,
        dryrun=dryrun,
        env=env or [],
        env_file=env_file,
        secret=secret or [],
        secret_file=secret_file,
        workdir=workdir,
        infra=infra,
        use_spot=use_spot,
        cpus=cpus,
        memory=memory,
        gpus=gpus,
        instance_type=instance_type,
        num_nodes=num_nodes,
        disk_size=disk_size,
        disk_tier=disk_tier,
        network_tier=network_tier,
        ports=ports,
        priority=priority,
        git_url=git_url,
        git_ref=git_ref,
        config=config or [],
        image_id=image_id,
        job_recovery=job_recovery,
        pool=pool,
        num_jobs=num_jobs,
        max_duration=max_duration,
        keep_on_failure=keep_on_failure,
        max_cost=max_cost,
        after=after or [],
        after_any=after_any,
        notify=notify or [],
    )
    raise typer.Exit(launch_job(options))


app.command()(queue)  # registered here, between launch and logs: SkyPilot's order in `tsky jobs -h`


async def _resolve_job(client: object, job_id: int | None, name: str | None, *, running_only: bool) -> int:
    from temporalio.client import Client

    from tsky.client import jobs as api

    assert isinstance(client, Client)
    if job_id is not None and name is not None:
        raise UsageError("Give a job id or --name, not both.")
    if name is not None:
        matches = await api.jobs_named(client, name, running_only=running_only)
        if not matches and running_only:
            matches = await api.jobs_named(client, name, running_only=False)
            matches = matches[-1:]
        if not matches:
            raise NotFound(f"No managed job found with name {name!r}.")
        if len(matches) > 1:
            ids = ", ".join(str(m.job_id) for m in matches)
            raise UsageError(f"Multiple running jobs found with name {name!r}: {ids}. Give the job id instead.")
        return matches[0].job_id
    if job_id is None:
        rows = await api.list_jobs(client, user=current_user())
        if not rows:
            raise NotFound("No managed job found: launch one with `tsky jobs launch`.")
        return rows[0].job_id
    return job_id


@app.command()
def logs(
    job_id: Annotated[int | None, typer.Argument(help="Job id (default: your latest job).")] = None,
    task: Annotated[str | None, typer.Argument(help="Task index or name (pipelines).")] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Select the job by name.")] = None,
    do_follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Keep streaming until the job ends.")] = True,
    controller: Annotated[bool, typer.Option("--controller", help="The job's controller log (its decisions).")] = False,
    attempt: Annotated[int | None, typer.Option("--attempt", help="Only this attempt's output (0 = first).")] = None,
    tail: Annotated[int | None, typer.Option("--tail", help="Start with only the last N lines.")] = None,
    sync_down: Annotated[
        bool, typer.Option("--sync-down", "-s", help="Download every log of the job to ~/sky_logs/managed_jobs/.")
    ] = False,
    refresh: Annotated[
        bool, typer.Option("--refresh", "-r", help="Start the embedded stack if stopped (tsky always does).")
    ] = False,
) -> None:
    """Stream a managed job's output (or its controller log) until it ends."""
    if tail is not None and tail < 0:
        fail(f"--tail must be at least 0 (got {tail}).")
    s = settings()

    async def body() -> int:
        from tsky.client import jobs as api  # the Temporal client: imported only by commands that talk to it

        client = await client_for(s)
        resolved = await _resolve_job(client, job_id, name, running_only=True)
        row = await api.get_job(client, resolved)
        if row is None:
            err_console.print(f"Job {resolved} not found.")
            return JobExitCode.NOT_FOUND
        task_index = _task_index(row, task)
        if sync_down:
            return await _sync_down(s, row)
        if attempt is not None:
            return await _print_attempt(s, row, task_index, attempt)
        from tsky.cli.follow import follow

        status = await follow(
            client, s, resolved, console, task=task_index, controller=controller, follow=do_follow, tail=tail
        )
        if status is None:
            return JobExitCode.NOT_FOUND
        if status.is_terminal() and do_follow and not controller:
            console.print(finished_line(resolved, status))
        return status.exit_code() if status.is_terminal() else JobExitCode.NOT_FINISHED

    raise typer.Exit(run(body()))


def _task_index(row: api.JobRow, task: str | None) -> int | None:
    if task is None:
        return None
    for t in row.tasks:
        if task == str(t.index) or task == t.name:
            return t.index
    names = ", ".join(f"{t.index} ({t.name})" for t in row.tasks)
    raise UsageError(f"Job {row.job_id} has no task {task!r}; its tasks are: {names}.")


async def _sync_down(s: Settings, row: api.JobRow) -> int:
    """Copy the job's logs from the log store, laid out as their keys (task-N/attempt-M/run.log...)."""
    from tsky.client.logs import log_store
    from tsky.contract.logs import controller_log_key, phase_log_key

    logs = log_store(s)
    target = Path.home() / "sky_logs" / "managed_jobs" / f"job-{row.job_id}"
    prefix = f"jobs/{row.job_id}/"
    files = {controller_log_key(row.job_id): await logs.read_lines(controller_log_key(row.job_id))}
    for task in row.tasks:
        for attempt in range(task.attempt_count):
            for phase in ("setup", "run"):
                key = phase_log_key(row.job_id, task.index, attempt, phase)
                files[key] = await logs.read(key)
    for key, data in files.items():
        if data:
            path = target / key.removeprefix(prefix)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    console.print(f"Job {row.job_id}'s logs downloaded to: {target}")
    return 0


async def _print_attempt(s: Settings, row: api.JobRow, task_index: int | None, attempt: int) -> int:
    from tsky.client.logs import log_store
    from tsky.contract.logs import phase_log_key

    task = row.tasks[task_index or 0]
    if not 0 <= attempt < task.attempt_count:
        raise UsageError(
            f"Task {task.index} of job {row.job_id} has {task.attempt_count} attempt(s): "
            f"--attempt takes 0..{task.attempt_count - 1}."
        )
    logs = log_store(s)
    for phase in ("setup", "run"):
        text = await logs.read(phase_log_key(row.job_id, task.index, attempt, phase))
        console.out(text.decode(errors="replace"), end="")
    return 0


@app.command()
def cancel(
    job_ids: Annotated[list[int] | None, typer.Argument(help="Jobs to cancel.")] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Cancel the running job with this name.")] = None,
    all_jobs: Annotated[bool, typer.Option("--all", "-a", help="All your running jobs.")] = False,
    all_users: Annotated[bool, typer.Option("--all-users", "-u", help="Everyone's running jobs.")] = False,
    pool: Annotated[str | None, typer.Option("--pool", "-p", help="All jobs of this pool.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Skip the confirmation prompt.")] = False,
    task: Annotated[str | None, typer.Option("--task", help="One member of a job group (not supported yet).")] = None,
    graceful: Annotated[
        bool, typer.Option("--graceful", help="SIGTERM the job's processes and let them exit before SIGKILL.")
    ] = False,
    graceful_timeout: Annotated[
        int | None,
        typer.Option(
            "--graceful-timeout",
            help=f"With --graceful: seconds to wait before SIGKILL (default {DEFAULT_GRACEFUL_TIMEOUT_SECONDS}).",
        ),
    ] = None,
) -> None:
    """Cancel managed jobs: their processes are killed and their clusters torn down."""
    if graceful_timeout is not None and not graceful:
        fail(
            f"--graceful-timeout applies only with --graceful: tsky jobs cancel --graceful --graceful-timeout "
            f"{graceful_timeout} JOB_ID. Without --graceful, processes get {STOP_GRACE_SECONDS:g} s after SIGTERM."
        )
    if graceful_timeout is not None and graceful_timeout < 0:
        fail(f"--graceful-timeout must be 0 or more seconds, got {graceful_timeout}.")
    grace_seconds: int | None = None  # None: the ordinary cancel's few seconds
    if graceful:
        grace_seconds = DEFAULT_GRACEFUL_TIMEOUT_SECONDS if graceful_timeout is None else graceful_timeout
    if task is not None:
        # SkyPilot's --task cancels one member of a job group (one job id, no other selector); a pipeline's
        # task cannot be cancelled alone there either.
        if len(job_ids or []) != 1 or name is not None or pool is not None or all_jobs or all_users:
            fail("--task needs exactly one job id and no other selector: tsky jobs cancel JOB_ID --task TASK.")
        fail(
            "--task cancels one member of a job group, and job groups are not supported yet in tsky. "
            f"Cancel the whole job instead: tsky jobs cancel {job_ids[0] if job_ids else 'JOB_ID'}."
        )
    given = [label for label, on in (("JOB_IDS", bool(job_ids)), ("--name", name is not None),
                                     ("--pool", pool is not None),
                                     ("--all/--all-users", all_jobs or all_users)) if on]  # fmt: skip
    if len(given) != 1:
        fail(
            "Can only specify one of JOB_IDS, --name, --pool, or --all/--all-users. "
            f"Provided {', '.join(given) if given else 'none'}."
        )
    s = settings()

    async def body() -> int:
        from tsky.client import jobs as api  # the Temporal client: imported only by commands that talk to it

        client = await client_for(s)
        missing: list[int] = []  # never allocated: a typo, so not found (102); an ended job is a no-op
        if job_ids:
            targets: list[int] = []
            for job_id, row in zip(job_ids, await api.get_jobs(client, job_ids), strict=True):
                if row is None:
                    err_console.print(f"Job {job_id} not found.")
                    missing.append(job_id)
                elif not row.cancellable:
                    console.print(f"Job {job_id} is already in terminal state {row.status.value}. Skipped.")
                else:
                    targets.append(job_id)
            what = f"managed job(s) with ID(s) {','.join(map(str, job_ids))}"
        elif name is not None:
            matches = [r for r in await api.jobs_named(client, name, running_only=True) if not r.status.is_terminal()]
            if not matches:
                console.print(f"No running job found with name {name!r}.")
                return 0
            if len(matches) > 1:
                ids = ", ".join(str(m.job_id) for m in matches)
                raise UsageError(f"Multiple running jobs found with name {name!r}: {ids}. Cancel by id instead.")
            targets = [matches[0].job_id]
            what = f"managed job {name!r}"
        elif pool is not None:
            from tsky.client.pools import pool_jobs

            targets = [r.job_id for r in await pool_jobs(client, pool)]
            what = f"managed jobs in pool {pool!r}"
        else:
            user = None if all_users else current_user()
            rows = await api.list_jobs(client, user=user, skip_finished=True)
            targets = [r.job_id for r in rows if r.cancellable]
            what = "all managed jobs FOR ALL USERS" if all_users else "all managed jobs"
        if not targets and pool is not None:
            console.print(f"No running job found in pool {pool!r}.")
            return 0
        if not targets:
            console.print("No job to cancel.")
            return JobExitCode.NOT_FOUND if missing else 0
        if not yes:
            typer.confirm(f"Cancelling {what}. Proceed?", default=True, abort=True)
        await api.cancel(client, targets, grace_seconds)
        if len(targets) == 1:
            console.print(f"Job with ID {targets[0]} is scheduled to be cancelled.")
        else:
            console.print(f"Jobs with IDs {', '.join(map(str, targets))} are scheduled to be cancelled.")
        return JobExitCode.NOT_FOUND if missing else 0

    raise typer.Exit(run(body()))


def register(root: typer.Typer) -> None:
    from tsky.cli.pools import app as pool_app
    from tsky.cli.schedules import app as schedule_app
    from tsky.cli.schedules import relaunch
    from tsky.cli.server import dashboard

    app.add_typer(pool_app, name="pool")
    app.add_typer(schedule_app, name="schedule")
    app.command("relaunch")(relaunch)
    app.command("dashboard")(dashboard)
    root.add_typer(app, name="jobs")


# Used by launching.py; kept here so every `jobs` output string lives in one module.
def print_submitted(ids: list[int], detach: bool, pool: str | None = None) -> None:
    s = settings()
    if len(ids) == 1:
        console.print(f"⚙︎ Job submitted, ID: {ids[0]}")
        console.print(f"Managed job ID: {ids[0]}")
        if detach:
            _useful_commands(ids[0], workflow_url(s, job_workflow_id(ids[0])))
    else:
        console.print(f"Jobs submitted with IDs: {','.join(map(str, ids))}.")
        console.print("📋 Useful Commands", style="bold cyan")
        console.print("├── To stream job logs:           tsky jobs logs <job-id>")
        console.print("├── To stream controller logs:    tsky jobs logs --controller <job-id>")
        if pool is not None:
            console.print(f"└── To cancel all jobs on the pool: tsky jobs cancel --pool {pool}")
        else:
            console.print(f"└── To cancel all these jobs:     tsky jobs cancel {' '.join(map(str, ids))}")


def finished_line(job_id: int, status: ManagedJobStatus) -> str:
    """Green ✓ only for SUCCEEDED; SkyPilot's yellow for CANCELLED, red ✗ for the failures."""
    if status is ManagedJobStatus.SUCCEEDED:
        return f"[green]✓ Managed job finished: {job_id} (status: {status.value}).[/]"
    color = "yellow" if status is ManagedJobStatus.CANCELLED else "red"
    return f"[{color}]✗ Managed job finished: {job_id} (status: {status.value}).[/]"


def print_finished(job_id: int, status: ManagedJobStatus) -> None:
    s = settings()
    console.print(finished_line(job_id, status))
    _useful_commands(job_id, workflow_url(s, job_workflow_id(job_id)))
