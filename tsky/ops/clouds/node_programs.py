"""tsky's programs that run on a remote node (bash, over SSH or a pod exec): the remote form of the
on-node phase layout that `phases.py` describes and the local backend implements natively.

Each program takes the node's tsky directory first (a relative one is taken from the login home) and
needs only bash, coreutils, tar, setsid and grep: what any Linux image has. Transports (`ssh_runner`,
`kubernetes`) run them with positional arguments and, where noted, a tar stream on stdin.
"""

from __future__ import annotations

import io
import re
import tarfile
import time

from tsky.ops.clouds.base import PhaseStatus, TransientError
from tsky.ops.clouds.phases import KILLED_EXIT_CODE

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # env names that may appear in an `export` line


class RemoteCommandError(TransientError):
    """One of tsky's own remote programs failed on the node; the message has its stderr."""


# The node's directory from the first argument. A job started before node state was keyed by rank and
# host (`ssh_runner.cluster_node`) has its phase files directly in its cluster's directory: while the
# node's own directory does not exist and the cluster's holds a wrapper, it stays there.
NODE_DIR = r"""
d=$1; case $d in /*) ;; *) d=$HOME/$d ;; esac
case $d in */.tsky/clusters/*/*) [ -d "$d" ] || [ ! -e "${d%/*}/wrapper.sh" ] || d=${d%/*} ;; esac
"""

PRELUDE = (
    NODE_DIR
    + r"""
set +m
# alive PID START: true when PID runs and (if known) started at START, so a recycled pid never counts
alive() {
  local stat rest
  [ -n "$1" ] && read -r stat 2>/dev/null </proc/$1/stat || return 1
  rest=${stat##*) }; set -- "$2" $rest
  [ "$2" != Z ] && [ "$2" != X ] && { [ -z "$1" ] || [ "${21}" = "$1" ]; }
}
# kill_tagged GREP-ARGS...: SIGKILL every process whose environment matches (daemonised strays)
kill_tagged() {
  local f q
  for f in $(grep -lzsF "$@" /proc/[0-9]*/environ 2>/dev/null); do
    q=${f#/proc/}; q=${q%/environ}
    [ "$q" = "$$" ] || kill -KILL "$q" 2>/dev/null
  done
}
"""
)

# args: dir phase cwd; stdin: a tar of <phase>.sh, <phase>.env, wrapper.sh. Prints the wrapper's pid.
START = (
    PRELUDE
    + r"""
p=$2; cwd=$3
mask=$(umask); umask 077  # the env file may hold secrets; the job itself gets the usual umask back
mkdir -p "$d" || exit 3
if mkdir "$d/$p.started" 2>/dev/null; then
  if ! tar -x -o -f - -C "$d"; then rm -rf "$d/$p.started"; exit 4; fi
  sid=$(command -v setsid) && sh=$(command -v bash) || exit 5  # found before the job's env may change PATH
  (
    umask "$mask"
    . "$d/$p.env" || exit 1
    exec "$sid" "$sh" "$d/wrapper.sh" "$d" "$p" "$cwd" </dev/null >/dev/null 2>&1
  ) &
  pid=$!
  read -r stat </proc/$pid/stat; rest=${stat##*) }; set -- $rest
  echo "$pid ${20}" >"$d/$p.pid.tmp" && mv -f "$d/$p.pid.tmp" "$d/$p.pid"
else
  cat >/dev/null
  i=0; while [ ! -s "$d/$p.pid" ] && [ $i -lt 300 ]; do sleep 0.05; i=$((i + 1)); done
fi
read -r pid rest <"$d/$p.pid" && echo "$pid"
"""
)

# args: dir phase. Prints "none", or "started PID|- ALIVE CODE|- LOGSIZE STOPPED".
STATUS = (
    PRELUDE
    + r"""
p=$2
[ -d "$d/$p.started" ] || { echo none; exit 0; }
pid=; st=; code=; size=0; a=0; s=0
[ -f "$d/$p.pid" ] && read -r pid st <"$d/$p.pid"
[ -f "$d/$p.exit" ] && read -r code <"$d/$p.exit"
[ -f "$d/$p.log" ] && size=$(wc -c <"$d/$p.log")
alive "$pid" "$st" && a=1
[ -e "$d/$p.stopped" ] && s=1
echo "started ${pid:--} $a ${code:--} $size $s"
"""
)

# args: dir phase offset limit. Prints up to LIMIT bytes of the log from OFFSET.
READ_LOG = (
    NODE_DIR
    + r"""
[ -f "$d/$2.log" ] || exit 0
tail -c +$(($3 + 1)) "$d/$2.log" | head -c "$4"
"""
)

# args: dir phase offset. Streams the phase's log from OFFSET as it grows, for as long as the phase's
# process lives; ends (status 0) once it has exited and its log is read to the end, or at once when it
# is not running. Status 2: this node cannot follow (no GNU tail). The watcher closing the channel, or
# its connection dropping, ends stdin, which ends the follow: no stray tail per re-attach.
FOLLOW = (
    PRELUDE
    + r"""
p=$2
tail --pid=$$ -c 0 /dev/null 2>/dev/null || exit 2
pid=; st=
[ -f "$d/$p.pid" ] && read -r pid st <"$d/$p.pid"
alive "$pid" "$st" || exit 0
tail --pid="$pid" -s 1 -c +$(($3 + 1)) -F "$d/$p.log" 2>/dev/null &
t=$!
exec 3<&0  # a background job's stdin is /dev/null unless given explicitly
{ cat <&3; kill "$t"; } >/dev/null 2>&1 &
w=$!
wait "$t"; code=$?
kill "$w" 2>/dev/null
exit "$code"
"""
)
FOLLOW_UNSUPPORTED = 2  # FOLLOW's exit status on a node whose tail cannot follow a pid (no GNU tail)

# args: dir phase tag grace. Kills the phase's process group (TERM, then KILL after GRACE s) and strays.
STOP = (
    PRELUDE
    + r"""
p=$2; tag=$3; grace=$4
pid=; st=
[ -f "$d/$p.pid" ] && read -r pid st <"$d/$p.pid"
if alive "$pid" "$st"; then
  : >"$d/$p.stopped"
  kill -TERM -- "-$pid" 2>/dev/null
  end=$((SECONDS + grace))
  while alive "$pid" "$st" && [ $SECONDS -lt $end ]; do sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null
fi
kill_tagged -x "TSKY_PROCESS_TAG=$tag:$p"
"""
)

# args: dir tag-prefix grace [paths to remove...]. Stops every phase of the node (TERM, then KILL), kills
# every process whose tag starts with the prefix, then removes the cluster directory and the given paths.
TERMINATE = (
    PRELUDE
    + r"""
tag=$2; grace=$3; shift 3
pids=
if [ -d "$d" ]; then
  for f in "$d"/*.pid; do
    [ -f "$f" ] || continue
    read -r pid st <"$f"
    if alive "$pid" "$st"; then kill -TERM -- "-$pid" 2>/dev/null; pids="$pids $pid:$st"; fi
  done
fi
end=$((SECONDS + grace))
while [ -n "$pids" ] && [ $SECONDS -lt $end ]; do
  left=
  for x in $pids; do alive "${x%%:*}" "${x#*:}" && left="$left $x"; done
  pids=$left; [ -n "$pids" ] && sleep 0.1
done
for x in $pids; do kill -KILL -- "-${x%%:*}" 2>/dev/null; done
kill_tagged "TSKY_PROCESS_TAG=$tag"
cd "$HOME" && rm -rf -- "$d" "$@"
"""
)

# args: dir; stdin: a tar of files to put in the directory (mode 0600).
PUT = (
    PRELUDE
    + r"""
umask 077
mkdir -p "$d" && tar -x -o -f - -C "$d"
"""
)


def tar_files(files: dict[str, bytes], mode: int = 0o600) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def remote_path(dest: str) -> str:
    """Relative and `~/` paths are taken from the login home (what SFTP and rsync do with them)."""
    if dest == "~":
        return "."
    return dest[2:] if dest.startswith("~/") else dest


def parse_status(text: str) -> PhaseStatus:
    fields = text.split()
    if not fields or fields[0] == "none":
        return PhaseStatus(started=False)
    if fields[0] != "started" or len(fields) != 6:
        raise RemoteCommandError(f"unexpected phase status {text!r}")
    _, pid, alive, code, size, stopped = fields
    exit_code = int(code) if code.lstrip("-").isdigit() else None
    is_alive = alive == "1" and exit_code is None
    if not is_alive and exit_code is None and stopped == "1":
        exit_code = KILLED_EXIT_CODE  # tsky stopped it: a known ending, not a vanished process
    return PhaseStatus(
        started=True,
        pid=int(pid) if pid.isdigit() else None,
        alive=is_alive,
        exit_code=exit_code,
        log_size=int(size),
    )
