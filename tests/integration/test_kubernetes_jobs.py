"""Managed jobs on the k8s infra, end to end: the CLI plans on `k8s/<context>`, a real worker makes pods on
the fake API server (`tests/backends/fake_k8s.py`: no real kube-apiserver can run here), copies the workdir,
execs setup and run in the pods, streams their output over one exec each (re-attached after a dropped
connection; polled where the image cannot follow), recovers from an eviction and deletes the pods."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends.fake_k8s import FakeKube, FakeNode
from tests.harness import TskyEnv, wait_until
from tests.integration.test_jobs_cli import queue_json, wait_status

pytestmark = pytest.mark.integration


@pytest.fixture
def kube(tsky_env: TskyEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    fake = FakeKube(tmp_path / "pods").start()
    # The CLI (planning) and the worker (pods) both read it from the environment.
    monkeypatch.setenv("KUBECONFIG", str(fake.write_kubeconfig(tmp_path / "kubeconfig", context="fake-ctx")))
    tsky_env.configure({"kubernetes": {"provision_timeout": 2}})
    yield fake
    for worker in tsky_env.workers:  # no worker may act on the pods once the server is gone
        worker.kill9()
    fake.stop()
    assert not fake.processes(), "a pod's process outlived the test"


def test_same_yaml_runs_on_k8s_with_workdir_setup_and_two_nodes(tsky_env: TskyEnv, kube: FakeKube) -> None:
    tsky_env.start_worker()
    workdir = tsky_env.home / "project"
    workdir.mkdir()
    (workdir / "note.txt").write_text("from the workdir\n")
    job = tsky_env.write(
        "k8s.yaml",
        f"""\
name: kube-hello
workdir: {workdir}
num_nodes: 2
resources:
  image_id: docker:ghcr.io/acme/trainer:1.2
setup: echo "setup in $HOME"
run: |
  cat note.txt
  echo "rank $SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES"
""",
    )
    check = tsky_env.tsky("check")
    assert re.search(r"Kubernetes: enabled\s+Context fake-ctx", check.stdout, re.I), check.stdout
    result = tsky_env.tsky("jobs", "launch", "-y", "--infra", "k8s", str(job))
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Managed job finished: 1 (status: SUCCEEDED)." in out
    assert re.search(r"\(head, rank=0, pid=\d+\) from the workdir", out), out
    assert re.search(r"\(worker1, rank=1, pid=\d+, ip=127\.0\.77\.\d+\) rank 1 of 2", out), out
    # Each pod has its own home (the fake's per-pod directory, named after the pod).
    assert re.search(r"\(setup rank=1, pid=\d+, ip=\S+\) setup in /\S+/kube-hello-1-\w{6}-1-", out), out
    [row] = queue_json(tsky_env)
    assert "Kubernetes (fake-ctx)" in str(row["infra"] or row["tasks"])
    images = {pod["spec"]["containers"][0]["image"] for _, kind, pod in kube.events if kind == "ADDED"}
    assert images == {"ghcr.io/acme/trainer:1.2"}  # the task's image_id, not kubernetes.image
    assert kube.pod_names() == []


LINES = 40
COUNTING = f"""\
name: pod-counting
resources:
  infra: k8s/fake-ctx
run: for i in $(seq 1 {LINES}); do echo "line $i"; sleep 0.25; done
"""


def lines_written(kube: FakeKube) -> int:
    """Lines the run phases have printed so far, in every pod."""
    return sum(log.read_text().count("\n") for log in kube.root.glob("*/*/.tsky/run*.log"))


def numbered_lines(env: TskyEnv, job_id: int) -> list[int]:
    logs = env.tsky("jobs", "logs", str(job_id), "--no-follow").stdout
    return [int(n) for n in re.findall(r"^\(pod-counting, pid=\d+\) line (\d+)$", logs, re.M)]


def test_output_streams_over_one_exec_and_a_dropped_connection_loses_no_line(tsky_env: TskyEnv, kube: FakeKube) -> None:
    tsky_env.start_worker()
    job = tsky_env.write("counting.yaml", COUNTING)
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(job)).returncode == 0

    [first] = wait_until(lambda: lines_written(kube) >= 4 and kube.followers(), 60, what="a streamed phase")
    # Three seconds of output, more than a poll (2 s): the watcher asks the pod nothing meanwhile.
    execs = kube.exec_count()
    wait_until(lambda: lines_written(kube) >= 16, 60, what="more output")
    assert kube.exec_count() == execs, "the watcher ran commands in the pod while its output streamed"
    assert kube.followers() == [first]

    kube.drop_execs()  # a network blip: the stream is cut mid-phase, the watcher opens a new one
    wait_until(lambda: [p for p in kube.followers() if p != first], 30, what="a re-attached stream")
    wait_status(tsky_env, 1, "SUCCEEDED", timeout=120)
    assert numbered_lines(tsky_env, 1) == list(range(1, LINES + 1))
    assert not kube.followers()


def test_an_image_without_gnu_tail_is_polled(tsky_env: TskyEnv, kube: FakeKube) -> None:
    kube.busybox_images = {"alpine:3.20"}
    tsky_env.start_worker()
    job = tsky_env.write("counting.yaml", COUNTING.replace("infra: k8s/fake-ctx", "image_id: docker:alpine:3.20"))
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", "--infra", "k8s", str(job)).returncode == 0

    wait_until(lambda: lines_written(kube) >= 4, 60, what="output")
    execs = kube.exec_count()
    wait_until(lambda: lines_written(kube) >= 16, 60, what="more output")
    assert kube.exec_count() > execs  # the watcher asks the pod every poll instead
    wait_status(tsky_env, 1, "SUCCEEDED", timeout=120)
    assert numbered_lines(tsky_env, 1) == list(range(1, LINES + 1))


def test_cancel_kills_a_streamed_job_and_its_follower(tsky_env: TskyEnv, kube: FakeKube) -> None:
    tsky_env.start_worker()
    job = tsky_env.write(
        "sleeper.yaml", "name: pod-sleeper\nresources: {infra: k8s/fake-ctx}\nrun: echo started; sleep 600\n"
    )
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(job)).returncode == 0
    wait_until(lambda: lines_written(kube) >= 1 and kube.followers(), 60, what="a streamed phase")

    assert tsky_env.tsky("jobs", "cancel", "-y", "1").returncode == 0
    wait_status(tsky_env, 1, "CANCELLED", timeout=60)
    assert kube.pod_names() == []
    wait_until(lambda: not kube.processes(), 10, what="the job and its follower to be gone")


def test_evicted_pod_is_recovered_on_new_pods(tsky_env: TskyEnv, kube: FakeKube) -> None:
    tsky_env.start_worker()
    runs = tsky_env.home / "runs.txt"
    job = tsky_env.write(
        "steps.yaml",
        f"""\
name: kube-steps
resources:
  infra: k8s/fake-ctx
run: |
  echo started >> {runs}
  for i in $(seq 1 5); do echo "step $i"; sleep 1; done
""",
    )
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(job)).returncode == 0
    log = tsky_env.home / "logs" / "jobs" / "1" / "task-0" / "attempt-0" / "run.log"
    wait_until(lambda: log.exists() and "step 2" in log.read_text(), 60, what="two steps on the first pod")
    [first] = kube.pod_names()
    kube.evict(first)
    wait_status(tsky_env, 1, "SUCCEEDED", timeout=120)
    [row] = queue_json(tsky_env)
    assert row["recoveries"] == 1
    assert runs.read_text().count("started") == 2
    logs = tsky_env.tsky("jobs", "logs", "1", "--no-follow").stdout
    assert "step 5" in logs
    controller = tsky_env.tsky("jobs", "logs", "--controller", "1").stdout
    # The evicted pod is positive evidence (the backend says so), not an unreachable node waited out.
    assert "recovering: Cluster preempted" in controller and "unreachable" not in controller
    assert "kube-steps-1-r1" in controller and "torn down" in controller
    assert kube.pod_names() == []


def test_pods_that_fit_no_node_mean_no_capacity_and_the_next_candidate_runs(tsky_env: TskyEnv, kube: FakeKube) -> None:
    kube.nodes = [FakeNode("small", {"cpu": "2", "memory": "8Gi"})]
    tsky_env.start_worker()
    job = tsky_env.write(
        "big.yaml",
        "name: big\nresources:\n  ordered:\n    - {infra: k8s/fake-ctx, cpus: 16}\n    - {infra: local}\n"
        "run: echo ran here\n",
    )
    result = tsky_env.tsky("jobs", "launch", "-y", str(job))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ran here" in result.stdout
    [row] = queue_json(tsky_env)
    assert "Local" in str(row["infra"] or row["tasks"]), row
    # The pod was tried first, stayed Pending for want of CPUs, and was deleted before the next candidate.
    [event] = kube.scheduling_events
    assert event["reason"] == "FailedScheduling" and "1 Insufficient cpu" in event["message"]
    assert kube.pod_names() == []


def test_a_bucket_mount_on_a_cluster_without_fuse_fails_prechecks(tsky_env: TskyEnv, kube: FakeKube) -> None:
    tsky_env.configure({"kubernetes": {"provision_timeout": 2, "fuse_device": "none"}})
    tsky_env.start_worker()
    job = tsky_env.write(
        "ckpt.yaml",
        "name: ckpt\nresources: {infra: k8s/fake-ctx}\nfile_mounts:\n  /checkpoint:\n    source: s3://ckpt\n"
        "    mode: MOUNT\nrun: ls /checkpoint\n",
    )
    result = tsky_env.tsky("jobs", "launch", "-y", str(job))
    assert result.returncode == 100 and "FAILED_PRECHECKS" in result.stdout, result.stdout + result.stderr
    [row] = queue_json(tsky_env)
    reason = str(row["tasks"][0]["failure_reason"])  # type: ignore[index]
    assert "needs FUSE in the pod, but kubernetes.fuse_device is none" in reason, reason
    assert not [kind for _, kind, _ in kube.events if kind == "ADDED"]  # no pod was ever made
