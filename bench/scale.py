"""How many managed jobs one small machine runs: N sleeping jobs through the public API.

    python bench/scale.py [--jobs 2000] [--workers 1] [--trivial 300] [--infra local|ssh|aws] [--nodes 50]

`--infra local` (the default) runs them on the local simulator. `--infra ssh` runs them on `--nodes` real
sshd nodes on 127.x addresses (needs root, as the backend tests do), listed in an ssh node pool file as a
user would write it, each host taking its share of the jobs (`max_clusters`), and counts the SSH commands
the nodes ran (their sshd logs at DEBUG1 name each one). `--infra aws` runs them on instances of moto's
EC2, reached over SSH on N sshd nodes standing in for them (`bench/scale_aws.py`), and also counts the EC2
calls the worker makes, by operation. Either then measures the local simulator with the same N, so both
figures come from the same run. One job of the N prints a timestamped line every 2 s: how long its lines
take to reach the log store (what `tsky jobs logs -f` follows) is the output latency.

It starts its own dev server (SQLite file, as the embedded default) and worker process(es) in a temp
TSKY_HOME, measures the engine's bare throughput with a trivial one-activity workflow, submits N jobs
with `tsky.client.jobs.submit(num_jobs=N)`, waits until all are RUNNING (each job then blocks on a shared
lock the benchmark holds, so none ends early), measures what N running jobs cost at rest, releases them
and waits until all are SUCCEEDED. It prints figures, never pass/fail, and cleans up every process,
cluster and file it made.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import getpass
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import scale_aws, trivial
from bench._stack import Stack, count, count_status, machine, metric, scrape, tagged_processes, wait_for
from tsky.client import jobs as api
from tsky.contract.ids import user_hash
from tsky.spec.loader import load_pipeline

CLOSED = "WorkflowType = 'ManagedJob' AND ExecutionStatus != 'Running'"
HEARTBEATS = ("temporal_request", {"operation": "RecordActivityTaskHeartbeat"})


def ssh_commands(node_dirs: list[Path]) -> int:
    """Commands the sshd nodes have run so far (each is one `req exec` line in its node's log)."""
    total = 0
    for directory in node_dirs:
        with suppress(OSError):
            total += (directory / "sshd.log").read_bytes().count(b" req exec")
    return total


async def output_latency(log: Path, seconds: float) -> list[float]:
    """For `seconds`: how long after it was printed each `tick <time>` line reached the log store."""
    latencies: list[float] = []
    seen = len(log.read_bytes()) if log.exists() else 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(0.05)
        with suppress(OSError):
            data = log.read_bytes()
            now = time.time()
            latencies += [now - float(t) for t in re.findall(rb"tick (\d+\.\d+)\n", data[seen:])]
            seen = len(data)
    return latencies


async def bench(
    args: argparse.Namespace, stack: Stack, infra: str, node_dirs: list[Path], aws: scale_aws.AwsWorld | None = None
) -> dict[str, float]:
    f: dict[str, float] = {}
    client = await stack.client()
    if args.trivial:
        worker = stack.spawn([sys.executable, "-m", "bench.trivial", stack.address, "default"], "trivial")
        await trivial.measure(client, 20)  # warm-up (also waits for the worker to poll)
        server_cpu = stack.sampler.cpu("server")
        f["trivial_wf_per_s"] = await trivial.measure(client, args.trivial)
        f["trivial_server_ms"] = 1000 * (stack.sampler.cpu("server") - server_cpu) / args.trivial
        worker.terminate()
        worker.wait()

    await asyncio.sleep(3)  # let the workers settle before the baseline
    f["worker_rss_idle_mib"], f["server_rss_idle_mib"] = stack.sampler.now("workers"), stack.sampler.now("server")
    gate = stack.home / "gate"
    gate.touch()
    # A name of its own: local clusters are named after their job, and process tags after the cluster.
    name = f"bench-{uuid.uuid4().hex[:6]}"
    resources = "resources: {infra: ssh/bench}\n" if infra == "ssh" else scale_aws.RESOURCES if aws else ""
    pipeline = load_pipeline(f"name: {name}\n{resources}run: exec flock -s {gate} true\n")
    # The N-th job prints a timestamped line every 2 s until the gate opens: the output latency.
    ticks = f'while ! flock -n -s {gate} true; do echo "tick $(date +%s.%N)"; sleep 2; done'
    ticker = load_pipeline(f"name: {name}-ticker\n{resources}run: {json.dumps(ticks)}\n")
    user = getpass.getuser()
    with gate.open() as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # every job blocks on this until we let go
        cpu_w, cpu_s = stack.sampler.cpu("workers"), stack.sampler.cpu("server")
        t0, wall0 = time.monotonic(), datetime.now(UTC)
        ids = await api.submit(
            client, stack.settings, pipeline, user=user, user_hash=user_hash(user, "bench"), num_jobs=args.jobs - 1
        )
        ids += await api.submit(client, stack.settings, ticker, user=user, user_hash=user_hash(user, "bench"))
        f["submit_s"] = time.monotonic() - t0
        print(f"  submitted {len(ids)} jobs in {f['submit_s']:.1f} s", flush=True)
        await wait_for("RUNNING", args.jobs, lambda: count_status(client, "RUNNING"), args.timeout)
        f["to_running_s"] = time.monotonic() - t0
        f["cpu_worker_s"] = stack.sampler.cpu("workers") - cpu_w
        f["cpu_server_s"] = stack.sampler.cpu("server") - cpu_s
        starts = sorted(
            (r.started_at - wall0).total_seconds() for r in await api.list_jobs(client, user=user) if r.started_at
        )
        f["start_p50_s"], f["start_p99_s"] = statistics.median(starts), starts[int(0.99 * (len(starts) - 1))]

        await asyncio.sleep(10)  # let the last watchers settle into their steady poll
        f["worker_rss_running_mib"], f["server_rss_running_mib"] = (
            stack.sampler.now("workers"),
            stack.sampler.now("server"),
        )
        cpu_w, cpu_s, beats, commands, t_rest = (
            stack.sampler.cpu("workers"),
            stack.sampler.cpu("server"),
            metric(scrape(stack.metrics_ports), HEARTBEATS[0], **HEARTBEATS[1]),
            ssh_commands(node_dirs),
            time.monotonic(),
        )
        api_calls = aws.counter.snapshot() if aws else None
        ticker_log = stack.home / "logs" / "jobs" / str(ids[-1]) / "task-0" / "attempt-0" / "run.log"
        latencies = await output_latency(ticker_log, args.rest)
        span = time.monotonic() - t_rest
        if aws and api_calls is not None:
            f |= scale_aws.api_figures(api_calls, aws.counter.snapshot(), span)
        f["load_1min"] = os.getloadavg()[0]
        f["latency_p50_s"] = statistics.median(latencies) if latencies else float("nan")
        f["latency_max_s"] = max(latencies, default=float("nan"))
        f["ssh_commands_per_s"] = (ssh_commands(node_dirs) - commands) / span
        f["rest_cpu_worker_pct"] = 100 * (stack.sampler.cpu("workers") - cpu_w) / span
        f["rest_cpu_server_pct"] = 100 * (stack.sampler.cpu("server") - cpu_s) / span
        f["heartbeats_per_s"] = (metric(scrape(stack.metrics_ports), HEARTBEATS[0], **HEARTBEATS[1]) - beats) / span
        f["job_processes"] = tagged_processes(f"{name}-")
        kib = (f["worker_rss_running_mib"] - f["worker_rss_idle_mib"]) * 1024 / args.jobs
        print(
            f"  at rest: worker {f['rest_cpu_worker_pct']:.1f} % of one core, {kib:.0f} KiB/job; "
            f"{f['ssh_commands_per_s']:.1f} SSH commands/s; output latency p50 {f['latency_p50_s']:.2f} s, "
            f"max {f['latency_max_s']:.2f} s; load average {f['load_1min']:.2f}",
            flush=True,
        )
        t1 = time.monotonic()
    # The lock is released: every job's run ends now.
    f["release_to_succeeded_s"] = await wait_for(
        "SUCCEEDED", args.jobs, lambda: count_status(client, "SUCCEEDED"), args.timeout
    )
    f["to_succeeded_s"] = t1 - t0 + f["release_to_succeeded_s"]
    f["closed"] = await count(client, CLOSED)
    logs = [p.read_text(errors="replace") for p in (stack.home / "logs").glob("worker-*.log")]
    f["slow_workflow_tasks"] = sum(text.count("TMPRL1104") for text in logs)  # took over 5 s (timeout: 10 s)
    f["worker_rss_peak_mib"] = stack.sampler.peak.get("workers", 0.0)
    f["server_rss_peak_mib"] = stack.sampler.peak.get("server", 0.0)
    return f


def report(args: argparse.Namespace, f: dict[str, float], where: str, infra: str) -> None:
    n = args.jobs
    worker_kib = (f["worker_rss_running_mib"] - f["worker_rss_idle_mib"]) * 1024 / n
    server_kib = (f["server_rss_running_mib"] - f["server_rss_idle_mib"]) * 1024 / n
    rate = n / f["to_running_s"]
    lines = [
        f"tsky scale benchmark: {n} jobs, {args.workers} worker process(es), {infra} infra, dev server on SQLite"
        + (f", config {args.config}" if args.config != "{}" else ""),
        f"machine: {where}",
    ]
    if "trivial_wf_per_s" in f:
        lines.append(
            f"engine bare throughput (1-activity workflow): {f['trivial_wf_per_s']:.1f} workflows/s, "
            f"server CPU {f['trivial_server_ms']:.0f} ms each"
        )
    lines += [
        f"submit:                   {f['submit_s']:.1f} s ({n / f['submit_s']:.0f} jobs/s)",
        f"all RUNNING after:        {f['to_running_s']:.1f} s ({rate:.1f} jobs/s"
        + (f" = {rate / f['trivial_wf_per_s']:.2f} x the bare workflow rate)" if "trivial_wf_per_s" in f else ")"),
        f"  each job RUNNING after: p50 {f['start_p50_s']:.1f} s, p99 {f['start_p99_s']:.1f} s from the first submit",
        f"  CPU until then:         worker {f['cpu_worker_s']:.0f} s ({1000 * f['cpu_worker_s'] / n:.0f} ms/job), "
        f"server {f['cpu_server_s']:.0f} s ({1000 * f['cpu_server_s'] / n:.0f} ms/job)",
        f"all SUCCEEDED after:      {f['to_succeeded_s']:.1f} s from the first submit "
        f"({f['release_to_succeeded_s']:.1f} s after the jobs were let go); {int(f['closed'])} closed",
        f"worker RSS:               idle {f['worker_rss_idle_mib']:.0f} MiB, {n} running "
        f"{f['worker_rss_running_mib']:.0f} MiB ({worker_kib:.0f} KiB/job), peak {f['worker_rss_peak_mib']:.0f} MiB",
        f"Temporal server RSS:      idle {f['server_rss_idle_mib']:.0f} MiB, {n} running "
        f"{f['server_rss_running_mib']:.0f} MiB ({server_kib:.0f} KiB/job), peak {f['server_rss_peak_mib']:.0f} MiB",
        f"{n} running, at rest:    worker {f['rest_cpu_worker_pct']:.1f} %, server {f['rest_cpu_server_pct']:.1f} % "
        f"of one core; {f['heartbeats_per_s']:.1f} heartbeat RPCs/s; {int(f['job_processes'])} job processes; "
        f"load average {f['load_1min']:.2f}",
        f"output latency at rest:   p50 {f['latency_p50_s']:.2f} s, max {f['latency_max_s']:.2f} s "
        "(a line printed on a node until it is in the log store)",
        f"workflow tasks over 5 s (the SDK's warning; 10 s is their timeout): {int(f['slow_workflow_tasks'])}",
    ]
    if infra == "ssh":
        lines.append(
            f"SSH commands at rest:     {f['ssh_commands_per_s']:.1f} per second ({args.nodes} sshd nodes, "
            f"up to {-(-n // args.nodes)} clusters each)"
        )
    if infra == "aws":
        lines.append(f"SSH commands at rest:     {f['ssh_commands_per_s']:.1f} per second ({n} nodes)")
        lines.append(scale_aws.report_line(f, n))
    print("\n" + "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1, help="tsky worker processes")
    parser.add_argument("--trivial", type=int, default=300, help="trivial workflows for the bare rate; 0 skips")
    parser.add_argument("--rest", type=float, default=60, help="seconds to measure the cost of running jobs at rest")
    parser.add_argument("--config", default="{}", help="YAML merged into the stack's config.yaml, e.g. "
                        "'{jobs: {sweeper: {enabled: false}}}'")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--keep", action="store_true", help="keep the temp TSKY_HOME (logs) for a look")
    parser.add_argument("--infra", choices=["local", "ssh", "aws"], default="local")
    parser.add_argument("--nodes", type=int, default=50, help="sshd nodes for --infra ssh (at most --jobs)")
    args = parser.parse_args()
    args.nodes = max(1, min(args.nodes, args.jobs))
    where = machine()
    print(f"machine at start: {where}", flush=True)
    config = yaml.safe_load(args.config) or {}
    for infra in [args.infra, "local"] if args.infra != "local" else ["local"]:
        print(f"-- {infra} infra", flush=True)
        with contextlib.ExitStack() as cleanup:
            node_dirs = cleanup.enter_context(ssh_pool(args.nodes)) if infra == "ssh" else []
            aws = cleanup.enter_context(scale_aws.aws_world(args.jobs)) if infra == "aws" else None
            stack_config = config | aws.config if aws else config
            with Stack(workers=args.workers, config=stack_config, keep=args.keep) as stack:
                if infra == "ssh":
                    write_pool(stack.home, node_dirs, max_clusters=-(-args.jobs // args.nodes))
                if aws:
                    aws.attach(stack.home)
                dirs = aws.node_dirs if aws else [d for d, _ in node_dirs]
                figures = asyncio.run(bench(args, stack, infra, dirs, aws))
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        report(args, figures, f"{where}; load average at the end {load}", infra)


@contextlib.contextmanager
def ssh_pool(count: int) -> Iterator[list[tuple[Path, str]]]:
    """`count` sshd nodes (with the client key's path): every one killed afterwards, with its processes."""
    from tests.backends import sshd

    why = sshd.available()
    if why:
        raise SystemExit(f"--infra ssh: {why}")
    nodes = sshd.SSHNodes(Path(tempfile.mkdtemp(prefix="tsky-bench-nodes-")))
    try:
        started = [nodes.start(log_level="DEBUG1") for _ in range(count)]
        yield [(n.dir, f"{n.addr}:{n.port}|{nodes.client_key}") for n in started]
    finally:
        nodes.stop_all()
        shutil.rmtree(nodes.root, ignore_errors=True)


def write_pool(home: Path, nodes: list[tuple[Path, str]], max_clusters: int) -> None:
    """The ssh node pool file a user would write: pool `bench` holds every node, each taking
    `max_clusters` clusters at once."""
    hosts, key = [], ""
    for _, spec in nodes:
        endpoint, _, key = spec.partition("|")
        addr, _, port = endpoint.rpartition(":")
        hosts.append({"ip": addr, "port": int(port)})
    pool = {"bench": {"user": "root", "identity_file": key, "max_clusters": max_clusters, "hosts": hosts}}
    (home / "ssh_node_pools.yaml").write_text(yaml.safe_dump(pool))


if __name__ == "__main__":
    main()
