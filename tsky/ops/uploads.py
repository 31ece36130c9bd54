"""Uploading a job's local files at submission, so the job never depends on the submitting machine.

SkyPilot's rules (docs/pipelines-and-storage.md), with tsky's names:

- Intermediate bucket: `jobs.bucket` from config (`s3://`, `gs://` or `local://`), whose store must be
  enabled; otherwise, when an object store is enabled (AWS credentials: S3; GCP credentials or a GCS
  emulator: GCS), a temporary bucket made for the job (`tsky-filemounts-<user>-<hash>-<run8>`) and
  deleted with it. Inside it, per job: `job-<run id>/workdir`, `job-<run id>/local-file-mounts/<i>` and
  `job-<run id>/tmp-files/file-<i>` (single files).
- Two-hop: with no object store enabled, or `jobs.force_disable_cloud_bucket: true`, the same layout
  in the worker's own file store, `$TSKY_HOME/uploads/job-<run id>/`, which the workers read when they
  copy files to the nodes. The CLI and the workers must share `$TSKY_HOME` (the embedded default).
- A storage object with a local `source` is uploaded into its own bucket (`name`) instead.

The job's tasks are rewritten to refer to the uploaded locations, and the request records them
(`JobRequest.uploads`) so that `cleanup_job` removes them when the job ends.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tsky.ops.storage import (
    StoreError,
    check_bucket_name,
    copy_prefix,
    delete_prefix,
    get_store,
    special_file,
    upload,
)
from tsky.spec.settings import Settings
from tsky.spec.storage import BucketURL, Storage, UploadLocation, is_url, parse_bucket_url
from tsky.spec.task import Pipeline, Task

_STORE_CLOUDS = {"s3": "aws", "gcs": "gcp"}
_CLOUD_STORES = {"aws": "s3", "gcp": "gcs"}


class UploadError(Exception):
    """The job's files cannot be uploaded as configured; the message names the setting and the fix."""


def uploads_root(settings: Settings) -> Path:
    """The worker's own file store (two-hop uploads)."""
    return settings.home / "uploads"


def enabled_stores(settings: Settings) -> list[str]:
    """Object stores whose credentials (or emulator) are configured, in preference order."""
    from tsky.ops.infra_check import check_infra

    enabled = {s.name for s in check_infra(settings, only=("aws", "gcp")) if s.enabled}
    stores = []
    if "aws" in enabled:
        stores.append("s3")
    if "gcp" in enabled or os.environ.get("STORAGE_EMULATOR_HOST"):
        stores.append("gcs")
    return stores


def has_local_files(pipeline: Pipeline) -> bool:
    return any(_local_sources(task) for task in pipeline.tasks)


def _local_sources(task: Task) -> list[str]:
    found = []
    if isinstance(task.workdir, str) and not is_url(task.workdir):
        found.append(task.workdir)
    for source in task.file_mounts.values():
        if isinstance(source, str):
            if not is_url(source):
                found.append(source)
        elif isinstance(source.source, str) and not is_url(source.source):
            found.append(source.source)
        elif isinstance(source.source, list):
            found += [s for s in source.source if not is_url(s)]
    return found


def _default_store(task: Task) -> str:
    """Where a storage object's bucket goes when it names no store: the store of the cloud the task asks
    for, else tsky's local store (the embedded default runs on the local infra)."""
    for option in task.requests().options:
        if option.infra is not None and option.infra.cloud in _CLOUD_STORES:
            return _CLOUD_STORES[option.infra.cloud]
    return "local"


class Uploader:
    """Decides where a submission's local files go (checking the configuration first, before any job id
    is taken), then uploads them once per job."""

    def __init__(self, settings: Settings, pipeline: Pipeline, *, user: str, user_hash: str):
        self.settings = settings
        self.pipeline = pipeline
        self.user = user
        self.user_hash = user_hash
        self.needed = has_local_files(pipeline)
        self.root: BucketURL | None = None  # the intermediate bucket (or jobs.bucket's prefix)
        self.temporary = False  # a bucket made for each job
        self.skipped: list[Path] = []  # special files (sockets, pipes, devices) left out of the last upload
        if not self.needed:
            return
        jobs = settings.jobs
        stores = enabled_stores(settings)
        if jobs.force_disable_cloud_bucket:
            return
        if jobs.bucket:
            try:
                self.root = parse_bucket_url(jobs.bucket)
            except ValueError as err:
                raise UploadError(f"jobs.bucket in {settings.config_file}: {err}") from None
            if self.root.store != "local" and self.root.store not in stores:
                cloud = _STORE_CLOUDS[self.root.store].upper()
                raise UploadError(
                    f"`jobs.bucket` is specified in {settings.config_file} ({jobs.bucket}), but {cloud} is "
                    f"not enabled: configure {cloud} credentials (see `tsky check`), or remove jobs.bucket."
                )
        elif stores:
            self.temporary = True
            self.root = BucketURL(store=stores[0], bucket="placeholder")
        self._check_storage_sources()

    def _check_storage_sources(self) -> None:
        for task in self.pipeline.tasks:
            for dest, source in task.file_mounts.items():
                if isinstance(source, Storage) and source.source is not None and source.name is None:
                    local = [source.source] if isinstance(source.source, str) else source.source
                    if any(not is_url(s) for s in local):
                        raise UploadError(
                            f"file_mounts.{dest}: a storage object with a local source needs a `name`: the "
                            "bucket to upload it to (e.g. `name: my-data`)."
                        )

    @property
    def mode(self) -> str:
        if not self.needed:
            return "none"
        return "two-hop" if self.root is None else "bucket"

    def describe(self) -> str:
        if self.root is None:
            return f"Uploading local files to the worker's file store ({uploads_root(self.settings)}, two-hop)."
        if self.temporary:
            return f"Uploading local files to a temporary {self.root.store} bucket (deleted when the job ends)."
        return f"Uploading local files to the intermediate bucket {self.root.url}."

    def skipped_warnings(self) -> list[str]:
        """One line per special file the last upload left out."""
        return [
            f"Skipping {path}: {special_file(path) or 'not a regular file'} cannot be uploaded (only regular "
            "files, directories and symlinks are, as with rsync); the job will not see it."
            for path in self.skipped
        ]

    def upload(self, run_id: str) -> tuple[Pipeline, list[UploadLocation]]:
        """Upload for one job (`run_id` names its directory); the tasks rewritten, and what to remove later.
        Special files inside the directories are skipped and listed in `skipped`."""
        self.skipped = []
        if not self.needed:
            return self.pipeline, []
        try:
            return self._upload(run_id)
        except StoreError as err:
            raise UploadError(str(err)) from None

    def _upload(self, run_id: str) -> tuple[Pipeline, list[UploadLocation]]:
        job_dir = f"job-{run_id}"
        location: UploadLocation
        if self.root is None:
            base = uploads_root(self.settings) / job_dir
            shutil.rmtree(base, ignore_errors=True)
            base.mkdir(parents=True)

            def put(src: str, sub: str) -> str:
                self.skipped += _copy_to(Path(src), base / sub)
                return str(base / sub)

            location = UploadLocation(path=str(base))
        else:
            if self.temporary:
                bucket = temp_bucket_name(self.user, self.user_hash, run_id)
                root = BucketURL(store=self.root.store, bucket=bucket)
            else:
                root = self.root
            store = get_store(root.store, self.settings)
            store.create_bucket(root.bucket)
            where = root.child(job_dir)

            def put(src: str, sub: str) -> str:
                target = where.child(sub)
                self.skipped += upload(store, Path(src), target)
                return target.url

            location = UploadLocation(bucket=where, delete_bucket=self.temporary)
        # Each local source is uploaded once per job, however many tasks use it.
        done: dict[tuple[str, str], str] = {}
        counter = {"workdir": 0, "dir": 0, "file": 0}
        layout = {"workdir": "workdir", "dir": "local-file-mounts/{}", "file": "tmp-files/file-{}"}

        def translate(src: str, kind: str = "") -> str:
            if is_url(src):
                return src
            kind = kind or ("dir" if Path(src).is_dir() else "file")
            if (src, kind) not in done:
                index = counter[kind]
                counter[kind] += 1
                sub = layout[kind].format(index)
                if kind == "workdir" and index:
                    sub += f"-{index}"  # a pipeline whose tasks have different workdirs
                done[(src, kind)] = put(src, sub)
            return done[(src, kind)]

        tasks = [self._rewrite(task, translate) for task in self.pipeline.tasks]
        return Pipeline(name=self.pipeline.name, tasks=tasks), [location]

    def _rewrite(self, task: Task, translate: Callable[..., str]) -> Task:
        update: dict[str, Any] = {}
        if isinstance(task.workdir, str):
            update["workdir"] = translate(task.workdir, "workdir")
        mounts: dict[str, str | Storage] = {}
        for dest, source in task.file_mounts.items():
            if isinstance(source, str):
                mounts[dest] = translate(source)
            elif source.source is not None and source.name is not None and _local(source.source):
                mounts[dest] = self._upload_storage(task, source)
            else:
                mounts[dest] = source
        update["file_mounts"] = mounts
        return task.model_copy(update=update)

    def _upload_storage(self, task: Task, storage: Storage) -> Storage:
        uploaded, skipped = upload_storage_source(self.settings, storage, storage.store or _default_store(task))
        self.skipped += skipped
        return uploaded

    def copy_for(
        self, pipeline: Pipeline, uploads: list[UploadLocation], run_id: str
    ) -> tuple[Pipeline, list[UploadLocation]]:
        """Another job of the same batch: a copy of the first job's uploads (hard links in the file
        store, server-side copies in a bucket), so each job can remove its own when it ends."""
        if not uploads:
            return pipeline, []
        first = uploads[0]
        job_dir = f"job-{run_id}"
        if first.path is not None:
            target = uploads_root(self.settings) / job_dir
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(first.path, target, symlinks=True, copy_function=_link_or_copy)
            old, new = first.path, str(target)
            location = UploadLocation(path=new)
        else:
            assert first.bucket is not None
            src = first.bucket
            if first.delete_bucket:
                dst_root = BucketURL(store=src.store, bucket=temp_bucket_name(self.user, self.user_hash, run_id))
            else:
                dst_root = BucketURL(store=src.store, bucket=src.bucket, prefix=src.prefix.rpartition("/")[0])
            dst = dst_root.child(job_dir)
            store = get_store(src.store, self.settings)
            if dst.bucket == src.bucket:
                copy_prefix(store, src, dst)
            else:
                store.create_bucket(dst.bucket)
                _copy_between(store, src, dst)
            old, new = src.url, dst.url
            location = UploadLocation(bucket=dst, delete_bucket=first.delete_bucket)

        def swap(value: str) -> str:
            return new + value[len(old) :] if value == old or value.startswith(old + "/") else value

        tasks = []
        for task in pipeline.tasks:
            update: dict[str, Any] = {}
            if isinstance(task.workdir, str):
                update["workdir"] = swap(task.workdir)
            update["file_mounts"] = {d: swap(s) if isinstance(s, str) else s for d, s in task.file_mounts.items()}
            tasks.append(task.model_copy(update=update))
        return Pipeline(name=pipeline.name, tasks=tasks), [location]


def remove_uploads(settings: Settings, uploads: list[UploadLocation]) -> None:
    """Delete uploaded copies: a file-store directory, a bucket prefix, or a whole temporary bucket.
    Idempotent. A directory outside this machine's file store is never deleted (UploadError)."""
    for location in uploads:
        if location.path is not None:
            path = Path(location.path)
            root = uploads_root(settings)
            if not path.resolve().is_relative_to(root.resolve()):
                raise UploadError(f"refusing to delete {path}: not in this machine's file store {root}")
            shutil.rmtree(path, ignore_errors=True)
        elif location.bucket is not None:
            store = get_store(location.bucket.store, settings)
            if location.delete_bucket:
                store.delete_bucket(location.bucket.bucket)
            else:
                delete_prefix(store, location.bucket)


def upload_storage_source(settings: Settings, storage: Storage, store_name: str) -> tuple[Storage, list[Path]]:
    """A storage object's local source goes into its own bucket (`name`, made if missing); the object
    returned names that bucket as its source instead of the local path. Also returns the special files
    skipped."""
    if storage.name is None:
        raise StoreError("a storage object with a local source needs a `name`: the bucket to upload it to.")
    store = get_store(store_name, settings)
    store.create_bucket(storage.name)
    sources = [storage.source] if isinstance(storage.source, str) else list(storage.source or [])
    bucket = BucketURL(store=store_name, bucket=storage.name)
    skipped: list[Path] = []
    for source in sources:
        if is_url(source):
            continue
        path = Path(source).expanduser()
        if not path.exists():
            raise StoreError(f"storage source {source} does not exist on this host.")
        # A list of sources keeps each one's name, as SkyPilot does; a single directory is the bucket.
        skipped += upload(store, path, bucket.child(path.name) if len(sources) > 1 or path.is_file() else bucket)
    return storage.model_copy(update={"source": bucket.url, "store": store_name}), skipped


def _local(source: str | list[str]) -> bool:
    items = [source] if isinstance(source, str) else source
    return any(not is_url(s) for s in items)


def temp_bucket_name(user: str, user_hash: str, run_id: str) -> str:
    """SkyPilot's per-launch bucket name, `tsky-filemounts-<user>-<hash>-<run8>`, made a valid name."""
    clean = re.sub(r"[^a-z0-9-]", "-", user.lower()).strip("-")[:16] or "user"
    run8 = re.sub(r"[^a-z0-9]", "", run_id.lower())[-8:]
    name = f"tsky-filemounts-{clean}-{user_hash[:8]}-{run8}"
    check_bucket_name(name)
    return name


def _copy_to(src: Path, target: Path) -> list[Path]:
    """`src` copied to `target`, symlinks kept; returns the special files left out (as rsync does)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not src.is_dir():
        shutil.copy2(src, target)
        return []
    skipped: list[Path] = []

    def specials(directory: str, names: list[str]) -> set[str]:
        found = {
            n for n in names if not os.path.islink(os.path.join(directory, n)) and special_file(Path(directory, n))
        }
        skipped.extend(Path(directory, n) for n in sorted(found))
        return found

    shutil.copytree(src, target, symlinks=True, ignore=specials)
    return skipped


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_between(store: Any, src: BucketURL, dst: BucketURL) -> None:
    import tempfile

    from tsky.ops.storage import download

    with tempfile.TemporaryDirectory() as scratch:
        download(store, src, Path(scratch) / "x")
        upload(store, Path(scratch) / "x", dst)
