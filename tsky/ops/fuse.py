"""Live bucket mounts (MOUNT, MOUNT_CACHED of an s3 or gcs bucket): `rclone mount` on the node.

One client for every store and every infra: rclone speaks S3 (and every S3-compatible store) and GCS,
is packaged by Debian, Ubuntu and Fedora, and mounts with FUSE as an unprivileged user. The node gets
three files in its tsky directory, written the way the backend ships every secret (`put_files`, mode
0600, never a command line): `rclone.conf` (the remotes, with the worker's credentials, or `env_auth`
when the worker has none so the VM's own identity is used), `fuse` (one line per mount) and `fuse.sh`.

The phase wrapper (`clouds/phases.py`) runs `fuse.sh up` before the user's commands of every phase (setup
and run) and `fuse.sh down` after them, before it records the exit code, so a phase is reported ended
only once its writes are in the bucket. Where the wrapper can, the phase has a private mount namespace
(the local infra; any node where tsky runs as root): the mount exists for the phase's processes only and
vanishes with them, whatever kills them. Elsewhere a stopped phase's rclone gets SIGTERM with the rest
of the phase's process group, which makes it unmount.

- MOUNT: `--vfs-cache-mode minimal`: writes stream to the bucket and `close()` returns once the object
  is stored (write-through); reads come from the bucket. As with goofys, files are written whole, in
  one go (no appends, no seeks while writing).
- MOUNT_CACHED: `--vfs-cache-mode full --vfs-write-back 0s`: reads and writes go to a cache on the
  node's disk (any access pattern) and `close()` returns at once; the upload starts as soon as the file
  is closed, in the background, retried by rclone with back-off until it succeeds (a file changed again
  meanwhile is uploaded again). `fuse.sh down` waits until nothing is left to upload (at most
  `FLUSH_SECONDS`) before unmounting. A preemption loses the files still being uploaded: those closed
  in the last seconds before it (upload time), and whatever was not yet closed.

Directory listings are cached for 5 s, so a listing shows other writers' files within seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

from tsky.ops.clouds.base import NodeAgent, PrecheckError
from tsky.ops.storage import gcs_endpoint, s3_endpoint
from tsky.spec.settings import Settings
from tsky.spec.storage import BucketURL

FLUSH_SECONDS = 600  # how long a MOUNT_CACHED phase waits at its end for its uploads
CHECK_SECONDS = 900.0  # the trial mount at sync time, which may first install rclone on the node

# args: up|down DIR PHASE. `fuse` lines: MODE <tab> bucket URL <tab> rclone remote <tab> plain-http 0|1
# <tab> mount path. Every failure prints one `tsky: cannot mount URL at PATH: why` line and exits 1.
FUSE_SCRIPT = r"""
act=$1; d=$2; p=$3
conf=$d/rclone.conf
fail() { echo "tsky: cannot mount $url at $dst: $1"; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
rclone_() {
  if [ "$plain" = 1 ]; then env -u AWS_CA_BUNDLE rclone --config "$conf" "$@"; else rclone --config "$conf" "$@"; fi
}
tidy='s/^[0-9/]* [0-9:]* //; s/^[A-Z]* *: [^:]*: //; s/^error listing: //'  # rclone's log prefixes
unmount() { fusermount3 -u "$1" 2>/dev/null || fusermount -u "$1" 2>/dev/null || umount "$1" 2>/dev/null; }
install_rclone() {
  command -v rclone >/dev/null && return 0
  if command -v apt-get >/dev/null; then
    as_root apt-get install -y -q rclone fuse3 >/dev/null 2>&1 ||
      { as_root apt-get update -q >/dev/null 2>&1 && as_root apt-get install -y -q rclone fuse3 >/dev/null 2>&1; }
  elif command -v dnf >/dev/null; then
    as_root dnf install -y -q rclone fuse3 >/dev/null 2>&1
  fi
  command -v rclone >/dev/null || { curl -fsSL https://rclone.org/install.sh | as_root bash >/dev/null 2>&1; }
  command -v rclone >/dev/null
}

if [ "$act" = up ]; then
  n=0
  while IFS=$'\t' read -r mode url remote plain dst; do
    [ -n "$dst" ] || continue
    n=$((n + 1))
    install_rclone || fail "rclone is not installed and could not be installed"
    [ -e /dev/fuse ] || fail "this node has no FUSE (/dev/fuse is missing)"
    command -v fusermount3 >/dev/null || command -v fusermount >/dev/null || [ "$(id -u)" = 0 ] ||
      fail "fusermount is missing (install fuse3)"
    mountpoint -q "$dst" 2>/dev/null && unmount "$dst"  # left by a killed rclone
    mkdir -p "$dst" 2>/dev/null || { as_root mkdir -p "$dst" && as_root chown "$(id -u):$(id -g)" "$dst"; } ||
      fail "cannot create the mount point"
    bucket=${remote%%/*}
    if ! err=$(rclone_ lsf --max-depth 1 "$bucket" 2>&1 >/dev/null); then
      case $err in
        *"directory not found"*|*NoSuchBucket*|*notFound*) fail "the bucket does not exist" ;;
        *) fail "the bucket cannot be read: $(printf '%s\n' "$err" | head -n 1 | sed -e "$tidy" | cut -c1-300)" ;;
      esac
    fi
    log=$d/$p.rclone-$n.log
    if [ "$mode" = MOUNT_CACHED ]; then
      cache=$d/$p.vfs-$n
      flags="--vfs-cache-mode full --vfs-write-back 0s --cache-dir $cache"
    else
      cache=-
      flags="--vfs-cache-mode minimal"
    fi
    # shellcheck disable=SC2086
    rclone_ mount "$remote" "$dst" $flags --dir-cache-time 5s --log-file "$log" --log-level NOTICE </dev/null &
    pid=$!
    i=0
    until mountpoint -q "$dst" 2>/dev/null; do
      kill -0 "$pid" 2>/dev/null || fail "rclone mount failed: $(tail -n 1 "$log" 2>/dev/null | cut -c1-300)"
      i=$((i + 1)); [ $i -lt 300 ] || { kill "$pid"; fail "rclone mount did not come up in 30 s"; }
      sleep 0.1
    done
    printf '%s\t%s\t%s\t%s\n' "$pid" "$mode" "$cache" "$dst" >>"$d/$p.fuse-mounted"
  done <"$d/fuse"
  exit 0
fi

# down: flush the write-back caches, then unmount, newest mount first
[ -f "$d/$p.fuse-mounted" ] || exit 0
tac "$d/$p.fuse-mounted" | while IFS=$'\t' read -r pid mode cache dst; do
  if [ "$mode" = MOUNT_CACHED ]; then
    end=$((SECONDS + FLUSH_SECONDS))
    while grep -rqs '"Dirty": *true' "$cache/vfsMeta" && [ $SECONDS -lt $end ]; do sleep 0.5; done
    grep -rqs '"Dirty": *true' "$cache/vfsMeta" &&
      echo "tsky: some files written under $dst were not uploaded within FLUSH_SECONDS s"
  fi
  unmount "$dst"
  i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  kill -KILL "$pid" 2>/dev/null
  [ "$cache" = - ] || rm -rf "$cache"
done
rm -f "$d/$p.fuse-mounted"
""".replace("FLUSH_SECONDS", str(FLUSH_SECONDS))


def rclone_remote(where: BucketURL) -> str:
    return f"{where.store}:{where.bucket}" + (f"/{where.prefix}" if where.prefix else "")


def fuse_line(mode: str, where: BucketURL, dest: str, settings: Settings) -> str:
    if "\t" in dest or "\n" in dest or not dest.startswith("/"):
        raise PrecheckError(f"mount path {dest!r} must be a plain absolute path (no tabs or newlines)")
    endpoint = s3_endpoint(settings) if where.store == "s3" else gcs_endpoint(settings)
    plain = "1" if (endpoint or "").startswith("http://") else "0"
    return "\t".join([mode, where.url, rclone_remote(where), plain, dest]) + "\n"


def _section(name: str, options: dict[str, str]) -> str:
    for value in options.values():
        if "\n" in value:
            raise ValueError(f"a credential for the {name} remote holds a newline")
    return f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()) + "\n"


def _s3_options(settings: Settings) -> dict[str, str]:
    import boto3

    session = boto3.session.Session()
    endpoint = s3_endpoint(settings)
    options = {"type": "s3", "provider": "Other" if endpoint else "AWS", "no_check_bucket": "true"}
    options["region"] = session.region_name or "us-east-1"
    if endpoint:
        options["endpoint"] = endpoint
    creds = session.get_credentials()
    if creds is None:
        options["env_auth"] = "true"  # the node's own identity (an instance profile)
        return options
    frozen = creds.get_frozen_credentials()
    options["access_key_id"] = frozen.access_key
    options["secret_access_key"] = frozen.secret_key
    if frozen.token:
        options["session_token"] = frozen.token
    return options


def _gcs_options(settings: Settings) -> dict[str, str]:
    options = {"type": "google cloud storage", "bucket_policy_only": "true"}
    endpoint = gcs_endpoint(settings)
    if endpoint and endpoint == os.environ.get("STORAGE_EMULATOR_HOST"):
        options["endpoint"] = endpoint.rstrip("/") + "/storage/v1/"
        options["anonymous"] = "true"  # an emulator, as google-cloud-storage treats it
        return options
    if endpoint:
        options["endpoint"] = endpoint
    key_file = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if key_file and os.path.isfile(key_file):
        with open(key_file) as f:
            options["service_account_credentials"] = json.dumps(json.load(f), separators=(",", ":"))
    else:
        options["env_auth"] = "true"  # the node's own service account
    return options


def rclone_config(settings: Settings, stores: set[str]) -> bytes:
    """The node's rclone.conf: one remote per store, named after it (`s3:`, `gcs:`). Secret."""
    text = ""
    if "s3" in stores:
        text += _section("s3", _s3_options(settings))
    if "gcs" in stores:
        text += _section("gcs", _gcs_options(settings))
    return text.encode()


def node_files(settings: Settings, lines: list[str], stores: set[str]) -> dict[str, bytes]:
    return {
        "rclone.conf": rclone_config(settings, stores),
        "fuse": "".join(lines).encode(),
        "fuse.sh": FUSE_SCRIPT.encode(),
    }


async def trial_mount(agent: NodeAgent, timeout: float = CHECK_SECONDS) -> None:
    """Mount every bucket once, the way the phases will, and unmount: a bucket that cannot be mounted
    (no FUSE, no rclone, bad credentials, a missing bucket) fails the sync with a PrecheckError whose one
    line names the mount path and the bucket, instead of an empty directory under the job."""
    phase = f"mount-check-{uuid.uuid4().hex[:8]}"
    await agent.start_phase(phase, "", {})
    deadline = time.monotonic() + timeout
    while True:
        status = await agent.phase_status(phase)
        if status.exit_code is not None:
            break
        if time.monotonic() > deadline:
            await agent.stop_phase(phase)
            raise PrecheckError(f"mounting the task's buckets did not finish within {timeout:.0f} s")
        await asyncio.sleep(0.2)
    if status.exit_code == 0:
        return
    log = (await agent.read_log(phase, 0, 1 << 16)).decode(errors="replace")
    reasons = [line.removeprefix("tsky: ") for line in log.splitlines() if line.startswith("tsky: ")]
    raise PrecheckError(reasons[0] if reasons else f"mounting the task's buckets failed: {log.strip()[-300:]}")
