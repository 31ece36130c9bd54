"""Commands that need no server start fast: they never import Temporal or a cloud SDK.

Checked with `python -X importtime` on the real `tsky` script (which modules load, not how long they take).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import EXAMPLES, TSKY

HEAVY = ("temporalio", "boto3", "google.cloud", "google.api_core", "kubernetes", "asyncssh")


def _imported(args: list[str], home: Path) -> set[str]:
    env = {**os.environ, "TSKY_HOME": str(home), "AWS_EC2_METADATA_DISABLED": "true", "NO_GCE_CHECK": "True",
           "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-X", "importtime", TSKY, *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", result.stderr, re.M))


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["jobs", "launch", "-h"],
        ["validate", str(EXAMPLES / "hello_sky.yaml"), str(EXAMPLES / "pool.yaml")],
        ["jobs", "launch", "--dryrun", str(EXAMPLES / "hello_sky.yaml")],
        ["jobs", "launch", "--dryrun", str(EXAMPLES / "pipeline.yaml")],
    ],
    ids=lambda a: " ".join(a[:3]),
)
def test_offline_commands_import_no_temporal_and_no_cloud_sdk(args: list[str], tmp_path: Path) -> None:
    modules = _imported(args, tmp_path / "home")
    assert "tsky.cli.main" in modules  # the measurement itself works
    heavy = sorted(m for m in modules if m.startswith(HEAVY))
    assert heavy == [], heavy


def test_the_worker_local_and_ssh_backends_load_without_a_cloud_sdk() -> None:
    """The light install (no extras) runs the embedded default and SSH node pools: nothing on that path
    imports a cloud SDK at module level."""
    probe = (
        "import sys, tsky.worker.main, tsky.ops.clouds.local, tsky.ops.clouds.ssh, tsky.cli.main;"
        "print(sorted(m for m in sys.modules if m.startswith(('boto3', 'botocore', 'google.cloud', 'kubernetes'))))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
