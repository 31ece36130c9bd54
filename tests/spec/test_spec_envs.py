"""Env and secret overrides, `$VAR` substitution, redaction and the YAML round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsky.spec.envs import env_overrides, parse_assignments, read_env_file, secret_overrides, substitute
from tsky.spec.errors import SpecError
from tsky.spec.loader import load_pipeline
from tsky.spec.task import REDACTED, Pipeline, Task


def test_null_env_fails_until_overridden() -> None:
    text = "envs:\n  HF_TOKEN:\nrun: echo $HF_TOKEN\n"
    with pytest.raises(SpecError, match="HF_TOKEN"):
        load_pipeline(text)
    task = load_pipeline(text, env_overrides={"HF_TOKEN": "x"}).tasks[0]
    assert task.envs == {"HF_TOKEN": "x"}


def test_env_override_replaces_and_adds_for_every_task() -> None:
    pipeline = load_pipeline(
        "name: p\n---\nenvs: {A: yaml, B: keep}\nrun: a\n---\nrun: b\n", env_overrides={"A": "cli", "C": "new"}
    )
    assert pipeline.tasks[0].envs == {"A": "cli", "B": "keep", "C": "new"}
    assert pipeline.tasks[1].envs == {"A": "cli", "C": "new"}


def test_secret_overrides_fill_references_and_stay_out_of_envs() -> None:
    text = "secrets:\n  HF_TOKEN: null\n  INLINE: abc\nrun: x\n"
    task = load_pipeline(text, secret_overrides={"HF_TOKEN": "s3cret", "EXTRA": "e"}).tasks[0]
    assert task.secrets == {"HF_TOKEN": "s3cret", "INLINE": "abc", "EXTRA": "e"}
    assert task.envs == {}


def test_list_form_secrets_resolve_from_overrides() -> None:
    task = load_pipeline("secrets: ['secrets:HF_TOKEN']\n", secret_overrides={"HF_TOKEN": "v"}).tasks[0]
    assert task.secrets == {"HF_TOKEN": "v"}


def test_env_flag_for_a_declared_secret_sets_the_secret() -> None:
    text = "secrets: {TOKEN: null}\nrun: x\n"
    task = load_pipeline(text, env_overrides={"TOKEN": "from-env"}).tasks[0]
    assert (task.secrets, task.envs) == ({"TOKEN": "from-env"}, {})
    task = load_pipeline(text, env_overrides={"TOKEN": "a"}, secret_overrides={"TOKEN": "b"}).tasks[0]
    assert task.secrets == {"TOKEN": "b"}


def test_substitution_in_file_mounts_and_workdir(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    text = (
        f"envs:\n  BUCKET: my-bucket\n  ROOT: {tmp_path}\n"
        "secrets:\n  KEY: k\n"
        "workdir: ${ROOT}/code\n"
        "file_mounts:\n  /data: s3://$BUCKET/data\n  /out:\n    name: $BUCKET-out\n"
        "  /k: s3://b/$KEY\n  /u: s3://b/$UNKNOWN\n"
        "run: echo $BUCKET\n"
    )
    task = load_pipeline(text).tasks[0]
    assert task.workdir == str(tmp_path / "code")
    assert task.file_mounts["/data"] == "s3://my-bucket/data"
    assert task.file_mounts["/k"] == "s3://b/k"
    assert task.file_mounts["/u"] == "s3://b/$UNKNOWN"
    out = task.file_mounts["/out"]
    assert not isinstance(out, str)
    assert out.name == "my-bucket-out"
    assert task.run == "echo $BUCKET"  # run is the shell's business


def test_substitution_uses_overrides() -> None:
    task = load_pipeline("envs: {B: yaml}\nfile_mounts: {/d: s3://$B}\n", env_overrides={"B": "cli"}).tasks[0]
    assert task.file_mounts["/d"] == "s3://cli"


def test_substitute_recurses_keys_and_values() -> None:
    assert substitute({"$A": ["${A}", 1, {"x": "$A$A"}]}, {"A": "v"}) == {"v": ["v", 1, {"x": "vv"}]}


def test_parse_assignments() -> None:
    environ = {"FROM_ENV": "e"}
    assert parse_assignments(["A=1", "B=x=y", "C=", "FROM_ENV"], environ=environ) == {
        "A": "1",
        "B": "x=y",
        "C": "",
        "FROM_ENV": "e",
    }
    with pytest.raises(SpecError, match="MISSING is not set in your environment") as info:
        parse_assignments(["MISSING"], environ=environ)
    assert info.value.path == "--env MISSING"
    with pytest.raises(SpecError, match="not a valid variable name"):
        parse_assignments(["1A=x"], flag="--secret", environ=environ)


def test_read_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTER", "outer")
    path = tmp_path / ".env"
    path.write_text(
        "# comment\n\nA=1\nexport B = two words  # trailing comment\nC='single $A'\n"
        'D="double\\nline ${A}"\nE=${A}-${OUTER}-${NOPE:-dflt}\nF="multi\nline"\nG=\n'
    )
    assert read_env_file(path) == {
        "A": "1",
        "B": "two words",
        "C": "single $A",
        "D": "double\nline 1",
        "E": "1-outer-dflt",
        "F": "multi\nline",
        "G": "",
    }


def test_read_env_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.env"
    bad.write_text("A=1\nnot an assignment\n")
    with pytest.raises(SpecError) as info:
        read_env_file(bad)
    assert info.value.line == 2
    with pytest.raises(SpecError, match="Env file not found"):
        read_env_file(tmp_path / "missing.env")


def test_flags_beat_files(tmp_path: Path) -> None:
    first = tmp_path / "a.env"
    first.write_text("A=file\nB=file\n")
    second = tmp_path / "b.env"
    second.write_text("B=second\n")
    assert env_overrides(["A=flag"], [first, second], environ={}) == {"A": "flag", "B": "second"}
    assert secret_overrides(["S"], None, environ={"S": "v"}) == {"S": "v"}


# Redaction and round trip -----------------------------------------------------------------------


def _rich_pipeline(tmp_path: Path) -> Pipeline:
    (tmp_path / "work").mkdir(exist_ok=True)
    text = (
        "name: full\n---\n"
        "name: train\n"
        f"workdir: {tmp_path / 'work'}\n"
        "num_nodes: 2\n"
        "resources:\n"
        "  infra: aws/us-east-1\n  cpus: 4+\n  memory: 32GB+\n  accelerators: {A100: 1, V100: null}\n"
        "  use_spot: true\n  disk_size: 1TB\n  disk_tier: best\n  ports: [8080, '9000-9010']\n"
        "  labels: {team: ml}\n  image_id: docker:ubuntu\n  priority: 5\n"
        "  job_recovery: {strategy: failover, max_restarts_on_errors: 2, recover_on_exit_codes: [3]}\n"
        "  any_of:\n    - {use_spot: true, labels: {x: y}}\n    - {use_spot: false, infra: gcp}\n"
        "file_mounts:\n  /data: s3://bucket/data\n"
        "  /ckpt: {name: ckpt, store: local, mode: MOUNT, persistent: false}\n"
        "setup: |\n  pip install x\n  echo done\n"
        "run: |\n  python train.py\n"
        "envs: {A: '1'}\n"
        "secrets: {TOKEN: hunter2}\n"
        "config: {jobs: {x: 1}}\n"
        "_metadata: {source: test}\n"
        "---\n"
        "name: eval\n"
        "resources:\n  priority: 5\n  ordered:\n    - infra: gcp\n    - infra: aws\n"
        "run: echo eval\n"
    )
    return load_pipeline(text)


def test_secrets_are_redacted_unless_revealed(tmp_path: Path) -> None:
    task = _rich_pipeline(tmp_path).tasks[0]
    assert task.model_dump(mode="json")["secrets"] == {"TOKEN": REDACTED}
    assert task.model_dump(mode="json", context={"reveal_secrets": True})["secrets"] == {"TOKEN": "hunter2"}
    assert "hunter2" not in task.model_dump_json()
    assert "hunter2" not in _rich_pipeline(tmp_path).to_yaml()
    assert task.secrets == {"TOKEN": "hunter2"}  # in memory, the value is there to use


def test_round_trip_through_plain_data(tmp_path: Path) -> None:
    pipeline = _rich_pipeline(tmp_path)
    revealed = pipeline.model_dump(mode="json", context={"reveal_secrets": True})
    assert Pipeline.model_validate(revealed) == pipeline
    assert Pipeline.model_validate_json(pipeline.model_dump_json(context={"reveal_secrets": True})) == pipeline
    redacted = Pipeline.model_validate(pipeline.model_dump(mode="json"))
    assert redacted.tasks[0].secrets == {"TOKEN": REDACTED}


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    pipeline = _rich_pipeline(tmp_path)
    text = pipeline.to_yaml(reveal_secrets=True)
    assert text.startswith("name: full\n---\n")
    assert load_pipeline(text) == pipeline
    assert "setup: |\n  pip install x\n  echo done\n" in text


def test_round_trip_of_every_example() -> None:
    for path in sorted(Path(__file__).parents[2].joinpath("examples").glob("*.yaml")):
        pipeline = load_pipeline(path)
        assert load_pipeline(pipeline.to_yaml(reveal_secrets=True)) == pipeline, path.name


def test_yaml_dump_is_minimal() -> None:
    pipeline = load_pipeline("name: hello\nrun: echo hi\n")
    assert pipeline.to_yaml() == "name: hello\nrun: echo hi\n"
    two = load_pipeline("name: p\n---\nname: a\nrun: x\n---\nname: b\nrun: y\n")
    assert two.to_yaml() == "name: p\n---\nname: a\nrun: x\n---\nname: b\nrun: y\n"


def test_task_model_validate_of_redacted_dump_is_safe_in_workflows() -> None:
    task = Task(name="t", run="x", secrets={"K": "v"})
    again = Task.model_validate(task.model_dump(mode="json"))
    assert again.secrets == {"K": REDACTED}
