"""`tsky validate`: offline check of task / pipeline / pool YAMLs (owned by the spec work)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from tsky.spec.envs import env_overrides, secret_overrides
from tsky.spec.errors import SpecError
from tsky.spec.loader import load_pipeline, load_pool


def _check(path: str, envs: dict[str, str], secrets: dict[str, str]) -> tuple[str, list[str]]:
    """The summary of one valid file, and its warnings; raises SpecError when it is not valid."""
    pipeline = load_pipeline(path, env_overrides=envs, secret_overrides=secrets)
    notes: list[str] = []
    if len(pipeline.tasks) == 1 and pipeline.tasks[0].pool is not None:
        spec, _ = load_pool(path, env_overrides=envs, secret_overrides=secrets, warnings=notes)
        return f"pool, {spec.describe().lower()}", notes
    ignored = sorted({field for task in pipeline.tasks for field in task.ignored_fields()})
    if ignored:
        notes.append(f"accepted but not acted on by tsky yet: {', '.join(ignored)}")
    count = len(pipeline.tasks)
    return f"{count} task{'s' if count != 1 else ''}", notes


def register(app: typer.Typer) -> None:
    @app.command()
    def validate(
        files: list[Path] = typer.Argument(..., metavar="FILE", help="Task, pipeline or pool YAML files."),
        env: list[str] = typer.Option(
            [], "--env", metavar="KEY[=VALUE]", help="KEY=VALUE, or KEY to take its value from your environment."
        ),
        env_file: list[Path] = typer.Option(
            [], "--env-file", metavar="FILE", help="A dotenv file of environment variables."
        ),
        secret: list[str] = typer.Option(
            [], "--secret", metavar="KEY[=VALUE]", help="KEY=VALUE, or KEY to take it from your environment."
        ),
        secret_file: list[Path] = typer.Option([], "--secret-file", metavar="FILE", help="A dotenv file of secrets."),
    ) -> None:
        """Check task, pipeline and pool YAML files without starting anything.

        Prints one line per file and exits 0 only if every file is valid, else 2.
        """
        out = Console(highlight=False, soft_wrap=True)
        try:
            envs = env_overrides(env, env_file)
            secrets = secret_overrides(secret, secret_file)
        except SpecError as exc:
            out.print(f"[red]error[/]  {escape(str(exc))}")
            raise typer.Exit(2) from None
        failed = False
        for file in files:
            name = str(file)
            try:
                summary, notes = _check(name, envs, secrets)
            except (SpecError, OSError) as exc:
                failed = True
                out.print(f"[red]error[/]  {escape(str(exc) if isinstance(exc, SpecError) else f'{name}: {exc}')}")
                continue
            out.print(f"[green]ok[/]  {escape(name)}  ({summary})")
            for note in notes:
                out.print(f"    [yellow]note:[/] {escape(note)}")
        if failed:
            raise typer.Exit(2)
