"""Buckets and uploads in real jobs: the CLI, a worker process and the local infra, with S3 on moto and
GCS on fake-gcs-server. Mount paths are absolute paths under the test's own directory, so the test can
check that the host never sees the job's files there (they exist only in the job's mount namespace)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.harness import TskyEnv
from tests.integration.test_jobs_cli import queue_json
from tests.storage.conftest import Emulator
from tsky.client.connect import DATA_CONVERTER
from tsky.contract.job import JobRequest
from tsky.spec.storage import Storage

pytestmark = pytest.mark.integration


def s3() -> Any:
    return boto3.client("s3")


def s3_keys(bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3().list_objects_v2(Bucket=bucket).get("Contents", []))


def s3_buckets() -> list[str]:
    return sorted(b["Name"] for b in s3().list_buckets()["Buckets"])


def job_request(env: TskyEnv, job_id: int) -> JobRequest:
    """The request the workflow was started with, as stored in its history."""

    async def fetch() -> JobRequest:
        client = await env.client()
        history = await client.get_workflow_handle(f"tsky-job-{job_id}").fetch_history()
        attrs = history.events[0].workflow_execution_started_event_attributes
        [req] = await DATA_CONVERTER.decode(attrs.input.payloads, [JobRequest])
        return req

    return asyncio.run(fetch())


def launch(env: TskyEnv, spec: Path, *args: str) -> str:
    result = env.tsky("jobs", "launch", "-y", *args, str(spec), cwd=spec.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def empty_on_host(path: Path) -> bool:
    """A mount point seen from the host: absent, or an empty directory/file (the job's files are not here)."""
    if not path.exists():
        return True
    return not any(path.iterdir()) if path.is_dir() else path.stat().st_size == 0


def test_s3_buckets_mount_copy_and_ephemeral_across_a_pipeline(tsky_env: TskyEnv, moto_s3: Emulator) -> None:
    s3().create_bucket(Bucket="tsky-inputs")
    s3().put_object(Bucket="tsky-inputs", Key="set1/hello.txt", Body=b"hello from s3")
    mnt = tsky_env.home.parent / "mnt"
    spec = tsky_env.write(
        "s3pipe.yaml",
        f"""\
name: s3pipe
---
name: writer
resources: {{infra: local}}
file_mounts:
  {mnt}/data: {{name: tsky-s3-ckpt, store: s3, mode: MOUNT}}
  {mnt}/scratch: {{name: tsky-s3-scratch, store: s3, persistent: false}}
  {mnt}/inputs: s3://tsky-inputs/set1
run: |
  cat {mnt}/inputs/hello.txt
  echo "written by $SKYPILOT_TASK_ID" > {mnt}/data/result.txt
  echo scratch > {mnt}/scratch/tmp.txt
---
name: reader
resources: {{infra: local}}
file_mounts:
  {mnt}/data: {{source: s3://tsky-s3-ckpt, mode: COPY}}
  {mnt}/scratch: {{name: tsky-s3-scratch, store: s3, persistent: false}}
run: |
  cat {mnt}/data/result.txt {mnt}/scratch/tmp.txt
""",
    )
    tsky_env.start_worker()
    out = launch(tsky_env, spec)
    assert "(writer, pid=" in out and "hello from s3" in out
    assert "(reader, pid=" in out and "written by sky-managed-" in out and "scratch" in out
    assert s3_keys("tsky-s3-ckpt") == ["result.txt"]  # the MOUNT was written back
    assert "tsky-s3-scratch" not in s3_buckets()  # persistent: false: deleted with the job
    assert all(empty_on_host(mnt / name) for name in ("data", "scratch", "inputs"))
    assert tsky_env.tsky("status").stdout.strip() == "No live clusters."


def test_gcs_bucket_mount_and_copy(tsky_env: TskyEnv, fake_gcs: Emulator) -> None:
    from google.cloud import storage

    client = storage.Client()
    client.create_bucket("tsky-gcs-in").blob("data/x.txt").upload_from_string("hello from gcs")
    mnt = tsky_env.home.parent / "mnt"
    spec = tsky_env.write(
        "gcs.yaml",
        f"""\
name: gcsjob
resources: {{infra: local}}
file_mounts:
  {mnt}/in: gs://tsky-gcs-in/data
  {mnt}/out: {{name: tsky-gcs-out, store: gcs, mode: MOUNT_CACHED}}
run: |
  cat {mnt}/in/x.txt
  mkdir -p {mnt}/out/run1 && echo result > {mnt}/out/run1/y.txt
""",
    )
    tsky_env.start_worker()
    out = launch(tsky_env, spec)
    assert "hello from gcs" in out
    assert [b.name for b in client.list_blobs("tsky-gcs-out")] == ["run1/y.txt"]
    assert empty_on_host(mnt / "in") and empty_on_host(mnt / "out")


def test_a_missing_source_bucket_fails_prechecks(tsky_env: TskyEnv, moto_s3: Emulator) -> None:
    spec = tsky_env.write(
        "missing.yaml",
        f"name: missing\nresources: {{infra: local}}\nfile_mounts:\n  {tsky_env.home.parent}/m: s3://no-such-bucket\n"
        "run: echo never\n",
    )
    tsky_env.start_worker()
    result = tsky_env.tsky("jobs", "launch", "-y", str(spec))
    assert result.returncode == 100 and "FAILED_PRECHECKS" in result.stdout
    job = queue_json(tsky_env)[0]
    assert "s3://no-such-bucket does not exist" in str(job["tasks"][0]["failure_reason"])  # type: ignore[index]


def local_files(env: TskyEnv) -> tuple[Path, str]:
    """A workdir, a directory and a single file to mount, and a job that prints all three."""
    project = env.home.parent / "project"
    (project / "cfg").mkdir(parents=True)
    (project / "train.sh").write_text("echo workdir script ran\n")
    (project / "cfg" / "c.txt").write_text("dir mount ok\n")
    (project / "one.txt").write_text("file mount ok\n")
    mnt = env.home.parent / "mnt"
    spec = f"""\
name: files
resources: {{infra: local}}
workdir: .
file_mounts:
  {mnt}/cfg: ./cfg
  {mnt}/one.txt: ./one.txt
run: |
  bash train.sh
  cat {mnt}/cfg/c.txt {mnt}/one.txt
"""
    (project / "files.yaml").write_text(spec)
    return project, str(project)


def assert_files_reached_the_job(out: str) -> None:
    for line in ("workdir script ran", "dir mount ok", "file mount ok"):
        assert "(files, pid=" in out and line in out, out


def sources(req: JobRequest) -> list[str]:
    task = req.pipeline.tasks[0]
    mounts = [s for s in task.file_mounts.values() if isinstance(s, str)]
    assert isinstance(task.workdir, str)
    return [task.workdir, *mounts]


def test_two_hop_uploads_go_through_the_worker_file_store_and_are_removed(tsky_env: TskyEnv) -> None:
    project, project_path = local_files(tsky_env)
    tsky_env.start_worker()
    out = launch(tsky_env, project / "files.yaml", "--num-jobs", "2", "-d")
    assert "worker's file store" in out
    for job_id in (1, 2):
        refs = sources(job_request(tsky_env, job_id))
        # The job refers to its own copy in the file store, never to the submitting machine's paths.
        assert all(r.startswith(str(tsky_env.home / "uploads" / f"job-{job_id}-")) for r in refs), refs
        assert not any(project_path in r for r in refs)
    for job_id in (1, 2):
        assert tsky_env.tsky("jobs", "logs", str(job_id)).returncode == 0
    assert_files_reached_the_job(tsky_env.tsky("jobs", "logs", "2", "--no-follow").stdout)
    assert list((tsky_env.home / "uploads").iterdir()) == []  # per-job directories removed at the end


def test_uploads_through_the_intermediate_bucket_leave_no_job_prefix(tsky_env: TskyEnv, moto_s3: Emulator) -> None:
    s3().create_bucket(Bucket="tsky-inter")
    tsky_env.configure({"jobs": {"bucket": "s3://tsky-inter/uploads"}})
    project, _ = local_files(tsky_env)
    tsky_env.start_worker()
    out = launch(tsky_env, project / "files.yaml", "--num-nodes", "2")
    assert "intermediate bucket s3://tsky-inter/uploads" in out
    for line in ("workdir script ran", "dir mount ok", "file mount ok"):  # on every node
        assert re.search(rf"\(head, rank=0, pid=\d+\) {line}", out), out
        assert re.search(rf"\(worker1, rank=1, pid=\d+, ip=127\.0\.0\.1\) {line}", out), out
    refs = sources(job_request(tsky_env, 1))
    assert all(r.startswith("s3://tsky-inter/uploads/job-1-") for r in refs), refs
    assert refs[0].endswith("/workdir") and "/local-file-mounts/0" in refs[1] and "/tmp-files/file-0" in refs[2]
    assert s3_keys("tsky-inter") == []  # the job's prefix is gone, the bucket stays
    assert not (tsky_env.home / "uploads").exists()


def test_without_jobs_bucket_a_temporary_bucket_is_made_and_deleted(tsky_env: TskyEnv, moto_s3: Emulator) -> None:
    project, _ = local_files(tsky_env)
    tsky_env.start_worker()
    out = launch(tsky_env, project / "files.yaml")
    assert "temporary s3 bucket" in out
    assert_files_reached_the_job(out)
    refs = sources(job_request(tsky_env, 1))
    assert all(r.startswith("s3://tsky-filemounts-") for r in refs), refs
    assert not [b for b in s3_buckets() if b.startswith("tsky-filemounts-")]


def test_force_disable_cloud_bucket_uses_two_hop_even_with_a_store(tsky_env: TskyEnv, moto_s3: Emulator) -> None:
    tsky_env.configure({"jobs": {"force_disable_cloud_bucket": True}})
    project, _ = local_files(tsky_env)
    tsky_env.start_worker()
    out = launch(tsky_env, project / "files.yaml")
    assert "worker's file store" in out
    assert_files_reached_the_job(out)
    assert s3_buckets() == []


def test_gcs_intermediate_bucket_and_a_local_source_storage(tsky_env: TskyEnv, fake_gcs: Emulator) -> None:
    from google.cloud import storage

    client = storage.Client()
    client.create_bucket("tsky-gcs-inter")
    tsky_env.configure({"jobs": {"bucket": "gs://tsky-gcs-inter"}})
    project, _ = local_files(tsky_env)
    (project / "dataset").mkdir()
    (project / "dataset" / "rows.csv").write_text("a,b\n")
    mnt = tsky_env.home.parent / "mnt"
    text = (
        (project / "files.yaml")
        .read_text()
        .replace(
            "file_mounts:\n",
            f"file_mounts:\n  {mnt}/dataset:\n    name: tsky-dataset\n    source: ./dataset\n    persistent: false\n",
        )
    )
    (project / "files.yaml").write_text(text.replace(f"cat {mnt}", f"cat {mnt}/dataset/rows.csv {mnt}"))
    tsky_env.start_worker()
    out = launch(tsky_env, project / "files.yaml")
    assert_files_reached_the_job(out)
    assert "a,b" in out
    req = job_request(tsky_env, 1)
    dataset = req.pipeline.tasks[0].file_mounts[f"{mnt}/dataset"]
    # A storage object's local source is uploaded into its own bucket (default store: local here).
    assert isinstance(dataset, Storage) and dataset.source == "local://tsky-dataset"
    assert not (tsky_env.home / "buckets" / "tsky-dataset").exists()  # persistent: false
    assert [b.name for b in client.list_blobs("tsky-gcs-inter")] == []


def test_upload_configuration_errors_are_clear_and_submit_nothing(tsky_env: TskyEnv) -> None:
    project, _ = local_files(tsky_env)
    tsky_env.configure({"jobs": {"bucket": "s3://tsky-inter"}})
    result = tsky_env.tsky("jobs", "launch", "-y", str(project / "files.yaml"), cwd=project)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "`jobs.bucket` is specified" in result.stderr and "AWS is not enabled" in result.stderr
    assert "Traceback" not in result.stderr

    tsky_env.configure()
    (project / "data").mkdir()
    nameless = tsky_env.write("nameless.yaml", f"name: n\nfile_mounts:\n  /d:\n    source: {project}/data\nrun: ls\n")
    result = tsky_env.tsky("jobs", "launch", "-y", str(nameless))
    assert result.returncode == 2 and "needs a `name`" in result.stderr, result.stderr
    assert queue_json(tsky_env) == []


def test_special_files_in_uploads_are_skipped_with_a_warning_or_refused_when_named(tsky_env: TskyEnv) -> None:
    """A socket or named pipe inside the workdir or a mounted directory (git's fsmonitor socket in `.git`,
    a dev server's socket) is skipped with a warning, as rsync and `aws s3 sync` do; one named directly as
    a file mount's source is a usage error, since the mount could not be made."""
    with special_files(tsky_env) as project:
        tsky_env.start_worker()
        launch_skipping_special_files(tsky_env, project)

        named = tsky_env.write(
            "named.yaml", f"name: n\nfile_mounts:\n  /tmp/events: {project}/cfg/events.fifo\nrun: ls\n"
        )
        result = tsky_env.tsky("jobs", "launch", "-y", str(named), timeout=60)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert f"{project}/cfg/events.fifo" in result.stderr and "named pipe" in result.stderr, result.stderr
        assert len(queue_json(tsky_env)) == 1  # only the first job: nothing started for the refused one


def test_special_files_are_skipped_in_uploads_through_a_bucket(tsky_env: TskyEnv, moto_s3: Emulator) -> None:
    with special_files(tsky_env) as project:
        tsky_env.start_worker()
        assert "temporary s3 bucket" in launch_skipping_special_files(tsky_env, project)


@contextmanager
def special_files(env: TskyEnv) -> Iterator[Path]:
    """`local_files`' project with a listening socket in `.git` and a named pipe in a mounted directory."""
    project, _ = local_files(env)
    (project / ".git").mkdir()
    os.mkfifo(project / "cfg" / "events.fifo")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(project / ".git" / "fsmonitor--daemon.ipc"))
        yield project


def launch_skipping_special_files(env: TskyEnv, project: Path) -> str:
    result = env.tsky("jobs", "launch", "-y", str(project / "files.yaml"), cwd=project, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_files_reached_the_job(result.stdout)
    for skipped in (project / ".git" / "fsmonitor--daemon.ipc", project / "cfg" / "events.fifo"):
        assert f"Skipping {skipped}" in result.stderr, result.stderr
    return result.stdout
