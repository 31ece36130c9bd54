"""Every command's help works, with `-h` as with `--help`, and reads as click's (SkyPilot's) help does."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tests.harness import TSKY
from tsky import __version__
from tsky.cli.main import app


def _command_paths() -> list[list[str]]:
    paths: list[list[str]] = []

    def walk(command: Any, path: list[str]) -> None:  # Typer's own (vendored) click classes
        paths.append(path)
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


PATHS = _command_paths()


def test_the_tree_is_walked_to_its_leaves() -> None:
    assert ["jobs", "pool", "apply"] in PATHS and ["jobs", "launch"] in PATHS and ["catalog", "refresh"] in PATHS


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "tsky")
def test_help_of_every_command(path: list[str], flag: str) -> None:
    result = CliRunner().invoke(app, [*path, flag], env={"TSKY_HOME": "/nonexistent"})
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.output.startswith("Usage: tsky"), result.output
    # No Python type names: click's TEXT / INTEGER / PATH and upper-case argument names.
    for python_name in ("<bool>", "<str>", "<int>", "<list[", "<path>", "{"):
        assert python_name not in result.output, result.output


def _tsky(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TSKY_HOME": "/nonexistent", "TERM": "dumb"}
    return subprocess.run([TSKY, *args], capture_output=True, text=True, env=env, timeout=60)


def test_pool_apply_help_in_a_real_process() -> None:
    """It used to crash: Rich read `cloud[/region[/zone]]` in a help text as markup."""
    result = _tsky("jobs", "pool", "apply", "-h")
    assert result.returncode == 0, result.stderr
    assert "cloud[/region[/zone]]" in result.stdout
    assert "Traceback" not in result.stderr


def test_version_completion_and_jobs_first() -> None:
    version = _tsky("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"tsky, version {__version__}"
    root = _tsky("--help")
    assert "--install-completion" in root.stdout and "--show-completion" in root.stdout
    commands = root.stdout.split("Commands:")[1].split()
    assert commands[0] == "jobs", root.stdout
    completion = _tsky("--show-completion", "bash")
    assert completion.returncode == 0 and "_TSKY_COMPLETE" in completion.stdout
