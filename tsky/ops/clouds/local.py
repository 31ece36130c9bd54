"""The `local` infra: a simulated multi-region cloud made of directories and process groups on this host.

It is the embedded default and the workhorse of the tests. A cluster is a directory under
`$TSKY_HOME/clusters/<name>/` holding `cluster.json` and one directory per node; a node's processes are
detached process groups. Regions have a node capacity (a full region raises `CapacityError`) and may
offer spot, which `preempt()` (`tsky debug preempt`) or a configured random chance takes away: the
node's processes are killed and it reports PREEMPTED, exactly the evidence a cloud gives.

It is a simulator: nodes share this host's CPUs, memory and filesystem.

Why one module of this size: it is one `Backend` (see `base.py`), and a backend is one module by design
(`get_backend` loads it by name); its parts (regions, nodes, processes, preemption) share one on-disk layout.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import hashlib
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tsky.contract.activity_io import STOP_GRACE_SECONDS, ClusterInfo, JobMeta, NodeInfo
from tsky.ops.clouds.base import CapacityError, ClusterRecord, PhaseStatus, PrecheckError, owner_of
from tsky.ops.clouds.phases import (
    KILLED_EXIT_CODE,
    MOUNTS_FILE,
    PROCESS_TAG_VAR,
    WRAPPER,
    kill_tagged,
    pid_alive,
    proc_start_time,
)
from tsky.spec.requests import Candidate
from tsky.spec.settings import LocalRegion, Settings
from tsky.spec.status import NodeState

NAME = "local"
PREEMPTED_MARKER = "PREEMPTED"

# Popen objects of phases this process started, so their exit is reaped (no zombies) while we live.
_children: dict[int, subprocess.Popen[bytes]] = {}

# The environment a node's processes start from: what a login shell on a fresh machine would have.
_BASE_ENV_KEYS = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "SHELL", "TMPDIR", "TERM", "TZ")


def clusters_dir(settings: Settings) -> Path:
    return settings.home / "clusters"


class LocalNodeAgent:
    """One node: its directory is its disk; phases are detached process groups."""

    def __init__(self, root: Path, tag: str):
        self.root = root
        self.dir = root / ".tsky"
        self.workdir = root / "sky_workdir"
        self.tag = tag

    def _path(self, phase: str, suffix: str) -> Path:
        return self.dir / f"{phase}.{suffix}"

    async def put_files(self, files: dict[str, bytes]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            path = self.dir / name
            path.write_bytes(data)
            path.chmod(0o600)

    async def sync_dir(self, local_src: str, dest: str) -> None:
        target = self.host_path(dest)
        await asyncio.to_thread(shutil.copytree, local_src, target, symlinks=True, dirs_exist_ok=True)
        self._bind_if_absolute(target, dest)

    async def sync_file(self, local_src: str, dest: str) -> None:
        target = self.host_path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.copy2, local_src, target)
        self._bind_if_absolute(target, dest)

    def host_path(self, dest: str) -> Path:
        """Where this node keeps `dest`. Relative and `~/` destinations land in the node's directory (its
        home); absolute ones under its `fs/` and are bound at `dest` for its phases only, so nodes that
        share this host never see (or clobber) each other's `/data` and the host's is left alone."""
        if dest.startswith("~/"):
            dest = dest[2:]
        path = Path(dest)
        return self.root / "fs" / path.relative_to("/") if path.is_absolute() else self.root / path

    def _bind_if_absolute(self, target: Path, dest: str) -> None:
        if Path(dest).is_absolute():
            self.mount(target, dest)

    def storage_cache(self, dest: str) -> Path:
        """A node-local directory holding a cached copy of the bucket mounted at `dest`."""
        name = hashlib.sha256(dest.encode()).hexdigest()[:16]
        return self.dir / "storage" / name

    def mount(self, source: Path, dest: str) -> None:
        """Show `source` (a directory or file on this host) at the absolute path `dest` to this node's
        phases (in their private mount namespace). Idempotent; a later source for `dest` replaces it."""
        path = Path(dest)
        if not path.is_absolute() or ".." in path.parts or str(path) != dest or "\t" in dest or "\n" in dest:
            raise PrecheckError(f"mount path {dest!r} must be a plain absolute path (no tabs or newlines)")
        if path == Path("/") or self.root.is_relative_to(path):
            raise PrecheckError(
                f"mount path {dest} would hide tsky's own directory {self.root} from the job: choose a path "
                "outside it (e.g. /data)"
            )
        mounts = self._read_mounts()
        mounts[dest] = str(source)

        def redundant(d: str, src: str) -> bool:
            # Under a parent bound to the directory that already holds it: the parent's bind shows it.
            return any(d.startswith(a + "/") and src == mounts[a] + d[len(a) :] for a in mounts if a != d)

        kept = {d: src for d, src in mounts.items() if not redundant(d, src)}
        lines = [f"{src}\t{d}\n" for d, src in sorted(kept.items(), key=lambda i: (i[0].count("/"), i[0]))]
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"{MOUNTS_FILE}.tmp"
        tmp.write_text("".join(lines))
        tmp.rename(self.dir / MOUNTS_FILE)

    def _read_mounts(self) -> dict[str, str]:
        try:
            text = (self.dir / MOUNTS_FILE).read_text()
        except FileNotFoundError:
            return {}
        mounts = {}
        for line in text.splitlines():
            src, _, dest = line.partition("\t")
            if dest:
                mounts[dest] = src
        return mounts

    async def start_phase(self, phase: str, script: str, env: dict[str, str]) -> int:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            # Exactly one start wins, even when a retried activity races the first one.
            self._path(phase, "started").mkdir()
        except FileExistsError:
            return await self._wait_pid(phase)
        self._path(phase, "sh").write_text(script)
        wrapper = self.dir / "wrapper.sh"
        wrapper.write_text(WRAPPER)
        full_env = {k: os.environ[k] for k in _BASE_ENV_KEYS if k in os.environ}
        full_env.update(env)
        full_env[PROCESS_TAG_VAR] = f"{self.tag}:{phase}"
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        proc = subprocess.Popen(
            ["bash", str(wrapper), str(self.dir), phase, str(self.workdir)],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # own process group: killed as one, survives this worker
        )
        _children[proc.pid] = proc
        tmp = self._path(phase, "pid.tmp")
        tmp.write_text(f"{proc.pid} {proc_start_time(proc.pid) or ''}")
        tmp.rename(self._path(phase, "pid"))
        return proc.pid

    async def _wait_pid(self, phase: str) -> int:
        for _ in range(200):
            pid, _start = self._read_pid(phase)
            if pid is not None:
                return pid
            await asyncio.sleep(0.05)
        raise RuntimeError(f"phase {phase} on {self.root} was claimed but never started")

    def _read_pid(self, phase: str) -> tuple[int | None, str | None]:
        try:
            pid_text, _, start = self._path(phase, "pid").read_text().partition(" ")
        except FileNotFoundError:
            return None, None
        return int(pid_text), start.strip() or None

    async def phase_status(self, phase: str) -> PhaseStatus:
        if not self._path(phase, "started").exists():
            return PhaseStatus(started=False)
        pid, start = self._read_pid(phase)
        exit_code: int | None = None
        with suppress(FileNotFoundError, ValueError):
            exit_code = int(self._path(phase, "exit").read_text().strip())
        if pid is not None and pid in _children and _children[pid].poll() is not None:
            del _children[pid]  # reaped
        try:
            log_size = self._path(phase, "log").stat().st_size
        except FileNotFoundError:
            log_size = 0
        alive = pid is not None and exit_code is None and pid_alive(pid, start)
        if not alive and exit_code is None and self._path(phase, "stopped").exists():
            exit_code = KILLED_EXIT_CODE  # tsky stopped it: a known ending, not a vanished process
        return PhaseStatus(started=True, pid=pid, alive=alive, exit_code=exit_code, log_size=log_size)

    async def read_log(self, phase: str, offset: int, limit: int) -> bytes:
        try:
            with self._path(phase, "log").open("rb") as f:
                f.seek(offset)
                return f.read(limit)
        except FileNotFoundError:
            return b""

    async def stop_phase(self, phase: str, grace: float = STOP_GRACE_SECONDS) -> None:
        pid, start = self._read_pid(phase)
        if pid is not None and pid_alive(pid, start):
            self._path(phase, "stopped").touch()
            await _kill_group(pid, start, grace)
        await _strays.kill(self.tag.partition("/")[0], lambda tag: tag == f"{self.tag}:{phase}")

    def _live_groups(self) -> list[tuple[int, str | None]]:
        groups = []
        if self.dir.exists():
            for pid_file in self.dir.glob("*.pid"):
                pid, start = self._read_pid(pid_file.stem)
                if pid is not None and pid_alive(pid, start):
                    groups.append((pid, start))
        return groups

    async def terminate(self, grace: float) -> None:
        """Stop every phase of this node (teardown); the caller sweeps stray processes."""
        await asyncio.gather(*(_kill_group(pid, start, grace) for pid, start in self._live_groups()))

    def kill_all(self) -> None:
        """Kill every process of this node at once, as a preemption does."""
        for pid, _start in self._live_groups():
            _signal_group(pid, signal.SIGKILL)
        kill_tagged(lambda tag: tag.startswith(f"{self.tag}:"))


def _signal_group(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _kill_group(pid: int, start: str | None, grace: float) -> None:
    """SIGTERM the group, give it `grace` seconds, then SIGKILL."""
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pid_alive(pid, start):
        await asyncio.sleep(0.1)
    _signal_group(pid, signal.SIGKILL)
    if pid in _children:
        _children.pop(pid).wait()


# cluster name -> (which of its processes' tags to kill, who waits for it)
_MIN_SCAN_INTERVAL = 0.25  # seconds from one scan's start to the next one's
_Requests = dict[str, list[tuple[Callable[[str], bool], asyncio.Future[None]]]]


class _StraySweeps:
    """Kills the processes that left their phase's group (daemonised) for many callers with one scan
    of /proc: reading every process's environment costs tens of ms on a busy host, and a bulk cancel of
    a thousand jobs asks for it twice per job. A request is served by the next scan that starts after
    it arrived, so every process that existed when it asked is seen, as with a scan of its own."""

    def __init__(self) -> None:
        self._waiting: _Requests = {}
        self._scanner: asyncio.Task[None] | None = None

    async def kill(self, cluster: str, matches: Callable[[str], bool]) -> None:
        """SIGKILL the tagged processes of `cluster` (tags `<cluster>/<rank>@<owner>:<phase>`) that match."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._waiting.setdefault(cluster, []).append((matches, done))
        if self._scanner is None or self._scanner.done() or self._scanner.get_loop() is not loop:
            self._scanner = loop.create_task(self._scan())
        await done

    async def _scan(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            started = loop.time()
            batch, self._waiting = self._waiting, {}
            error: BaseException | None = None
            try:
                await asyncio.to_thread(kill_tagged, functools.partial(_wanted, batch))
            except Exception as err:
                error = err
            for waiters in batch.values():
                for _, done in waiters:
                    if done.done():
                        continue  # its caller was cancelled meanwhile
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)
            if self._waiting:  # let more gather: scans back to back would keep a core busy in a bulk cancel
                await asyncio.sleep(started + _MIN_SCAN_INTERVAL - loop.time())


def _wanted(requests: _Requests, tag: str) -> bool:
    return any(matches(tag) for matches, _ in requests.get(tag.partition("/")[0], ()))


_strays = _StraySweeps()


class LocalBackend:
    name = NAME
    state_check_seconds = 0.0  # reading a marker file costs nothing: check on every poll

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = clusters_dir(settings)
        # Process tags name the cluster and this installation: two TSKY_HOMEs on one machine may both
        # have a cluster `train-1`, and a teardown must never kill the other's processes.
        self.owner = owner_of(settings)

    # -- helpers -----------------------------------------------------------------------------------

    def _region(self, name: str) -> LocalRegion:
        for region in self.settings.local.regions:
            if region.name == name:
                return region
        raise PrecheckError(f"local region {name!r} is not declared in {self.settings.config_file}")

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _read_info(self, cluster_name: str) -> ClusterInfo | None:
        try:
            return ClusterInfo.model_validate_json((self.root / cluster_name / "cluster.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _nodes_in_region(self, region: str) -> int:
        used = 0
        for entry in os.scandir(self.root):
            info = self._read_info(entry.name) if entry.is_dir() else None
            if info is not None and info.region == region:
                used += len(info.nodes)
        return used

    def node(self, cluster: ClusterInfo, rank: int) -> LocalNodeAgent:
        tag = f"{cluster.name}/{rank}@{self.owner}"
        return LocalNodeAgent(self.root / cluster.name / f"node-{rank}", tag=tag)

    # -- protocol ----------------------------------------------------------------------------------

    async def provision(self, cluster_name: str, candidate: Candidate, num_nodes: int, meta: JobMeta) -> ClusterInfo:
        region = self._region(candidate.region)
        if candidate.use_spot and not region.spot:
            raise PrecheckError(f"local region {region.name} offers no spot capacity")
        with self._lock():
            existing = self._read_info(cluster_name)
            if existing is not None:
                if existing.region == candidate.region:
                    return existing  # a retried provision adopts what the first try made
                await self.teardown(cluster_name, existing)
            if region.capacity_nodes is not None:
                free = region.capacity_nodes - self._nodes_in_region(region.name)
                if free < num_nodes:
                    raise CapacityError(
                        f"local region {region.name} is full: {num_nodes} node(s) requested, {free} free"
                    )
            info = ClusterInfo(
                name=cluster_name,
                backend=NAME,
                region=candidate.region,
                zone=candidate.zone,
                instance_type=candidate.instance_type,
                use_spot=candidate.use_spot,
                nodes=[
                    NodeInfo(rank=r, ip="127.0.0.1", host_id=str(self.root / cluster_name / f"node-{r}"))
                    for r in range(num_nodes)
                ],
                # A pool's worker belongs to its pool, not to the jobs it runs one after another.
                extra={"pool": meta.pool}
                if meta.pool
                else {"job_id": str(meta.job_id), "task_index": str(meta.task_index)},
            )
            for r in range(num_nodes):
                (self.root / cluster_name / f"node-{r}" / "sky_workdir").mkdir(parents=True, exist_ok=True)
            tmp = self.root / cluster_name / "cluster.json.tmp"
            tmp.write_text(info.model_dump_json())
            tmp.rename(self.root / cluster_name / "cluster.json")
        if region.provision_seconds:
            await asyncio.sleep(region.provision_seconds)  # the simulated VMs boot
        return info

    async def node_states(self, cluster: ClusterInfo, fresh: bool = False) -> list[NodeState]:
        chance = self.settings.local.spot_preemption_probability
        if cluster.use_spot and chance and random.random() < chance:
            preempt_cluster(self, cluster)
        states = []
        for node in cluster.nodes:
            root = Path(node.host_id)
            if (root / PREEMPTED_MARKER).exists():
                states.append(NodeState.PREEMPTED)
            elif not root.exists():
                states.append(NodeState.GONE)
            else:
                states.append(NodeState.UP)
        return states

    async def teardown(self, cluster_name: str, cluster: ClusterInfo | None) -> None:
        info = cluster or self._read_info(cluster_name)
        directory = self.root / cluster_name
        if info is not None:
            await asyncio.gather(*(self.node(info, r).terminate(grace=1.0) for r in range(len(info.nodes))))
        await _strays.kill(cluster_name, lambda tag: f"@{self.owner}:" in tag)
        await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
        if directory.exists():
            raise RuntimeError(f"could not remove {directory}")

    async def list_clusters(self) -> list[ClusterRecord]:
        records: list[ClusterRecord] = []
        if not self.root.exists():
            return records
        for entry in os.scandir(self.root):
            info = self._read_info(entry.name) if entry.is_dir() else None
            if info is None:
                continue
            preempted = any((Path(n.host_id) / PREEMPTED_MARKER).exists() for n in info.nodes)
            job_id = info.extra.get("job_id")
            records.append(
                ClusterRecord(
                    name=info.name,
                    backend=NAME,
                    region=info.region,
                    job_id=int(job_id) if job_id else None,
                    nodes=len(info.nodes),
                    state="PREEMPTED" if preempted else "UP",
                    launched_at=entry.stat().st_mtime,
                    extra={"instance_type": info.instance_type, "spot": str(info.use_spot)},
                    pool=info.extra.get("pool"),
                )
            )
        return records


def preempt_cluster(backend: LocalBackend, cluster: ClusterInfo) -> None:
    """What a cloud does to a spot VM: the node's processes die and the node reports PREEMPTED."""
    for node in cluster.nodes:
        root = Path(node.host_id)
        if root.exists():
            (root / PREEMPTED_MARKER).touch()
            backend.node(cluster, node.rank).kill_all()


def preempt_job(settings: Settings, job_id: int) -> list[str]:
    """Preempt every live local cluster of a job; returns their names (`tsky debug preempt`)."""
    backend = LocalBackend(settings)
    names: list[str] = []
    if not backend.root.exists():
        return names
    for entry in sorted(os.scandir(backend.root), key=lambda e: e.name):
        info = backend._read_info(entry.name) if entry.is_dir() else None
        if info is not None and info.extra.get("job_id") == str(job_id):
            preempt_cluster(backend, info)
            names.append(info.name)
    return names


def preempt_cluster_named(settings: Settings, name: str) -> bool:
    """Preempt one live local cluster by name (a pool worker, which no job owns); False if none."""
    backend = LocalBackend(settings)
    info = backend._read_info(name) if backend.root.exists() else None
    if info is None:
        return False
    preempt_cluster(backend, info)
    return True


def make_backend(settings: Settings) -> LocalBackend:
    return LocalBackend(settings)
