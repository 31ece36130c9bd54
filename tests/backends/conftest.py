"""Fixtures of the backend tests: sshd nodes on loopback addresses, moto's EC2."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.backends import sshd
from tests.emulators import moto_s3  # noqa: F401  (S3 for the multi-host test's log store)
from tests.harness import free_port
from tests.real_parts import skip_missing_real_part


@pytest.fixture
def ssh_nodes(tmp_path: Path) -> Iterator[sshd.SSHNodes]:
    """A factory of sshd nodes; every node it started is killed (with all its processes) afterwards."""
    why = sshd.available()
    if why:
        skip_missing_real_part(why)
    nodes = sshd.SSHNodes(tmp_path / "sshd")
    yield nodes
    nodes.stop_all()


@dataclass
class MotoEC2:
    """moto's EC2 over real HTTP on a free 127.0.0.1 port, in this process, so tests can reach into its
    state to do what only AWS does (take a spot instance back)."""

    url: str
    region: str = "us-east-1"

    def backend(self) -> Any:
        from moto.backends import get_backend
        from moto.core import DEFAULT_ACCOUNT_ID

        return get_backend("ec2")[DEFAULT_ACCOUNT_ID][self.region]

    def client(self) -> Any:
        import boto3

        return boto3.client("ec2", endpoint_url=self.url, region_name=self.region)

    def instances(self, cluster: str | None = None) -> list[dict[str, Any]]:
        filters = [{"Name": "tag:tsky-cluster", "Values": [cluster]}] if cluster else []
        pages = self.client().get_paginator("describe_instances").paginate(Filters=filters)
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def interrupt_spot(self, instance_id: str) -> None:
        """What AWS does to a spot instance it takes back: terminated, for a spot reason."""
        from moto.ec2.models.instances import StateReason

        be = self.backend()
        be.terminate_instances([instance_id])
        be.get_instance(instance_id).state_reason = StateReason(
            "Server.SpotInstanceTermination: Spot instance termination", "Server.SpotInstanceTermination"
        )

    def an_ami(self) -> str:
        return str(self.client().register_image(Name="tsky-test-image", RootDeviceName="/dev/sda1")["ImageId"])


@pytest.fixture
def moto_ec2(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoEC2]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")  # loading moto's 1301 images takes seconds
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    moto = MotoEC2(f"http://127.0.0.1:{port}")
    urllib.request.urlopen(urllib.request.Request(f"{moto.url}/moto-api/reset", method="POST")).close()
    yield moto
    left = [i["InstanceId"] for i in moto.instances() if i["State"]["Name"] != "terminated"]
    urllib.request.urlopen(urllib.request.Request(f"{moto.url}/moto-api/reset", method="POST")).close()
    server.stop()
    assert not left, f"instances left running: {left}"
