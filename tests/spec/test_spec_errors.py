"""Every mistake of §8 (and tsky's own) gives one SpecError naming the YAML path and what is right."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsky.spec.errors import SpecError
from tsky.spec.loader import load_pipeline

# (yaml, YAML path of the field, text the message must contain)
ERRORS: list[tuple[str, str | None, str]] = [
    # Unknown or misnamed fields
    ("runn: echo hi", "runn", "Instead of 'runn', did you mean 'run'?"),
    ("foo: 1", "foo", "Found unsupported field 'foo'"),
    ("resources:\n  gpu: V100", "resources.gpu", "did you mean 'gpus' or 'accelerators'?"),
    ("resources:\n  spot_recovery: failover", "resources.spot_recovery", "did you mean 'job_recovery'?"),
    (
        "resources:\n  job_recovery:\n    max_restart_on_errors: 1",
        "resources.job_recovery.max_restart_on_errors",
        "did you mean 'max_restarts_on_errors'?",
    ),
    ("resources:\n  accelerator_args: {tpu_vn: true}", "resources.accelerator_args.tpu_vn", "did you mean 'tpu_vm'?"),
    ("envs:\n  1BAD: x", "envs", "'1BAD' does not match any of the regexes: '^[a-zA-Z_][a-zA-Z0-9_]*$'"),
    ("envs:\n  A: null", "envs.A", "Environment variable 'A' is None"),
    ("envs:\n  A:", "envs.A", "--env A=value"),
    ("envs: [A]", "envs", "is not of type 'object'"),
    # Type and range errors
    ("num_nodes: two", "num_nodes", "'two' is not of type 'integer'"),
    ("num_nodes: 0", "num_nodes", "num_nodes should be a positive int. Got: 0"),
    ("num_nodes: '2'", "num_nodes", "'2' is not of type 'integer'"),
    ("run: [a, b]", "run", "['a', 'b'] is not of type 'string'"),
    ("setup: {a: 1}", "setup", "is not of type 'string'"),
    ("resources:\n  use_spot: maybe", "resources.use_spot", "'maybe' is not of type 'boolean'"),
    ("resources:\n  labels: {a: 1}", "resources.labels.a", "1 is not of type 'string'"),
    ("resources:\n  priority: 5000", "resources.priority", "5000 is greater than the maximum of 1000"),
    ("resources:\n  priority: -5000", "resources.priority", "-5000 is less than the minimum of -1000"),
    ("resources: [cpus]", "resources", "is not of type 'object'"),
    # Resource value errors
    ("resources:\n  cpus: abc", "resources.cpus", 'The "cpus" field should be either a number or a string "<number>+"'),
    ("resources:\n  cpus: -1", "resources.cpus", "The \"cpus\" field should be positive. Found: '-1'"),
    ("resources:\n  cpus: 0", "resources.cpus", 'The "cpus" field should be positive'),
    ("resources:\n  memory: 16XB", "resources.memory", "unit is one of KB/MB/GB/TB/PB"),
    ("resources:\n  memory: -4", "resources.memory", 'The "memory" field should be positive'),
    (
        "resources:\n  accelerators: V100:x",
        "resources.accelerators",
        "should be <name> or <name>:<cnt>. Found: 'V100:x'",
    ),
    (
        "resources:\n  accelerators: V100:0",
        "resources.accelerators",
        "Accelerator count must be a positive number. Got: 'V100': 0",
    ),
    ("resources:\n  accelerators: {V100: 0}", "resources.accelerators", "Accelerator count must be a positive number"),
    ("resources:\n  accelerators: [V100, 'A100:-1']", "resources.accelerators[1]", "must be a positive number"),
    ("resources:\n  accelerators: 80GB+", "resources.accelerators", "Memory-based accelerator requests"),
    ("resources:\n  accelerators: V100\n  gpus: V100", "resources", "Cannot specify both `gpus` and `accelerators`"),
    ("resources:\n  infra: notacloud/x", "resources.infra", "unknown cloud 'notacloud'"),
    ("resources:\n  infra: aws/a/b/c", "resources.infra", "too many parts"),
    ("resources:\n  infra: aws//x", "resources.infra", "empty part"),
    (
        "resources:\n  infra: aws\n  cloud: gcp",
        "resources",
        "Cannot specify both `infra` and `cloud`, `region`, or `zone` parameters",
    ),
    ("resources:\n  cloud: notacloud", "resources.cloud", "Invalid cloud 'notacloud'"),
    ("resources:\n  disk_size: abc", "resources.disk_size", '"disk_size" must be a positive integer (in GB)'),
    ("resources:\n  disk_size: 0", "resources.disk_size", '"disk_size" must be a positive integer (in GB). Got: 0'),
    ("resources:\n  disk_size: 512MB", "resources.disk_size", "must be a positive integer (in GB)"),
    (
        "resources:\n  disk_tier: fast",
        "resources.disk_tier",
        "disk_tier must be one of low, medium, high, ultra, best, none",
    ),
    ("resources:\n  network_tier: fast", "resources.network_tier", "must be one of standard, best"),
    ("resources:\n  ports: abc", "resources.ports", 'Invalid port range abc. Please use the format "from-to"'),
    ("resources:\n  ports: '10-1'", "resources.ports", "Invalid port range 10-1"),
    ("resources:\n  ports: 70000", "resources.ports", "ports must be between 1 and 65535"),
    ("resources:\n  max_hourly_cost: 0", "resources.max_hourly_cost", "less than or equal to the minimum of 0"),
    ("resources:\n  image_id: ''", "resources.image_id", "image_id is empty"),
    (
        "resources:\n  infra: aws/us-east-1\n  image_id: {us-west-2: ami-1}",
        "resources.image_id",
        "no entry for region 'us-east-1'",
    ),
    # any_of / ordered
    (
        "resources:\n  any_of: [{use_spot: true}]\n  ordered: [{use_spot: true}]",
        "resources",
        'Cannot specify both "any_of" and "ordered" in resources.',
    ),
    (
        "resources:\n  any_of:\n    - any_of: [{cpus: 2}]",
        "resources.any_of[0].any_of",
        "Found unsupported field 'any_of'",
    ),
    (
        "resources:\n  ordered:\n    - ordered: [{cpus: 2}]",
        "resources.ordered[0].ordered",
        "Found unsupported field 'ordered'",
    ),
    (
        "resources:\n  accelerators: [V100, A100]\n  ordered: [{cpus: 2}]",
        "resources.accelerators",
        'Cannot specify multiple "accelerators" with "ordered" in resources.',
    ),
    (
        "resources:\n  accelerators: {V100: 1, A100: 1}\n  ordered: [{cpus: 2}]",
        "resources.accelerators",
        'Cannot specify multiple "accelerators" with "ordered"',
    ),
    (
        "resources:\n  accelerators: [V100, A100]\n  any_of: [{cpus: 2}]",
        "resources.accelerators",
        'Cannot specify multiple "accelerators" with prefered order',
    ),
    (
        "resources:\n  any_of:\n    - job_recovery: failover\n    - use_spot: true",
        "resources",
        "All resources in the task must have the same job recovery strategy.",
    ),
    (
        "resources:\n  any_of:\n    - priority: 1\n    - priority: 2",
        "resources",
        "All resources in the task must have the same priority",
    ),
    ("resources:\n  any_of:\n    - cpus: x", "resources.any_of[0].cpus", 'The "cpus" field should be'),
    # job_recovery
    (
        "resources:\n  job_recovery:\n    max_restarts_on_errors: -1",
        "resources.job_recovery.max_restarts_on_errors",
        "-1 is less than the minimum of 0",
    ),
    (
        "resources:\n  job_recovery:\n    max_restarts_on_errors: x",
        "resources.job_recovery.max_restarts_on_errors",
        "'x' is not of type 'integer'",
    ),
    (
        "resources:\n  job_recovery:\n    recover_on_exit_codes: [300]",
        "resources.job_recovery.recover_on_exit_codes[0]",
        "300 is greater than the maximum of 255",
    ),
    (
        "resources:\n  job_recovery:\n    recover_on_exit_codes: -1",
        "resources.job_recovery.recover_on_exit_codes",
        "-1 is less than the minimum of 0",
    ),
    (
        "resources:\n  job_recovery:\n    recover_on_exit_codes: [3, 3]",
        "resources.job_recovery.recover_on_exit_codes",
        "[3, 3] has non-unique elements",
    ),
    (
        "resources:\n  job_recovery: foo",
        "resources.job_recovery.strategy",
        "Jobs recovery strategy 'foo' is not a valid jobs recovery strategy among",
    ),
    # file_mounts, workdir and names
    (
        "file_mounts:\n  /a:\n    name: b\n    mode: FOO",
        "file_mounts./a.mode",
        "'FOO' is not one of ['MOUNT', 'COPY', 'MOUNT_CACHED']",
    ),
    (
        "file_mounts:\n  /a:\n    name: b\n    foo: 1",
        "file_mounts./a.foo",
        "Invalid storage YAML: Found unsupported field 'foo'",
    ),
    ("file_mounts:\n  /a:\n    name: b\n    store: dropbox", "file_mounts./a.store", "'dropbox' is not one of"),
    ("file_mounts:\n  /a:\n    mode: MOUNT", "file_mounts./a", "Storage source or storage name must be specified"),
    ("file_mounts:\n  /a:\n    name: b\n    mode: COPY", "file_mounts./a", "COPY needs a `source`"),
    (
        "file_mounts:\n  /a/: /tmp",
        "file_mounts./a/",
        "Mount paths cannot end with a slash Found: /a/ in file_mounts./a/: /tmp",
    ),
    ("file_mounts:\n  s3://x: /tmp", "file_mounts.s3://x", "destination paths cannot be cloud storage"),
    (
        "file_mounts:\n  /a: /nonexistent/x",
        "file_mounts./a",
        "File mount source '/nonexistent/x' does not exist locally",
    ),
    (
        "file_mounts:\n  /a:\n    name: b\n    source: /nonexistent/y",
        "file_mounts./a.source",
        "File mount source '/nonexistent/y' does not exist locally",
    ),
    ("file_mounts:\n  /a: 5", "file_mounts./a", "5 is not of type 'string'"),
    (
        "workdir: /nonexistent/dir",
        "workdir",
        "Workdir must be a valid directory (or a symlink to a directory). /nonexistent/dir not found.",
    ),
    ("workdir:\n  ref: main", "workdir.url", "'url' is a required property"),
    ("workdir:\n  url: not a url", "workdir.url", "Invalid git URL"),
    ("workdir:\n  url: https://x/y.git\n  branch: main", "workdir.branch", "Found unsupported field 'branch'"),
    ("name: -bad-\nrun: x", "name", "Invalid task name -bad-. Valid name: ASCII characters"),
    ("name: a---b\nrun: x", "name", "Invalid task name a---b"),
    # secrets, service and pool
    ("secrets: [FOO]", "secrets[0]", "Invalid secret in array form: 'FOO'. Array items must use the secrets: prefix"),
    ("secrets: [secrets:HF_TOKEN]", "secrets.HF_TOKEN", "--secret HF_TOKEN=value"),
    ("secrets:\n  HF_TOKEN: null", "secrets.HF_TOKEN", "Secret 'HF_TOKEN' has no value"),
    ("secrets:\n  1X: y", "secrets", "The `secrets` field contains invalid keys: '1X'"),
    ("service: {}\npool: {workers: 1}", None, "Cannot set both service and pool in the same task."),
    ("pool:\n  workers: -1", "pool.workers", "-1 is less than the minimum of 0"),
    (
        "pool:\n  min_workers: 3\n  max_workers: 1",
        "pool",
        "min_workers (3) must be <= max_workers (1) for pool autoscaling.",
    ),
    ("pool:\n  min_workers: 1", "pool.min_workers", "max_workers must be set when min_workers is specified"),
    (
        "pool:\n  workers: 1\n  queue_length_threshold: 2",
        "pool.queue_length_threshold",
        "max_workers must be set when queue_length_threshold is specified",
    ),
    ("pool:\n  max_workers: 3", "pool", "One of workers, or both min_workers and max_workers must be set"),
    ("pool:\n  workers: 2\n  replicas: 2", "pool.replicas", "replicas is not supported for pool."),
    ("pool:\n  workers: 2\n  readiness_probe: /", "pool.readiness_probe", "readiness_probe is not supported for pool."),
    ("pool:\n  workers: 2\n  ports: 8080", "pool.ports", "Cannot specify ports in a pool."),
    (
        "pool:\n  workers: 2\n  upscale_delay_seconds: 10",
        "pool.upscale_delay_seconds",
        "only allowed for an autoscaling pool",
    ),
    ("pool:\n  workers: 2\n  worker: 3", "pool.worker", "did you mean 'workers'?"),
    (
        "pool:\n  queue_length_threshold: 0\n  min_workers: 0\n  max_workers: 2",
        "pool.queue_length_threshold",
        "0 is less than the minimum of 1",
    ),
]


@pytest.mark.parametrize(("text", "path", "message"), ERRORS, ids=[e[0].replace("\n", "|")[:60] for e in ERRORS])
def test_error_names_path_and_meaning(text: str, path: str | None, message: str) -> None:
    with pytest.raises(SpecError) as info:
        load_pipeline(text + "\n")
    error = info.value
    assert message in error.message
    assert error.path == path
    assert str(error).endswith(error.message)
    if path:
        assert f"{path}: " in str(error)


LINES = [
    ("run: a\nrunn: b\n", 2, 1),
    ("resources:\n  cpus: 2\n  memory: 16XB\n", 3, 3),
    ("envs:\n  OK: x\n  HF_TOKEN:\n", 3, 3),
    ("resources:\n  any_of:\n    - use_spot: true\n    - cpus: bad\n", 4, 7),
    ("resources:\n  job_recovery:\n    recover_on_exit_codes: [1, 300]\n", 3, 32),
]


@pytest.mark.parametrize(("text", "line", "column"), LINES)
def test_errors_carry_line_and_column(text: str, line: int, column: int) -> None:
    with pytest.raises(SpecError) as info:
        load_pipeline(text)
    assert (info.value.line, info.value.column) == (line, column)


def test_file_name_line_and_task_in_the_message(tmp_path: Path) -> None:
    path = tmp_path / "pipe.yaml"
    path.write_text("name: p\n---\nname: train\nrun: a\n---\nname: eval\nresources:\n  cpus: many\n")
    with pytest.raises(SpecError) as info:
        load_pipeline(path)
    assert str(info.value).startswith(f"{path}:8:3: task 1 'eval': resources.cpus: The \"cpus\" field")


def test_duplicate_key_gives_both_lines() -> None:
    with pytest.raises(SpecError) as info:
        load_pipeline("run: a\nsetup: b\nrun: c\n")
    assert "Duplicate key 'run' in YAML at line 3 (also defined at line 1)" in str(info.value)
    assert info.value.line == 3


def test_duplicate_nested_key() -> None:
    with pytest.raises(SpecError, match="Duplicate key 'cpus' in YAML at line 3 \\(also defined at line 2\\)"):
        load_pipeline("resources:\n  cpus: 1\n  cpus: 2\n")


def test_merge_keys_may_be_overridden() -> None:
    pipeline = load_pipeline("envs: &base\n  A: '1'\n  B: '1'\nresources:\n  labels:\n    <<: *base\n    A: '2'\n")
    assert pipeline.tasks[0].resources.labels == {"A": "2", "B": "1"}


def test_syntax_error_gives_line_and_column() -> None:
    with pytest.raises(SpecError) as info:
        load_pipeline("run: echo\nresources: {cpus: 1\n")
    assert info.value.line is not None
    assert "Invalid YAML syntax" in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hello\n", "YAML loaded as str, not as dict"),
        ("- a\n- b\n", "YAML loaded as list, not as dict"),
        ("42\n", "is a number"),
        ("run: a\n---\n- x\n", "YAML loaded as list"),
    ],
)
def test_non_mapping_document(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_pipeline(text)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n---\n"])
def test_empty_file(text: str, tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match="The YAML is empty"):
        load_pipeline(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"File not found: .*nope\.yaml"):
        load_pipeline(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="File not found"):
        load_pipeline("nope.yaml")
    directory = tmp_path / "dir.yaml"
    directory.mkdir()
    with pytest.raises(SpecError, match="is a directory"):
        load_pipeline(directory)


def test_job_groups_are_refused() -> None:
    with pytest.raises(SpecError, match="job groups are not supported yet") as info:
        load_pipeline("name: group\nexecution: parallel\n---\nname: a\nrun: a\n---\nname: b\nrun: b\n")
    assert (info.value.path, info.value.line) == ("execution", 2)


def test_invalid_execution_mode() -> None:
    with pytest.raises(SpecError, match="Invalid execution mode for pipeline: 'fast'"):
        load_pipeline("name: p\nexecution: fast\n---\nrun: a\n")


def test_duplicate_task_names() -> None:
    with pytest.raises(SpecError) as info:
        load_pipeline("name: p\n---\nname: a\nrun: x\n---\nname: a\nrun: y\n")
    assert "Task name 'a' is duplicated in the DAG" in str(info.value)
    assert info.value.line == 6


def test_different_priorities_across_tasks() -> None:
    with pytest.raises(SpecError, match="Multiple tasks in the DAG have different priorities"):
        load_pipeline("name: a\nrun: x\nresources: {priority: 1}\n---\nname: b\nrun: y\n")


def test_invalid_name_override() -> None:
    with pytest.raises(SpecError) as info:
        load_pipeline("run: x\n", name="bad name")
    assert info.value.path == "--name"


def test_spec_error_is_a_value_error() -> None:
    assert issubclass(SpecError, ValueError)
