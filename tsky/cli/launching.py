"""`tsky jobs launch`: load and check the spec, show the plan, confirm, submit, then follow the job.

Everything that can be wrong with the input is found before anything is started: a bad YAML, a bad
flag, or a request no enabled infra can serve ends here with exit code 2 and nothing submitted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import typer
import yaml

from tsky.cli.common import (
    NotFound,
    UsageError,
    client_for,
    console,
    current_user,
    current_user_hash,
    err_console,
    fail,
    run,
    settings,
    settings_with,
)
from tsky.cli.jobs import print_finished, print_submitted
from tsky.cli.orchestration import notify_for, parse_after
from tsky.cli.plan_table import render_pipeline_plan, render_plan
from tsky.cli.waiting import spinner, with_worker
from tsky.client.infra import CATALOG_CLOUDS, InfraStatus, check_infra, plan_for_task
from tsky.contract.activity_io import PlanResult
from tsky.contract.orchestration import Orchestration
from tsky.spec.envs import env_overrides, secret_overrides
from tsky.spec.errors import SpecError
from tsky.spec.loader import apply_overrides, load_pipeline
from tsky.spec.requests import Candidate
from tsky.spec.settings import Settings
from tsky.spec.status import JobExitCode
from tsky.spec.task import Pipeline, Task


@dataclass
class LaunchOptions:
    entrypoint: list[str]
    name: str | None = None
    yes: bool = False
    detach_run: bool = False
    dryrun: bool = False
    env: list[str] | None = None
    env_file: Path | None = None
    secret: list[str] | None = None
    secret_file: Path | None = None
    workdir: str | None = None
    infra: str | None = None
    use_spot: bool | None = None
    cpus: str | None = None
    memory: str | None = None
    gpus: str | None = None
    instance_type: str | None = None
    num_nodes: int | None = None
    disk_size: int | None = None
    disk_tier: str | None = None
    network_tier: str | None = None
    ports: list[str] | None = None
    priority: str | None = None
    git_url: str | None = None
    git_ref: str | None = None
    config: list[str] | None = None
    image_id: str | None = None
    job_recovery: str | None = None
    pool: str | None = None
    num_jobs: int = 1
    # Orchestration (tsky.cli.orchestration)
    after: list[str] | None = None
    after_any: bool = False
    notify: list[str] | None = None


def _is_yaml(entrypoint: list[str]) -> bool:
    if len(entrypoint) != 1:
        return False
    path = Path(entrypoint[0])
    return path.suffix in (".yaml", ".yml") or path.is_file()


def load(opts: LaunchOptions) -> tuple[Pipeline, list[str]]:
    """The pipeline to launch with every override applied, and the warnings to print."""
    envs = env_overrides(opts.env, [opts.env_file] if opts.env_file else None)
    secrets = secret_overrides(opts.secret, [opts.secret_file] if opts.secret_file else None)
    if _is_yaml(opts.entrypoint):
        path = Path(opts.entrypoint[0])
        if not path.exists():
            raise SpecError(f"{path}: no such file. Give the path of a task YAML, or a command to run.")
        pipeline = load_pipeline(path, env_overrides=envs, secret_overrides=secrets, name=opts.name)
    else:
        # An inline command becomes a one-task job named `sky-cmd`, as in SkyPilot.
        text = yaml.safe_dump({"name": opts.name or "sky-cmd", "run": " ".join(opts.entrypoint)})
        pipeline = load_pipeline(text, env_overrides=envs, secret_overrides=secrets)
    return apply_overrides(
        pipeline,
        infra=opts.infra,
        cpus=opts.cpus,
        memory=opts.memory,
        gpus=opts.gpus,
        instance_type=opts.instance_type,
        use_spot=opts.use_spot,
        num_nodes=opts.num_nodes,
        disk_size=opts.disk_size,
        disk_tier=opts.disk_tier,
        network_tier=opts.network_tier,
        ports=opts.ports,
        priority=opts.priority,
        image_id=opts.image_id,
        job_recovery=opts.job_recovery,
        workdir=opts.workdir,
        git_url=opts.git_url,
        git_ref=opts.git_ref,
    )


def launch_job(opts: LaunchOptions) -> int:
    if opts.num_jobs < 1:
        fail(f"--num-jobs must be at least 1 (got {opts.num_jobs}).")
    after = parse_after(opts.after)
    if opts.after_any and not after:
        fail("--after-any applies only with --after: tsky jobs launch --after JOB_ID --after-any job.yaml.")
    s = settings() if not opts.config else settings_with(opts.config)
    notify = notify_for(opts.notify, s)
    try:
        pipeline, warnings = load(opts)
    except SpecError as err:
        fail(str(err))
    for warning in warnings:
        err_console.print(f"[yellow]Warning: {warning}[/]")
    ignored = sorted({f for task in pipeline.tasks for f in task.ignored_fields()})
    if ignored:
        err_console.print(f"[yellow]Ignoring fields tsky does not act on yet: {', '.join(ignored)}.[/]")

    if opts.pool is not None:
        from tsky.cli.pools import prepare_pool_launch

        # A pool job runs on the pool's workers: no plan of its own, SkyPilot's pool notices instead.
        pipeline = prepare_pool_launch(opts.pool, opts.num_jobs, pipeline, yes=opts.yes)
    else:
        _show_plan(opts, s, pipeline)
    if opts.dryrun:
        return 0
    if not opts.yes:
        what = f"{opts.num_jobs} managed jobs" if opts.num_jobs > 1 else "a managed job"
        typer.confirm(f"Launching {what} {pipeline.name!r}. Proceed?", default=True, abort=True)

    async def body() -> int:
        # Temporal and the uploaders only now: a dry run or a refused launch never imports them.
        from tsky.cli.follow import follow
        from tsky.client import jobs as api
        from tsky.client.jobs import UploadError

        client = await client_for(s)
        missing = await api.missing_jobs(client, after)
        if missing:
            raise NotFound(f"--after {missing[0]}: no managed job {missing[0]}; `tsky jobs queue -a` lists the ids.")
        if opts.num_jobs > 1 and opts.pool is None:
            console.print(f"Submitting {opts.num_jobs} managed jobs. Each job will be launched on its own cluster.")
        submission = api.submit(
            client,
            s,
            pipeline,
            user=current_user(),
            user_hash=current_user_hash(),
            num_jobs=opts.num_jobs,
            pool=opts.pool,
            priority=pipeline.tasks[0].priority(),
            progress=lambda text: console.print(f"[dim]{text}[/]"),
            orchestration=Orchestration(after=after, after_any=opts.after_any, notify=notify),
            warn=lambda text: err_console.print(f"[yellow]Warning: {text}[/]"),
        )
        try:
            with spinner("Submitting: waiting for a tsky worker to take the job"):
                ids = await with_worker(client, s, submission)
        except UploadError as err:
            raise UsageError(str(err)) from None
        detach = opts.detach_run or len(ids) > 1
        print_submitted(ids, detach, pool=opts.pool)
        if detach:
            return 0
        console.print("[dim]Streaming logs (Ctrl-C to stop streaming; the job keeps running).[/]")
        try:
            status = await follow(client, s, ids[0], console)
        except asyncio.CancelledError:
            console.print(f"\nJob {ids[0]} keeps running: `tsky jobs logs {ids[0]}` resumes the stream.")
            return JobExitCode.NOT_FINISHED
        if status is None:
            return JobExitCode.NOT_FOUND
        print_finished(ids[0], status)
        return status.exit_code()

    return run(body())


def _show_plan(opts: LaunchOptions, s: Settings, pipeline: Pipeline) -> None:
    """SkyPilot's "Considered resources" table(s) (unless -y), chosen among enabled infra only, as the real
    launch chooses; no feasible plan ends the launch here, with one short error."""
    statuses, runnable, plans = check_feasible(s, pipeline)
    if opts.yes and not opts.dryrun:
        return
    # A dry run also prices the catalog clouds that are off here, greyed and never chosen.
    off = [st.name for st in statuses if not st.enabled and st.name in CATALOG_CLOUDS]
    elsewhere: list[PlanResult] = []
    if opts.dryrun and off:
        everywhere = [st.model_copy(update={"enabled": True}) if st.name in off else st for st in statuses]
        elsewhere = [plan_for_task(task, s, everywhere) for task in runnable]
    reasons = {st.name: st.reason for st in statuses if st.name in off}
    console.print(f"Managed job {pipeline.name!r} will be launched on (estimated):")
    if len(runnable) == 1:
        render_plan(
            console,
            runnable[0].name,
            runnable[0].num_nodes,
            plans[0],
            not_enabled=_not_enabled(elsewhere[0] if elsewhere else None, reasons),
        )
    elif runnable:
        render_pipeline_plan(console, [(t.name or "", t.num_nodes, p) for t, p in zip(runnable, plans, strict=True)])


def check_feasible(s: Settings, pipeline: Pipeline) -> tuple[list[InfraStatus], list[Task], list[PlanResult]]:
    """Plan every task among the enabled infra; no feasible plan ends the command here, with one short error."""
    statuses = check_infra(s)
    runnable = [t for t in pipeline.tasks if t.run]
    plans: list[PlanResult] = [plan_for_task(task, s, statuses) for task in runnable]
    infeasible = [(t, p) for t, p in zip(runnable, plans, strict=True) if p.infeasible_reason or not p.candidates]
    if infeasible:
        task, result = infeasible[0]
        which = f" for task {task.name!r}" if len(runnable) > 1 and task.name else ""
        lines = [f"Nothing was launched: no resources{which}: {result.infeasible_reason or 'no candidates.'}"]
        lines += [f"  {st.name}: not enabled: {st.reason}" for st in statuses if not st.enabled]
        fail("\n".join(lines))
    return statuses, runnable, plans


def _not_enabled(result: PlanResult | None, reasons: dict[str, str]) -> list[tuple[Candidate, str]]:
    """The cheapest offer of each infra that is off here, with why it is off."""
    cheapest: dict[str, Candidate] = {}
    for c in result.candidates if result else []:
        if c.cloud in reasons and (c.cloud not in cheapest or c.hourly_cost < cheapest[c.cloud].hourly_cost):
            cheapest[c.cloud] = c
    return [(c, reasons[cloud]) for cloud, c in cheapest.items()]
