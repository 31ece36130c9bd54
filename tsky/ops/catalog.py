"""The instance catalog: which instance types each cloud sells, where, and at what hourly price.

The bundled `data/catalog.json` holds dated, approximate list prices for AWS and GCP. `tsky catalog refresh
aws` writes `$TSKY_HOME/catalogs/aws.json` from the AWS APIs; such a file replaces that cloud's bundled part.
The planner never reads these files itself: it gets a `Catalog`, flattened into one `Offer` per
(cloud, region, zone, instance type), so a plan is a pure function of its inputs.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from tsky.spec.settings import tsky_home

# Clouds whose offers come from the catalog (the others come from settings or infra checks).
CATALOG_CLOUDS = ("aws", "gcp")


class CatalogError(Exception):
    """A catalog file is unreadable or invalid; the message names the file and the fix."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegionPrice(_Model):
    od: float | None = None  # on-demand $/hour; None: not sold on demand here
    spot: float | dict[str, float] | None = None  # one spot price for the region, or one per zone
    zones: list[str] | None = None  # None: every zone the cloud lists for the region


class InstanceType(_Model):
    name: str
    vcpus: float
    memory_gb: float
    accelerator: str | None = None
    accelerator_count: float = 0
    accelerator_memory_gb: float | None = None  # per device; None: the catalog-wide figure for its name
    prices: dict[str, RegionPrice]


class CloudCatalog(_Model):
    """One cloud's part: the unit a refresh rewrites."""

    as_of: str
    sources: list[str] = []
    note: str = ""
    regions: dict[str, list[str]]  # region -> zones
    instance_types: list[InstanceType]


class CatalogFile(_Model):
    schema_version: int = 1
    as_of: str
    note: str = ""
    sources: list[str] = []
    accelerator_memory_gb: dict[str, float] = {}
    clouds: dict[str, CloudCatalog]


@dataclass(frozen=True, slots=True)
class Offer:
    """One instance type at one place, with its prices per node-hour."""

    cloud: str
    region: str
    zone: str | None
    instance_type: str
    vcpus: float | None  # None: unknown before launch (a k8s context, an ssh pool without a declared shape)
    memory_gb: float | None
    accelerator: str | None = None
    accelerator_count: float = 0
    accelerator_memory_gb: float | None = None
    price: float | None = 0.0  # on-demand; None: no on-demand price known
    spot_price: float | None = None  # None: no spot capacity here
    max_nodes: int | None = None  # a region's fixed size (the local simulator); None: unlimited

    def price_for(self, spot: bool) -> float | None:
        return self.spot_price if spot else self.price


@dataclass(frozen=True)
class Catalog:
    clouds: dict[str, CloudCatalog]
    accelerator_memory_gb: dict[str, float]
    origin: dict[str, str]  # cloud -> "bundled" or the file that replaced it
    offers: tuple[Offer, ...] = field(default=())

    @classmethod
    def build(
        cls, clouds: dict[str, CloudCatalog], accelerator_memory_gb: dict[str, float], origin: dict[str, str]
    ) -> Catalog:
        offers = [offer for name, cloud in clouds.items() for offer in _flatten(name, cloud, accelerator_memory_gb)]
        return cls(clouds=clouds, accelerator_memory_gb=accelerator_memory_gb, origin=origin, offers=tuple(offers))

    def regions(self, cloud: str) -> dict[str, list[str]]:
        part = self.clouds.get(cloud)
        return dict(part.regions) if part else {}

    def zones(self, cloud: str, region: str, instance_type: str) -> list[str]:
        """Zones of `region` that sell `instance_type`, for backends that must pick one to launch in."""
        return sorted(
            {
                o.zone
                for o in self.offers
                if o.cloud == cloud and o.region == region and o.instance_type == instance_type and o.zone
            }
        )


def _flatten(name: str, cloud: CloudCatalog, memory_table: dict[str, float]) -> list[Offer]:
    offers = []
    for itype in cloud.instance_types:
        acc_memory = itype.accelerator_memory_gb
        if acc_memory is None and itype.accelerator:
            acc_memory = memory_table.get(itype.accelerator)
        for region, price in itype.prices.items():
            # A region listed without zones yields one region-wide offer.
            zones: list[str | None] = [*(price.zones or cloud.regions.get(region) or ())] or [None]
            for zone in zones:
                spot = price.spot.get(zone or "") if isinstance(price.spot, dict) else price.spot
                offers.append(
                    Offer(
                        cloud=name,
                        region=region,
                        zone=zone,
                        instance_type=itype.name,
                        vcpus=itype.vcpus,
                        memory_gb=itype.memory_gb,
                        accelerator=itype.accelerator,
                        accelerator_count=itype.accelerator_count if itype.accelerator else 0,
                        accelerator_memory_gb=acc_memory,
                        price=price.od,
                        spot_price=spot,
                    )
                )
    return offers


def override_path(home: Path, cloud: str) -> Path:
    """Where `tsky catalog refresh <cloud>` writes the cloud's part."""
    return home / "catalogs" / f"{cloud}.json"


def bundled_catalog() -> CatalogFile:
    text = resources.files("tsky.ops").joinpath("data/catalog.json").read_text()
    return CatalogFile.model_validate_json(text)


def load_catalog(home: Path | None = None) -> Catalog:
    """The bundled catalog, each cloud replaced by `$TSKY_HOME/catalogs/<cloud>.json` where one exists.

    Cached per (home, override files and their mtimes), so a refresh is seen without a restart."""
    home = home or tsky_home()
    overrides = []
    for cloud in CATALOG_CLOUDS:
        path = override_path(home, cloud)
        try:
            overrides.append((cloud, str(path), path.stat().st_mtime_ns))
        except FileNotFoundError:
            continue
    return _load(tuple(overrides))


@lru_cache(maxsize=8)
def _load(overrides: tuple[tuple[str, str, int], ...]) -> Catalog:
    bundled = bundled_catalog()
    clouds = dict(bundled.clouds)
    origin = {cloud: "bundled" for cloud in clouds}
    for cloud, path, _mtime in overrides:
        try:
            clouds[cloud] = CloudCatalog.model_validate_json(Path(path).read_text())
        except (OSError, ValidationError) as err:
            problem = err.errors()[0]["msg"] if isinstance(err, ValidationError) else str(err)
            raise CatalogError(
                f"{path}: not a valid {cloud} catalog ({problem}). "
                f"Delete it to use the bundled one, or run `tsky catalog refresh {cloud}` again."
            ) from err
        origin[cloud] = path
    return Catalog.build(clouds, bundled.accelerator_memory_gb, origin)


def write_cloud_catalog(home: Path, cloud: str, part: CloudCatalog) -> Path:
    """Write one cloud's part atomically: a planner reading concurrently sees the old or the new file."""
    path = override_path(home, cloud)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{cloud}.", suffix=".json")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(part.model_dump_json(indent=1, exclude_none=True))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
