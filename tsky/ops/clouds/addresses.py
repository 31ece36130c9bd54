"""Where the aws and gcp backends reach an instance over SSH: the address resolver.

By default an instance is reached at its public address, or at its private one with `use_internal_ips`
(the worker runs in the VPC) or when it has no public one, on port 22. Where the worker sees instances
some other way (a NAT or port forward, an overlay network such as Tailscale, an inventory mapping instance
ids to DNS names), `aws.ssh_address_resolver` / `gcp.ssh_address_resolver` names a factory,
`package.module:callable` importable by the worker, that takes the `Settings` and returns an
`AddressResolver`. The tests and `bench/scale.py --infra aws` use this to reach loopback sshd nodes that
stand in for the instances.

A resolver is asked once per instance, when its cluster is provisioned (again for the same instance when
a provision is retried: it must give the same answer); the answer goes into the cluster's record
(`NodeInfo`), so every worker reaches the node the same way without asking again. It is told when tsky
deletes the instance (at teardown, possibly more than once), so an address it handed out can be reused.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

from tsky.ops.clouds.base import PrecheckError
from tsky.spec.settings import Settings


@dataclass(frozen=True)
class CloudInstance:
    """What a resolver is told about an instance."""

    backend: str  # "aws" or "gcp"
    place: str  # the EC2 region or the GCE zone
    instance_id: str  # EC2 instance id, GCE instance name
    cluster: str
    rank: int
    public_ip: str  # "" when it has none
    private_ip: str


@dataclass(frozen=True)
class SSHAddress:
    host: str
    port: int = 22


class AddressResolver(Protocol):
    async def address(self, instance: CloudInstance) -> SSHAddress:
        """Where to reach the (running) instance over SSH."""

    async def released(self, instance: CloudInstance) -> None:
        """The instance is being deleted (idempotent)."""


@dataclass(frozen=True)
class InstanceAddresses:
    """The default: the instance's own address."""

    use_internal_ips: bool

    async def address(self, instance: CloudInstance) -> SSHAddress:
        return SSHAddress(
            instance.private_ip if self.use_internal_ips or not instance.public_ip else instance.public_ip
        )

    async def released(self, instance: CloudInstance) -> None:
        return None


def address_resolver(settings: Settings, field: str, factory: str | None, use_internal_ips: bool) -> AddressResolver:
    """The resolver the setting `field` names (`package.module:callable`), else `InstanceAddresses`."""
    if not factory:
        return InstanceAddresses(use_internal_ips)
    module, _, name = factory.partition(":")
    try:
        make = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise PrecheckError(
            f"{field}: cannot load {factory!r} ({err}); give a `package.module:callable` the worker can import"
        ) from err
    resolver: AddressResolver = make(settings)
    return resolver
