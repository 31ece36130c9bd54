"""Task, Resources, storage and pipeline models (first cut: the shape the runtime relies on).

CONTRACT used by workflows/activities/cli (keep these names and meanings):
- `Pipeline.name: str`, `Pipeline.tasks: list[Task]` (names filled in).
- `Task.name: str | None`, `run`, `setup`, `envs: dict[str, str]`, `secrets: dict[str, str]`,
  `num_nodes: int`, `workdir: str | GitWorkdir | None`, `file_mounts: dict[str, str | Storage]`,
  `resources: Resources`.
- `Task.job_recovery() -> JobRecovery`, `Task.requests() -> TaskRequests`.
- `model_dump(mode="json")` redacts secret values; `model_dump(mode="json", context={"reveal_secrets": True})`
  keeps them. `Task.model_validate(dumped)` round-trips.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializationInfo, field_serializer

from tsky.spec.requests import Infra, ResourceRequest

REDACTED = "<redacted>"
DEFAULT_STRATEGY = "EAGER_NEXT_REGION"
STRATEGIES = ("EAGER_NEXT_REGION", "FAILOVER")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class JobRecovery(_Model):
    strategy: str | None = None
    max_restarts_on_errors: int = Field(default=0, ge=0)
    recover_on_exit_codes: list[int] = []


class Resources(_Model):
    infra: str | None = None
    cloud: str | None = None
    region: str | None = None
    zone: str | None = None
    accelerators: str | dict[str, float | None] | list[str] | None = None
    cpus: str | float | None = None
    memory: str | float | None = None
    instance_type: str | None = None
    use_spot: bool | None = None
    job_recovery: JobRecovery | str | None = None
    disk_size: int | str | None = None
    disk_tier: str | None = None
    network_tier: str | None = None
    local_disk: str | None = None
    max_hourly_cost: float | None = None
    ports: int | str | list[int | str] | None = None
    labels: dict[str, str] = {}
    image_id: str | dict[str, str] | None = None
    priority: int | None = None
    priority_class: str | None = None
    autostop: Any = None
    accelerator_args: dict[str, Any] | None = None
    volumes: list[Any] | None = None
    any_of: list[Resources] | None = None
    ordered: list[Resources] | None = None


class Storage(_Model):
    name: str | None = None
    source: str | list[str] | None = None
    store: str | None = None
    persistent: bool = True
    mode: str = "MOUNT"
    type: str | None = None
    config: dict[str, Any] | None = None


class GitWorkdir(_Model):
    url: str
    ref: str | None = None


class TaskRequests(_Model):
    """A task's resolved resource options; `ordered` means try them in this order."""

    options: list[ResourceRequest]
    ordered: bool = False


class Task(_Model):
    name: str | None = None
    workdir: str | GitWorkdir | None = None
    num_nodes: int = Field(default=1, gt=0)
    resources: Resources = Resources()
    file_mounts: dict[str, str | Storage] = {}
    setup: str | None = None
    run: str | None = None
    envs: dict[str, str] = {}
    secrets: dict[str, str] = {}
    # Accepted and kept, not acted on yet.
    service: Any = None
    pool: Any = None
    config: Any = None
    volumes: Any = None
    event_callback: str | None = None
    inputs: Any = None
    outputs: Any = None
    managed_secrets: Any = None
    api_server_access: bool | None = None

    @field_serializer("secrets")
    def _redact(self, secrets: dict[str, str], info: SerializationInfo) -> dict[str, str]:
        if info.context and info.context.get("reveal_secrets"):
            return dict(secrets)
        return {key: REDACTED for key in secrets}

    def job_recovery(self) -> JobRecovery:
        raw = self.resources.job_recovery
        if isinstance(raw, JobRecovery):
            recovery = raw
        else:
            recovery = JobRecovery(strategy=raw)
        strategy = (recovery.strategy or DEFAULT_STRATEGY).upper()
        if strategy == "NONE":
            strategy = DEFAULT_STRATEGY
        return recovery.model_copy(update={"strategy": strategy})

    def requests(self) -> TaskRequests:
        res = self.resources
        infra = None
        if res.infra and res.infra != "*":
            parts = res.infra.split("/")
            infra = Infra(
                cloud=parts[0].lower(),
                region=parts[1] if len(parts) > 1 and parts[1] != "*" else None,
                zone=parts[2] if len(parts) > 2 and parts[2] != "*" else None,
            )
        cpus = str(res.cpus) if res.cpus is not None else None
        return TaskRequests(
            options=[
                ResourceRequest(
                    infra=infra,
                    cpus=float(cpus.rstrip("+")) if cpus else None,
                    cpus_at_least=bool(cpus and cpus.endswith("+")),
                    use_spot=bool(res.use_spot),
                    instance_type=res.instance_type,
                )
            ]
        )


class Pipeline(_Model):
    name: str
    tasks: list[Task]
