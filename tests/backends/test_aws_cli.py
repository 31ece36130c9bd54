"""Managed jobs on AWS end to end through the CLI: instances provisioned on moto's EC2, setup and run over
real SSH to sshd nodes standing in for them (`stand_ins.py`, through the address resolver setting), a spot interruption
injected in moto, recovery, teardown; nothing left behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.backends import stand_ins
from tests.backends.conftest import MotoEC2
from tests.backends.sshd import SSHNodes
from tests.backends.test_aws import aws_config
from tests.harness import TskyEnv, WorkerProc, wait_until
from tests.integration.test_jobs_cli import no_tagged_processes, queue_json, wait_status

pytestmark = pytest.mark.integration

HELLO = """\
name: hello-sky
setup: echo "Running setup."
run: echo "Hello, SkyPilot!"
"""


def aws_world(env: TskyEnv, moto: MotoEC2, nodes: SSHNodes, count: int) -> WorkerProc:
    """Config pointing the aws infra at moto, and a worker that reaches instances through `count` sshd nodes."""
    stand_in_nodes = stand_ins.use(env.home, [nodes.start().endpoint for _ in range(count)])
    env.configure({"aws": aws_config(moto, nodes, **stand_in_nodes)})
    return env.start_worker()


def test_hello_on_aws(tsky_env: TskyEnv, moto_ec2: MotoEC2, ssh_nodes: SSHNodes) -> None:
    aws_world(tsky_env, moto_ec2, ssh_nodes, 1)
    check = tsky_env.tsky("check")
    assert re.search(r"AWS: enabled", check.stdout), check.stdout

    job = tsky_env.write("hello.yaml", HELLO)
    result = tsky_env.tsky("jobs", "launch", "-y", "--infra", "aws/us-east-1", "--cpus", "2", str(job))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\(setup pid=\d+\) Running setup\.", result.stdout), result.stdout
    assert re.search(r"\(hello-sky, pid=\d+\) Hello, SkyPilot!", result.stdout), result.stdout
    assert "Managed job finished: 1 (status: SUCCEEDED)." in result.stdout
    [row] = queue_json(tsky_env)
    assert str(row["infra"]).startswith("AWS (us-east-1"), row
    [instance] = moto_ec2.instances("hello-sky-1")
    assert instance["State"]["Name"] == "terminated"
    assert "InstanceLifecycle" not in instance  # on demand


def test_spot_job_survives_an_interruption_injected_in_moto(
    tsky_env: TskyEnv, moto_ec2: MotoEC2, ssh_nodes: SSHNodes, tmp_path: Path
) -> None:
    aws_world(tsky_env, moto_ec2, ssh_nodes, 2)
    image = moto_ec2.an_ami()  # the task's own image, not the configured default
    started, flag = tmp_path / "started", tmp_path / "finish"
    job = tsky_env.write(
        "spot.yaml",
        f"""\
name: spotty
resources:
  infra: aws/us-east-1
  cpus: 2
  use_spot: true
  disk_size: 100
  image_id: {image}
setup: echo "setup on $(cat /proc/sys/kernel/hostname)"
run: |
  if [ -e {flag} ]; then echo "finished after recovery"; exit 0; fi
  echo "working"; touch {started}; sleep 600
""",
    )
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(job)).returncode == 0
    wait_until(started.exists, 90, what="the first attempt to run")
    [instance] = moto_ec2.instances("spotty-1")
    assert instance["InstanceLifecycle"] == "spot" and instance["State"]["Name"] == "running"
    assert instance["ImageId"] == image
    [root] = instance["BlockDeviceMappings"]
    [volume] = moto_ec2.client().describe_volumes(VolumeIds=[root["Ebs"]["VolumeId"]])["Volumes"]
    assert volume["Size"] == 100

    moto_ec2.interrupt_spot(instance["InstanceId"])  # AWS takes the capacity back
    flag.touch()
    wait_status(tsky_env, 1, "SUCCEEDED", timeout=120)

    [row] = queue_json(tsky_env)
    assert row["recoveries"] == 1
    controller = tsky_env.tsky("jobs", "logs", "--controller", "1").stdout
    assert "node 0 is PREEMPTED" in controller or "Cluster preempted or failed, recovering" in controller, controller
    assert "Cluster launched: spotty-1-r1." in controller, controller
    first = tsky_env.tsky("jobs", "logs", "1", "--attempt", "0").stdout
    assert "working" in first and "finished after recovery" not in first
    last = tsky_env.tsky("jobs", "logs", "1", "--no-follow").stdout
    assert "finished after recovery" in last, last

    # Teardown: every instance terminated, no process of either cluster left on the sshd nodes.
    states = {i["InstanceId"]: i["State"]["Name"] for i in moto_ec2.instances()}
    assert len(states) == 2 and set(states.values()) == {"terminated"}, states
    assert moto_ec2.client().describe_volumes()["Volumes"] == []  # the 100 GB disks went with them
    assert wait_until(lambda: no_tagged_processes("spotty-1"), 10, what="the job's processes to be gone")


def test_resource_labels_become_instance_tags(tsky_env: TskyEnv, moto_ec2: MotoEC2, ssh_nodes: SSHNodes) -> None:
    aws_world(tsky_env, moto_ec2, ssh_nodes, 1)
    job = tsky_env.write(
        "labelled.yaml",
        "name: labelled\nresources:\n  infra: aws/us-east-1\n  cpus: 2\n"
        "  labels: {team: ml, project: tsky, tsky-cluster: mine}\nrun: echo hi\n",
    )
    result = tsky_env.tsky("jobs", "launch", "-y", str(job))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "labels" not in result.stderr  # acted on, so not in the "not acted on" note
    [instance] = moto_ec2.instances("labelled-1")
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags["team"] == "ml" and tags["project"] == "tsky"
    assert tags["tsky-cluster"] == "labelled-1"  # tsky's own tag (the sweeper's) wins a clash
