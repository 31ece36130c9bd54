"""The webhook delivery activity against a real socket on 127.0.0.1: what a Slack webhook and any other
receiver get, and that a failure never puts the (secret) URL in the error that lands in history."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from tsky.activities.orchestration import OrchestrationActivities, webhook_body
from tsky.contract.orchestration import JobEvent, NotifyInput
from tsky.spec.secrets import load_key, seal
from tsky.spec.settings import Settings
from tsky.spec.status import ManagedJobStatus as S

EVENT = JobEvent(
    job_id=3, name="train", status=S.FAILED, previous_status=S.RUNNING, reason="exit code 1", at="2026-01-01T00:00:00",
    links={"web_ui": "http://127.0.0.1:8233/namespaces/default/workflows/tsky-job-3"},
)  # fmt: skip


def test_a_slack_webhook_gets_only_slack_s_text_field() -> None:
    body = json.loads(webhook_body("https://hooks.slack.com/services/T0/B0/xyz", EVENT))
    assert body == {
        "text": "tsky job 3 'train' RUNNING → FAILED: exit code 1 "
        "(<http://127.0.0.1:8233/namespaces/default/workflows/tsky-job-3|Web UI>)"
    }


def test_any_other_receiver_gets_the_whole_event_and_the_same_line() -> None:
    body = json.loads(webhook_body("http://127.0.0.1:9/hook", EVENT))
    assert body["job_id"] == 3 and body["status"] == "FAILED" and body["previous_status"] == "RUNNING"
    assert body["cost_so_far"] is None and body["reason"] == "exit code 1"
    assert body["text"] == "tsky job 3 'train' RUNNING → FAILED: exit code 1"


@pytest.mark.asyncio
async def test_an_unreachable_webhook_fails_the_try_without_naming_the_url(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hooks/secret-token"
    settings = Settings(home=tmp_path)
    sealed = seal({"url": url}, load_key(tmp_path, create=True))["url"]
    activities = OrchestrationActivities(client=None, settings=settings)  # type: ignore[arg-type]
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities.notify_webhook, NotifyInput(sealed_url=sealed, event=EVENT))
    assert "webhook not reached" in str(raised.value)
    assert "secret-token" not in str(raised.value) and str(port) not in str(raised.value)
    assert raised.value.__cause__ is None
