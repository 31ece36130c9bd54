"""Fixtures of the backend tests: sshd nodes on loopback addresses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import sshd


@pytest.fixture
def ssh_nodes(tmp_path: Path) -> Iterator[sshd.SSHNodes]:
    """A factory of sshd nodes; every node it started is killed (with all its processes) afterwards."""
    why = sshd.available()
    if why:
        pytest.skip(why)
    nodes = sshd.SSHNodes(tmp_path / "sshd")
    yield nodes
    nodes.stop_all()
