"""The recovery policy: what happens after an attempt ends, and where the next launch is tried.

Pure functions of job state, so they are deterministic inside the workflow and table-tested on their own.
This is the one place that answers "what happens when a spot VM is preempted":

| how the attempt ended                     | strategy          | decision                                 |
|-------------------------------------------|-------------------|------------------------------------------|
| every node exited 0                       | any               | SUCCEEDED                                |
| a node preempted/stopped/gone (evidence)  | EAGER_NEXT_REGION | new cluster, the lost region tried last  |
|                                           | FAILOVER          | new cluster, the same region tried first |
| status checks failed past the window      | (as preempted)    | recover; the old cluster is torn down    |
| exit code in recover_on_exit_codes        | any but NONE      | restart, not counted against the budget  |
| non-zero exit, restarts left              | EAGER_NEXT_REGION | restart on a new cluster                 |
|                                           | FAILOVER          | restart on the same, live cluster        |
| non-zero exit, budget spent               | any               | FAILED (run) / FAILED_SETUP (setup)      |
| anything but success                      | NONE              | FAILED, no recovery (skypilot#10258)     |

Every relaunch counts in #RECOVERIES, as in SkyPilot. Setup failures use the same budget.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from tsky.contract.job import JobPolicy
from tsky.spec.requests import Candidate
from tsky.spec.resources import EAGER_NEXT_REGION, FAILOVER, NO_RECOVERY
from tsky.spec.status import ManagedJobStatus
from tsky.spec.task import JobRecovery


class OutcomeKind(StrEnum):
    EXITED = "exited"  # every node's phase ended with an exit code
    LOST = "lost"  # the backend says a node is preempted, stopped or gone
    UNREACHABLE = "unreachable"  # the cluster could not be asked, past the window


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    phase: str  # "setup" | "run"
    exit_codes: tuple[int, ...] = ()
    reason: str = ""

    def cluster_job_status(self) -> str | None:
        """The status SkyPilot's controller logs for the job on its cluster (`Job status: JobStatus.X`);
        None when the cluster was lost before the job ended."""
        if self.kind is not OutcomeKind.EXITED:
            return None
        if not any(self.exit_codes):
            return "SUCCEEDED"
        return "FAILED_SETUP" if self.phase == "setup" else "FAILED"


class Action(StrEnum):
    FINISH = "finish"  # the task ends with `status`
    RELAUNCH = "relaunch"  # tear the cluster down, launch a new one
    RESTART_IN_PLACE = "restart_in_place"  # FAILOVER: rerun setup and run on the live cluster


@dataclass(frozen=True)
class Decision:
    action: Action
    status: ManagedJobStatus | None = None  # for FINISH
    reason: str = ""  # failure reason (FINISH) or recovery reason (RELAUNCH / RESTART)
    counts_restart: bool = False  # uses one of max_restarts_on_errors
    cause: str = ""  # what the attempt history records


def decide(outcome: Outcome, recovery: JobRecovery, restarts_used: int) -> Decision:
    strategy = recovery.strategy or EAGER_NEXT_REGION
    if outcome.kind is OutcomeKind.EXITED and all(code == 0 for code in outcome.exit_codes):
        return Decision(Action.FINISH, ManagedJobStatus.SUCCEEDED, cause="succeeded")

    if outcome.kind is not OutcomeKind.EXITED:
        cause = "preempted" if outcome.kind is OutcomeKind.LOST else "unreachable"
        if strategy == NO_RECOVERY:
            return Decision(
                Action.FINISH,
                ManagedJobStatus.FAILED,
                reason=f"{outcome.reason}. Not recovering: job_recovery is none.",
                cause=cause,
            )
        reason = "Cluster preempted or failed, recovering" if cause == "preempted" else outcome.reason
        return Decision(Action.RELAUNCH, reason=reason, cause=cause)

    failed = [code for code in outcome.exit_codes if code != 0]
    code = failed[0]
    what = "Setup" if outcome.phase == "setup" else "Job"
    cause = f"{outcome.phase} exit code {code}"
    final = ManagedJobStatus.FAILED_SETUP if outcome.phase == "setup" else ManagedJobStatus.FAILED
    if strategy != NO_RECOVERY:
        in_place = Action.RESTART_IN_PLACE if strategy == FAILOVER else Action.RELAUNCH
        matched = [c for c in outcome.exit_codes if c in recovery.recover_on_exit_codes]
        if matched:
            return Decision(
                in_place,
                reason=f"{what} exited with exit code {matched[0]}, listed in recover_on_exit_codes. "
                "Restarting the job (not counted against max_restarts_on_errors).",
                cause=cause,
            )
        if restarts_used < recovery.max_restarts_on_errors:
            return Decision(
                in_place,
                reason=f"{what} exited with exit code {code}. Restarting the job "
                f"(restart {restarts_used + 1} of {recovery.max_restarts_on_errors} on errors).",
                counts_restart=True,
                cause=cause,
            )
    return Decision(
        Action.FINISH,
        final,
        reason=f"{what} exited with exit code {code} (user program failure).",
        cause=cause,
    )


def launch_order(
    candidates: list[Candidate], strategy: str, lost_region: str | None, first_round: bool
) -> list[Candidate]:
    """The order in which one launch round tries the candidates (already ranked by the planner).

    EAGER_NEXT_REGION moves the region just lost to the end for the first round of a recovery (so it is
    tried only if nothing else has room) and comes back to the normal order after that. FAILOVER moves
    it to the front: wait in the same region, then fail over. (SkyPilot means to skip the lost region
    but never does: its check looks at the launched resources, which always carry a region.)"""
    if lost_region is None or not first_round or strategy not in (EAGER_NEXT_REGION, FAILOVER):
        return list(candidates)
    same = [c for c in candidates if c.region == lost_region]
    other = [c for c in candidates if c.region != lost_region]
    return same + other if strategy == FAILOVER else other + same


def launch_backoff(policy: JobPolicy, round_index: int, rng: random.Random) -> float:
    """Seconds to wait after launch round `round_index` (0-based) found no capacity anywhere:
    `initial × multiplier^round`, capped, with ± jitter (SkyPilot: 60 s × 1.6, cap 300 s, ±40 %)."""
    base = min(
        policy.launch_backoff_max_seconds,
        policy.launch_backoff_initial_seconds * policy.launch_backoff_multiplier**round_index,
    )
    jitter = policy.launch_backoff_jitter
    return max(0.0, base * (1 + rng.uniform(-jitter, jitter)))
