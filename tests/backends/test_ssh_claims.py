"""The ssh infra's claim programs, run by a real bash on this machine: a probe lists every claim of a
host with its holder and meta, whichever `readlink` the host has (GNU takes many operands at once,
busybox one)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tsky.ops.clouds.ssh import _CLAIM, _PROBE, _RELEASE

KEY = "127.0.0.9:22"


def program(home: Path, text: str, *args: str, path: str | None = None) -> str:
    env = dict(os.environ, HOME=str(home), PATH=path or os.environ["PATH"])
    done = subprocess.run(["bash", "-c", text, "tsky", *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_probe_lists_every_claim_of_a_host_with_one_or_many_operand_readlink(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    holders = [f"job-{i}@owner" for i in range(5)]
    for i, holder in enumerate(holders):
        assert program(home, _CLAIM, KEY, holder, f"job_id={i}\nowner=owner", "8").strip() == "claimed"
    assert program(home, _CLAIM, KEY, holders[2], "job_id=2", "8").strip() == "claimed"  # adopted, not doubled

    # A readlink that takes one operand only, as busybox's.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    single = bin_dir / "readlink"
    real_readlink = subprocess.run(["bash", "-c", "command -v readlink"], capture_output=True, text=True).stdout.strip()
    single.write_text(f'#!/bin/bash\n[ "$1" = -- ] && shift\n[ $# = 1 ] || exit 1\nexec {real_readlink} "$1"\n')
    single.chmod(0o755)

    for path in (None, f"{bin_dir}:{os.environ['PATH']}"):
        out = program(home, _PROBE, KEY, path=path)
        claimed = sorted(line.removeprefix("claim ") for line in out.splitlines() if line.startswith("claim "))
        assert claimed == sorted(holders), out
        assert out.count("owner=owner") == 5 and "job_id=3" in out

    program(home, _RELEASE, KEY, holders[0], "job-0", "sky_workdir")
    out = program(home, _PROBE, KEY, path=f"{bin_dir}:{os.environ['PATH']}")
    assert f"claim {holders[0]}" not in out and f"claim {holders[1]}" in out
    assert program(home, _CLAIM, KEY, "late@owner", "job_id=9", "5").strip() == "claimed"  # the freed slot
    assert program(home, _CLAIM, KEY, "later@owner", "job_id=10", "5").strip() == "taken"
