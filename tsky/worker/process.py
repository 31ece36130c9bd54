"""What a worker process sets up for itself before it polls: an identity that carries its limits (so
`tsky server status` can show what each running worker uses, on any host), room for one open file per
watched job, and bytecode for the workflow modules."""

from __future__ import annotations

import compileall
import logging
import os
import resource
import socket
import sys
from pathlib import Path

from tsky.spec.settings import Settings

logger = logging.getLogger("tsky.worker")

_MARK = "tsky-worker"


def worker_identity(settings: Settings) -> str:
    """`<pid>@<host> tsky-worker launch=<n> watch=<n> cache=<n>`: the identity every poll carries, so the
    task queue's pollers list the live workers with their limits."""
    c = settings.jobs.controller
    return (
        f"{os.getpid()}@{socket.gethostname()} {_MARK} "
        f"launch={settings.launch_concurrency()} watch={c.watch_concurrency} cache={c.max_cached_workflows}"
    )


def parse_identity(identity: str) -> tuple[str, dict[str, int]] | None:
    """(`pid@host`, limits) from a tsky worker's identity; None for other pollers."""
    parts = identity.split()
    if len(parts) < 2 or parts[1] != _MARK:
        return None
    limits: dict[str, int] = {}
    for part in parts[2:]:
        key, _, value = part.partition("=")
        if value.isdigit():
            limits[key] = int(value)
    return parts[0], limits


def raise_open_files_limit() -> None:
    """Every watched job keeps its log open: lift the soft limit (often 1,024) to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as err:
            logger.info("open-files limit stays at %d: %s", soft, err)


def compile_workflow_modules() -> None:
    """The sandbox re-imports the workflow modules for every workflow run. Without a `.pyc` beside them
    (an editable install, PYTHONDONTWRITEBYTECODE=1) each re-import compiles the source again: tens of
    milliseconds of worker CPU per job started or replayed. A regular `pip install` writes the bytecode
    already; this covers the other cases, once per worker start."""
    import tsky.workflows

    package = Path(tsky.workflows.__file__).parent
    try:
        # Writes only what is missing or stale; a read-only install is left as it is.
        compileall.compile_dir(package, quiet=2, maxlevels=0)
    except OSError as err:
        logger.info("workflow modules not precompiled (%s): the sandbox compiles them per run", err)


def exit_process(code: int) -> None:
    """Flush and leave at once. A process that used the Temporal client can abort while the interpreter
    shuts down (sdk-python#300), which would turn a clean exit into a crash."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
