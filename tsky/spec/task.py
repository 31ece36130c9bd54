"""Task and pipeline models: what a SkyPilot task YAML says, validated, and what the runtime reads.

CONTRACT used by workflows/activities/cli (keep these names and meanings):
- `Pipeline.name: str`, `Pipeline.tasks: list[Task]` (names filled in).
- `Task.name: str | None`, `run`, `setup`, `envs: dict[str, str]`, `secrets: dict[str, str]`,
  `num_nodes: int`, `workdir: str | GitWorkdir | None`, `file_mounts: dict[str, str | Storage]`,
  `resources: Resources`.
- `Task.job_recovery() -> JobRecovery`, `Task.requests() -> TaskRequests`, `Task.ignored_fields()`.
- `model_dump(mode="json")` redacts secret values; `model_dump(mode="json", context={"reveal_secrets": True})`
  keeps them. `Task.model_validate(dumped)` round-trips.

The models are pure (no I/O, no environment) so they can be validated inside workflow code. Reading
files, env overrides, `$VAR` substitution and local path checks live in `tsky.spec.loader`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializationInfo,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    field_serializer,
    field_validator,
    model_validator,
)

from tsky.spec.envs import ENV_NAME_PATTERN, ENV_NAME_RE
from tsky.spec.errors import FieldError, Path
from tsky.spec.lifecycle import format_duration, parse_duration
from tsky.spec.pool import PoolSpec
from tsky.spec.requests import ResourceRequest
from tsky.spec.resources import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    JobRecovery,
    Resources,
    ResourcesEntry,
    resolve,
)
from tsky.spec.storage import GitWorkdir, Storage, is_url
from tsky.spec.yaml_loader import dump_documents

__all__ = [
    "DEFAULT_STRATEGY",
    "REDACTED",
    "STRATEGIES",
    "GitWorkdir",
    "JobRecovery",
    "Pipeline",
    "Resources",
    "ResourcesEntry",
    "Storage",
    "Task",
    "TaskRequests",
]

REDACTED = "<redacted>"
NAME_RE = re.compile(r"[a-zA-Z0-9]+(?:[._-]{1,2}[a-zA-Z0-9]+)*")
SECRET_PREFIX = "secrets:"


def _mapping_or_string(value: Any) -> str:
    return "#mapping" if isinstance(value, dict | BaseModel) else "#string"


# A string (local path, bucket URL) or an object; tagged so an error names only the form that was used.
Workdir = Annotated[
    Annotated[StrictStr, Tag("#string")] | Annotated[GitWorkdir, Tag("#mapping")],
    Discriminator(_mapping_or_string),
]
FileMountSource = Annotated[
    Annotated[StrictStr, Tag("#string")] | Annotated[Storage, Tag("#mapping")],
    Discriminator(_mapping_or_string),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TaskRequests(_Model):
    """A task's resolved resource options; `ordered` means try them in this order."""

    options: list[ResourceRequest]
    ordered: bool = False


def check_name(name: str, what: str = "task") -> None:
    if not NAME_RE.fullmatch(name):
        raise FieldError(
            f"Invalid {what} name {name}. Valid name: ASCII characters and may contain lowercase and "
            "uppercase letters, digits, underscores, periods, and dashes. Must start and end with "
            "alphanumeric characters. No triple dashes or underscores."
        )


def normalise_secrets(value: Any) -> dict[str, str | None]:
    """`secrets:` as a dict of name -> value, `None` for a reference to a managed secret.

    SkyPilot accepts inline values, null values and `secrets:NAME` keys (references to its secret
    store), or a list of `secrets:NAME` items.
    """
    if value is None:
        return {}
    if isinstance(value, list):
        out: dict[str, str | None] = {}
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.startswith(SECRET_PREFIX):
                raise FieldError(
                    f"Invalid secret in array form: {item!r}. Array items must use the secrets: prefix "
                    "(e.g., secrets:HF_TOKEN), or give values as a mapping (HF_TOKEN: ...).",
                    (index,),
                )
            out[item[len(SECRET_PREFIX) :]] = None
        return out
    if not isinstance(value, dict):
        raise FieldError(f"{value!r} is not of type 'object'. Expected a mapping of NAME: value.")
    out = {}
    for key, item in value.items():
        name = str(key)
        if name.startswith(SECRET_PREFIX):
            out[name[len(SECRET_PREFIX) :]] = None
        else:
            out[name] = None if item is None else str(item)
    return out


def _check_names(names: list[str], field: str) -> None:
    bad = [name for name in names if not ENV_NAME_RE.match(name)]
    if bad:
        listed = ", ".join(repr(name) for name in bad)
        raise FieldError(
            f"The `{field}` field contains invalid keys: {listed} does not match any of the regexes: "
            f"{ENV_NAME_PATTERN!r}. Names start with a letter or _ and hold letters, digits and _."
        )


class Task(_Model):
    """One task of a SkyPilot YAML: its resources, files, setup and run commands."""

    name: StrictStr | None = None
    workdir: Workdir | None = None
    num_nodes: StrictInt = 1
    resources: Resources = Resources()
    file_mounts: dict[str, FileMountSource] = {}
    setup: StrictStr | None = None
    run: StrictStr | None = None
    envs: dict[str, str] = {}
    secrets: dict[str, str] = {}
    # Wall time from the task's first RUNNING, across recoveries (SkyPilot PR #10476): `10h`, `1h30m`.
    max_duration: str | None = None
    # Accepted and kept, not acted on yet (`ignored_fields()` names the ones that are set).
    service: Any = None
    pool: PoolSpec | None = None
    config: Any = None
    volumes: Any = None
    event_callback: StrictStr | None = None
    inputs: Any = None
    outputs: Any = None
    managed_secrets: Any = None
    api_server_access: StrictBool | None = None
    file_mounts_mapping: Any = None
    metadata: Any = Field(default=None, alias="_metadata")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None:
            check_name(value)
        return value

    @field_validator("max_duration", mode="before")
    @classmethod
    def _max_duration(cls, value: Any) -> Any:
        return None if value is None else format_duration(parse_duration(value))

    @field_validator("num_nodes", mode="before")
    @classmethod
    def _num_nodes(cls, value: Any) -> Any:
        if value is None:
            return 1
        if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            raise FieldError(f"num_nodes should be a positive int. Got: {value}")
        return value

    @field_validator("resources", mode="before")
    @classmethod
    def _resources(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("file_mounts", mode="before")
    @classmethod
    def _file_mounts(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for target in value:
                if not isinstance(target, str):
                    raise FieldError(f"Mount path {target!r} must be a string path.", (target,))
                if target.endswith("/") and target != "/":
                    raise FieldError(
                        f"Mount paths cannot end with a slash Found: {target} in file_mounts.{target}: "
                        f"{value[target]}. Write {target.rstrip('/')} instead.",
                        (target,),
                    )
                if is_url(target):
                    raise FieldError(
                        f"File mount destination paths cannot be cloud storage: {target}. The key is the "
                        "path on the cluster, the value the source (e.g. /data: s3://bucket/data).",
                        (target,),
                    )
        return {} if value is None else value

    @field_validator("envs", mode="before")
    @classmethod
    def _envs(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            return value  # the type error names the field
        envs = {str(key): item for key, item in value.items()}
        _check_names(list(envs), "envs")
        for key, item in envs.items():
            if item is None:
                raise FieldError(
                    f"Environment variable {key!r} is None. Please set a value for it in task YAML or "
                    f"with --env flag (--env {key}=value, or --env {key} to pass it from your "
                    f'environment). To set it to be empty, use an empty string ({key}: "" in task YAML '
                    f'or --env {key}="" in CLI).',
                    (key,),
                )
        # SkyPilot turns every value into a string (`true` becomes "True").
        return {key: str(item) for key, item in envs.items()}

    @field_validator("secrets", mode="before")
    @classmethod
    def _secrets(cls, value: Any) -> Any:
        secrets = normalise_secrets(value)
        _check_names(list(secrets), "secrets")
        for key, item in secrets.items():
            if item is None:
                raise FieldError(
                    f"Secret {key!r} has no value: it refers to a managed secret, and tsky has no secret "
                    f"store. Pass it at launch with --secret {key}=value (or --secret {key} to take it "
                    "from your environment).",
                    (key,),
                )
        return secrets

    @model_validator(mode="after")
    def _rules(self) -> Task:
        if self.service is not None and self.pool is not None:
            raise FieldError("Cannot set both service and pool in the same task.")
        return self

    @field_serializer("secrets")
    def _redact(self, secrets: dict[str, str], info: SerializationInfo) -> dict[str, str]:
        if info.context and info.context.get("reveal_secrets"):
            return dict(secrets)
        return {key: REDACTED for key in secrets}

    def job_recovery(self) -> JobRecovery:
        """The recovery policy, strategy upper-case and defaulted (`EAGER_NEXT_REGION`); `NONE` = off."""
        return self.resources.effective_job_recovery()

    def max_duration_seconds(self) -> float | None:
        return None if self.max_duration is None else parse_duration(self.max_duration)

    def on_demand(self) -> Task:
        """The task with every resource option on on-demand instances (spot → on-demand fallback)."""
        entries = {"use_spot": False}
        resources = self.resources.model_copy(
            update={
                **entries,
                "any_of": [e.model_copy(update=entries) for e in self.resources.any_of or []] or None,
                "ordered": [e.model_copy(update=entries) for e in self.resources.ordered or []] or None,
            }
        )
        return self.model_copy(update={"resources": resources})

    def requests(self) -> TaskRequests:
        options, ordered = resolve(self.resources)
        return TaskRequests(options=options, ordered=ordered)

    def priority(self) -> int:
        return self.resources.options()[0].priority or 0

    def ignored_fields(self) -> list[str]:
        """The keys this task sets that tsky accepts but does not act on (yet)."""
        ignored = [
            key
            for key in (
                "service",
                "pool",
                "config",
                "volumes",
                "event_callback",
                "inputs",
                "outputs",
                "managed_secrets",
                "file_mounts_mapping",
            )
            if getattr(self, key) is not None
        ]
        if self.api_server_access is not None:
            ignored.append("api_server_access")
        if self.metadata is not None:
            ignored.append("_metadata")
        for option in [self.resources, *(self.resources.any_of or ()), *(self.resources.ordered or ())]:
            # `labels` become tags/labels on aws, gcp and k8s, `priority` orders jobs waiting for a running
            # slot; `ports` (no firewall/Service yet) and the disk/network tiers are not acted on.
            keys = ("autostop", "accelerator_args", "volumes", "ephemeral_storage", "local_disk", "ports")
            for key in (*keys, "disk_tier", "network_tier"):
                name = f"resources.{key}"
                if getattr(option, key) is not None and name not in ignored:
                    ignored.append(name)
        return ignored

    def to_yaml_dict(self, *, reveal_secrets: bool = False) -> dict[str, Any]:
        """The task as a SkyPilot YAML mapping: only what is set, secrets redacted unless revealed."""
        data = self.model_dump(
            mode="json",
            by_alias=True,
            exclude_none=True,
            exclude_defaults=True,
            context={"reveal_secrets": reveal_secrets},
        )
        if not self.secrets:
            data.pop("secrets", None)  # a field serializer defeats exclude_defaults
        return data


class Pipeline(_Model):
    """Tasks run one after another; a one-task YAML is a pipeline of one."""

    name: StrictStr
    tasks: list[Task]

    @model_validator(mode="after")
    def _rules(self) -> Pipeline:
        check_name(self.name, "pipeline")
        if not self.tasks:
            raise FieldError("A pipeline needs at least one task.", ("tasks",))
        for index, task in enumerate(self.tasks):
            if task.name is None:
                # SkyPilot's rule: a lone task takes the pipeline's name, others `<pipeline>-<index>`.
                name = self.name if len(self.tasks) == 1 else f"{self.name}-{index}"
                self.tasks[index] = task.model_copy(update={"name": name})
        seen: set[str] = set()
        for index, task in enumerate(self.tasks):
            assert task.name is not None
            if task.name in seen:
                raise FieldError(
                    f"Task name {task.name!r} is duplicated in the DAG. Give each task of the pipeline a "
                    "unique `name`.",
                    ("tasks", index, "name"),
                )
            seen.add(task.name)
        if len({task.priority() for task in self.tasks}) > 1:
            raise FieldError(
                "Multiple tasks in the DAG have different priorities. Set the same `priority` in every "
                "task of the pipeline."
            )
        return self

    def to_yaml(self, *, reveal_secrets: bool = False) -> str:
        """The YAML a user would write: a single task as one document (when the pipeline took its name),
        else a `name` header and one document per task."""
        if len(self.tasks) == 1 and self.tasks[0].name == self.name:
            return dump_documents([self.tasks[0].to_yaml_dict(reveal_secrets=reveal_secrets)])
        documents: list[Any] = [{"name": self.name}]
        documents += [task.to_yaml_dict(reveal_secrets=reveal_secrets) for task in self.tasks]
        return dump_documents(documents)


# The fields each section of a task YAML allows, for "did you mean" (kind names SkyPilot's wording).
def _names(model: type[BaseModel], extra: tuple[str, ...] = ()) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()] + list(extra)


def fields_at(path: Path) -> tuple[list[str], str]:
    """The keys allowed at `path` of a task YAML and the kind of section it is."""
    head, rest = (path[0], path[1:]) if path else (None, ())
    if head is None:
        return _names(Task), "task"
    if head == "resources":
        entry = bool(rest) and rest[0] in ("any_of", "ordered")
        if entry:
            rest = rest[2:]
        if rest and rest[0] == "job_recovery":
            return _names(JobRecovery), "resources"
        model: type[BaseModel] = ResourcesEntry if entry else Resources
        return _names(model, ResourcesEntry.YAML_KEYS), "resources"
    if head == "file_mounts":
        return _names(Storage), "storage"
    if head == "workdir":
        return _names(GitWorkdir), "task"
    if head == "pool":
        return _names(PoolSpec), "pool"
    return [], "task"
