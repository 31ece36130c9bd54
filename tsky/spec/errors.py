"""One exception for every spec mistake, and the translation of pydantic's errors into it.

A `SpecError` reads as one paragraph: where (file, line and column when known, the YAML path of the
field), what is wrong, and what would be right. The models raise `FieldError`s (plain `ValueError`s
that remember a path below the field being validated); the loader turns the resulting pydantic
`ValidationError` into a `SpecError` with `from_validation_error`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

PathPart = str | int
Path = tuple[PathPart, ...]

# Renames a string-similarity match would miss: old or intuitive spellings of a field.
_RENAMES: dict[str, tuple[str, ...]] = {
    "spot_recovery": ("job_recovery",),
    "gpu": ("gpus", "accelerators"),
    "accelerator": ("accelerators", "gpus"),
    "env": ("envs",),
    "environment": ("envs",),
    "secret": ("secrets",),
    "command": ("run",),
    "cmd": ("run",),
    "nodes": ("num_nodes",),
    "image": ("image_id",),
    "spot": ("use_spot",),
    "recovery": ("job_recovery",),
    "max_restarts": ("max_restarts_on_errors",),
    "replicas": ("workers",),
}


class SpecError(ValueError):
    """A task, pipeline or pool spec that cannot be accepted. `str()` is the whole message."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        path: str | None = None,
        line: int | None = None,
        column: int | None = None,
        task: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.path = path
        self.line = line
        self.column = column
        self.task = task
        super().__init__(self._render())

    def _render(self) -> str:
        where = self.file or ""
        if self.line is not None and self.file:
            where += f":{self.line}" + (f":{self.column}" if self.column is not None else "")
        elif self.line is not None:
            where = f"line {self.line}" + (f", column {self.column}" if self.column is not None else "")
        parts = [p for p in (where, self.task, self.path) if p]
        return ": ".join([*parts, self.message]) if parts else self.message

    def located(
        self,
        *,
        file: str | None = None,
        task: str | None = None,
        path_prefix: str | None = None,
    ) -> SpecError:
        """The same error with the context its raiser did not know (the file, which task)."""
        path = self.path
        if path_prefix:
            path = f"{path_prefix}.{path}" if path else path_prefix
        return SpecError(
            self.message,
            file=self.file or file,
            path=path,
            line=self.line,
            column=self.column,
            task=self.task or task,
        )


class FieldError(ValueError):
    """Raised inside model validators: `path` is relative to the value being validated."""

    def __init__(self, message: str, path: Path = ()) -> None:
        self.message = message
        self.path = path
        super().__init__(message)


def format_path(path: Sequence[PathPart]) -> str:
    """`('resources', 'any_of', 0, 'cpus')` -> `resources.any_of[0].cpus`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def suggest(key: str, candidates: Iterable[str]) -> list[str]:
    """Near-miss suggestions for an unknown key, best first."""
    choices = list(candidates)
    known = [c for c in _RENAMES.get(key.lower(), ()) if c in choices]
    close = difflib.get_close_matches(key.lower(), choices, n=2, cutoff=0.75)
    return list(dict.fromkeys([*known, *close]))


def unknown_field_message(key: str, candidates: Iterable[str], what: str) -> str:
    choices = sorted(c for c in candidates if not c.startswith("_"))
    hits = suggest(key, choices)
    if hits:
        alternatives = " or ".join(f"'{h}'" for h in hits)
        return f"Invalid {what} YAML: Instead of '{key}', did you mean {alternatives}?"
    return f"Invalid {what} YAML: Found unsupported field '{key}'. Supported fields: {', '.join(choices)}."


# pydantic error type -> the JSON-schema type name SkyPilot's messages use, and what a right value is.
_TYPE_NAMES: dict[str, tuple[str, str]] = {
    "int_type": ("integer", "a whole number, e.g. 2"),
    "int_parsing": ("integer", "a whole number, e.g. 2"),
    "int_from_float": ("integer", "a whole number, e.g. 2"),
    "float_type": ("number", "a number, e.g. 1.5"),
    "float_parsing": ("number", "a number, e.g. 1.5"),
    "bool_type": ("boolean", "true or false"),
    "bool_parsing": ("boolean", "true or false"),
    "string_type": ("string", "a string (quote it, or use `|` for a multi-line script)"),
    "dict_type": ("object", "a mapping of `key: value` entries"),
    "model_type": ("object", "a mapping of `key: value` entries"),
    "model_attributes_type": ("object", "a mapping of `key: value` entries"),
    "list_type": ("array", "a list, e.g. [a, b]"),
}


def _describe(error: Mapping[str, Any], candidates: Callable[[Path], tuple[list[str], str]]) -> str:
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    loc = error["_path"]
    if kind == "value_error" and isinstance(ctx.get("error"), ValueError):
        exc = ctx["error"]
        return exc.message if isinstance(exc, FieldError) else str(exc)
    if kind == "extra_forbidden":
        names, what = candidates(loc[:-1])
        return unknown_field_message(str(loc[-1]), names, what)
    if kind == "missing":
        return f"'{loc[-1]}' is a required property."
    if kind == "invalid_key":
        return f"Keys must be strings; got {value!r}. Quote the key."
    if kind in _TYPE_NAMES:
        name, right = _TYPE_NAMES[kind]
        return f"{value!r} is not of type '{name}'. Expected {right}."
    if kind == "greater_than_equal":
        return f"{value!r} is less than the minimum of {ctx.get('ge')}."
    if kind == "greater_than":
        return f"{value!r} is less than or equal to the minimum of {ctx.get('gt')}."
    if kind == "less_than_equal":
        return f"{value!r} is greater than the maximum of {ctx.get('le')}."
    if kind == "literal_error":
        return f"{value!r} is not one of {ctx.get('expected')}."
    return f"{error['msg']} (got {value!r})."


def error_path(error: Mapping[str, Any]) -> Path:
    """pydantic's loc minus union tags (`#...`), plus the sub-path a FieldError carries."""
    loc: Path = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("#")))
    exc = (error.get("ctx") or {}).get("error")
    if isinstance(exc, FieldError):
        loc += exc.path
    return loc


def from_validation_error(
    exc: ValidationError,
    *,
    candidates: Callable[[Path], tuple[list[str], str]],
    locate: Callable[[Path], tuple[int, int] | None] | None = None,
    file: str | None = None,
    task: str | None = None,
) -> SpecError:
    """The first of pydantic's errors as a SpecError.

    `candidates(path)` names the fields allowed at `path` and the kind of section it is, for the
    did-you-mean; `locate(path)` gives the (line, column) of a path in the YAML, if known.
    """
    error = dict(exc.errors(include_url=False)[0])
    loc = error_path(error)
    error["_path"] = loc
    message = _describe(error, candidates)
    position = locate(loc) if locate else None
    return SpecError(
        message,
        file=file,
        path=format_path(loc) or None,
        line=position[0] if position else None,
        column=position[1] if position else None,
        task=task,
    )
