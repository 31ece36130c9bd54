"""Test harness: a real Temporal dev server, a namespace per test, real worker processes, the real CLI.

Everything listens on 127.0.0.1 on ports picked free; everything a test starts, it stops (by pid).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from google.protobuf.duration_pb2 import Duration
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.client import Client

from tsky.client.connect import DATA_CONVERTER
from tsky.contract import search_attributes

BIN = Path(sys.executable).parent
TSKY = str(BIN / "tsky")
TEMPORAL = str(BIN / "temporal")
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# No cloud SDK in a test may probe an instance-metadata server (169.254.169.254, metadata.google.internal):
# set in this process (see conftest) and so in every process a test starts.
NO_CLOUD_METADATA = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_GCE_CHECK": "True",
    "GCE_METADATA_HOST": "127.0.0.1:9",
    "GCE_METADATA_IP": "127.0.0.1:9",
}


def embedded_env(home: Path) -> dict[str, str]:
    """The environment of a user with nothing but a TSKY_HOME: the embedded default, none of the session
    server's settings, this venv's `tsky` first on PATH, and no cloud metadata probes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSKY_")}
    env.update(TSKY_HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", **NO_CLOUD_METADATA)
    return env


@contextmanager
def embedded_home(tmp_path: Path) -> Iterator[Path]:
    """A fresh TSKY_HOME whose embedded stack (started by the commands run in it) is stopped afterwards,
    by the pids it recorded, whatever happened."""
    home = tmp_path / "tsky-home"
    try:
        yield home
    finally:
        subprocess.run([TSKY, "server", "down"], env=embedded_env(home), capture_output=True, timeout=60)


# Fast timings so recovery paths run in seconds; the values a test needs are overridden per test.
FAST_CONFIG: dict[str, Any] = {
    "jobs": {
        "watch": {"poll_seconds": 0.5, "heartbeat_timeout_seconds": 5},
        "status_check": {"min_elapsed_seconds": 2, "min_retries": 2},
        "launch_backoff": {"initial_seconds": 1, "multiplier": 1.5, "max_seconds": 3, "jitter": 0.2},
        # Off unless a test is about it: a sweeper lists every enabled infra, which must stay local here.
        "sweeper": {"enabled": False},
    },
    "worker": {"graceful_shutdown_seconds": 2, "sticky_schedule_to_start_seconds": 2},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def wait_until(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.2, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class DevServer:
    """`temporal server start-dev` (in memory; no Web UI unless `web_ui`) with tsky's search attributes."""

    def __init__(self, *extra_args: str, web_ui: bool = False) -> None:
        self.port = free_port()
        self.extra_args = list(extra_args)
        # The Web UI and its HTTP API on 127.0.0.1 (no news fetched from the internet), when asked for.
        self.ui_port = free_port() if web_ui else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.db: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, db: Path | None = None) -> None:
        self.db = db or self.db
        cmd = [TEMPORAL, "server", "start-dev", "--ip", "127.0.0.1", "--port", str(self.port)]
        if self.ui_port is None:
            cmd += ["--headless"]
        else:
            cmd += ["--ui-ip", "127.0.0.1", "--ui-port", str(self.ui_port), "--ui-disable-news-fetch"]
        cmd += ["--log-level", "error", *search_attributes.cli_flags(), *self.extra_args]
        if self.db is not None:
            cmd += ["--db-filename", str(self.db)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        asyncio.run(self._wait_ready())

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                await Client.connect(self.address)
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    async def create_namespace(self, name: str) -> None:
        client = await Client.connect(self.address)
        await client.workflow_service.register_namespace(
            RegisterNamespaceRequest(namespace=name, workflow_execution_retention_period=Duration(seconds=86400))
        )
        types = {key.name: IndexedValueType.ValueType(key.indexed_value_type.value) for key in search_attributes.ALL}
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=name, search_attributes=types)
        )


@dataclass
class WorkerProc:
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode


@dataclass
class TskyEnv:
    """One test's world: its own TSKY_HOME and namespace on the shared dev server."""

    home: Path
    server: DevServer
    namespace: str
    workers: list[WorkerProc] = field(default_factory=list)

    @property
    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TSKY_")}
        env.update(NO_CLOUD_METADATA)
        env["TSKY_HOME"] = str(self.home)
        env["COLUMNS"] = "200"  # wide tables: no wrapping in assertions
        return env

    def configure(self, extra: dict[str, Any] | None = None) -> None:
        config = deep_merge(FAST_CONFIG, {"temporal": {"address": self.server.address, "namespace": self.namespace}})
        config = deep_merge(config, extra or {})
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.yaml").write_text(yaml.safe_dump(config))

    def tsky(
        self, *args: str, input: str | None = None, timeout: float = 180, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TSKY, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environ,
            cwd=cwd or self.home,
        )

    def tsky_background(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [TSKY, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.environ,
            cwd=self.home,
        )

    def start_worker(self, extra_env: dict[str, str] | None = None) -> WorkerProc:
        log = self.home / "logs" / f"worker-{len(self.workers)}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tsky.worker"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.environ, **(extra_env or {})},
                start_new_session=True,
            )
        worker = WorkerProc(proc, log)
        self.workers.append(worker)
        return worker

    async def client(self) -> Client:
        return await Client.connect(self.server.address, namespace=self.namespace, data_converter=DATA_CONVERTER)

    def write(self, name: str, text: str) -> Path:
        path = self.home / name
        path.write_text(text)
        return path


def new_namespace() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def teardown_local_clusters(home: Path) -> None:
    """Kill whatever a failed test left running on the local infra (never leak processes)."""
    from tsky.ops.clouds.local import LocalBackend
    from tsky.spec.settings import load_settings

    backend = LocalBackend(load_settings(home))
    for record in asyncio.run(backend.list_clusters()):
        asyncio.run(backend.teardown(record.name, None))


@contextmanager
def world_on(server: DevServer, tmp_path: Path) -> Iterator[TskyEnv]:
    """A world on a dev server of the test's own (already started), in its default namespace. Afterwards
    its workers are killed, its local clusters torn down and the server stopped."""
    env = TskyEnv(home=tmp_path / "home", server=server, namespace="default")
    env.configure()
    try:
        yield env
    finally:
        for worker in env.workers:
            worker.kill9()
        teardown_local_clusters(env.home)
        server.stop()
