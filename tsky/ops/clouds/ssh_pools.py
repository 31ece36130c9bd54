"""`$TSKY_HOME/ssh_node_pools.yaml`: the machines of the `ssh` infra, in SkyPilot's format.

```yaml
my-pool:                      # infra: ssh/my-pool
  user: ubuntu                # defaults for the pool's hosts
  identity_file: ~/.ssh/id_ed25519
  # password: ...             # instead of a key (copies then go over SFTP, not rsync)
  # port: 22
  # max_clusters: 1           # clusters a host runs at once (e.g. 8 on an 8-GPU box for 1-GPU jobs)
  hosts:
    - 192.168.1.10            # a name or an address, with the pool's defaults
    - ip: 192.168.1.11        # or a mapping that overrides them
      user: admin
      port: 2222
      max_clusters: 4         # per host, overriding the pool's
  # vcpus: 16, memory_gb: 64, accelerators: {H100: 8}   # optional shape, for the planner
```

Pure parsing (no SSH), shared by the backend and `tsky check`; every problem is reported with the pool
and the field at fault.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

POOLS_FILE = "ssh_node_pools.yaml"


class PoolFileError(ValueError):
    """The pool file (or one pool in it) cannot be used; the message names the file, pool and field."""


class PoolHost(BaseModel):
    """One machine, with the pool's defaults applied."""

    model_config = ConfigDict(frozen=True)

    ip: str
    port: int = 22
    user: str | None = None
    identity_file: str | None = None
    password: str | None = Field(default=None, repr=False)
    max_clusters: int = 1  # how many clusters may hold the host at once

    @property
    def key(self) -> str:
        """How the host is named in cluster records: `address:port`."""
        return f"{self.ip}:{self.port}"


class _HostEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ip: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    user: str | None = None
    identity_file: str | None = None
    password: str | None = None
    max_clusters: int | None = Field(default=None, ge=1)
    use_ssh_config: bool | None = None  # SkyPilot's; tsky reads no ssh config: accepted, ignored


class _PoolEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hosts: list[str | _HostEntry] = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    user: str | None = None
    identity_file: str | None = None
    password: str | None = None
    max_clusters: int | None = Field(default=None, ge=1)
    use_ssh_config: bool | None = None
    # The planner's optional node shape (see infra_check): not this module's business.
    vcpus: float | None = None
    memory_gb: float | None = None
    accelerators: dict[str, float] | None = None


class NodePool(BaseModel):
    name: str
    hosts: list[PoolHost]


def parse_pool(name: str, data: Any) -> NodePool:
    """One pool's entry → NodePool, or PoolFileError naming the field."""
    try:
        entry = _PoolEntry.model_validate(data if data is not None else {})
    except ValidationError as err:
        errors = err.errors(include_url=False)
        # A host entry failing as a mapping also fails as a plain string: report the mapping's problem.
        problem = next((e for e in errors if "_HostEntry" in e["loc"]), errors[0])
        where = ".".join(str(p) for p in problem["loc"] if not str(p).startswith(("str", "_HostEntry")))
        raise PoolFileError(
            f"pool '{name}': {where or 'entry'}: {problem['msg']} (expected `hosts:` with addresses or "
            "mappings of ip/user/identity_file/password/port/max_clusters)"
        ) from err
    hosts = []
    for item in entry.hosts:
        host = _HostEntry(ip=item) if isinstance(item, str) else item
        hosts.append(
            PoolHost(
                ip=host.ip.strip(),
                port=host.port or entry.port or 22,
                user=host.user or entry.user,
                identity_file=host.identity_file or entry.identity_file,
                password=host.password if host.password is not None else entry.password,
                max_clusters=host.max_clusters or entry.max_clusters or 1,
            )
        )
    keys = [h.key for h in hosts]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise PoolFileError(f"pool '{name}': host {', '.join(duplicates)} is listed twice")
    return NodePool(name=name, hosts=hosts)


def load_pools(home: Path) -> tuple[dict[str, NodePool], dict[str, str]]:
    """The usable pools, and why each unusable one is not (pool name → message).

    Raises PoolFileError when the file itself is missing or unreadable."""
    path = home / POOLS_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise PoolFileError(f"no node pool file at {path}") from err
    except (OSError, yaml.YAMLError) as err:
        raise PoolFileError(f"{path} is not readable YAML: {err}") from err
    if not isinstance(data, dict) or not data:
        raise PoolFileError(f"{path} lists no pools (expected `<pool>: {{hosts: [...]}}`)")
    pools: dict[str, NodePool] = {}
    problems: dict[str, str] = {}
    for name, entry in data.items():
        try:
            pools[str(name)] = parse_pool(str(name), entry)
        except PoolFileError as err:
            problems[str(name)] = str(err)
    return pools, problems
