"""The one protocol every backend implements, and the typed errors it raises.

A backend turns a priced `Candidate` into a cluster of nodes, reports each node's state, gives a
`NodeAgent` to run phases on a node, lists the clusters tsky owns, and tears clusters down. Every
method is idempotent: provisioning a name that exists adopts it, tearing down a missing cluster succeeds.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from tsky.contract.activity_io import STOP_GRACE_SECONDS, ClusterInfo, JobMeta
from tsky.contract.ids import owner_id
from tsky.spec.requests import Candidate
from tsky.spec.settings import Settings
from tsky.spec.status import NodeState


class BackendError(Exception):
    """Base of the typed errors; anything else a backend raises is treated as transient."""


class CapacityError(BackendError):
    """No room for this request in this place now (quota, stock-out): try elsewhere or later."""


class PrecheckError(BackendError):
    """The request can never work as given (bad credentials, invalid parameters): fail fast."""


class TransientError(BackendError):
    """A passing fault (throttling, a 5xx, a dropped connection): retry."""


class ThrottledError(TransientError):
    """The cloud refused the call for its rate limit (EC2 RequestLimitExceeded, GCE rateLimitExceeded, a 429):
    back off; never evidence about a node."""


@dataclass
class PhaseStatus:
    """What a node says about one phase (setup or run) it was asked to run."""

    started: bool
    pid: int | None = None
    alive: bool = False
    exit_code: int | None = None  # set once the phase has ended and recorded its code
    log_size: int = 0


@dataclass
class ClusterRecord:
    """A cluster found by listing a backend: what the sweeper and `tsky status` need."""

    name: str
    backend: str
    region: str
    job_id: int | None
    nodes: int
    state: str = "UP"
    launched_at: float | None = None
    extra: dict[str, str] = field(default_factory=dict)
    # The installation that launched it (`owner_of(settings)`), where the backend is shared with others
    # (a cloud account, a k8s namespace); None where only this installation can see it (local).
    owner: str | None = None
    pool: str | None = None  # a pool's worker: owned by the pool's workflow (`tsky-pool-<name>`), not a job


def owner_of(settings: Settings) -> str:
    """This installation's owner id, which backends put on the clusters they create."""
    return owner_id(settings.temporal.address, settings.temporal.namespace, socket.gethostname(), str(settings.home))


class NodeAgent(Protocol):
    """Runs tsky's phases on one node. Phases run detached, so they survive the worker that started
    them; their pid, log and exit code live in files on the node, which lets any later worker attach."""

    async def put_files(self, files: dict[str, bytes]) -> None:
        """Write small files under the node's tsky directory (scripts, env)."""

    async def sync_dir(self, local_src: str, dest: str) -> None:
        """Copy a local directory's contents to `dest` on the node (relative paths: under its home)."""

    async def sync_file(self, local_src: str, dest: str) -> None:
        """Copy one local file to `dest` on the node."""

    async def start_phase(self, phase: str, script: str, env: dict[str, str]) -> int:
        """Start `script` for `phase` once. A second call returns the pid of the first start."""

    async def phase_status(self, phase: str) -> PhaseStatus: ...

    async def read_log(self, phase: str, offset: int, limit: int) -> bytes: ...

    async def stop_phase(self, phase: str, grace: float = STOP_GRACE_SECONDS) -> None:
        """Kill the phase's whole process tree: SIGTERM, SIGKILL `grace` seconds later unless it exited
        (idempotent)."""


class FollowUnsupported(BackendError):
    """The node cannot stream a phase's log (its tools lack what the follower needs): poll it instead."""


class LogStream(Protocol):
    """One phase's log streamed from a node over one long-lived channel."""

    async def read(self) -> bytes:
        """The next bytes of the log as they come; b"" once the phase's process has ended and its log was
        read to the end. Raises `TransientError` when the stream broke, `FollowUnsupported` when the node
        cannot follow."""

    def close(self) -> None: ...


@runtime_checkable
class FollowingAgent(NodeAgent, Protocol):
    """A `NodeAgent` that can also stream a phase's log, so a watcher needs no command per poll."""

    async def follow_log(self, phase: str, offset: int) -> LogStream:
        """Open a stream of the phase's log from `offset` (raises `TransientError` when it cannot)."""


class Backend(Protocol):
    name: str
    # How often a watcher asks the backend about node health while the job runs. Cheap for `local`;
    # a cloud API is asked less often (SkyPilot: 15 s), and at once whenever a process looks gone.
    # Cloud backends answer every watcher from one shared listing per region (`state_checks.py`).
    state_check_seconds: float

    async def provision(self, cluster_name: str, candidate: Candidate, num_nodes: int, meta: JobMeta) -> ClusterInfo:
        """Create (or adopt) the cluster and return once every node is UP and reachable."""

    async def node_states(self, cluster: ClusterInfo, fresh: bool = False) -> list[NodeState]:
        """One state per node, rank order. Raise (any error) when the backend cannot be asked; UNKNOWN where
        it can say nothing (throttled). The answer may be up to `state_check_seconds` old unless `fresh`:
        then it was observed after the call (the watcher saw a process end or a node stop answering)."""

    def node(self, cluster: ClusterInfo, rank: int) -> NodeAgent: ...

    async def teardown(self, cluster_name: str, cluster: ClusterInfo | None) -> None:
        """Delete everything the cluster owns; return only once the backend confirms it is gone."""

    async def list_clusters(self) -> list[ClusterRecord]: ...
