"""Throw-away SSH "nodes" for the backend tests: real OpenSSH sshd processes on 127.x.y.z addresses.

Each node is an sshd in its own PID and mount namespace (`unshare --pid --fork --kill-child --mount`):
killing the one `unshare` process kills the node and everything ever started through it, as a machine
dying would. The namespace also bind-mounts a per-node directory over the login home (with an empty
`.bashrc`), so every node has its own home, like a separate machine, and root's real `.bashrc` (which
runs `pyenv init`, ~100 ms per command) is never read. Needs root, /usr/sbin/sshd and unshare.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def available() -> str | None:
    """None when sshd nodes can run here, else why not."""
    if os.geteuid() != 0:
        return "sshd nodes need root (unshare --mount/--pid)"
    if not Path(SSHD).exists():
        return f"{SSHD} is missing (apt-get install openssh-server)"
    if not shutil.which("unshare") or not shutil.which("ssh-keygen"):
        return "unshare or ssh-keygen is missing"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount", "--propagation", "private", "true"], capture_output=True
    )
    if probe.returncode != 0:
        return f"unshare --pid --mount does not work here: {probe.stderr.decode().strip()}"
    return None


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tsky-test", "-f", str(path)], check=True)
    return path


def _free_address() -> tuple[str, int]:
    """A random loopback address (127.100-199.x.y, away from 127.0.0.1) and a free port on it."""
    while True:
        addr = f"127.{random.randint(100, 199)}.{random.randint(0, 255)}.{random.randint(2, 254)}"
        with socket.socket() as s:
            try:
                s.bind((addr, 0))
            except OSError:
                continue
            return addr, int(s.getsockname()[1])


@dataclass
class SSHNode:
    name: str
    addr: str
    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    pid_namespace: str = ""  # e.g. "pid:[4026532301]": every process of the node lives in it
    init_pid: int = 0  # the node's sshd: pid 1 of its namespace
    shared_home: Path | None = None  # set when the node mounts another node's home (NFS /home)

    @property
    def home(self) -> Path:
        """The node's login home, as seen from the test process."""
        return self.shared_home or self.dir / "home"

    @property
    def endpoint(self) -> str:
        return f"{self.addr}:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def count(self, program: str) -> int:
        """How many processes called `program` run on this node (and only this node: nodes share /proc
        with the host, where other tests or a benchmark may run the same programs)."""
        found = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                same_node = os.readlink(f"{entry.path}/ns/pid") == self.pid_namespace
                name = Path(entry.path, "comm").read_text().strip()
            except OSError:
                continue
            found += same_node and name == program
        return found

    def kill(self) -> None:
        """The machine dies: sshd and every process started through it, at once."""
        if self.proc is not None and self.proc.poll() is None:
            # Kill the namespace's init, not `unshare`: the kernel then kills every process of the node
            # and `unshare` reaps them at once (an orphaned init would wait for the system's reaper).
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.02)

    def pids(self) -> list[int]:
        """Processes still running in the node's namespace (none once it is killed).

        Once `unshare` has reaped the namespace's init, the kernel has killed every other process in it
        (init's exit waits for them), and the namespace's inode number may be reused by a new node: so
        only look while `unshare` runs."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/ns/pid") == self.pid_namespace:
                        found.append(int(entry))
                except OSError:
                    continue
        return found


@dataclass
class SSHNodes:
    """Starts nodes on demand; `stop_all()` kills every one of them."""

    root: Path
    nodes: list[SSHNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.client_key = keygen(self.root / "client_key")
        self.host_key = keygen(self.root / "host_key")
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation directory

    def start(
        self,
        extra_keys: list[Path] = (),  # type: ignore[assignment]
        share_home_of: SSHNode | None = None,
        log_level: str = "ERROR",
    ) -> SSHNode:
        """A new node; with `share_home_of`, its login home is that node's (as an NFS-mounted /home).
        `log_level="DEBUG1"` makes its sshd.log name every command run through it (a `req exec` line),
        which `bench/scale.py --infra ssh` counts."""
        addr, port = _free_address()
        node = SSHNode(name=f"node{len(self.nodes)}", addr=addr, port=port, dir=self.root / f"node{len(self.nodes)}")
        node.dir.mkdir(parents=True)
        if share_home_of is not None:
            node.shared_home = share_home_of.home
        else:
            node.home.mkdir()
            (node.home / ".bashrc").write_text("")
        keys = [self.client_key.with_suffix(".pub").read_text()]
        keys += [
            Path(str(k) + ".pub").read_text() if not str(k).endswith(".pub") else k.read_text() for k in extra_keys
        ]
        (node.dir / "authorized_keys").write_text("".join(keys))
        (node.dir / "sshd_config").write_text(
            f"""\
ListenAddress {addr}:{port}
HostKey {self.host_key}
PidFile none
AuthorizedKeysFile {node.dir}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
MaxStartups 100
Subsystem sftp internal-sftp
LogLevel {log_level}
"""
        )
        home = Path.home()
        script = (
            f"mount -t proc proc /proc && mount --bind {node.home} {home} && "
            f"exec {SSHD} -D -f {node.dir}/sshd_config -E {node.dir}/sshd.log"
        )
        node.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.nodes.append(node)
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex((addr, port)) == 0:
                    children = Path(f"/proc/{node.proc.pid}/task/{node.proc.pid}/children").read_text().split()
                    node.init_pid = int(children[0])
                    node.pid_namespace = os.readlink(f"/proc/{node.init_pid}/ns/pid")
                    return node
            if node.proc.poll() is not None or time.monotonic() > deadline:
                log = (node.dir / "sshd.log").read_text() if (node.dir / "sshd.log").exists() else ""
                raise RuntimeError(f"sshd on {addr}:{port} did not start: {log}")
            time.sleep(0.01)

    def stop_all(self) -> None:
        for node in self.nodes:
            node.kill()
        # The kernel kills a dead namespace's processes asynchronously: give it a moment.
        deadline = time.monotonic() + 10
        while (leftovers := [pid for node in self.nodes for pid in node.pids()]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not leftovers, f"processes left behind by sshd nodes: {leftovers}"
