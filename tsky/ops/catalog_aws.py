"""`tsky catalog refresh aws`: rebuild the AWS part of the catalog from the AWS APIs.

Per region: DescribeAvailabilityZones, DescribeInstanceTypes (vCPUs, memory, GpuInfo),
DescribeInstanceTypeOfferings (which zones sell a type), DescribeSpotPriceHistory (the spot price in
effect now, per zone), and the Price List API (GetProducts) for on-demand prices. Where the Price List API
is unavailable (no permission, an emulator), the current catalog's on-demand price is kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3

from tsky.ops.catalog import CloudCatalog, InstanceType, RegionPrice
from tsky.ops.infra_check import check_aws_credentials

PRICING_REGION = "us-east-1"  # the Price List API answers from a few regions only
# Spot discounts top out near 90%: a price under 5% of on-demand is bad data (an emulator's constant, a
# glitch), and the previous spot price is kept instead.
MIN_SPOT_FRACTION = 0.05
_CHUNK = 50  # instance types per filtered call


class NoAwsCredentials(Exception):
    pass


@dataclass
class RefreshReport:
    catalog: CloudCatalog
    regions: list[str]
    instance_types: int = 0
    spot_prices: int = 0
    implausible_spot_prices: int = 0
    unpriced: list[str] = field(default_factory=list)  # types left out: no on-demand price anywhere
    on_demand_from_api: int = 0
    warnings: list[str] = field(default_factory=list)


def _chunks(items: list[str], size: int = _CHUNK) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _gpu(info: dict[str, Any]) -> tuple[str, float, float] | None:
    """(name, count, memory GB per device), with SkyPilot's names for the 80 GB A100 and 32 GB V100."""
    gpus = (info.get("GpuInfo") or {}).get("Gpus") or []
    if not gpus:
        return None
    gpu = gpus[0]
    name = str(gpu["Name"]).replace("NVIDIA ", "").replace(" ", "-")
    memory = gpu.get("MemoryInfo", {}).get("SizeInMiB", 0) / 1024
    if name == "A100" and memory >= 70:
        name = "A100-80GB"
    elif name == "V100" and memory >= 30:
        name = "V100-32GB"
    return name, float(gpu["Count"]), round(memory)


def _on_demand_price(pricing: Any, instance_type: str, region: str) -> float | None:
    response = pricing.get_products(
        ServiceCode="AmazonEC2",
        Filters=[
            {"Type": "TERM_MATCH", "Field": field_name, "Value": value}
            for field_name, value in (
                ("instanceType", instance_type),
                ("regionCode", region),
                ("operatingSystem", "Linux"),
                ("tenancy", "Shared"),
                ("preInstalledSw", "NA"),
                ("capacitystatus", "Used"),
                ("licenseModel", "No License required"),
            )
        ],
        MaxResults=10,
    )
    for item in response.get("PriceList", []):
        product = json.loads(item) if isinstance(item, str) else item
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                price = float(dimension.get("pricePerUnit", {}).get("USD", 0) or 0)
                if price > 0:
                    return price
    return None


def refresh_aws(
    current: CloudCatalog,
    regions: Iterable[str] | None = None,
    *,
    session: boto3.Session | None = None,
    families: Iterable[str] | None = None,
) -> RefreshReport:
    """A new AWS catalog part: `regions` (default: the current ones) rebuilt from the APIs, the other
    regions of `current` kept. Families default to those in `current` (m5, p4d, …)."""
    if session is None:
        # boto3's own lookup would ask the instance-metadata server (off-cloud: a probe to 169.254.169.254).
        found = check_aws_credentials()
        if not found.enabled:
            reason = found.reason[0].upper() + found.reason[1:]
            raise NoAwsCredentials(f"{reason}, then run `tsky catalog refresh aws` again.")
        session = boto3.Session()
    wanted = list(regions or current.regions)
    fams = sorted(set(families or {t.name.split(".")[0] for t in current.instance_types}))
    report = RefreshReport(catalog=current, regions=wanted)
    # Start from the current part minus the regions being rebuilt.
    shapes: dict[str, InstanceType] = {}
    old: dict[tuple[str, str], RegionPrice] = {}
    for itype in current.instance_types:
        old.update({(itype.name, r): p for r, p in itype.prices.items()})
        kept = {r: p for r, p in itype.prices.items() if r not in wanted}
        shapes[itype.name] = itype.model_copy(update={"prices": kept})
    zones_of = {r: z for r, z in current.regions.items() if r not in wanted}

    pricing: Any = session.client("pricing", region_name=PRICING_REGION)
    pricing_error: str | None = None
    for region in wanted:
        ec2 = session.client("ec2", region_name=region)
        zones_of[region] = sorted(
            z["ZoneName"]
            for z in ec2.describe_availability_zones(Filters=[{"Name": "zone-type", "Values": ["availability-zone"]}])[
                "AvailabilityZones"
            ]
            if z.get("State", "available") == "available"
        )
        described = _describe_types(ec2, fams)
        names = sorted(described)
        offered = _offerings(ec2, names)
        spot = _spot_prices(ec2, names)
        on_demand: dict[str, float | None] = {}
        if pricing_error is None:
            on_demand, pricing_error = _on_demand_prices(pricing, names, region)
        for name in names:
            info = described[name]
            gpu = _gpu(info)
            base = shapes.get(name)
            previous = old.get((name, region))
            od = on_demand.get(name)
            if od is not None:
                report.on_demand_from_api += 1
            else:
                od = previous.od if previous else None
            if od is None:
                # Without an on-demand price a spot quote cannot be sanity-checked, nor the type compared.
                report.unpriced.append(f"{name} ({region})")
                continue
            type_zones = sorted(offered.get(name, set())) or zones_of[region]
            quoted = {z: p for z, p in spot.get(name, {}).items() if z in type_zones}
            zone_spot = {z: p for z, p in quoted.items() if p >= od * MIN_SPOT_FRACTION}
            report.implausible_spot_prices += len(quoted) - len(zone_spot)
            report.spot_prices += len(zone_spot)
            price = RegionPrice(
                od=od,
                spot=zone_spot or (previous.spot if previous else None),
                zones=None if type_zones == zones_of[region] else type_zones,
            )
            shapes[name] = InstanceType(
                name=name,
                vcpus=float(info["VCpuInfo"]["DefaultVCpus"]),
                memory_gb=round(info["MemoryInfo"]["SizeInMiB"] / 1024, 2),
                accelerator=gpu[0] if gpu else None,
                accelerator_count=gpu[1] if gpu else 0,
                accelerator_memory_gb=gpu[2] if gpu else None,
                prices={**(base.prices if base else {}), region: price},
            )
    if report.implausible_spot_prices:
        report.warnings.append(
            f"Ignored {report.implausible_spot_prices} spot prices below {MIN_SPOT_FRACTION:.0%} of on-demand "
            "(not real market prices); the previous spot prices were kept for them."
        )
    if report.unpriced:
        report.warnings.append(
            f"Left out {len(report.unpriced)} instance types with no known on-demand price: "
            + ", ".join(report.unpriced[:8])
            + (" ..." if len(report.unpriced) > 8 else "")
        )
    if pricing_error:
        report.warnings.append(
            f"The AWS Price List API is unavailable ({pricing_error}); on-demand prices were kept from "
            "the current catalog."
        )
    types = sorted((t for t in shapes.values() if t.prices), key=lambda t: t.name)
    report.instance_types = len(types)
    sources = ["AWS EC2 API (DescribeInstanceTypes, DescribeInstanceTypeOfferings, DescribeSpotPriceHistory)"]
    sources.append(
        "AWS Price List API (GetProducts)" if report.on_demand_from_api else "on-demand prices: previous catalog"
    )
    report.catalog = CloudCatalog(
        as_of=datetime.now(UTC).date().isoformat(),
        sources=sources,
        note=f"Refreshed by `tsky catalog refresh aws` for {', '.join(wanted)}; spot prices per zone at that time.",
        regions=dict(sorted(zones_of.items())),
        instance_types=types,
    )
    return report


def _describe_types(ec2: Any, families: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    pages = ec2.get_paginator("describe_instance_types").paginate(
        Filters=[{"Name": "instance-type", "Values": [f"{family}.*" for family in families]}]
    )
    for page in pages:
        for info in page["InstanceTypes"]:
            # "p5.*" must not pull in p5en types unless asked for: compare the family exactly.
            if info["InstanceType"].split(".")[0] in families:
                found[info["InstanceType"]] = info
    return found


def _offerings(ec2: Any, names: list[str]) -> dict[str, set[str]]:
    zones: dict[str, set[str]] = {}
    for chunk in _chunks(names):
        pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
            LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": chunk}]
        )
        for page in pages:
            for offer in page["InstanceTypeOfferings"]:
                zones.setdefault(offer["InstanceType"], set()).add(offer["Location"])
    return zones


def _spot_prices(ec2: Any, names: list[str]) -> dict[str, dict[str, float]]:
    """The latest spot price per (instance type, zone): asking from now returns the price in effect."""
    latest: dict[tuple[str, str], tuple[datetime, float]] = {}
    now = datetime.now(UTC)
    for chunk in _chunks(names):
        pages = ec2.get_paginator("describe_spot_price_history").paginate(
            InstanceTypes=chunk, ProductDescriptions=["Linux/UNIX"], StartTime=now
        )
        for page in pages:
            for row in page["SpotPriceHistory"]:
                key = (row["InstanceType"], row["AvailabilityZone"])
                stamp = row["Timestamp"]
                if key not in latest or stamp > latest[key][0]:
                    latest[key] = (stamp, float(row["SpotPrice"]))
    out: dict[str, dict[str, float]] = {}
    for (name, zone), (_, price) in latest.items():
        out.setdefault(name, {})[zone] = price
    return out


def _on_demand_prices(pricing: Any, names: list[str], region: str) -> tuple[dict[str, float | None], str | None]:
    """On-demand prices from the Price List API, or the error that makes it unusable."""
    if not names:
        return {}, None
    try:
        # One call first: when the API is unusable, say so once instead of failing N times.
        first = _on_demand_price(pricing, names[0], region)
    except Exception as err:  # any failure means "unavailable": permissions, endpoint, emulator
        return {}, (str(err).splitlines() or [type(err).__name__])[0]

    def one(name: str) -> float | None:
        try:
            return _on_demand_price(pricing, name, region)
        except Exception:  # a throttled or odd answer for one type: keep its previous price
            return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        rest = list(pool.map(one, names[1:]))
    return dict(zip(names, [first, *rest], strict=True)), None
