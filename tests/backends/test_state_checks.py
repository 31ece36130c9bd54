"""Node state checks at scale: every watcher of a worker is answered from one listing per region, counted
at the cloud's door (botocore's event hooks against moto; the request logs of the GCE and k8s fakes), and a
throttled cloud is backed off from and never taken for a lost node. Errors are injected with the clouds'
real wire shapes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.endpoint
import pytest
from botocore.awsrequest import AWSResponse
from temporalio.testing import ActivityEnvironment

from tests.backends import stand_ins
from tests.backends.conftest import MotoEC2
from tests.backends.fake_gce import FakeCompute
from tests.backends.fake_k8s import FakeKube
from tests.backends.sshd import SSHNodes
from tsky.activities import watch
from tsky.contract.activity_io import ClusterInfo, JobMeta, NodeInfo, PhaseInput, PhaseResult
from tsky.ops.clouds import labels as keys
from tsky.ops.clouds import ssh_runner
from tsky.ops.clouds.aws import AwsBackend
from tsky.ops.clouds.base import CapacityError, PhaseStatus, PrecheckError, ThrottledError, TransientError
from tsky.ops.clouds.gcp import GcpBackend
from tsky.ops.clouds.kubernetes import KubernetesBackend
from tsky.spec.requests import Candidate
from tsky.spec.settings import Settings
from tsky.spec.status import NodeState
from tsky.spec.task import Task

pytestmark = pytest.mark.asyncio

CLUSTERS = 50


class _Body:
    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


def ec2_error(status: int, code: str, message: str) -> AWSResponse:
    """An EC2 error response exactly as EC2 sends it (Query protocol XML)."""
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
        f"<Message>{message}</Message></Error></Errors><RequestID>3b7a7c1e-0000</RequestID></Response>"
    ).encode()
    return AWSResponse("https://ec2.us-east-1.amazonaws.com/", status, {"Content-Type": "text/xml"}, _Body(body))


class EC2Door:
    """Counts the calls a backend sends to EC2, by operation, and answers some with injected errors."""

    def __init__(self, backend: AwsBackend, region: str = "us-east-1"):
        self.sent: dict[str, int] = {}
        self.fail: dict[str, list[AWSResponse]] = {}
        events = backend._client(region).meta.events
        events.register("before-send.ec2", self._before_send)

    def _before_send(self, event_name: str, **_: Any) -> AWSResponse | None:
        operation = event_name.rsplit(".", 1)[-1]  # before-send.ec2.<Operation>
        self.sent[operation] = self.sent.get(operation, 0) + 1
        queued = self.fail.get(operation)
        return queued.pop(0) if queued else None

    def count(self, operation: str) -> int:
        return self.sent.get(operation, 0)


class BotocoreBackoffs:
    """Stands in for the clock botocore sleeps on between its retries: records each backoff it chose and
    returns at once. botocore still decides what to retry and for how long; the test does not wait."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def botocore_backoffs(monkeypatch: pytest.MonkeyPatch) -> BotocoreBackoffs:
    # tsky's EC2 client pins its retry config, over AWS_MAX_ATTEMPTS/AWS_RETRY_MODE; throttling backs off
    # by rand(0, 1) * 2**n seconds per retry, ~15 s a test for five retries.
    backoffs = BotocoreBackoffs()
    monkeypatch.setattr(botocore.endpoint, "time", backoffs)
    return backoffs


def aws_settings(moto: MotoEC2, tmp_path: Path, **extra: Any) -> Settings:
    config = {"endpoint_url": moto.url, "regions": ["us-east-1"], "ami": moto.an_ami(), "state_check_seconds": 30}
    return Settings(home=tmp_path, aws=config | extra)


def launch_clusters(moto: MotoEC2, owner: str, names: list[str], image: str) -> list[ClusterInfo]:
    """Clusters as tsky's provision leaves them (tagged instances), made directly in moto: this test is about
    watching them, and needs no SSH."""
    clusters = []
    for name in names:
        tags = [{"Key": keys.CLUSTER, "Value": name}, {"Key": keys.OWNER, "Value": owner}]
        [instance] = moto.client().run_instances(
            ImageId=image,
            InstanceType="m5.large",
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )["Instances"]
        node = NodeInfo(rank=0, ip="127.0.0.1", host_id=instance["InstanceId"])
        clusters.append(
            ClusterInfo(name=name, backend="aws", region="us-east-1", instance_type="m5.large", nodes=[node])
        )
    return clusters


async def test_aws_watchers_share_one_describe_per_interval_and_survive_throttling(
    moto_ec2: MotoEC2, tmp_path: Path, botocore_backoffs: BotocoreBackoffs
) -> None:
    backend = AwsBackend(aws_settings(moto_ec2, tmp_path))
    image = backend.cfg.ami
    assert isinstance(image, str)
    clusters = launch_clusters(moto_ec2, backend.owner, [f"job-{n}" for n in range(CLUSTERS)], image)
    door = EC2Door(backend)

    # 50 watchers ask at once: one DescribeInstances answers them all.
    states = await asyncio.gather(*(backend.node_states(c) for c in clusters))
    assert states == [[NodeState.UP]] * CLUSTERS
    assert door.count("DescribeInstances") == 1
    # Within state_check_seconds, routine checks cost nothing more.
    await asyncio.gather(*(backend.node_states(c) for c in clusters))
    assert door.count("DescribeInstances") == 1

    # A node lost behind tsky's back: the watchers that saw something ask for a fresh answer, together.
    moto_ec2.client().terminate_instances(InstanceIds=[clusters[0].nodes[0].host_id])
    fresh = await asyncio.gather(*(backend.node_states(c, fresh=True) for c in clusters))
    assert fresh[0] == [NodeState.GONE] and fresh[1:] == [[NodeState.UP]] * (CLUSTERS - 1)
    assert door.count("DescribeInstances") == 2

    # A cluster launched after the last listing is not taken for gone: its absence makes one fresh listing.
    [late] = launch_clusters(moto_ec2, backend.owner, ["late-1"], image)
    assert await backend.node_states(late) == [NodeState.UP]
    assert door.count("DescribeInstances") == 3

    # EC2 throttles (HTTP 503 RequestLimitExceeded): botocore's retries, then UNKNOWN, which is no loss.
    throttled = ec2_error(503, "RequestLimitExceeded", "Request limit exceeded.")
    door.fail["DescribeInstances"] = [throttled] * 20
    before = door.count("DescribeInstances")
    states = await asyncio.gather(*(backend.node_states(c, fresh=True) for c in clusters[1:]))
    assert states == [[NodeState.UNKNOWN]] * (CLUSTERS - 1)
    assert not any(s.is_lost() for s in NodeState if s is NodeState.UNKNOWN)
    sent = door.count("DescribeInstances") - before
    assert 1 <= sent <= 6  # one listing for all: its first try and botocore's 5 retries
    assert len(botocore_backoffs.delays) == sent - 1  # botocore backed off before each retry
    # Backing off: asking again sends nothing and still says UNKNOWN.
    assert await backend.node_states(clusters[1], fresh=True) == [NodeState.UNKNOWN]
    assert door.count("DescribeInstances") - before == sent

    # Once EC2 answers again (after the backoff), the watchers hear the truth again.
    door.fail["DescribeInstances"] = []
    deadline = time.monotonic() + 30
    while (answer := await backend.node_states(clusters[1], fresh=True)) == [NodeState.UNKNOWN]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.5)
    assert answer == [NodeState.UP]
    moto_ec2.client().terminate_instances(InstanceIds=[c.nodes[0].host_id for c in [*clusters, late]])


def aws_candidate() -> Candidate:
    return Candidate(cloud="aws", region="us-east-1", zone="us-east-1a", instance_type="m5.large", vcpus=2, memory_gb=8)


def launch_meta() -> JobMeta:
    return JobMeta(job_id=1, job_name="j", task_index=0, task_name="j", task_id="t", task_ids=["t"], user="u")


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (500, "InsufficientInstanceCapacity", CapacityError),
        (503, "RequestLimitExceeded", ThrottledError),
        (400, "Throttling", ThrottledError),
        (500, "InternalError", TransientError),
        (401, "AuthFailure", PrecheckError),
    ],
)
async def test_aws_launch_errors_are_typed_from_the_wire(
    moto_ec2: MotoEC2,
    tmp_path: Path,
    botocore_backoffs: BotocoreBackoffs,
    status: int,
    code: str,
    expected: type[Exception],
) -> None:
    backend = AwsBackend(aws_settings(moto_ec2, tmp_path))
    door = EC2Door(backend)
    door.fail["RunInstances"] = [ec2_error(status, code, "injected")] * 6  # outlasts botocore's 5 retries
    with pytest.raises(expected, match=code) as raised:
        await backend.provision("cap-1", aws_candidate(), 1, launch_meta())
    # Throttling and 5xx are transient (the launch is retried with backoff), never a precheck failure.
    assert not isinstance(raised.value, PrecheckError) or expected is PrecheckError
    # botocore retried all but bad credentials 5 times, backing off before each retry.
    retries = 0 if expected is PrecheckError else 5
    assert door.count("RunInstances") == 1 + retries and len(botocore_backoffs.delays) == retries
    assert moto_ec2.instances("cap-1") == []


# -- GCE ---------------------------------------------------------------------------------------------------


@pytest.fixture
def gce() -> Iterator[FakeCompute]:
    fake = FakeCompute().start()
    yield fake
    fake.stop()


def gcp_settings(gce: FakeCompute, tmp_path: Path, **extra: Any) -> Settings:
    config = {"project": "tsky-test", "api_endpoint": gce.url, "anonymous_credentials": True, "state_check_seconds": 30}
    return Settings(home=tmp_path, gcp=config | {"provision_timeout": 20} | extra)


def gce_clusters(gce: FakeCompute, owner: str, count: int, zone: str = "us-central1-a") -> list[ClusterInfo]:
    """Running instances labelled as tsky's provision labels them, made directly in the fake."""
    clusters = []
    for n in range(count):
        name = f"job-{n}-{owner[:6]}-0"
        labels = {"tsky-cluster": f"job-{n}", "tsky-owner": owner}
        _, op = gce.insert(
            "tsky-test", zone, {"name": name, "machineType": f"zones/{zone}/machineTypes/n2", "labels": labels}
        )
        while gce.operation("tsky-test", zone, op["name"])[1]["status"] != "DONE":
            pass
        node = NodeInfo(rank=0, ip="127.0.0.1", host_id=name)
        clusters.append(
            ClusterInfo(
                name=f"job-{n}", backend="gcp", region="us-central1", zone=zone, instance_type="n2", nodes=[node]
            )
        )
    return clusters


def listings(gce: FakeCompute) -> int:
    return sum(1 for method, path in gce.requests if method == "GET" and path.endswith("/aggregated/instances"))


async def test_gce_watchers_share_one_aggregated_list_and_survive_rate_limits(gce: FakeCompute, tmp_path: Path) -> None:
    backend = GcpBackend(gcp_settings(gce, tmp_path))
    clusters = gce_clusters(gce, backend.owner, CLUSTERS)

    states = await asyncio.gather(*(backend.node_states(c) for c in clusters))
    assert states == [[NodeState.UP]] * CLUSTERS
    assert listings(gce) == 1
    await asyncio.gather(*(backend.node_states(c) for c in clusters))
    assert listings(gce) == 1
    assert not any(path.endswith(f"/instances/{c.nodes[0].host_id}") for _, path in gce.requests for c in clusters)

    # GCE's 403 rateLimitExceeded on every try: UNKNOWN (no loss), and no more calls while backing off.
    gce.faults["aggregated"] = [(403, "rateLimitExceeded")] * 5
    states = await asyncio.gather(*(backend.node_states(c, fresh=True) for c in clusters))
    assert states == [[NodeState.UNKNOWN]] * CLUSTERS
    assert listings(gce) == 6  # the one listing for all, sent five times with backoff
    assert await backend.node_states(clusters[0], fresh=True) == [NodeState.UNKNOWN]
    assert listings(gce) == 6
    # A passing 429 is absorbed by the backoff of the call itself: the watchers never notice.
    await asyncio.sleep(2.5)  # past the checker's first backoff
    gce.faults["aggregated"] = [(429, "rateLimitExceeded")]
    assert await backend.node_states(clusters[0], fresh=True) == [NodeState.UP]


def gce_candidate(zone: str = "us-central1-a") -> Candidate:
    return Candidate(cloud="gcp", region="us-central1", zone=zone, instance_type="n2-standard-4", vcpus=4, memory_gb=16)


@pytest.mark.parametrize(
    ("fault", "expected", "words"),
    [
        ((403, "rateLimitExceeded"), ThrottledError, "Quota exceeded for quota metric 'Queries'"),
        ((403, "userRateLimitExceeded"), ThrottledError, "User Rate Limit Exceeded"),
        ((429, "rateLimitExceeded"), ThrottledError, "Queries"),
        ((503, "backendError"), TransientError, "Internal error"),
        ((403, "forbidden"), PrecheckError, "forbidden"),
    ],
)
async def test_gce_launch_errors_are_typed(
    gce: FakeCompute, tmp_path: Path, fault: tuple[int, str], expected: type[Exception], words: str
) -> None:
    backend = GcpBackend(gcp_settings(gce, tmp_path))
    gce.faults["insert"] = [fault] * 5
    with pytest.raises(expected, match=words) as raised:
        await backend.provision("burst-1", gce_candidate(), 1, launch_meta())
    # A burst of launches meets rate limits and 5xx: transient (retried with backoff), never FAILED_PRECHECKS.
    assert not isinstance(raised.value, PrecheckError) or expected is PrecheckError
    assert gce.names() == []


async def test_gce_quota_inside_an_operation_is_capacity(gce: FakeCompute, tmp_path: Path) -> None:
    backend = GcpBackend(gcp_settings(gce, tmp_path))
    gce.quota_zones.add("us-central1-b")
    with pytest.raises(CapacityError, match="QUOTA_EXCEEDED"):
        await backend.provision("quota-1", gce_candidate("us-central1-b"), 1, launch_meta())
    assert gce.names() == []


async def test_gce_slow_and_throttled_launch_still_succeeds(
    gce: FakeCompute, ssh_nodes: SSHNodes, tmp_path: Path
) -> None:
    node = stand_ins.use(tmp_path, [ssh_nodes.start().endpoint])
    key = str(ssh_nodes.client_key)
    backend = GcpBackend(gcp_settings(gce, tmp_path, ssh_user="root", ssh_private_key=key, **node))
    gce.operation_polls = 4  # the insert stays RUNNING for four looks, then PROVISIONING → STAGING → RUNNING
    gce.faults["insert"] = [(403, "rateLimitExceeded")]
    gce.faults["operation"] = [(429, "rateLimitExceeded"), (503, "backendError")]
    try:
        cluster = await backend.provision("slow-1", gce_candidate(), 1, launch_meta())
        assert await backend.node_states(cluster) == [NodeState.UP]
    finally:
        await backend.teardown("slow-1", None)
        await ssh_runner.close_all()
    assert gce.names() == []


# -- Kubernetes --------------------------------------------------------------------------------------------


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    fake = FakeKube(tmp_path / "pods", namespaces=("tsky",)).start()
    monkeypatch.setenv("KUBECONFIG", str(fake.write_kubeconfig(tmp_path / "kubeconfig", context="fake")))
    yield fake
    fake.stop()


def k8s_settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home", kubernetes={"namespace": "tsky", "state_check_seconds": 30, "provision_timeout": 5}
    )


def pod_lists(kube: FakeKube) -> int:
    return sum(1 for method, path in kube.requests if method == "GET" and path == "/api/v1/namespaces/tsky/pods")


async def test_k8s_watchers_share_one_pod_list_and_survive_429(kube: FakeKube, tmp_path: Path) -> None:
    backend = KubernetesBackend(k8s_settings(tmp_path))
    clusters = []
    for n in range(CLUSTERS):
        name = backend.pod_name(f"job-{n}", 0)
        labels = {"tsky-cluster": f"job-{n}", "tsky-owner": backend.owner}
        body = {"metadata": {"name": name, "labels": labels}, "spec": {"containers": [{"name": "tsky", "image": "x"}]}}
        assert kube.create("tsky", body)[0] == 201
        node = NodeInfo(rank=0, ip="", host_id=name)
        clusters.append(ClusterInfo(name=f"job-{n}", backend="k8s", region="fake", instance_type="pod", nodes=[node]))
    deadline = time.monotonic() + 20
    while any(
        (kube.pod(c.nodes[0].host_id, "tsky") or {}).get("status", {}).get("phase") != "Running" for c in clusters
    ):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)

    states = await asyncio.gather(*(backend.node_states(c) for c in clusters))
    assert states == [[NodeState.UP]] * CLUSTERS
    assert pod_lists(kube) == 1
    kube.evict(clusters[0].nodes[0].host_id, "tsky")
    states = await asyncio.gather(*(backend.node_states(c, fresh=True) for c in clusters))
    assert states[0] == [NodeState.PREEMPTED] and states[1:] == [[NodeState.UP]] * (CLUSTERS - 1)
    assert pod_lists(kube) == 2

    # The API server's priority and fairness answers 429: UNKNOWN for all, one list sent, then backoff.
    kube.faults["list"] = [429]
    states = await asyncio.gather(*(backend.node_states(c, fresh=True) for c in clusters))
    assert states == [[NodeState.UNKNOWN]] * CLUSTERS
    assert pod_lists(kube) == 3
    assert await backend.node_states(clusters[1], fresh=True) == [NodeState.UNKNOWN]
    assert pod_lists(kube) == 3
    await backend.teardown("job-0", clusters[0])


@pytest.mark.parametrize(("code", "expected"), [(429, ThrottledError), (500, TransientError), (503, TransientError)])
async def test_k8s_launch_errors_are_typed(
    kube: FakeKube, tmp_path: Path, code: int, expected: type[Exception]
) -> None:
    backend = KubernetesBackend(k8s_settings(tmp_path))
    kube.faults["create"] = [code]
    candidate = Candidate(cloud="k8s", region="fake", instance_type="pod", vcpus=1, memory_gb=1)
    with pytest.raises(expected) as raised:
        await backend.provision("burst-1", candidate, 1, launch_meta())
    assert not isinstance(raised.value, PrecheckError | CapacityError)
    await backend.teardown("burst-1", None)
    assert kube.pod_names() == []


async def test_k8s_launch_survives_watches_ending_in_error(kube: FakeKube, tmp_path: Path) -> None:
    settings = k8s_settings(tmp_path)
    backend = KubernetesBackend(settings.model_copy(update={"kubernetes": settings.kubernetes.model_copy(
        update={"provision_timeout": 30})}))  # fmt: skip
    kube.unschedulable = True  # the pod waits, so the launch watches
    kube.watch_errors = [410, 500, 410]
    candidate = Candidate(cloud="k8s", region="fake", instance_type="pod", vcpus=1, memory_gb=1)
    launch = asyncio.create_task(backend.provision("slow-1", candidate, 1, launch_meta()))
    deadline = time.monotonic() + 20
    while kube.watch_errors:  # each watch ended with an ERROR event; the launch listed again and watched on
        assert time.monotonic() < deadline and not launch.done()
        await asyncio.sleep(0.1)
    kube.unschedulable = False
    kube.schedule_pending()
    cluster = await launch
    assert await backend.node_states(cluster) == [NodeState.UP]
    await backend.teardown("slow-1", cluster)


@pytest.mark.parametrize(
    ("reason", "disruption"),
    [("Evicted", None), ("Terminated", "TerminationByKubelet"), (None, "PreemptionByScheduler")],
)
async def test_k8s_pods_taken_away_are_preempted(
    kube: FakeKube, tmp_path: Path, reason: str | None, disruption: str | None
) -> None:
    backend = KubernetesBackend(k8s_settings(tmp_path))
    candidate = Candidate(cloud="k8s", region="fake", instance_type="pod", vcpus=1, memory_gb=1)
    cluster = await backend.provision("taken-1", candidate, 2, launch_meta())
    message = "Pod was terminated in response to imminent node shutdown."
    kube.evict(cluster.nodes[1].host_id, "tsky", reason=reason, message=message, disruption=disruption)
    assert await backend.node_states(cluster, fresh=True) == [NodeState.UP, NodeState.PREEMPTED]
    await backend.teardown("taken-1", cluster)


# -- the watcher -------------------------------------------------------------------------------------------


class RunningNode:
    """A node whose phase runs until `ends_at` (monotonic time), then exits 0."""

    def __init__(self, ends_at: float) -> None:
        self.ends_at = ends_at

    async def start_phase(self, phase: str, script: str, env: dict[str, str]) -> int:
        return 4242

    async def phase_status(self, phase: str) -> PhaseStatus:
        if time.monotonic() < self.ends_at:
            return PhaseStatus(started=True, pid=4242, alive=True)
        return PhaseStatus(started=True, pid=4242, alive=False, exit_code=0)

    async def read_log(self, phase: str, offset: int, limit: int) -> bytes:
        return b""

    async def stop_phase(self, phase: str) -> None:
        return None


async def test_a_throttled_cloud_never_ends_a_running_job(
    moto_ec2: MotoEC2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EC2 throttles every DescribeInstances for longer than the unreachable window: the watcher keeps
    watching the healthy node and the job ends as it really does (exit 0), neither lost nor unreachable."""
    backend = AwsBackend(aws_settings(moto_ec2, tmp_path, state_check_seconds=0.2))
    image = backend.cfg.ami
    assert isinstance(image, str)
    [cluster] = launch_clusters(moto_ec2, backend.owner, ["busy-1"], image)
    door = EC2Door(backend)
    door.fail["DescribeInstances"] = [ec2_error(503, "RequestLimitExceeded", "Request limit exceeded.")] * 1000
    node = RunningNode(ends_at=time.monotonic() + 12)
    monkeypatch.setattr(backend, "node", lambda cluster, rank: node)
    monkeypatch.setattr(watch, "get_backend", lambda name, settings: backend)
    inp = PhaseInput(
        meta=launch_meta(),
        cluster=cluster,
        phase="run",
        attempt=0,
        task=Task(name="j", run="python train.py"),
        poll_seconds=0.2,
        status_check_min_elapsed_seconds=1,
        status_check_min_retries=2,
    )
    result = await ActivityEnvironment().run(watch.PhaseActivities(Settings(home=tmp_path)).run_and_watch, inp)
    assert result == PhaseResult(exit_codes=[0])
    assert door.count("DescribeInstances") >= 2  # it did ask, and was throttled
    moto_ec2.client().terminate_instances(InstanceIds=[cluster.nodes[0].host_id])
