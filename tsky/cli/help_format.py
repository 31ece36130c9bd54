"""Help pages as click (and so SkyPilot) prints them: plain text, click's names for values and arguments.

Typer's defaults read every help string as Rich markup (so `cloud[/region[/zone]]` crashed `--help`) and
label values with Python type names (`<bool>`, `<list[str]>`, `{entrypoint}`). Typer has no switch for
either, so `plain_help` turns markup off per app and the three methods below are replaced once, when the
CLI loads.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

_CLICK_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": "BOOLEAN", "path": "PATH"}


def _option_value(self: TyperOption, ctx: Any) -> str | None:
    if self.metavar is not None:
        return self.metavar
    label = self.display_type(ctx).strip("<>")  # Typer's `<int>`, `<list[str]>`, `<a|b>`
    if label.startswith("list[") and label.endswith("]"):
        label = label[5:-1]
    return "|".join(_CLICK_NAMES.get(part, part) for part in label.split("|"))


def _no_argument_type(self: TyperArgument, ctx: Any) -> str | None:
    return None  # the argument's name already says what it is


def _argument_name(self: TyperArgument) -> str:
    return self.metavar or (self.name or "").upper()


def _argument_usage(self: TyperArgument) -> str:
    name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
    return name + ("..." if self.nargs != 1 else "")


class JobsFirst(TyperGroup):
    """`tsky --help` lists `jobs` first, where SkyPilot users look (Typer lists single commands first)."""

    def list_commands(self, ctx: Any) -> list[str]:
        return sorted(super().list_commands(ctx), key=lambda name: name != "jobs")


def plain_help(app: typer.Typer) -> None:
    """No markup parsing in any help text of `app` and its sub-apps."""
    app.rich_markup_mode = None
    for group in app.registered_groups:
        if group.typer_instance is not None:
            plain_help(group.typer_instance)


setattr(TyperOption, "display_type_rich", _option_value)  # noqa: B010
setattr(TyperArgument, "display_type_rich", _no_argument_type)  # noqa: B010
setattr(TyperArgument, "display_name_raw", property(_argument_name))  # noqa: B010
setattr(TyperArgument, "_usage_display_name", _argument_usage)  # noqa: B010
