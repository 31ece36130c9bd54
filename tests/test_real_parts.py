"""A test skipped for want of a real part is listed, and fails the run where real parts are required."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

NEEDS_SSHD = """\
from tests.real_parts import skip_missing_real_part

def test_needs_sshd():
    skip_missing_real_part("/usr/sbin/sshd is missing (apt-get install openssh-server)")
"""


def _pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_needs_sshd.py").write_text(NEEDS_SSHD)
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "TSKY_REQUIRE_REAL_PARTS")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.real_parts", "-p", "no:cacheprovider", "-rs", str(tmp_path)],
        cwd=tmp_path,
        env={**clean, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_missing_real_part_skips_loudly_and_fails_where_required(tmp_path: Path) -> None:
    local = _pytest(tmp_path)
    assert local.returncode == 0, local.stdout + local.stderr
    assert "SKIPPED" in local.stdout and "real part missing: /usr/sbin/sshd is missing" in local.stdout

    for required in ({"CI": "true"}, {"TSKY_REQUIRE_REAL_PARTS": "1"}):
        strict = _pytest(tmp_path, **required)
        assert strict.returncode == 1, strict.stdout + strict.stderr
        assert "1 failed" in strict.stdout and "apt-get install openssh-server" in strict.stdout, strict.stdout
