"""`tsky validate`: offline check of task / pipeline / pool YAMLs (owned by the spec work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def validate(files: list[str]) -> None:
        """Check task, pipeline and pool YAML files without starting anything."""
        raise typer.Exit(2)
