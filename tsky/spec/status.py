"""Statuses users see, with SkyPilot's names and meanings, and the CLI exit codes (docs/recovery.md)."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ManagedJobStatus(StrEnum):
    """Status of one task of a managed job (and, derived, of the job).

    Declaration order is SkyPilot's: it matters for nothing here but keeps the table readable.
    """

    PENDING = "PENDING"
    SUBMITTED = "SUBMITTED"  # legacy DEPRECATED_SUBMITTED; parsed only
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    WINDING_DOWN = "WINDING_DOWN"  # newer SkyPilot batch coordinator; tolerated, never set
    RECOVERING = "RECOVERING"
    CANCELLING = "CANCELLING"
    SUCCEEDED = "SUCCEEDED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    FAILED_SETUP = "FAILED_SETUP"
    FAILED_PRECHECKS = "FAILED_PRECHECKS"
    FAILED_NO_RESOURCE = "FAILED_NO_RESOURCE"
    FAILED_CONTROLLER = "FAILED_CONTROLLER"

    def is_terminal(self) -> bool:
        return self in _TERMINAL

    def is_failed(self) -> bool:
        return self in _FAILED

    def exit_code(self) -> JobExitCode:
        """The code `tsky jobs launch` / `tsky jobs logs` exit with once they see this status."""
        if self is ManagedJobStatus.SUCCEEDED:
            return JobExitCode.SUCCEEDED
        if self is ManagedJobStatus.CANCELLED:
            return JobExitCode.CANCELLED
        if self.is_failed():
            return JobExitCode.FAILED
        return JobExitCode.NOT_FINISHED


_FAILED = frozenset(
    {
        ManagedJobStatus.FAILED,
        ManagedJobStatus.FAILED_SETUP,
        ManagedJobStatus.FAILED_PRECHECKS,
        ManagedJobStatus.FAILED_NO_RESOURCE,
        ManagedJobStatus.FAILED_CONTROLLER,
    }
)
_TERMINAL = _FAILED | {ManagedJobStatus.SUCCEEDED, ManagedJobStatus.CANCELLED}


class JobExitCode(IntEnum):
    """SkyPilot's `JobExitCode`: what the CLI exits with after following a job."""

    SUCCEEDED = 0
    FAILED = 100
    NOT_FINISHED = 101
    NOT_FOUND = 102
    CANCELLED = 103


class NodeState(StrEnum):
    """What a backend says about one node of a cluster."""

    UP = "UP"
    STOPPED = "STOPPED"
    PREEMPTED = "PREEMPTED"
    GONE = "GONE"
    UNKNOWN = "UNKNOWN"  # could not ask: never evidence of loss on its own

    def is_lost(self) -> bool:
        return self in (NodeState.STOPPED, NodeState.PREEMPTED, NodeState.GONE)


class PoolWorkerStatus(StrEnum):
    PENDING = "PENDING"
    PROVISIONING = "PROVISIONING"
    STARTING = "STARTING"
    READY = "READY"
    BUSY = "BUSY"  # READY and running a job (SkyPilot shows READY with USED_BY)
    NOT_READY = "NOT_READY"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    FAILED = "FAILED"
    FAILED_PROVISION = "FAILED_PROVISION"
    FAILED_SETUP = "FAILED_SETUP"
    FAILED_CLEANUP = "FAILED_CLEANUP"
    PREEMPTED = "PREEMPTED"
    UNKNOWN = "UNKNOWN"


class PoolStatus(StrEnum):
    CONTROLLER_INIT = "CONTROLLER_INIT"
    REPLICA_INIT = "REPLICA_INIT"
    READY = "READY"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    FAILED = "FAILED"
    NO_REPLICA = "NO_REPLICA"
