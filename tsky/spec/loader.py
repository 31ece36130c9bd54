"""Loading task, pipeline and pool YAMLs, and applying `tsky jobs launch` overrides.

Everything with a side effect lives here, not in the models: reading files, the caller's environment
(for `--env K`), checking that local paths exist and making them absolute (the worker that syncs them
runs elsewhere), and generating a name when none is given.

Why one module of this size: every side effect of reading a spec is here and nowhere else; splitting it
would spread the one rule (models stay pure) over several files.
"""

from __future__ import annotations

import getpass
import re
import secrets
from pathlib import Path as FsPath
from typing import Any

from pydantic import ValidationError

from tsky.spec.envs import (
    collect_overrides,
    env_overrides,
    parse_assignments,
    read_env_file,
    secret_overrides,
    substitute,
)
from tsky.spec.errors import (
    FieldError,
    Path,
    SpecError,
    error_path,
    format_path,
    from_validation_error,
)
from tsky.spec.pool import PoolSpec, check_pool_task
from tsky.spec.resources import Resources, ResourcesEntry
from tsky.spec.storage import GitWorkdir, Storage, is_url
from tsky.spec.task import Pipeline, Task, check_name, fields_at, normalise_secrets
from tsky.spec.yaml_loader import Document, load_documents

__all__ = [
    "apply_overrides",
    "collect_overrides",
    "env_overrides",
    "generated_name",
    "load_pipeline",
    "load_pool",
    "parse_assignments",
    "read_env_file",
    "secret_overrides",
]

_HEADER_KEYS = frozenset({"name", "execution"})
# Fields where SkyPilot substitutes `$VAR` from the task's envs and inline secrets.
_SUBSTITUTED = ("file_mounts", "workdir", "volumes", "service")


def generated_name() -> str:
    """`tsky-<4 hex>-<user>`, SkyPilot's `sky-<4 hex>-<user>` for a job with no name."""
    user = re.sub(r"[^a-z0-9]+", "-", getpass.getuser().lower()).strip("-") or "user"
    return f"tsky-{secrets.token_hex(2)}-{user}"


def _read(source: str | FsPath) -> tuple[str | None, str]:
    """(file name or None, text). A str with no newline that names a file (or ends in .yaml) is a path."""
    if isinstance(source, str):
        looks_like_path = source.endswith((".yaml", ".yml")) or FsPath(source).is_file()
        if "\n" in source or not looks_like_path:
            return None, source
    path = FsPath(source)
    name = str(source)
    try:
        return name, path.expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"File not found: {name}. Check the path.", file=name) from None
    except IsADirectoryError:
        raise SpecError(f"{name} is a directory, not a YAML file.", file=name) from None
    except UnicodeDecodeError:
        raise SpecError(f"{name} is not a UTF-8 text file.", file=name) from None
    except OSError as exc:
        raise SpecError(f"Cannot read {name}: {exc.strerror or exc}.", file=name) from None


def _documents(file: str | None, text: str) -> list[Document]:
    try:
        documents = [doc for doc in load_documents(text) if doc.data is not None]
    except SpecError as exc:
        raise exc.located(file=file) from None
    if not documents:
        raise SpecError("The YAML is empty. A task needs at least a command, e.g. `run: echo hello`.", file=file)
    return documents


def _kind(value: Any) -> str:
    return {str: "a string", list: "a list", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _split_header(documents: list[Document], file: str | None) -> tuple[str | None, list[Document]]:
    first = documents[0]
    data = first.data
    # A job-group header (SkyPilot 0.14) may carry more keys (`primary_tasks`, `termination_delay`).
    job_group = isinstance(data, dict) and data.get("execution") == "parallel"
    if not job_group and not (isinstance(data, dict) and data and set(data) <= _HEADER_KEYS):
        return None, documents
    assert isinstance(data, dict)
    execution = data.get("execution")
    if job_group:
        raise SpecError(
            "`execution: parallel` makes this file a job group, and job groups are not supported yet: "
            "tsky runs the tasks of a pipeline one after another. Remove `execution` (or set it to "
            "`serial`) and `primary_tasks`/`termination_delay` to run them as a pipeline.",
            file=file,
            path="execution",
            line=first.line_of(("execution",)),
        )
    if execution not in (None, "serial"):
        raise SpecError(
            f"Invalid execution mode for pipeline: {execution!r}. Pipelines must use execution: serial "
            "(or omit it); execution: parallel (job groups) is not supported yet.",
            file=file,
            path="execution",
            line=first.line_of(("execution",)),
        )
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise SpecError(f"{name!r} is not of type 'string'. Expected a pipeline name.", file=file, path="name")
    if name is not None:
        try:
            check_name(name, "task" if len(documents) == 1 else "pipeline")
        except FieldError as exc:
            raise SpecError(exc.message, file=file, path="name", line=first.line_of(("name",))) from None
    # A header with no task after it is a pipeline of one empty task.
    return name, documents[1:] or [Document(data={}, index=first.index + 1, line=first.line)]


def _error(
    exc: ValidationError | FieldError,
    doc: Document,
    file: str | None,
    label: str | None,
) -> SpecError:
    if isinstance(exc, ValidationError):
        return from_validation_error(exc, candidates=fields_at, locate=doc.locate, file=file, task=label)
    path = exc.path
    position = doc.locate(path)
    return SpecError(
        exc.message,
        file=file,
        path=format_path(path) or None,
        line=position[0] if position else None,
        column=position[1] if position else None,
        task=label,
    )


def _apply_env(raw: dict[str, Any], env: dict[str, str], secret: dict[str, str]) -> dict[str, Any]:
    """The task's envs and secrets with the overrides applied, and `$VAR` substituted where it applies.

    `--env K` for a K the YAML declares as a secret sets the secret (a `--secret K` wins), so a value
    meant to stay secret never lands in the envs.
    """
    raw = dict(raw)
    envs = raw.get("envs")
    envs = {} if envs is None else envs
    if not isinstance(envs, dict):
        return raw  # the model names the type error
    envs = {str(k): v for k, v in envs.items()}
    try:
        declared = normalise_secrets(raw.get("secrets"))
    except FieldError as exc:
        raise FieldError(exc.message, ("secrets", *exc.path)) from None
    declared.update(secret)
    for key, value in env.items():
        if key in declared and key not in secret:
            declared[key] = value
        if key in envs or key not in declared:
            envs[key] = value
    raw["envs"] = envs
    if declared or "secrets" in raw:
        raw["secrets"] = declared
    variables = {k: str(v) for k, v in envs.items() if v is not None}
    variables.update({k: v for k, v in declared.items() if v is not None})
    for key in _SUBSTITUTED:
        if key in raw:
            raw[key] = substitute(raw[key], variables)
    return raw


def _local_path(path: str) -> FsPath:
    return FsPath(path).expanduser().absolute()


def _local_source(source: str, path: Path) -> str:
    """A file-mount source: a URL as is, a local path made absolute after checking it exists."""
    if is_url(source):
        return source
    local = _local_path(source)
    if not local.exists():
        raise FieldError(
            f"File mount source {source!r} does not exist locally. To fix: check if it exists, and correct the path.",
            path,
        )
    if not local.is_file() and not local.is_dir():
        kind = "a socket" if local.is_socket() else "a named pipe" if local.is_fifo() else "a device file"
        raise FieldError(
            f"File mount source {source!r} is {kind}, which cannot be uploaded: only regular files and "
            "directories can be mounted. To fix: point the mount at a regular file or a directory.",
            path,
        )
    return str(local)


def _resolve_paths(task: Task) -> dict[str, Any]:
    """Local workdir and file-mount sources made absolute; a FieldError for the first one missing."""
    update: dict[str, Any] = {}
    if isinstance(task.workdir, str):
        workdir = _local_path(task.workdir)
        if not workdir.is_dir():
            raise FieldError(
                f"Workdir must be a valid directory (or a symlink to a directory). {task.workdir} not found.",
                ("workdir",),
            )
        update["workdir"] = str(workdir)
    mounts: dict[str, str | Storage] = {}
    for target, source in task.file_mounts.items():
        if isinstance(source, str):
            source = _local_source(source, ("file_mounts", target))
        elif isinstance(source.source, str):
            source = source.model_copy(
                update={"source": _local_source(source.source, ("file_mounts", target, "source"))}
            )
        elif source.source is not None:
            where = ("file_mounts", target, "source")
            sources = [_local_source(item, (*where, index)) for index, item in enumerate(source.source)]
            source = source.model_copy(update={"source": sources})
        mounts[target] = source
    update["file_mounts"] = mounts
    return update


def _build_task(
    doc: Document,
    file: str | None,
    label: str | None,
    env: dict[str, str],
    secret: dict[str, str],
) -> Task:
    if not isinstance(doc.data, dict):
        raise SpecError(
            f"YAML loaded as {type(doc.data).__name__}, not as dict: a task document is a mapping of "
            f"fields such as `run: echo hello`, but this one is {_kind(doc.data)} "
            f"(content: {str(doc.data)[:80]!r}).",
            file=file,
            line=doc.line,
            task=label,
        )
    try:
        task = Task.model_validate(_apply_env(doc.data, env, secret))
        return task.model_copy(update=_resolve_paths(task))
    except (ValidationError, FieldError) as exc:
        raise _error(exc, doc, file, label) from None


def load_pipeline(
    source: str | FsPath,
    *,
    env_overrides: dict[str, str] | None = None,
    secret_overrides: dict[str, str] | None = None,
    name: str | None = None,
) -> Pipeline:
    """A task or pipeline YAML (a path, or YAML text) as a validated `Pipeline`, or a `SpecError`.

    `env_overrides` / `secret_overrides` are `--env` / `--secret` (see `env_overrides()`); `name` is
    `-n`. A lone task takes the pipeline's name (or gives it its own); with no name at all one is
    generated; unnamed pipeline tasks are `<pipeline>-<index>`.
    """
    file, text = _read(source)
    header_name, task_docs = _split_header(_documents(file, text), file)
    env = dict(env_overrides or {})
    secret = dict(secret_overrides or {})

    def label(index: int, doc: Document) -> str | None:
        if len(task_docs) == 1:
            return None
        task_name = doc.data.get("name") if isinstance(doc.data, dict) else None
        return f"task {index}" + (f" {task_name!r}" if isinstance(task_name, str) else "")

    tasks = [_build_task(doc, file, label(i, doc), env, secret) for i, doc in enumerate(task_docs)]
    pipeline_name = name if name is not None else header_name
    if name is not None:
        try:
            check_name(name, "job")
        except FieldError as exc:
            raise SpecError(exc.message, path="--name") from None
    if len(tasks) == 1:
        if pipeline_name is not None:
            tasks[0] = tasks[0].model_copy(update={"name": pipeline_name})
        else:
            pipeline_name = tasks[0].name
    try:
        return Pipeline(name=pipeline_name or generated_name(), tasks=tasks)
    except ValidationError as exc:
        path = error_path(exc.errors()[0])
        if len(path) >= 2 and path[0] == "tasks" and isinstance(path[1], int):
            doc = task_docs[path[1]]
            message = from_validation_error(exc, candidates=fields_at).message
            raise _error(FieldError(message, path[2:]), doc, file, label(path[1], doc)) from None
        raise from_validation_error(exc, candidates=fields_at, file=file) from None


def load_pool(
    source: str | FsPath,
    *,
    env_overrides: dict[str, str] | None = None,
    secret_overrides: dict[str, str] | None = None,
    warnings: list[str] | None = None,
) -> tuple[PoolSpec, Task]:
    """A pool YAML (a task plus `pool:`) as its `PoolSpec` and the task its workers set up.

    The returned task has no `run`: pool workers only run `setup` (SkyPilot ignores `run` with a
    warning; the warning is appended to `warnings` when a list is given).
    """
    file, text = _read(source)
    header_name, task_docs = _split_header(_documents(file, text), file)
    if len(task_docs) != 1:
        raise SpecError(f"A pool YAML holds one task, but this file has {len(task_docs)} task documents.", file=file)
    doc = task_docs[0]
    task = _build_task(doc, file, None, dict(env_overrides or {}), dict(secret_overrides or {}))
    if task.pool is None:
        raise SpecError("The YAML file needs a `pool` section, e.g.\npool:\n  workers: 3", file=file)
    try:
        notes = check_pool_task(task)
    except FieldError as exc:
        raise _error(exc, doc, file, None) from None
    if warnings is not None:
        warnings.extend(notes)
    return task.pool, task.model_copy(update={"run": None, "name": task.name or header_name})


# ---------------------------------------------------------------------------------------------------
# `tsky jobs launch` overrides


def _override_error(exc: ValidationError | FieldError, flag: str) -> SpecError:
    if isinstance(exc, FieldError):
        return SpecError(exc.message, path=flag)
    error = from_validation_error(exc, candidates=fields_at)
    return SpecError(error.message, path=flag)


def _reset(value: Any) -> Any:
    """`none` clears a field, as SkyPilot's flags allow."""
    return None if isinstance(value, str) and value.strip().lower() == "none" else value


def apply_overrides(
    pipeline: Pipeline,
    *,
    infra: str | None = None,
    cpus: str | float | None = None,
    memory: str | float | None = None,
    gpus: str | None = None,
    instance_type: str | None = None,
    use_spot: bool | None = None,
    num_nodes: int | None = None,
    disk_size: int | str | None = None,
    disk_tier: str | None = None,
    network_tier: str | None = None,
    ports: list[str] | None = None,
    priority: int | str | None = None,
    image_id: str | None = None,
    job_recovery: str | None = None,
    workdir: str | None = None,
    git_url: str | None = None,
    git_ref: str | None = None,
) -> tuple[Pipeline, list[str]]:
    """The pipeline with `tsky jobs launch` flags applied, and the warnings to print.

    Resource flags apply to a single task only (to each `any_of` / `ordered` entry too); for a
    pipeline they are ignored with SkyPilot's warning. `workdir` applies to every task. Values are
    checked with the same rules, and the same messages, as the YAML fields.
    """
    flags: dict[str, tuple[str, Any]] = {
        "infra": ("--infra", infra),
        "cpus": ("--cpus", cpus),
        "memory": ("--memory", memory),
        "accelerators": ("--gpus", gpus),
        "instance_type": ("--instance-type", instance_type),
        "use_spot": ("--use-spot", use_spot),
        "disk_size": ("--disk-size", disk_size),
        "disk_tier": ("--disk-tier", disk_tier),
        "network_tier": ("--network-tier", network_tier),
        "ports": ("--ports", ",".join(ports) if ports else None),
        "priority": ("--priority", _int_or_text(priority)),
        "image_id": ("--image-id", image_id),
        "job_recovery": ("--job-recovery", job_recovery),
    }
    given = {key: _reset(value) for key, (_, value) in flags.items() if value is not None}
    warnings: list[str] = []
    tasks = list(pipeline.tasks)
    if len(tasks) > 1 and (given or num_nodes is not None):
        params = {k: v for k, v in {**given, "num_nodes": num_nodes}.items() if v is not None}
        warnings.append(f"override params {params} are ignored, since the yaml file contains multiple tasks.")
    elif given or num_nodes is not None:
        tasks[0] = _override_task(tasks[0], given, flags, num_nodes)
    if workdir is not None:
        path = _local_path(workdir) if isinstance(workdir, str) else None
        if path is None or not path.is_dir():
            raise SpecError(
                f"Workdir must be a valid directory (or a symlink to a directory). {workdir} not found.",
                path="--workdir",
            )
        tasks = [task.model_copy(update={"workdir": str(path)}) for task in tasks]
    if git_url is not None or git_ref is not None:
        tasks = [_git_workdir(task, git_url, git_ref, workdir) for task in tasks]
    return Pipeline(name=pipeline.name, tasks=tasks), warnings


def _int_or_text(value: int | str | None) -> int | str | None:
    """`--priority 10` arrives as text; the field takes an integer (anything else gets its message)."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def _git_workdir(task: Task, url: str | None, ref: str | None, workdir: str | None) -> Task:
    """SkyPilot's --git-url/--git-ref: the workdir becomes a checkout (a ref alone changes the YAML's)."""
    if url is not None and workdir is not None:
        raise SpecError("--git-url and --workdir cannot be combined: the workdir is either a directory or a checkout.")
    current = task.workdir if isinstance(task.workdir, GitWorkdir) else None
    if url is None and current is None:
        raise SpecError("--git-ref needs a git workdir: give --git-url too, or a YAML `workdir: {url, ref}`.")
    try:
        checkout = GitWorkdir(url=url if url is not None else current.url if current else "", ref=ref)
    except (ValidationError, FieldError) as exc:
        raise _override_error(exc, "--git-url") from None
    return task.model_copy(update={"workdir": checkout})


def _override_task(task: Task, given: dict[str, Any], flags: dict[str, tuple[str, Any]], num_nodes: int | None) -> Task:
    for key, value in given.items():
        try:
            ResourcesEntry.model_validate({key: value})
        except (ValidationError, FieldError) as exc:
            raise _override_error(exc, flags[key][0]) from None
    update: dict[str, Any] = {}
    if num_nodes is not None:
        try:
            Task.model_validate({"num_nodes": num_nodes})
        except ValidationError as exc:
            raise _override_error(exc, "--num-nodes") from None
        update["num_nodes"] = num_nodes
    if given:
        outer = task.resources.model_dump(exclude_none=True)
        outer.update(given)
        # Each entry's own value would win over the outer one: drop it so the flag applies everywhere.
        for key in ("any_of", "ordered"):
            if key in outer:
                outer[key] = [{k: v for k, v in e.items() if k not in given} for e in outer[key]]
        try:
            update["resources"] = Resources.model_validate(outer)
        except (ValidationError, FieldError) as exc:
            error = _override_error(exc, ", ".join(flags[k][0] for k in given))
            raise SpecError(
                f"{error.message} (after applying the flags to the YAML's resources)", path=error.path
            ) from None
    return task.model_copy(update=update)
