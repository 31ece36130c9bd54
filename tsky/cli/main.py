"""The `tsky` command: a Typer app whose command groups live in sibling modules."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="tsky",
    help="SkyPilot-style managed jobs on Temporal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """tsky: run SkyPilot task YAMLs as durable managed jobs on Temporal."""


def _register() -> None:
    from tsky.cli import clusters, codec, jobs, server, validate
    from tsky.cli.infra import register as register_infra

    validate.register(app)
    jobs.register(app)
    server.register(app)
    clusters.register(app)
    codec.register(app)
    register_infra(app)


_register()


def main() -> None:
    """Entry point; leaves through `exit_process` (see there why)."""
    from tsky.worker.process import exit_process

    code = 0
    try:
        app()  # standalone mode: click prints usage errors itself and raises SystemExit(2)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    exit_process(code)
