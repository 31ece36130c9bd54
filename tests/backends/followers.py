"""Which of some processes are tsky's log followers: a node program's `tail --pid=… <phase>.log`, one per
streamed phase (over SSH or a pod exec)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def log_followers(pids: Iterable[int]) -> list[int]:
    found = []
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"tail") and any(a.startswith(b"--pid=") for a in argv) and argv[-2].endswith(b".log"):
            found.append(pid)
    return found
