"""The `tsky` command: a Typer app whose command groups live in sibling modules."""

from __future__ import annotations

from typing import Annotated

import typer

from tsky import __version__
from tsky.cli.help_format import JobsFirst, plain_help

app = typer.Typer(
    name="tsky",
    cls=JobsFirst,
    help="SkyPilot-style managed jobs on Temporal.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # `-h` as in SkyPilot; click hands these names down to every sub-command's context.
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"tsky, version {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
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
    plain_help(app)


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
