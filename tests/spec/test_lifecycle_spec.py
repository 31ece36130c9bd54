"""The lifecycle keys and flags (docs/lifecycle.md) as a user types them: `max_duration`, `job_recovery`'s
`spot_fallback_after` / `spot_only`, `--max-duration`, `--keep-on-failure`, `--max-cost`, and their
settings. A malformed value is one paragraph naming the field, exit 2, nothing started."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.spec.test_sky_flags_cli import refused, tsky
from tsky.spec.errors import SpecError
from tsky.spec.lifecycle import dollars, format_duration, parse_duration
from tsky.spec.loader import apply_overrides, load_pipeline


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text("temporal:\n  address: 127.0.0.1:9\n")
    return home


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10h", 36000), ("90m", 5400), ("1h30m", 5400), ("2d", 172800), ("45s", 45), (3600, 3600), ("1.5h", 5400)],
)
def test_durations_read_as_users_write_them(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


def test_max_duration_is_a_top_level_task_key() -> None:
    task = load_pipeline("name: t\nmax_duration: 10h\nrun: python train.py\n").tasks[0]
    assert task.max_duration == "10h"
    assert task.max_duration_seconds() == 36000
    assert "max_duration: 10m" in load_pipeline("name: t\nmax_duration: 600\nrun: x\n").to_yaml()


@pytest.mark.parametrize("bad", ["banana", "10 hours", "0s", "-5", "true"])
def test_a_malformed_max_duration_names_the_field(bad: str) -> None:
    with pytest.raises(SpecError) as info:
        load_pipeline(f"name: t\nmax_duration: {bad}\nrun: x\n")
    assert "max_duration" in str(info.value)
    assert "10h, 30m" in str(info.value)


def test_a_pipeline_task_error_names_its_task() -> None:
    text = "name: p\n---\nname: a\nrun: x\n---\nname: b\nmax_duration: soon\nrun: x\n"
    with pytest.raises(SpecError) as info:
        load_pipeline(text)
    assert "max_duration" in str(info.value)
    assert "'soon'" in str(info.value)


def test_max_duration_flag_applies_to_every_task_of_a_pipeline() -> None:
    pipeline = load_pipeline("name: p\n---\nname: a\nrun: x\n---\nname: b\nmax_duration: 1h\nrun: x\n")
    pipeline, warnings = apply_overrides(pipeline, max_duration="30m")
    assert [t.max_duration for t in pipeline.tasks] == ["30m", "30m"]
    assert warnings == []
    with pytest.raises(SpecError) as info:
        apply_overrides(pipeline, max_duration="later")
    assert str(info.value).startswith("--max-duration: 'later' is not a duration")


def test_spot_fallback_keys_and_their_contradiction() -> None:
    yaml_text = "name: t\nresources:\n  use_spot: true\n  job_recovery:\n    spot_fallback_after: 2\nrun: x\n"
    task = load_pipeline(yaml_text).tasks[0]
    assert task.job_recovery().fallback_after(None) == 2
    assert [o.use_spot for o in task.on_demand().requests().options] == [False]
    spot_only = load_pipeline(yaml_text.replace("spot_fallback_after: 2", "spot_only: true")).tasks[0]
    assert spot_only.job_recovery().fallback_after(default=1) is None  # the setting never overrides spot_only
    with pytest.raises(SpecError) as info:
        load_pipeline(yaml_text.replace("spot_fallback_after: 2", "spot_fallback_after: 2\n    spot_only: true"))
    assert "resources.job_recovery" in str(info.value)
    assert "spot_only" in str(info.value)


def test_dollars_are_readable_even_for_cheap_jobs() -> None:
    assert dollars(12.5) == "$12.50"
    assert dollars(0.0012) == "$0.0012"
    assert dollars(0) == "$0.00"


def test_launch_accepts_the_lifecycle_flags(home: Path) -> None:
    flags = ["--max-duration", "3h", "--keep-on-failure", "30m", "--max-cost", "$25"]
    result = tsky(home, "jobs", "launch", "--dryrun", *flags, "echo", "hi")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--max-duration", "3 hours", ["--max-duration", "'3 hours' is not a duration", "10h"]),
        ("--keep-on-failure", "forever", ["--keep-on-failure", "'forever' is not a duration"]),
        ("--max-cost", "cheap", ["--max-cost", "'cheap' is not an amount of dollars"]),
        ("--max-cost", "-3", ["--max-cost", "positive number"]),
    ],
)
def test_a_bad_lifecycle_flag_exits_2_naming_it(home: Path, flag: str, value: str, words: list[str]) -> None:
    refused(tsky(home, "jobs", "launch", "--dryrun", flag, value, "echo", "hi"), *words)


def test_a_bad_lifecycle_setting_names_the_key(home: Path) -> None:
    (home / "config.yaml").write_text("temporal:\n  address: 127.0.0.1:9\njobs:\n  keep_on_failure: a while\n")
    refused(tsky(home, "jobs", "launch", "--dryrun", "echo", "hi"), "jobs.keep_on_failure", "is not a duration")
