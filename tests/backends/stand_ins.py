"""Loopback sshd nodes standing in for cloud instances: the address resolver (`clouds/addresses.py`) that the
aws and gcp tests and `bench/scale.py --infra aws` configure, as a user would configure theirs.

`use(home, endpoints)` records the nodes (`127.x.y.z:port`) under the tsky home and returns the setting that
makes a backend use them. Each new instance gets a node no live instance holds (one never used first, so a
test sees a fresh node); asking again for the same instance gives the same node. When tsky deletes the
instance, its node loses the instance's processes, workdir and phase files, as they would vanish with the
VM. The assignment lives in a JSON file beside config.yaml, locked while it changes, so the worker process
and the test agree.
"""

from __future__ import annotations

import fcntl
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tsky.ops.clouds.addresses import CloudInstance, SSHAddress
from tsky.ops.clouds.ssh_runner import (
    DEFAULT_WORKDIR,
    SSHOptions,
    SSHTarget,
    cluster_dir,
    cluster_node,
    run_program,
)
from tsky.spec.settings import Settings

STATE_FILE = "stand-ins.json"
FACTORY = "tests.backends.stand_ins:StandIns"
# args: cluster directory. Removes it once its last node's directory is gone (nodes may share a home).
REMOVE_CLUSTER_DIR = 'rmdir -- "$HOME/$1" 2>/dev/null; exit 0'
logger = logging.getLogger(__name__)


def use(home: Path, endpoints: list[str]) -> dict[str, str]:
    """Stand the nodes at `endpoints` in for the instances of the tsky home `home`; the aws/gcp setting."""
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        assert host.startswith("127.") and port.isdigit(), f"{endpoint} is not a loopback endpoint"
    home.mkdir(parents=True, exist_ok=True)
    (home / STATE_FILE).write_text(json.dumps({"endpoints": endpoints, "held": {}, "used": []}))
    return {"ssh_address_resolver": FACTORY}


def holding(home: Path, backend: str, instance_id: str) -> str:
    """The endpoint of the node standing in for an instance."""
    return str(json.loads((home / STATE_FILE).read_text())["held"][f"{backend}/{instance_id}"]["endpoint"])


class StandIns:
    """The `AddressResolver`; built by the backend from the setting `use()` returns."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.path = settings.home / STATE_FILE

    @contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        with (self.path.parent / (STATE_FILE + ".lock")).open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = json.loads(self.path.read_text())
            yield state
            self.path.write_text(json.dumps(state))

    async def address(self, instance: CloudInstance) -> SSHAddress:
        key = f"{instance.backend}/{instance.instance_id}"
        with self._state() as state:
            held = state["held"]
            if key not in held:
                free = [e for e in state["endpoints"] if e not in {h["endpoint"] for h in held.values()}]
                fresh = [e for e in free if e not in state["used"]]
                if not free:
                    raise RuntimeError(f"every stand-in node is held by a live instance: {state['endpoints']}")
                endpoint = (fresh or free)[0]
                held[key] = {"endpoint": endpoint, "cluster": instance.cluster, "rank": instance.rank}
                state["used"].append(endpoint)
            endpoint = held[key]["endpoint"]
        host, _, port = endpoint.rpartition(":")
        return SSHAddress(host, int(port))

    async def released(self, instance: CloudInstance) -> None:
        with self._state() as state:
            holder = state["held"].pop(f"{instance.backend}/{instance.instance_id}", None)
        if holder is None:
            return
        host, _, port = holder["endpoint"].rpartition(":")
        cfg = self.settings.aws if instance.backend == "aws" else self.settings.gcp
        target = SSHTarget(host, int(port), cfg.ssh_user, cfg.ssh_private_key)
        await clean_node(target, holder["cluster"], holder["rank"])


async def clean_node(target: SSHTarget, cluster_name: str, rank: int) -> None:
    """What deleting the VM does to what ran on it: its processes, workdir and phase files are gone."""
    options = SSHOptions()
    try:
        await cluster_node(target, cluster_name, rank, options).terminate(
            grace=1.0, remove=[DEFAULT_WORKDIR], tag_prefix=f"{cluster_name}/"
        )
        await run_program(target, REMOVE_CLUSTER_DIR, [cluster_dir(cluster_name)], options=options)
    except Exception as err:  # the node may be dead already: that is the point of a teardown
        logger.info("cleaning stand-in node %s for %s: %s", target, cluster_name, err)
