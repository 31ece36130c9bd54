"""What `file_mounts:` and `workdir:` may hold: local paths, bucket URLs, storage objects, git checkouts."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr, field_validator, model_validator

from tsky.spec.errors import FieldError

# `store: local` is tsky's own: a directory shared by the clusters of the local backend.
STORES = ("s3", "gcs", "azure", "r2", "ibm", "oci", "nebius", "coreweave", "vastdata", "hf", "volume", "local")
MODES = ("MOUNT", "COPY", "MOUNT_CACHED")
CACHED_TYPES = ("MODEL_CHECKPOINT_RO", "MODEL_CHECKPOINT_RW", "DATASET_RO", "DATASET_RW")

_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_GIT_URL_RE = re.compile(r"^(?:(?:https?|ssh|git)://\S+|[\w.-]+@[\w.-]+:\S+)$")


def is_url(source: str) -> bool:
    """A bucket or web URL (`s3://b/p`, `gs://b`, `https://...`), as opposed to a local path."""
    return bool(_URL_RE.match(source))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Storage(_Model):
    """A storage object in `file_mounts`: a bucket (made or reused), mounted or copied at the path."""

    name: StrictStr | None = None
    source: StrictStr | list[StrictStr] | None = None
    store: str | None = None
    persistent: StrictBool = True
    mode: str = "MOUNT"
    type: str | None = None
    config: dict[str, Any] | None = None

    @field_validator("store", mode="before")
    @classmethod
    def _store(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str) or value.strip().lower() not in STORES:
            raise FieldError(f"{value!r} is not one of {list(STORES)}.")
        return value.strip().lower()

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        if value is None:
            return "MOUNT"
        if not isinstance(value, str) or value.strip().upper() not in MODES:
            raise FieldError(f"{value!r} is not one of {list(MODES)}.")
        return value.strip().upper()

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str) or value.strip().upper() not in CACHED_TYPES:
            raise FieldError(f"{value!r} is not one of {list(CACHED_TYPES)}.")
        return value.strip().upper()

    @model_validator(mode="after")
    def _rules(self) -> Storage:
        if self.name is None and self.source is None:
            raise FieldError(
                "Storage source or storage name must be specified: give `name` (a bucket to create or "
                "reuse) and/or `source` (a local path or bucket URL)."
            )
        if self.mode == "COPY" and self.source is None:
            raise FieldError("Storage mode COPY needs a `source` to copy from.")
        return self


class GitWorkdir(_Model):
    """`workdir: {url, ref}`: the working directory is a checkout of a git repository."""

    url: StrictStr
    ref: StrictStr | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not _GIT_URL_RE.match(value.strip()):
            raise FieldError(
                f"Invalid git URL {value!r}. Use an https://, ssh:// or scp-style (git@host:org/repo.git) URL."
            )
        return value.strip()


# -- where bucket data lives, as the runtime sees it ---------------------------------------------------

# URL scheme -> store, for the stores tsky can read and write.
SCHEME_STORES = {"s3": "s3", "gs": "gcs", "local": "local"}
STORE_SCHEMES = {store: scheme for scheme, store in SCHEME_STORES.items()}
# The store a bucket goes to when a storage object names none: the one of the cloud the task runs on.
_BACKEND_STORES = {"aws": "s3", "gcp": "gcs"}
FUSE_STORES = ("s3", "gcs")  # the stores mounted live; `local` buckets are bound (see mounts.py)


class BucketURL(BaseModel):
    """`s3://bucket/prefix`, `gs://bucket/prefix` or `local://bucket/prefix`, split."""

    model_config = ConfigDict(frozen=True)

    store: str
    bucket: str
    prefix: str = ""  # no leading or trailing slash; "" is the whole bucket

    @property
    def url(self) -> str:
        tail = f"/{self.prefix}" if self.prefix else ""
        return f"{STORE_SCHEMES[self.store]}://{self.bucket}{tail}"

    def child(self, *parts: str) -> BucketURL:
        prefix = "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))
        return BucketURL(store=self.store, bucket=self.bucket, prefix=prefix)


def parse_bucket_url(url: str) -> BucketURL:
    """Split a bucket URL; a ValueError names the schemes tsky supports when the URL uses another."""
    scheme, sep, rest = url.partition("://")
    store = SCHEME_STORES.get(scheme.lower())
    bucket, _, prefix = rest.partition("/")
    if not sep or store is None or not bucket:
        raise ValueError(
            f"{url!r} is not a bucket URL tsky can use: write s3://<bucket>[/path], gs://<bucket>[/path] "
            "or local://<bucket>[/path]."
        )
    return BucketURL(store=store, bucket=bucket, prefix=prefix.strip("/"))


def storage_store(storage: Storage, backend: str) -> str:
    """The store a storage object's bucket lives in: the one it names, the one its source URL names,
    else the store of the cloud the task runs on (`local` for the local infra and ssh/k8s)."""
    if storage.store:
        return storage.store
    source = storage.source if isinstance(storage.source, str) else None
    if source and is_url(source):
        scheme = source.partition("://")[0].lower()
        return SCHEME_STORES.get(scheme, scheme)
    return _BACKEND_STORES.get(backend, "local")


def mounts_live(storage: Storage, backend: str) -> bool:
    """True for a MOUNT or MOUNT_CACHED of an object store: a FUSE mount on the node (`fuse.py`)."""
    return storage.mode != "COPY" and storage_store(storage, backend) in FUSE_STORES


def writes_back(storage: Storage, backend: str) -> bool:
    """True for the mounts that workflows started before live bucket mounts upload after the task's
    phases (MOUNT / MOUNT_CACHED of an object store); kept so that their histories replay. New
    executions skip that step: the phases flush their own mounts (`tsky/ops/fuse.py`)."""
    if storage.mode == "COPY":
        return False
    return not (backend == "local" and storage_store(storage, backend) == "local")


class UploadLocation(BaseModel):
    """Where a job's local files were uploaded at submission, removed when the job ends.

    Either a prefix of an intermediate bucket (`bucket`, with `delete_bucket` when tsky created the
    whole bucket for this job), or a directory of the worker's own file store (`path`, two-hop)."""

    model_config = ConfigDict(extra="ignore")

    bucket: BucketURL | None = None
    delete_bucket: bool = False
    path: str | None = None


class BucketRef(BaseModel):
    """A bucket tsky made for a `persistent: false` storage object: deleted when the job ends."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    store: str
    name: str
