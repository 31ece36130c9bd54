"""Node state checks shared by every watcher of a worker process: one cloud listing per scope.

A scope is where one paginated call sees every instance tsky owns: an EC2 region, a GCP project, a k8s
namespace. Each watcher asks its backend about its cluster; the backend answers from the scope's latest
snapshot when it is at most `state_check_seconds` old, and otherwise refreshes it. Concurrent refreshes
of one scope are one call (single flight), so the calls a worker makes at rest grow with the number of
scopes, not with the number of jobs.

A watcher that has seen something happen (a process ended, a node stopped answering) asks for a *fresh*
answer: one from a listing started after it asked, so a stale snapshot never hides a preemption. Fresh
asks arriving together still share one call.

A failed listing backs off (exponentially, with jitter) before the scope is asked again. While it does,
callers get the failure: a throttled cloud as `ThrottledError`, which the backends answer with UNKNOWN
node states (no evidence either way: the watcher's unreachable window, never a lost node).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Scope = TypeVar("Scope", bound=Hashable)

# Refreshes of one scope are never closer than this, however many fresh asks come in.
MIN_GAP_SECONDS = 1.0
# A new listing waits this long for other asks of the same moment, so they share it.
GATHER_SECONDS = 0.05
# A failed listing is retried after 2 s, 4 s, ... at most this long.
MAX_BACKOFF_SECONDS = 120.0


@dataclass
class Snapshot:
    """Everything one listing returned, keyed as the backend keys its nodes (`NodeInfo.host_id`)."""

    started: float  # time.monotonic() when the listing was sent: it shows nothing older than this
    items: dict[str, Any]


@dataclass
class _ScopeState:
    latest: Snapshot | None = None
    flight: asyncio.Task[Snapshot] | None = None
    flight_started: float = 0.0
    failures: int = 0
    retry_at: float = 0.0
    error: BaseException | None = None
    last_sent: float = field(default=-MIN_GAP_SECONDS)


class SharedStateChecks(Generic[Scope]):
    """The latest listing of each scope, refreshed at most every `max_age` seconds for routine asks."""

    def __init__(self, fetch: Callable[[Scope], Awaitable[dict[str, Any]]], max_age: float):
        self.fetch = fetch
        self.max_age = max_age
        self._scopes: dict[Scope, _ScopeState] = {}
        self.calls = 0  # listings sent: what the benchmark prints

    async def snapshot(self, scope: Scope, fresh: bool = False) -> Snapshot:
        """A listing of `scope` that started after `now - max_age` (routine) or after now (fresh)."""
        state = self._scopes.setdefault(scope, _ScopeState())
        asked = time.monotonic()
        not_before = asked if fresh else asked - self.max_age
        gathered = False
        while True:
            if state.latest is not None and state.latest.started >= not_before:
                return state.latest
            if state.flight is not None:
                flight, started = state.flight, state.flight_started
                # A listing sent before a fresh ask cannot answer it: wait for it, then send the next one.
                snap = await asyncio.shield(flight) if started >= not_before else await _settled(flight)
                if snap is not None and started >= not_before:
                    return snap
                continue
            now = time.monotonic()
            if now < state.retry_at and state.error is not None:
                raise state.error  # backing off: every watcher gets the last failure, no call is made
            wait = state.last_sent + MIN_GAP_SECONDS - now
            if wait > 0 or not gathered:
                # Let the asks of the same moment gather (and never send closer than the minimum gap).
                await asyncio.sleep(max(wait, GATHER_SECONDS))
                gathered = True
                continue
            state.flight_started = state.last_sent = time.monotonic()
            state.flight = asyncio.create_task(self._refresh(scope, state, state.flight_started))

    async def _refresh(self, scope: Scope, state: _ScopeState, started: float) -> Snapshot:
        self.calls += 1
        try:
            items = await self.fetch(scope)
        except Exception as err:  # (a cancelled listing leaves no error behind: the next ask sends another)
            state.failures += 1
            backoff = min(MAX_BACKOFF_SECONDS, 2.0**state.failures)
            state.retry_at = time.monotonic() + backoff * random.uniform(0.5, 1.0)
            state.error = err
            raise
        finally:
            state.flight = None
        state.failures, state.error = 0, None
        state.latest = Snapshot(started, items)
        return state.latest


async def _settled(flight: asyncio.Task[Snapshot]) -> Snapshot | None:
    """The flight's snapshot, or None if it failed (the caller decides what to do next)."""
    try:
        return await asyncio.shield(flight)
    except asyncio.CancelledError:
        if flight.cancelled():
            return None
        raise
    except Exception:
        return None
