"""What the benchmarks share: a throw-away tsky stack (dev server + worker processes in a temp TSKY_HOME),
resource sampling by pid, and visibility counts.

Everything listens on 127.0.0.1 on free ports; every process started here is stopped by pid, every local
cluster torn down and the temp directory removed, whatever happens.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from temporalio.client import Client

from tests.harness import NO_CLOUD_METADATA
from tsky.client.connect import connect
from tsky.client.embedded import start_server
from tsky.spec.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident set size of one process, MiB (0 once it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine() -> str:
    """The machine and its load, to print beside every figure."""
    cpus = os.cpu_count()
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        "unknown CPU",
    )
    load = os.getloadavg()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{stamp}; {cpus} cores ({model}), {mem:.0f} GiB; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


class Sampler:
    """Samples RSS of named processes in a thread; keeps the peak of each group (summed over its pids)."""

    def __init__(self, interval: float = 0.5):
        self.groups: dict[str, list[int]] = {}
        self.peak: dict[str, float] = {}
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, group: str, pid: int) -> None:
        self.groups.setdefault(group, []).append(pid)

    def now(self, group: str) -> float:
        return sum(rss_mib(pid) for pid in self.groups.get(group, []))

    def cpu(self, group: str) -> float:
        return sum(cpu_seconds(pid) for pid in self.groups.get(group, []))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for group in list(self.groups):
                self.peak[group] = max(self.peak.get(group, 0.0), self.now(group))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Stack:
    """A dev server (SQLite file, as the embedded default) and `workers` tsky worker processes."""

    workers: int = 1
    config: dict[str, Any] = field(default_factory=dict)
    keep: bool = False
    home: Path = field(init=False)
    settings: Settings = field(init=False)
    server_pid: int | None = None
    worker_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    extra_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sampler: Sampler = field(default_factory=Sampler)
    metrics_ports: list[int] = field(default_factory=list)
    address: str = ""

    def __enter__(self) -> Stack:
        self.home = Path(tempfile.mkdtemp(prefix="tsky-bench-"))
        (self.home / "config.yaml").write_text(yaml.safe_dump(self.config))
        os.environ["TSKY_HOME"] = str(self.home)
        os.environ.update(NO_CLOUD_METADATA)  # inherited by the server, the workers and every CLI run
        for var in [v for v in os.environ if v.startswith("TSKY_") and v != "TSKY_HOME"]:
            del os.environ[var]
        self.settings = load_settings(self.home)
        self.sampler.start()
        try:
            state, _ = start_server(self.settings)
            self.server_pid = state.pid
            self.address = state.address
            assert self.server_pid is not None
            self.sampler.watch("server", self.server_pid)
            for index in range(self.workers):
                self.start_worker(index)
        except BaseException:
            self.__exit__()
            raise
        return self

    def tsky(self, *args: str, timeout: float = 600) -> tuple[float, subprocess.CompletedProcess[str]]:
        """Run the tsky CLI against this stack (as against an external Temporal: it starts nothing);
        returns its wall time and result."""
        env = dict(os.environ, TSKY_HOME=str(self.home), TSKY_TEMPORAL_ADDRESS=self.address, COLUMNS="200")
        started = time.monotonic()
        done = subprocess.run([str(Path(sys.executable).parent / "tsky"), *args], env=env, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
        return time.monotonic() - started, done

    def start_worker(self, index: int) -> subprocess.Popen[bytes]:
        log = self.home / "logs" / f"worker-{index}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.metrics_ports.append(port)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tsky.worker"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, TSKY_HOME=str(self.home), TSKY_METRICS_PORT=str(port)),
                start_new_session=True,
            )
        self.worker_procs.append(proc)
        self.sampler.watch("workers", proc.pid)
        return proc

    def spawn(self, args: list[str], group: str) -> subprocess.Popen[bytes]:
        """Another process of the benchmark's own (e.g. a trivial-workflow worker), stopped at exit."""
        with (self.home / "logs" / f"{group}.log").open("ab") as out:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=ROOT)  # fmt: skip
        self.extra_procs.append(proc)
        self.sampler.watch(group, proc.pid)
        return proc

    async def client(self) -> Client:
        return await connect(self.settings)

    def __exit__(self, *exc: object) -> None:
        """Stop everything this stack started, by pid, whatever state it is in."""
        self.sampler.stop()
        for proc in [*self.extra_procs, *self.worker_procs]:
            _stop(proc, timeout=40)
        try:
            from tsky.ops.clouds.local import LocalBackend

            backend = LocalBackend(self.settings)

            async def teardown() -> None:
                for record in await backend.list_clusters():
                    await backend.teardown(record.name, None)

            asyncio.run(teardown())
        except Exception as err:  # never leave processes behind because of a teardown problem
            print(f"(local teardown failed: {err!r}; killing the stack's processes by pid)", flush=True)
        self._kill_leftovers()
        if self.server_pid is not None:
            _stop_pid(self.server_pid, timeout=15)
        if self.keep:
            print(f"(kept {self.home})")
        else:
            shutil.rmtree(self.home, ignore_errors=True)

    def job_processes(self, *, with_home: bool = False) -> list[int]:
        """Pids of the job processes tagged with this installation (local clusters' tags end in
        `@<owner id>`), and with `with_home` every other process carrying this stack's TSKY_HOME."""
        home = f"TSKY_HOME={self.home}\0".encode()
        from tsky.contract.ids import owner_id

        owner = owner_id(None, "default", socket.gethostname(), str(self.home))
        tag = re.compile(rb"TSKY_PROCESS_TAG=[^\0]*@" + owner.encode() + rb"\0")
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) in (os.getpid(), self.server_pid):
                continue
            try:
                environ = Path(entry.path, "environ").read_bytes() + b"\0"
            except OSError:
                continue
            if tag.search(environ) or (with_home and home in environ):
                found.append(int(entry.name))
        return found

    def _kill_leftovers(self) -> None:
        """SIGKILL any process that still carries this stack's TSKY_HOME or its job tag."""
        for pid in self.job_processes(with_home=True):
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _stop_pid(pid: int, timeout: float) -> None:
    """SIGTERM a child of ours, wait for it (reaping it), SIGKILL it after `timeout`."""
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: poll for it to go
            done = 0 if Path(f"/proc/{pid}").exists() else pid
        if done:
            return
        time.sleep(0.1)
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(ports: list[int]) -> dict[str, float]:
    """The workers' Prometheus metrics, summed over workers: `name{labels}` -> value."""
    totals: dict[str, float] = {}
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
                text = reply.read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                try:
                    totals[key] = totals.get(key, 0.0) + float(value)
                except ValueError:
                    continue
    return totals


def metric(scraped: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the series of `name` whose labels include `labels`."""
    total = 0.0
    for key, value in scraped.items():
        base, _, rest = key.partition("{")
        if base == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


async def count(client: Client, query: str) -> int:
    return (await client.count_workflows(query)).count


async def count_status(client: Client, status: str) -> int:
    return await count(client, f"WorkflowType = 'ManagedJob' AND TskyStatus = '{status}'")


def tagged_processes(prefix: str = "") -> int:
    """How many processes carry a tsky process tag (job processes on the local infra)."""
    needle = f"TSKY_PROCESS_TAG={prefix}".encode()
    found = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if needle in Path(entry.path, "environ").read_bytes():
                found += 1
        except OSError:
            continue
    return found


def fmt_s(seconds: float) -> str:
    return f"{seconds:.1f} s"


async def wait_for(
    what: str, goal: int, probe: Callable[[], Awaitable[int]], timeout: float, interval: float = 1.0
) -> float:
    """Poll `probe()` until it reaches `goal`; seconds it took. Prints progress every 10 s."""
    started = shown = time.monotonic()
    while True:
        value = await probe()
        now = time.monotonic()
        if value >= goal:
            return now - started
        if now - shown >= 10:
            print(f"  ... {value}/{goal} {what} after {now - started:.0f} s", flush=True)
            shown = now
        if now - started > timeout:
            raise SystemExit(f"gave up: only {value}/{goal} {what} after {timeout:.0f} s")
        await asyncio.sleep(interval)
