"""Pool YAMLs: the `pool:` section's forms and rules, and what a pool's task may not contain (§5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsky.spec.errors import SpecError
from tsky.spec.loader import load_pool
from tsky.spec.pool import PoolSpec


def pool(text: str, tmp_path: Path) -> tuple[PoolSpec, list[str]]:
    path = tmp_path / "pool.yaml"
    path.write_text(text)
    warnings: list[str] = []
    spec, _ = load_pool(path, warnings=warnings)
    return spec, warnings


FORMS = [
    ("workers: 3", False, 3, 3, 3, "Fixed-size (3 workers)"),
    ("workers: 0", False, 0, 0, 0, "Fixed-size (0 workers)"),
    ("min_workers: 0\n  max_workers: 4", True, 0, 4, 0, "Autoscaling from 0 to 4 workers (queue threshold: 1)"),
    (
        "workers: 2\n  min_workers: 1\n  max_workers: 5\n  queue_length_threshold: 3\n"
        "  upscale_delay_seconds: 10\n  downscale_delay_seconds: 60",
        True,
        1,
        5,
        2,
        "Autoscaling from 1 to 5 workers (queue threshold: 3)",
    ),
    ("workers: 2\n  max_workers: 4", True, 2, 4, 2, "Autoscaling from 2 to 4 workers (queue threshold: 1)"),
]


@pytest.mark.parametrize(("section", "autoscaling", "low", "high", "initial", "describe"), FORMS)
def test_pool_forms(
    section: str, autoscaling: bool, low: int, high: int, initial: int, describe: str, tmp_path: Path
) -> None:
    spec, _ = pool(f"pool:\n  {section}\nsetup: echo hi\n", tmp_path)
    assert (spec.autoscaling, spec.min_size, spec.max_size, spec.initial_workers) == (
        autoscaling,
        low,
        high,
        initial,
    )
    assert spec.describe() == describe


def test_pool_defaults(tmp_path: Path) -> None:
    spec, warnings = pool("pool:\n  workers: 1\n", tmp_path)
    assert (spec.upscale_delay_seconds, spec.downscale_delay_seconds) == (300, 1200)
    assert warnings == []


def test_run_is_ignored_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("pool:\n  workers: 1\nsetup: echo s\nrun: echo r\n")
    warnings: list[str] = []
    _, task = load_pool(path, warnings=warnings)
    assert task.run is None
    assert task.setup == "echo s"
    assert task.pool is not None
    assert len(warnings) == 1
    assert "`run`" in warnings[0]


def test_pool_spec_round_trips() -> None:
    spec = PoolSpec(workers=2, min_workers=1, max_workers=3, queue_length_threshold=2)
    assert PoolSpec.model_validate(spec.model_dump(mode="json")) == spec
    fixed = PoolSpec(workers=2)
    assert PoolSpec.model_validate(fixed.model_dump(mode="json")) == fixed


def test_any_of_pool_is_accepted(tmp_path: Path) -> None:
    spec, _ = pool(
        "pool: {workers: 2}\nresources:\n  any_of:\n    - {infra: aws, use_spot: true}\n"
        "    - {infra: gcp, use_spot: true}\n",
        tmp_path,
    )
    assert spec.workers == 2


POOL_TASK_ERRORS = [
    ("resources:\n  ports: 8080", "resources.ports", "Cannot specify ports in a pool."),
    ("resources:\n  any_of:\n    - ports: 8080", "resources.ports", "Cannot specify ports in a pool."),
    (
        "resources:\n  ordered:\n    - infra: aws\n    - infra: gcp",
        "resources.ordered",
        "Ordered resources are not supported for pools. Use `any_of` instead.",
    ),
    ("resources:\n  job_recovery: failover", "resources.job_recovery", "job_recovery is disabled for Pool"),
    ("resources:\n  any_of:\n    - job_recovery: failover", "resources.job_recovery", "job_recovery is disabled"),
    (
        "resources:\n  any_of:\n    - use_spot: true\n    - use_spot: false",
        "resources",
        "Mixing spot and non-spot resources is not supported for pools",
    ),
]


@pytest.mark.parametrize(("resources", "path", "message"), POOL_TASK_ERRORS)
def test_pool_task_rules(resources: str, path: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        pool(f"pool:\n  workers: 1\n{resources}\n", tmp_path)
    assert message in info.value.message
    assert info.value.path == path
    assert info.value.line is not None


def test_pool_section_required(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="The YAML file needs a `pool` section"):
        pool("run: echo hi\n", tmp_path)


def test_pool_yaml_holds_one_task(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="A pool YAML holds one task"):
        pool("pool: {workers: 1}\n---\nrun: a\n", tmp_path)
