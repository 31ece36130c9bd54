"""The three stores behind one interface, each against its real (or emulated) service: S3 on moto, GCS on
fake-gcs-server, `local` on a directory. Every operation the runtime relies on, and its idempotency."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tsky.ops.storage import (
    LocalStore,
    ObjectStore,
    StoreError,
    copy_prefix,
    delete_prefix,
    download,
    get_store,
    is_file,
    upload,
)
from tsky.spec.settings import Settings
from tsky.spec.storage import BucketURL, parse_bucket_url, storage_store, writes_back
from tsky.spec.task import Storage


@pytest.fixture(params=["local", "s3", "gcs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "s3":
        request.getfixturevalue("moto_s3")
    elif request.param == "gcs":
        request.getfixturevalue("fake_gcs")
    yield get_store(request.param, Settings(home=tmp_path / "home"))


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_upload_download_delete_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("A")
    (src / "sub" / "b.txt").write_text("B")
    single = tmp_path / "single.txt"
    single.write_text("S")

    assert not store.bucket_exists("tsky-test-bucket")
    store.create_bucket("tsky-test-bucket")
    store.create_bucket("tsky-test-bucket")  # idempotent
    assert store.bucket_exists("tsky-test-bucket")
    root = BucketURL(store=store.name, bucket="tsky-test-bucket")

    upload(store, src, root.child("job-1", "workdir"))
    upload(store, single, root.child("job-1", "tmp-files", "file-0"))
    assert sorted(store.keys("tsky-test-bucket", "job-1")) == [
        "job-1/tmp-files/file-0",
        "job-1/workdir/a.txt",
        "job-1/workdir/sub/b.txt",
    ]
    # A prefix is a directory, an exact key a file; a prefix never matches a longer name ("job-1" vs "job-10").
    upload(store, single, root.child("job-10", "x"))
    assert len(list(store.keys("tsky-test-bucket", "job-1"))) == 3
    assert is_file(store, root.child("job-1", "tmp-files", "file-0"))
    assert not is_file(store, root.child("job-1", "workdir"))

    assert download(store, root.child("job-1", "workdir"), tmp_path / "out") is False
    assert tree(tmp_path / "out") == {"a.txt": "A", "sub/b.txt": "B"}
    assert download(store, root.child("job-1", "tmp-files", "file-0"), tmp_path / "one.txt") is True
    assert (tmp_path / "one.txt").read_text() == "S"

    copy_prefix(store, root.child("job-1"), root.child("job-2"))
    assert len(list(store.keys("tsky-test-bucket", "job-2"))) == 3

    delete_prefix(store, root.child("job-1"))
    delete_prefix(store, root.child("job-1"))  # idempotent
    assert list(store.keys("tsky-test-bucket", "job-1")) == []
    assert len(list(store.keys("tsky-test-bucket", "job-2"))) == 3

    store.delete_bucket("tsky-test-bucket")
    store.delete_bucket("tsky-test-bucket")  # a missing bucket is fine
    assert not store.bucket_exists("tsky-test-bucket")


def test_local_store_refuses_paths_outside_its_buckets(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "buckets")
    with pytest.raises(StoreError, match=r"cannot contain '\.\.'"):
        store.path("good-bucket", "../../etc")
    with pytest.raises(StoreError, match="Invalid bucket name"):
        store.create_bucket("Bad_Bucket!")


def test_bucket_urls_and_which_store_a_storage_object_uses() -> None:
    assert parse_bucket_url("s3://b/a/b/") == BucketURL(store="s3", bucket="b", prefix="a/b")
    assert parse_bucket_url("gs://b").url == "gs://b"
    assert parse_bucket_url("local://b/x").child("y", "z").url == "local://b/x/y/z"
    with pytest.raises(ValueError, match="s3://<bucket>"):
        parse_bucket_url("https://account.blob.core.windows.net/c")

    named = Storage(name="ckpt")
    assert storage_store(named, "local") == "local"
    assert storage_store(named, "aws") == "s3" and storage_store(named, "gcp") == "gcs"
    assert storage_store(Storage(source="gs://data"), "aws") == "gcs"
    assert storage_store(Storage(name="x", store="s3"), "local") == "s3"
    # Only an object-store bucket mounted on the nodes is a cached copy to upload again.
    assert not writes_back(named, "local")
    assert writes_back(Storage(name="x", store="s3"), "local")
    assert not writes_back(Storage(name="x", store="s3", mode="COPY", source="s3://x"), "local")
