"""Fixtures for the planner tests: the bundled catalog, plain settings, and an environment with no cloud
credentials (so the host's own ~/.aws, ~/.kube or gcloud files never leak into a test)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.planning.helpers import offline_env
from tsky.ops.catalog import Catalog, load_catalog
from tsky.spec.settings import Settings


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    env = offline_env(tmp_path)
    for key in list(os.environ):
        if key not in env:
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield env


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture(scope="session")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    # An empty home: the bundled catalog, whatever the machine's $TSKY_HOME holds.
    return load_catalog(tmp_path_factory.mktemp("empty-home"))
