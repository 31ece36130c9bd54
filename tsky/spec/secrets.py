"""Sealing task secrets so they never appear in clear in Temporal history, the Web UI or logs.

The CLI seals each secret value with a key shared by the CLI and the workers (`TSKY_SECRET_KEY`, or
`$TSKY_HOME/secret.key`, created on first use with mode 0600); only the activity that writes a node's
environment unseals it. Workers on other hosts need the same key (set `TSKY_SECRET_KEY` everywhere).
"""

from __future__ import annotations

import os
from pathlib import Path

SEALED_PREFIX = "tsky-sealed:v1:"


class SecretKeyError(Exception):
    """The sealing key is missing or does not open a sealed value."""


def load_key(home: Path, *, create: bool) -> bytes:
    env_key = os.environ.get("TSKY_SECRET_KEY")
    if env_key:
        return env_key.encode()
    path = home / "secret.key"
    if path.exists():
        return path.read_bytes().strip()
    if not create:
        raise SecretKeyError(
            f"No secret key: set TSKY_SECRET_KEY or copy {path} from the machine that launched the job."
        )
    from cryptography.fernet import Fernet

    home.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def seal(values: dict[str, str], key: bytes) -> dict[str, str]:
    from cryptography.fernet import Fernet

    fernet = Fernet(key)
    return {name: SEALED_PREFIX + fernet.encrypt(value.encode()).decode() for name, value in values.items()}


def unseal(sealed: dict[str, str], key: bytes) -> dict[str, str]:
    from cryptography.fernet import Fernet, InvalidToken

    fernet = Fernet(key)
    try:
        return {
            name: fernet.decrypt(token.removeprefix(SEALED_PREFIX).encode()).decode() for name, token in sealed.items()
        }
    except InvalidToken as err:
        raise SecretKeyError(
            "The secret key does not open this job's secrets: give every worker the launching "
            "machine's key (TSKY_SECRET_KEY)."
        ) from err
