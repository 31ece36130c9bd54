"""Replay every recorded history against the current workflow code: a change to a workflow's sequence of
commands that is not guarded by `workflow.patched` fails here, before it can break a running job.

`histories/manifest.yaml` lists, per workflow type, the paths that must keep replaying and the histories
that cover them; these tests keep it honest in both directions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from tests.replay.examples import child_workflow_example
from tsky.client.connect import DATA_CONVERTER
from tsky.worker.main import workflow_runner
from tsky.workflows import WORKFLOWS

ROOT = Path(__file__).parent / "histories"
MANIFEST: dict[str, list[dict[str, Any]]] = yaml.safe_load((ROOT / "manifest.yaml").read_text())
HISTORIES = sorted(ROOT.glob("*/*.json"))
RECORD = "record one with `python -m tests.replay.record` and list it in tests/replay/histories/manifest.yaml"


def type_name(cls: type) -> str:
    name = workflow._Definition.must_from_class(cls).name
    assert name is not None, f"{cls.__name__} is a dynamic workflow"
    return name


def user_workflows() -> list[type]:
    return [child_workflow_example().TrainThenEval]


def test_every_registered_workflow_type_has_histories_in_the_manifest() -> None:
    registered = {type_name(cls) for cls in WORKFLOWS}
    missing = sorted(registered - MANIFEST.keys())
    assert not missing, f"tsky's worker registers {missing}, which have no history: {RECORD}"
    known = registered | {type_name(cls) for cls in user_workflows()}
    stale = sorted(MANIFEST.keys() - known)
    assert not stale, f"the manifest lists workflow types no code defines any more: {stale}"


def test_every_path_in_the_manifest_has_histories_that_exist() -> None:
    problems = []
    for workflow_type, paths in MANIFEST.items():
        if not paths:
            problems.append(f"{workflow_type}: no path listed")
        for entry in paths:
            files = entry.get("histories") or []
            if not files:
                problems.append(f"{workflow_type}: '{entry['path']}' has no history")
            problems += [
                f"{workflow_type}: '{entry['path']}' lists {name}, which is not in {workflow_type}/"
                for name in files
                if not (ROOT / workflow_type / name).is_file()
            ]
    assert not problems, "\n".join(problems) + f"\n({RECORD})"


def test_every_history_file_is_listed_in_the_manifest() -> None:
    listed = {(t, name) for t, paths in MANIFEST.items() for entry in paths for name in entry.get("histories") or []}
    unlisted = [f"{p.parent.name}/{p.name}" for p in HISTORIES if (p.parent.name, p.name) not in listed]
    assert not unlisted, f"say which path these histories cover in manifest.yaml: {unlisted}"


@pytest.mark.asyncio
@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_history_replays(path: Path) -> None:
    replayer = Replayer(
        workflows=[*WORKFLOWS, *user_workflows()], data_converter=DATA_CONVERTER, workflow_runner=workflow_runner()
    )
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    started = history.events[0].workflow_execution_started_event_attributes
    assert started.workflow_type.name == path.parent.name, f"{path.name} is a {started.workflow_type.name} history"
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.parent.name}/{path.name}: {result.replay_failure}"
