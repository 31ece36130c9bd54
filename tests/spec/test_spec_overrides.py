"""`tsky jobs launch` flags applied to a loaded pipeline, checked like the YAML fields they replace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tsky.spec.errors import SpecError
from tsky.spec.loader import apply_overrides, load_pipeline
from tsky.spec.requests import Infra


def test_resource_flags_apply_to_a_single_task() -> None:
    pipeline = load_pipeline("name: j\nresources: {cpus: 1, use_spot: false}\nrun: x\n")
    new, warnings = apply_overrides(
        pipeline,
        infra="aws/us-east-1",
        cpus="4+",
        memory="16GB",
        gpus="V100:2",
        instance_type="p3.8xlarge",
        use_spot=True,
        num_nodes=3,
        disk_size=100,
        image_id="docker:img",
        job_recovery="failover",
    )
    assert warnings == []
    task = new.tasks[0]
    (option,) = task.requests().options
    assert option.infra == Infra(cloud="aws", region="us-east-1")
    assert (option.cpus, option.cpus_at_least, option.memory_gb) == (4.0, True, 16.0)
    assert (option.accelerator, option.accelerator_count) == ("V100", 2)
    assert (option.instance_type, option.use_spot, option.disk_size_gb, option.image_id) == (
        "p3.8xlarge",
        True,
        100,
        "docker:img",
    )
    assert task.num_nodes == 3
    assert task.job_recovery().strategy == "FAILOVER"
    assert pipeline.tasks[0].resources.cpus == "1"  # the input is not changed


def test_job_recovery_flag_replaces_the_whole_value() -> None:
    pipeline = load_pipeline("resources:\n  job_recovery: {max_restarts_on_errors: 3}\nrun: x\n")
    new, _ = apply_overrides(pipeline, job_recovery="FAILOVER")
    assert new.tasks[0].job_recovery().max_restarts_on_errors == 0


def test_flags_override_every_any_of_entry() -> None:
    pipeline = load_pipeline("resources:\n  any_of:\n    - {use_spot: true, infra: aws}\n    - {use_spot: false}\n")
    new, _ = apply_overrides(pipeline, use_spot=False)
    assert [o.use_spot for o in new.tasks[0].requests().options] == [False, False]
    assert [o.infra for o in new.tasks[0].requests().options] == [Infra(cloud="aws"), None]


def test_none_resets_a_field() -> None:
    pipeline = load_pipeline("resources: {accelerators: V100, image_id: docker:x}\nrun: x\n")
    new, _ = apply_overrides(pipeline, gpus="none", image_id="None")
    (option,) = new.tasks[0].requests().options
    assert (option.accelerator, option.image_id) == (None, None)


def test_pipelines_ignore_resource_flags_with_skypilots_warning(tmp_path: Path) -> None:
    pipeline = load_pipeline("name: p\n---\nrun: a\n---\nrun: b\n")
    new, warnings = apply_overrides(pipeline, cpus="4", num_nodes=2, workdir=str(tmp_path))
    assert warnings == [
        "override params {'cpus': '4', 'num_nodes': 2} are ignored, since the yaml file contains multiple tasks."
    ]
    assert [t.resources.cpus for t in new.tasks] == [None, None]
    assert [t.workdir for t in new.tasks] == [str(tmp_path), str(tmp_path)]


BAD_FLAGS: list[tuple[dict[str, Any], str, str]] = [
    ({"cpus": "abc"}, "--cpus", 'The "cpus" field should be either a number or a string "<number>+"'),
    ({"memory": "16XB"}, "--memory", "unit is one of KB/MB/GB/TB/PB"),
    ({"gpus": "V100:x"}, "--gpus", "should be <name> or <name>:<cnt>"),
    ({"infra": "notacloud"}, "--infra", "unknown cloud 'notacloud'"),
    ({"disk_size": 0}, "--disk-size", '"disk_size" must be a positive integer (in GB)'),
    ({"num_nodes": 0}, "--num-nodes", "num_nodes should be a positive int. Got: 0"),
    ({"job_recovery": "sometimes"}, "--job-recovery", "is not a valid jobs recovery strategy"),
    ({"workdir": "/nonexistent/dir"}, "--workdir", "Workdir must be a valid directory"),
]


@pytest.mark.parametrize(("flags", "flag", "message"), BAD_FLAGS)
def test_bad_flag_values(flags: dict[str, Any], flag: str, message: str) -> None:
    pipeline = load_pipeline("run: x\n")
    with pytest.raises(SpecError) as info:
        apply_overrides(pipeline, **flags)
    assert info.value.path == flag
    assert message in info.value.message
    assert str(info.value).startswith(f"{flag}: ")


def test_flag_that_breaks_a_cross_field_rule() -> None:
    pipeline = load_pipeline("resources:\n  image_id: {us-east-1: ami-1}\nrun: x\n")
    with pytest.raises(SpecError, match="image_id has no entry for region 'us-west-2'") as info:
        apply_overrides(pipeline, infra="aws/us-west-2")
    assert "--infra" in str(info.value)
    with pytest.raises(SpecError, match="should be <name> or <name>:<cnt>"):
        apply_overrides(pipeline, gpus="{V100: 1, A100: 1}")
