"""No silent skips: a test that needs a real part (sshd, FUSE/rclone, moto...) skips through
`skip_missing_real_part`, and when `CI` or `TSKY_REQUIRE_REAL_PARTS` is set (scripts/test.sh sets the
latter) that skip is turned into a failure, so a machine missing the part cannot pass by skipping.

Loaded by tests/conftest.py (its hook is re-exported there) and usable as a plugin (`-p tests.real_parts`).
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import NoReturn

import pytest

MISSING = "real part missing: "
REQUIRE_VARS = ("CI", "TSKY_REQUIRE_REAL_PARTS")


def skip_missing_real_part(why: str) -> NoReturn:
    """Skip the current test because the machine lacks a real part it needs (`why` names it and the fix)."""
    pytest.skip(MISSING + why)


def real_parts_required() -> bool:
    return any(os.environ.get(name, "").lower() not in ("", "0", "false", "no") for name in REQUIRE_VARS)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and MISSING in str(report.longrepr) and real_parts_required():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (
            f"{reason}\nThis run requires every real part ({' or '.join(REQUIRE_VARS)} is set): install it "
            "(scripts/test.sh does), or unset those variables to let the test skip."
        )
    return report
