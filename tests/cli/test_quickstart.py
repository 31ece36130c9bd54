"""The README's Quickstart, pasted as is: each command, in order, on the embedded default.

The commands are read from README.md, so the test fails when the README drifts from what tsky does. A
command exits 0 unless its comment says `exits N`.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ROOT, TSKY, embedded_env, embedded_home

pytestmark = pytest.mark.integration


def quickstart_commands() -> list[tuple[str, int]]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README.md: the Quickstart has no ```bash block"
    commands: list[tuple[str, int]] = []
    for line in block.group(1).splitlines():
        command, _, comment = line.partition("#")
        command = command.strip()
        if command:
            code = re.search(r"\bexits (\d+)", comment)
            commands.append((command, int(code.group(1)) if code else 0))
    return commands


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    with embedded_home(tmp_path) as home:
        yield home


def test_the_readme_quickstart_runs_as_written(home: Path) -> None:
    commands = quickstart_commands()
    assert commands[0][0] == "source .venv/bin/activate"  # the test puts this venv's bin on PATH instead
    assert any("debug preempt" in c for c, _ in commands) and commands[-1][0] == "tsky server down"
    for command, expected in commands[1:]:
        result = subprocess.run(
            ["bash", "-c", command], cwd=ROOT, env=embedded_env(home), capture_output=True, text=True, timeout=600
        )
        assert result.returncode == expected, f"$ {command}\n{result.stdout}\n{result.stderr}"
        if "debug preempt" in command:
            assert "Preempted" in result.stdout
        if command.startswith("tsky jobs logs -n spot"):
            assert "✓ Managed job finished" in result.stdout and "SUCCEEDED" in result.stdout
        if command.startswith("tsky jobs logs -n sleepy"):  # a cancelled job is never shown with a green ✓
            assert "CANCELLED" in result.stdout and "✓" not in result.stdout
    queue = subprocess.run([TSKY, "jobs", "queue"], env=embedded_env(home), capture_output=True, text=True, timeout=120)
    assert re.search(r"spot-job|spot\s.*SUCCEEDED", queue.stdout), queue.stdout
    assert re.search(r"^\d+\s+-\s+spot\s.*\s1\s+SUCCEEDED", queue.stdout, re.M), queue.stdout  # 1 recovery
    assert re.search(r"^\d+\s+-\s+sleepy\s.*CANCELLED", queue.stdout, re.M), queue.stdout
    assert "\x1b[" not in queue.stdout  # piped: plain text for scripts

    # On a terminal (FORCE_COLOR stands in for one), statuses have SkyPilot's colours.
    colored = subprocess.run(
        [TSKY, "jobs", "queue"],
        env={**embedded_env(home), "FORCE_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "\x1b[32mSUCCEEDED\x1b[0m" in colored.stdout, colored.stdout
    assert "\x1b[33mCANCELLED\x1b[0m" in colored.stdout, colored.stdout
