"""Running a phase (setup or run) on every node of a cluster and watching it to the end.

One long heartbeating activity per phase. It starts the phase on each node at most once (the node
records the start), copies the nodes' output into the log store, and heartbeats
`[log size, node offsets...]`. A retry (the worker died, or lost the server) truncates the log to the
heartbeated size and resumes from those offsets: it re-attaches to the processes already running and
never starts them again, never drops or repeats a line. A log store that cannot be written to is retried
at every poll while the job runs on; the nodes' offsets advance only once their output is stored.

Each node is asked either by a command per poll (its status, then its new output) or, where its agent
can (`FollowingAgent`: SSH, Kubernetes), through one long-lived stream of its output that ends with the phase's
process: no command at all per poll while the stream lives. A stream's bytes count only once stored, so
a broken stream is re-attached at the stored offset, and whenever a node cannot stream it is polled.

It returns the exit codes once every node's phase has ended, or raises:
- `ClusterLost` when the backend positively reports a node preempted, stopped or gone;
- `ClusterUnreachable` when status checks keep failing past the window (both a time and a count).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from temporalio import activity
from temporalio.exceptions import ApplicationError

from tsky.activities.heartbeat import ThrottledHeartbeat
from tsky.contract.activity_io import ActivityName, ClusterInfo, ErrorType, PhaseInput, PhaseResult, StopPhaseInput
from tsky.contract.logs import phase_log_key
from tsky.ops.clouds import get_backend
from tsky.ops.clouds.base import Backend, FollowingAgent, FollowUnsupported, LogStream, NodeAgent, PhaseStatus
from tsky.ops.environment import task_environment
from tsky.ops.log_store import LogStore, log_store
from tsky.spec.secrets import SecretKeyError, load_key, unseal
from tsky.spec.settings import Settings

_READ_LIMIT = 1 << 20  # bytes per node per poll: bounds memory however chatty a job is
# A process seen dead without an exit code on a node that looks healthy: how many polls to wait
# for the code to land (it is written after the process ends) before calling the node lost.
_VANISHED_POLLS = 3


def _run_started(nodes: int) -> bytes:
    """SkyPilot's lines before a job's output, once per attempt: scripts count them."""
    return (
        f"├── Waiting for task resources on {nodes} node{'s' if nodes > 1 else ''}.\n"
        "└── Job started. Streaming logs... (Ctrl-C to exit log streaming; job will not be killed)\n"
    ).encode()


def _failed(inp: PhaseInput, exit_codes: list[int]) -> bytes:
    """SkyPilot's failure line. N is the job's number on its cluster: 1, since tsky runs each attempt as
    the only job of its own cluster; a pool job, which shares its worker, is named by its managed job id."""
    number = inp.meta.job_id if inp.node_key else 1
    what = f"Job {number}'s setup" if inp.phase == "setup" else f"Job {number}"
    return f"ERROR: {what} failed with return code list: {list(exit_codes)}\n".encode()


class ReachabilityWindow:
    """SkyPilot's transient window: a cluster that cannot be asked is declared unreachable only once
    at least `min_elapsed` seconds have passed since the first failure AND `min_retries` retries failed.
    Any successful check resets it."""

    def __init__(self, min_elapsed: float, min_retries: int):
        self.min_elapsed = min_elapsed
        self.min_retries = min_retries
        self.first_failure: float | None = None
        self.failures = 0

    def ok(self) -> None:
        self.first_failure = None
        self.failures = 0

    def failed(self) -> bool:
        """Record a failed check; True when the cluster must now be treated as unreachable."""
        now = time.monotonic()
        if self.first_failure is None:
            self.first_failure = now
        self.failures += 1
        return now - self.first_failure >= self.min_elapsed and self.failures > self.min_retries

    def backoff(self) -> float:
        return min(5.0, 1.6 ** max(0, self.failures - 1))


async def _lost_nodes(backend: Backend, cluster: ClusterInfo) -> list[str]:
    """A node that cannot be asked may be one its backend knows is gone (an evicted pod, a preempted VM
    that no longer answers SSH): that is positive evidence, no need to wait out the window."""
    try:
        states = await backend.node_states(cluster, fresh=True)
    except Exception:
        return []
    return [f"node {rank} is {state.value}" for rank, state in enumerate(states) if state.is_lost()]


async def _judge_failure(backend: Backend, cluster: ClusterInfo, window: ReachabilityWindow, err: Exception) -> None:
    """After a node could not be asked (or its phase started): raises CLUSTER_LOST when the backend says a
    node is gone, UNREACHABLE once the window is spent; returns when the caller should try again."""
    lost = await _lost_nodes(backend, cluster)
    if lost:
        raise ApplicationError(
            f"Cluster {cluster.name} lost: {', '.join(lost)}", type=ErrorType.CLUSTER_LOST, non_retryable=True
        ) from err
    if window.failed():
        raise ApplicationError(
            f"Cluster {cluster.name} unreachable for {window.failures} checks: {err}",
            type=ErrorType.UNREACHABLE,
            non_retryable=True,
        ) from err


def _prefix(task_name: str, phase: str, rank: int, pid: int, ip: str, nodes: int) -> bytes:
    """SkyPilot's line prefixes: `(task, pid=N)` for run, `(setup pid=N)` for setup; multi-node
    lines name the node: `(head, rank=0, pid=N)`, `(worker1, rank=1, pid=N, ip=…)`."""
    if phase == "setup":
        text = f"(setup pid={pid})" if nodes == 1 else f"(setup rank={rank}, pid={pid}, ip={ip})"
    elif nodes == 1:
        text = f"({task_name}, pid={pid})"
    elif rank == 0:
        text = f"(head, rank=0, pid={pid})"
    else:
        text = f"(worker{rank}, rank={rank}, pid={pid}, ip={ip})"
    return text.encode() + b" "


class _PolledNode:
    """A node asked by a command per poll: its phase's status, then its new output."""

    def __init__(self, agent: NodeAgent, phase: str):
        self.agent = agent
        self.phase = phase

    async def status(self, stored: int) -> PhaseStatus:
        """The phase's status; `stored`: how much of its output is safely in the log store."""
        return await self.agent.phase_status(self.phase)

    async def read(self, offset: int, limit: int) -> bytes:
        return await self.agent.read_log(self.phase, offset, limit)

    def close(self) -> None:
        pass


class _StreamedNode(_PolledNode):
    """A node whose output comes over one long-lived stream (`FollowingAgent.follow_log`) that ends with
    the phase's process. The stream's bytes wait in `buffer` (log offset `start` on) until stored; a
    broken stream is re-attached at the stored offset, dropping only what was not stored yet, so no
    line is lost or repeated. It polls instead while a stream cannot be opened (a failing poll counts
    against the reachability window, as ever), once the process has ended (for its exit code), and for
    good on a node that cannot follow."""

    def __init__(self, agent: FollowingAgent, phase: str):
        super().__init__(agent, phase)
        self.follower = agent
        self.buffer = bytearray()
        self.start = 0
        self.pump: asyncio.Task[bool] | None = None
        self.polling = False  # the process ended or the node cannot follow: commands from now on
        self.room = asyncio.Event()

    async def status(self, stored: int) -> PhaseStatus:
        del self.buffer[: max(0, stored - self.start)]
        self.start = max(self.start, stored)
        if len(self.buffer) < _READ_LIMIT:
            self.room.set()
        if self.pump is not None and self.pump.done():
            self.polling = self.pump.result()
            self.pump = None
        if self.pump is None and not self.polling:
            try:
                stream = await self.follower.follow_log(self.phase, stored)
            except Exception as err:
                activity.logger.info("cannot stream %s's output, polling it: %s", self.phase, err)
                return await super().status(stored)
            self.buffer.clear()
            self.start = stored
            self.pump = asyncio.create_task(self._pump(stream))
        if self.pump is None:
            return await super().status(stored)
        return PhaseStatus(started=True, alive=True, log_size=self.start + len(self.buffer))

    async def read(self, offset: int, limit: int) -> bytes:
        if self.start <= offset < self.start + len(self.buffer):
            return bytes(self.buffer[offset - self.start : offset - self.start + limit])
        return await super().read(offset, limit)

    async def _pump(self, stream: LogStream) -> bool:
        """Buffer the stream until it ends; True when the node is to be polled from now on."""
        try:
            while True:
                while len(self.buffer) >= _READ_LIMIT:  # the store is behind: let the node wait
                    self.room.clear()
                    await self.room.wait()
                data = await stream.read()
                if not data:
                    return True  # the process ended: its exit code comes by command
                self.buffer += data
        except FollowUnsupported as err:
            activity.logger.info("%s; polling it", err)
            return True
        except Exception as err:  # broken: the next poll re-attaches at the stored offset
            activity.logger.info("output stream of %s broke, re-attaching: %s", self.phase, err)
            return False
        finally:
            stream.close()

    def close(self) -> None:
        if self.pump is not None:
            self.pump.cancel()


@dataclass
class Watcher:
    """A job's watcher running in this process: `ended` once it stopped, `final` if no retry follows
    (it returned, or failed for good), so its last lines are stored for good."""

    ended: asyncio.Event = field(default_factory=asyncio.Event)
    final: bool = False


# This process's running watchers, by their job's workflow run (a job watches one phase at a time).
_watchers: dict[tuple[str, str], Watcher] = {}


def watcher_here(workflow_id: str, run_id: str) -> Watcher | None:
    """The job's watcher if it runs in this process: a cancel's teardown waits for it here, with no
    round-trip to the server (the usual case: one worker process serves the job's queues)."""
    return _watchers.get((workflow_id, run_id))


@dataclass
class _PhaseLog:
    """The phase's log in the store, and how much of it is stored."""

    store: LogStore
    key: str
    size: int

    async def ship(self, data: bytes) -> bool:
        try:
            await self.store.write(self.key, self.size, data)
        except Exception as err:  # the store is unreachable: the caller keeps the data and tries again
            activity.logger.warning("log store write of %s failed (will retry): %s", self.key, err)
            return False
        self.size += len(data)
        return True


class PhaseActivities:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.logs = log_store(settings)

    @activity.defn(name=ActivityName.SETUP)
    async def run_setup(self, inp: PhaseInput) -> PhaseResult:
        return await self._watched(inp)

    @activity.defn(name=ActivityName.RUN)
    async def run_and_watch(self, inp: PhaseInput) -> PhaseResult:
        return await self._watched(inp)

    async def _watched(self, inp: PhaseInput) -> PhaseResult:
        """`_watch`, listed in this process's watchers while it runs (see `watcher_here`)."""
        info = activity.info()
        key = (info.workflow_id or "", info.workflow_run_id or "")
        watcher = _watchers[key] = Watcher()
        try:
            result = await self._watch(inp)
            watcher.final = True
            return result
        except ApplicationError as err:
            watcher.final = err.non_retryable
            raise
        finally:
            watcher.ended.set()
            if _watchers.get(key) is watcher:
                del _watchers[key]

    @activity.defn(name=ActivityName.STOP_PHASE)
    async def stop_phase(self, inp: StopPhaseInput) -> None:
        backend = get_backend(inp.cluster.backend, self.settings)
        nodes = inp.cluster.nodes
        stops = (backend.node(inp.cluster, n.rank).stop_phase(inp.phase, inp.grace_seconds) for n in nodes)
        await asyncio.gather(*stops)

    async def _watch(self, inp: PhaseInput) -> PhaseResult:
        backend = get_backend(inp.cluster.backend, self.settings)
        agents = [backend.node(inp.cluster, node.rank) for node in inp.cluster.nodes]
        phase_key = inp.key
        key = (
            inp.log_path.removeprefix("logs/")  # a pool worker's log, named relative to $TSKY_HOME
            if inp.log_path
            else phase_log_key(inp.meta.job_id, inp.meta.task_index, inp.attempt, inp.phase)
        )
        details = activity.info().heartbeat_details
        resumed = [int(x) for x in details[0]] if details else [0] * (len(agents) + 1)
        store_size, offsets = resumed[0], resumed[1:]
        # Drop what a dead predecessor wrote after its last heartbeat.
        log = _PhaseLog(self.logs, key, store_size)
        await self.logs.truncate(key, store_size)

        pids = await self._start_or_judge(inp, backend, agents, phase_key, [store_size, *offsets])
        prefixes = [
            _prefix(inp.meta.task_name, inp.phase, node.rank, pids[node.rank], node.ip, len(agents))
            for node in inp.cluster.nodes
        ]
        job_log = inp.log_path is None  # a managed job's output, not a pool worker's own setup

        async def store(data: bytes) -> None:
            # SkyPilot's lines around the output wait for a store that is down, heartbeating meanwhile.
            while not await log.ship(data):
                activity.heartbeat([log.size, *offsets])
                await asyncio.sleep(1.0)

        if job_log and inp.phase == "run" and store_size == 0:
            await store(_run_started(len(agents)))
        stream = self.settings.jobs.watch.stream
        nodes = [
            _StreamedNode(a, phase_key) if stream and isinstance(a, FollowingAgent) else _PolledNode(a, phase_key)
            for a in agents
        ]
        try:
            result = await self._watch_loop(inp, backend, nodes, log, offsets, prefixes)
            if job_log and any(result.exit_codes):
                await store(_failed(inp, result.exit_codes))
            return result
        except asyncio.CancelledError:
            # Only a cancel the workflow asked for kills the job's processes (they must be dead before
            # teardown). A heartbeat timeout or a worker shutdown also cancels this coroutine, and
            # then the job must keep running for the next attempt to re-attach to.
            why = activity.cancellation_details()
            if why is not None and why.cancel_requested and not why.timed_out:
                await asyncio.shield(asyncio.gather(*(a.stop_phase(phase_key) for a in agents)))
            raise
        finally:
            for node in nodes:
                node.close()

    async def _start_or_judge(
        self, inp: PhaseInput, backend: Backend, agents: list[NodeAgent], phase_key: str, progress: list[int]
    ) -> list[int]:
        """Start the phase on every node, or attach to it. A start that fails is judged like a status check
        that fails, so a phase that can never start (claimed by a worker killed before it started the
        process) cannot hold the job forever: a lost node is recovered at once, any other after the window."""
        window = ReachabilityWindow(inp.status_check_min_elapsed_seconds, inp.status_check_min_retries)
        while True:
            try:
                return await self._start(inp, agents, phase_key)
            except ApplicationError:
                raise
            except Exception as err:
                activity.logger.warning("starting %s on %s failed: %s", phase_key, inp.cluster.name, err)
                await _judge_failure(backend, inp.cluster, window, err)
                activity.heartbeat(progress)
                await asyncio.sleep(window.backoff())

    async def _start(self, inp: PhaseInput, agents: list[NodeAgent], phase_key: str) -> list[int]:
        script = (inp.task.setup if inp.phase == "setup" else inp.task.run) or ""
        secrets: dict[str, str] = {}
        if inp.sealed_secrets:
            try:
                secrets = unseal(inp.sealed_secrets, load_key(self.settings.home, create=False))
            except SecretKeyError as err:  # retrying cannot bring the key: fail the job, saying which is missing
                raise ApplicationError(str(err), type=ErrorType.PRECHECK, non_retryable=True) from err
        starts = []
        for node, agent in zip(inp.cluster.nodes, agents, strict=True):
            env = task_environment(
                inp.meta, inp.cluster, node.rank, inp.phase, inp.task.envs, secrets, inp.gpus_per_node
            )
            starts.append(agent.start_phase(phase_key, script, env))
        return list(await asyncio.gather(*starts))

    async def _watch_loop(
        self,
        inp: PhaseInput,
        backend: Backend,
        nodes: list[_PolledNode],
        log: _PhaseLog,
        offsets: list[int],
        prefixes: list[bytes],
    ) -> PhaseResult:
        window = ReachabilityWindow(inp.status_check_min_elapsed_seconds, inp.status_check_min_retries)
        last_state_check = 0.0
        vanished_polls = 0
        pause = 0.125
        beat = ThrottledHeartbeat()
        while True:
            try:
                statuses = list(await asyncio.gather(*(n.status(o) for n, o in zip(nodes, offsets, strict=True))))
                stored = await self._copy_output(nodes, statuses, log, offsets, prefixes)
                exited = all(s.exit_code is not None for s in statuses) and stored
                vanished = any(s.exit_code is None and not s.alive for s in statuses)
                vanished_polls = vanished_polls + 1 if vanished else 0
                due = time.monotonic() - last_state_check >= backend.state_check_seconds
                succeeded = exited and all(s.exit_code == 0 for s in statuses)
                # A finished job is never relaunched: success needs no word from the backend.
                if not succeeded and (exited or vanished or due):
                    last_state_check = time.monotonic()
                    states = await backend.node_states(inp.cluster, fresh=exited or vanished)
                    lost = [f"node {rank} is {st.value}" for rank, st in enumerate(states) if st.is_lost()]
                    if lost:
                        raise ApplicationError(
                            f"Cluster {inp.cluster.name} lost: {', '.join(lost)}",
                            type=ErrorType.CLUSTER_LOST,
                            non_retryable=True,
                        )
                window.ok()
            except ApplicationError:
                raise
            except Exception as err:  # the cluster or backend could not be asked: retry in the window
                activity.logger.warning("status check of %s failed: %s", inp.cluster.name, err)
                await _judge_failure(backend, inp.cluster, window, err)
                beat([log.size, *offsets])
                await asyncio.sleep(window.backoff())
                continue
            beat([log.size, *offsets])
            if exited:
                return PhaseResult(exit_codes=[s.exit_code or 0 for s in statuses])
            if vanished_polls >= _VANISHED_POLLS:
                raise ApplicationError(
                    f"The {inp.phase} processes on {inp.cluster.name} disappeared without an exit code",
                    type=ErrorType.CLUSTER_LOST,
                    non_retryable=True,
                )
            # Poll fast at first, so short phases end promptly, then settle at the configured pace.
            pause = min(inp.poll_seconds, pause * 2)
            await asyncio.sleep(pause)

    async def _copy_output(
        self,
        nodes: list[_PolledNode],
        statuses: list[PhaseStatus],
        log: _PhaseLog,
        offsets: list[int],
        prefixes: list[bytes],
    ) -> bool:
        """Append each node's new complete lines, prefixed, in one write per poll (one segment in an
        object store). A node whose phase has ended also gives up its last unterminated line. False
        when the store could not take them: the offsets stay, and the next poll reads them again."""
        chunks: list[bytes] = []
        read_to = list(offsets)
        for rank, (node, status) in enumerate(zip(nodes, statuses, strict=True)):
            while status.log_size > read_to[rank]:
                data = await node.read(read_to[rank], _READ_LIMIT)
                if not data:
                    break
                end = data.rfind(b"\n") + 1
                if end == 0:  # no complete line in what was read
                    if status.exit_code is None and len(data) < _READ_LIMIT:
                        break  # wait for the rest of the line
                    end = len(data)  # the phase ended, or one huge line: take it as it is
                for line in data[:end].splitlines(keepends=True):
                    chunks.append(prefixes[rank] + (line if line.endswith(b"\n") else line + b"\n"))
                read_to[rank] += end
        if chunks and not await log.ship(b"".join(chunks)):
            return False
        offsets[:] = read_to
        return True
