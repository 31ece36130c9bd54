"""The embedded default: zero set-up, `tsky server up | down | status`, the Web UI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

import tsky as tsky_package
from tests.harness import EXAMPLES, TSKY, embedded_env, embedded_home, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    with embedded_home(tmp_path) as home:
        yield home


def tsky(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TSKY, *args], env=embedded_env(home), capture_output=True, text=True, timeout=180)


def test_first_launch_starts_the_stack_and_server_commands_manage_it(home: Path) -> None:
    result = tsky(home, "jobs", "launch", "-y", str(EXAMPLES / "hello_sky.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Starting tsky's embedded Temporal server and worker" in result.stderr
    assert re.search(r"\(hello-sky, pid=\d+\) Hello, SkyPilot!", result.stdout)
    assert "Managed job finished: 1 (status: SUCCEEDED)." in result.stdout
    assert (home / "temporal.db").exists()
    assert (home / "temporal.db-wal").exists()  # the server's SQLite runs with a write-ahead log
    assert (home / "logs" / "worker.log").exists()

    status = tsky(home, "server", "status")
    assert status.returncode == 0
    address = re.search(r"gRPC address:\s+(127\.0\.0\.1:\d+)", status.stdout)
    ui = re.search(r"Web UI:\s+(http://127\.0\.0\.1:\d+)", status.stdout)
    assert address and ui, status.stdout
    assert re.search(r"Temporal server: running \(pid \d+\)", status.stdout)
    assert re.search(r"Worker:\s+running \(pid \d+\)", status.stdout)

    # The Web UI lists the job with its status attribute.
    query = quote("WorkflowType = 'ManagedJob'")
    with urllib.request.urlopen(f"{ui.group(1)}/api/v1/namespaces/default/workflows?query={query}", timeout=30) as r:
        listing = json.load(r)
    executions = listing["executions"]
    assert [e["execution"]["workflowId"] for e in executions] == ["tsky-job-1"]
    attributes = json.dumps(executions[0]["searchAttributes"])
    assert "TskyStatus" in attributes

    # `up` twice is harmless: same pids, same ports.
    again = tsky(home, "server", "up")
    assert again.returncode == 0 and "Already running." in again.stdout
    assert address.group(1) in again.stdout

    down = tsky(home, "server", "down")
    assert "Stopped worker" in down.stdout and "Temporal server" in down.stdout
    stopped = tsky(home, "server", "status")
    assert stopped.returncode == 1
    assert "Temporal server: stopped" in stopped.stdout

    # The jobs survive a restart of the stack, on the remembered ports.
    queue = tsky(home, "jobs", "queue")
    assert re.search(r"^1\s+-\s+hello-sky.*SUCCEEDED", queue.stdout, re.M), queue.stdout + queue.stderr
    assert address.group(1) in tsky(home, "server", "status").stdout


def test_stale_pid_files_are_detected_and_replaced(home: Path) -> None:
    home.mkdir(parents=True)
    # A server and worker "running" under pids that are not theirs (this test process, long gone pids).
    (home / "server.json").write_text(json.dumps({"port": 1, "ui_port": 2, "pid": os.getpid(), "start_time": "1"}))
    (home / "worker.json").write_text(json.dumps({"pid": 999999, "start_time": "1"}))
    status = tsky(home, "server", "status")
    assert status.returncode == 1
    assert "stale pid file" in status.stdout
    up = tsky(home, "server", "up")
    assert up.returncode == 0, up.stderr
    assert re.search(r"Temporal server: running \(pid \d+\)", up.stdout)
    assert str(os.getpid()) not in up.stdout


def test_external_address_never_starts_a_server(home: Path) -> None:
    env = embedded_env(home) | {"TSKY_TEMPORAL_ADDRESS": "127.0.0.1:9"}
    result = subprocess.run([TSKY, "server", "up"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "never starts a server of its own" in result.stderr
    assert not (home / "server.json").exists()


def _pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited
    except FileNotFoundError:
        return True


def test_an_upgrade_replaces_the_worker_and_running_jobs_carry_on(home: Path, tmp_path: Path) -> None:
    spec = tmp_path / "steady.yaml"
    spec.write_text("name: steady\nrun: sleep 6; echo finished\n")
    assert tsky(home, "jobs", "launch", "-y", "-d", str(spec)).returncode == 0
    wait_until(lambda: "RUNNING" in tsky(home, "jobs", "queue").stdout, 60, what="the job to run")
    old_pid = json.loads((home / "worker.json").read_text())["pid"]

    # An upgrade changes the installed modules (here: one file's mtime, put back afterwards).
    module = Path(tsky_package.__file__)
    before = module.stat()
    os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    try:
        queue = tsky(home, "jobs", "queue")
    finally:
        os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert "tsky changed since the embedded worker started: replacing it" in queue.stderr
    assert json.loads((home / "worker.json").read_text())["pid"] != old_pid
    wait_until(lambda: _pid_gone(old_pid), 60, what="the old worker to exit")

    wait_until(lambda: "SUCCEEDED" in tsky(home, "jobs", "queue").stdout, 120, what="the job to finish")
    assert "finished" in tsky(home, "jobs", "logs", "1").stdout


def test_a_killed_server_comes_back_on_its_port_and_jobs_carry_on(home: Path, tmp_path: Path) -> None:
    spec = tmp_path / "steady.yaml"
    spec.write_text("name: steady\nrun: sleep 8; echo steady done\n")
    assert tsky(home, "jobs", "launch", "-y", "-d", str(spec)).returncode == 0
    wait_until(lambda: "RUNNING" in tsky(home, "jobs", "queue").stdout, 60, what="the job to run")
    before = json.loads((home / "server.json").read_text())

    os.kill(before["pid"], 9)
    wait_until(lambda: _pid_gone(before["pid"]), 30, what="the server to die")

    # The next command restarts the server on the same port (its connections linger in TIME_WAIT),
    # replaces the worker that lost it, and a new job runs to the end.
    result = tsky(home, "jobs", "launch", "-y", str(EXAMPLES / "hello_sky.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Managed job finished: 2 (status: SUCCEEDED)." in result.stdout
    after = json.loads((home / "server.json").read_text())
    assert after["pid"] != before["pid"] and after["port"] == before["port"]

    # The job that ran while the server died ends as it would have.
    wait_until(lambda: re.search(r"^1\s.*SUCCEEDED", tsky(home, "jobs", "queue").stdout, re.M), 120, what="job 1")
    assert "steady done" in tsky(home, "jobs", "logs", "1").stdout
    status = tsky(home, "server", "status")
    assert status.returncode == 0 and "polling tsky-launch (none)" not in status.stdout, status.stdout


def _regions(*names: str) -> str:
    return yaml.safe_dump({"local": {"regions": [{"name": n} for n in names]}})


def test_a_config_edit_reaches_the_next_launch(home: Path) -> None:
    home.mkdir(parents=True)
    config = home / "config.yaml"
    config.write_text(_regions("east"))
    up = tsky(home, "server", "up")
    assert up.returncode == 0, up.stderr
    assert f"Config:          {config}, loaded" in up.stdout

    config.write_text(_regions("west"))
    result = tsky(home, "jobs", "launch", "-y", str(EXAMPLES / "hello_sky.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{config} changed since the embedded worker started: replacing it" in result.stderr
    controller = tsky(home, "jobs", "logs", "--controller", "1").stdout
    assert re.findall(r"Cluster launched: \S+\. Resources: 1x Local \((\w+)\)", controller) == ["west"], controller
    status = tsky(home, "server", "status")
    assert re.search(rf"Config:\s+{re.escape(str(config))}, loaded .* \(current\)", status.stdout), status.stdout
