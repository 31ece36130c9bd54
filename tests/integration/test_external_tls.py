"""An external Temporal behind mutual TLS: the CLI and the worker both connect with the temporal.tls_*
settings (one client factory), and a client without a certificate gets a clear error.

The dev server speaks plain gRPC, so a TLS-terminating proxy on 127.0.0.1 stands in front of it and
demands a client certificate signed by the test's own CA."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.harness import TskyEnv, free_port, wait_until
from tests.integration.test_jobs_cli import wait_status

pytestmark = pytest.mark.integration


def _issue(name: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
           *, ca: bool = False) -> x509.Certificate:  # fmt: skip
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def write_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    files: dict[str, Path] = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("tsky test CA", ca_key, None, ca=True)
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(f"tsky test {role}", key, (ca.subject, ca_key))
        files[f"{role}_cert"] = directory / f"{role}.pem"
        files[f"{role}_key"] = directory / f"{role}.key"
        files[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{role}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    files["ca"] = directory / "ca.pem"
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return files


class TlsProxy:
    """Terminates mutual TLS on 127.0.0.1:<port> and pipes the bytes to the plain dev server."""

    def __init__(self, pki: dict[str, Path], upstream: str) -> None:
        self.port = free_port()
        self.host, self.upstream_port = upstream.rsplit(":", 1)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"]))
        self.context.load_cert_chain(pki["server_cert"], pki["server_key"])
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.set_alpn_protocols(["h2"])
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, int(self.upstream_port))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", self.port, ssl=self.context)
        )
        self.ready.set()
        self.loop.run_forever()
        server.close()
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    def start(self) -> None:
        self.thread.start()
        self.ready.wait(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def proxy(tsky_env: TskyEnv, tmp_path: Path) -> Iterator[tuple[TlsProxy, dict[str, Path]]]:
    pki = write_pki(tmp_path)
    tls = TlsProxy(pki, tsky_env.server.address)
    tls.start()
    yield tls, pki
    tls.stop()


def test_cli_and_worker_use_the_tls_settings(tsky_env: TskyEnv, proxy: tuple[TlsProxy, dict[str, Path]]) -> None:
    tls, pki = proxy
    temporal = {"address": tls.address, "tls_ca": str(pki["ca"])}
    tsky_env.configure({"temporal": temporal})
    refused = tsky_env.tsky("jobs", "queue")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"Cannot reach Temporal at {tls.address}" in refused.stderr
    assert "Traceback" not in refused.stderr

    tsky_env.configure(
        {"temporal": {**temporal, "tls_cert": str(pki["client_cert"]), "tls_key": str(pki["client_key"])}}
    )
    worker = tsky_env.start_worker()
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", "echo over tls").returncode == 0
    wait_status(tsky_env, 1, "SUCCEEDED", timeout=120)
    status = wait_until(
        lambda: (out := tsky_env.tsky("server", "status").stdout) and f"{worker.pid}@" in out and out, 30, 1
    )
    assert f"uses the Temporal service at {tls.address}" in status
