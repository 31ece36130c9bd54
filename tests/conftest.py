"""Session-wide fixtures: one real Temporal dev server; per test, a namespace, a TSKY_HOME and workers."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import NO_CLOUD_METADATA, DevServer, TskyEnv, new_namespace, teardown_local_clusters
from tests.real_parts import pytest_runtest_makereport  # noqa: F401  (the hook that makes skips loud)

os.environ.update(NO_CLOUD_METADATA)  # inherited by every process a test starts


@pytest.fixture(scope="session")
def dev_server() -> Iterator[DevServer]:
    server = DevServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def tsky_env(dev_server: DevServer, tmp_path: Path) -> Iterator[TskyEnv]:
    """A fresh world for one test; its workers are stopped and its clusters torn down afterwards."""
    namespace = new_namespace()
    asyncio.run(dev_server.create_namespace(namespace))
    env = TskyEnv(home=tmp_path / "home", server=dev_server, namespace=namespace)
    env.configure()
    yield env
    for worker in env.workers:
        worker.kill9()
    teardown_local_clusters(env.home)


@pytest.fixture
def worker(tsky_env: TskyEnv) -> object:
    return tsky_env.start_worker()


@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(config: pytest.Config) -> object:
    # Processes that used the Temporal client can abort at interpreter exit (sdk-python#300):
    # once pytest is done (summary printed), flush and leave with its status.
    status = yield
    sys.stdout.flush()
    sys.stderr.flush()
    if "PYTEST_XDIST_WORKER" in os.environ:  # a worker's controller must see it end normally
        return status
    os._exit(int(status))  # type: ignore[call-overload]
