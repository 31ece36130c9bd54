"""The engine's bare throughput: a workflow that runs one no-op activity, on its own worker process.

The benchmarks run it on the same server as the jobs, so a job's cost can be read as a ratio to it.
`python -m bench.trivial <address> <namespace>` runs the worker.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

QUEUE = "bench-trivial"


@activity.defn
async def noop(x: int) -> int:
    return x


@workflow.defn
class Trivial:
    @workflow.run
    async def run(self, x: int) -> int:
        return await workflow.execute_activity(noop, x, start_to_close_timeout=timedelta(seconds=30))


async def measure(client: Client, n: int, concurrency: int = 50) -> float:
    """Run `n` trivial workflows, `concurrency` at a time; workflows per second, start to result."""
    semaphore = asyncio.Semaphore(concurrency)
    tag = uuid.uuid4().hex[:8]

    async def one(i: int) -> None:
        async with semaphore:
            await client.execute_workflow(Trivial.run, i, id=f"trivial-{tag}-{i}", task_queue=QUEUE)

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.monotonic() - started)


async def _serve(address: str, namespace: str) -> None:
    client = await Client.connect(address, namespace=namespace)
    async with Worker(client, task_queue=QUEUE, workflows=[Trivial], activities=[noop]):
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1], sys.argv[2]))
