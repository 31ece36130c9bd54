"""The remote codec endpoint for the Temporal Web UI and `temporal` CLI: with it, people who hold the key
read encrypted jobs in the UI; the Temporal service itself never sees the key.

Temporal's codec-server contract: `POST /encode` and `POST /decode` (also under a namespace prefix,
`/{namespace}/decode`, as the `temporal` CLI's `--codec-endpoint` templating sends), body and answer both
`{"payloads": [...]}` in proto3 JSON (every bytes field base64). The Web UI calls it from the browser, so
the UI's origin must be allowed by CORS (preflight included). An optional bearer token, configured with
`TSKY_CODEC_SERVER_TOKEN` (never on a command line), guards it; the UI passes one with "pass the user's
access token". Standard library only: the codec is CPU work and the traffic is a person clicking.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from tsky.client.codec import CodecKeyError, EncryptionCodec

_MAX_BODY = 64 * 1024 * 1024


def make_server(
    host: str, port: int, codec: EncryptionCodec, *, origins: Sequence[str], token: str | None
) -> ThreadingHTTPServer:
    allowed = {o.rstrip("/") for o in origins}

    class Handler(BaseHTTPRequestHandler):
        server_version = "tsky-codec-server"

        def log_message(self, format: str, *args: object) -> None:
            pass  # request lines hold nothing useful, and nothing of the payloads is ever logged

        def _cors(self) -> None:
            origin = (self.headers.get("Origin") or "").rstrip("/")
            if origin and ("*" in allowed or origin in allowed):
                self.send_header("Access-Control-Allow-Origin", origin)
                self.send_header("Access-Control-Allow-Credentials", "true")
                self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
                self.send_header("Access-Control-Allow-Headers", "Content-Type, X-Namespace, Authorization")
                self.send_header("Vary", "Origin")

        def _reply(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self._cors()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_OPTIONS(self) -> None:
            self.send_response(204)
            self._cors()
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            operation = self.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
            if operation not in ("encode", "decode"):
                self._reply(404, {"message": "unknown path: POST /encode or /decode"})
                return
            if token and not hmac.compare_digest(self.headers.get("Authorization", ""), f"Bearer {token}"):
                self._reply(401, {"message": "missing or wrong bearer token"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > _MAX_BODY:
                self._reply(413, {"message": "body too large"})
                return
            try:
                payloads = json_format.Parse(self.rfile.read(length), Payloads()).payloads
            except (json_format.ParseError, UnicodeDecodeError) as err:
                self._reply(400, {"message": f"body is not {{'payloads': [...]}} in proto3 JSON: {err}"})
                return
            try:
                run = codec.encode if operation == "encode" else codec.decode
                result = asyncio.run(run(payloads))
            except CodecKeyError as err:
                self._reply(400, {"message": str(err)})
                return
            self._reply(200, json_format.MessageToDict(Payloads(payloads=result)))

        def do_GET(self) -> None:
            self._reply(405, {"message": "use POST"})

    return ThreadingHTTPServer((host, port), Handler)
