"""Checkpoints that survive preemption: MOUNT and MOUNT_CACHED buckets are live `rclone mount`s (FUSE)
on the nodes, against S3 on moto. Through the CLI with a real worker: a spot job counts steps into
`<mount>/step`, is preempted after step 5, recovers and resumes from the bucket.

The mount paths are under the test's directory (not `/checkpoint`) so that a test run creates nothing
outside its own directory; the path makes no difference to the mount."""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.backends.sshd import SSHNodes
from tests.backends.test_ssh_backend import write_pools
from tests.harness import TskyEnv, free_port, wait_until
from tests.integration.test_jobs_cli import no_tagged_processes, queue_json, wait_status
from tests.storage.conftest import Emulator

pytestmark = pytest.mark.integration

COUNTER = """\
name: {name}
resources: {{infra: {infra}}}
file_mounts:
  {mnt}: {{name: {bucket}, store: s3, mode: {mode}}}
run: |
  step=0
  [ -f {mnt}/step ] && step=$(cat {mnt}/step)
  echo "resuming after step $step"
  while [ "$step" -lt {last} ]; do
    step=$((step + 1))
    echo "$step" > {mnt}/step
    echo "step $step"
    sleep 1
  done
"""


LAST = 15  # steps: room for the test to see step 5 and preempt before the job ends


def s3() -> Any:
    return boto3.client("s3")


def saved_step(bucket: str) -> int:
    try:
        return int(s3().get_object(Bucket=bucket, Key="step")["Body"].read())
    except (s3().exceptions.NoSuchKey, s3().exceptions.NoSuchBucket):
        return 0


def fuse_mounts_of(bucket: str) -> list[str]:
    """Every FUSE mount of `bucket` left in any mount namespace on this machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            lines = (entry / "mounts").read_text().splitlines()
        except OSError:
            continue
        found += [line for line in lines if line.startswith(f"s3:{bucket}") and " fuse" in line]
    return sorted(set(found))


def attempt_log(env: TskyEnv, job_id: int, attempt: int) -> str:
    result = env.tsky("jobs", "logs", str(job_id), "--attempt", str(attempt))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def resumed_from(log: str) -> int:
    match = re.search(r"resuming after step (\d+)", log)
    assert match, log
    return int(match.group(1))


def launch_counter(env: TskyEnv, infra: str, mode: str, bucket: str, *args: str, last: int = LAST) -> Path:
    mnt = env.home.parent / "checkpoint"
    spec = env.write(
        "counter.yaml", COUNTER.format(name="ckpt", infra=infra, mnt=mnt, bucket=bucket, mode=mode, last=last)
    )
    result = env.tsky("jobs", "launch", "-y", "-d", *args, str(spec))
    assert result.returncode == 0, result.stdout + result.stderr
    return mnt


# MOUNT_CACHED is slow (`./scripts/test.sh -m slow`): its live mount runs by default in test_cancel_unmounts and the
# chunk test, and resuming from a mount after a preemption in the MOUNT case.
@pytest.mark.parametrize("mode", ["MOUNT", pytest.param("MOUNT_CACHED", marks=pytest.mark.slow)])
def test_a_preempted_spot_job_resumes_from_its_mounted_checkpoint(
    tsky_env: TskyEnv, moto_s3: Emulator, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = f"ckpt-{mode.lower().replace('_', '-')}"
    if mode == "MOUNT":  # the endpoint from tsky's setting rather than the AWS SDK's variable
        monkeypatch.delenv("AWS_ENDPOINT_URL")
        tsky_env.configure({"storage": {"s3": {"endpoint_url": moto_s3.url}}})
        monkeypatch.setattr(sys.modules[__name__], "s3", lambda: boto3.client("s3", endpoint_url=moto_s3.url))
    tsky_env.start_worker()
    mnt = launch_counter(tsky_env, "local", mode, bucket, "--use-spot")

    # Written by `run` and in the bucket while `run` still goes on.
    wait_until(lambda: saved_step(bucket) >= 5, 90, what="step 5 in the bucket")
    assert tsky_env.tsky("debug", "preempt", "1").returncode == 0  # the job's cluster is live: still running

    wait_status(tsky_env, 1, "SUCCEEDED", timeout=120)
    assert queue_json(tsky_env)[0]["recoveries"] == 1
    first, second = attempt_log(tsky_env, 1, 0), attempt_log(tsky_env, 1, 1)
    assert "resuming after step 0" in first and "step 5" in first
    assert resumed_from(second) >= 5 and "step 1\n" not in second, second
    assert f"step {LAST}" in second
    assert saved_step(bucket) == LAST
    assert fuse_mounts_of(bucket) == []
    assert not mnt.exists() or not any(mnt.iterdir())  # the host never saw the bucket's files


def test_cancel_unmounts(tsky_env: TskyEnv, moto_s3: Emulator) -> None:
    tsky_env.start_worker()
    launch_counter(tsky_env, "local", "MOUNT_CACHED", "ckpt-cancel", last=600)
    wait_until(lambda: saved_step("ckpt-cancel") >= 2, 90, what="step 2 in the bucket")
    assert fuse_mounts_of("ckpt-cancel")  # live while the job runs
    assert tsky_env.tsky("jobs", "cancel", "-y", "1").returncode == 0
    wait_status(tsky_env, 1, "CANCELLED")
    assert fuse_mounts_of("ckpt-cancel") == []
    assert no_tagged_processes("ckpt-1")


def test_a_checkpoint_larger_than_an_upload_chunk_is_saved_whole(tsky_env: TskyEnv, moto_s3: Emulator) -> None:
    """A MOUNT streams a file of unknown size as a multipart upload in 5 MiB parts (12 MiB takes three); a
    MOUNT_CACHED uploads it from its cache. One job saves the same file through both."""
    buckets = {"MOUNT": "ckpt-big-mount", "MOUNT_CACHED": "ckpt-big-cached"}
    mounts = {mode: tsky_env.home.parent / bucket for mode, bucket in buckets.items()}
    for bucket in buckets.values():
        s3().create_bucket(Bucket=bucket)
    file_mounts = "".join(
        f"  {mounts[mode]}: {{source: s3://{bucket}, mode: {mode}}}\n" for mode, bucket in buckets.items()
    )
    copies = "".join(f"  cp /tmp/tsky-big-$$ {mnt}/model.pt\n" for mnt in mounts.values())
    spec = tsky_env.write(
        "big.yaml",
        f"name: big\nresources: {{infra: local}}\nfile_mounts:\n{file_mounts}"
        f"run: |\n  set -e\n  head -c 12582912 /dev/urandom > /tmp/tsky-big-$$\n{copies}"
        "  md5sum < /tmp/tsky-big-$$; rm /tmp/tsky-big-$$\n",
    )
    tsky_env.start_worker()
    result = tsky_env.tsky("jobs", "launch", "-y", str(spec))
    assert result.returncode == 0, result.stdout + result.stderr
    [digest] = re.findall(r"\b([0-9a-f]{32})\b", result.stdout)
    for mode, bucket in buckets.items():
        saved = s3().get_object(Bucket=bucket, Key="model.pt")["Body"].read()
        assert len(saved) == 12 << 20 and hashlib.md5(saved).hexdigest() == digest, mode


def failed_mount_reason(tsky_env: TskyEnv, source: str) -> tuple[Path, str]:
    """Launch a job that MOUNTs `source`; it must end FAILED_PRECHECKS. Returns the mount path and reason."""
    mnt = tsky_env.home.parent / "data"
    spec = tsky_env.write(
        "mount.yaml",
        f"name: mount\nresources: {{infra: local}}\n"
        f"file_mounts:\n  {mnt}: {{source: {source}, mode: MOUNT}}\nrun: echo never\n",
    )
    tsky_env.start_worker()
    result = tsky_env.tsky("jobs", "launch", "-y", str(spec))
    assert result.returncode == 100 and "FAILED_PRECHECKS" in result.stdout, result.stdout
    return mnt, str(queue_json(tsky_env)[0]["tasks"][0]["failure_reason"])  # type: ignore[index]


def test_a_missing_bucket_fails_prechecks_naming_path_and_bucket(tsky_env: TskyEnv, moto_s3: Emulator) -> None:
    mnt, reason = failed_mount_reason(tsky_env, "s3://no-such-bucket/x")
    assert reason == f"cannot mount s3://no-such-bucket/x at {mnt}: the bucket does not exist", reason
    assert "never" not in tsky_env.tsky("jobs", "logs", "1", "--no-follow").stdout


@pytest.fixture
def strict_moto(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Emulator]:
    """A `moto_server` process that checks credentials: it knows no access key, so every request fails."""
    port = free_port()
    moto_server = Path(sys.executable).parent / "moto_server"
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": "0", "AWS_EC2_METADATA_DISABLED": "true", "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [str(moto_server), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        client_env = {
            "AWS_ACCESS_KEY_ID": "AKIATSKYTESTKEY",
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": url,
        }
        for key, value in client_env.items():
            monkeypatch.setenv(key, value)
        wait_until(lambda: _answers(url), 30, what="moto_server")
        yield Emulator(url=url, env=client_env)
    finally:
        proc.terminate()
        proc.wait(10)


SECRET = "tsky-test-secret-7f3a9c"


async def history_json(env: TskyEnv, job_id: int) -> str:
    client = await env.client()
    return (await client.get_workflow_handle(f"tsky-job-{job_id}").fetch_history()).to_json()


def _answers(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{url}/moto-api/", timeout=2)
        return True
    except (urllib.error.URLError, OSError):
        return False


def test_wrong_credentials_fail_prechecks(tsky_env: TskyEnv, strict_moto: Emulator) -> None:
    mnt, reason = failed_mount_reason(tsky_env, "s3://some-bucket")
    assert reason.startswith(f"cannot mount s3://some-bucket at {mnt}: the bucket cannot be read: "), reason
    assert "InvalidAccessKeyId" in reason, reason
    # The secret went to the node in a 0600 file only: not in the history, the logs or a command line.
    assert SECRET not in asyncio.run(history_json(tsky_env, 1))
    assert SECRET not in tsky_env.tsky("jobs", "logs", "--controller", "1").stdout
    assert not any(SECRET in p.read_text(errors="replace") for p in (tsky_env.home / "logs").rglob("*") if p.is_file())


def test_a_checkpoint_survives_the_death_of_its_ssh_node(
    tsky_env: TskyEnv, moto_s3: Emulator, ssh_nodes: SSHNodes
) -> None:
    """SSH hosts have no spot market: their preemption is a host that dies. The job recovers on the
    pool's other host and resumes from the bucket."""
    nodes = [ssh_nodes.start() for _ in range(2)]
    write_pools(tsky_env.home, ssh_nodes, {"p": nodes})
    tsky_env.start_worker()
    launch_counter(tsky_env, "ssh/p", "MOUNT", "ckpt-ssh")
    wait_until(lambda: saved_step("ckpt-ssh") >= 5, 90, what="step 5 in the bucket")
    [victim] = [n for n in nodes if any(c.is_symlink() for c in n.home.joinpath(".tsky/claims").glob("*"))]
    victim.kill()

    wait_status(tsky_env, 1, "SUCCEEDED", timeout=180)
    assert queue_json(tsky_env)[0]["recoveries"] == 1
    second = attempt_log(tsky_env, 1, 1)
    assert resumed_from(second) >= 5 and "step 1\n" not in second, second
    assert saved_step("ckpt-ssh") == LAST
    assert fuse_mounts_of("ckpt-ssh") == []
