"""Users' own workflows whose histories are replayed too: examples/child_workflow.py, which uses the
child-job helpers (tsky.client.child). Its commands are part of every such user's history."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from tests.harness import EXAMPLES


def child_workflow_example() -> ModuleType:
    """The example as a module importable by name, so the workflow sandbox can re-import it."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module("child_workflow")
