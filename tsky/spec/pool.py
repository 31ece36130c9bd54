"""`pool:`: a set of warm workers that run `setup` once and then take managed jobs (docs/pools.md).

A pool YAML is a task YAML plus a `pool:` section. `PoolSpec` holds that section and its own rules;
`check_pool_task` adds the rules about the rest of the task (no ports, no `ordered`, no job_recovery,
no spot/on-demand mix) and names what is ignored (`run`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from tsky.spec.errors import FieldError

if TYPE_CHECKING:
    from tsky.spec.task import Task

DEFAULT_UPSCALE_DELAY_SECONDS = 300
DEFAULT_DOWNSCALE_DELAY_SECONDS = 1200

# SkyServe keys that a pool section cannot take (they fail with "<field> is not supported for pool.").
SERVICE_ONLY_FIELDS = (
    "replica_policy",
    "replicas",
    "min_replicas",
    "max_replicas",
    "target_qps_per_replica",
    "readiness_probe",
    "ports",
    "tls",
    "load_balancing_policy",
    "spot_placer",
    "base_ondemand_fallback_replicas",
    "dynamic_ondemand_fallback",
    "external_load_balancers",
)


class PoolSpec(BaseModel):
    """Fixed size (`workers`) or autoscaling (`min_workers`..`max_workers`, started at `workers`)."""

    model_config = ConfigDict(extra="forbid")

    workers: StrictInt | None = Field(default=None, ge=0)
    min_workers: StrictInt | None = Field(default=None, ge=0)
    max_workers: StrictInt | None = Field(default=None, ge=0)
    queue_length_threshold: StrictInt | None = Field(default=None, ge=1)
    upscale_delay_seconds: StrictInt = Field(default=DEFAULT_UPSCALE_DELAY_SECONDS, ge=0)
    downscale_delay_seconds: StrictInt = Field(default=DEFAULT_DOWNSCALE_DELAY_SECONDS, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _service_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key in SERVICE_ONLY_FIELDS:
                    message = f"{key} is not supported for pool."
                    if key == "ports":
                        message = "Cannot specify ports in a pool."
                    elif key in ("replicas", "min_replicas", "max_replicas"):
                        message += " Use workers, or min_workers and max_workers."
                    raise FieldError(message, (key,))
        return data

    @model_validator(mode="after")
    def _rules(self) -> PoolSpec:
        for key in ("min_workers", "queue_length_threshold"):
            if getattr(self, key) is not None and self.max_workers is None:
                raise FieldError(f"max_workers must be set when {key} is specified for pool autoscaling.", (key,))
        if self.workers is None and (self.min_workers is None or self.max_workers is None):
            raise FieldError(
                "One of workers, or both min_workers and max_workers must be set: e.g. `workers: 3` "
                "for a fixed-size pool, or `min_workers: 0` and `max_workers: 3` to autoscale."
            )
        if self.max_workers is not None and self.min_size > self.max_workers:
            raise FieldError(
                f"min_workers ({self.min_size}) must be <= max_workers ({self.max_workers}) for pool autoscaling."
            )
        if not self.autoscaling:
            # Non-default delays would silently do nothing on a fixed-size pool.
            for key, default in (
                ("upscale_delay_seconds", DEFAULT_UPSCALE_DELAY_SECONDS),
                ("downscale_delay_seconds", DEFAULT_DOWNSCALE_DELAY_SECONDS),
            ):
                if getattr(self, key) != default:
                    raise FieldError(f"{key} is only allowed for an autoscaling pool (set max_workers).", (key,))
        return self

    @property
    def autoscaling(self) -> bool:
        return self.max_workers is not None

    @property
    def min_size(self) -> int:
        """The fewest workers the pool keeps (`min_workers`, else `workers`)."""
        if self.min_workers is not None:
            return self.min_workers
        return self.workers or 0

    @property
    def max_size(self) -> int:
        return self.max_workers if self.max_workers is not None else self.min_size

    @property
    def initial_workers(self) -> int:
        """How many workers to start with."""
        return self.workers if self.workers is not None else self.min_size

    @property
    def target_queue_length(self) -> int:
        return self.queue_length_threshold or 1

    def describe(self) -> str:
        """SkyPilot's "Worker policy" line."""
        if not self.autoscaling:
            return f"Fixed-size ({self.initial_workers} workers)"
        return (
            f"Autoscaling from {self.min_size} to {self.max_size} workers (queue threshold: {self.target_queue_length})"
        )


def check_pool_task(task: Task) -> list[str]:
    """The rules a pool's task must follow; returns the warnings (what is ignored)."""
    resources = task.resources
    if resources.ordered:
        raise FieldError(
            "Ordered resources are not supported for pools. Use `any_of` instead.", ("resources", "ordered")
        )
    options = resources.options()
    if any(option.ports for option in options):
        raise FieldError("Cannot specify ports in a pool.", ("resources", "ports"))
    if resources.job_recovery is not None or any(e.job_recovery for e in resources.any_of or ()):
        raise FieldError(
            "job_recovery is disabled for Pool: a preempted worker is replaced and its jobs re-run "
            "elsewhere. Remove `job_recovery` (it still applies in the jobs you submit to the pool).",
            ("resources", "job_recovery"),
        )
    if len({bool(option.use_spot) for option in options}) > 1:
        raise FieldError(
            "Mixing spot and non-spot resources is not supported for pools: set the same `use_spot` "
            "for every `any_of` entry.",
            ("resources",),
        )
    warnings = []
    if task.run is not None:
        warnings.append(
            "The `run` section of a pool YAML is ignored: workers only run `setup`, then take jobs "
            "submitted with `tsky jobs launch --pool`."
        )
    return warnings
