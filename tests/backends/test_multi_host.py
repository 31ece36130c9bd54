"""tsky past one host, on one machine. Each "host" is a separate PID and mount namespace with its own home
directory and its own TSKY_HOME (nothing shared on disk), all talking over 127.0.0.0/8:

- A: the Temporal dev server and an S3 store (moto), i.e. this test process;
- B and C: a tsky worker each;
- D: a CLI with nothing but the address, the settings and the keys;
- E: an SSH node (real sshd) the job runs on, so the job outlives the worker that launched it.

The job is launched from D; B's namespace dies mid-run; C takes the job over; D prints the whole output
once, in order, across the takeover, and the controller log's timeline. Payloads are encrypted throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from tests.backends.sshd import SSHNodes
from tests.emulators import Emulator
from tests.harness import FAST_CONFIG, TSKY, TskyEnv, deep_merge, wait_until
from tsky.client.codec import new_key
from tsky.contract.activity_io import ActivityName

pytestmark = pytest.mark.integration

LINES = 60
JOB = f"""\
name: takeover
run: |
  for i in $(seq 1 {LINES}); do echo line-$i; sleep 0.25; done
"""


class Host:
    """A private PID + mount namespace with a home directory of its own (HOME; not bind-mounted over
    /root, where this machine's Python lives)."""

    def __init__(self, root: Path, name: str, environ: dict[str, str]):
        self.name = name
        self.dir = root / name
        self.home = self.dir / "home"
        self.tsky_home = self.home / ".tsky"
        self.tsky_home.mkdir(parents=True)
        self.environ = {**environ, "HOME": str(self.home), "TSKY_HOME": str(self.tsky_home)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_pid = 0

    def _wrap(self, argv: list[str]) -> list[str]:
        inner = " ".join(f"'{a}'" for a in argv)
        script = f"mount -t proc proc /proc && cd {self.home} && exec {inner}"
        return ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private", "sh", "-c", script]

    def start(self, argv: list[str], log: Path) -> None:
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                self._wrap(argv), stdout=out, stderr=subprocess.STDOUT, env=self.environ, start_new_session=True
            )
        wait_until(lambda: Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split(), 10)  # type: ignore[union-attr]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        self.init_pid = int(children[0])

    def run(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._wrap(list(argv)), capture_output=True, text=True, env=self.environ, timeout=timeout)

    def kill(self) -> None:
        """The machine dies: every process of the namespace at once."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def run_attempts(env: TskyEnv) -> int:
    """The highest attempt of the job's run_and_watch activity (event fields, readable without the key)."""
    client = await env.client()
    history = await client.get_workflow_handle("tsky-job-1").fetch_history()
    started = {e.event_id: e for e in history.events if e.HasField("activity_task_scheduled_event_attributes")}
    return max(
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
        and started[
            e.activity_task_started_event_attributes.scheduled_event_id
        ].activity_task_scheduled_event_attributes.activity_type.name
        == ActivityName.RUN
    )


def test_a_job_carries_on_under_another_worker_host_and_any_host_reads_its_logs(
    tsky_env: TskyEnv, ssh_nodes: SSHNodes, moto_s3: Emulator, tmp_path: Path
) -> None:
    boto3.client("s3").create_bucket(Bucket="tsky-logs")
    node = ssh_nodes.start()  # host E
    settings: dict[str, Any] = deep_merge(
        FAST_CONFIG,
        {
            "temporal": {"address": tsky_env.server.address, "namespace": tsky_env.namespace},
            "jobs": {"logs": {"store": "s3://tsky-logs/prod"}},
        },
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TSKY_")}
    environ |= {**moto_s3.env, "TSKY_ENCRYPTION_KEY": new_key(), "TSKY_SECRET_KEY": "", "COLUMNS": "200"}
    environ["AWS_EC2_METADATA_DISABLED"] = "true"
    hosts = {name: Host(tmp_path / "hosts", name, environ) for name in ("B", "C", "D")}
    for host in hosts.values():
        (host.tsky_home / "config.yaml").write_text(yaml.safe_dump(settings))
        key = host.home / ".ssh-node-key"
        shutil.copy(ssh_nodes.client_key, key)
        pools = {"edge": {"user": "root", "identity_file": str(key),
                          "hosts": [{"ip": node.addr, "port": node.port}]}}  # fmt: skip
        (host.tsky_home / "ssh_node_pools.yaml").write_text(yaml.safe_dump(pools))
    try:
        hosts["B"].start([sys.executable, "-m", "tsky.worker"], tmp_path / "worker-B.log")
        d = hosts["D"]
        job = d.home / "job.yaml"
        job.write_text(JOB)
        launched = d.run(TSKY, "jobs", "launch", "-y", "-d", "--infra", "ssh/edge", str(job))
        assert launched.returncode == 0, launched.stdout + launched.stderr

        def printed(n: int) -> bool:
            out = d.run(TSKY, "jobs", "logs", "--no-follow", "1").stdout
            return len(re.findall(r"line-\d+", out)) >= n

        wait_until(lambda: printed(10), 120, 1, what="the job to print on host E")
        assert not printed(LINES)
        hosts["B"].kill()  # mid-run: the job's processes live on E and carry on
        hosts["C"].start([sys.executable, "-m", "tsky.worker"], tmp_path / "worker-C.log")

        followed = d.run(TSKY, "jobs", "logs", "1")
        assert followed.returncode == 0, followed.stdout + followed.stderr
        assert "SUCCEEDED" in followed.stdout
        lines = re.findall(r"line-(\d+)", followed.stdout)
        assert lines == [str(i) for i in range(1, LINES + 1)], followed.stdout

        controller = d.run(TSKY, "jobs", "logs", "--controller", "1")
        assert "torn down" in controller.stdout, controller.stdout + controller.stderr
        for host in hosts.values():
            assert not (host.tsky_home / "logs" / "jobs").exists()  # logs live in the store only
        assert asyncio.run(run_attempts(tsky_env)) >= 2  # C's watcher resumed where B's stopped
    finally:
        for host in hosts.values():
            host.kill()
