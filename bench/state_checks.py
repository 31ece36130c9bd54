"""Cloud API calls at rest, by number of watched jobs: the shared node-state listing against moto's EC2.

    python bench/state_checks.py [--jobs 10 1000] [--seconds 60] [--state-check-seconds 15]

For each N it launches N tagged instances in moto (one region), then runs N watchers in this process, each
asking `AwsBackend.node_states` on the watcher's schedule (every `state_check_seconds`, staggered), for
`--seconds`. It counts every EC2 call the backend sends, by operation, with botocore's event hooks, and
prints calls per minute and this process's CPU. Figures, never pass/fail. moto runs on a free 127.0.0.1
port in this process and is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

for _var, _value in {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
}.items():
    os.environ[_var] = _value
os.environ.pop("AWS_PROFILE", None)

from bench._stack import free_port  # noqa: E402
from tsky.contract.activity_io import ClusterInfo, NodeInfo  # noqa: E402
from tsky.ops.clouds import labels as keys  # noqa: E402
from tsky.ops.clouds.aws import AwsBackend  # noqa: E402
from tsky.spec.settings import Settings  # noqa: E402

REGION = "us-east-1"


async def watch(backend: AwsBackend, cluster: ClusterInfo, until: float) -> int:
    """One watcher's state checks, on its own staggered schedule (as `watch.py` does); checks made."""
    checks = 0
    await asyncio.sleep(random.uniform(0, backend.state_check_seconds))
    while time.monotonic() < until:
        await backend.node_states(cluster)
        checks += 1
        await asyncio.sleep(backend.state_check_seconds)
    return checks


async def measure(url: str, jobs: int, seconds: float, interval: float) -> dict[str, Any]:
    import boto3

    home = Path(tempfile.mkdtemp(prefix="tsky-bench-states-"))
    backend = AwsBackend(
        Settings(home=home, aws={"endpoint_url": url, "regions": [REGION], "state_check_seconds": interval})
    )
    ec2 = boto3.client("ec2", endpoint_url=url, region_name=REGION)
    image = ec2.register_image(Name=f"bench-{jobs}", RootDeviceName="/dev/sda1")["ImageId"]
    tags = [{"Key": keys.OWNER, "Value": backend.owner}]
    launched = ec2.run_instances(
        ImageId=image,
        InstanceType="m5.large",
        MinCount=jobs,
        MaxCount=jobs,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [*tags, {"Key": keys.CLUSTER, "Value": "bench"}]}],
    )["Instances"]
    clusters = [
        ClusterInfo(
            name=f"bench-{n}",
            backend="aws",
            region=REGION,
            instance_type="m5.large",
            nodes=[NodeInfo(rank=0, ip="127.0.0.1", host_id=i["InstanceId"])],
        )
        for n, i in enumerate(launched)
    ]
    sent: dict[str, int] = {}

    def count(event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        sent[operation] = sent.get(operation, 0) + 1

    backend._client(REGION).meta.events.register("before-send.ec2", count)
    cpu0, t0 = time.process_time(), time.monotonic()
    checks = await asyncio.gather(*(watch(backend, c, t0 + seconds) for c in clusters))
    span = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    ec2.terminate_instances(InstanceIds=[i["InstanceId"] for i in launched])
    return {"jobs": jobs, "span": span, "checks": sum(checks), "sent": sent, "cpu_pct": 100 * cpu / span}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--seconds", type=float, default=60, help="how long each N is watched")
    parser.add_argument("--state-check-seconds", type=float, default=15)
    args = parser.parse_args()
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        results = [
            asyncio.run(measure(f"http://127.0.0.1:{port}", n, args.seconds, args.state_check_seconds))
            for n in args.jobs
        ]
    finally:
        server.stop()
    print(f"\nEC2 node-state checks at rest, one region, state_check_seconds={args.state_check_seconds:g} (moto)")
    for r in results:
        per_minute = {op: 60 * n / r["span"] for op, n in sorted(r["sent"].items())}
        calls = ", ".join(f"{op} {rate:.1f}/min" for op, rate in per_minute.items()) or "none"
        print(
            f"  {r['jobs']:>5} jobs: {r['checks']} watcher checks in {r['span']:.0f} s -> EC2 calls: {calls} "
            f"(a call per check would be {60 * r['checks'] / r['span']:.0f}/min); this process (moto included) "
            f"{r['cpu_pct']:.1f} % of one core"
        )


if __name__ == "__main__":
    main()
