"""How a phase (setup or run) lives on a node, whatever the transport.

Under the node's tsky directory each phase has: `<phase>.sh` (the user's commands), `<phase>.started/`
(created atomically by the one start that wins), `<phase>.pid` (pid and start time of the wrapper, which
is also its process group), `<phase>.log` (output), `<phase>.exit` (exit code, written when the user
commands end) and `<phase>.stopped` (tsky killed it). A watcher on any worker reads these files to
attach to a phase another worker started; nothing about a running job lives only in a worker's memory.
"""

from __future__ import annotations

import os
import shlex
import signal
from collections.abc import Callable

# Every process of a phase carries this variable, so that processes that left the phase's process
# group (setsid, double fork) can still be found and killed.
PROCESS_TAG_VAR = "TSKY_PROCESS_TAG"

# The exit code of a phase tsky stopped itself (what a shell reports for SIGKILL): a known ending, not a
# process that vanished.
KILLED_EXIT_CODE = 137

# Optional, in the phase directory: `<source>\t<path>` lines (parents first), directories or files
# on the node to bind at absolute paths for the phases' processes only. A node that shares its host
# with other nodes (the local infra) keeps its absolute-path file mounts and buckets this way.
MOUNTS_FILE = "mounts"

# Runs one phase and records its exit code. Arguments: the phase directory, the phase, the working
# directory. The user's commands run in a child bash so that an `exit` in them still reaches the
# line that records the code; stdin is closed, as on a cluster. When the node has a mounts file, the
# wrapper first re-runs itself in a private mount namespace (`unshare`; needs root or CAP_SYS_ADMIN)
# and binds them there: nobody else on the host sees them, and they vanish with the phase's processes.
# A mount point missing on the host is created empty (mkdir/touch): binds need an existing target.
# With a `fuse` file (live bucket mounts, see `tsky/ops/fuse.py`) the wrapper mounts the buckets
# before the user's commands and flushes and unmounts them after, before recording the exit code; it
# takes a private mount namespace for them too when it may, so the mounts die with the phase.
WRAPPER = """\
#!/bin/bash
dir="$1"; phase="$2"; cwd="$3"
# A stop's SIGTERM reaches the whole group: the wrapper lives on until the job has exited (or is killed), so
# the stop waits its grace for the job, and the exit code and fuse flush are still recorded. Caught, not
# ignored: the job's own shell starts with SIGTERM at its default and may trap it.
trap : TERM
# The wrapper records its own pid and start time (unless its starter already did): a starter killed
# right after starting it must not leave a running phase that no watcher can attach to.
own_pid() { local stat; read -r stat </proc/$$/stat; set -- ${stat##*) }; echo "$$ ${20}"; }
[ -e "$dir/$phase.pid" ] || { own_pid >"$dir/$phase.pid.$$" && mv -f "$dir/$phase.pid.$$" "$dir/$phase.pid"; }
record() { echo "$1" >"$dir/$phase.exit.tmp" && mv "$dir/$phase.exit.tmp" "$dir/$phase.exit"; }
private=; [ -s "$dir/mounts" ] && private=1
[ -s "$dir/fuse" ] && [ "$4" != --in-mount-ns ] && unshare --mount --propagation private true 2>/dev/null && private=1
if [ -n "$private" ] && [ "$4" != --in-mount-ns ]; then
  unshare --mount --propagation private bash "$0" "$dir" "$phase" "$cwd" --in-mount-ns 2>>"$dir/$phase.log"
  code=$?
  [ -e "$dir/$phase.exit" ] || record "$code"
  exit "$code"
fi
if [ "$4" = --in-mount-ns ] && [ -s "$dir/mounts" ]; then
  while IFS=$'\\t' read -r src dst; do
    [ -n "$dst" ] || continue
    if [ -d "$src" ]; then mkdir -p "$dst"; else mkdir -p "$(dirname "$dst")" && { [ -e "$dst" ] || : >"$dst"; }; fi &&
      mount --bind "$src" "$dst" || { echo "tsky: cannot mount $src at $dst" >>"$dir/$phase.log"; record 1; exit 1; }
  done <"$dir/mounts"
fi
fuse() { [ ! -s "$dir/fuse" ] || bash "$dir/fuse.sh" "$1" "$dir" "$phase" >>"$dir/$phase.log" 2>&1 </dev/null; }
fuse up || { fuse down; record 1; exit 1; }
mkdir -p "$cwd" && cd "$cwd" || { fuse down; record 1; exit 1; }
bash "$dir/$phase.sh" >>"$dir/$phase.log" 2>&1 </dev/null
code=$?
fuse down
record $code
"""


def env_file_text(env: dict[str, str]) -> str:
    """`export K='v'` lines: the one place user values meet a shell, always quoted."""
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())


def read_proc_file(path: str) -> bytes:
    """A /proc file's bytes with plain system calls: a bulk cancel scans thousands of them, and
    `pathlib`'s file objects cost more than the read (2.5 x for a scan of 2,000 processes)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def proc_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None if it is gone or a zombie.

    Stored next to the pid so a recycled pid is never mistaken for the phase's process."""
    try:
        stat = read_proc_file(f"/proc/{pid}/stat").decode()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def pid_alive(pid: int, start_time: str | None) -> bool:
    current = proc_start_time(pid)
    return current is not None and (start_time is None or current == start_time)


def process_tag(environ: bytes) -> str | None:
    """The `TSKY_PROCESS_TAG` value in a process's NUL-separated environment, if it has one."""
    prefix = f"{PROCESS_TAG_VAR}=".encode()
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


def kill_tagged(matches: Callable[[str], bool]) -> int:
    """SIGKILL every process whose `TSKY_PROCESS_TAG` satisfies `matches`.

    The backstop behind killing process groups: catches processes that daemonised themselves."""
    needle = f"{PROCESS_TAG_VAR}=".encode()
    killed = 0
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = read_proc_file(f"{entry.path}/environ")
        except OSError:
            continue
        if needle not in environ:
            continue
        tag = process_tag(environ)
        if tag is not None and matches(tag):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed
