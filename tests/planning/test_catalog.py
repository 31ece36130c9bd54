"""The bundled catalog's coverage, and `$TSKY_HOME/catalogs/<cloud>.json` replacing a cloud's part."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import pytest

from tsky.ops.catalog import (
    Catalog,
    CatalogError,
    CloudCatalog,
    InstanceType,
    RegionPrice,
    bundled_catalog,
    load_catalog,
    override_path,
    write_cloud_catalog,
)

AWS_REGIONS = {"us-east-1", "us-east-2", "us-west-2", "eu-west-1", "eu-central-1", "ap-northeast-1"}
GCP_REGIONS = {"us-central1", "us-east1", "us-west1", "europe-west4", "asia-east1"}
GPUS = {"T4", "L4", "A10G", "V100", "A100", "A100-80GB", "H100", "H200"}


def test_bundled_catalog_is_dated_sourced_and_compact() -> None:
    data = bundled_catalog()
    assert data.as_of and data.sources and "approximate" in data.note.lower()
    size = resources.files("tsky.ops").joinpath("data/catalog.json").read_bytes()
    assert len(size) < 1_000_000
    assert set(data.clouds) == {"aws", "gcp"}
    assert set(data.clouds["aws"].regions) >= AWS_REGIONS
    assert set(data.clouds["gcp"].regions) >= GCP_REGIONS
    assert all(data.clouds["gcp"].regions[r] for r in GCP_REGIONS)  # GCP lists zones


def test_bundled_catalog_covers_common_types_and_gpus(catalog: Catalog) -> None:
    names = {o.instance_type for o in catalog.offers}
    for family in ("m5", "m6i", "c5", "c6i", "r5", "n2-standard", "e2-standard", "c2-standard"):
        assert sum(1 for n in names if n.startswith(family)) >= 3, family
    assert {o.accelerator for o in catalog.offers if o.cloud == "aws" and o.accelerator} >= GPUS
    # A10G is an AWS-only part; GCP has every other one.
    assert GPUS - {"A10G"} <= {o.accelerator for o in catalog.offers if o.cloud == "gcp" and o.accelerator}
    assert all(o.accelerator_memory_gb for o in catalog.offers if o.accelerator)
    for o in catalog.offers:
        assert o.price and o.price > 0, o
        assert o.spot_price is not None and 0 < o.spot_price < o.price, o
    # Every region of each cloud has CPU instances to offer.
    for cloud, regions in (("aws", AWS_REGIONS), ("gcp", GCP_REGIONS)):
        cpu = {o.region for o in catalog.offers if o.cloud == cloud and not o.accelerator}
        assert regions <= cpu


def test_zones_lists_where_a_type_is_sold(catalog: Catalog) -> None:
    assert catalog.zones("gcp", "us-central1", "a2-ultragpu-8g") == ["us-central1-a", "us-central1-c"]
    assert catalog.zones("aws", "us-east-2", "m5.large") == ["us-east-2a", "us-east-2b", "us-east-2c"]
    assert catalog.zones("aws", "us-east-2", "p4de.24xlarge") == []


def _tiny_aws() -> CloudCatalog:
    return CloudCatalog(
        as_of="2030-01-01",
        sources=["test"],
        regions={"us-east-1": ["us-east-1a", "us-east-1b"]},
        instance_types=[
            InstanceType(
                name="m5.large",
                vcpus=2,
                memory_gb=8,
                prices={"us-east-1": RegionPrice(od=0.1, spot={"us-east-1a": 0.03, "us-east-1b": 0.05})},
            )
        ],
    )


def test_a_refreshed_cloud_replaces_only_its_part(tmp_path: Path) -> None:
    path = write_cloud_catalog(tmp_path, "aws", _tiny_aws())
    assert path == override_path(tmp_path, "aws")
    catalog = load_catalog(tmp_path)
    assert catalog.origin == {"aws": str(path), "gcp": "bundled"}
    aws = [o for o in catalog.offers if o.cloud == "aws"]
    # Spot prices per zone (as the AWS API reports them) stay per zone.
    assert {(o.zone, o.spot_price) for o in aws} == {("us-east-1a", 0.03), ("us-east-1b", 0.05)}
    assert any(o.cloud == "gcp" for o in catalog.offers)


def test_the_cache_notices_a_new_refresh(tmp_path: Path) -> None:
    first = load_catalog(tmp_path)
    assert load_catalog(tmp_path) is first
    path = write_cloud_catalog(tmp_path, "aws", _tiny_aws())
    os.utime(path, ns=(1, 1))  # a distinct mtime even on coarse clocks
    assert load_catalog(tmp_path).origin["aws"] == str(path)


def test_a_broken_refresh_is_a_clear_error(tmp_path: Path) -> None:
    path = override_path(tmp_path, "aws")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(CatalogError, match=r"not a valid aws catalog .*tsky catalog refresh aws"):
        load_catalog(tmp_path)
