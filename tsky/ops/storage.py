"""Buckets: the object stores tsky reads and writes, behind one small synchronous interface.

- `s3`: boto3, at `s3_endpoint(settings)` (MinIO, Ceph, R2, a private S3, moto in the tests);
- `gcs`: google-cloud-storage, at `gcs_endpoint(settings)` (`STORAGE_EMULATOR_HOST`: fake-gcs-server);
- `local`: tsky's own store for the local infra: a bucket is the directory `$TSKY_HOME/buckets/<name>`.

A bucket holds keys (`a/b/c.txt`); a "directory" is a key prefix. Every operation is idempotent:
creating a bucket that exists, deleting one that does not, uploading the same file twice all succeed.
Calls block: activities run them in a thread.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, Protocol

from tsky.spec.settings import Settings
from tsky.spec.storage import BucketURL

_BUCKET_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")


class StoreError(Exception):
    """A bucket cannot be used as asked (missing, not ours, a bad name): the message says which and why."""


class ObjectStore(Protocol):
    name: str

    def bucket_exists(self, bucket: str) -> bool: ...

    def create_bucket(self, bucket: str) -> None:
        """Create the bucket unless it exists."""

    def delete_bucket(self, bucket: str) -> None:
        """Delete every object, then the bucket; a missing bucket is fine."""

    def keys(self, bucket: str, prefix: str) -> Iterator[str]:
        """Every key equal to `prefix` or under `prefix/` (all keys when prefix is "")."""

    def put_file(self, local: Path, bucket: str, key: str) -> None: ...

    def get_file(self, bucket: str, key: str, local: Path) -> None: ...

    def delete_keys(self, bucket: str, keys: list[str]) -> None: ...

    def copy_key(self, bucket: str, src: str, dst: str) -> None: ...


def check_bucket_name(name: str) -> None:
    """The rule every store shares (S3's is the strictest): 3-63 lower-case letters, digits, . _ -."""
    if not _BUCKET_NAME_RE.match(name) or ".." in name:
        raise StoreError(
            f"Invalid bucket name {name!r}: use 3-63 lower-case letters, digits, dots, dashes or "
            "underscores, starting and ending with a letter or digit."
        )


def _under(prefix: str, key: str) -> bool:
    return not prefix or key == prefix or key.startswith(prefix + "/")


# -- local -------------------------------------------------------------------------------------------


class LocalStore:
    """Buckets as directories on this host: what the local infra's nodes bind-mount directly."""

    name = "local"

    def __init__(self, root: Path):
        self.root = root

    def path(self, bucket: str, prefix: str = "") -> Path:
        check_bucket_name(bucket)
        if ".." in Path(prefix).parts:
            raise StoreError(f"local://{bucket}/{prefix}: a path in a bucket cannot contain '..'.")
        return self.root / bucket / prefix if prefix else self.root / bucket

    def bucket_exists(self, bucket: str) -> bool:
        return self.path(bucket).is_dir()

    def create_bucket(self, bucket: str) -> None:
        self.path(bucket).mkdir(parents=True, exist_ok=True)

    def delete_bucket(self, bucket: str) -> None:
        shutil.rmtree(self.path(bucket), ignore_errors=True)

    def keys(self, bucket: str, prefix: str) -> Iterator[str]:
        base = self.path(bucket)
        start = self.path(bucket, prefix)
        if start.is_file():
            yield prefix
            return
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                yield str(Path(dirpath, name).relative_to(base))

    def put_file(self, local: Path, bucket: str, key: str) -> None:
        target = self.path(bucket, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local, target)

    def get_file(self, bucket: str, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.path(bucket, key), local)

    def delete_keys(self, bucket: str, keys: list[str]) -> None:
        for key in keys:
            self.path(bucket, key).unlink(missing_ok=True)

    def copy_key(self, bucket: str, src: str, dst: str) -> None:
        self.put_file(self.path(bucket, src), bucket, dst)

    def delete_prefix_dir(self, bucket: str, prefix: str) -> None:
        """Also remove the (now empty) directories: a bucket directory should not fill with husks."""
        target = self.path(bucket, prefix)
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)


# -- S3 ----------------------------------------------------------------------------------------------


# Errors no retry can fix: the credentials are wrong, or not allowed to do this.
_S3_CREDENTIAL_ERRORS = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken")


def s3_endpoint(settings: Settings) -> str | None:
    """The S3 endpoint tsky uses everywhere (stores, mounts): the AWS SDK's own variables first, as
    every AWS tool reads them, then `storage.s3.endpoint_url`; None is AWS itself."""
    return (
        os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or settings.storage.s3.endpoint_url
        or None
    )


def gcs_endpoint(settings: Settings) -> str | None:
    """The GCS endpoint: `STORAGE_EMULATOR_HOST` (what google-cloud-storage reads), then
    `storage.gcs.endpoint_url`; None is Google itself."""
    return os.environ.get("STORAGE_EMULATOR_HOST") or settings.storage.gcs.endpoint_url or None


class S3Store:
    name = "s3"

    def __init__(self, endpoint_url: str | None = None) -> None:
        import boto3

        self.client: Any = boto3.client("s3", endpoint_url=endpoint_url)
        self.region = self.client.meta.region_name or "us-east-1"

    def _missing(self, err: Exception) -> bool:
        code = str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchBucket", "NotFound", "NoSuchKey")

    def bucket_exists(self, bucket: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=bucket)
            return True
        except ClientError as err:
            if self._missing(err):
                return False
            raise StoreError(f"s3://{bucket} cannot be used: {err}") from err

    def create_bucket(self, bucket: str) -> None:
        from botocore.exceptions import ClientError

        check_bucket_name(bucket)
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self.client.create_bucket(**kwargs)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code")
            if code == "BucketAlreadyOwnedByYou":
                return
            if code == "BucketAlreadyExists":
                raise StoreError(f"s3://{bucket} belongs to another account: choose another bucket name.") from err
            if code in _S3_CREDENTIAL_ERRORS:
                raise StoreError(f"s3://{bucket} cannot be created with these credentials: {code}") from err
            raise

    def delete_bucket(self, bucket: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.delete_keys(bucket, list(self.keys(bucket, "")))
            self.client.delete_bucket(Bucket=bucket)
        except ClientError as err:
            if not self._missing(err):
                raise

    def keys(self, bucket: str, prefix: str) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                if _under(prefix, item["Key"]) and not item["Key"].endswith("/"):
                    yield item["Key"]

    def put_file(self, local: Path, bucket: str, key: str) -> None:
        self.client.upload_file(str(local), bucket, key)

    def get_file(self, bucket: str, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        self.client.download_file(bucket, key, str(local))

    def delete_keys(self, bucket: str, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})

    def copy_key(self, bucket: str, src: str, dst: str) -> None:
        self.client.copy_object(Bucket=bucket, Key=dst, CopySource={"Bucket": bucket, "Key": src})


# -- GCS ---------------------------------------------------------------------------------------------


class GcsStore:
    name = "gcs"

    def __init__(self, endpoint_url: str | None = None) -> None:
        from google.cloud.storage import Client

        # The emulator variable is read by the library itself (with anonymous credentials).
        emulated = endpoint_url is None or endpoint_url == os.environ.get("STORAGE_EMULATOR_HOST")
        self.client: Any = Client() if emulated else Client(client_options={"api_endpoint": endpoint_url})

    def bucket_exists(self, bucket: str) -> bool:
        return self.client.lookup_bucket(bucket) is not None

    def create_bucket(self, bucket: str) -> None:
        from google.api_core.exceptions import Conflict

        check_bucket_name(bucket)
        if self.bucket_exists(bucket):
            return
        try:
            self.client.create_bucket(bucket)
        except Conflict as err:
            if not self.bucket_exists(bucket):
                raise StoreError(f"gs://{bucket} belongs to another project: choose another bucket name.") from err

    def delete_bucket(self, bucket: str) -> None:
        from google.api_core.exceptions import NotFound

        try:
            self.delete_keys(bucket, list(self.keys(bucket, "")))
            self.client.bucket(bucket).delete()
        except NotFound:
            pass

    def keys(self, bucket: str, prefix: str) -> Iterator[str]:
        for blob in self.client.list_blobs(bucket, prefix=prefix or None):
            if _under(prefix, blob.name) and not blob.name.endswith("/"):
                yield blob.name

    def put_file(self, local: Path, bucket: str, key: str) -> None:
        self.client.bucket(bucket).blob(key).upload_from_filename(str(local))

    def get_file(self, bucket: str, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        self.client.bucket(bucket).blob(key).download_to_filename(str(local))

    def delete_keys(self, bucket: str, keys: list[str]) -> None:
        from google.api_core.exceptions import NotFound

        handle = self.client.bucket(bucket)
        for key in keys:
            with suppress(NotFound):
                handle.blob(key).delete()

    def copy_key(self, bucket: str, src: str, dst: str) -> None:
        handle = self.client.bucket(bucket)
        handle.copy_blob(handle.blob(src), handle, dst)


# -- the operations the runtime uses -----------------------------------------------------------------


def buckets_root(settings: Settings) -> Path:
    return settings.home / "buckets"


def get_store(name: str, settings: Settings) -> ObjectStore:
    """The store called `name` (`s3`, `gcs`, `local`); a StoreError for any other. Made per use, so
    it always follows the current endpoint and credentials."""
    if name == "local":
        return LocalStore(buckets_root(settings))
    try:
        if name == "s3":
            return S3Store(s3_endpoint(settings))
        if name == "gcs":
            return GcsStore(gcs_endpoint(settings))
    except ImportError as err:  # the light install: each cloud's SDK is an extra
        extra = "aws" if name == "s3" else "gcp"
        raise StoreError(f"{name} buckets need the {extra} SDK: pip install 'tsky[{extra}]'.") from err
    raise StoreError(f"store {name!r} is not supported by tsky; use s3, gcs or local.")


def special_file(path: Path) -> str | None:
    """What `path` is when no upload can copy it (a socket, a named pipe, a device: opening one fails or
    blocks), else None. Symlinks are followed; a dangling one is None (the callers skip it anyway)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    return "a device file"


def upload(store: ObjectStore, source: Path, where: BucketURL) -> list[Path]:
    """A file to the key `where.prefix`, or a directory's files under it (symlinks followed). Special
    files in the directory are skipped, as rsync and `aws s3 sync` do; returns them."""
    if source.is_file():
        store.put_file(source, where.bucket, where.prefix)
        return []
    skipped = []
    for dirpath, _dirs, files in os.walk(source, followlinks=True):
        for name in files:
            path = Path(dirpath, name)
            if not path.exists():
                continue  # a dangling symlink: nothing to upload
            if special_file(path):
                skipped.append(path)
                continue
            rel = path.relative_to(source).as_posix()
            store.put_file(path, where.bucket, f"{where.prefix}/{rel}" if where.prefix else rel)
    return skipped


def is_file(store: ObjectStore, where: BucketURL) -> bool:
    """True when `where` names one object rather than a prefix."""
    if not where.prefix:
        return False
    return any(key == where.prefix for key in store.keys(where.bucket, where.prefix))


def download(store: ObjectStore, where: BucketURL, dest: Path) -> bool:
    """`where` into `dest`: the object as the file `dest`, or the prefix's objects under the directory
    `dest`. Returns True when it was a single file."""
    keys = list(store.keys(where.bucket, where.prefix))
    if where.prefix and keys == [where.prefix]:
        store.get_file(where.bucket, where.prefix, dest)
        return True
    dest.mkdir(parents=True, exist_ok=True)
    for key in keys:
        rel = key[len(where.prefix) :].lstrip("/") if where.prefix else key
        store.get_file(where.bucket, key, dest / rel)
    return False


def delete_prefix(store: ObjectStore, where: BucketURL) -> None:
    if isinstance(store, LocalStore):
        store.delete_prefix_dir(where.bucket, where.prefix)
        return
    if store.bucket_exists(where.bucket):
        store.delete_keys(where.bucket, list(store.keys(where.bucket, where.prefix)))


def copy_prefix(store: ObjectStore, src: BucketURL, dst: BucketURL) -> None:
    """Server-side copy of a prefix to another prefix of the same bucket (a batch's sibling jobs)."""
    for key in list(store.keys(src.bucket, src.prefix)):
        rel = key[len(src.prefix) :].lstrip("/")
        store.copy_key(src.bucket, key, f"{dst.prefix}/{rel}" if rel else dst.prefix)
