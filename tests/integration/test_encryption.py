"""End-to-end payload encryption: with a key set, the Temporal service holds only ciphertext of a job's
command, env values and secrets; the CLI (which has the key) still shows the job; the codec server
decodes the history for the Web UI, behind its bearer token and CORS."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload

from tests.harness import TSKY, TskyEnv, WorkerProc, free_port, wait_until
from tsky.client.codec import new_key

COMMAND_MARK = "cmd-marker-5c1e"
ENV_MARK = "env-marker-77ab"
SECRET_MARK = "secret-marker-0f9d"

JOB = f"""\
name: sealed-job
envs:
  GREETING: {ENV_MARK}
secrets:
  TOKEN: null
run: |
  echo {COMMAND_MARK} "$GREETING" "${{#TOKEN}}"
"""


def _payloads(message: Message) -> Iterator[Payload]:
    """Every Payload inside a history event (inputs, results, memo, summaries, failures...) except search
    attributes, which are readable by design."""
    if isinstance(message, Payload):
        yield message
        return
    for field, value in message.ListFields():
        if field.message_type is None or field.name == "search_attributes":
            continue
        if field.message_type.GetOptions().map_entry:
            items = [v for v in value.values() if isinstance(v, Message)]
        elif isinstance(value, Message):
            items = [value]
        else:
            items = list(value)
        for item in items:
            yield from _payloads(item)


def _post(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def test_history_is_ciphertext_without_the_key_and_the_codec_server_decodes_it(tsky_env: TskyEnv) -> None:
    key = new_key()
    tsky_env.configure({"temporal": {"encryption_key": key}})
    tsky_env.start_worker()
    job = tsky_env.write("job.yaml", JOB)
    launched = tsky_env.tsky("jobs", "launch", "-y", "--secret", f"TOKEN={SECRET_MARK}", str(job))
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert re.search(rf"{COMMAND_MARK} {ENV_MARK} {len(SECRET_MARK)}", launched.stdout), launched.stdout

    # The CLI has the key: the queue (memo rows) and logs read as usual.
    queue = tsky_env.tsky("jobs", "queue")
    assert re.search(r"^1\s+-\s+sealed-job\s+.*SUCCEEDED", queue.stdout, re.M), queue.stdout + queue.stderr

    # What the Temporal service stores, read without the key.
    async def raw_history() -> list[tuple[str, Payload]]:
        """Every payload, with the name of the marker it is in ("" outside markers)."""
        client = await tsky_env.client()  # the plain converter: no codec
        history = await client.get_workflow_handle("tsky-job-1").fetch_history()
        events = history.events
        return [(event.marker_recorded_event_attributes.marker_name, p) for event in events for p in _payloads(event)]

    payloads = asyncio.run(raw_history())
    assert payloads
    raw = b"".join(p.SerializeToString() for _, p in payloads)
    for mark in (COMMAND_MARK, ENV_MARK, SECRET_MARK):
        assert mark.encode() not in raw
    # Only the SDK's own bookkeeping stays plain: local-activity markers (ids, type names, times) and
    # patch markers (the patch's id).
    plain_ones = [(marker, p) for marker, p in payloads if p.metadata["encoding"] != b"binary/encrypted"]
    assert all(marker in ("core_local_activity", "core_patch") for marker, _ in plain_ones), plain_ones

    # Search attributes stay readable without the key (the Web UI's list, `temporal workflow list`)...
    async def listed_names() -> list[str]:
        client = await tsky_env.client()
        return [w.search_attributes.get("TskyJobName", [""])[0] async for w in client.list_workflows()]

    assert "sealed-job" in asyncio.run(listed_names())
    # Keys rotate: with a new key first and the old one after it, old jobs still read.
    rotated = TskyEnv(home=tsky_env.home.parent / "rotated", server=tsky_env.server, namespace=tsky_env.namespace)
    rotated.configure({"temporal": {"encryption_key": f"{new_key()},{key}"}})
    reread = rotated.tsky("jobs", "queue")
    assert re.search(r"^1\s+-\s+sealed-job\s+.*SUCCEEDED", reread.stdout, re.M), reread.stdout + reread.stderr
    # ...but a tsky CLI without the key says which setting it lacks.
    no_key = TskyEnv(home=tsky_env.home.parent / "no-key", server=tsky_env.server, namespace=tsky_env.namespace)
    no_key.configure()
    refused = no_key.tsky("jobs", "logs", "1", "--no-follow")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "TSKY_ENCRYPTION_KEY" in refused.stderr and "Traceback" not in refused.stderr

    port = free_port()
    server = subprocess.Popen(
        [TSKY, "codec-server", "--port", str(port), "--cors-origin", "http://localhost:8233"],
        env={**tsky_env.environ, "TSKY_CODEC_SERVER_TOKEN": "tok-1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        body = {"payloads": [{"metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
                              "data": base64.b64encode(p.data).decode()} for _, p in payloads]}  # fmt: skip
        ui = {"Content-Type": "application/json", "X-Namespace": tsky_env.namespace, "Origin": "http://localhost:8233"}

        def up() -> bool:
            try:
                return _post(f"{base}/decode", {"payloads": []}, ui)[0] == 401
            except OSError:
                return False

        wait_until(up, timeout=60, what="the codec server")
        status, _, _ = _post(f"{base}/decode", body, ui)
        assert status == 401  # no token

        status, decoded, headers = _post(f"{base}/decode", body, {**ui, "Authorization": "Bearer tok-1"})
        assert status == 200
        assert headers["Access-Control-Allow-Origin"] == "http://localhost:8233"
        plain = b"".join(base64.b64decode(p.get("data", "")) for p in decoded["payloads"])
        assert COMMAND_MARK.encode() in plain and ENV_MARK.encode() in plain
        assert SECRET_MARK.encode() not in plain  # secrets stay sealed inside, as before

        # The namespace-prefixed form the `temporal` CLI sends, and a round trip through /encode.
        status, encoded, _ = _post(
            f"{base}/{tsky_env.namespace}/encode", decoded, {**ui, "Authorization": "Bearer tok-1"}
        )
        assert status == 200 and COMMAND_MARK not in json.dumps(encoded)

        preflight = urllib.request.Request(f"{base}/decode", method="OPTIONS", headers={"Origin": "http://evil.test"})
        with urllib.request.urlopen(preflight, timeout=30) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers
    finally:
        server.terminate()
        server.wait(15)


def test_a_bad_key_is_a_clear_error(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    tsky_env.configure({"temporal": {"encryption_key": "not-a-key"}})
    result = tsky_env.tsky("jobs", "queue")
    assert result.returncode == 2
    assert "TSKY_ENCRYPTION_KEY" in result.stderr and "tsky codec keygen" in result.stderr
    assert "Traceback" not in result.stderr
