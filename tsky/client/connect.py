"""The one factory for Temporal clients: worker, CLI, tests and replayer all connect through it, so every
client has the same data converter (pydantic, plus the encryption codec when a key is configured) and the same
connection settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from temporalio.client import Client, TLSConfig
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from tsky.client.codec import codec_for
from tsky.spec.settings import Settings

DATA_CONVERTER = pydantic_data_converter


class _EncryptedFailureConverter(DefaultFailureConverter):
    """Error messages and stack traces travel as a payload too, so the codec encrypts them."""

    def __init__(self) -> None:
        super().__init__(encode_common_attributes=True)


def data_converter(settings: Settings) -> DataConverter:
    """The pydantic converter, encrypting every payload (and error text) when an encryption key is configured.
    Without a key the codec only explains, if it meets an encrypted payload, which setting is missing."""
    codec = codec_for(settings)
    if not codec.encrypts:
        return dataclasses.replace(DATA_CONVERTER, payload_codec=codec)
    return dataclasses.replace(DATA_CONVERTER, payload_codec=codec, failure_converter_class=_EncryptedFailureConverter)


class ConnectError(Exception):
    """The Temporal service cannot be reached; the message says where tsky looked and what to do."""


def target_address(settings: Settings) -> str:
    """The gRPC address: the configured cluster, or the embedded dev server's remembered port."""
    if settings.temporal.address:
        return settings.temporal.address
    from tsky.client.embedded import read_server_state

    state = read_server_state(settings)
    if state is None:
        raise ConnectError("The embedded Temporal server is not running: start it with `tsky server up`.")
    return f"127.0.0.1:{state.port}"


def _tls(settings: Settings) -> TLSConfig | bool:
    t = settings.temporal
    if not (t.tls or t.tls_cert or t.tls_ca):
        return False
    return TLSConfig(
        server_root_ca_cert=Path(t.tls_ca).read_bytes() if t.tls_ca else None,
        client_cert=Path(t.tls_cert).read_bytes() if t.tls_cert else None,
        client_private_key=Path(t.tls_key).read_bytes() if t.tls_key else None,
    )


async def connect(settings: Settings, *, metrics_port: int | None = None) -> Client:
    """A Temporal client for tsky: its namespace, TLS and API key, and the pydantic data converter
    (with the payload codec when an encryption key is configured). Every tsky process connects here.

    Args:
        settings: The settings (`tsky.spec.settings.load_settings()`); with the embedded default, the
            running dev server's port is read from `$TSKY_HOME`.
        metrics_port: Serve the SDK's Prometheus metrics on this port (workers only).

    Returns:
        The connected client.

    Raises:
        ConnectError: Temporal cannot be reached; the message says where tsky looked and what to do.
    """
    address = target_address(settings)
    converter = data_converter(settings)  # a bad key is a settings error, reported before any connection
    runtime = None
    if metrics_port:
        bind = f"{settings.worker.metrics_address}:{metrics_port}"
        runtime = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=bind)))
    try:
        return await Client.connect(
            address,
            namespace=settings.temporal.namespace,
            data_converter=converter,
            tls=_tls(settings),
            api_key=settings.temporal.api_key,
            runtime=runtime,
        )
    except RuntimeError as err:
        where = "the embedded server" if settings.embedded else "TSKY_TEMPORAL_ADDRESS / temporal.address"
        raise ConnectError(
            f"Cannot reach Temporal at {address} ({where}): {err}. "
            + ("Run `tsky server up`." if settings.embedded else "Check the address, TLS and API-key settings.")
        ) from err
