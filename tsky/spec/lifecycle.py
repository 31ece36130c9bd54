"""Lifecycle controls beyond SkyPilot: max duration, debug hold on failure, budget cap, and cost.

Pure functions and models, no I/O, so the ManagedJob workflow can use them deterministically and the CLI
can show the same figures. Costs come from catalog prices, which are approximate: the figures are
estimates, not a bill.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tsky.spec.errors import FieldError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+")
_PART_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(value: Any) -> float:
    """Seconds in a duration: `10h`, `90m`, `1h30m`, `2d`, `45s`, or a bare number of seconds.

    Raises FieldError (its message names the accepted forms) for anything else, zero or less."""
    if isinstance(value, bool):
        raise FieldError(f"{value!r} is not a duration. Write it as 10h, 30m, 1h30m, 2d or a number of seconds.")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION_RE.fullmatch(value.strip().lower()):
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART_RE.findall(value.strip().lower()))
    elif isinstance(value, str) and re.fullmatch(r"\d+(?:\.\d+)?", value.strip()):
        seconds = float(value.strip())
    else:
        raise FieldError(f"{value!r} is not a duration. Write it as 10h, 30m, 1h30m, 2d or a number of seconds.")
    if not 0 < seconds < float("inf"):
        raise FieldError(f"{value!r} is not a positive duration. Write it as 10h, 30m, 1h30m, 2d or seconds.")
    return seconds


def format_duration(seconds: float) -> str:
    """`10h`, `1h30m`, `3s`: the shortest spelling parse_duration reads back."""
    rest = round(seconds)
    if rest <= 0:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def parse_dollars(value: Any) -> float:
    """A budget in US dollars: `25`, `25.50` or `$25`; more than zero."""
    text = str(value).strip().removeprefix("$") if not isinstance(value, bool) else ""
    try:
        dollars = float(text)
    except ValueError:
        dollars = -1.0
    if not dollars > 0 or dollars == float("inf"):
        raise FieldError(f"{value!r} is not an amount of dollars. Write it as a positive number, e.g. 25 or 12.50.")
    return dollars


def dollars(amount: float) -> str:
    """`$1.23`; amounts under a cent keep more digits so a cheap job does not read `$0.00`."""
    if 0 < amount < 0.01:
        return f"${amount:.4f}"
    return f"${amount:,.2f}"


class Lifecycle(BaseModel):
    """A job's lifecycle limits, fixed at submission (flags over settings) so every replay agrees.

    `max_duration` is per task and lives on the task itself (its YAML key, or `--max-duration`)."""

    model_config = ConfigDict(extra="ignore")

    # Keep a task's cluster this long after it fails on a user error (FAILED, FAILED_SETUP), for `ssh`.
    keep_on_failure_seconds: float | None = Field(default=None, gt=0)
    # Stop the job once its estimated cost would pass this many dollars.
    max_cost: float | None = Field(default=None, gt=0)
    # Default for tasks whose `job_recovery` does not say: after this many preemptions of a task, launch
    # it on on-demand instances.
    spot_fallback_after: int | None = Field(default=None, ge=0)


def running_cost(hourly: float, seconds: float) -> float:
    """The cost of `seconds` on a cluster that costs `hourly` dollars per hour (every node)."""
    return hourly * max(seconds, 0.0) / 3600


def seconds_until_cost(spent: float, hourly: float, budget: float) -> float | None:
    """How long a cluster at `hourly` $/h can run before the total passes `budget`: 0 when it already has,
    None when nothing is being spent (no timer needed)."""
    if spent >= budget:
        return 0.0
    if hourly <= 0:
        return None
    return (budget - spent) / hourly * 3600


def seconds_until(deadline: datetime | None, now: datetime) -> float | None:
    return None if deadline is None else max((deadline - now).total_seconds(), 0.0)


def exceeded_max_duration(seconds: float) -> str:
    return f"exceeded max_duration {format_duration(seconds)}"


def exceeded_max_cost(budget: float, spent: float) -> str:
    return f"exceeded max_cost {dollars(budget)} (spent {dollars(spent)})"
