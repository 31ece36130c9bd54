"""`tsky jobs ...`: launch, queue, logs, cancel — SkyPilot's managed-jobs commands and output."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tsky.cli.common import (
    NotFound,
    UsageError,
    ago,
    client_for,
    console,
    current_user,
    duration,
    err_console,
    fail,
    run,
    settings,
    table,
    with_status_colors,
    workflow_url,
)
from tsky.contract.activity_io import STOP_GRACE_SECONDS
from tsky.contract.ids import job_workflow_id
from tsky.contract.job import DEFAULT_GRACEFUL_TIMEOUT_SECONDS, TaskState
from tsky.spec.errors import FieldError
from tsky.spec.settings import Settings
from tsky.spec.status import JobExitCode, ManagedJobStatus

if TYPE_CHECKING:
    from temporalio.client import Client

    from tsky.client import jobs as api
    from tsky.spec.requests import Infra

app = typer.Typer(help="Managed jobs: launch, queue, logs, cancel.", no_args_is_help=True)

_DEFAULT_QUEUE_LIMIT = 50
_REFRESH_SECONDS = 5


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
    env: Annotated[list[str] | None, typer.Option("--env", help="KEY=VALUE, or KEY to take it from here.")] = None,
    env_file: Annotated[Path | None, typer.Option("--env-file", help="A dotenv file of envs.")] = None,
    secret: Annotated[list[str] | None, typer.Option("--secret", help="KEY=VALUE, or KEY from here.")] = None,
    secret_file: Annotated[Path | None, typer.Option("--secret-file", help="A dotenv file of secrets.")] = None,
    workdir: Annotated[str | None, typer.Option("--workdir", help="Override the workdir.")] = None,
    infra: Annotated[
        str | None,
        typer.Option("--infra", help="aws, aws/us-east-1, gcp/*/us-central1-a, k8s/CTX, ssh/POOL, local."),
    ] = None,
    use_spot: Annotated[bool | None, typer.Option("--use-spot/--no-use-spot", help="Use spot instances.")] = None,
    cpus: Annotated[str | None, typer.Option("--cpus", help="vCPUs per node: N or N+.")] = None,
    memory: Annotated[str | None, typer.Option("--memory", help="Memory per node in GB: N or N+.")] = None,
    gpus: Annotated[str | None, typer.Option("--gpus", help="Accelerators per node, e.g. A100:8.")] = None,
    instance_type: Annotated[str | None, typer.Option("--instance-type", "-t", help="Instance type.")] = None,
    num_nodes: Annotated[int | None, typer.Option("--num-nodes", help="Number of nodes.")] = None,
    disk_size: Annotated[int | None, typer.Option("--disk-size", help="Boot disk size in GB.")] = None,
    disk_tier: Annotated[
        str | None, typer.Option("--disk-tier", help="low, medium, high, ultra, best or none.")
    ] = None,
    network_tier: Annotated[str | None, typer.Option("--network-tier", help="standard, best or none.")] = None,
    ports: Annotated[
        list[str] | None, typer.Option("--ports", help="Ports to open: 8080, 8000-8010 or 80,443 (repeatable).")
    ] = None,
    priority: Annotated[
        str | None, typer.Option("--priority", help="-1000..1000: higher runs first when jobs wait for a slot.")
    ] = None,
    git_url: Annotated[str | None, typer.Option("--git-url", help="Make the workdir a checkout of this repo.")] = None,
    git_ref: Annotated[str | None, typer.Option("--git-ref", help="Branch, tag or commit of the git workdir.")] = None,
    config: Annotated[
        list[str] | None,
        typer.Option("--config", help="Settings for this job: a YAML file, or key.path=value (repeatable)."),
    ] = None,
    async_call: Annotated[
        bool, typer.Option("--async/--no-async", help="Return once submitted, as -d (tsky has no API server).")
    ] = False,
    job_group: Annotated[str | None, typer.Option("--job-group", help="Job groups: not supported yet.")] = None,
    no_job_group: Annotated[
        bool, typer.Option("--no-job-group", help="Do not attach to a job group (default).")
    ] = False,
    image_id: Annotated[str | None, typer.Option("--image-id", help="ami-..., a GCE image, docker:IMAGE.")] = None,
    job_recovery: Annotated[
        str | None, typer.Option("--job-recovery", help="Recovery strategy (replaces the YAML's job_recovery).")
    ] = None,
    pool: Annotated[str | None, typer.Option("--pool", "-p", help="Run on a pool's workers.")] = None,
    num_jobs: Annotated[int, typer.Option("--num-jobs", help="Submit N copies (ranks 0..N-1).")] = 1,
    # Orchestration (docs/orchestration.md)
    after: Annotated[
        list[str] | None, typer.Option("--after", help="Start once these jobs SUCCEEDED: ID[,ID...].")
    ] = None,
    after_any: Annotated[
        bool, typer.Option("--after-any", help="With --after: start once they ended, whatever their status.")
    ] = False,
    notify: Annotated[
        list[str] | None, typer.Option("--notify", help="POST each status change to this webhook URL (repeatable).")
    ] = None,
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
        after=after or [],
        after_any=after_any,
        notify=notify or [],
    )
    raise typer.Exit(launch_job(options))


@dataclass
class _QueueLine:
    """One printed row of `tsky jobs queue`: a job, a pipeline's aggregate, or one of its tasks."""

    ident: str
    task: str
    name: str
    user: str
    requested: str
    submitted: datetime | None
    end: datetime | None
    job_duration: float | None
    recoveries: int
    status: str
    pool: str
    started: datetime | None
    infra: str
    details: str
    sched_state: str = "-"
    worker_id: int | None = None  # the pool worker it runs on: `P (worker=1)` in POOL
    worker_cluster: str = ""

    def cells(self, show_user: bool, verbose: bool, now: datetime) -> list[str]:
        total = ((self.end or now) - self.submitted).total_seconds() if self.submitted else None
        row = [self.ident, self.task, self.name] + ([self.user] if show_user else [])
        row += [
            self.requested,
            ago(self.submitted, now),
            duration(total),
            duration(self.job_duration),
            str(self.recoveries),
            self.status,
            "-",  # PROGRESS: SkyPilot's batch-coordinator progress; tsky has no batch jobs
            f"{self.pool} (worker={self.worker_id})" if self.pool and self.worker_id is not None else self.pool or "-",
        ]
        if verbose:
            row += [self.worker_cluster or "-", "-", ago(self.started, now), self.infra or "-", "-"]
            row += [self.sched_state, self.details or "-", "-"]  # WORKER_JOB_ID, RESOURCES, GIT_COMMIT: "-"
        return row


def sched_state(job: api.JobRow) -> str:
    """SkyPilot's SCHED. STATE (the controller's schedule state) from what tsky knows of the job:
    WAITING for a running slot or a pool worker (or not started yet), ALIVE_BACKOFF between launch
    rounds, LAUNCHING while a cluster is planned/provisioned/recovered, ALIVE once it runs (or is being
    cancelled), DONE once the job's workflow has ended."""
    if job.closed or job.status.is_terminal():
        return "DONE"
    current = next((t for t in job.tasks if not t.status.is_terminal()), None)
    details = (current.details if current else None) or ""
    if job.status is ManagedJobStatus.PENDING:
        return "ALIVE_BACKOFF" if details.startswith("In backoff") else "WAITING"
    if job.status in (ManagedJobStatus.STARTING, ManagedJobStatus.RECOVERING):
        return "LAUNCHING"
    return "ALIVE"


def _details(task: TaskState) -> str:
    return f"Failure: {task.failure_reason}" if task.failure_reason else task.details or ""


def _links(job: api.JobRow) -> str:
    """`queue -v`: where the job comes from, after its details."""
    found = []
    if "relaunch_of" in job.links:
        found.append(f"relaunch of job {job.links['relaunch_of']}")
    if "schedule" in job.links:
        found.append(f"schedule {job.links['schedule']}")
    if "after" in job.links:
        found.append(f"after job {','.join(map(str, job.links['after']))}")
    return f"({'; '.join(found)})" if found else ""


def _with_links(details: str, job: api.JobRow) -> str:
    return " ".join(part for part in (details, _links(job)) if part)


def _queue_lines(job: api.JobRow, now: datetime, workers: dict[int, tuple[int, str]]) -> list[_QueueLine]:
    """SkyPilot's rows: one per single-task job; for a pipeline an aggregate row (the status of the first
    task not SUCCEEDED, with "(task: k)" while in progress) followed by one ` ↳` row per task.
    `workers`: job id -> (worker id, worker cluster) of the pool jobs on a worker now."""
    tasks = job.tasks
    worker_id, worker_cluster = workers.get(job.job_id, (None, ""))
    if len(tasks) <= 1:
        task = tasks[0] if tasks else None
        return [
            _QueueLine(str(job.job_id), "-", job.name, job.user, job.resources, job.submitted_at, job.ended_at,
                       task.job_duration(now) if task else None, job.recoveries, job.status.value, job.pool,
                       job.started_at, job.infra, _with_links(_details(task) if task else "", job), sched_state(job),
                       worker_id, worker_cluster)
        ]  # fmt: skip
    current = next((t for t in tasks if t.status is not ManagedJobStatus.SUCCEEDED), tasks[-1])
    status = current.status.value + ("" if current.status.is_terminal() else f" (task: {current.index})")
    failure = next((_details(t) for t in tasks if t.failure_reason), "")
    lines = [
        _QueueLine(str(job.job_id), "", job.name, job.user, "-", job.submitted_at, job.ended_at,
                   sum(t.job_duration(now) for t in tasks), job.recoveries, status, job.pool, job.started_at,
                   job.infra, _with_links(failure, job), sched_state(job), worker_id, worker_cluster)
    ]  # fmt: skip
    for t in tasks:
        lines.append(
            _QueueLine(" ↳", str(t.index), t.name, job.user, t.resources, t.submitted_at,
                       t.end_at if t.status.is_terminal() else None, t.job_duration(now) if t.submitted_at else None,
                       t.recovery_count, t.status.value, job.pool, t.start_at, t.infra or "", _details(t), "-",
                       worker_id if not t.status.is_terminal() else None, "")
        )  # fmt: skip
    return lines


def _queue_table(
    jobs: list[api.JobRow], show_user: bool, verbose: bool, workers: dict[int, tuple[int, str]] | None = None
) -> str:
    """SkyPilot 0.14.1's columns, in its order, with `-` in empty cells: scripts read them by position
    (`awk '{print $1}'` is the ID, `$(NF-3)` the #RECOVERIES)."""
    headers = ["ID", "TASK", "NAME"] + (["USER"] if show_user else [])
    headers += ["REQUESTED", "SUBMITTED", "TOT. DURATION", "JOB DURATION", "#RECOVERIES", "STATUS", "PROGRESS"]
    headers += ["POOL"]
    if verbose:
        headers += ["WORKER_CLUSTER", "WORKER_JOB_ID", "STARTED", "INFRA", "RESOURCES", "SCHED. STATE", "DETAILS"]
        headers += ["GIT_COMMIT"]
    now = datetime.now(UTC)
    rows: list[list[str]] = []
    for job in jobs:
        lines = _queue_lines(job, now, workers or {})
        if len(lines) > 1 and rows:
            rows.append([""] * len(headers))  # a blank line sets a pipeline apart
        rows += [line.cells(show_user, verbose, now) for line in lines]
        if len(lines) > 1:
            rows.append([""] * len(headers))
    while rows and not any(rows[-1]):
        rows.pop()
    return table(headers, rows)


@app.command()
def queue(
    job_ids: Annotated[list[int] | None, typer.Argument(help="Only these jobs.")] = None,
    all_users: Annotated[bool, typer.Option("--all-users", "-u", help="Show every user's jobs.")] = False,
    skip_finished: Annotated[bool, typer.Option("--skip-finished", help="Only jobs still in progress.")] = False,
    show_all: Annotated[bool, typer.Option("--all", "-a", help="No limit on the number of jobs shown.")] = False,
    limit: Annotated[int, typer.Option("--limit", "-l", help="Show the latest N jobs.")] = _DEFAULT_QUEUE_LIMIT,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More columns.")] = False,
    status: Annotated[list[str] | None, typer.Option("--status", "-s", help="Only these statuses.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON records (same as -o json).")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
    refresh: Annotated[bool, typer.Option("--refresh", "-r", help="Redraw the table every few seconds.")] = False,
    infra: Annotated[str | None, typer.Option("--infra", help="Only jobs on this infra: aws/us-east-1, k8s...")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Submitted in the last 30m, 48h, 7d, 2w.")] = None,
    after: Annotated[str | None, typer.Option("--after", help="Submitted after this date: YYYY-MM-DD.")] = None,
    before: Annotated[str | None, typer.Option("--before", help="Submitted before this date.")] = None,
    schedule: Annotated[
        str | None, typer.Option("--schedule", help="Only the runs of this schedule (tsky jobs schedule).")
    ] = None,
) -> None:
    """Show managed jobs (yours, newest first) from one visibility query."""
    if output not in ("table", "json"):
        fail(f"--output {output!r} is not a format; use table or json.")
    as_json = as_json or output == "json"
    window = submitted_window(since, after, before)
    where = _parse_infra_filter(infra)
    wanted: set[str] = set()
    for item in status or []:
        for value in item.split(","):
            value = value.strip().upper()
            if value not in ManagedJobStatus.__members__:
                fail(f"--status {value!r} is not a status; use one of {', '.join(ManagedJobStatus.__members__)}.")
            wanted.add(value)
    s = settings()

    async def body() -> None:
        client = await client_for(s)
        while True:
            await show(client)
            if not refresh:
                return
            await asyncio.sleep(_REFRESH_SECONDS)
            console.clear()

    async def show(client: Client) -> None:
        from tsky.client import jobs as api  # the Temporal client: imported only by commands that talk to it

        user = None if all_users else current_user()
        filtered = window is not None or where is not None or schedule is not None
        if show_all or job_ids or skip_finished or filtered:
            rows = await api.list_jobs(client, user=user, skip_finished=skip_finished, schedule=schedule)
            if job_ids:
                rows = [r for r in rows if r.job_id in set(job_ids)]
            if wanted:
                rows = [r for r in rows if r.status.value in wanted]
            if window is not None:
                rows = [r for r in rows if r.submitted_at and window[0] <= r.submitted_at < window[1]]
            if where is not None:
                rows = [r for r in rows if _on_infra(where, r.infra)]
            truncated = not show_all and not job_ids and len(rows) > limit
            shown, in_progress = rows if show_all or job_ids else rows[:limit], rows
        else:  # the latest `limit` jobs: no need to list every job ever run
            page = await api.latest_jobs(client, user=user, limit=limit, statuses=wanted)
            shown, in_progress, truncated = page.rows, page.in_progress, page.more
        if as_json:
            console.out(json.dumps([api.as_dict(r) for r in shown], indent=2))
            return
        console.print("[bold cyan]Managed jobs[/]" + (" (showing in-progress jobs only)" if skip_finished else ""))
        counts = Counter(t.status.value for r in in_progress for t in r.tasks if not t.status.is_terminal())
        if counts:
            console.print("In progress tasks: " + ", ".join(f"{n} {st}" for st, n in sorted(counts.items())))
        else:
            console.print("No in-progress managed jobs.")
        if shown:
            console.print(
                with_status_colors(_queue_table(shown, all_users, verbose, await _pool_workers(client, shown)))
            )
        if truncated:
            console.print(
                f"Only showing the latest {limit} managed jobs "
                "(use --limit to show more managed jobs or --all to show all managed jobs)"
            )

    run(body())


async def _pool_workers(client: Client, rows: list[api.JobRow]) -> dict[int, tuple[int, str]]:
    """Job id -> (worker id, worker cluster) for the shown pool jobs now on a worker (one query per pool)."""
    from tsky.client import pools as pool_api

    workers: dict[int, tuple[int, str]] = {}
    for pool in sorted({r.pool for r in rows if r.pool and not r.closed}):
        snapshot = await pool_api.get_pool(client, pool)
        for worker in snapshot.workers if snapshot else []:
            if worker.job_id is not None and worker.lease is not None:
                workers[worker.job_id] = (worker.worker_id, worker.cluster_name)
    return workers


def _parse_infra_filter(text: str | None) -> Infra | None:
    if text is None:
        return None
    from tsky.spec.resources import parse_infra

    try:
        return parse_infra(text)
    except FieldError as err:
        from rich.markup import escape

        fail(escape(f"--infra: {err.message}"))  # the hint shows `cloud[/region[/zone]]`


def _on_infra(where: Infra, shown: str) -> bool:
    """Whether a job's INFRA cell (`AWS (us-east-1, us-east-1a)`) lies in the --infra filter."""
    from tsky.spec.requests import CLOUD_DISPLAY

    cloud_label, _, rest = shown.partition(" (")
    cloud = next((k for k, v in CLOUD_DISPLAY.items() if v == cloud_label), cloud_label.lower())
    parts = [p.strip() for p in rest.rstrip(")").split(",")] if rest else []
    return where.contains(cloud, parts[0] if parts else None, parts[1] if len(parts) > 1 else None)


_SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%m-%d-%Y")


def submitted_window(since: str | None, after: str | None, before: str | None) -> tuple[datetime, datetime] | None:
    """SkyPilot's submission-time filter: `--since 30m|48h|7d|2w|<secs>` or `--after DATE`, and `--before
    DATE` (dates in local time). None when no filter is given."""
    if since is not None and after is not None:
        fail("--since and --after cannot be used together: give one start of the window.")
    if since is None and after is None and before is None:
        return None
    now = datetime.now(UTC)
    start = datetime.min.replace(tzinfo=UTC)
    if since is not None:
        text = since.strip().lower()
        number, unit = (text[:-1], text[-1]) if text[-1:] in _SINCE_UNITS else (text, "s")
        if not number.isdigit():
            fail(f"--since {since!r} is not a duration; use e.g. 30m, 48h, 7d, 2w or a number of seconds.")
        start = now - timedelta(seconds=int(number) * _SINCE_UNITS[unit])
    if after is not None:
        start = _local_date("--after", after)
    end = _local_date("--before", before) if before is not None else datetime.max.replace(tzinfo=UTC)
    return start, end


def _local_date(flag: str, text: str) -> datetime:
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt).astimezone(UTC)
        except ValueError:
            continue
    fail(f"{flag} {text!r} is not a date; use YYYY-MM-DD, 'YYYY-MM-DD HH:MM[:SS]' or MM-DD-YYYY.")


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
                elif row.status.is_terminal() or row.closed:
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
            targets = [r.job_id for r in rows if not r.status.is_terminal()]
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
