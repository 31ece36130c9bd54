"""The object-store log store (S3 on moto): a CLI on another TSKY_HOME reads a job's output and controller
log; a store that goes away mid-job loses nothing and the job carries on."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.harness import TSKY, TskyEnv, free_port, wait_until

pytestmark = pytest.mark.integration

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
LINES = 40
JOB = f"""\
name: chatty
run: |
  for i in $(seq 1 {LINES}); do echo line-$i; sleep 0.25; done
"""


def _keys(bucket: str, scheme: str = "s3") -> list[str]:
    if scheme == "gs":
        from google.cloud import storage

        return sorted(b.name for b in storage.Client().list_blobs(bucket))
    return sorted(o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket).get("Contents", []))


def _create_bucket(bucket: str, scheme: str) -> None:
    if scheme == "gs":
        from google.cloud import storage

        storage.Client().create_bucket(bucket)
    else:
        boto3.client("s3").create_bucket(Bucket=bucket)


def _assert_every_line_once_in_order(text: str) -> None:
    assert re.findall(r"line-(\d+)", text) == [str(i) for i in range(1, LINES + 1)], text


def _other_host(env: TskyEnv, name: str, scheme: str = "s3") -> TskyEnv:
    """A CLI with its own TSKY_HOME: nothing in common with the worker but the settings."""
    other = TskyEnv(home=env.home.parent / name, server=env.server, namespace=env.namespace)
    other.configure({"jobs": {"logs": {"store": f"{scheme}://tsky-logs/team-a"}}})
    return other


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_logs_in_a_bucket_are_read_from_another_home(
    tsky_env: TskyEnv, scheme: str, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue("moto_s3" if scheme == "s3" else "fake_gcs")
    _create_bucket("tsky-logs", scheme)
    tsky_env.configure({"jobs": {"logs": {"store": f"{scheme}://tsky-logs/team-a"}}})
    tsky_env.start_worker()
    launched = tsky_env.tsky("jobs", "launch", "-y", "-d", str(tsky_env.write("job.yaml", JOB)))
    assert launched.returncode == 0, launched.stdout + launched.stderr

    laptop = _other_host(tsky_env, "laptop", scheme)
    followed = laptop.tsky("jobs", "logs", "1")  # follows until the job ends
    assert followed.returncode == 0, followed.stdout + followed.stderr
    _assert_every_line_once_in_order(followed.stdout)
    assert re.search(r"\(chatty, pid=\d+\) line-1\n", followed.stdout)

    controller = laptop.tsky("jobs", "logs", "--controller", "1")
    assert "torn down" in controller.stdout, controller.stdout + controller.stderr
    assert not (tsky_env.home / "logs" / "jobs").exists()  # nothing went to the worker's disk
    segments = [k for k in _keys("tsky-logs", scheme) if k.startswith("team-a/jobs/1/task-0/attempt-0/run.log/")]
    assert len(segments) > 1  # shipped as it ran, in several immutable pieces

    synced = subprocess.run(
        [TSKY, "jobs", "logs", "--sync-down", "1"],
        capture_output=True,
        text=True,
        env={**laptop.environ, "HOME": str(laptop.home)},
        timeout=120,
    )
    assert synced.returncode == 0, synced.stdout + synced.stderr
    job_dir = laptop.home / "sky_logs" / "managed_jobs" / "job-1"
    _assert_every_line_once_in_order((job_dir / "task-0" / "attempt-0" / "run.log").read_text())
    assert "torn down" in (job_dir / "controller.log").read_text()


def test_an_unreachable_store_loses_nothing(tsky_env: TskyEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    store = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    store.start()
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST"))
    for key, value in {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
        monkeypatch.setenv(key, value)
    try:
        boto3.client("s3").create_bucket(Bucket="tsky-logs")
        tsky_env.configure({"jobs": {"logs": {"store": "s3://tsky-logs/team-a"}}})
        tsky_env.start_worker()
        launched = tsky_env.tsky("jobs", "launch", "-y", "-d", str(tsky_env.write("job.yaml", JOB)))
        assert launched.returncode == 0, launched.stdout + launched.stderr
        wait_until(lambda: any("/run.log/" in k for k in _keys("tsky-logs")), 120, what="the first run segment")

        # The store goes away for a while (moto keeps its buckets in this process), then comes back.
        store.stop()
        time.sleep(4)
        assert "RUNNING" in tsky_env.tsky("jobs", "queue").stdout  # the job carries on meanwhile
        store = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        store.start()

        laptop = _other_host(tsky_env, "laptop")
        followed = laptop.tsky("jobs", "logs", "1")
        assert followed.returncode == 0, followed.stdout + followed.stderr
        assert "SUCCEEDED" in followed.stdout
        _assert_every_line_once_in_order(followed.stdout)
    finally:
        store.stop()
