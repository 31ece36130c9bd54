"""The k8s backend against the fake API server (`fake_k8s.py`): no real kube-apiserver can run here.

Through the official client: pods created with their labels, resources, spot selectors and tolerations;
adopted on a retried provision; phases exec'd exactly once, re-attached, logged and stopped; files copied;
eviction and deletion seen as lost nodes; unschedulable, quota, bad image and missing namespace typed;
teardown leaves no pod and no process; two installations never touch each other's pods; a phase's log
streamed over one exec websocket each (no thread held per stream), its follower ended by a close or a cut
connection, an image without GNU tail saying it cannot follow, and mutual TLS with a token for streams too.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends.fake_k8s import THREAD_NAME, FakeKube, FakeNode
from tests.integration.test_external_tls import write_pki
from tsky.contract.activity_io import ClusterInfo, JobMeta
from tsky.ops.clouds.base import CapacityError, FollowingAgent, FollowUnsupported, LogStream, PhaseStatus, PrecheckError
from tsky.ops.clouds.kubernetes import KubernetesBackend
from tsky.ops.clouds.pod_exec import PodAgent
from tsky.ops.clouds.ssh_runner import NodeUnreachable
from tsky.spec.requests import Candidate
from tsky.spec.settings import Settings
from tsky.spec.status import NodeState

pytestmark = pytest.mark.asyncio

SPOT_TOLERATION = {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    fake = FakeKube(tmp_path / "pods", namespaces=("default", "tsky")).start()
    monkeypatch.setenv("KUBECONFIG", str(fake.write_kubeconfig(tmp_path / "kubeconfig", context="fake")))
    yield fake
    fake.stop()
    assert not fake.processes(), "a pod's process outlived the test"


def settings(tmp_path: Path, namespace: str = "tsky", temporal_namespace: str = "default", **extra: Any) -> Settings:
    k8s = {
        "namespace": namespace,
        "provision_timeout": 1,
        "spot_node_selector": {"cloud.google.com/gke-spot": "true"},
        "spot_tolerations": [SPOT_TOLERATION],
        "accelerator_label": "skypilot.co/accelerator",
        **extra,
    }
    return Settings(home=tmp_path / "home", kubernetes=k8s, temporal={"namespace": temporal_namespace})


def candidate(**kwargs: Any) -> Candidate:
    base: dict[str, Any] = {"cloud": "k8s", "region": "fake", "instance_type": "pod", "vcpus": 2, "memory_gb": 4}
    return Candidate(**{**base, **kwargs})


def meta(job_id: int = 7) -> JobMeta:
    return JobMeta(job_id=job_id, job_name="j", task_index=0, task_name="t", task_id="t", task_ids=["t"], user="u")


async def ended(agent: PodAgent, phase: str, timeout: float = 20) -> PhaseStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = await agent.phase_status(phase)
        if status.exit_code is not None:
            return status
        assert time.monotonic() < deadline, f"{phase} did not end: {status}"
        await asyncio.sleep(0.1)


def client_threads() -> int:
    """Threads of this process but the fake API server's."""
    return sum(1 for thread in threading.enumerate() if thread.name != THREAD_NAME)


async def until(check: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def read_all(stream: LogStream) -> bytes:
    """The stream read to its end, then closed."""
    out = b""
    try:
        while data := await stream.read():
            out += data
    finally:
        stream.close()
    return out


async def logged(agent: PodAgent, phase: str, text: bytes) -> None:
    while await agent.read_log(phase, 0, 1 << 20) != text:
        await asyncio.sleep(0.05)


async def test_pods_phases_files_and_teardown(kube: FakeKube, tmp_path: Path) -> None:
    backend = KubernetesBackend(settings(tmp_path))
    spot_gpu = candidate(use_spot=True, accelerator="T4", accelerator_count=1)
    info = await backend.provision("train-7", spot_gpu, 2, meta())
    uids = [kube.pod(node.host_id, "tsky")["metadata"]["uid"] for node in info.nodes]  # type: ignore[index]
    # A retried provision adopts the pods the first try made.
    again = await backend.provision("train-7", spot_gpu, 2, meta())
    assert again.nodes == info.nodes
    assert [kube.pod(node.host_id, "tsky")["metadata"]["uid"] for node in info.nodes] == uids  # type: ignore[index]

    assert info.backend == "k8s" and info.region == "fake" and info.extra["namespace"] == "tsky"
    names = [node.host_id for node in info.nodes]
    assert names == [f"train-7-{backend.owner[:6]}-0", f"train-7-{backend.owner[:6]}-1"]
    assert kube.pod_names("tsky") == names
    pod = kube.pod(names[1], "tsky")
    assert pod is not None
    labels = pod["metadata"]["labels"]
    assert labels["tsky-cluster"] == "train-7" and labels["tsky-job-id"] == "7" and labels["tsky-rank"] == "1"
    assert labels["tsky-owner"] == backend.owner
    container = pod["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"nvidia.com/gpu": "1"}}
    assert pod["spec"]["nodeSelector"] == {"cloud.google.com/gke-spot": "true", "skypilot.co/accelerator": "t4"}
    assert pod["spec"]["tolerations"] == [SPOT_TOLERATION]
    assert pod["spec"]["restartPolicy"] == "Never"

    # Files: the workdir and one file mount, through exec + tar.
    workdir = tmp_path / "workdir"
    (workdir / "sub").mkdir(parents=True)
    (workdir / "hello.txt").write_text("hello from the workdir\n")
    (workdir / "sub" / "run.sh").write_text("echo nested\n")
    (workdir / "sub" / "run.sh").chmod(0o755)
    data = tmp_path / "data.bin"
    data.write_bytes(bytes(range(256)) * 4000)
    head = backend.node(info, 0)
    await head.sync_dir(str(workdir), "sky_workdir")
    await head.sync_file(str(data), "~/inputs/data.bin")
    home = kube.home(names[0], "tsky")
    assert (home / "sky_workdir" / "hello.txt").read_text() == "hello from the workdir\n"
    assert (home / "sky_workdir" / "sub" / "run.sh").stat().st_mode & 0o111
    assert (home / "inputs" / "data.bin").read_bytes() == data.read_bytes()

    # Exactly one start, whoever asks; env values quoted; the exit code and the log come back.
    script = 'cat hello.txt; bash sub/run.sh; echo "$GREETING"; for i in 1 2 3; do echo line$i; done; exit 4'
    env = {"GREETING": 'it\'s "quoted" $HOME `x`', "SKYPILOT_NODE_RANK": "0"}
    pids = await asyncio.gather(*(head.start_phase("run-a0", script, env) for _ in range(4)))
    assert len(set(pids)) == 1
    other = KubernetesBackend(settings(tmp_path)).node(info, 0)  # another worker re-attaches
    assert await other.start_phase("run-a0", "echo never", {}) == pids[0]
    status = await ended(other, "run-a0")
    assert status.exit_code == 4 and status.pid == pids[0] and not status.alive
    log = await other.read_log("run-a0", 0, 1 << 20)
    assert log == b'hello from the workdir\nnested\nit\'s "quoted" $HOME `x`\nline1\nline2\nline3\n'
    assert await other.read_log("run-a0", len(log) - 6, 100) == b"line3\n"

    # A long phase on the worker node, stopped by tsky: ended, and reported as such.
    worker = backend.node(info, 1)
    await worker.start_phase("run-a1", "echo started; sleep 300", {})
    while (await worker.read_log("run-a1", 0, 100)) != b"started\n":
        await asyncio.sleep(0.05)
    assert (await worker.phase_status("run-a1")).alive
    await worker.stop_phase("run-a1")
    stopped = await worker.phase_status("run-a1")
    assert stopped.exit_code == 128 + signal.SIGTERM and not stopped.alive  # ended by the stop's SIGTERM

    assert await backend.node_states(info) == [NodeState.UP, NodeState.UP]
    [record] = await backend.list_clusters()
    assert (record.name, record.job_id, record.nodes, record.state) == ("train-7", 7, 2, "UP")
    assert record.owner == backend.owner and record.region == "fake" and record.extra["spot"] == "True"

    await backend.teardown("train-7", info)
    assert kube.pod_names() == []
    assert not kube.processes()
    await backend.teardown("train-7", info)  # idempotent
    assert await backend.list_clusters() == []


async def test_eviction_is_preemption_and_a_deleted_pod_is_gone(kube: FakeKube, tmp_path: Path) -> None:
    backend = KubernetesBackend(settings(tmp_path))
    info = await backend.provision("lost-8", candidate(), 3, meta(8))
    for rank in range(3):
        await backend.node(info, rank).start_phase("run-a0", "sleep 300", {})
    kube.evict(info.nodes[0].host_id, "tsky")
    kube.delete(info.nodes[1].host_id, "tsky")
    states = await backend.node_states(info, fresh=True)
    assert states[0] is NodeState.PREEMPTED and states[1] is NodeState.GONE and states[2] is NodeState.UP
    assert all(s.is_lost() for s in states[:2])
    # The evicted pod's phase is gone with it; the others' nodes are not.
    assert (await backend.node(info, 2).phase_status("run-a0")).alive
    [record] = await backend.list_clusters()
    assert record.state in ("PREEMPTED", "GONE")
    await backend.teardown("lost-8", None)  # by name only, as after a failed launch or from the sweeper
    assert kube.pod_names() == []


async def test_launch_errors_are_typed_and_leave_nothing(kube: FakeKube, tmp_path: Path) -> None:
    backend = KubernetesBackend(settings(tmp_path))

    kube.unschedulable = True
    with pytest.raises(CapacityError, match=r"unschedulable.*Insufficient nvidia\.com/gpu"):
        await backend.provision("full-9", candidate(accelerator="A100", accelerator_count=8), 1, meta(9))
    await backend.teardown("full-9", None)
    kube.unschedulable = False

    kube.quota_pods = 1
    with pytest.raises(CapacityError, match="exceeded quota"):
        await backend.provision("quota-10", candidate(), 2, meta(10))
    await backend.teardown("quota-10", None)
    kube.quota_pods = None

    kube.bad_images.add("python:3.11-slim")
    with pytest.raises(PrecheckError, match="ErrImagePull"):
        await backend.provision("image-11", candidate(), 1, meta(11))
    await backend.teardown("image-11", None)

    with pytest.raises(PrecheckError, match='namespaces "nowhere" not found'):
        await KubernetesBackend(settings(tmp_path, namespace="nowhere")).provision("ns-12", candidate(), 1, meta(12))
    no_spot = KubernetesBackend(settings(tmp_path, spot_node_selector={}, spot_tolerations=[]))
    with pytest.raises(PrecheckError, match="no spot nodes configured"):
        await no_spot.provision("spot-13", candidate(use_spot=True), 1, meta(13))
    with pytest.raises(PrecheckError, match="context 'elsewhere' cannot be used"):
        await backend.provision("ctx-14", candidate(region="elsewhere"), 1, meta(14))
    assert kube.pod_names() == []


async def test_installations_sharing_a_namespace_never_touch_each_others_pods(kube: FakeKube, tmp_path: Path) -> None:
    mine = KubernetesBackend(settings(tmp_path, temporal_namespace="team-a"))
    theirs = KubernetesBackend(settings(tmp_path, temporal_namespace="team-b"))
    assert mine.owner != theirs.owner
    a: ClusterInfo = await mine.provision("train-1", candidate(), 1, meta(1))
    b: ClusterInfo = await theirs.provision("train-1", candidate(), 1, meta(1))
    assert a.nodes[0].host_id != b.nodes[0].host_id
    owners = sorted(r.owner or "" for r in await mine.list_clusters())
    assert owners == sorted([mine.owner, theirs.owner])
    await mine.teardown("train-1", None)
    assert kube.pod_names() == [b.nodes[0].host_id]
    assert await theirs.node_states(b) == [NodeState.UP]
    await theirs.teardown("train-1", b)
    assert kube.pod_names() == []


async def test_planner_offers_declared_gpus_and_spot_on_allowed_contexts(kube: FakeKube, tmp_path: Path) -> None:
    from tsky.ops.infra_check import check_infra
    from tsky.ops.planning import plan_for_task
    from tsky.spec.loader import load_pipeline

    s = settings(tmp_path, allowed_contexts=["fake", "gone"], node_shapes={"fake": {"accelerators": {"A100": 8}}})
    [status] = check_infra(s, only=["k8s"])
    assert status.enabled and status.regions == ["fake"] and status.spot
    assert "not found: gone" in status.reason
    yaml = "resources:\n  infra: k8s\n  accelerators: A100:8\n  use_spot: true\nrun: nvidia-smi\n"
    task = load_pipeline(yaml).tasks[0]
    [chosen] = plan_for_task(task, s).candidates
    assert (chosen.cloud, chosen.region, chosen.accelerator, chosen.use_spot) == ("k8s", "fake", "A100", True)
    # Without spot selectors, k8s has no spot; without a declared shape, no GPUs.
    plain = settings(tmp_path, spot_node_selector={}, spot_tolerations=[])
    result = plan_for_task(task, plain)
    assert not result.candidates and result.infeasible_reason


async def test_resource_labels_become_pod_labels(kube: FakeKube, tmp_path: Path) -> None:
    backend = KubernetesBackend(settings(tmp_path))
    labelled = candidate(labels=(("team", "ml"), ("tsky-cluster", "mine")))
    info = await backend.provision("lab-7", labelled, 1, meta())
    pod = kube.pod(info.nodes[0].host_id, "tsky")
    assert pod is not None
    labels = pod["metadata"]["labels"]
    assert labels["team"] == "ml"
    assert labels["tsky-cluster"] == "lab-7"  # tsky's own label (the sweeper's) wins a clash
    await backend.teardown("lab-7", info)


async def test_a_task_that_mounts_a_bucket_gets_fuse_in_its_pods(kube: FakeKube, tmp_path: Path) -> None:
    """SkyPilot's recipe by default (its fuse device manager's resource, CAP_SYS_ADMIN, no AppArmor), a
    privileged container when configured, and a precheck failure when the cluster has no FUSE."""
    from tsky.ops.planning import plan_for_task
    from tsky.spec.loader import load_pipeline

    plain = {"cpu": "8", "memory": "32Gi"}
    kube.nodes = [FakeNode("no-fuse", plain), FakeNode("fuse", {**plain, "smarter-devices/fuse": "20"})]
    yaml = "resources: {{infra: k8s}}\nfile_mounts:\n  /ckpt: {{source: 's3://ckpt', mode: {mode}}}\nrun: ls /ckpt\n"
    s = settings(tmp_path)
    [mounted] = plan_for_task(load_pipeline(yaml.format(mode="MOUNT")).tasks[0], s).candidates
    [copied] = plan_for_task(load_pipeline(yaml.format(mode="COPY")).tasks[0], s).candidates
    assert mounted.fuse and not copied.fuse

    backend = KubernetesBackend(s)
    info = await backend.provision("fuse-1", mounted, 1, meta(1))
    pod = kube.pod(info.nodes[0].host_id, "tsky")
    assert pod is not None
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["smarter-devices/fuse"] == "1"
    assert container["securityContext"] == {"capabilities": {"add": ["SYS_ADMIN"]}}
    assert pod["metadata"]["annotations"] == {"container.apparmor.security.beta.kubernetes.io/tsky": "unconfined"}
    assert pod["spec"]["nodeName"] == "fuse"  # only that node's device plugin offers /dev/fuse
    plain_info = await backend.provision("plain-2", copied, 1, meta(2))
    plain_pod = kube.pod(plain_info.nodes[0].host_id, "tsky")
    assert plain_pod is not None and "securityContext" not in plain_pod["spec"]["containers"][0]
    assert plain_pod["spec"]["nodeName"] == "no-fuse"

    kube.nodes = [FakeNode("no-fuse", plain)]
    with pytest.raises(CapacityError, match=r"Insufficient smarter-devices/fuse.*kubernetes\.fuse_device"):
        await backend.provision("fuse-3", mounted, 1, meta(3))

    privileged = KubernetesBackend(settings(tmp_path, fuse_device="privileged"))
    priv_info = await privileged.provision("priv-4", mounted, 1, meta(4))
    priv_pod = kube.pod(priv_info.nodes[0].host_id, "tsky")
    assert priv_pod is not None and priv_pod["spec"]["containers"][0]["securityContext"] == {"privileged": True}

    without = KubernetesBackend(settings(tmp_path, fuse_device="none"))
    with pytest.raises(PrecheckError, match=r"needs FUSE in the pod, but kubernetes\.fuse_device is none"):
        await without.provision("none-5", mounted, 1, meta(5))
    for name in ("fuse-1", "plain-2", "fuse-3", "priv-4", "none-5"):
        await backend.teardown(name, None)
    assert kube.pod_names() == []


async def test_scheduling_honours_requests_gpus_selectors_and_taints(kube: FakeKube, tmp_path: Path) -> None:
    """A pod that fits on no node stays Pending (FailedScheduling, in the scheduler's words): after
    `provision_timeout` that is no capacity here, and the launch tries its next candidate."""
    spot_t4 = FakeNode(
        "spot-t4",
        {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"},
        labels={"cloud.google.com/gke-spot": "true", "skypilot.co/accelerator": "t4"},
        taints=[{"key": "spot", "value": "true", "effect": "NoSchedule"}],
    )
    kube.nodes = [FakeNode("cpu-4", {"cpu": "4", "memory": "16Gi"}), spot_t4]
    backend = KubernetesBackend(settings(tmp_path))

    two = await backend.provision("two-1", candidate(), 2, meta(1))  # 2 CPUs each: cpu-4 is full
    assert {kube.pod(n.host_id, "tsky")["spec"]["nodeName"] for n in two.nodes} == {"cpu-4"}  # type: ignore[index]
    with pytest.raises(CapacityError) as full:
        await backend.provision("third-2", candidate(), 1, meta(2))
    assert "Insufficient cpu" in str(full.value) and "untolerated taint {spot: true}" in str(full.value)
    [event] = [e for e in kube.scheduling_events if e["involvedObject"]["name"].startswith("third-2-")]
    assert event["reason"] == "FailedScheduling" and "Insufficient cpu" in event["message"]
    await backend.teardown("third-2", None)

    gpu = candidate(use_spot=True, accelerator="T4", accelerator_count=1)
    on_gpu = await backend.provision("gpu-3", gpu, 1, meta(3))  # selector, toleration and the GPU all match
    assert kube.pod(on_gpu.nodes[0].host_id, "tsky")["spec"]["nodeName"] == "spot-t4"  # type: ignore[index]
    with pytest.raises(CapacityError, match=r"Insufficient nvidia\.com/gpu"):
        await backend.provision("gpu-4", gpu, 1, meta(4))
    with pytest.raises(CapacityError, match=r"didn't match Pod's node affinity/selector"):
        await backend.provision("a100-5", candidate(accelerator="A100", accelerator_count=1), 1, meta(5))
    for name in ("gpu-4", "a100-5"):
        await backend.teardown(name, None)

    # The room deleted pods leave is used again.
    await backend.teardown("two-1", two)
    again = await backend.provision("third-6", candidate(), 1, meta(6))
    assert kube.pod(again.nodes[0].host_id, "tsky")["spec"]["nodeName"] == "cpu-4"  # type: ignore[index]
    for name, info in (("gpu-3", on_gpu), ("third-6", again)):
        await backend.teardown(name, info)
    assert kube.pod_names() == []


async def test_a_phase_log_streams_over_one_exec_each_holding_no_thread(kube: FakeKube, tmp_path: Path) -> None:
    backend = KubernetesBackend(settings(tmp_path))
    info = await backend.provision("follow-1", candidate(), 1, meta(1))
    agent = backend.node(info, 0)
    assert isinstance(agent, FollowingAgent)
    go = tmp_path / "go"
    script = f'echo "1 + 1"; until [ -e {go} ]; do sleep 0.05; done; for i in $(seq 1 20); do echo "line $i"; done'
    await agent.start_phase("run-a0", script, {})
    await logged(agent, "run-a0", b"1 + 1\n")

    # More streams than the client's thread pool has threads, all live at once: none holds a thread.
    threads, execs = client_threads(), kube.exec_count()
    streams = await asyncio.gather(*(agent.follow_log("run-a0", 2) for _ in range(40)))
    await until(lambda: len(kube.followers()) == 40, "40 followers")
    assert client_threads() < threads + 40
    assert kube.exec_count() == execs + 40  # one exec per stream, none per read
    go.touch()
    outputs = await asyncio.gather(*(read_all(stream) for stream in streams))
    log = (kube.home(info.nodes[0].host_id, "tsky") / ".tsky" / "run-a0.log").read_bytes()
    assert log.startswith(b"1 + 1\nline 1\n") and log.endswith(b"line 20\n")
    assert outputs == [log[2:]] * 40  # from the offset, every byte, ending with the phase
    assert kube.exec_count() == execs + 40
    await until(lambda: kube.followers() == [], "the followers to end with the phase")
    assert await read_all(await agent.follow_log("run-a0", 0)) == b""  # the phase has ended: nothing to follow
    await until(lambda: not kube.exec_connections, "the execs to end")
    await backend.teardown("follow-1", info)


async def test_a_closed_or_cut_stream_ends_its_follower_and_busybox_cannot_follow(
    kube: FakeKube, tmp_path: Path
) -> None:
    kube.busybox_images = {"alpine:3.20"}
    backend = KubernetesBackend(settings(tmp_path))
    info = await backend.provision("follow-2", candidate(), 1, meta(2))
    agent = backend.node(info, 0)
    await agent.start_phase("run-a0", "echo started; sleep 300", {})

    closed = await agent.follow_log("run-a0", 0)
    assert await closed.read() == b"started\n"
    assert len(kube.followers()) == 1
    closed.close()  # the watcher is done with it: its follower ends, no tail outlives it
    await until(lambda: kube.followers() == [], "the closed stream's follower to end")

    cut = await agent.follow_log("run-a0", 0)
    assert await cut.read() == b"started\n"
    await until(lambda: len(kube.followers()) == 1, "a follower")
    kube.drop_execs()  # the connection to the API server breaks
    with pytest.raises(NodeUnreachable, match=r"without a status|broke"):
        await cut.read()
    cut.close()
    await until(lambda: kube.followers() == [], "the cut stream's follower to end")
    assert (await agent.phase_status("run-a0")).alive  # the job itself runs on
    await agent.stop_phase("run-a0")
    assert await read_all(await agent.follow_log("run-a0", 0)) == b""

    # An image whose tail cannot follow a pid (busybox): the stream says so, and the watcher polls instead.
    alpine = await backend.provision("follow-3", candidate(image_id="docker:alpine:3.20"), 1, meta(3))
    busybox = backend.node(alpine, 0)
    await busybox.start_phase("run-a0", "echo started; sleep 300", {})
    with pytest.raises(FollowUnsupported, match="GNU tail"):
        await read_all(await busybox.follow_log("run-a0", 0))
    await logged(busybox, "run-a0", b"started\n")  # polling works there
    await until(lambda: not kube.exec_connections, "the execs to end")
    for name, cluster in (("follow-2", info), ("follow-3", alpine)):
        await backend.teardown(name, cluster)


async def test_a_stream_reaches_a_tls_api_server_with_the_kubeconfigs_ca_client_certificate_and_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeKube(tmp_path / "pods", namespaces=("tsky",)).start(tls=write_pki(tmp_path))
    try:
        monkeypatch.setenv("KUBECONFIG", str(fake.write_kubeconfig(tmp_path / "kubeconfig", context="fake")))
        backend = KubernetesBackend(settings(tmp_path))
        info = await backend.provision("tls-1", candidate(), 1, meta(1))
        agent = backend.node(info, 0)
        await agent.start_phase("run-a0", "echo over tls; sleep 1; echo done", {})
        assert await read_all(await agent.follow_log("run-a0", 0)) == b"over tls\ndone\n"
        await until(lambda: not fake.exec_connections, "the exec to end")
        await backend.teardown("tls-1", info)
    finally:
        fake.stop()
    assert not fake.processes()
