"""Every YAML form SkyPilot accepts parses to the model and requests tsky's runtime expects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tsky.spec.loader import load_pipeline
from tsky.spec.requests import Infra, ResourceRequest
from tsky.spec.task import GitWorkdir, JobRecovery, Pipeline, Storage, Task


def one(text: str, **kwargs: Any) -> Task:
    pipeline = load_pipeline(text, **kwargs)
    assert len(pipeline.tasks) == 1
    return pipeline.tasks[0]


def requests(resources_yaml: str) -> tuple[list[ResourceRequest], bool]:
    task = one("resources:\n" + "".join(f"  {line}\n" for line in resources_yaml.strip().splitlines()))
    resolved = task.requests()
    return resolved.options, resolved.ordered


INFRA = [
    ("aws", Infra(cloud="aws")),
    ("AWS/us-east-1", Infra(cloud="aws", region="us-east-1")),
    ("gcp/*/us-central1-a", Infra(cloud="gcp", zone="us-central1-a")),
    ("aws/us-east-1/us-east-1a", Infra(cloud="aws", region="us-east-1", zone="us-east-1a")),
    ("k8s", Infra(cloud="k8s")),
    ("kubernetes/my-ctx", Infra(cloud="k8s", region="my-ctx")),
    ("k8s/arn:aws:eks:us-east-1:1:cluster/prod", Infra(cloud="k8s", region="arn:aws:eks:us-east-1:1:cluster/prod")),
    ("ssh/my-pool", Infra(cloud="ssh", region="my-pool")),
    ("local", Infra(cloud="local")),
    ("*/us-west-2", Infra(region="us-west-2")),
    ("*/*/us-west-2a", Infra(zone="us-west-2a")),
    ("azure/eastus", Infra(cloud="azure", region="eastus")),  # a SkyPilot cloud tsky does not launch on
]


@pytest.mark.parametrize(("infra", "expected"), INFRA)
def test_infra_forms(infra: str, expected: Infra) -> None:
    options, _ = requests(f"infra: '{infra}'")
    assert [o.infra for o in options] == [expected]


def test_infra_star_is_anywhere() -> None:
    options, _ = requests("infra: '*'")
    assert options[0].infra is None
    assert one("resources: {infra: '*'}").resources.infra is None


LEGACY = [
    ("cloud: aws", Infra(cloud="aws")),
    ("cloud: aws\n  region: us-east-1", Infra(cloud="aws", region="us-east-1")),
    ("cloud: gcp\n  zone: us-central1-a", Infra(cloud="gcp", zone="us-central1-a")),
    ("cloud: kubernetes\n  region: ctx", Infra(cloud="k8s", region="ctx")),
    ("cloud: ssh\n  region: ssh-mypool", Infra(cloud="ssh", region="mypool")),
    ("region: us-east-1", Infra(region="us-east-1")),
]


@pytest.mark.parametrize(("legacy", "expected"), LEGACY)
def test_legacy_cloud_region_zone_map_to_infra(legacy: str, expected: Infra) -> None:
    task = one(f"resources:\n  {legacy}\n")
    assert task.requests().options[0].infra == expected
    assert task.resources.infra == str(expected)


ACCELERATORS = [
    ("accelerators: V100", [("V100", 1)], False),
    ("accelerators: V100:4", [("V100", 4)], False),
    ("accelerators: T4:0.5", [("T4", 0.5)], False),
    ("gpus: A100:8", [("A100", 8)], False),
    ("accelerators: {V100: 1}", [("V100", 1)], False),
    ("accelerators: {A100: 1, V100: 2}", [("A100", 1), ("V100", 2)], False),
    ("accelerators: {A100: null}", [("A100", 1)], False),
    ("accelerators: [V100:1, A100:1]", [("V100", 1), ("A100", 1)], True),
    ("accelerators: [A100:1, V100:1]", [("A100", 1), ("V100", 1)], True),
]


@pytest.mark.parametrize(("line", "expected", "ordered"), ACCELERATORS)
def test_accelerator_forms(line: str, expected: list[tuple[str, float]], ordered: bool) -> None:
    options, is_ordered = requests(line)
    assert [(o.accelerator, o.accelerator_count) for o in options] == expected
    assert is_ordered is ordered


CPUS_MEMORY = [
    ("cpus: 4", (4.0, False, None, False)),
    ("cpus: '4+'", (4.0, True, None, False)),
    ("cpus: 0.5", (0.5, False, None, False)),
    ("memory: 16", (None, False, 16.0, False)),
    ("memory: 16+", (None, False, 16.0, True)),
    ("memory: 64GB", (None, False, 64.0, False)),
    ("memory: 1024MB+", (None, False, 1.0, True)),
    ("memory: 1TB", (None, False, 1024.0, False)),
    ("memory: 32gb", (None, False, 32.0, False)),
]


@pytest.mark.parametrize(("line", "expected"), CPUS_MEMORY)
def test_cpus_and_memory(line: str, expected: tuple[Any, ...]) -> None:
    option = requests(line)[0][0]
    assert (option.cpus, option.cpus_at_least, option.memory_gb, option.memory_at_least) == expected


SCALARS = [
    ("instance_type: p3.2xlarge", "instance_type", "p3.2xlarge"),
    ("use_spot: true", "use_spot", True),
    ("disk_size: 100", "disk_size_gb", 100),
    ("disk_size: 1TB", "disk_size_gb", 1024),
    ("disk_size: 512GB", "disk_size_gb", 512),
    ("disk_tier: HIGH", "disk_tier", "high"),
    ("network_tier: best", "network_tier", "best"),
    ("max_hourly_cost: 1.5", "max_hourly_cost", 1.5),
    ("image_id: docker:ubuntu:22.04", "image_id", "docker:ubuntu:22.04"),
    ("ports: 8080", "ports", ("8080",)),
    ("ports: '8000-8010'", "ports", ("8000-8010",)),
    ("ports: '80,443'", "ports", ("80", "443")),
    ("ports: [8080, '9000-9010']", "ports", ("8080", "9000-9010")),
    ("labels: {team: ml}", "labels", {"team": "ml"}),
]


@pytest.mark.parametrize(("line", "field", "expected"), SCALARS)
def test_scalar_resource_fields(line: str, field: str, expected: Any) -> None:
    assert getattr(requests(line)[0][0], field) == expected


def test_defaults() -> None:
    task = one("run: echo hi")
    (option,) = task.requests().options
    assert option == ResourceRequest()
    assert option.disk_size_gb == 256
    assert task.num_nodes == 1
    assert task.job_recovery() == JobRecovery(strategy="EAGER_NEXT_REGION")


def test_image_id_per_region_pins_each_request_to_its_region() -> None:
    options, _ = requests("infra: aws\nimage_id: {us-east-1: ami-1, us-west-2: ami-2}")
    assert [(o.infra, o.image_id) for o in options] == [
        (Infra(cloud="aws", region="us-east-1"), "ami-1"),
        (Infra(cloud="aws", region="us-west-2"), "ami-2"),
    ]


def test_priority_and_ignored_resource_fields_are_kept() -> None:
    task = one("resources:\n  priority: 10\n  autostop: 10m\n  local_disk: nvme\n")
    assert task.priority() == 10
    assert task.ignored_fields() == ["resources.autostop", "resources.local_disk"]


JOB_RECOVERY = [
    ("job_recovery: failover", JobRecovery(strategy="FAILOVER")),
    ("job_recovery: EAGER_NEXT_REGION", JobRecovery(strategy="EAGER_NEXT_REGION")),
    ("job_recovery: none", JobRecovery(strategy="NONE")),
    ("job_recovery: NONE", JobRecovery(strategy="NONE")),
    ("job_recovery: {max_restarts_on_errors: 3}", JobRecovery(strategy="EAGER_NEXT_REGION", max_restarts_on_errors=3)),
    (
        "job_recovery: {strategy: FAILOVER, max_restarts_on_errors: 2, recover_on_exit_codes: [33, 34]}",
        JobRecovery(strategy="FAILOVER", max_restarts_on_errors=2, recover_on_exit_codes=[33, 34]),
    ),
    (
        "job_recovery: {recover_on_exit_codes: 29}",
        JobRecovery(strategy="EAGER_NEXT_REGION", recover_on_exit_codes=[29]),
    ),
    ("job_recovery: {strategy: null}", JobRecovery(strategy="EAGER_NEXT_REGION")),
]


@pytest.mark.parametrize(("line", "expected"), JOB_RECOVERY)
def test_job_recovery_forms(line: str, expected: JobRecovery) -> None:
    assert one(f"resources:\n  {line}\n").job_recovery() == expected


def test_job_recovery_in_any_of_entries_that_agree() -> None:
    task = one(
        "resources:\n  any_of:\n    - {use_spot: true, job_recovery: failover}\n"
        "    - {use_spot: false, job_recovery: FAILOVER}\n"
    )
    assert task.job_recovery().strategy == "FAILOVER"


def test_any_of_is_a_set_with_outer_defaults_and_merged_labels() -> None:
    options, ordered = requests(
        "cpus: 2\nlabels: {team: ml}\nany_of:\n  - {use_spot: true, labels: {tier: spot}}\n"
        "  - {use_spot: false, cpus: 4}"
    )
    assert not ordered
    assert [(o.cpus, o.use_spot, o.labels) for o in options] == [
        (2.0, True, {"team": "ml", "tier": "spot"}),
        (4.0, False, {"team": "ml"}),
    ]


def test_ordered_is_a_list_in_order() -> None:
    options, ordered = requests("ordered:\n  - infra: gcp\n  - infra: aws\n  - infra: local")
    assert ordered
    assert [o.infra for o in options] == [Infra(cloud="gcp"), Infra(cloud="aws"), Infra(cloud="local")]


def test_accelerator_set_times_any_of_is_a_cross_product() -> None:
    options, ordered = requests("accelerators: {A100: 1, V100: 1}\nany_of:\n  - infra: aws\n  - infra: gcp")
    assert not ordered
    assert {(o.accelerator, o.infra.cloud if o.infra else None) for o in options} == {
        ("A100", "aws"),
        ("V100", "aws"),
        ("A100", "gcp"),
        ("V100", "gcp"),
    }


def test_entry_accelerators_override_outer_ones() -> None:
    options, _ = requests("accelerators: V100:1\nany_of:\n  - infra: aws\n  - {infra: gcp, accelerators: A100:1}")
    assert [(o.accelerator, str(o.infra)) for o in options] == [("V100", "aws"), ("A100", "gcp")]


def test_duplicate_any_of_options_collapse() -> None:
    options, _ = requests("any_of:\n  - use_spot: true\n  - use_spot: true")
    assert len(options) == 1


def test_storage_and_string_file_mounts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    task = one(
        f"file_mounts:\n  /data: {data}\n  /remote: s3://bucket/path\n"
        "  /ckpt:\n    name: my-bucket\n    store: S3\n    mode: copy\n    source: gs://other\n"
        "  /cache:\n    name: c\n    mode: MOUNT_CACHED\n    type: model_checkpoint_rw\n    persistent: false\n"
    )
    assert task.file_mounts["/data"] == str(data)
    assert task.file_mounts["/remote"] == "s3://bucket/path"
    assert task.file_mounts["/ckpt"] == Storage(name="my-bucket", store="s3", mode="COPY", source="gs://other")
    cache = task.file_mounts["/cache"]
    assert isinstance(cache, Storage)
    assert (cache.mode, cache.type, cache.persistent) == ("MOUNT_CACHED", "MODEL_CHECKPOINT_RW", False)


def test_local_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "file.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    task = one("workdir: src\nfile_mounts:\n  /f: file.txt\n  /b:\n    name: b\n    source: src\n")
    assert task.workdir == str(tmp_path / "src")
    assert task.file_mounts["/f"] == str(tmp_path / "file.txt")
    assert task.file_mounts["/b"] == Storage(name="b", source=str(tmp_path / "src"))


def test_git_workdir() -> None:
    task = one("workdir:\n  url: https://github.com/org/repo.git\n  ref: main\n")
    assert task.workdir == GitWorkdir(url="https://github.com/org/repo.git", ref="main")
    assert one("workdir: {url: 'git@github.com:org/repo.git'}").workdir == GitWorkdir(url="git@github.com:org/repo.git")


def test_envs_become_strings_and_secrets_stay_apart() -> None:
    task = one("envs:\n  A: 1\n  B: true\n  C: ''\nsecrets:\n  TOKEN: abc\n")
    assert task.envs == {"A": "1", "B": "True", "C": ""}
    assert task.secrets == {"TOKEN": "abc"}


def test_accepted_but_ignored_top_level_keys() -> None:
    task = one(
        "run: x\nconfig: {jobs: {}}\nevent_callback: echo $JOB_STATUS\nvolumes: {/v: vol}\n"
        "api_server_access: false\ninputs: {a: 1}\noutputs: {b: 2}\nmanaged_secrets: [X]\n_metadata: {k: v}\n"
    )
    assert task.ignored_fields() == [
        "config",
        "volumes",
        "event_callback",
        "inputs",
        "outputs",
        "managed_secrets",
        "api_server_access",
        "_metadata",
    ]


# Naming ------------------------------------------------------------------------------------------


def test_single_task_gives_the_pipeline_its_name() -> None:
    pipeline = load_pipeline("name: hello\nrun: echo hi\n")
    assert (pipeline.name, pipeline.tasks[0].name) == ("hello", "hello")


def test_name_override_renames_a_single_task() -> None:
    pipeline = load_pipeline("name: hello\nrun: echo hi\n", name="other")
    assert (pipeline.name, pipeline.tasks[0].name) == ("other", "other")


def test_unnamed_job_gets_a_generated_name() -> None:
    pipeline = load_pipeline("run: echo hi\n")
    assert pipeline.name.startswith("tsky-")
    _, hex4, *_ = pipeline.name.split("-")
    assert len(hex4) == 4
    assert pipeline.tasks[0].name == pipeline.name


def test_pipeline_header_and_task_names() -> None:
    pipeline = load_pipeline("name: pipe\n---\nname: train\nrun: a\n---\nrun: b\n---\n---\nrun: c\n")
    assert pipeline.name == "pipe"
    assert [t.name for t in pipeline.tasks] == ["train", "pipe-1", "pipe-2"]


def test_pipeline_without_header_is_named() -> None:
    pipeline = load_pipeline("name: a\nrun: a\n---\nname: b\nrun: b\n")
    assert pipeline.name.startswith("tsky-")
    assert [t.name for t in pipeline.tasks] == ["a", "b"]


def test_header_execution_serial_and_header_alone() -> None:
    assert len(load_pipeline("name: p\nexecution: serial\n---\nrun: a\n").tasks) == 1
    alone = load_pipeline("name: p\n")
    assert [(t.name, t.run) for t in alone.tasks] == [("p", None)]


def test_pipeline_model_fills_names_without_the_loader() -> None:
    pipeline = Pipeline(name="p", tasks=[Task(run="a"), Task(run="b")])
    assert [t.name for t in pipeline.tasks] == ["p-0", "p-1"]
    assert Pipeline(name="solo", tasks=[Task(run="a")]).tasks[0].name == "solo"


def test_accepts_a_path_object(tmp_path: Path) -> None:
    path = tmp_path / "job.yml"
    path.write_text("name: from-file\nrun: echo\n")
    assert load_pipeline(path).name == "from-file"
    assert load_pipeline(str(path)).name == "from-file"
