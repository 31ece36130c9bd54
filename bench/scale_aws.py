"""The `--infra aws` world of `bench/scale.py`: moto's EC2 over real HTTP, and sshd nodes on 127.x addresses
standing in for the instances, as the aws tests use them.

moto runs in the benchmark's process (on a free 127.0.0.1 port) behind a small WSGI wrapper that counts every
EC2 request by its `Action`, so the worker is measured untouched: its calls arrive as they would at AWS.
The worker reaches the instances through the address resolver `tests/backends/stand_ins.py`, configured as
a user configures theirs (`aws.ssh_address_resolver`); one node per instance, each logging the commands it
runs (sshd at DEBUG1), so the benchmark counts SSH commands as for `--infra ssh`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._stack import ROOT, free_port

REGION = "us-east-1"
RESOURCES = f"resources: {{infra: aws/{REGION}, cpus: 2}}\n"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": REGION,
    "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",  # loading moto's 1301 images takes seconds
}


class CountingApp:
    """WSGI middleware: counts requests by EC2 `Action` (query protocol: form-encoded body) before moto
    answers them."""

    def __init__(self, app: Callable[..., Iterable[bytes]]):
        self.app = app
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", "")) | urllib.parse.parse_qs(
            body.decode(errors="replace")
        )
        action = (query.get("Action") or [None])[0]
        if action:
            with self.lock:
                self.calls[action] += 1
        return self.app(environ, start_response)

    def snapshot(self) -> Counter[str]:
        with self.lock:
            return Counter(self.calls)


@dataclass
class AwsWorld:
    url: str
    counter: CountingApp
    node_dirs: list[Path]
    endpoints: list[str]
    config: dict[str, Any] = field(default_factory=dict)  # merged into the stack's config.yaml

    def attach(self, home: Path) -> None:
        """Stand the nodes in for the instances of the stack at `home` (its workers read this lazily)."""
        from tests.backends import stand_ins

        stand_ins.use(home, self.endpoints)


@contextlib.contextmanager
def moto_server() -> Iterator[tuple[str, CountingApp]]:
    """moto's EC2 on a free 127.0.0.1 port in this process, behind the counter; stopped afterwards."""
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    counter = CountingApp(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", free_port(), counter, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", counter
    finally:
        server.shutdown()
        thread.join()


@contextlib.contextmanager
def aws_world(count: int) -> Iterator[AwsWorld]:
    """moto plus `count` sshd stand-in nodes, and the aws config a worker needs; all stopped afterwards."""
    from tests.backends import sshd

    why = sshd.available()
    if why:
        raise SystemExit(f"--infra aws: {why}")
    os.environ.update(FAKE_CREDENTIALS)
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        os.environ.pop(var, None)
    # The workers import the stand-in resolver from the repository's tests package.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    nodes = sshd.SSHNodes(Path(tempfile.mkdtemp(prefix="tsky-bench-nodes-")))
    try:
        with moto_server() as (url, counter):
            import boto3

            ec2 = boto3.client("ec2", endpoint_url=url, region_name=REGION)
            image = str(ec2.register_image(Name="tsky-bench-image", RootDeviceName="/dev/sda1")["ImageId"])
            started = [nodes.start(log_level="DEBUG1") for _ in range(count)]
            world = AwsWorld(url, counter, [n.dir for n in started], [n.endpoint for n in started])
            world.config = {
                "aws": {
                    "endpoint_url": url,
                    "regions": [REGION],
                    "ami": image,
                    "ssh_user": "root",
                    "ssh_private_key": str(nodes.client_key),
                    "ssh_address_resolver": "tests.backends.stand_ins:StandIns",
                }
            }
            yield world
            left = [
                i["InstanceId"]
                for page in ec2.get_paginator("describe_instances").paginate()
                for r in page["Reservations"]
                for i in r["Instances"]
                if i["State"]["Name"] != "terminated"
            ]
            if left:
                print(f"  (instances left running in moto: {len(left)})", flush=True)
    finally:
        nodes.stop_all()
        shutil.rmtree(nodes.root, ignore_errors=True)


API_PREFIX = "ec2_per_min_"  # figures: EC2 calls per minute at rest, by operation


def api_figures(before: Counter[str], after: Counter[str], seconds: float) -> dict[str, float]:
    """EC2 calls per minute between two counter snapshots, by operation (the figures' keys)."""
    return {
        f"{API_PREFIX}{op}": 60 * (after[op] - before[op]) / seconds for op in sorted(after) if after[op] > before[op]
    }


def report_line(figures: dict[str, float], jobs: int) -> str:
    calls = {key.removeprefix(API_PREFIX): rate for key, rate in figures.items() if key.startswith(API_PREFIX)}
    by_op = ", ".join(f"{op} {rate:.1f}" for op, rate in calls.items()) or "none"
    return f"EC2 API calls at rest:    {sum(calls.values()):.1f} per minute ({jobs} jobs, one region): {by_op}"
