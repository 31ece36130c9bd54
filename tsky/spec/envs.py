"""Environment variables and secrets: names, `$VAR` substitution, and the `--env` / `--secret` flags."""

from __future__ import annotations

import os
import re
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tsky.spec.errors import SpecError

ENV_NAME_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
ENV_NAME_RE = re.compile(ENV_NAME_PATTERN)
_DOTENV_LINE_RE = re.compile(r"^\s*(?:export\s+)?([^=\s]+)\s*=\s*(.*)$", re.DOTALL)
_DOTENV_VAR_RE = re.compile(r"\$\{([a-zA-Z_][a-zA-Z0-9_]*)(?::-([^}]*))?\}")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def substitute(value: Any, variables: Mapping[str, str]) -> Any:
    """`$VAR` and `${VAR}` replaced in every string (keys too) of `value`; unknown names are left as is.

    This is SkyPilot's rule for file_mounts, workdir, volumes and service: only the task's own envs and
    inline secrets are substituted, never the caller's environment.
    """
    if not variables:
        return value
    if isinstance(value, str):
        return string.Template(value).safe_substitute(variables)
    if isinstance(value, dict):
        return {substitute(k, variables): substitute(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(item, variables) for item in value]
    return value


def parse_assignments(
    items: Iterable[str], *, flag: str = "--env", environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """`KEY=VALUE` items, and bare `KEY` items whose value comes from the caller's environment."""
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not ENV_NAME_RE.match(key):
            raise SpecError(
                f"{key!r} is not a valid variable name (it must match {ENV_NAME_PATTERN!r}). Use {flag} NAME=value.",
                path=f"{flag} {item}",
            )
        if not sep:
            if key not in env:
                raise SpecError(
                    f"{key} is not set in your environment, so there is no value to pass. "
                    f"Set it, or give the value: {flag} {key}=value.",
                    path=f"{flag} {key}",
                )
            value = env[key]
        out[key] = value
    return out


def _closing(text: str, quote: str) -> int:
    """Index of the quote that closes `text` (which starts with the opening one), or -1."""
    index = 1
    while index < len(text):
        if quote == '"' and text[index] == "\\":
            index += 2
            continue
        if text[index] == quote:
            return index
        index += 1
    return -1


def _unquote(raw: str, path: str, line: int, known: Mapping[str, str]) -> str:
    text = raw.strip()
    quote = text[:1]
    if quote in ("'", '"'):
        end = _closing(text, quote)
        if end < 0:
            raise SpecError(f"Unterminated {quote} quoted value.", file=path, line=line)
        body = text[1:end]
        if quote == "'":
            return body
        body = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), body, flags=re.DOTALL)
        return _expand(body, known)
    text = re.split(r"\s+#", text, maxsplit=1)[0].strip()
    return _expand(text, known)


def _expand(value: str, known: Mapping[str, str]) -> str:
    """dotenv's `${VAR}` / `${VAR:-default}`: earlier entries of the file first, then the environment."""

    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = known.get(name, os.environ.get(name))
        return found if found else (default or "")

    return _DOTENV_VAR_RE.sub(repl, value)


def read_env_file(path: str | Path) -> dict[str, str]:
    """A dotenv file: `KEY=VALUE` lines, `export` allowed, `#` comments, quoted (multi-line) values."""
    name = str(path)
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SpecError(f"Env file not found: {name}. Check the path.", file=name) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"Cannot read env file {name}: {exc}.", file=name) from None
    out: dict[str, str] = {}
    index = 0
    while index < len(lines):
        start = index
        line = lines[index]
        index += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _DOTENV_LINE_RE.match(line)
        if match is None or not ENV_NAME_RE.match(match.group(1)):
            raise SpecError(
                f"Expected KEY=VALUE (KEY matching {ENV_NAME_PATTERN!r}), got {line.strip()!r}.",
                file=name,
                line=start + 1,
            )
        key, raw = match.groups()
        quote = raw.lstrip()[:1]
        # A quoted value may run over several lines, up to its closing quote.
        while quote in ("'", '"') and _closing(raw.lstrip(), quote) < 0 and index < len(lines):
            raw += "\n" + lines[index]
            index += 1
        out[key] = _unquote(raw, name, start + 1, out)
    return out


def collect_overrides(
    values: Iterable[str] | None = None,
    files: Iterable[str | Path] | None = None,
    *,
    flag: str = "--env",
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """`--env`/`--env-file` (or `--secret`/`--secret-file`) as one dict: files in order, flags win."""
    out: dict[str, str] = {}
    for file in files or ():
        out.update(read_env_file(file))
    out.update(parse_assignments(values or (), flag=flag, environ=environ))
    return out


def env_overrides(
    env: Iterable[str] | None = None,
    env_files: Iterable[str | Path] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """What `--env K=V` / `--env K` / `--env-file F` ask for, as `load_pipeline(env_overrides=...)`."""
    return collect_overrides(env, env_files, flag="--env", environ=environ)


def secret_overrides(
    secret: Iterable[str] | None = None,
    secret_files: Iterable[str | Path] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """What `--secret K=V` / `--secret K` / `--secret-file F` ask for, as `secret_overrides=`."""
    return collect_overrides(secret, secret_files, flag="--secret", environ=environ)
