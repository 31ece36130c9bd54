"""Running tsky's phases on a remote node over SSH (asyncssh): the runner the ssh, aws and gcp backends share.

A node is reached as an `SSHTarget` (address, port, user, key or password). `SSHNodeAgent` implements
the `NodeAgent` protocol with the same on-node layout as the local backend (`phases.py`): under the
node's directory (`cluster_node`) each phase has `<phase>.sh`, `<phase>.env` (mode 0600), `<phase>.started/`
(mkdir'ed by the one start that wins), `<phase>.pid` (pid and kernel start time of the wrapper, which leads
its own session and process group), `<phase>.log`, `<phase>.exit` and `<phase>.stopped`. Every process of a
phase carries `TSKY_PROCESS_TAG=<tag>:<phase>`, so daemonised strays are found and killed too.

Cost per call (one SSH channel on a pooled connection each):
- `start_phase`: one command, the script and env travelling on its stdin as a small tar stream;
- `phase_status`: one command; `read_log(offset, limit)`: one command (`tail -c +N | head -c L`);
- `stop_phase` / `terminate`: one command each;
- `follow_log`: one long-lived channel per phase that streams the log as it grows and ends with the
  phase's process (`node_programs.FOLLOW`): a watcher needs no command per poll while it lives.

Connections are pooled per (event loop, target) and reused by every agent of that node; the long-lived
follow channels get connections of their own (`_STREAMS_PER_CONNECTION` each), so they never take a
command's session slot, and a connection is closed with its last stream. Keepalives
(`SSHOptions.keepalive_interval` × `keepalive_count_max`) close a connection to a host that stopped
answering, so the next call fails fast instead of hanging. A call that fails on a reused connection is
retried once on a fresh one (every remote program here is idempotent). A node that cannot be reached
raises `NodeUnreachable` (a `TransientError`): callers decide, e.g. the watcher's reachability window.

API for backends: `SSHTarget`, `SSHOptions`, `SSHNodeAgent(target, cluster_dir, tag)` (the NodeAgent,
plus `run()` and `terminate()` for teardown), module-level `run()` / `run_program()` for a backend's own
commands, `wait_reachable()` for booting instances and `close_all()`. Where a cloud instance is reached is
the backend's address resolver's business (`addresses.py`).

User values reach a shell only through `shlex.quote` (the env file) or as positional arguments; env names
must be valid shell names. Host keys are not checked (nodes are fresh or listed by the user, as SkyPilot's
`StrictHostKeyChecking=no`).

Why one module of this size: commands, file copies and log streams all open, reuse and drop the same
pooled connections (`_open`, `_connection`, `_drop`); split apart they would reach into each other's pool.

Why one module of this size: the pooled connections are shared by commands, log streams and file copies;
keeping them with their one pool makes the connection limits and their clean-up visible in one place.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import shutil
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from tsky.contract.activity_io import STOP_GRACE_SECONDS
from tsky.ops.clouds.base import FollowUnsupported, PhaseStatus, TransientError
from tsky.ops.clouds.node_programs import (
    ENV_NAME,
    FOLLOW,
    FOLLOW_UNSUPPORTED,
    PUT,
    READ_LOG,
    START,
    STATUS,
    STOP,
    TERMINATE,
    RemoteCommandError,
    parse_status,
    remote_path,
    tar_files,
)
from tsky.ops.clouds.phases import PROCESS_TAG_VAR, WRAPPER, env_file_text

# asyncssh logs every channel at INFO; a worker polling thousands of nodes must not.
logging.getLogger("asyncssh").setLevel(logging.WARNING)
logger = logging.getLogger(__name__)

DEFAULT_WORKDIR = "sky_workdir"  # relative to the login home, as on SkyPilot clusters
# OpenSSH allows 10 sessions per connection (MaxSessions) and frees a session's slot a moment after its
# channel closed: stay well below, and retry an open the server refused while it catches up.
_CHANNELS_PER_CONNECTION = 5
_OPEN_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8)
# Long-lived follow channels per connection of their own (OpenSSH's MaxSessions is 10).
_STREAMS_PER_CONNECTION = 8


class NodeUnreachable(TransientError):
    """The node did not answer (refused, timed out, connection lost, authentication failed)."""


@dataclass(frozen=True)
class SSHTarget:
    """How to reach one node; also the connection pool's key."""

    host: str
    port: int = 22
    user: str | None = None  # None: the local user name
    identity_file: str | None = None  # None: the default keys and the agent
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"


@dataclass(frozen=True)
class SSHOptions:
    connect_timeout: float = 15.0
    keepalive_interval: float = 15.0  # seconds between keepalives on an idle connection
    keepalive_count_max: int = 3  # unanswered keepalives before the connection is closed
    command_timeout: float = 60.0  # bound on each of tsky's own remote commands
    use_rsync: bool = True  # sync with rsync when both ends have it, else SFTP


@dataclass
class CommandResult:
    exit_status: int
    stdout: bytes
    stderr: bytes


# -- the connection pool ----------------------------------------------------------------------------


@dataclass
class _Pooled:
    conn: asyncssh.SSHClientConnection
    channels: asyncio.Semaphore
    has_rsync: bool | None = None


# One pool per event loop: a connection belongs to the loop that opened it (tests run several loops).
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[SSHTarget, asyncio.Task[_Pooled]]] = (
    weakref.WeakKeyDictionary()
)


def _pool() -> dict[SSHTarget, asyncio.Task[_Pooled]]:
    return _pools.setdefault(asyncio.get_running_loop(), {})


async def _open(target: SSHTarget, options: SSHOptions) -> _Pooled:
    kwargs: dict[str, Any] = {}
    if target.identity_file:
        kwargs["client_keys"] = [os.path.expanduser(target.identity_file)]
    if target.password is not None:
        kwargs["password"] = target.password
    try:
        conn = await asyncssh.connect(
            target.host,
            port=target.port,
            username=target.user or None,
            known_hosts=None,
            config=None,
            connect_timeout=options.connect_timeout,
            keepalive_interval=options.keepalive_interval,
            keepalive_count_max=options.keepalive_count_max,
            **kwargs,
        )
    except (TimeoutError, OSError, asyncssh.Error) as err:
        raise NodeUnreachable(f"cannot connect to {target}: {err or type(err).__name__}") from err
    return _Pooled(conn, asyncio.Semaphore(_CHANNELS_PER_CONNECTION))


async def _connection(target: SSHTarget, options: SSHOptions) -> tuple[_Pooled, bool]:
    """The pooled connection to `target` (opened once even when many callers ask at the same time),
    and whether it was reused."""
    pool = _pool()
    task = pool.get(target)
    if task is not None and task.done() and (task.cancelled() or task.exception() or task.result().conn.is_closed()):
        del pool[target]
        task = None
    reused = task is not None
    if task is None:
        task = asyncio.ensure_future(_open(target, options))
        pool[target] = task
    try:
        return await asyncio.shield(task), reused
    except NodeUnreachable:
        if pool.get(target) is task:
            del pool[target]
        raise


def _drop(target: SSHTarget, pooled: _Pooled) -> None:
    pool = _pool()
    task = pool.get(target)
    if task is not None and task.done() and not task.cancelled() and not task.exception() and task.result() is pooled:
        del pool[target]
    pooled.conn.close()


@dataclass
class _StreamConnection:
    conn: asyncssh.SSHClientConnection
    streams: int = 0


@dataclass
class _StreamHost:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    connections: list[_StreamConnection] = field(default_factory=list)


_stream_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[SSHTarget, _StreamHost]] = (
    weakref.WeakKeyDictionary()
)


def _stream_host(target: SSHTarget) -> _StreamHost:
    return _stream_pools.setdefault(asyncio.get_running_loop(), {}).setdefault(target, _StreamHost())


class SSHLogStream:
    """A phase's log streamed over one channel (`LogStream`). Its connection is closed with its last stream."""

    def __init__(self, target: SSHTarget, slot: _StreamConnection, process: asyncssh.SSHClientProcess[bytes]):
        self.target = target
        self.slot = slot
        self.process = process
        self.closed = False

    @classmethod
    async def open(cls, target: SSHTarget, command: str, options: SSHOptions) -> SSHLogStream:
        host = _stream_host(target)
        async with host.lock:
            host.connections = [c for c in host.connections if not c.conn.is_closed()]
            slot = next((c for c in host.connections if c.streams < _STREAMS_PER_CONNECTION), None)
            if slot is None:
                slot = _StreamConnection((await _open(target, options)).conn)
                host.connections.append(slot)
            slot.streams += 1
        try:
            process = await slot.conn.create_process(command, encoding=None)
        except (OSError, asyncssh.Error) as err:
            cls._release(slot)
            raise NodeUnreachable(f"{target}: cannot open a log stream: {err or type(err).__name__}") from err
        return cls(target, slot, process)

    async def read(self) -> bytes:
        try:
            data = await self.process.stdout.read(1 << 16)
            if data:
                return data
            await self.process.wait_closed()
        except (OSError, asyncssh.Error) as err:
            raise NodeUnreachable(f"{self.target}: log stream broke: {err or type(err).__name__}") from err
        status = self.process.exit_status
        if status == 0:
            return b""
        if status == FOLLOW_UNSUPPORTED:
            raise FollowUnsupported(f"{self.target}: cannot follow a log here (needs GNU tail --pid)")
        raise NodeUnreachable(
            f"{self.target}: log stream ended early (status {status}, signal {self.process.exit_signal})"
        )

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.process.close()  # the follower's stdin ends with the channel: it ends too
            self._release(self.slot)

    @staticmethod
    def _release(slot: _StreamConnection) -> None:
        slot.streams -= 1
        if slot.streams == 0:
            slot.conn.close()


async def close_all() -> None:
    """Close every pooled connection of the running loop (worker shutdown, tests)."""
    for host in _stream_pools.pop(asyncio.get_running_loop(), {}).values():
        for slot in host.connections:
            slot.conn.close()
    pool = _pool()
    tasks = list(pool.values())
    pool.clear()
    for task in tasks:
        try:
            pooled = await task
        except Exception:
            continue
        pooled.conn.close()
        await pooled.conn.wait_closed()


async def run(
    target: SSHTarget,
    command: str,
    *,
    input: bytes | None = None,
    timeout: float | None = None,
    options: SSHOptions | None = None,
) -> CommandResult:
    """Run `command` (a shell command line, already quoted) on the node and collect its output.

    Raises `NodeUnreachable` when the node cannot be reached or the connection drops; a non-zero exit
    status is returned, not raised."""
    options = options or SSHOptions()
    for attempt in (0, 1):
        pooled, reused = await _connection(target, options)
        try:
            result = await _run_channel(pooled, command, input, timeout or options.command_timeout)
        except asyncssh.TimeoutError as err:
            raise NodeUnreachable(f"{target}: command timed out after {timeout or options.command_timeout}s") from err
        except (TimeoutError, OSError, asyncssh.Error) as err:
            _drop(target, pooled)
            if reused and attempt == 0:
                continue  # a stale pooled connection: try once more on a fresh one
            raise NodeUnreachable(f"{target}: {err or type(err).__name__}") from err
        if result.exit_status is None:  # the channel closed without a status: the connection died
            _drop(target, pooled)
            if reused and attempt == 0:
                continue
            raise NodeUnreachable(f"{target}: connection lost while running a command")
        return CommandResult(result.exit_status, _bytes(result.stdout), _bytes(result.stderr))
    raise AssertionError("unreachable")


async def _run_channel(
    pooled: _Pooled, command: str, input: bytes | None, timeout: float
) -> asyncssh.SSHCompletedProcess:
    for delay in (*_OPEN_RETRY_DELAYS, None):
        try:
            async with pooled.channels:
                return await pooled.conn.run(command, input=input, encoding=None, check=False, timeout=timeout)
        except asyncssh.ChannelOpenError:
            if delay is None or pooled.conn.is_closed():
                raise
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def _bytes(data: Any) -> bytes:
    if data is None:
        return b""
    return data if isinstance(data, bytes) else str(data).encode()


def _program_command(program: str, args: Iterable[str]) -> str:
    return " ".join(["bash", "-c", shlex.quote(program), "tsky", *(shlex.quote(a) for a in args)])


async def run_program(
    target: SSHTarget,
    program: str,
    args: Iterable[str],
    *,
    input: bytes | None = None,
    timeout: float | None = None,
    options: SSHOptions | None = None,
) -> bytes:
    """Run one of tsky's bash programs with positional arguments; its stdout, or RemoteCommandError."""
    command = _program_command(program, args)
    result = await run(target, command, input=input, timeout=timeout, options=options)
    if result.exit_status != 0:
        err = result.stderr.decode(errors="replace").strip()[-2000:]
        raise RemoteCommandError(f"{target}: remote command failed with status {result.exit_status}: {err}")
    return result.stdout


class SSHNodeAgent:
    """A `NodeAgent` for one node reached over SSH.

    `cluster_dir` holds the phase files (relative: under the login home), `workdir` is where phases
    run and where the workdir is synced (SkyPilot's `~/sky_workdir`), `tag` names the node's processes
    (`<cluster>/<rank>`; a phase's processes carry `<tag>:<phase>`)."""

    def __init__(
        self,
        target: SSHTarget,
        cluster_dir: str,
        tag: str,
        *,
        workdir: str = DEFAULT_WORKDIR,
        options: SSHOptions | None = None,
    ):
        self.target = target
        self.cluster_dir = cluster_dir
        self.tag = tag
        self.workdir = workdir
        self.options = options or SSHOptions()

    async def _program(
        self, program: str, *args: str, input: bytes | None = None, timeout: float | None = None
    ) -> bytes:
        return await run_program(
            self.target, program, [self.cluster_dir, *args], input=input, timeout=timeout, options=self.options
        )

    async def run(self, command: str, timeout: float | None = None) -> CommandResult:
        """Run a shell command line on the node (for backends' own checks)."""
        return await run(self.target, command, timeout=timeout, options=self.options)

    # -- NodeAgent ---------------------------------------------------------------------------------------

    async def put_files(self, files: dict[str, bytes]) -> None:
        await self._program(PUT, input=tar_files(files))

    async def start_phase(self, phase: str, script: str, env: dict[str, str]) -> int:
        bad = [key for key in env if not ENV_NAME.match(key)]
        if bad:
            raise ValueError(f"invalid environment variable name(s): {', '.join(map(repr, bad))}")
        full_env = {"PYTHONUNBUFFERED": "1", **env, PROCESS_TAG_VAR: f"{self.tag}:{phase}"}
        payload = tar_files(
            {
                f"{phase}.sh": script.encode(),
                f"{phase}.env": env_file_text(full_env).encode(),
                "wrapper.sh": WRAPPER.encode(),
            }
        )
        out = await self._program(START, phase, self.workdir, input=payload)
        try:
            return int(out.split()[-1])
        except (IndexError, ValueError) as err:
            raise RemoteCommandError(f"{self.target}: phase {phase} was claimed but never started") from err

    async def phase_status(self, phase: str) -> PhaseStatus:
        return parse_status((await self._program(STATUS, phase)).decode())

    async def read_log(self, phase: str, offset: int, limit: int) -> bytes:
        return await self._program(READ_LOG, phase, str(int(offset)), str(int(limit)))

    async def follow_log(self, phase: str, offset: int) -> SSHLogStream:
        command = _program_command(FOLLOW, [self.cluster_dir, phase, str(int(offset))])
        return await SSHLogStream.open(self.target, command, self.options)

    async def stop_phase(self, phase: str, grace: float = STOP_GRACE_SECONDS) -> None:
        await self._program(STOP, phase, self.tag, str(int(grace)), timeout=self.options.command_timeout + grace)

    async def terminate(self, grace: float = 3.0, remove: Iterable[str] = (), tag_prefix: str | None = None) -> None:
        """Stop every phase of this node (TERM, KILL after `grace` s), kill every process whose tag starts
        with `tag_prefix` (default: this node's phases), and remove the cluster directory plus `remove`
        (e.g. the workdir). Idempotent."""
        paths = [remote_path(p) for p in remove]
        for path in paths:
            norm = os.path.normpath(path)
            if norm in (".", "/") or norm.startswith(".."):
                raise ValueError(f"refusing to remove {path!r} on {self.target}")
        prefix = tag_prefix if tag_prefix is not None else f"{self.tag}:"
        await self._program(TERMINATE, prefix, str(int(grace)), *paths, timeout=self.options.command_timeout + grace)

    async def sync_dir(self, local_src: str, dest: str) -> None:
        """Copy the contents of `local_src` into `dest` (created if missing); existing files are
        overwritten, others kept."""
        await sync(self.target, local_src, dest, directory=True, options=self.options)

    async def sync_file(self, local_src: str, dest: str) -> None:
        await sync(self.target, local_src, dest, directory=False, options=self.options)


# Where clusters' phase files live on a node, relative to the login home.
CLUSTERS_DIR = ".tsky/clusters"


def cluster_dir(cluster_name: str) -> str:
    return f"{CLUSTERS_DIR}/{cluster_name}"


def cluster_node(target: SSHTarget, cluster_name: str, rank: int, options: SSHOptions) -> SSHNodeAgent:
    """The agent of node `rank` of a cluster: phase files under ~/.tsky/clusters/<cluster>/<rank>@<host>.

    Keyed by rank and host, not only by cluster: nodes often share their home (NFS /home on premises),
    and each must start and re-attach to its own processes. Derived from the cluster's record alone, so
    a watcher on any worker finds the same directory."""
    node_dir = f"{cluster_dir(cluster_name)}/{rank}@{target.host}:{target.port}"
    return SSHNodeAgent(target, node_dir, f"{cluster_name}/{rank}", options=options)


# -- copying files -------------------------------------------------------------------------------------


async def sync(target: SSHTarget, local_src: str, dest: str, *, directory: bool, options: SSHOptions) -> None:
    """Copy a local directory's contents (or one file) to `dest` on the node: rsync over ssh when both
    ends have it and the node is reached with a key, else SFTP."""
    remote = remote_path(dest)
    parent = remote if directory else (os.path.dirname(remote.rstrip("/")) or ".")
    await run_program(target, 'mkdir -p -- "$1"', [parent], options=options)
    if options.use_rsync and target.password is None and await _rsync_available(target, options):
        try:
            await _rsync(target, local_src, remote, directory=directory, options=options)
            return
        except RemoteCommandError as err:
            logger.warning("rsync to %s failed, copying over SFTP instead: %s", target, err)
    await _sftp_copy(target, local_src, remote, directory=directory, options=options)


async def _rsync_available(target: SSHTarget, options: SSHOptions) -> bool:
    if not (shutil.which("rsync") and shutil.which("ssh")):
        return False
    pooled, _ = await _connection(target, options)
    if pooled.has_rsync is None:
        result = await run(target, "command -v rsync >/dev/null", options=options)
        pooled.has_rsync = result.exit_status == 0
    return pooled.has_rsync


def _ssh_command(target: SSHTarget, options: SSHOptions) -> list[str]:
    cmd = ["ssh", "-p", str(target.port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"]
    cmd += ["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
    cmd += ["-o", f"ConnectTimeout={int(options.connect_timeout)}"]
    cmd += ["-o", f"ServerAliveInterval={int(options.keepalive_interval)}"]
    if target.identity_file:
        cmd += ["-i", os.path.expanduser(target.identity_file), "-o", "IdentitiesOnly=yes"]
    if target.user:
        cmd += ["-l", target.user]
    return cmd


async def _rsync(target: SSHTarget, local_src: str, remote: str, *, directory: bool, options: SSHOptions) -> None:
    host = f"[{target.host}]" if ":" in target.host else target.host
    src = local_src.rstrip("/") + "/" if directory else local_src
    dst = f"{host}:{remote.rstrip('/') + '/' if directory else remote}"
    proc = await asyncio.create_subprocess_exec(
        "rsync",
        "-rlpt",
        "-s",  # file names reach the remote side as data, never through its shell
        "-e",
        shlex.join(_ssh_command(target, options)),
        src,
        dst,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await proc.communicate()
    if proc.returncode != 0:
        raise RemoteCommandError(f"rsync exited {proc.returncode}: {stderr.decode(errors='replace').strip()}")


async def _sftp_copy(target: SSHTarget, local_src: str, remote: str, *, directory: bool, options: SSHOptions) -> None:
    pooled, _ = await _connection(target, options)
    try:
        async with pooled.channels, pooled.conn.start_sftp_client() as sftp:
            if not directory:
                await sftp.put(local_src, remote, preserve=True)
                return
            root = Path(local_src)
            for here, dirs, files in os.walk(root):
                rel = Path(here).relative_to(root)
                base = remote if str(rel) == "." else f"{remote.rstrip('/')}/{rel.as_posix()}"
                await sftp.makedirs(base, exist_ok=True)
                plain = []
                for name in [*files, *dirs]:
                    local = Path(here) / name
                    if local.is_symlink():
                        path = f"{base}/{name}"
                        if await sftp.lexists(path):
                            await sftp.remove(path)
                        await sftp.symlink(os.readlink(local), path)
                    elif name in files:
                        plain.append(str(local))
                dirs[:] = [d for d in dirs if not (Path(here) / d).is_symlink()]
                if plain:
                    await sftp.put(plain, base, preserve=True)
    except (OSError, asyncssh.Error) as err:
        raise NodeUnreachable(f"{target}: SFTP copy of {local_src} failed: {err}") from err


# -- helpers for cloud backends ------------------------------------------------------------------------


async def wait_reachable(target: SSHTarget, options: SSHOptions, timeout: float, interval: float = 2.0) -> None:
    """Wait until a booting node accepts SSH and runs a command; NodeUnreachable after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await run(target, "true", options=options, timeout=options.command_timeout)
            return
        except NodeUnreachable:
            if time.monotonic() + interval > deadline:
                raise
        await asyncio.sleep(interval)
