"""Replay every recorded history against the current workflow code: a change to a workflow's sequence of
commands that is not guarded by `workflow.patched` fails here, before it can break a running job."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from tsky.client.connect import DATA_CONVERTER
from tsky.worker.main import workflow_runner
from tsky.workflows import WORKFLOWS

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*/*.json"))


def test_there_are_histories_for_every_workflow() -> None:
    recorded = {path.parent.name for path in HISTORIES}
    registered = {workflow._Definition.must_from_class(cls).name for cls in WORKFLOWS}
    assert registered <= recorded, f"record histories for {registered - recorded} (python -m tests.replay.record)"


@pytest.mark.asyncio
@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_history_replays(path: Path) -> None:
    replayer = Replayer(workflows=WORKFLOWS, data_converter=DATA_CONVERTER, workflow_runner=workflow_runner())
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
