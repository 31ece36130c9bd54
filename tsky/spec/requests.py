"""What the planner sees and what it answers: resolved resource requests and priced candidates.

A task's `resources` (with `any_of`, `ordered`, accelerator sets and lists) resolves into a list of
`ResourceRequest`s, each a single concrete option. The planner matches them against the catalog and the
enabled infra and answers with `Candidate`s: a place (cloud, region, zone), an instance type and a price.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

DEFAULT_DISK_SIZE_GB = 256

# How clouds are spelled in `infra:` and how SkyPilot prints them in tables.
CLOUD_DISPLAY = {
    "aws": "AWS",
    "gcp": "GCP",
    "k8s": "Kubernetes",
    "ssh": "SSH",
    "local": "Local",
}


class Infra(BaseModel):
    """A place: `cloud[/region[/zone]]`. `None` fields are wildcards (`*`).

    For `k8s` the region is the kubeconfig context; for `ssh` it is the node pool name.
    """

    model_config = ConfigDict(frozen=True)

    cloud: str | None = None
    region: str | None = None
    zone: str | None = None

    def __str__(self) -> str:
        parts = [self.cloud or "*", self.region or "*", self.zone or "*"]
        while len(parts) > 1 and parts[-1] == "*":
            parts.pop()
        return "/".join(parts)

    def contains(self, cloud: str, region: str | None, zone: str | None) -> bool:
        """Whether the concrete place (cloud, region, zone) lies inside this (possibly wildcard) infra."""
        return (
            (self.cloud is None or self.cloud == cloud)
            and (self.region is None or self.region == region)
            and (self.zone is None or self.zone == zone)
        )


class ResourceRequest(BaseModel):
    """One fully resolved resource option: no `any_of`, no `ordered`, at most one accelerator type."""

    model_config = ConfigDict(frozen=True)

    infra: Infra | None = None
    accelerator: str | None = None
    accelerator_count: float = 0
    cpus: float | None = None
    cpus_at_least: bool = False
    memory_gb: float | None = None
    memory_at_least: bool = False
    instance_type: str | None = None
    use_spot: bool = False
    disk_size_gb: int = DEFAULT_DISK_SIZE_GB
    disk_tier: str | None = None
    network_tier: str | None = None
    max_hourly_cost: float | None = None
    image_id: str | None = None
    ports: tuple[str, ...] = ()
    labels: dict[str, str] = {}

    def short(self) -> str:
        """SkyPilot's REQUESTED cell body: `A100:8`, `CPU:4+`, `CPU:1+`."""
        if self.accelerator:
            count = self.accelerator_count
            return f"{self.accelerator}:{int(count) if count == int(count) else count}"
        if self.cpus is not None:
            cpus = int(self.cpus) if self.cpus == int(self.cpus) else self.cpus
            return f"CPU:{cpus}{'+' if self.cpus_at_least else ''}"
        if self.instance_type:
            return self.instance_type
        return "CPU:1+"


def requested_label(num_nodes: int, options: list[ResourceRequest]) -> str:
    """SkyPilot's REQUESTED column: `1x[CPU:1+]`, `2x[A100:8][Spot]`, `1x[V100:8, A100:8][Spot|On-demand]`."""
    if not options:
        return f"{num_nodes}x[CPU:1+]"
    if len(options) == 1:
        body = options[0].short()
    elif all(not o.accelerator for o in options):
        cpus = [o.cpus for o in options if o.cpus is not None]
        body = f"CPU:{int(min(cpus)) if cpus else 1}+"
    else:
        seen: list[str] = []
        for option in options:
            if option.short() not in seen:
                seen.append(option.short())
        body = ", ".join(seen)
    spots = {o.use_spot for o in options}
    market = "" if spots == {False} else ("[Spot]" if spots == {True} else "[Spot|On-demand]")
    return f"{num_nodes}x[{body}]{market}"


class Candidate(BaseModel):
    """A place to launch one request: what the planner ranks and the launch activity tries in order."""

    model_config = ConfigDict(frozen=True)

    request_index: int = 0
    cloud: str
    region: str
    zone: str | None = None
    instance_type: str
    vcpus: float
    memory_gb: float
    accelerator: str | None = None
    accelerator_count: float = 0
    use_spot: bool = False
    price_per_node_hour: float = 0.0
    num_nodes: int = 1
    # What the launch puts on each node: the boot disk's size, and the image (None: the backend's default).
    disk_size_gb: int | None = None
    image_id: str | None = None
    # `resources.labels`: instance tags (AWS), instance labels (GCE), pod labels (Kubernetes).
    labels: tuple[tuple[str, str], ...] = ()
    # The task mounts a bucket live (MOUNT / MOUNT_CACHED of s3 or gcs): each node needs FUSE.
    fuse: bool = False

    @property
    def hourly_cost(self) -> float:
        return self.price_per_node_hour * self.num_nodes

    @property
    def infra(self) -> str:
        return str(Infra(cloud=self.cloud, region=self.region, zone=self.zone))

    def display_infra(self) -> str:
        """`AWS (us-east-1)`, `GCP (us-central1, us-central1-a)`, as SkyPilot's INFRA column."""
        cloud = CLOUD_DISPLAY.get(self.cloud, self.cloud)
        where = ", ".join(p for p in (self.region, self.zone) if p)
        return f"{cloud} ({where})" if where else cloud

    def accelerators_label(self) -> str:
        if not self.accelerator:
            return "-"
        count = self.accelerator_count
        return f"{self.accelerator}:{int(count) if count == int(count) else count}"

    def resources_label(self) -> str:
        """One line for the queue and the Web UI: `1x AWS (us-east-1) p3.2xlarge[Spot] V100:1`."""
        spot = "[Spot]" if self.use_spot else ""
        accel = f" {self.accelerators_label()}" if self.accelerator else ""
        return f"{self.num_nodes}x {self.display_infra()} {self.instance_type}{spot}{accel}"
