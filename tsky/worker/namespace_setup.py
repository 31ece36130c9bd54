"""`python -m tsky.worker.namespace_setup`: make a Temporal service ready for tsky.

The namespace (TSKY_TEMPORAL_NAMESPACE / temporal.namespace) exists, with a retention for closed jobs,
and tsky's search attributes (tsky.contract.search_attributes, the one list) are registered on it. It waits
for the service to answer, changes only what is missing, and waits until the attributes are visible, so
it can run on every start: docker-compose's `temporal-init` service runs it before any worker starts,
and it is the one step to run by hand against any other Temporal service. Connection settings (address,
TLS, API key) are the CLI's and the workers'.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

from google.protobuf.duration_pb2 import Duration
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from tsky.contract import search_attributes
from tsky.spec.settings import Settings, SettingsError, load_settings

logger = logging.getLogger("tsky.setup")


async def connect_when_up(settings: Settings, timeout: float) -> Client:
    from tsky.client.connect import ConnectError, connect

    deadline = time.monotonic() + timeout
    while True:
        try:
            return await connect(settings)
        except ConnectError as err:
            if time.monotonic() > deadline:
                raise
            logger.info("waiting for Temporal: %s", err)
            await asyncio.sleep(2)


async def ensure_namespace(client: Client, namespace: str, retention_days: float) -> bool:
    """Register `namespace` unless it exists; True if it was created now."""
    try:
        await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=namespace))
        return False
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
    retention = Duration(seconds=int(retention_days * 86400))
    try:
        await client.workflow_service.register_namespace(
            RegisterNamespaceRequest(namespace=namespace, workflow_execution_retention_period=retention)
        )
    except RPCError as err:
        if err.status != RPCStatusCode.ALREADY_EXISTS:  # another init won the race
            raise
    return True


async def missing_attributes(client: Client, namespace: str) -> dict[str, IndexedValueType.ValueType]:
    listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    have = set(listed.custom_attributes) | set(listed.system_attributes)
    wanted = {key.name: IndexedValueType.ValueType(key.indexed_value_type.value) for key in search_attributes.ALL}
    return {name: kind for name, kind in wanted.items() if name not in have}


async def ensure_search_attributes(client: Client, namespace: str, timeout: float = 120) -> list[str]:
    """Register tsky's search attributes that are missing, then wait until all are listed (a workflow
    that upserts an attribute the server does not know yet is stuck). Returns the names added."""
    missing = await missing_attributes(client, namespace)
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    deadline = time.monotonic() + timeout
    while await missing_attributes(client, namespace):
        if time.monotonic() > deadline:
            raise RuntimeError(f"search attributes still missing after {timeout:.0f}s")
        await asyncio.sleep(1)
    return sorted(missing)


async def setup(settings: Settings, retention_days: float, timeout: float) -> None:
    client = await connect_when_up(settings, timeout)
    namespace = settings.temporal.namespace
    created = await ensure_namespace(client, namespace, retention_days)
    if created:
        # A new namespace takes a moment to reach every frontend; the next call retries until it has.
        await asyncio.sleep(2)
    added: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            added = await ensure_search_attributes(client, namespace)
            break
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)
    print(
        f"namespace {namespace}: {'created' if created else 'exists'}; "
        f"search attributes: {', '.join(added) + ' added' if added else 'all registered'}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--retention-days", type=float, default=30, help="how long closed jobs stay listed")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the service")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
    except SettingsError as err:
        sys.exit(str(err))
    if settings.embedded:
        sys.exit("Set TSKY_TEMPORAL_ADDRESS (or temporal.address): the embedded server is set up by `tsky server up`.")
    from tsky.client.connect import ConnectError
    from tsky.worker.process import exit_process

    code = 0
    try:
        asyncio.run(setup(settings, args.retention_days, args.timeout))
    except (ConnectError, RPCError, RuntimeError) as err:
        print(f"tsky namespace set-up failed: {err}", file=sys.stderr)
        code = 1
    exit_process(code)


if __name__ == "__main__":
    main()
