"""What each workflow run re-imports in its sandbox: only its own module (and the packages above it).

The worker builds a sandbox for every workflow run and keeps it while the workflow is cached; whatever
the run imports without passing it through is executed again for that run. A workflow module that
imports a helper as `from tsky.workflows import helper` (instead of `import tsky.workflows.helper as
helper`) makes every job carry its own copy: `python -m bench.workflow_sandbox` prints the cost.
"""

from __future__ import annotations

import pytest

from bench.workflow_sandbox import reexecuted_modules
from tsky.worker.main import workflow_runner
from tsky.workflows import WORKFLOWS

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("cls", WORKFLOWS, ids=lambda cls: cls.__name__)
async def test_a_run_re_imports_only_its_own_workflow_module(cls: type) -> None:
    assert reexecuted_modules(workflow_runner(), cls) == ["tsky", "tsky.workflows", cls.__module__]
