"""The log store: where job output and controller logs live, written by workers, read by any CLI.

`jobs.logs.store` picks one of two implementations of one small interface:
- `local` (the embedded default): files under `$TSKY_HOME/logs/`, one per log, appended in place.
- `s3://bucket/prefix` or `gs://bucket/prefix`: small immutable segments, one object per write, named by
  where it starts in its log (`<log>/<start:016d>`), so no write ever rewrites another's and any host
  with read access can read, follow and download. S3-compatible stores: the standard `AWS_ENDPOINT_URL`.

A log is named by a key (`jobs/7/task-0/attempt-1/run.log`, see `tsky.contract.logs`). Phase logs are byte
streams with one writer at a time: the writer says where each write starts, and a retried writer first
`truncate`s to the size it last heartbeated, so a line is never lost or written twice. The controller log
is lines with sequence numbers (a retried append may resend lines; they are written once).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tsky.spec.settings import Settings

_SEGMENT_DIGITS = 16


class LogStore(ABC):
    @abstractmethod
    async def truncate(self, key: str, size: int) -> None:
        """Drop whatever the log holds past `size` bytes (a dead writer's last, unacknowledged writes)."""

    @abstractmethod
    async def write(self, key: str, start: int, data: bytes) -> None:
        """Write `data` at byte `start` of the log, which holds exactly `start` bytes."""

    @abstractmethod
    async def append_lines(self, key: str, first_seq: int, lines: list[str]) -> None:
        """Append numbered lines; lines already written (a retried call) are skipped."""

    @abstractmethod
    async def read(self, key: str, offset: int = 0) -> bytes:
        """A byte log's bytes from `offset` to what is written so far (empty if it does not exist)."""

    @abstractmethod
    async def read_lines(self, key: str, offset: int = 0) -> bytes:
        """A numbered-lines log (the controller's) as text bytes, from byte `offset`."""

    @abstractmethod
    async def job_logs_older_than(self, cutoff: datetime) -> list[int]:
        """Ids of jobs whose logs were last written before `cutoff`."""

    @abstractmethod
    async def delete_job(self, job_id: int) -> None:
        """Delete every log of a job (harmless if there is none)."""


class LocalLogStore(LogStore):
    def __init__(self, root: Path):
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / key

    async def truncate(self, key: str, size: int) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as f:
            f.truncate(size)

    async def write(self, key: str, start: int, data: bytes) -> None:
        with self.path(key).open("r+b") as f:
            f.seek(start)
            f.write(data)

    async def append_lines(self, key: str, first_seq: int, lines: list[str]) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        seq_file = path.with_suffix(".seq")
        written = int(seq_file.read_text()) if seq_file.exists() else first_seq - 1
        fresh = lines[max(0, written + 1 - first_seq) :]
        if not fresh:
            return
        with path.open("a") as log:
            log.writelines(line + "\n" for line in fresh)
        seq_file.write_text(str(first_seq + len(lines) - 1))

    async def read(self, key: str, offset: int = 0) -> bytes:
        try:
            with self.path(key).open("rb") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return b""

    async def read_lines(self, key: str, offset: int = 0) -> bytes:
        return await self.read(key, offset)

    async def job_logs_older_than(self, cutoff: datetime) -> list[int]:
        jobs = self.root / "jobs"
        if not jobs.is_dir():
            return []
        old = []
        for job_dir in jobs.iterdir():
            newest = max((p.stat().st_mtime for p in job_dir.rglob("*")), default=job_dir.stat().st_mtime)
            if job_dir.name.isdigit() and datetime.fromtimestamp(newest, UTC) < cutoff:
                old.append(int(job_dir.name))
        return old

    async def delete_job(self, job_id: int) -> None:
        import shutil

        shutil.rmtree(self.root / "jobs" / str(job_id), ignore_errors=True)


class _Blobs(ABC):
    """The four blob operations an object store needs to offer (blocking; run in a thread)."""

    @abstractmethod
    def put(self, name: str, data: bytes) -> None: ...

    @abstractmethod
    def get(self, name: str) -> bytes: ...

    @abstractmethod
    def listing(self, prefix: str) -> list[tuple[str, int, datetime]]:
        """(name, size, last modified) of every blob under `prefix`, sorted by name."""

    @abstractmethod
    def delete(self, names: list[str]) -> None: ...


class _S3Blobs(_Blobs):
    def __init__(self, bucket: str):
        import boto3

        self.bucket = bucket
        self.s3 = boto3.client("s3")  # AWS_ENDPOINT_URL (S3-compatible stores) and credentials: boto3's chain

    def put(self, name: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=name, Body=data)

    def get(self, name: str) -> bytes:
        body: bytes = self.s3.get_object(Bucket=self.bucket, Key=name)["Body"].read()
        return body

    def listing(self, prefix: str) -> list[tuple[str, int, datetime]]:
        out: list[tuple[str, int, datetime]] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out += [(o["Key"], o["Size"], o["LastModified"]) for o in page.get("Contents", [])]
        return sorted(out)

    def delete(self, names: list[str]) -> None:
        for i in range(0, len(names), 1000):
            batch = [{"Key": n} for n in names[i : i + 1000]]
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})


class _GcsBlobs(_Blobs):
    def __init__(self, bucket: str):
        from google.cloud import storage

        self.bucket = storage.Client().bucket(bucket)

    def put(self, name: str, data: bytes) -> None:
        self.bucket.blob(name).upload_from_string(data)

    def get(self, name: str) -> bytes:
        data: bytes = self.bucket.blob(name).download_as_bytes()
        return data

    def listing(self, prefix: str) -> list[tuple[str, int, datetime]]:
        return sorted((b.name, int(b.size or 0), b.updated) for b in self.bucket.list_blobs(prefix=prefix))

    def delete(self, names: list[str]) -> None:
        for name in names:
            self.bucket.blob(name).delete()


class ObjectLogStore(LogStore):
    """Each log is a folder of segments `<start:016d>`: a byte offset (phase logs) or a line number
    (controller log). Readers stitch them in order; a segment that does not start where the previous
    one ended is a dead writer's leftover that `truncate` is about to remove, and is skipped."""

    def __init__(self, blobs: _Blobs, prefix: str):
        self.blobs = blobs
        self.prefix = prefix.strip("/")

    def _dir(self, key: str) -> str:
        return f"{self.prefix}/{key}/" if self.prefix else f"{key}/"

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def _segments(self, key: str) -> list[tuple[int, str, int]]:
        listed = await self._call(self.blobs.listing, self._dir(key))
        return sorted((int(name.rsplit("/", 1)[1]), name, size) for name, size, _ in listed)

    async def truncate(self, key: str, size: int) -> None:
        stale = [name for start, name, _ in await self._segments(key) if start >= size]
        if stale:
            await self._call(self.blobs.delete, stale)

    async def write(self, key: str, start: int, data: bytes) -> None:
        await self._call(self.blobs.put, f"{self._dir(key)}{start:0{_SEGMENT_DIGITS}d}", data)

    async def append_lines(self, key: str, first_seq: int, lines: list[str]) -> None:
        if lines:
            data = "".join(line + "\n" for line in lines).encode()
            await self._call(self.blobs.put, f"{self._dir(key)}{first_seq:0{_SEGMENT_DIGITS}d}", data)

    async def read(self, key: str, offset: int = 0) -> bytes:
        parts, position = [], 0
        for start, name, size in await self._segments(key):
            if start != position:
                continue
            if position + size > offset:
                data = await self._call(self.blobs.get, name)
                parts.append(data[max(0, offset - position) :])
            position += size
        return b"".join(parts)

    async def read_lines(self, key: str, offset: int = 0) -> bytes:
        out, next_seq = [], None
        for start, name, _ in await self._segments(key):
            lines = (await self._call(self.blobs.get, name)).splitlines(keepends=True)
            skip = 0 if next_seq is None else max(0, next_seq - start)
            out += lines[skip:]
            next_seq = max(next_seq or 0, start + len(lines))
        return b"".join(out)[offset:]

    async def job_logs_older_than(self, cutoff: datetime) -> list[int]:
        newest: dict[int, datetime] = {}
        for name, _, modified in await self._call(self.blobs.listing, self._dir("jobs")):
            job = name[len(self._dir("jobs")) :].split("/", 1)[0]
            if job.isdigit():
                newest[int(job)] = max(newest.get(int(job), modified), modified)
        return sorted(job for job, when in newest.items() if when < cutoff)

    async def delete_job(self, job_id: int) -> None:
        names = [name for name, _, _ in await self._call(self.blobs.listing, self._dir(f"jobs/{job_id}"))]
        if names:
            await self._call(self.blobs.delete, names)


def log_store(settings: Settings) -> LogStore:
    url = settings.jobs.logs.store
    if url == "local":
        return LocalLogStore(settings.home / "logs")
    parts = urlsplit(url)
    blobs: _Blobs = _S3Blobs(parts.netloc) if parts.scheme == "s3" else _GcsBlobs(parts.netloc)
    return ObjectLogStore(blobs, parts.path)
