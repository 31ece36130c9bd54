"""`resources:`: every form SkyPilot accepts, and its resolution into the requests the planner sees.

The model keeps what the user wrote (accelerators as a string, a set-like dict or an ordered list;
`any_of` / `ordered` entries) in a canonical spelling, so a spec dumps back to YAML that reads like the
original and loads to an equal spec. `resolve()` does SkyPilot's resolution (docs/yaml.md): outer
fields are defaults for each `any_of` / `ordered` entry (labels merged), an accelerator dict is a set of
alternatives and a list an ordered preference, and both multiply with the entries.

Why one module of this size: `resources:` has many accepted forms (SkyPilot's), and each form's
validation and error text sit next to its model; the resolution to requests depends on all of them.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from tsky.spec.errors import FieldError, unknown_field_message
from tsky.spec.requests import DEFAULT_DISK_SIZE_GB, Infra, ResourceRequest

# The `job_recovery` strategies (what each does: tsky.workflows.recovery).
EAGER_NEXT_REGION = "EAGER_NEXT_REGION"
FAILOVER = "FAILOVER"
# "NONE" is tsky's deliberate choice (SkyPilot silently puts the default back): a preemption or a
# failure ends the job instead of relaunching it.
NO_RECOVERY = "NONE"
STRATEGIES = (EAGER_NEXT_REGION, FAILOVER, NO_RECOVERY)
DEFAULT_STRATEGY = EAGER_NEXT_REGION

# Clouds tsky can launch on, as `infra:` spells them.
TSKY_CLOUDS = ("aws", "gcp", "k8s", "ssh", "local")
# Every cloud SkyPilot's `infra:` accepts. tsky accepts them all so any SkyPilot YAML loads; the
# planner treats the ones it cannot launch on like clouds that are not enabled.
KNOWN_CLOUDS = frozenset(
    {
        *TSKY_CLOUDS,
        "kubernetes",
        "azure",
        "lambda",
        "ibm",
        "scp",
        "oci",
        "paperspace",
        "runpod",
        "vast",
        "cudo",
        "fluidstack",
        "do",
        "nebius",
        "vsphere",
        "hyperbolic",
        "seeweb",
        "shadeform",
        "primeintellect",
        "slurm",
    }
)

DISK_TIERS = ("low", "medium", "high", "ultra", "best", "none")
NETWORK_TIERS = ("standard", "best")
ACCELERATOR_ARGS = ("runtime_version", "tpu_name", "tpu_vm", "gcp_queued_resource")

_NUMBER = r"\d+(?:\.\d+)?|\.\d+"
_MEMORY_RE = re.compile(rf"^({_NUMBER})\s*([kmgtp](?:i?b)?)?(\+)?$", re.IGNORECASE)
_DISK_RE = re.compile(r"^(\d+)\s*([kmgtp](?:i?b)?)?$", re.IGNORECASE)
_UNIT_GB = {"k": 1 / 1024**2, "m": 1 / 1024, "g": 1.0, "t": 1024.0, "p": 1024.0**2}
_ACCEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_. -]*$")
_ACCEL_MEMORY_RE = re.compile(rf"^({_NUMBER})\s*[gt]b\+?$", re.IGNORECASE)
_PORT_RANGE_RE = re.compile(r"^(\d+)(?:-(\d+))?$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ---------------------------------------------------------------------------------------------------
# Value parsers, shared by the models, the CLI overrides and `resolve()`.


def _is_number(value: Any) -> bool:
    """A finite int or float (YAML's `.inf` and `.nan` are floats too, and no valid count)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(number: float) -> str:
    return str(int(number)) if number == int(number) else str(number)


def parse_cpus(value: Any) -> tuple[float, bool]:
    """`4`, `"4"`, `"4+"` -> (4.0, at_least)."""
    text = _fmt(value) if _is_number(value) else value
    if not isinstance(text, str) or not re.fullmatch(rf"-?(?:{_NUMBER})\+?", text.strip()):
        raise FieldError(
            f'The "cpus" field should be either a number or a string "<number>+". Found: {value!r}. '
            "Use e.g. `cpus: 4` for exactly 4 vCPUs or `cpus: 4+` for at least 4."
        )
    text = text.strip()
    at_least = text.endswith("+")
    number = float(text.rstrip("+"))
    if number <= 0:
        raise FieldError(f'The "cpus" field should be positive. Found: {text!r}.')
    return number, at_least


def parse_memory(value: Any) -> tuple[float, bool]:
    """`16`, `"16+"`, `"64GB"`, `"1024MB+"` -> (GB, at_least)."""
    text = _fmt(value) if _is_number(value) else value
    match = _MEMORY_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        if isinstance(text, str) and text.strip().startswith("-"):
            raise FieldError(f'The "memory" field should be positive. Found: {text!r}.')
        raise FieldError(
            '"memory" field should be a number (e.g. "16") or "<number><unit>" where unit is one of '
            'KB/MB/GB/TB/PB (e.g. "16GB") or "<number>+" for "at least" (e.g. "16GB+"). '
            f"Got: {value!r}."
        )
    number, unit, plus = match.groups()
    gigabytes = float(number) * _UNIT_GB[(unit or "g")[0].lower()]
    if gigabytes <= 0:
        raise FieldError(f'The "memory" field should be positive. Found: {text!r}.')
    return gigabytes, bool(plus)


def parse_disk_size(value: Any) -> int:
    """`256` or `"256GB"` / `"1TB"` -> whole GB."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    match = _DISK_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise FieldError(
            f'"disk_size" must be a positive integer (in GB) or a size with a unit such as "100GB" '
            f'or "1TB". Got: {value!r}.'
        )
    number, unit = match.groups()
    gigabytes = int(number) * _UNIT_GB[(unit or "g")[0].lower()]
    if gigabytes <= 0 or gigabytes != int(gigabytes):
        raise FieldError(f'"disk_size" must be a positive integer (in GB). Got: {value!r}.')
    return int(gigabytes)


def parse_accelerator(text: str) -> tuple[str, float]:
    """`"V100"` -> ("V100", 1); `"V100:4"` -> ("V100", 4); `"T4:0.5"` -> ("T4", 0.5)."""
    text = text.strip()
    parts = [part.strip() for part in text.split(":")]
    if _ACCEL_MEMORY_RE.match(parts[0]) or (len(parts) == 3 and _ACCEL_MEMORY_RE.match(parts[1])):
        raise FieldError(
            f"Memory-based accelerator requests such as {text!r} are not supported by tsky yet. "
            "Name the accelerator instead, e.g. `A100-80GB:1`."
        )
    if len(parts) > 2 or not _ACCEL_NAME_RE.match(parts[0]):
        raise FieldError(f'The "accelerators" field as a str should be <name> or <name>:<cnt>. Found: {text!r}.')
    count: float = 1
    if len(parts) == 2:
        try:
            count = float(parts[1])
        except ValueError:
            raise FieldError(
                'The "accelerators" field as a str should be <name> or <name>:<cnt>. '
                f"Found: {text!r}. The count must be a number, e.g. V100:2."
            ) from None
    if not math.isfinite(count) or count <= 0:
        shown = _fmt(count) if math.isfinite(count) else parts[1]
        raise FieldError(f"Accelerator count must be a positive number. Got: {parts[0]!r}: {shown}.")
    return parts[0], count


def _accelerator_count(name: str, value: Any) -> float:
    if value is None:
        return 1
    if isinstance(value, str) or _is_number(value):
        try:
            count = float(value)
        except ValueError:
            count = float("nan")
        if math.isfinite(count):
            if count <= 0:
                raise FieldError(f"Accelerator count must be a positive number. Got: {name!r}: {value}.")
            return count
    raise FieldError(f"Accelerator count must be a positive number. Got: {name!r}: {value!r}.")


def parse_ports(value: Any) -> list[str] | None:
    """`8080`, `"8080"`, `"1-3"`, `"80,443"` or a list of those -> `["8080", "1-3", ...]`."""
    if value is None:
        return None
    ports: list[str] = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise FieldError(f'Invalid port {item!r}: give a port (8080), a range ("1-3") or a list.')
        for piece in (p.strip() for p in str(item).split(",")):
            match = _PORT_RANGE_RE.match(piece)
            low = int(match.group(1)) if match else 0
            high = int(match.group(2) or low) if match else 0
            if match is None or low > high:
                raise FieldError(
                    f'Invalid port range {piece}. Please use the format "from-to", in which from <= to. e.g. "1-3".'
                )
            if low < 1 or high > 65535:
                raise FieldError(f"Invalid port {piece}: ports must be between 1 and 65535.")
            ports.append(piece)
    return ports or None


def parse_infra(text: str) -> Infra | None:
    """`aws`, `aws/us-east-1`, `gcp/*/us-central1-a`, `k8s/<context>`, `ssh/<pool>`, `*` -> Infra.

    `None` means anywhere. Cloud names are case-insensitive; `kubernetes` is spelled `k8s`.
    """
    raw = text.strip()
    parts = raw.split("/")
    cloud = parts[0].lower()
    hint = (
        "Use cloud[/region[/zone]] (e.g. aws/us-east-1, gcp/*/us-central1-a), k8s/<context>, "
        "ssh/<pool>, local or *; tsky launches on " + ", ".join(TSKY_CLOUDS) + "."
    )
    if not raw or any(not p for p in parts):
        raise FieldError(f"Invalid infra {text!r}: empty part. {hint}")
    if cloud in ("k8s", "kubernetes"):
        context = "/".join(parts[1:]) or None
        return Infra(cloud="k8s", region=None if context == "*" else context)
    if cloud != "*" and cloud not in KNOWN_CLOUDS:
        raise FieldError(f"Invalid infra {text!r}: unknown cloud {parts[0]!r}. {hint}")
    if len(parts) > (2 if cloud == "ssh" else 3):
        raise FieldError(f"Invalid infra {text!r}: too many parts. {hint}")
    region = parts[1] if len(parts) > 1 and parts[1] != "*" else None
    zone = parts[2] if len(parts) > 2 and parts[2] != "*" else None
    if cloud == "*" and region is None and zone is None:
        return None
    return Infra(cloud=None if cloud == "*" else cloud, region=region, zone=zone)


def canonical_infra(text: str) -> str | None:
    infra = parse_infra(text)
    return None if infra is None else str(infra)


def _legacy_infra(cloud: Any, region: Any, zone: Any) -> str | None:
    """Legacy `cloud` / `region` / `zone` as one `infra` string."""
    for key, value in (("cloud", cloud), ("region", region), ("zone", zone)):
        if value is not None and not isinstance(value, str):
            raise FieldError(f"{value!r} is not of type 'string'.", (key,))
    if cloud is not None and cloud.lower() not in KNOWN_CLOUDS:
        raise FieldError(
            f"Invalid cloud {cloud!r}. Use one of {', '.join(TSKY_CLOUDS)} (or better, `infra:`).",
            ("cloud",),
        )
    if cloud is None and region is None and zone is None:
        return None
    if cloud is not None and cloud.lower() in ("k8s", "kubernetes", "ssh"):
        if cloud.lower() == "ssh" and region and region.startswith("ssh-"):
            region = region[len("ssh-") :]  # SkyPilot stores an SSH pool as region `ssh-<pool>`
        # The region is a kubeconfig context or an SSH node pool; neither has zones.
        return canonical_infra(f"{cloud}/{region}" if region else cloud)
    return canonical_infra("/".join([cloud or "*", region or "*", zone or "*"]))


# ---------------------------------------------------------------------------------------------------
# Models


class JobRecovery(_Model):
    """`job_recovery:` as a dict. A plain string is its `strategy`."""

    strategy: str | None = None
    max_restarts_on_errors: StrictInt = Field(default=0, ge=0)
    recover_on_exit_codes: list[int] = []

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):
            raise FieldError(f"{value!r} is not of type 'string'. Expected a strategy name.")
        strategy = value.strip().upper()
        if strategy not in STRATEGIES:
            names = [s.lower() for s in STRATEGIES]
            raise FieldError(f"Jobs recovery strategy {value!r} is not a valid jobs recovery strategy among {names}.")
        return strategy

    @field_validator("recover_on_exit_codes", mode="before")
    @classmethod
    def _exit_codes(cls, value: Any) -> Any:
        if value is None:
            return []
        codes = value if isinstance(value, list) else [value]
        for index, code in enumerate(codes):
            where = (index,) if isinstance(value, list) else ()
            if not isinstance(code, int) or isinstance(code, bool):
                raise FieldError(f"{code!r} is not of type 'integer'. Expected an exit code 0-255.", where)
            if code < 0:
                raise FieldError(f"{code} is less than the minimum of 0.", where)
            if code > 255:
                raise FieldError(f"{code} is greater than the maximum of 255.", where)
        if len(set(codes)) != len(codes):
            raise FieldError(f"{codes} has non-unique elements. List each exit code once.")
        return codes


def _as_job_recovery(value: Any) -> Any:
    return {"strategy": value} if isinstance(value, str) else value


class ResourcesEntry(_Model):
    """One set of resource fields: an `any_of` / `ordered` entry, and the base of `Resources`."""

    # Keys a YAML may use that are not field names here (aliases and the legacy location keys).
    YAML_KEYS: ClassVar[tuple[str, ...]] = ("gpus", "cloud", "region", "zone")

    infra: str | None = None
    accelerators: str | dict[str, int | float | None] | list[str] | None = Field(
        default=None, validation_alias=AliasChoices("accelerators", "gpus")
    )
    cpus: str | None = None
    memory: str | None = None
    instance_type: StrictStr | None = None
    use_spot: StrictBool | None = None
    job_recovery: JobRecovery | None = None
    disk_size: int | None = None
    disk_tier: str | None = None
    network_tier: str | None = None
    local_disk: StrictStr | None = None
    max_hourly_cost: float | None = Field(default=None, gt=0)
    ports: list[str] | None = None
    labels: dict[StrictStr, StrictStr] = {}
    image_id: StrictStr | dict[StrictStr, StrictStr] | None = None
    priority: StrictInt | None = Field(default=None, ge=-1000, le=1000)
    priority_class: StrictStr | None = None
    autostop: Any = None
    accelerator_args: dict[str, Any] | None = None
    volumes: list[Any] | None = None
    ephemeral_storage: Any = None

    @model_validator(mode="before")
    @classmethod
    def _aliases_and_legacy(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "gpus" in data and "accelerators" in data:
            raise FieldError("Cannot specify both `gpus` and `accelerators`; they are the same field.")
        legacy = {key: data.pop(key) for key in ("cloud", "region", "zone") if key in data}
        if legacy:
            if data.get("infra") is not None and any(v is not None for v in legacy.values()):
                got = ", ".join(f"{k}={v!r}" for k, v in {"infra": data["infra"], **legacy}.items())
                raise FieldError(
                    "Cannot specify both `infra` and `cloud`, `region`, or `zone` parameters. "
                    f"Got: {got}. Use `infra` alone, e.g. infra: aws/us-east-1."
                )
            infra = _legacy_infra(legacy.get("cloud"), legacy.get("region"), legacy.get("zone"))
            if infra is not None:
                data["infra"] = infra
        if "job_recovery" in data:
            data["job_recovery"] = _as_job_recovery(data["job_recovery"])
        return data

    @field_validator("infra", mode="before")
    @classmethod
    def _infra(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):
            raise FieldError(f"{value!r} is not of type 'string'. Expected e.g. infra: aws/us-east-1.")
        return canonical_infra(value)

    @field_validator("accelerators", mode="before")
    @classmethod
    def _accelerators(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            if value is not None:
                parse_accelerator(value)
            return value.strip() if value is not None else None
        if isinstance(value, dict):
            if not value:
                return None
            out: dict[str, int | float | None] = {}
            for name, count in value.items():
                if not isinstance(name, str):
                    raise FieldError(f"Accelerator name {name!r} must be a string.")
                parse_accelerator(name)
                out[name.strip()] = None if count is None else _canonical_count(name, count)
            return out
        if isinstance(value, list):
            for index, item in enumerate(value):
                if not isinstance(item, str):
                    raise FieldError(
                        f"{item!r} is not of type 'string'. List items are <name> or <name>:<cnt>.",
                        (index,),
                    )
                try:
                    parse_accelerator(item)
                except FieldError as exc:
                    raise FieldError(exc.message, (index,)) from None
            return [item.strip() for item in value] or None
        raise FieldError(
            f"Invalid accelerators {value!r}: use <name>[:<cnt>] (e.g. V100:1), a mapping of "
            "alternatives ({V100: 1, A100: 1}) or an ordered list ([V100:1, A100:1])."
        )

    @field_validator("cpus", mode="before")
    @classmethod
    def _cpus(cls, value: Any) -> Any:
        if value is None:
            return None
        number, at_least = parse_cpus(value)
        return _fmt(number) + ("+" if at_least else "")

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> Any:
        if value is None:
            return None
        parse_memory(value)
        return (_fmt(value) if _is_number(value) else str(value)).strip().replace(" ", "")

    @field_validator("disk_size", mode="before")
    @classmethod
    def _disk_size(cls, value: Any) -> Any:
        return None if value is None else parse_disk_size(value)

    @field_validator("disk_tier", mode="before")
    @classmethod
    def _disk_tier(cls, value: Any) -> Any:
        return _choice(value, DISK_TIERS, "disk_tier")

    @field_validator("network_tier", mode="before")
    @classmethod
    def _network_tier(cls, value: Any) -> Any:
        return _choice(value, NETWORK_TIERS, "network_tier")

    @field_validator("ports", mode="before")
    @classmethod
    def _ports(cls, value: Any) -> Any:
        return parse_ports(value)

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("image_id", mode="before")
    @classmethod
    def _image_id(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                raise FieldError("image_id is empty. Give an image id, e.g. docker:ubuntu:22.04.")
            return value.strip()
        if isinstance(value, dict):
            return {str(k).strip(): v.strip() if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("accelerator_args", mode="before")
    @classmethod
    def _accelerator_args(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key in value:
                if key not in ACCELERATOR_ARGS:
                    raise FieldError(unknown_field_message(str(key), ACCELERATOR_ARGS, "resources"), (key,))
        return value

    def effective_job_recovery(self) -> JobRecovery:
        """`job_recovery` with the default strategy filled in, as `jobs launch` does."""
        recovery = self.job_recovery or JobRecovery()
        return recovery.model_copy(update={"strategy": recovery.strategy or DEFAULT_STRATEGY})


def _canonical_count(name: str, count: Any) -> int | float:
    number = _accelerator_count(name, count)
    return int(number) if number == int(number) else number


def _choice(value: Any, choices: tuple[str, ...], field: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, str) or value.strip().lower() not in choices:
        raise FieldError(f"Invalid {field} {value!r}. {field} must be one of {', '.join(choices)}.")
    return value.strip().lower()


class Resources(ResourcesEntry):
    """`resources:`: the fields of one entry, plus `any_of` or `ordered` alternatives."""

    any_of: list[ResourcesEntry] | None = None
    ordered: list[ResourcesEntry] | None = None

    @field_validator("any_of", "ordered", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return value or None

    @model_validator(mode="after")
    def _rules(self) -> Resources:
        if self.any_of and self.ordered:
            raise FieldError('Cannot specify both "any_of" and "ordered" in resources. Pick one.')
        accelerators = self.accelerators
        several = isinstance(accelerators, dict | list) and len(accelerators) > 1
        if several and self.ordered:
            raise FieldError(
                'Cannot specify multiple "accelerators" with "ordered" in resources. '
                "Put one accelerator in each `ordered` entry instead.",
                ("accelerators",),
            )
        if several and self.any_of and isinstance(accelerators, list):
            raise FieldError(
                'Cannot specify multiple "accelerators" with prefered order (i.e., list of accelerators) '
                'with "any_of" in resources. Use a mapping ({V100: 1, A100: 1}) for a set of alternatives.',
                ("accelerators",),
            )
        options = self.options()
        recoveries = {o.effective_job_recovery().model_dump_json() for o in options}
        if len(recoveries) > 1:
            raise FieldError(
                "All resources in the task must have the same job recovery strategy. Set `job_recovery` "
                "once, outside `any_of` / `ordered`."
            )
        if len({o.priority for o in options}) > 1:
            raise FieldError(
                "All resources in the task must have the same priority. Set `priority` once, outside "
                "`any_of` / `ordered`."
            )
        for index, option in enumerate(options):
            _check_image_regions(option, index if (self.any_of or self.ordered) else None, self)
        return self

    def options(self) -> list[ResourcesEntry]:
        """The entries with the outer fields as defaults (labels merged); just self without any."""
        entries = self.any_of or self.ordered
        base = self.model_dump(exclude={"any_of", "ordered"}, exclude_none=True)
        if not entries:
            return [ResourcesEntry.model_validate(base)]
        merged = []
        for entry in entries:
            fields = {**base, **entry.model_dump(exclude_none=True)}
            fields["labels"] = {**self.labels, **entry.labels}
            merged.append(ResourcesEntry.model_validate(fields))
        return merged

    def effective_job_recovery(self) -> JobRecovery:
        # The rules above make every option's job_recovery the same.
        return self.options()[0].effective_job_recovery()


def _check_image_regions(option: ResourcesEntry, index: int | None, resources: Resources) -> None:
    if not isinstance(option.image_id, dict) or option.infra is None:
        return
    infra = parse_infra(option.infra)
    if infra is not None and infra.region is not None and infra.region not in option.image_id:
        where: tuple[str | int, ...] = ("image_id",)
        if index is not None:
            where = ("any_of" if resources.any_of else "ordered", index, "image_id")
        raise FieldError(
            f"image_id has no entry for region {infra.region!r} (regions: {', '.join(option.image_id)}). "
            "Add one, or drop the region from infra.",
            where,
        )


# ---------------------------------------------------------------------------------------------------
# Resolution


def _accelerator_choices(value: Any) -> list[tuple[str | None, float]]:
    if value is None:
        return [(None, 0)]
    if isinstance(value, str):
        return [parse_accelerator(value)]
    if isinstance(value, dict):
        return [(name, _accelerator_count(name, count)) for name, count in value.items()]
    return [parse_accelerator(item) for item in value]


def _requests_of(option: ResourcesEntry) -> list[ResourceRequest]:
    infra = parse_infra(option.infra) if option.infra else None
    cpus, cpus_at_least = parse_cpus(option.cpus) if option.cpus else (None, False)
    memory, memory_at_least = parse_memory(option.memory) if option.memory else (None, False)
    images: list[tuple[Infra | None, str | None]] = []
    if not isinstance(option.image_id, dict):
        images = [(infra, option.image_id)]
    else:
        # A per-region image pins each request to its region.
        images = [
            (Infra(cloud=infra.cloud if infra else None, region=region, zone=infra.zone if infra else None), image)
            for region, image in option.image_id.items()
            if infra is None or infra.region is None or infra.region == region
        ]
    out = []
    for accelerator, count in _accelerator_choices(option.accelerators):
        for where, image in images:
            out.append(
                ResourceRequest(
                    infra=where,
                    accelerator=accelerator,
                    accelerator_count=count,
                    cpus=cpus,
                    cpus_at_least=cpus_at_least,
                    memory_gb=memory,
                    memory_at_least=memory_at_least,
                    instance_type=option.instance_type,
                    use_spot=bool(option.use_spot),
                    disk_size_gb=option.disk_size or DEFAULT_DISK_SIZE_GB,
                    disk_tier=option.disk_tier,
                    network_tier=option.network_tier,
                    max_hourly_cost=option.max_hourly_cost,
                    image_id=image,
                    ports=tuple(option.ports or ()),
                    labels=dict(option.labels),
                )
            )
    return out


def resolve(resources: Resources) -> tuple[list[ResourceRequest], bool]:
    """The concrete requests of a task's resources, and whether their order is a preference.

    `any_of` and accelerator mappings give an unordered set (the planner picks the cheapest);
    `ordered` and accelerator lists give a list to try in order.
    """
    ordered = bool(resources.ordered) or (not resources.any_of and isinstance(resources.accelerators, list))
    requests: list[ResourceRequest] = []
    for option in resources.options():
        for request in _requests_of(option):
            if ordered or request not in requests:
                requests.append(request)
    return requests, ordered
