"""The pod exec websocket on the event loop (aiohttp): how a pod streams a phase's log to its watcher.

The official client's exec (`pod_exec`) blocks a thread for as long as its command runs: fine for tsky's
short commands, not for a log stream that lives as long as the phase (1,000 watched pods would hold
1,000 threads). So a stream opens the exec websocket itself, from the same `kubernetes.client.Configuration`
the backend uses: the API server's URL (`host`, with any path prefix), the `authorization` header of
`auth_settings()` (which refreshes an expiring token), the CA (`ssl_ca_cert`), the client certificate and
key, `verify_ssl` / `assert_hostname` / `tls_server_name`, and its HTTP proxy unless `no_proxy` covers the
host. Reading those may block (a token refresh can run a credential plugin; CA and key are files), so
`exec_request` runs on the client's thread pool for a moment; the stream itself holds no thread.

Protocol `v4.channel.k8s.io`: each binary frame starts with one byte naming its channel (1 stdout,
2 stderr, 3 the exit status as a Status object). The stream asks for stdin and never writes to it: the
follower ends when its stdin ends, so closing the socket ends the remote follower. Keepalive pings end
a stream whose API server stopped answering, so its watcher re-attaches instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import ssl
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import yarl
from kubernetes import client
from requests.utils import should_bypass_proxies

from tsky.ops.clouds.base import FollowUnsupported
from tsky.ops.clouds.node_programs import FOLLOW_UNSUPPORTED, RemoteCommandError
from tsky.ops.clouds.ssh_runner import NodeUnreachable

PROTOCOL = "v4.channel.k8s.io"
OPEN_TIMEOUT = 60.0  # seconds to connect and upgrade
HEARTBEAT_SECONDS = 20.0  # a ping after this long without a frame; no pong within half of it ends the stream
_STDOUT, _STDERR, _STATUS = 1, 2, 3

# Streams being closed: a task must be referenced until it ends.
_closing: set[asyncio.Task[None]] = set()


def exit_code(status: bytes, where: str) -> int:
    """The exit code from the Status object the API server sends on the exec error channel."""
    if not status:
        raise NodeUnreachable(f"{where}: exec ended without a status (connection lost)")
    try:
        parsed = json.loads(status)
    except ValueError as err:
        raise NodeUnreachable(f"{where}: unreadable exec status {status[:200]!r}") from err
    if parsed.get("status") == "Success":
        return 0
    for cause in (parsed.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message", "1"))
    raise RemoteCommandError(f"{where}: exec failed: {parsed.get('message') or parsed}")


@dataclass(frozen=True)
class ExecRequest:
    """Everything needed to open one exec websocket, read from the client configuration."""

    url: yarl.URL
    headers: dict[str, str]
    tls: ssl.SSLContext | bool  # True: no TLS to set up (plain http)
    server_hostname: str | None
    proxy: str | None
    proxy_headers: dict[str, str] | None


@functools.lru_cache(maxsize=16)
def _ssl_context(
    ca_file: str | None, ca_data: str | None, cert_file: str | None, key_file: str | None, verify: bool, hostname: bool
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file, cadata=ca_data)  # the system's CAs when none is given
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif not hostname:
        context.check_hostname = False
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


def exec_request(cfg: client.Configuration, namespace: str, pod: str, container: str, argv: list[str]) -> ExecRequest:
    """The exec of `argv` in `pod`'s `container` with stdin open, as `cfg` reaches the API server. Blocking."""
    query = [("command", arg) for arg in argv]
    query += [("container", container), ("stdin", "true"), ("stdout", "true"), ("stderr", "true"), ("tty", "false")]
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}/exec"
    # Encoded here, not by yarl: a `+` in a command must reach the API server as %2B, not as a space.
    url = yarl.URL(f"{cfg.host.rstrip('/')}{path}?{urlencode(query)}", encoded=True)
    auth = cast(dict[str, dict[str, Any]], cfg.auth_settings())  # {"BearerToken": {"in": "header", ...}}
    headers = {s["key"]: str(s["value"]) for s in auth.values() if s.get("in") == "header" and s.get("value")}
    tls: ssl.SSLContext | bool = True
    if url.scheme == "https":
        tls = _ssl_context(
            cfg.ssl_ca_cert,
            getattr(cfg, "ca_cert_data", None),
            cfg.cert_file,
            cfg.key_file,
            bool(cfg.verify_ssl),
            cfg.assert_hostname is not False,
        )
    proxy = cfg.proxy if cfg.proxy and not should_bypass_proxies(cfg.host, getattr(cfg, "no_proxy", None)) else None
    if proxy and urlsplit(proxy).scheme not in ("http", "https"):
        raise FollowUnsupported(f"exec streams cannot go through the proxy {proxy} (only HTTP proxies)")
    proxy_headers = dict(cfg.proxy_headers) if proxy and cfg.proxy_headers else None
    return ExecRequest(url, headers, tls, cfg.tls_server_name or None, proxy, proxy_headers)


async def follow(request: ExecRequest, where: str) -> PodLogStream:
    """Open the exec websocket of `request` and stream its stdout (`LogStream`); NodeUnreachable if it cannot."""
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=OPEN_TIMEOUT))
    try:
        async with asyncio.timeout(OPEN_TIMEOUT):  # the handshake; the stream itself may be silent for hours
            ws = await session.ws_connect(
                request.url,
                protocols=(PROTOCOL,),
                headers=request.headers,
                ssl=request.tls,
                server_hostname=request.server_hostname,
                proxy=request.proxy,
                proxy_headers=request.proxy_headers,
                heartbeat=HEARTBEAT_SECONDS,
                autoclose=True,
            )
    except BaseException as err:
        await session.close()
        if isinstance(err, aiohttp.ClientError | OSError | TimeoutError):
            raise NodeUnreachable(f"{where}: cannot open a log stream: {str(err) or type(err).__name__}") from err
        raise
    return PodLogStream(where, session, ws)


class PodLogStream:
    """A phase's log streamed over one exec websocket: stdout as it comes, then the end from the exit status."""

    def __init__(self, where: str, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self.where = where
        self.session = session
        self.ws = ws
        self.status = bytearray()
        self.stderr = b""
        self.closed = False

    async def read(self) -> bytes:
        while True:
            msg = await self.ws.receive()
            if msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                frame = msg.data if isinstance(msg.data, bytes) else str(msg.data).encode()
                channel, data = frame[0] if frame else None, frame[1:]
                if channel == _STDOUT and data:
                    return data
                if channel == _STATUS:
                    self.status += data
                elif channel == _STDERR:
                    self.stderr = (self.stderr + data)[-2000:]
            elif msg.type == aiohttp.WSMsgType.ERROR:
                raise NodeUnreachable(f"{self.where}: log stream broke: {self.ws.exception() or 'error'}")
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                return self._ended()

    def _ended(self) -> bytes:
        """b"" when the follower ended as it should (the phase's process ended); else why not."""
        try:
            code = exit_code(bytes(self.status), self.where)
        except RemoteCommandError as err:
            raise NodeUnreachable(str(err)) from err
        if code == 0:
            return b""
        if code == FOLLOW_UNSUPPORTED:
            raise FollowUnsupported(f"{self.where}: cannot follow a log here (needs GNU tail --pid)")
        said = self.stderr.decode(errors="replace").strip()
        raise NodeUnreachable(f"{self.where}: log stream ended early (status {code}){': ' + said if said else ''}")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            task = asyncio.ensure_future(self._close())
            _closing.add(task)
            task.add_done_callback(_closing.discard)

    async def _close(self) -> None:
        # The close frame ends the follower's stdin on the node, which ends the follower.
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            await self.ws.close()
        await self.session.close()
