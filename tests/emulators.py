"""S3 on 127.0.0.1 for any test that needs it: moto's ThreadedMotoServer, started per test in this
process and stopped afterwards."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.harness import free_port


@dataclass
class Emulator:
    url: str
    env: dict[str, str]  # what a client (this process, the CLI, a worker) needs to use it


def _serve_null_version_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where moto (5.x) is not S3, and rclone notices: moto answers CompleteMultipartUpload in an unversioned
    bucket with `x-amz-version-id: null` (S3 sends no version id there), and then refuses the read-back that
    rclone makes of every multipart upload with that id, `HEAD ?versionId=null`, with 400 (S3 serves it:
    "null" is the version id of every object in an unversioned bucket). A MOUNT streams each file over
    5 MiB as a multipart upload, so its close() failed with EIO. Here the HEAD is served as S3 serves it."""
    from moto.s3.responses import S3Response

    head_object = S3Response.head_object

    def s3_head_object(self: S3Response, bucket_name: str, query: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if query.get("versionId") == ["null"] and not self.backend.get_bucket(bucket_name).is_versioned:
            query = {k: v for k, v in query.items() if k != "versionId"}
        return head_object(self, bucket_name, query, *args, **kwargs)

    monkeypatch.setattr(S3Response, "head_object", s3_head_object)


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    from moto.server import ThreadedMotoServer

    _serve_null_version_reads(monkeypatch)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # moto keeps its state per process, not per server: start every test from an empty account.
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST"))
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        yield Emulator(url=env["AWS_ENDPOINT_URL"], env=env)
    finally:
        server.stop()
