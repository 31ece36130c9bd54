"""`tsky jobs schedule ...`: managed jobs started on a timetable (Temporal Schedules), and
`tsky jobs relaunch`: resume an ended job without the tasks it already finished. See docs/orchestration.md.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

import tsky.cli.launch_options as lo
from tsky.cli.common import (
    NotFound,
    UsageError,
    ago,
    client_for,
    console,
    current_user,
    current_user_hash,
    err_console,
    fail,
    run,
    settings,
    settings_with,
    table,
)

app = typer.Typer(help="Scheduled managed jobs: create, list, describe, pause, unpause, trigger, delete.")
app.info.no_args_is_help = True


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="The schedule's name (letters, digits, . _ -).")],
    yaml_path: Annotated[Path, typer.Argument(metavar="YAML", help="The task or pipeline YAML each run launches.")],
    cron: Annotated[str | None, typer.Option("--cron", help='When to run: a cron line, e.g. "0 3 * * *".')] = None,
    every: Annotated[str | None, typer.Option("--every", help="Or: run every 30s, 15m, 6h, 1d, 2w.")] = None,
    timezone: Annotated[str | None, typer.Option("--timezone", help="IANA time zone of --cron (default UTC).")] = None,
    overlap: Annotated[
        str, typer.Option("--overlap", help="A run due while the last still runs: skip, buffer-one or allow-all.")
    ] = "skip",
    catchup_window: Annotated[
        str, typer.Option("--catchup-window", help="After downtime, still start runs missed this recently.")
    ] = "1h",
    paused: Annotated[bool, typer.Option("--paused", help="Create it paused (start it with unpause).")] = False,
    job_name: Annotated[
        str | None, typer.Option("--job-name", "-n", help="The jobs' name (default: the YAML's).")
    ] = None,
    env: lo.EnvOption = None,
    env_file: lo.EnvFileOption = None,
    secret: lo.SecretOption = None,
    secret_file: lo.SecretFileOption = None,
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
    image_id: lo.ImageIdOption = None,
    priority: lo.PriorityOption = None,
    pool: lo.PoolOption = None,
    git_url: lo.GitUrlOption = None,
    git_ref: lo.GitRefOption = None,
    job_recovery: lo.JobRecoveryOption = None,
    config: lo.ConfigOption = None,
    notify: lo.NotifyOption = None,
) -> None:
    """Create a schedule: each run launches YAML as an ordinary managed job tagged with NAME."""
    from tsky.cli.launching import LaunchOptions, check_feasible, load
    from tsky.cli.orchestration import notify_for
    from tsky.client import orchestration as oa
    from tsky.contract.orchestration import Orchestration, ScheduledRun
    from tsky.spec.errors import SpecError
    from tsky.spec.secrets import load_key, seal

    timing = oa.Timing(cron=cron, every=every, timezone=timezone, overlap=overlap, catchup_window=catchup_window)
    try:
        oa.check_name(name)
        spec, policy = timing.spec(), timing.policy()
    except oa.ScheduleInputError as err:
        fail(str(err))
    del spec, policy  # checked here, built again by create_schedule
    opts = LaunchOptions(
        entrypoint=[str(yaml_path)], name=job_name, yes=True, env=env, env_file=env_file, secret=secret,
        secret_file=secret_file, infra=infra, use_spot=use_spot, cpus=cpus, memory=memory, gpus=gpus,
        instance_type=instance_type, num_nodes=num_nodes, disk_size=disk_size, disk_tier=disk_tier,
        network_tier=network_tier, ports=ports, image_id=image_id, priority=priority, git_url=git_url,
        git_ref=git_ref, job_recovery=job_recovery, config=config or [], pool=pool,
    )  # fmt: skip
    s = settings() if not config else settings_with(config)
    try:
        pipeline, _ = load(opts)
    except SpecError as err:
        fail(str(err))
    if pool is not None:
        from tsky.cli.pools import prepare_pool_launch

        pipeline = prepare_pool_launch(pool, 1, pipeline, yes=True)
    if pool is None:
        check_feasible(s, pipeline)
    orchestration = Orchestration(notify=notify_for(notify, s))
    secrets = [t.secrets for t in pipeline.tasks]
    key = load_key(s.home, create=True) if any(secrets) else None
    sealed = [seal(x, key) if x and key is not None else {} for x in secrets]

    async def body() -> int:
        client = await client_for(s)
        scheduled = ScheduledRun(
            schedule=name, pipeline=pipeline, sealed_secrets=sealed, name=pipeline.name, user=current_user(),
            priority=pipeline.tasks[0].priority(), pool=pool, orchestration=orchestration,
        )  # fmt: skip
        try:
            await oa.create_schedule(client, s, scheduled, timing, paused=paused, user_hash=current_user_hash())
        except (oa.ScheduleInputError, oa.UploadError) as err:
            raise UsageError(str(err)) from None
        console.print(f"Schedule {name!r} created: {timing.describe()}, job {pipeline.name!r}.")
        console.print(f"├── Its runs:        tsky jobs queue --schedule {name}")
        console.print(f"├── Describe it:     tsky jobs schedule describe {name}")
        console.print(f"└── Delete it:       tsky jobs schedule delete {name}")
        return 0

    raise typer.Exit(run(body()))


@app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON records.")] = False,
) -> None:
    """List the schedules."""
    s = settings()

    async def body() -> int:
        from tsky.client import orchestration as oa

        client = await client_for(s)
        rows = await oa.list_schedules(client)
        if as_json:
            import json

            records = [{**row.__dict__, "next_run": _iso(row.next_run), "last_run": _iso(row.last_run)} for row in rows]
            console.out(json.dumps(records, indent=2))
            return 0
        if not rows:
            console.print("No schedules: create one with `tsky jobs schedule create NAME YAML --every 6h`.")
            return 0
        now = datetime.now(UTC)
        headers = ["NAME", "JOB", "USER", "WHEN", "STATE", "NEXT RUN", "LAST RUN"]
        cells = [
            [r.name, r.job_name, r.user or "-", r.timing, "PAUSED" if r.paused else "ACTIVE",
             _at(r.next_run) if not r.paused else "-", ago(r.last_run, now)]
            for r in rows
        ]  # fmt: skip
        console.print(table(headers, cells), markup=False, highlight=False)
        return 0

    raise typer.Exit(run(body()))


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


def _at(when: datetime | None) -> str:
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S") if when else "-"


@app.command()
def describe(name: Annotated[str, typer.Argument(help="The schedule's name.")]) -> None:
    """A schedule's timing, policy, state, next runs and latest jobs."""
    s = settings()

    async def body() -> int:
        from tsky.client import jobs as api
        from tsky.client import orchestration as oa

        client = await client_for(s)
        try:
            description, memo = await oa.describe_schedule(client, name)
        except oa.ScheduleNotFound as err:
            raise NotFound(str(err)) from None
        sched, info = description.schedule, description.info
        overlap = next((k for k, v in oa.OVERLAP.items() if v == sched.policy.overlap), str(sched.policy.overlap))
        lines = [
            f"Schedule:        {name}",
            f"Job:             {memo.get('job_name', '-')} (by {memo.get('user') or '-'})",
            f"When:            {memo.get('timing', '-')}",
            f"Overlap:         {overlap}",
            f"Catch-up window: {sched.policy.catchup_window}",
            f"State:           {'PAUSED' if sched.state.paused else 'ACTIVE'}"
            + (f" ({sched.state.note})" if sched.state.note else ""),
            f"Runs so far:     {info.num_actions} (skipped as overlapping: {info.num_actions_skipped_overlap})",
            f"Next runs:       {', '.join(_at(t) for t in info.next_action_times[:3]) or '-'}",
        ]
        console.print("\n".join(lines), markup=False, highlight=False)
        jobs = await api.list_jobs(client, user=None, schedule=name)
        if jobs:
            console.print("Latest jobs:", markup=False)
            rows = [[str(j.job_id), j.name, j.status.value, ago(j.submitted_at, datetime.now(UTC))] for j in jobs[:10]]
            console.print(table(["ID", "NAME", "STATUS", "SUBMITTED"], rows), markup=False, highlight=False)
        return 0

    raise typer.Exit(run(body()))


def _simple(what: str, done: str) -> None:
    def command(name: Annotated[str, typer.Argument(help="The schedule's name.")]) -> None:
        s = settings()

        async def body() -> int:
            from tsky.client import orchestration as oa

            client = await client_for(s)
            try:
                await oa.schedule_call(client, name, what)
            except oa.ScheduleNotFound as err:
                raise NotFound(str(err)) from None
            console.print(f"Schedule {name!r} {done}.")
            return 0

        raise typer.Exit(run(body()))

    command.__doc__ = {
        "pause": "Pause a schedule: no runs start until it is unpaused.",
        "unpause": "Unpause a schedule.",
        "trigger": "Start a run now (the overlap policy applies).",
    }[what]
    app.command(what)(command)


_simple("pause", "paused")
_simple("unpause", "unpaused")
_simple("trigger", "triggered: a run starts now")


@app.command()
def delete(name: Annotated[str, typer.Argument(help="The schedule's name.")]) -> None:
    """Delete a schedule and its copy of local files. Its jobs keep running; cancel them with tsky jobs cancel."""
    s = settings()

    async def body() -> int:
        from tsky.client import orchestration as oa

        client = await client_for(s)
        try:
            await oa.delete_schedule(client, s, name)
        except oa.ScheduleNotFound as err:
            raise NotFound(str(err)) from None
        console.print(f"Schedule {name!r} deleted (its jobs already started keep running).")
        return 0

    raise typer.Exit(run(body()))


def relaunch(
    job_id: Annotated[int, typer.Argument(help="The ended job to resume.")],
    from_task: Annotated[
        int | None, typer.Option("--from-task", help="Run again from this task index (default: the first not done).")
    ] = None,
    secret: Annotated[
        list[str] | None, typer.Option("--secret", help="KEY=VALUE: give a secret again (default: the sealed copy).")
    ] = None,
    detach_run: Annotated[bool, typer.Option("--detach-run", "-d", help="Return once the job is submitted.")] = False,
) -> None:
    """Start a new job with an ended job's spec, skipping the tasks that SUCCEEDED (a failed pipeline
    resumes at the task that failed)."""
    from tsky.spec.envs import secret_overrides
    from tsky.spec.errors import SpecError

    try:
        secrets = secret_overrides(secret, None)
    except SpecError as err:
        fail(str(err))
    s = settings()

    async def body() -> int:
        from tsky.cli.follow import follow
        from tsky.cli.jobs import print_finished, print_submitted
        from tsky.client import jobs as api
        from tsky.client import orchestration as oa

        client = await client_for(s)
        row = await api.get_job(client, job_id)
        if row is None:
            raise NotFound(f"Job {job_id} not found.")
        try:
            new_id = await oa.relaunch(
                client, s, row, from_task=from_task, secrets=secrets, user=current_user(), user_hash=current_user_hash()
            )
        except oa.RelaunchError as err:
            raise UsageError(str(err)) from None
        err_console.print(f"[dim]Relaunching job {job_id} as job {new_id}.[/]")
        print_submitted([new_id], detach_run)
        if detach_run:
            return 0
        status = await follow(client, s, new_id, console)
        if status is None:
            return 102
        print_finished(new_id, status)
        return status.exit_code()

    raise typer.Exit(run(body()))
