"""The planner: a task's resource requests × enabled infra × catalog offers → ranked launch candidates.

`plan()` is pure (its inputs are the requests, the enabled infra, the catalog, the settings and this
host's size), so the CLI runs it in-process for `--dryrun` and the "Considered resources" table (without importing
Temporal), and the `plan_task` activity (plan_activity.py) runs the same code for the workflow.

Ranking: every offer that meets every requirement of a request is a match; each (request, cloud, region,
zone) keeps its cheapest matching instance type; candidates are ordered by hourly cost × nodes (for
`ordered` requests: request order first, cost within). When nothing matches, `infeasible_reason` says
which requirement no enabled infra meets, and which disabled infra would have.

Why one module of this size: the planner is one pure function with its ranking rules and their
explanations (the "Considered resources" table); reading them side by side is the point.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace

from tsky.contract.activity_io import PlanResult
from tsky.ops.catalog import CATALOG_CLOUDS, Catalog, CatalogError, Offer, load_catalog
from tsky.ops.infra_check import EnabledInfra, InfraStatus, check_infra, enabled_infra
from tsky.spec.requests import Candidate, Infra, ResourceRequest
from tsky.spec.settings import Settings
from tsky.spec.storage import Storage, mounts_live
from tsky.spec.task import Task, TaskRequests

__all__ = [
    "Catalog",
    "EnabledInfra",
    "HostFacts",
    "detect_host",
    "load_catalog",
    "plan",
    "plan_for_task",
]

MAX_CANDIDATES = 64
# SkyPilot's default node when a task asks for nothing: 8+ vCPUs with 4 GB per vCPU (m6i.2xlarge,
# n2-standard-8). Only for catalog clouds: local, ssh and k8s nodes are whatever they are.
DEFAULT_CPUS = 8.0
DEFAULT_MEMORY_GB = 32.0
# Largest boot/data volume one node can get (EBS gp3: 16 TiB; GCP persistent disk: 64 TB). The local
# simulator does not reserve disk, and ssh/k8s nodes are not known in advance: no limit there.
DISK_LIMIT_GB = {"aws": 16384, "gcp": 65536}
INFRA_ALIASES = {"kubernetes": "k8s"}

# The requirements in the order they are checked; a request no offer meets is explained by the last
# stage that the closest offers reached.
STAGES = (
    "infra",
    "image",
    "accelerator",
    "count",
    "instance_type",
    "cpus",
    "memory",
    "capacity",
    "disk",
    "spot",
    "on_demand",
    "price",
)


@dataclass(frozen=True)
class HostFacts:
    """This machine's size: what a `local` instance type without explicit vcpus/memory offers."""

    vcpus: float
    memory_gb: float


def detect_host() -> HostFacts:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return HostFacts(vcpus=float(os.cpu_count() or 1), memory_gb=round(memory, 1))


@dataclass(frozen=True)
class _Need:
    """A request's effective CPU/memory needs on one cloud (SkyPilot's defaults filled in)."""

    cpus: float | None
    cpus_at_least: bool
    memory_gb: float | None
    memory_at_least: bool


def _need(req: ResourceRequest, cloud: str) -> _Need:
    asks_nothing = req.cpus is None and req.memory_gb is None and not req.accelerator and not req.instance_type
    if asks_nothing and cloud in CATALOG_CLOUDS:
        return _Need(DEFAULT_CPUS, True, DEFAULT_MEMORY_GB, True)
    return _Need(req.cpus, req.cpus_at_least, req.memory_gb, req.memory_at_least)


def _fits(have: float | None, want: float | None, at_least: bool) -> bool:
    if want is None or have is None:
        return True
    return have >= want - 1e-9 if at_least else abs(have - want) < 1e-9


def _count_fits(have: float, want: float) -> bool:
    # A fractional request (T4:0.5) runs on a node with whole devices: ask for the next whole number.
    whole = math.ceil(want - 1e-9) if want != int(want) else want
    return abs(have - whole) < 1e-9


def _infra_of(req: ResourceRequest) -> Infra | None:
    infra = req.infra
    if infra is None or infra.cloud is None:
        return infra
    cloud = INFRA_ALIASES.get(infra.cloud.lower(), infra.cloud.lower())
    return infra if cloud == infra.cloud else infra.model_copy(update={"cloud": cloud})


# What `image_id` each cloud boots: an AMI, a GCE image, a container image. The local simulator and SSH
# hosts run the system they have.
IMAGE_KINDS = {"aws": "an AMI (ami-...)", "gcp": "a GCE image (projects/...)", "k8s": "a container image (docker:...)"}


def image_fits(image_id: str | None, cloud: str) -> bool:
    if image_id is None:
        return True
    docker = image_id.startswith("docker:")
    if cloud == "aws":
        return image_id.startswith("ami-")
    if cloud == "gcp":
        return not docker and not image_id.startswith("ami-")
    return cloud == "k8s" and docker


def _failure(req: ResourceRequest, offer: Offer, num_nodes: int) -> str | None:
    """The first requirement `offer` does not meet (a STAGES name), or None when it meets them all."""
    infra = _infra_of(req)
    if infra is not None and not infra.contains(offer.cloud, offer.region, offer.zone):
        return "infra"
    if not image_fits(req.image_id, offer.cloud):
        return "image"
    if req.accelerator:
        if offer.accelerator is None or offer.accelerator.lower() != req.accelerator.lower():
            return "accelerator"
        if not _count_fits(offer.accelerator_count, req.accelerator_count):
            return "count"
    elif offer.accelerator and not req.instance_type:
        # A task that asks for no accelerator never gets (and pays for) one unless it names the type.
        return "accelerator"
    if req.instance_type and offer.instance_type != req.instance_type:
        return "instance_type"
    need = _need(req, offer.cloud)
    if not _fits(offer.vcpus, need.cpus, need.cpus_at_least):
        return "cpus"
    if not _fits(offer.memory_gb, need.memory_gb, need.memory_at_least):
        return "memory"
    if offer.max_nodes is not None and offer.max_nodes < num_nodes:
        return "capacity"
    limit = DISK_LIMIT_GB.get(offer.cloud)
    if limit is not None and req.disk_size_gb > limit:
        return "disk"
    price = offer.price_for(req.use_spot)
    if price is None:
        return "spot" if req.use_spot else "on_demand"
    if req.max_hourly_cost is not None and price > req.max_hourly_cost + 1e-9:
        return "price"
    return None


def infra_offers(enabled: Iterable[EnabledInfra], catalog: Catalog, settings: Settings, host: HostFacts) -> list[Offer]:
    """Every offer of the given infra: catalog rows for clouds, settings for `local`, pools/contexts for
    ssh and k8s."""
    offers: list[Offer] = []
    for infra in enabled:
        regions = set(infra.regions) if infra.regions is not None else None
        if infra.cloud in CATALOG_CLOUDS:
            offers.extend(
                o for o in catalog.offers if o.cloud == infra.cloud and (regions is None or o.region in regions)
            )
        elif infra.cloud == "local":
            offers.extend(_local_offers(settings, host, regions))
        elif infra.cloud in ("ssh", "k8s"):
            offers.extend(_remote_offers(infra))
    # Simulated and declared GPUs have the memory the catalog knows for their name.
    memory = {name.lower(): gb for name, gb in catalog.accelerator_memory_gb.items()}
    return [
        replace(o, accelerator_memory_gb=memory.get(o.accelerator.lower()))
        if o.accelerator and o.accelerator_memory_gb is None
        else o
        for o in offers
    ]


def _local_offers(settings: Settings, host: HostFacts, regions: set[str] | None) -> list[Offer]:
    offers = []
    for region in settings.local.regions:
        if regions is not None and region.name not in regions:
            continue
        zones: list[str | None] = list(region.zones) or [None]
        for itype in region.instance_types:
            spot = (itype.spot_price if itype.spot_price is not None else itype.price) if region.spot else None
            # A node with two kinds of simulated devices matches a request for either.
            kinds: list[tuple[str | None, float]] = list(itype.accelerators.items()) or [(None, 0)]
            for zone in zones:
                for accelerator, count in kinds:
                    offers.append(
                        Offer(
                            cloud="local",
                            region=region.name,
                            zone=zone,
                            instance_type=itype.name,
                            vcpus=itype.vcpus if itype.vcpus is not None else host.vcpus,
                            memory_gb=itype.memory_gb if itype.memory_gb is not None else host.memory_gb,
                            accelerator=accelerator,
                            accelerator_count=count,
                            price=itype.price,
                            spot_price=spot,
                            max_nodes=region.capacity_nodes,
                        )
                    )
    return offers


def _remote_offers(infra: EnabledInfra) -> list[Offer]:
    # Existing machines cost nothing extra; spot does not exist there.
    kind = "pod" if infra.cloud == "k8s" else "node"
    offers = []
    for region in infra.regions or []:
        shape = infra.shapes.get(region)
        kinds: list[tuple[str | None, float]] = list(shape.accelerators.items()) if shape else []
        for accelerator, count in kinds or [(None, 0)]:
            offers.append(
                Offer(
                    cloud=infra.cloud,
                    region=region,
                    zone=None,
                    instance_type=kind,
                    vcpus=shape.vcpus if shape else None,
                    memory_gb=shape.memory_gb if shape else None,
                    accelerator=accelerator,
                    accelerator_count=count,
                    spot_price=0.0 if infra.spot else None,
                )
            )
    return offers


def _candidate(index: int, req: ResourceRequest, offer: Offer, price: float, num_nodes: int) -> Candidate:
    need = _need(req, offer.cloud)
    # Nodes of unknown size (k8s pods, undeclared ssh pools) get what the request asks for.
    vcpus = offer.vcpus if offer.vcpus is not None else (need.cpus or 0.0)
    memory = offer.memory_gb if offer.memory_gb is not None else (need.memory_gb or 0.0)
    return Candidate(
        request_index=index,
        cloud=offer.cloud,
        region=offer.region,
        zone=offer.zone,
        instance_type=offer.instance_type,
        vcpus=vcpus,
        memory_gb=memory,
        accelerator=offer.accelerator,
        accelerator_count=offer.accelerator_count,
        use_spot=req.use_spot,
        price_per_node_hour=price,
        num_nodes=num_nodes,
        disk_size_gb=req.disk_size_gb,
        image_id=req.image_id,
        labels=tuple(sorted(req.labels.items())),
    )


def _candidates_for(index: int, req: ResourceRequest, offers: list[Offer], num_nodes: int) -> list[Candidate]:
    best: dict[tuple[str, str, str | None], tuple[float, str, Offer]] = {}
    for offer in offers:
        if _failure(req, offer, num_nodes) is not None:
            continue
        price = offer.price_for(req.use_spot)
        assert price is not None  # _failure rejects offers without a price
        key = (offer.cloud, offer.region, offer.zone)
        if key not in best or (price, offer.instance_type) < best[key][:2]:
            best[key] = (price, offer.instance_type, offer)
    found = [_candidate(index, req, offer, price, num_nodes) for price, _, offer in best.values()]
    return sorted(found, key=_rank)


def _rank(c: Candidate) -> tuple[float, int, str, str, str]:
    return (round(c.hourly_cost, 6), c.request_index, c.cloud, c.region, c.zone or "")


def plan(
    requests: TaskRequests,
    num_nodes: int,
    enabled: list[EnabledInfra],
    catalog: Catalog,
    settings: Settings,
    *,
    host: HostFacts | None = None,
    disabled: list[InfraStatus] | None = None,
) -> PlanResult:
    """Rank every place that can run one of `requests` (see the module docstring).

    `disabled` (from `check_infra`) only improves the infeasible message; catalog clouds missing from
    `enabled` count as disabled either way."""
    host = host or detect_host()
    options = requests.options or [ResourceRequest()]
    offers = infra_offers(enabled, catalog, settings, host)
    per_request = [_candidates_for(i, req, offers, num_nodes) for i, req in enumerate(options)]
    if requests.ordered:
        # Failover follows the user's order; each option keeps a share of the list.
        share = max(MAX_CANDIDATES // len(options), 4)
        ranked = [c for found in per_request for c in found[:share]]
    else:
        ranked = sorted((c for found in per_request for c in found), key=_rank)[:MAX_CANDIDATES]
    candidates = _dedupe(ranked)
    if candidates:
        return PlanResult(candidates=candidates)
    return PlanResult(
        candidates=[],
        infeasible_reason=_explain(options, num_nodes, enabled, offers, catalog, settings, host, disabled or []),
    )


def _dedupe(ranked: list[Candidate]) -> list[Candidate]:
    # Two options (any_of) can land on the same instance at the same place: try it once.
    seen: set[tuple[str, str, str | None, str, bool]] = set()
    out = []
    for c in ranked:
        key = (c.cloud, c.region, c.zone, c.instance_type, c.use_spot)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


# ---------------------------------------------------------------------------------------------------------
# Why nothing fits


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _what(req: ResourceRequest) -> str:
    if req.accelerator:
        base = f"{req.accelerator}:{_num(req.accelerator_count)}"
    elif req.instance_type:
        base = req.instance_type
    elif req.cpus is not None:
        base = f"{_num(req.cpus)}{'+' if req.cpus_at_least else ''} vCPUs"
    else:
        base = "a CPU node"
    return base + (" (spot)" if req.use_spot else "")


def _places(offers: Iterable[Offer], limit: int = 4) -> str:
    """`aws p5.48xlarge, gcp a3-highgpu-8g`: one instance type per cloud."""
    seen: dict[str, str] = {}
    for o in offers:
        seen.setdefault(o.cloud, o.instance_type)
    return ", ".join(f"{cloud} {itype}" for cloud, itype in list(seen.items())[:limit])


def _explain(
    options: list[ResourceRequest],
    num_nodes: int,
    enabled: list[EnabledInfra],
    offers: list[Offer],
    catalog: Catalog,
    settings: Settings,
    host: HostFacts,
    disabled: list[InfraStatus],
) -> str:
    enabled_names = [e.cloud for e in enabled]
    # Why each infra is off, as `tsky check` says; a catalog cloud left out of `enabled` is off too.
    reasons: dict[str, str | None] = {s.name: s.reason for s in disabled if s.name not in enabled_names}
    for cloud in CATALOG_CLOUDS:
        if cloud not in enabled_names:
            reasons.setdefault(cloud, None)
    # What the catalog clouds that are switched off would have offered.
    elsewhere = [o for o in catalog.offers if o.cloud not in enabled_names]
    everything = offers + elsewhere
    parts = []
    for index, req in enumerate(options):
        message = _why(req, num_nodes, offers, everything, enabled_names, reasons, settings)
        could = [o for o in elsewhere if _failure(req, o, num_nodes) is None]
        if could:
            # Why each is off is `tsky check`'s to say (the CLI prints it, one infra per line).
            clouds = sorted({o.cloud for o in could})
            message += (
                f"; {' and '.join(clouds)} would offer it ({_places(could)}) but "
                + ("is" if len(clouds) == 1 else "are")
                + " not enabled"
            )
        parts.append(message if len(options) == 1 else f"option {index + 1} ({_what(req)}): {message}")
    text = parts[0] if len(options) == 1 else "None of the resource options fits: " + "; ".join(parts)
    text += f". Enabled infra: {', '.join(enabled_names) or 'none'}."
    if reasons:
        text += f" Not enabled: {', '.join(reasons)} (see `tsky check`)."
    return text


def _why(
    req: ResourceRequest,
    num_nodes: int,
    offers: list[Offer],
    everything: list[Offer],
    enabled_names: list[str],
    reasons: dict[str, str | None],
    settings: Settings,
) -> str:
    """One sentence: the requirement that the closest enabled offers missed."""
    by_stage: dict[str, list[Offer]] = {}
    for offer in offers:
        stage = _failure(req, offer, num_nodes)
        if stage is not None:
            by_stage.setdefault(stage, []).append(offer)
    if not by_stage:
        return f"No enabled infra offers {_what(req)}"
    stage = max(by_stage, key=STAGES.index)
    near = by_stage[stage]
    what = _what(req)
    infra = _infra_of(req)
    where = f" in {infra}" if infra else ""
    acc = f"{req.accelerator}:{_num(req.accelerator_count)}" if req.accelerator else None

    if stage == "infra":
        assert infra is not None
        message = f"No enabled infra matches infra '{infra}'"
        if infra.cloud and infra.cloud not in enabled_names:
            why = reasons.get(infra.cloud)
            return message + f": {infra.cloud} is not enabled" + (f" ({why})" if why else "")
        regions = sorted({o.region for o in offers if o.cloud == infra.cloud})
        return message + (f" ({infra.cloud} regions: {', '.join(regions)})" if regions else "")
    if stage == "image":
        kinds = "; ".join(f"{cloud} boots {kind}" for cloud, kind in IMAGE_KINDS.items())
        return f"No enabled infra can boot image_id '{req.image_id}'{where} ({kinds}; local and ssh hosts take none)"
    if stage == "accelerator":
        if not req.accelerator:
            return f"No enabled infra offers a node without accelerators{where}"
        known = sorted({o.accelerator for o in everything if o.accelerator})
        if req.accelerator.lower() not in {k.lower() for k in known}:
            return f"Unknown accelerator '{req.accelerator}': no infra offers it (known: {', '.join(known)})"
        mine = sorted({o.accelerator for o in offers if o.accelerator and (not infra or _inside(infra, o))})
        offered = ", ".join(mine) or "no GPUs"
        return f"No enabled infra offers {req.accelerator}{where} (enabled infra offers: {offered})"
    if stage == "count":
        name = req.accelerator or ""
        same = [o for o in everything if o.accelerator and o.accelerator.lower() == name.lower()]
        largest = max(o.accelerator_count for o in same)
        if req.accelerator_count > largest:
            top = [o for o in same if o.accelerator_count == largest]
            return (
                f"No enabled infra offers {acc} per node{where} (the largest {name} offer is "
                f"{_num(largest)} per node: {_places(top)})"
            )
        counts = ", ".join(_num(c) for c in sorted({o.accelerator_count for o in near}))
        return f"No enabled infra offers {acc} per node{where} ({name} comes in {counts} per node)"
    if stage == "instance_type":
        with_acc = f" with {acc}" if acc else ""
        return f"No enabled infra offers instance type '{req.instance_type}'{with_acc}{where}"
    if stage in ("cpus", "memory"):
        unit, attr = ("vCPUs", "vcpus") if stage == "cpus" else ("GB of memory", "memory_gb")
        need = _need(req, near[0].cloud)
        want = need.cpus if stage == "cpus" else need.memory_gb
        at_least = need.cpus_at_least if stage == "cpus" else need.memory_at_least
        assert want is not None
        sizes = sorted({getattr(o, attr) for o in near})
        with_acc = f" with {acc}" if acc else ""
        if at_least or want > sizes[-1]:
            top = [o for o in near if getattr(o, attr) == sizes[-1]]
            return (
                f"No enabled infra offers {_num(want)}{'+' if at_least else ''} {unit} per node{with_acc}{where} "
                f"(the largest has {_num(sizes[-1])}: {_places(top)})"
            )
        nearest = sorted(sizes, key=lambda s: abs(s - want))[:4]
        return (
            f"No enabled infra offers exactly {_num(want)} {unit} per node{with_acc}{where} "
            f"(nearest sizes: {', '.join(_num(s) for s in sorted(nearest))}; use '{_num(want)}+' for at least)"
        )
    if stage == "capacity":
        holds = ", ".join(sorted({f"local/{o.region} holds {o.max_nodes}" for o in near}))
        return f"No enabled infra fits {num_nodes} nodes of {what}{where} ({holds})"
    if stage == "disk":
        limits = ", ".join(f"{c} {DISK_LIMIT_GB[c]} GB" for c in sorted({o.cloud for o in near}))
        return f"No enabled infra offers a {req.disk_size_gb} GB disk for {what}{where} (largest: {limits})"
    if stage == "spot":
        no_spot = sorted({o.region for o in near if o.cloud == "local"} & _spotless_local(settings))
        hint = f" (local regions with `spot: false`: {', '.join(no_spot)})" if no_spot else ""
        return f"No enabled infra offers spot capacity for {what}{where}{hint}"
    if stage == "on_demand":
        return f"No enabled infra has an on-demand price for {what}{where} (try use_spot)"
    cheapest = min(near, key=lambda o: o.price_for(req.use_spot) or 0.0)
    price = cheapest.price_for(req.use_spot) or 0.0
    return (
        f"No enabled infra offers {what}{where} within max_hourly_cost ${req.max_hourly_cost:g} per node-hour "
        f"(the cheapest is ${price:.2f}: {cheapest.cloud} {cheapest.instance_type} in {cheapest.region})"
    )


def _inside(infra: Infra, offer: Offer) -> bool:
    return infra.contains(offer.cloud, offer.region, offer.zone)


def _spotless_local(settings: Settings) -> set[str]:
    return {region.name for region in settings.local.regions if not region.spot}


# ---------------------------------------------------------------------------------------------------------
# Entry points


def plan_for_task(task: Task, settings: Settings, statuses: list[InfraStatus] | None = None) -> PlanResult:
    """Plan one task on the infra `tsky check` reports enabled (the CLI's `--dryrun` and launch table)."""
    statuses = statuses if statuses is not None else check_infra(settings)
    try:
        requests = task.requests()
        catalog = load_catalog(settings.home)
    except (ValueError, CatalogError) as err:
        return PlanResult(candidates=[], infeasible_reason=str(err))
    result = plan(
        requests,
        task.num_nodes,
        enabled_infra(statuses),
        catalog,
        settings,
        disabled=[s for s in statuses if not s.enabled],
    )
    # Whether a node needs FUSE depends on the cloud: a storage object naming no store uses the cloud's.
    live = [s for s in task.file_mounts.values() if isinstance(s, Storage)]
    candidates = [c.model_copy(update={"fuse": any(mounts_live(s, c.cloud) for s in live)}) for c in result.candidates]
    return result.model_copy(update={"candidates": candidates})
