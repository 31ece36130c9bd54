"""What one workflow run costs the worker before it does anything: the sandbox that the worker builds for
each run (and keeps while the workflow is cached) re-imports the workflow's module and whatever it does
not pass through. Prints, per workflow type, the modules each run re-executes, the memory each instance
keeps and the CPU to build one.

`python -m bench.workflow_sandbox [count]`: no server, no network; the worker's own sandbox runner
(tsky.worker.main.workflow_runner) builds `count` instances (default 40) of each workflow.
"""

from __future__ import annotations

import asyncio
import gc
import importlib._bootstrap_external as bootstrap_external
import sys
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import temporalio.converter
import temporalio.workflow
from temporalio.api.common.v1.message_pb2 import Payloads
from temporalio.api.failure.v1.message_pb2 import Failure
from temporalio.worker._workflow_instance import WorkflowInstanceDetails, WorkflowRunner
from temporalio.worker.workflow_sandbox._runner import _fake_info

from tsky.worker.main import workflow_runner
from tsky.workflows import WORKFLOWS


def _details(defn: temporalio.workflow._Definition) -> WorkflowInstanceDetails:
    """What the worker hands the runner for a new run (the SDK's own placeholder info, as its
    start-up validation uses)."""
    converter = temporalio.converter.DataConverter.default
    return WorkflowInstanceDetails(
        payload_converter_factory=converter._new_payload_converter,
        failure_converter_class=converter.failure_converter_class,
        interceptor_classes=[],
        defn=defn,
        info=_fake_info,
        randomness_seed=-1,
        extern_functions={},
        disable_eager_activity_execution=False,
        worker_level_failure_exception_types=[],
        patch_activation_callback=None,
        last_completion_result=Payloads(),
        last_failure=Failure(),
    )


@contextmanager
def _executed_modules() -> Iterator[list[str]]:
    """The names of the modules executed meanwhile (a sandbox's re-imports)."""
    names: list[str] = []
    original = bootstrap_external._LoaderBasics.exec_module

    def spy(self: Any, module: ModuleType) -> None:
        names.append(module.__name__)
        original(self, module)

    bootstrap_external._LoaderBasics.exec_module = spy  # type: ignore[method-assign]
    try:
        yield names
    finally:
        bootstrap_external._LoaderBasics.exec_module = original  # type: ignore[method-assign]


def reexecuted_modules(runner: WorkflowRunner, cls: type) -> list[str]:
    """tsky's modules that each new run of workflow `cls` executes again in its sandbox (call it inside
    an event loop: the runner binds the instance to the running loop)."""
    defn = temporalio.workflow._Definition.must_from_class(cls)
    runner.create_instance(_details(defn))  # the host imports what is passed through, once
    with _executed_modules() as names:
        runner.create_instance(_details(defn))
    return [n for n in names if n.startswith("tsky")]


async def main(count: int) -> None:
    runner = workflow_runner()
    print(f"{'workflow':<16} {'KB kept':>8} {'ms CPU':>7}  modules re-executed per run")
    for cls in WORKFLOWS:
        defn = temporalio.workflow._Definition.must_from_class(cls)
        tsky_names = reexecuted_modules(runner, cls)
        gc.collect()
        tracemalloc.start()
        start = time.process_time()
        kept = [runner.create_instance(_details(defn)) for _ in range(count)]
        cpu = (time.process_time() - start) / count
        gc.collect()
        memory, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del kept
        print(f"{defn.name:<16} {memory / count / 1024:>8.0f} {cpu * 1000:>7.1f}  {', '.join(tsky_names)}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 40))
