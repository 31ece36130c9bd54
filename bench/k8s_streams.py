"""What a streamed pod costs the worker: N log streams (one exec websocket each, `exec_socket.py`) of one
pod's phase, all live, each bringing a line a second. Prints the worker side's threads, RSS and CPU per
stream at rest.

`python -m bench.k8s_streams [N]` (default 200): the fake API server (`tests/backends/fake_k8s.py`) runs in
a process of its own on 127.0.0.1, so only the client's cost is measured here.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

from tests.harness import NO_CLOUD_METADATA
from tsky.ops.clouds.base import LogStream

WINDOW = 10.0  # seconds measured at rest


def _serve(root: str, pipe: Connection) -> None:
    from tests.backends.fake_k8s import FakeKube

    kube = FakeKube(Path(root) / "pods").start()
    pipe.send(str(kube.write_kubeconfig(Path(root) / "kubeconfig")))
    pipe.recv()  # until the bench is done
    kube.stop()


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _drain(stream: LogStream, seen: list[int], index: int) -> None:
    while data := await stream.read():
        seen[index] += data.count(b"\n")


async def main(count: int, root: str) -> None:
    from tsky.contract.activity_io import JobMeta
    from tsky.ops.clouds.kubernetes import KubernetesBackend
    from tsky.spec.requests import Candidate
    from tsky.spec.settings import Settings

    backend = KubernetesBackend(Settings(home=Path(root) / "home", kubernetes={"namespace": "default"}))
    candidate = Candidate(cloud="k8s", region="fake", instance_type="pod", vcpus=1, memory_gb=1)
    meta = JobMeta(job_id=1, job_name="b", task_index=0, task_name="b", task_id="b", task_ids=["b"], user="b")
    info = await backend.provision("bench-1", candidate, 1, meta)
    agent = backend.node(info, 0)
    await agent.start_phase("run-a0", "while :; do echo tick; sleep 1; done", {})
    (await agent.follow_log("run-a0", 0)).close()  # warm up: imports, the first session
    threads, rss = threading.active_count(), _rss_kib()

    streams: list[LogStream] = []
    while len(streams) < count:  # watchers start over time, not all in one instant
        batch = min(100, count - len(streams))
        streams += await asyncio.gather(*(agent.follow_log("run-a0", 0) for _ in range(batch)))
    seen = [0] * count
    pumps = [asyncio.create_task(_drain(s, seen, i)) for i, s in enumerate(streams)]
    await asyncio.sleep(3)  # every stream open and flowing
    lines, cpu, start = sum(seen), _cpu(), time.monotonic()
    await asyncio.sleep(WINDOW)
    elapsed = time.monotonic() - start
    cpu_pct = 100 * (_cpu() - cpu) / elapsed
    lines_per_s = (sum(seen) - lines) / elapsed
    rss_per_stream = (_rss_kib() - rss) / count
    print(f"{count} live pod log streams (one exec websocket each), {lines_per_s:.0f} lines/s in all:")
    pool = sum(1 for t in threading.enumerate() if t.name.startswith("tsky-k8s"))
    print(f"  threads: {threading.active_count()} (before the streams: {threads}; {pool} of them the client's pool,")
    print("    which opening the streams used for a moment each and which has 32 at most)")
    print(f"  RSS: {rss_per_stream:.0f} KiB per stream")
    print(f"  CPU: {cpu_pct:.1f} % of one core ({cpu_pct / count * 1000:.1f} ‰ per stream)")

    for pump in pumps:
        pump.cancel()
    for stream in streams:
        stream.close()
    await agent.stop_phase("run-a0")
    await backend.teardown("bench-1", info)


if __name__ == "__main__":
    os.environ.update(NO_CLOUD_METADATA)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with tempfile.TemporaryDirectory(prefix="tsky-k8s-streams-") as tmp:
        here, there = multiprocessing.get_context("spawn").Pipe()
        server = multiprocessing.get_context("spawn").Process(target=_serve, args=(tmp, there))
        server.start()
        try:
            os.environ["KUBECONFIG"] = here.recv()
            asyncio.run(main(n, tmp))
        finally:
            here.send("done")
            server.join(30)
