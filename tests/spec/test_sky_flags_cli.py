"""SkyPilot 0.14.1's flags where users type them, through the CLI before anything is started: accepted
ones reach the plan (`--dryrun`), refused ones exit 2 with one paragraph naming what to do instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TSKY = Path(sys.executable).parent / "tsky"

TASK = "name: t\nrun: echo hi\n"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    # Only local infra, and a Temporal address nothing listens on: these commands must not need one.
    (home / "config.yaml").write_text("temporal:\n  address: 127.0.0.1:9\n")
    return home


def tsky(home: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSKY_")}
    return subprocess.run(
        [str(TSKY), *map(str, args)],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "TSKY_HOME": str(home), "COLUMNS": "200", "AWS_EC2_METADATA_DISABLED": "true"},
    )


def refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_launch_accepts_skypilot_resource_flags(home: Path) -> None:
    task = home / "t.yaml"
    task.write_text(TASK)
    flags = ["--ports", "8080", "--ports", "9000-9001", "--disk-tier", "high", "--network-tier", "best"]
    flags += ["--priority", "10", "--disk-size", "64", "--git-url", "https://github.com/a/b.git", "--git-ref", "v1"]
    flags += ["--config", "jobs.controller.max_running_jobs=2", "--async"]
    result = tsky(home, "jobs", "launch", "--dryrun", *flags, task)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Local (local)" in result.stdout
    # What tsky cannot act on is said, not silently dropped.
    assert "Ignoring fields tsky does not act on yet: resources.disk_tier, resources.network_tier, resources.ports" in (
        result.stderr
    )


def test_launch_flags_are_checked_as_the_yaml_fields(home: Path) -> None:
    task = home / "t.yaml"
    task.write_text(TASK)
    refused(tsky(home, "jobs", "launch", "--dryrun", "--priority", "5000", task), "--priority", "1000")
    refused(tsky(home, "jobs", "launch", "--dryrun", "--disk-size", "big", task), "--disk-size")
    refused(tsky(home, "jobs", "launch", "--dryrun", "--disk-tier", "fastest", task), "--disk-tier")
    refused(tsky(home, "jobs", "launch", "--dryrun", "--git-ref", "main", task), "--git-ref needs a git workdir")
    refused(tsky(home, "jobs", "launch", "--dryrun", "--config", "missing.yaml", task), "--config missing.yaml")
    bad = "jobs.controller.max_running_jobs=lots"
    refused(tsky(home, "jobs", "launch", "--dryrun", "--config", bad, task), "max_running_jobs")


def test_job_groups_get_a_clear_not_supported_yet(home: Path) -> None:
    group = home / "group.yaml"
    group.write_text(
        "name: grp\nexecution: parallel\nprimary_tasks: [trainer]\n---\nname: trainer\nrun: echo t\n"
        "---\nname: aux\nrun: echo a\n"
    )
    for command in (["validate"], ["jobs", "launch", "--dryrun"]):
        result = tsky(home, *command, group)
        assert result.returncode == 2, result.stdout + result.stderr
        output = result.stdout + result.stderr
        assert "job groups are not supported yet" in output and "unsupported field" not in output
    task = home / "t.yaml"
    task.write_text(TASK)
    refused(tsky(home, "jobs", "launch", "--job-group", "7", task), "job groups", "not supported yet")
    refused(tsky(home, "jobs", "cancel", "1", "--task", "aux"), "job groups are not supported yet", "jobs cancel 1")
    refused(tsky(home, "jobs", "cancel", "1", "2", "--task", "aux"), "exactly one job id")


def test_queue_and_pool_flags_refuse_what_they_cannot_do(home: Path) -> None:
    refused(tsky(home, "jobs", "queue", "--since", "3 fortnights"), "--since")
    refused(tsky(home, "jobs", "queue", "--since", "1h", "--after", "2026-01-01"), "--since and --after")
    refused(tsky(home, "jobs", "queue", "--after", "yesterday"), "--after")
    refused(tsky(home, "jobs", "queue", "-o", "yaml"), "--output")
    refused(tsky(home, "jobs", "queue", "--infra", "mars"), "--infra")
    pool = home / "pool.yaml"
    pool.write_text("pool:\n  workers: 1\nsetup: echo hi\n")
    refused(
        tsky(home, "jobs", "pool", "apply", "--mode", "blue_green", "-p", "P", pool),
        "blue_green is not supported yet",
        "second pool",
    )
    refused(tsky(home, "jobs", "pool", "apply", "--workers", "2", "-y"), "A pool name must be provided")


def test_validate_names_the_resource_keys_tsky_does_not_act_on(home: Path) -> None:
    task = home / "t.yaml"
    task.write_text("name: t\nresources:\n  ports: 8080\n  labels: {team: ml}\n  priority: 5\nrun: echo hi\n")
    result = tsky(home, "validate", task)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "accepted but not acted on by tsky yet: resources.ports" in result.stdout
    assert "labels" not in result.stdout and "priority" not in result.stdout  # both are acted on


def test_cancel_graceful_timeout_needs_graceful_and_a_non_negative_value(home: Path) -> None:
    refused(tsky(home, "jobs", "cancel", "-y", "1", "--graceful-timeout", "30"), "only with --graceful")
    negative = tsky(home, "jobs", "cancel", "-y", "1", "--graceful", "--graceful-timeout", "-1")
    refused(negative, "--graceful-timeout", "0 or more")
