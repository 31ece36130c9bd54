"""A command that needs a worker says so when none polls, instead of waiting forever."""

from __future__ import annotations

import pytest

from tests.harness import EXAMPLES, TskyEnv

pytestmark = pytest.mark.integration


def test_a_launch_with_no_worker_ends_with_a_message_and_exit_1(tsky_env: TskyEnv) -> None:
    result = tsky_env.tsky("jobs", "launch", "-y", str(EXAMPLES / "hello_sky.yaml"), timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "No tsky worker is polling the task queue tsky-control" in result.stderr
    assert "tsky worker" in result.stderr  # what to do about it
    assert "Traceback" not in result.stderr
