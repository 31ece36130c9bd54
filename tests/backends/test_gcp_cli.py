"""Managed jobs on GCP end to end through the CLI: instances on the fake Compute Engine API (`fake_gce.py`:
no GCE emulator exists), setup and run over real SSH to sshd nodes standing in for them (the
address resolver setting, `stand_ins.py`), a SPOT preemption flipped in the fake, recovery, teardown; nothing left."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import stand_ins
from tests.backends.fake_gce import FakeCompute
from tests.backends.sshd import SSHNode, SSHNodes
from tests.backends.test_gcp import gcp_config
from tests.harness import TskyEnv, wait_until
from tests.integration.test_jobs_cli import no_tagged_processes, queue_json, wait_status

pytestmark = pytest.mark.integration

HELLO = """\
name: hello-sky
setup: echo "Running setup."
run: echo "Hello, SkyPilot!"
"""


@pytest.fixture
def gce(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCompute]:
    fake = FakeCompute().start()
    # `tsky check` enables gcp on a credentials file (read, never used: the backend talks to the fake
    # anonymously).
    credentials = tmp_path / "gcp.json"
    credentials.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "tsky-test",
                "client_email": "tsky@tsky-test.iam.gserviceaccount.com",
                "private_key": "unused",
                "token_uri": "http://127.0.0.1:9/token",
            }
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(credentials))
    yield fake
    fake.stop()
    assert not fake.names(), f"instances left behind: {fake.names()}"


def gcp_world(env: TskyEnv, gce: FakeCompute, nodes: SSHNodes, count: int) -> list[SSHNode]:
    """Config pointing the gcp infra at the fake, and a worker that reaches instances through sshd nodes."""
    started = [nodes.start() for _ in range(count)]
    env.configure({"gcp": gcp_config(gce, nodes.client_key, **stand_ins.use(env.home, [n.endpoint for n in started]))})
    env.start_worker()
    return started


def test_hello_on_gcp(tsky_env: TskyEnv, gce: FakeCompute, ssh_nodes: SSHNodes) -> None:
    gcp_world(tsky_env, gce, ssh_nodes, 1)
    check = tsky_env.tsky("check")
    assert re.search(r"GCP: enabled", check.stdout), check.stdout

    job = tsky_env.write("hello.yaml", HELLO)
    image = "projects/deeplearning-platform-release/global/images/family/pytorch-latest-gpu"
    flags = ["--infra", "gcp/us-central1", "--cpus", "2", "--disk-size", "50", "--image-id", image]
    result = tsky_env.tsky("jobs", "launch", "-y", *flags, str(job))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\(setup pid=\d+\) Running setup\.", result.stdout), result.stdout
    assert re.search(r"\(hello-sky, pid=\d+\) Hello, SkyPilot!", result.stdout), result.stdout
    assert "Managed job finished: 1 (status: SUCCEEDED)." in result.stdout
    [row] = queue_json(tsky_env)
    assert str(row["infra"]).startswith("GCP (us-central1, us-central1-"), row
    [body] = gce.inserted
    assert body["labels"]["tsky-job-id"] == "1" and "scheduling" in body
    assert "provisioningModel" not in body["scheduling"]  # on demand
    [disk] = body["disks"]
    assert disk["initializeParams"] == {"sourceImage": image, "diskSizeGb": "50"}
    assert gce.names() == []


def test_spot_job_survives_a_preemption_flipped_in_the_fake(
    tsky_env: TskyEnv, gce: FakeCompute, ssh_nodes: SSHNodes, tmp_path: Path
) -> None:
    nodes = gcp_world(tsky_env, gce, ssh_nodes, 2)
    started, flag = tmp_path / "started", tmp_path / "finish"
    job = tsky_env.write(
        "spot.yaml",
        f"""\
name: spotty
resources:
  infra: gcp/us-central1
  cpus: 2
  use_spot: true
run: |
  if [ -e {flag} ]; then echo "finished after recovery"; exit 0; fi
  echo "working"; touch {started}; sleep 600
""",
    )
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(job)).returncode == 0
    wait_until(started.exists, 90, what="the first attempt to run")
    [name] = gce.names()
    instance = gce.instance(name)
    assert instance is not None and instance["scheduling"]["provisioningModel"] == "SPOT"

    # GCE takes the VM back: a preempted operation, the instance deleted, the machine (its stand-in) dead.
    gce.preempt(name)
    endpoint = stand_ins.holding(tsky_env.home, "gcp", name)
    next(n for n in nodes if n.endpoint == endpoint).kill()
    flag.touch()
    wait_status(tsky_env, 1, "SUCCEEDED", timeout=120)

    [row] = queue_json(tsky_env)
    assert row["recoveries"] == 1
    controller = tsky_env.tsky("jobs", "logs", "--controller", "1").stdout
    assert "Cluster preempted or failed, recovering" in controller, controller
    assert "Cluster launched: spotty-1-r1." in controller, controller
    last = tsky_env.tsky("jobs", "logs", "1", "--no-follow").stdout
    assert "finished after recovery" in last, last
    assert len(gce.inserted) == 2 and gce.names() == []
    assert wait_until(lambda: no_tagged_processes("spotty-1"), 10, what="the job's processes to be gone")
