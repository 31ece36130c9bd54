"""`tsky codec keygen` and `tsky codec-server`: end-to-end payload encryption (see tsky.client.codec)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from tsky.cli.common import console, err_console, fail, settings, ui_base
from tsky.spec.settings import Settings

codec_app = typer.Typer(help="End-to-end encryption of Temporal payloads.", no_args_is_help=True)


@codec_app.command()
def keygen() -> None:
    """Print a new encryption key: set it as TSKY_ENCRYPTION_KEY on every worker and CLI."""
    from tsky.client.codec import new_key

    console.out(new_key(), highlight=False)


def codec_server(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8081,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            help="The Web UI's origin (e.g. http://localhost:8233); repeat for several. "
            "Default: temporal.ui_url, or the embedded server's UI.",
        ),
    ] = None,
) -> None:
    """Serve the remote codec endpoint (POST /encode, /decode) for the Temporal Web UI and CLI.

    Needs the encryption key(s), like any tsky client. Set TSKY_CODEC_SERVER_TOKEN to require
    `Authorization: Bearer <token>`."""
    from tsky.client.codec import codec_for
    from tsky.spec.settings import SettingsError
    from tsky.worker.codec_server import make_server

    s = settings()
    try:
        codec = codec_for(s)
    except SettingsError as err:
        fail(str(err))
    if not codec.encrypts:
        fail(
            "tsky codec-server needs the encryption key: set TSKY_ENCRYPTION_KEY (or temporal.encryption_key_file) "
            "to the key your workers use."
        )
    origins = list(cors_origin or []) or _default_origins(s)
    try:
        server = make_server(host, port, codec, origins=origins, token=os.environ.get("TSKY_CODEC_SERVER_TOKEN"))
    except OSError as err:
        fail(f"Cannot listen on {host}:{port} ({err.strerror}): choose another --port or --host.")
    bound = server.server_address[1]
    err_console.print(f"Codec server on http://{host}:{bound} (CORS: {', '.join(origins) or 'none'})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _default_origins(s: Settings) -> list[str]:
    """The Web UI's origin, under both names a browser may use for loopback."""
    from urllib.parse import urlsplit

    url = ui_base(s)
    if not url:
        return []
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    return sorted({origin, origin.replace("127.0.0.1", "localhost"), origin.replace("localhost", "127.0.0.1")})


def register(app: typer.Typer) -> None:
    app.add_typer(codec_app, name="codec")
    app.command("codec-server")(codec_server)
