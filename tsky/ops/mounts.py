"""Putting a task's files on its nodes: workdir, file mounts and buckets (storage objects).

How each kind of mount is realised ("local node": one that shares the worker's host, i.e. the local
infra; "remote node": any other):

- a local path or a bucket URL string: copied (local node: into the node, bound at the path);
- a storage object, mode COPY: the bucket copied the same way;
- MOUNT / MOUNT_CACHED of an s3 / gcs bucket, on every node: a live `rclone mount` for each phase
  (see `fuse.py`), tried once here first so that a bucket that cannot be mounted fails the job's
  prechecks instead of leaving it an empty directory;
- MOUNT / MOUNT_CACHED of a `local` bucket on a local node: the bucket's directory itself, bound live;
  on a remote node: a copy (files written there are not saved to the bucket).

"Bound at the path" means: in the phases' private mount namespace (see `clouds/phases.py`), so two jobs
on one host can both use `/checkpoint` and the host's own paths stay untouched.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Protocol, runtime_checkable

from tsky.ops.clouds.base import NodeAgent, PrecheckError
from tsky.ops.fuse import fuse_line, node_files, trial_mount
from tsky.ops.storage import LocalStore, StoreError, download, get_store, upload
from tsky.ops.uploads import upload_storage_source
from tsky.spec.settings import Settings
from tsky.spec.storage import FUSE_STORES, BucketURL, Storage, is_url, parse_bucket_url, storage_store, writes_back
from tsky.spec.task import Task


@runtime_checkable
class MountingAgent(Protocol):
    """A node agent whose node shares the worker's filesystem and can bind paths for its phases
    (`LocalNodeAgent`). Other agents get copies."""

    def host_path(self, dest: str) -> Path: ...

    def storage_cache(self, dest: str) -> Path: ...

    def mount(self, source: Path, dest: str) -> None: ...


def _precheck(err: Exception) -> PrecheckError:
    return PrecheckError(str(err))


class FileSync:
    """One sync of one task onto one cluster. Bucket contents are fetched once into `scratch` and then
    copied to every node."""

    def __init__(self, settings: Settings, backend: str, scratch: Path):
        self.settings = settings
        self.backend = backend
        self.scratch = scratch
        self.notes: list[str] = []
        self._fetched: dict[str, tuple[Path, bool]] = {}
        self._counter = itertools.count()
        self._fuse: dict[str, str] = {}  # mount path -> its line in the nodes' `fuse` file
        self._fuse_stores: set[str] = set()

    # -- sources ------------------------------------------------------------------------------------

    async def fetch(self, source: str) -> tuple[Path, bool]:
        """A local path or a bucket URL, as (a path on this host, is it a file)."""
        if not is_url(source):
            path = Path(source).expanduser()
            if not path.exists():
                raise PrecheckError(f"{source} does not exist on the worker's host {self._host_hint()}")
            return path, path.is_file()
        try:
            where = parse_bucket_url(source)
        except ValueError as err:
            raise _precheck(err) from None
        return await self.fetch_bucket(where)

    async def fetch_bucket(self, where: BucketURL) -> tuple[Path, bool]:
        if where.url in self._fetched:
            return self._fetched[where.url]
        try:
            store = get_store(where.store, self.settings)
            if not await asyncio.to_thread(store.bucket_exists, where.bucket):
                raise PrecheckError(f"bucket {where.url} does not exist (or is not readable with these credentials)")
            if isinstance(store, LocalStore):
                path = store.path(where.bucket, where.prefix)
                if not path.exists():
                    raise PrecheckError(f"{where.url} does not exist")
                result = (path, path.is_file())
            else:
                target = self.scratch / f"fetch-{next(self._counter)}"
                result = (target, await asyncio.to_thread(download, store, where, target))
        except StoreError as err:
            raise _precheck(err) from None
        self._fetched[where.url] = result
        return result

    def _host_hint(self) -> str:
        return "(local paths in a job must be uploaded at submission: launch it with `tsky jobs launch`)"

    # -- buckets --------------------------------------------------------------------------------------

    async def bucket_of(self, storage: Storage) -> BucketURL:
        """The bucket (and prefix) a storage object mounts, made ready: created when tsky owns it, the
        local source uploaded when nobody did yet."""
        store_name = storage_store(storage, self.backend)
        try:
            if isinstance(storage.source, list) or (storage.source and not is_url(storage.source)):
                if any(is_url(s) for s in ([storage.source] if isinstance(storage.source, str) else storage.source)):
                    raise PrecheckError("a storage `source` list may hold local paths only, not bucket URLs")
                storage, _skipped = await asyncio.to_thread(upload_storage_source, self.settings, storage, store_name)
            where = self.location(storage)
            if not storage.source:
                store = get_store(store_name, self.settings)
                await asyncio.to_thread(store.create_bucket, where.bucket)
            return where
        except (StoreError, ValueError) as err:
            raise _precheck(err) from None

    def location(self, storage: Storage) -> BucketURL:
        """Where a storage object's files live, without touching anything."""
        if isinstance(storage.source, str) and is_url(storage.source):
            return parse_bucket_url(storage.source)
        if storage.name is None:
            raise PrecheckError("a storage object with a local source needs a `name`: the bucket to upload it to")
        return BucketURL(store=storage_store(storage, self.backend), bucket=storage.name)

    # -- onto a node ----------------------------------------------------------------------------------

    async def put(self, agent: NodeAgent, source: str, dest: str) -> None:
        path, is_file = await self.fetch(source)
        if is_file:
            await agent.sync_file(str(path), dest)
        else:
            await agent.sync_dir(str(path), dest)

    async def put_storage(self, agent: NodeAgent, storage: Storage, where: BucketURL, dest: str) -> None:
        if storage.mode != "COPY" and where.store in FUSE_STORES:
            self._fuse[dest] = fuse_line(storage.mode, where, dest, self.settings)
            self._fuse_stores.add(where.store)
            return
        if storage.mode == "COPY" or not isinstance(agent, MountingAgent):
            if storage.mode != "COPY":
                self._note(
                    f"{dest}: {storage.mode} of {where.url} is a copy on {self.backend} nodes: files written "
                    "there are not saved to the bucket."
                )
            path, is_file = await self.fetch_bucket(where)
            await (agent.sync_file if is_file else agent.sync_dir)(str(path), dest)
            return
        try:
            store = get_store(where.store, self.settings)
            if isinstance(store, LocalStore):
                # Live: the job reads and writes the bucket's own directory.
                path = store.path(where.bucket, where.prefix)
                path.mkdir(parents=True, exist_ok=True)
                agent.mount(path, dest)
                return
            raise PrecheckError(f"{dest}: {storage.mode} of {where.url} is not supported")
        except StoreError as err:
            raise _precheck(err) from None

    async def mount_buckets(self, agent: NodeAgent) -> None:
        """Give the node its live bucket mounts (after every `put_storage` for it) and try them once."""
        if not self._fuse:
            return
        lines = [self._fuse[dest] for dest in sorted(self._fuse, key=lambda d: (d.count("/"), d))]
        try:
            files = await asyncio.to_thread(node_files, self.settings, lines, self._fuse_stores)
        except ValueError as err:
            raise _precheck(err) from None
        await agent.put_files(files)
        await trial_mount(agent)

    async def write_back(self, agent: NodeAgent, storage: Storage, where: BucketURL, dest: str) -> None:
        """Upload a node's cached copy of a mounted bucket (new and changed files; deletions stay): what
        jobs synced before live mounts existed still need when they finish (see `writes_back`)."""
        if not isinstance(agent, MountingAgent) or not writes_back(storage, self.backend):
            return
        cache = agent.storage_cache(dest)
        if cache.exists():
            store = get_store(where.store, self.settings)
            await asyncio.to_thread(upload, store, cache, where)

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def storages(task: Task) -> list[tuple[str, Storage]]:
    return [(dest, s) for dest, s in task.file_mounts.items() if isinstance(s, Storage)]
