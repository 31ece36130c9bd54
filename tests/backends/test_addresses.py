"""Where the aws and gcp backends reach an instance by default: its public address, else its private one, or
the private one whenever the worker runs in the VPC (`use_internal_ips`). Pure: no SSH, no cloud."""

from __future__ import annotations

import pytest

from tsky.ops.clouds.addresses import CloudInstance, InstanceAddresses, SSHAddress

pytestmark = pytest.mark.asyncio


def instance(public_ip: str, private_ip: str = "10.0.0.7") -> CloudInstance:
    return CloudInstance("aws", "us-east-1", "i-0abc", "c-1", 0, public_ip, private_ip)


async def test_the_default_is_the_instance_s_own_address() -> None:
    outside, inside = InstanceAddresses(use_internal_ips=False), InstanceAddresses(use_internal_ips=True)
    assert await outside.address(instance("203.0.113.9")) == SSHAddress("203.0.113.9", 22)
    assert await outside.address(instance("")) == SSHAddress("10.0.0.7", 22)  # no public address
    assert await inside.address(instance("203.0.113.9")) == SSHAddress("10.0.0.7", 22)
    await outside.released(instance("203.0.113.9"))  # nothing to free
