"""Secrets end to end: `--secret` and YAML `secrets:` reach `run` (unsealed by the watcher on the worker),
and no clear value is anywhere else: the workflow history (payloads decoded), memo, search attributes,
the Web UI's HTTP API, the controller log, the job log, the worker's log, the CLI's output."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import TSKY, DevServer, TskyEnv, wait_until, world_on
from tests.integration.test_jobs_cli import queue_json, wait_status
from tsky.contract.ids import job_workflow_id
from tsky.spec.secrets import SEALED_PREFIX

pytestmark = pytest.mark.integration


@pytest.fixture
def ui_env(tmp_path: Path) -> Iterator[TskyEnv]:
    """A world with its own dev server that also serves the Web UI (and its HTTP API) on 127.0.0.1."""
    server = DevServer(web_ui=True)
    server.start()
    with world_on(server, tmp_path) as env:
        yield env


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def test_secrets_reach_run_and_nothing_else(ui_env: TskyEnv) -> None:
    env = ui_env
    from_cli, from_yaml = f"cli-{uuid.uuid4().hex}", f"yaml-{uuid.uuid4().hex}"
    secrets = (from_cli, from_yaml)
    env.start_worker()
    job = env.write(
        "secret.yaml",
        f"""\
name: secretive
secrets:
  API_TOKEN: {from_yaml}
  DB_PASSWORD: placeholder
run: |
  echo "db $(printf %s "$DB_PASSWORD" | sha256sum | cut -c1-64)"
  echo "api $(printf %s "$API_TOKEN" | sha256sum | cut -c1-64)"
""",
    )
    # `--secret NAME` takes the value from the CLI's environment: never on a command line.
    launch = subprocess.run(
        [TSKY, "jobs", "launch", "-y", "--secret", "DB_PASSWORD", str(job)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**env.environ, "DB_PASSWORD": from_cli},
        cwd=env.home,
    )
    cli_output = launch.stdout + launch.stderr
    assert launch.returncode == 0, cli_output
    wait_status(env, 1, "SUCCEEDED")

    # `run` saw both values: the watcher unsealed them into its environment.
    run_log = env.home / "logs" / "jobs" / "1" / "task-0" / "attempt-0" / "run.log"
    text = run_log.read_text()
    assert f"db {sha(from_cli)}" in text and f"api {sha(from_yaml)}" in text, text

    # Nowhere else in clear.
    found = asyncio.run(_temporal_views(env))
    found["web ui api"] = _web_ui_views(env)
    found["cli output"] = cli_output
    for path in env.home.rglob("*"):
        if path.is_file() and path != job:  # the user's own YAML holds the value, of course
            found[str(path.relative_to(env.home))] = path.read_bytes().decode(errors="replace")
    assert any("controller.log" in where for where in found) and any("run.log" in where for where in found)
    assert any(where.startswith("logs/worker-") for where in found)
    # The scans did read the job's request: its secrets are there, sealed.
    assert SEALED_PREFIX in found["history"] and SEALED_PREFIX in found["web ui api"]
    leaks = [where for where, blob in found.items() for secret in secrets if secret in blob]
    assert leaks == [], leaks


async def _temporal_views(env: TskyEnv) -> dict[str, str]:
    """The job's history, memo and search attributes over gRPC: every payload's bytes, decoded."""
    client = await env.client()
    handle = client.get_workflow_handle(job_workflow_id(1))
    history = await handle.fetch_history()
    description = await handle.describe()
    payloads = []
    for event in history.events:
        payloads.append(event.SerializeToString().decode(errors="replace"))  # payload data is raw JSON in it
    memo = await description.memo()
    return {
        "history": "\n".join(payloads),
        "memo": json.dumps(memo, default=str),
        "search attributes": json.dumps({k.name: v for k, v in description.typed_search_attributes}, default=str),
        "description": description.raw_description.SerializeToString().decode(errors="replace"),
    }


def _web_ui_views(env: TskyEnv) -> str:
    """What the Web UI shows, from its HTTP API: the job's description, its history and the workflow list,
    with every base64 payload decoded."""
    base = f"http://127.0.0.1:{env.server.ui_port}/api/v1/namespaces/{env.namespace}/workflows"
    wid = job_workflow_id(1)
    texts = []
    for url in (f"{base}/{wid}", f"{base}/{wid}/history", base):
        body = wait_until(lambda url=url: _get(url), 30, 0.5, f"the Web UI's {url}")
        texts.append(body)
        texts += _decoded_payloads(json.loads(body))
    assert any(wid in t for t in texts)
    return "\n".join(texts)


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # 127.0.0.1 only
            return response.read().decode()
    except OSError:
        return None


def _decoded_payloads(node: Any) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        data = node.get("data")
        if isinstance(data, str):
            with contextlib.suppress(ValueError):
                out.append(base64.b64decode(data).decode(errors="replace"))
        for value in node.values():
            out += _decoded_payloads(value)
    elif isinstance(node, list):
        for value in node:
            out += _decoded_payloads(value)
    return out


def test_a_worker_without_the_launching_key_fails_the_job_clearly(tsky_env: TskyEnv) -> None:
    from cryptography.fernet import Fernet

    tsky_env.start_worker({"TSKY_SECRET_KEY": Fernet.generate_key().decode()})  # not $TSKY_HOME/secret.key
    job = tsky_env.write("secret.yaml", "name: locked\nsecrets:\n  TOKEN: s3cr3t-value\nrun: echo never\n")
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(job)).returncode == 0
    wait_status(tsky_env, 1, "FAILED_PRECHECKS", "FAILED", "FAILED_SETUP", "FAILED_CONTROLLER", timeout=120)
    [row] = queue_json(tsky_env)
    assert row["status"] == "FAILED_PRECHECKS", row
    assert "TSKY_SECRET_KEY" in str(row), row
    assert "never" not in tsky_env.tsky("jobs", "logs", "1", "--no-follow").stdout
