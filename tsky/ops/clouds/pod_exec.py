"""Running tsky's phases in a pod through the pod exec API: the `NodeAgent` of the `k8s` infra.

Each pod runs an idle entrypoint; tsky execs the ssh runner's node programs in it (`node_programs.py`),
with the same on-node layout under the pod's home (a mkdir claim for the one start that wins, pid / exit /
log files, process tags). So a retried watcher on any worker re-attaches to the running phase and resumes
its log from an offset exactly as on ssh, aws and gcp.

Exec is a websocket (`v4`/`v5.channel.k8s.io`); data for a command's stdin goes through `head -c N`, so the
command sees end-of-input without the v5-only stdin close. The exit code comes from the Status object on
the error channel. Client calls block: they run on this module's thread pool (`in_thread`), which the
backend shares.

A running phase's log is streamed, not polled (`follow_log`: a `FollowingAgent`): one exec websocket per
pod and phase runs the same `FOLLOW` program as over SSH, opened on the event loop (`exec_socket.py`), so a
worker watching 1,000 pods holds no thread for them and runs no command per poll. Closing the stream, or
losing its connection, ends the follower's stdin, which ends the follower.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import os
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream

from tsky.contract.activity_io import STOP_GRACE_SECONDS
from tsky.ops.clouds.base import BackendError, PhaseStatus
from tsky.ops.clouds.exec_socket import PodLogStream, exec_request, exit_code, follow

# The node programs and their helpers are the ssh runner's: one implementation of the on-node protocol.
from tsky.ops.clouds.node_programs import (
    ENV_NAME,
    FOLLOW,
    PUT,
    READ_LOG,
    START,
    STATUS,
    STOP,
    RemoteCommandError,
    parse_status,
    remote_path,
    tar_files,
)
from tsky.ops.clouds.phases import PROCESS_TAG_VAR, WRAPPER, env_file_text
from tsky.ops.clouds.ssh_runner import DEFAULT_WORKDIR, CommandResult, NodeUnreachable

CONTAINER = "tsky"  # the pod's one container, where phases run
NODE_DIR = ".tsky"  # phase files, under the pod's home
EXEC_TIMEOUT = 60.0  # bound on each of tsky's own commands in a pod

# Reads stdin through `head -c N` (end of input without closing the stream) from the pod's home.
_LAUNCH_WITH_INPUT = 'cd "$HOME" 2>/dev/null; n=$1; shift; head -c "$n" | bash -c "$@"'
_LAUNCH = 'cd "$HOME" 2>/dev/null; exec bash -c "$@"'
_EXTRACT = 'd=$1; case $d in /*) ;; *) d=$HOME/$d ;; esac; mkdir -p "$d" && tar -x -o -f - -C "$d"'

T = TypeVar("T")
_pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="tsky-k8s")


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on the Kubernetes client's thread pool."""
    return await asyncio.get_running_loop().run_in_executor(_pool, functools.partial(fn, *args, **kwargs))


def api_message(err: ApiException) -> str:
    """The message of an API server's error (its Status JSON), else the HTTP reason."""
    try:
        return str(json.loads(err.body or "")["message"])
    except (TypeError, ValueError, KeyError):
        return str(err.reason or err)


def _launch(program: str, *args: str) -> list[str]:
    """The argv that runs one of tsky's bash programs with positional arguments, from the pod's home."""
    return ["bash", "-c", _LAUNCH, "tsky", program, "tsky", *args]


class PodAgent:
    """A `NodeAgent` for one pod: the ssh runner's node programs, run through the pod exec API."""

    def __init__(
        self, configuration: Callable[[], client.Configuration], context: str, namespace: str, pod: str, tag: str
    ):
        self.configuration = configuration  # the context's API configuration (a bad context raises at first use)
        self.context = context
        self.namespace = namespace
        self.pod = pod
        self.tag = tag

    def __str__(self) -> str:
        return f"pod {self.context}/{self.namespace}/{self.pod}"

    def _exec_blocking(self, argv: list[str], data: bytes | None, timeout: float) -> CommandResult:
        # A fresh ApiClient per exec: `stream()` swaps the client's request method while it connects,
        # which would hijack any other call sharing that client.
        api = client.CoreV1Api(client.ApiClient(self.configuration()))
        try:
            ws = stream(
                api.connect_get_namespaced_pod_exec,
                self.pod,
                self.namespace,
                command=argv,
                container=CONTAINER,
                stdin=data is not None,
                stdout=True,
                stderr=True,
                tty=False,
                _preload_content=False,
                binary=True,
            )
        except ApiException as err:
            raise NodeUnreachable(f"{self}: exec failed: {api_message(err)}") from err
        try:
            if data:
                for start in range(0, len(data), 1 << 20):
                    ws.write_stdin(data[start : start + (1 << 20)])
            deadline = time.monotonic() + timeout
            while ws.is_open():
                if time.monotonic() > deadline:
                    raise NodeUnreachable(f"{self}: command timed out after {timeout:.0f}s")
                ws.update(timeout=1)
            stdout, stderr, status = ws.read_stdout(0), ws.read_stderr(0), ws.read_channel(3, 0)
        except BackendError:
            raise
        except Exception as err:  # websocket-client's errors: the connection broke
            raise NodeUnreachable(f"{self}: exec connection failed: {err}") from err
        finally:
            ws.close()
        return CommandResult(exit_code(status, str(self)), bytes(stdout), bytes(stderr))

    async def run(self, argv: list[str], data: bytes | None = None, timeout: float = EXEC_TIMEOUT) -> CommandResult:
        """Run `argv` in the pod (from its home when launched through a program); stdin from `data`."""
        return await in_thread(self._exec_blocking, argv, data, timeout)

    async def _program(
        self, program: str, *args: str, data: bytes | None = None, timeout: float = EXEC_TIMEOUT
    ) -> bytes:
        if data is None:
            argv = _launch(program, *args)
        else:
            argv = ["bash", "-c", _LAUNCH_WITH_INPUT, "tsky", str(len(data)), program, "tsky", *args]
        result = await self.run(argv, data, timeout)
        if result.exit_status != 0:
            err = result.stderr.decode(errors="replace").strip()[-2000:]
            raise RemoteCommandError(f"{self}: remote command failed with status {result.exit_status}: {err}")
        return result.stdout

    # -- NodeAgent ---------------------------------------------------------------------------------------

    async def put_files(self, files: dict[str, bytes]) -> None:
        await self._program(PUT, NODE_DIR, data=tar_files(files))

    async def sync_dir(self, local_src: str, dest: str) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for entry in sorted(os.listdir(local_src)):
                tar.add(os.path.join(local_src, entry), arcname=entry)
        await self._program(_EXTRACT, remote_path(dest), data=buf.getvalue(), timeout=EXEC_TIMEOUT * 10)

    async def sync_file(self, local_src: str, dest: str) -> None:
        remote = remote_path(dest)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            tar.add(local_src, arcname=os.path.basename(remote.rstrip("/")))
        parent = os.path.dirname(remote.rstrip("/")) or "."
        await self._program(_EXTRACT, parent, data=buf.getvalue(), timeout=EXEC_TIMEOUT * 10)

    async def start_phase(self, phase: str, script: str, env: dict[str, str]) -> int:
        bad = [key for key in env if not ENV_NAME.match(key)]
        if bad:
            raise ValueError(f"invalid environment variable name(s): {', '.join(map(repr, bad))}")
        full_env = {"PYTHONUNBUFFERED": "1", **env, PROCESS_TAG_VAR: f"{self.tag}:{phase}"}
        files = {f"{phase}.sh": script.encode(), f"{phase}.env": env_file_text(full_env).encode()}
        payload = tar_files({**files, "wrapper.sh": WRAPPER.encode()})
        out = await self._program(START, NODE_DIR, phase, DEFAULT_WORKDIR, data=payload)
        try:
            return int(out.split()[-1])
        except (IndexError, ValueError) as err:
            raise RemoteCommandError(f"{self}: phase {phase} was claimed but never started") from err

    async def phase_status(self, phase: str) -> PhaseStatus:
        return parse_status((await self._program(STATUS, NODE_DIR, phase)).decode())

    async def read_log(self, phase: str, offset: int, limit: int) -> bytes:
        return await self._program(READ_LOG, NODE_DIR, phase, str(int(offset)), str(int(limit)))

    async def follow_log(self, phase: str, offset: int) -> PodLogStream:
        argv = _launch(FOLLOW, NODE_DIR, phase, str(int(offset)))
        request = await in_thread(lambda: exec_request(self.configuration(), self.namespace, self.pod, CONTAINER, argv))
        return await follow(request, str(self))

    async def stop_phase(self, phase: str, grace: float = STOP_GRACE_SECONDS) -> None:
        await self._program(STOP, NODE_DIR, phase, self.tag, str(int(grace)), timeout=EXEC_TIMEOUT + grace)
