"""The pure planner: requests × enabled infra × catalog offers → ranked candidates, or why nothing fits.

Requests are built directly (`ResourceRequest`), so these tests do not depend on how the spec resolves
YAML; `test_examples.py` covers a few YAMLs end to end."""

from __future__ import annotations

import pytest

from tests.planning.helpers import HOST, disabled, enabled, run
from tsky.ops.catalog import Catalog, Offer
from tsky.ops.infra_check import EnabledInfra, NodeShape
from tsky.ops.planning import MAX_CANDIDATES
from tsky.spec.requests import Infra, ResourceRequest
from tsky.spec.settings import LocalInstanceType, LocalRegion, LocalSettings, Settings


def cheapest(catalog: Catalog, *, spot: bool = False, **match: object) -> Offer:
    """The cheapest catalog offer whose fields equal `match`, found by brute force."""
    offers = [
        o
        for o in catalog.offers
        if all(getattr(o, key) == value for key, value in match.items()) and o.price_for(spot) is not None
    ]
    return min(offers, key=lambda o: o.price_for(spot) or 0.0)


def costs(result: object) -> list[float]:
    return [c.hourly_cost for c in result.candidates]  # type: ignore[attr-defined]


def test_v100_picks_the_cheapest_v100_in_the_catalog(catalog: Catalog, settings: Settings) -> None:
    result = run(catalog, settings, ResourceRequest(accelerator="V100", accelerator_count=1))
    best = cheapest(catalog, accelerator="V100", accelerator_count=1)
    chosen = result.candidates[0]
    assert (chosen.cloud, chosen.instance_type, chosen.price_per_node_hour) == (
        best.cloud,
        best.instance_type,
        best.price,
    )
    # GCP's n1-highmem-8 with one V100 ($2.95) undercuts AWS's p3.2xlarge ($3.06), as in SkyPilot's docs.
    assert (chosen.cloud, chosen.instance_type, chosen.region) == ("gcp", "n1-highmem-8", "us-central1")
    assert chosen.price_per_node_hour == pytest.approx(2.9532)
    assert costs(result) == sorted(costs(result))
    aws = next(c for c in result.candidates if c.cloud == "aws")
    assert (aws.instance_type, aws.price_per_node_hour) == ("p3.2xlarge", 3.06)
    assert all(c.accelerator == "V100" and c.accelerator_count == 1 for c in result.candidates)
    assert result.infeasible_reason is None


def test_use_spot_ranks_by_spot_price(catalog: Catalog, settings: Settings) -> None:
    result = run(catalog, settings, ResourceRequest(accelerator="V100", accelerator_count=1, use_spot=True))
    best = cheapest(catalog, spot=True, accelerator="V100", accelerator_count=1)
    assert result.candidates[0].price_per_node_hour == best.spot_price
    assert all(c.use_spot for c in result.candidates)
    by_place = {(o.cloud, o.region, o.zone, o.instance_type, o.accelerator): o for o in catalog.offers}
    for c in result.candidates:
        offer = by_place[(c.cloud, c.region, c.zone, c.instance_type, "V100")]
        assert offer.spot_price is not None and offer.price is not None
        assert c.price_per_node_hour == offer.spot_price < offer.price


def test_cpus_at_least_picks_the_cheapest_cpu_node_with_that_many(catalog: Catalog, settings: Settings) -> None:
    result = run(catalog, settings, ResourceRequest(cpus=8, cpus_at_least=True))
    best = min(
        (o for o in catalog.offers if (o.vcpus or 0) >= 8 and not o.accelerator),
        key=lambda o: o.price or 0.0,
    )
    assert result.candidates[0].instance_type == best.instance_type == "e2-standard-8"
    assert all(c.vcpus >= 8 and c.accelerator is None for c in result.candidates)
    aws_only = run(catalog, settings, ResourceRequest(cpus=8, cpus_at_least=True), infra=enabled("aws"))
    # c5 and c6i tie at $0.34; the name breaks the tie so plans are deterministic.
    assert (aws_only.candidates[0].instance_type, aws_only.candidates[0].price_per_node_hour) == ("c5.2xlarge", 0.34)


def test_exact_cpus_and_memory(catalog: Catalog, settings: Settings) -> None:
    exact = run(catalog, settings, ResourceRequest(cpus=36))
    assert {c.instance_type for c in exact.candidates} == {"c5.9xlarge"}
    big_memory = run(catalog, settings, ResourceRequest(cpus=8, memory_gb=64, memory_at_least=True))
    assert big_memory.candidates[0].instance_type == "r5.2xlarge"
    assert all(c.vcpus == 8 and c.memory_gb >= 64 for c in big_memory.candidates)


def test_a_task_that_asks_for_nothing_gets_skypilots_default_node(catalog: Catalog, settings: Settings) -> None:
    result = run(catalog, settings, ResourceRequest(), infra=enabled("aws"))
    chosen = result.candidates[0]
    assert (chosen.instance_type, chosen.vcpus, chosen.memory_gb) == ("m5.2xlarge", 8, 32)


def test_any_of_takes_the_cheapest_option(catalog: Catalog, settings: Settings) -> None:
    options = [
        ResourceRequest(accelerator="H100", accelerator_count=8),
        ResourceRequest(accelerator="A100", accelerator_count=8),
        ResourceRequest(accelerator="V100", accelerator_count=8),
    ]
    result = run(catalog, settings, *options)
    assert (result.candidates[0].instance_type, result.candidates[0].request_index) == ("p4d.24xlarge", 1)
    assert costs(result) == sorted(costs(result))
    assert {c.request_index for c in result.candidates} == {0, 1, 2}
    assert len(result.candidates) <= MAX_CANDIDATES


def test_ordered_keeps_the_users_order(catalog: Catalog, settings: Settings) -> None:
    options = [
        ResourceRequest(accelerator="H100", accelerator_count=8),
        ResourceRequest(accelerator="A100", accelerator_count=8),
    ]
    result = run(catalog, settings, *options, ordered=True)
    indexes = [c.request_index for c in result.candidates]
    assert indexes == sorted(indexes) and indexes[0] == 0 and 1 in indexes
    first = [c.hourly_cost for c in result.candidates if c.request_index == 0]
    assert first == sorted(first)
    assert result.candidates[0].instance_type == "p5.48xlarge"


def test_one_candidate_per_place_with_its_cheapest_instance_type(catalog: Catalog, settings: Settings) -> None:
    result = run(catalog, settings, ResourceRequest(accelerator="T4", accelerator_count=1))
    places = [(c.request_index, c.cloud, c.region, c.zone) for c in result.candidates]
    assert len(places) == len(set(places))
    for c in result.candidates:
        assert c.price_per_node_hour == min(
            o.price or 0.0
            for o in catalog.offers
            if (o.cloud, o.region, o.zone, o.accelerator, o.accelerator_count) == (c.cloud, c.region, c.zone, "T4", 1)
        )
    # T4:1 comes on g4dn.xlarge (4 vCPUs) up to g4dn.16xlarge: the planner keeps only the cheapest.
    assert {c.instance_type for c in result.candidates if c.cloud == "aws"} == {"g4dn.xlarge"}


@pytest.mark.parametrize(
    ("infra", "expected"),
    [
        (Infra(cloud="aws"), {("aws", None)}),
        (Infra(cloud="gcp", region="europe-west4"), {("gcp", "europe-west4")}),
        (Infra(zone="us-central1-b"), {("gcp", "us-central1")}),
        (Infra(region="eu-west-1"), {("aws", "eu-west-1")}),
    ],
)
def test_infra_filters(
    catalog: Catalog, settings: Settings, infra: Infra, expected: set[tuple[str, str | None]]
) -> None:
    result = run(catalog, settings, ResourceRequest(accelerator="V100", accelerator_count=1, infra=infra))
    assert result.candidates
    assert all(infra.contains(c.cloud, c.region, c.zone) for c in result.candidates)
    found = {(c.cloud, c.region if infra.region or infra.zone else None) for c in result.candidates}
    assert found == expected


def test_max_hourly_cost_is_per_node_hour(catalog: Catalog, settings: Settings) -> None:
    request = ResourceRequest(accelerator="V100", accelerator_count=1, max_hourly_cost=3.0)
    result = run(catalog, settings, request, num_nodes=4)
    assert result.candidates and all(c.price_per_node_hour <= 3.0 for c in result.candidates)
    assert all(c.cloud == "gcp" for c in result.candidates)  # p3.2xlarge costs $3.06
    assert result.candidates[0].hourly_cost == pytest.approx(4 * 2.9532)
    too_cheap = run(catalog, settings, request.model_copy(update={"max_hourly_cost": 1.0}))
    assert too_cheap.candidates == []
    assert "max_hourly_cost $1 per node-hour" in (too_cheap.infeasible_reason or "")
    assert "$2.95: gcp n1-highmem-8 in us-central1" in (too_cheap.infeasible_reason or "")


def test_impossible_request_fails_fast_saying_what_no_infra_offers(catalog: Catalog, settings: Settings) -> None:
    result = run(
        catalog,
        settings,
        ResourceRequest(accelerator="H100", accelerator_count=16),
        infra=enabled("local", "aws"),
        off=disabled("gcp"),
    )
    assert result.candidates == []
    assert result.infeasible_reason == (
        "No enabled infra offers H100:16 per node (the largest H100 offer is 8 per node: aws p5.48xlarge, "
        "gcp a3-highgpu-8g). Enabled infra: local, aws. Not enabled: gcp (see `tsky check`)."
    )


def test_disabled_infra_is_not_planned_on_but_named_when_it_could_help(catalog: Catalog, settings: Settings) -> None:
    request = ResourceRequest(accelerator="A100-80GB", accelerator_count=8)
    on_aws = run(catalog, settings, request, infra=enabled("local", "aws"), off=disabled("gcp"))
    assert on_aws.candidates and {c.cloud for c in on_aws.candidates} == {"aws"}
    local_only = run(catalog, settings, request, infra=enabled("local"), off=disabled("ssh", "aws", "gcp"))
    assert local_only.candidates == []
    reason = local_only.infeasible_reason or ""
    assert reason.startswith("No enabled infra offers A100-80GB (enabled infra offers: no GPUs)")
    assert "aws and gcp would offer it (aws p4de.24xlarge, gcp a2-ultragpu-8g) but are not enabled" in reason
    assert "no aws credentials" not in reason  # one short line: the reasons are `tsky check`'s to give
    assert reason.endswith("Enabled infra: local. Not enabled: ssh, aws, gcp (see `tsky check`).")


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (ResourceRequest(accelerator="V100", accelerator_count=3), "(V100 comes in 1, 2, 4, 8 per node)"),
        (ResourceRequest(accelerator="B300", accelerator_count=1), "Unknown accelerator 'B300'"),
        (ResourceRequest(cpus=7), "exactly 7 vCPUs per node (nearest sizes: 2, 4, 8, 16; use '7+'"),
        (ResourceRequest(cpus=500, cpus_at_least=True), "500+ vCPUs per node (the largest has 128: aws m6i.32xlarge)"),
        (ResourceRequest(instance_type="p9.huge"), "instance type 'p9.huge'"),
        (ResourceRequest(disk_size_gb=100_000), "100000 GB disk"),
        (ResourceRequest(infra=Infra(cloud="gcp", region="mars1")), "infra 'gcp/mars1' (gcp regions: asia-east1,"),
        (ResourceRequest(infra=Infra(cloud="k8s")), "infra 'k8s': k8s is not enabled"),
    ],
)
def test_infeasible_reasons_name_the_unmet_requirement(
    catalog: Catalog, settings: Settings, request_: ResourceRequest, fragment: str
) -> None:
    result = run(catalog, settings, request_)
    assert result.candidates == []
    assert fragment in (result.infeasible_reason or "")


def test_several_infeasible_options_are_each_explained(catalog: Catalog, settings: Settings) -> None:
    result = run(
        catalog,
        settings,
        ResourceRequest(accelerator="H100", accelerator_count=16),
        ResourceRequest(cpus=1000, cpus_at_least=True),
    )
    reason = result.infeasible_reason or ""
    assert reason.startswith("None of the resource options fits: option 1 (H100:16): ")
    assert "option 2 (1000+ vCPUs): No enabled infra offers 1000+ vCPUs" in reason


def test_a_cpu_task_never_gets_a_gpu_node_unless_it_names_one(catalog: Catalog, settings: Settings) -> None:
    cpu = run(catalog, settings, ResourceRequest(cpus=4, cpus_at_least=True))
    assert all(c.accelerator is None for c in cpu.candidates)
    named = run(catalog, settings, ResourceRequest(instance_type="p3.2xlarge"))
    assert {(c.instance_type, c.accelerator) for c in named.candidates} == {("p3.2xlarge", "V100")}


def test_fractional_accelerators_run_on_whole_devices(catalog: Catalog, settings: Settings) -> None:
    result = run(catalog, settings, ResourceRequest(accelerator="T4", accelerator_count=0.5))
    assert result.candidates and all(c.accelerator_count == 1 for c in result.candidates)


def test_accelerator_names_are_case_insensitive(catalog: Catalog, settings: Settings) -> None:
    result = run(catalog, settings, ResourceRequest(accelerator="a10g", accelerator_count=1))
    assert result.candidates[0].accelerator == "A10G"


def test_disk_size_beyond_ebs_limits_goes_to_gcp(catalog: Catalog, settings: Settings) -> None:
    result = run(catalog, settings, ResourceRequest(cpus=2, cpus_at_least=True, disk_size_gb=20_000))
    assert result.candidates and {c.cloud for c in result.candidates} == {"gcp"}


def test_cost_counts_every_node(catalog: Catalog, settings: Settings) -> None:
    result = run(catalog, settings, ResourceRequest(accelerator="V100", accelerator_count=1), num_nodes=3)
    assert all(c.num_nodes == 3 for c in result.candidates)
    assert result.candidates[0].hourly_cost == pytest.approx(3 * result.candidates[0].price_per_node_hour)


def local_settings(tmp_settings: Settings) -> Settings:
    return tmp_settings.model_copy(
        update={
            "local": LocalSettings(
                regions=[
                    LocalRegion(name="east", zones=["east-a", "east-b"], capacity_nodes=2, spot=True),
                    LocalRegion(
                        name="gpu",
                        spot=False,
                        instance_types=[
                            LocalInstanceType(name="sim-t4", vcpus=8, memory_gb=32, accelerators={"T4": 1}, price=0.05)
                        ],
                    ),
                ]
            )
        }
    )


def test_local_regions_come_from_settings(catalog: Catalog, settings: Settings) -> None:
    local = local_settings(settings)
    cpu = run(catalog, local, ResourceRequest(cpus=2, cpus_at_least=True), infra=enabled("local", "aws"))
    first = cpu.candidates[:2]
    # Free local nodes first, one per zone; their size defaults to this host's.
    assert [(c.cloud, c.region, c.zone) for c in first] == [("local", "east", "east-a"), ("local", "east", "east-b")]
    assert (first[0].vcpus, first[0].memory_gb, first[0].price_per_node_hour) == (HOST.vcpus, HOST.memory_gb, 0.0)
    gpu = run(catalog, local, ResourceRequest(accelerator="T4", accelerator_count=1), infra=enabled("local", "aws"))
    assert (gpu.candidates[0].region, gpu.candidates[0].instance_type) == ("gpu", "sim-t4")
    assert gpu.candidates[0].price_per_node_hour == 0.05
    # The gpu region has no spot, so a spot T4 goes to AWS.
    spot_t4 = ResourceRequest(accelerator="T4", accelerator_count=1, use_spot=True)
    spot = run(catalog, local, spot_t4, infra=enabled("local", "aws"))
    assert spot.candidates[0].cloud == "aws"
    no_spot = run(catalog, local, spot_t4, infra=enabled("local"))
    assert "spot capacity for T4:1 (spot) (local regions with `spot: false`: gpu)" in (no_spot.infeasible_reason or "")


def test_local_capacity_bounds_the_node_count(catalog: Catalog, settings: Settings) -> None:
    local = local_settings(settings)
    result = run(catalog, local, ResourceRequest(cpus=1, cpus_at_least=True), num_nodes=3, infra=enabled("local"))
    assert result.candidates == []
    assert "No enabled infra fits 3 nodes of 1+ vCPUs (local/east holds 2)" in (result.infeasible_reason or "")


def test_enabled_regions_limit_the_offers(catalog: Catalog, settings: Settings) -> None:
    only = [EnabledInfra(cloud="aws", regions=["eu-west-1"])]
    result = run(catalog, settings, ResourceRequest(accelerator="V100", accelerator_count=1), infra=only)
    assert {c.region for c in result.candidates} == {"eu-west-1"}


def test_k8s_and_ssh_nodes_are_free_and_sized_by_the_request(catalog: Catalog, settings: Settings) -> None:
    infra = [
        EnabledInfra(cloud="k8s", regions=["kind"]),
        EnabledInfra(cloud="ssh", regions=["lab"], shapes={"lab": NodeShape(vcpus=64, accelerators={"A100": 8})}),
        *enabled("aws"),
    ]
    cpu = run(catalog, settings, ResourceRequest(cpus=4, cpus_at_least=True), infra=infra)
    assert (cpu.candidates[0].cloud, cpu.candidates[0].instance_type, cpu.candidates[0].vcpus) == ("k8s", "pod", 4)
    assert cpu.candidates[0].display_infra() == "Kubernetes (kind)"
    gpu = run(catalog, settings, ResourceRequest(accelerator="A100", accelerator_count=8), infra=infra)
    first = gpu.candidates[0]
    assert (first.cloud, first.region, first.price_per_node_hour) == ("ssh", "lab", 0)
    assert all(c.cloud != "k8s" for c in gpu.candidates)  # no GPUs known on the k8s context
    spot = run(catalog, settings, ResourceRequest(cpus=4, cpus_at_least=True, use_spot=True), infra=infra)
    assert {c.cloud for c in spot.candidates} == {"aws"}


def test_kubernetes_is_an_alias_of_k8s(catalog: Catalog, settings: Settings) -> None:
    infra = [EnabledInfra(cloud="k8s", regions=["kind"])]
    result = run(catalog, settings, ResourceRequest(infra=Infra(cloud="kubernetes")), infra=infra)
    assert result.candidates[0].cloud == "k8s"


def test_image_id_picks_the_clouds_that_can_boot_it(catalog: Catalog, settings: Settings) -> None:
    infra = [
        EnabledInfra(cloud="k8s", regions=["kind"]),
        EnabledInfra(cloud="local", regions=["local"]),
        *enabled("aws", "gcp"),
    ]
    cpus = {"cpus": 2.0, "cpus_at_least": True}
    clouds = {
        image: {
            c.cloud for c in run(catalog, settings, ResourceRequest(image_id=image, **cpus), infra=infra).candidates
        }
        for image in (
            "ami-0abc",
            "projects/deeplearning-platform-release/global/images/family/pytorch",
            "docker:pytorch/pytorch",
        )
    }
    assert clouds == {
        "ami-0abc": {"aws"},
        "projects/deeplearning-platform-release/global/images/family/pytorch": {"gcp"},
        "docker:pytorch/pytorch": {"k8s"},
    }
    # The launch gets the image and the disk size with the candidate.
    [first, *_] = run(catalog, settings, ResourceRequest(image_id="ami-0abc", disk_size_gb=512, **cpus)).candidates
    assert (first.image_id, first.disk_size_gb) == ("ami-0abc", 512)
    default = run(catalog, settings, ResourceRequest(**cpus)).candidates[0]
    assert (default.image_id, default.disk_size_gb) == (None, 256)  # SkyPilot's default disk

    nowhere = run(catalog, settings, ResourceRequest(image_id="docker:pytorch/pytorch", **cpus))
    assert nowhere.candidates == []
    assert "No enabled infra can boot image_id 'docker:pytorch/pytorch'" in (nowhere.infeasible_reason or "")
    assert "aws boots an AMI (ami-...)" in (nowhere.infeasible_reason or "")
