"""A small fake kube-apiserver for the k8s backend tests: no real API server can run here (no Docker, and no
package ships kube-apiserver, kind, k3s or kwok), so the tests talk to this one through the official client.

It serves what the backend uses, with the real wire formats: pods create / get / list (namespaced, with
`labelSelector`) / delete, watch (`resourceVersion` resume, server-side `timeoutSeconds`), Status errors
(404, 409, 403 quota), and exec as a websocket upgrade speaking `v4.channel.k8s.io` (one byte of channel
before each frame's data, the exit status as a Status object on channel 3). A built-in "kubelet" makes new
pods Running and runs exec'd commands as real processes in a per-pod directory that serves as the pod's
home, so the backend's phase programs really run. Tests play scheduler and node through the knobs:
`unschedulable`, `bad_images`, `busybox_images` (no `tail --pid`), `quota_pods`, `faults` (429 / 5xx answers),
`watch_errors` (watches that end with an ERROR event, e.g. 410 Gone), `evict()` (evictions, node shutdowns,
preemptions), `delete()`, `drop_execs()` (a network blip cutting every exec websocket); `exec_count()` counts
exec requests.

With `nodes` set (`FakeNode`s), the scheduler is the real one's filter step: a pod is bound to the first
node whose labels match its nodeSelector, whose NoSchedule/NoExecute taints it tolerates, and whose
allocatable cpu, memory and extended resources (nvidia.com/gpu, a FUSE device plugin's resource) cover
its requests plus those of the pods already bound there. A pod that fits nowhere stays Pending with
PodScheduled False/Unschedulable and a FailedScheduling event (`GET .../events`) saying why, in the
scheduler's words, and is tried again whenever a pod leaves. Without `nodes`, every pod fits.

Stdlib only; listens on 127.0.0.1 on a free port; `stop()` kills every process a pod ever started.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.backends.followers import log_followers

_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
THREAD_NAME = "fake-k8s"  # every thread the fake starts: tests tell them from the client's
_POD_TAG = "TSKY_FAKE_POD"  # in the environment of every process a fake pod runs
_PODS = re.compile(r"^/api/v1/(?:namespaces/(?P<ns>[^/]+)/)?pods(?:/(?P<name>[^/]+))?(?:/(?P<sub>exec))?$")
_EVENTS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/events$")


def _live_pids_marked(needles: list[bytes]) -> list[int]:
    """Live (not zombie) processes whose environment contains one of `needles`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes()
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state not in ("Z", "X") and any(needle in environ for needle in needles):
                found.append(int(entry))
    return found


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _selector(text: str) -> list[tuple[str, str, str | None]]:
    """`a=b,c!=d,e,!f` -> [(key, op, value)]."""
    terms: list[tuple[str, str, str | None]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "!=" in part:
            key, value = part.split("!=", 1)
            terms.append((key, "!=", value))
        elif "=" in part:
            key, value = part.replace("==", "=").split("=", 1)
            terms.append((key, "=", value))
        elif part.startswith("!"):
            terms.append((part[1:], "!", None))
        else:
            terms.append((part, "exists", None))
    return terms


def _matches(labels: dict[str, str], terms: list[tuple[str, str, str | None]]) -> bool:
    for key, op, value in terms:
        have = labels.get(key)
        if (
            (op == "=" and have != value)
            or (op == "!=" and have == value)
            or (op == "exists" and have is None)
            or (op == "!" and have is not None)
        ):
            return False
    return True


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}  # fmt: skip


def _container_status(container: dict[str, Any], ready: bool, state: dict[str, Any]) -> dict[str, Any]:
    return {"name": container["name"], "image": container["image"], "imageID": "", "restartCount": 0,
            "ready": ready, "started": ready, "state": state}  # fmt: skip


def _quantity(text: str | int | float) -> float:
    """A Kubernetes quantity (`500m`, `4Gi`, `1G`, `2`) as a number (cores, bytes, devices)."""
    value = str(text)
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(suffixes, key=len, reverse=True):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * suffixes[suffix]
    return float(value)


def _requests(pod: dict[str, Any]) -> dict[str, float]:
    """What a pod asks of its node: requests, and limits where no request is given (as for extended
    resources, whose request defaults to the limit)."""
    total: dict[str, float] = {}
    for container in pod["spec"]["containers"]:
        resources = container.get("resources") or {}
        asked = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for name, amount in asked.items():
            total[name] = total.get(name, 0.0) + _quantity(amount)
    return total


def _tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    for t in tolerations:
        if t.get("effect") not in (None, "", taint.get("effect")):
            continue
        if t.get("operator") == "Exists" and t.get("key") in (None, "", taint.get("key")):
            return True
        if t.get("key") == taint.get("key") and t.get("value", "") == taint.get("value", ""):
            return True
    return False


@dataclass
class FakeNode:
    """A node of the fake cluster: what the scheduler matches pods against."""

    name: str
    allocatable: dict[str, str]  # e.g. {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)  # {"key", "value", "effect"}

    def misfit(self, pod: dict[str, Any], used: dict[str, float]) -> str | None:
        """Why `pod` cannot go on this node (the scheduler's wording), or None when it fits."""
        spec = pod["spec"]
        if any(self.labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
            return "node(s) didn't match Pod's node affinity/selector"
        for taint in self.taints:
            if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(
                spec.get("tolerations") or [], taint
            ):
                return f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"
        for name, amount in sorted(_requests(pod).items()):
            if used.get(name, 0.0) + amount > _quantity(self.allocatable.get(name, 0)) + 1e-9:
                return f"Insufficient {name}"
        return None


def _named(thread: threading.Thread) -> threading.Thread:
    thread.name = THREAD_NAME
    return thread


def _busybox_tail(root: Path) -> Path:
    """A directory with a `tail` that, like busybox's, knows no `--pid` (the rest is the real tail)."""
    bin_dir = root / "busybox-bin"
    tail = bin_dir / "tail"
    if not tail.exists():
        bin_dir.mkdir(parents=True, exist_ok=True)
        real = shutil.which("tail") or "/usr/bin/tail"
        script = (
            "#!/bin/sh\n"
            'for a in "$@"; do case $a in --pid*) echo "tail: unrecognized option: $a" >&2; exit 1;; esac; done\n'
            f'exec {real} "$@"\n'
        )
        tmp = bin_dir / f"tail.{threading.get_ident()}"  # execs may come at once: each writes its own, then renames
        tmp.write_text(script)
        tmp.chmod(0o755)
        tmp.rename(tail)
    return bin_dir


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        header = bytes([0x80 | opcode, n])
    elif n < 1 << 16:
        header = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
    return header + payload


class FakeKube:
    def __init__(self, root: Path, namespaces: tuple[str, ...] = ("default",)):
        self.root = root
        self.process_mark = uuid.uuid4().hex[
            :12
        ]  # in every tag of this fake's pod processes: other tests run fakes too
        self.namespaces = set(namespaces)
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[tuple[int, str, dict[str, Any]]] = []  # (resourceVersion, type, pod)
        self.rv = 0
        self.cond = threading.Condition()
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        # knobs
        self.unschedulable = False
        self.bad_images: set[str] = set()
        self.quota_pods: int | None = None
        # "list" / "create" -> HTTP codes to answer the next such requests with (429: API priority and
        # fairness says slow down; 5xx: an API server in trouble)
        self.faults: dict[str, list[int]] = {}
        # HTTP codes the next watches end with, as an ERROR event (410: the resourceVersion is too old)
        self.watch_errors: list[int] = []
        # Images whose `tail` is busybox's, without `--pid` (Alpine's): tsky cannot stream a log in them.
        self.busybox_images: set[str] = set()
        self.nodes: list[FakeNode] | None = None  # None: every pod fits (no scheduling)
        self.scheduling_events: list[dict[str, Any]] = []  # core/v1 Events the scheduler wrote
        self.server: ThreadingHTTPServer | None = None
        self.tls: dict[str, Path] | None = None
        self.exec_connections: set[socket.socket] = set()  # the open exec websockets
        self.token = "fake-token"  # the bearer token every request must carry (the kubeconfig's)

    # -- life cycle --------------------------------------------------------------------------------

    def start(self, tls: dict[str, Path] | None = None) -> FakeKube:
        """Serve plain HTTP, or with `tls` (PEM files `ca`, `server_cert`, `server_key`) mutual TLS as a real
        API server does: its certificate, and only clients with a certificate the CA signed."""
        fake = self

        class Handler(_Handler):
            kube = fake

        self.root.mkdir(parents=True, exist_ok=True)
        self.server = _Server(("127.0.0.1", 0), Handler)
        self.tls = tls
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls["ca"]))
            context.load_cert_chain(tls["server_cert"], tls["server_key"])
            context.verify_mode = ssl.CERT_REQUIRED
            # The handshake happens in each connection's thread (`_Handler.setup`), not in the accepting one.
            self.server.socket = context.wrap_socket(
                self.server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name=THREAD_NAME, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        with self.cond:
            # Every process this fake's pods ever ran, also an exec's that raced its pod's deletion.
            self._kill_tagged([f"{_POD_TAG}={self.process_mark}/".encode()])
            self.cond.notify_all()

    def write_kubeconfig(self, path: Path, context: str = "fake", namespace: str = "default") -> Path:
        tls_cluster: dict[str, str] = {}
        tls_user: dict[str, str] = {}
        if self.tls is not None:
            data = {name: base64.b64encode(pem.read_bytes()).decode() for name, pem in self.tls.items()}
            tls_cluster["certificate-authority-data"] = data["ca"]
            tls_user.update({"client-certificate-data": data["client_cert"], "client-key-data": data["client_key"]})
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url, **tls_cluster}}],
            "users": [{"name": "fake", "user": {"token": self.token, **tls_user}}],
            "contexts": [{"name": context, "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
            "current-context": context,
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # -- what tests do to pods ---------------------------------------------------------------------------

    def pod(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        with self.cond:
            pod = self.pods.get((namespace, name))
            return copy.deepcopy(pod) if pod else None

    def pod_names(self, namespace: str | None = None) -> list[str]:
        with self.cond:
            return sorted(name for (ns, name) in self.pods if namespace in (None, ns))

    def home(self, name: str, namespace: str = "default") -> Path:
        pod = self.pod(name, namespace)
        assert pod is not None, f"no pod {namespace}/{name}"
        return self._home(pod)

    def evict(
        self,
        name: str,
        namespace: str = "default",
        reason: str | None = "Evicted",
        message: str = "The node was low on resource: memory.",
        disruption: str | None = None,
    ) -> None:
        """What a kubelet under node pressure does: the pod's processes die, it stays Failed/Evicted. Other
        takers: a graceful node shutdown (`reason="Terminated"`, `disruption="TerminationByKubelet"`), the
        scheduler preempting it (`reason=None`, `disruption="PreemptionByScheduler"`); `disruption` adds the
        DisruptionTarget condition Kubernetes sets on pods it is about to take away."""
        with self.cond:
            pod = self.pods[(namespace, name)]
            self._kill(pod)
            pod["status"].update(phase="Failed", message=message, podIP=None)
            if reason is not None:
                pod["status"]["reason"] = reason
            if disruption is not None:
                pod["status"]["conditions"].append(
                    {"type": "DisruptionTarget", "status": "True", "reason": disruption, "message": message}
                )
            pod["status"]["containerStatuses"][0]["state"] = {"terminated": {"exitCode": 137, "reason": "Error"}}
            self._event("MODIFIED", pod)

    def delete(self, name: str, namespace: str = "default") -> None:
        """A pod deleted behind tsky's back (an admin, a lost node's pods being cleaned up)."""
        with self.cond:
            self._delete(self.pods[(namespace, name)])

    def followers(self) -> list[int]:
        """Pids of the pods' log followers, one per open log stream."""
        return log_followers(self.processes())

    def drop_execs(self) -> None:
        """A network blip between client and API server: every open exec websocket is cut (no close frame,
        no exit status); the commands' stdin ends, as a kubelet's does when its stream goes."""
        with self.cond:
            connections = list(self.exec_connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def exec_count(self) -> int:
        """How many exec requests the API server has had."""
        return sum(1 for method, path in list(self.requests) if method == "GET" and path.endswith("/exec"))

    def schedule_pending(self) -> None:
        with self.cond:
            pending = [p for p in self.pods.values() if p["status"]["phase"] == "Pending"]
        for pod in pending:
            self._kubelet(pod["metadata"]["namespace"], pod["metadata"]["name"])

    def processes(self) -> list[int]:
        """Pids of every live process this fake's pods started."""
        return _live_pids_marked([f"{_POD_TAG}={self.process_mark}/".encode()])

    # -- the store ---------------------------------------------------------------------------------------

    def _event(self, kind: str, pod: dict[str, Any]) -> None:
        self.rv += 1
        pod["metadata"]["resourceVersion"] = str(self.rv)
        self.events.append((self.rv, kind, copy.deepcopy(pod)))
        self.cond.notify_all()

    def _home(self, pod: dict[str, Any]) -> Path:
        meta = pod["metadata"]
        return self.root / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"

    def create(self, namespace: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = body.get("metadata", {}).get("name", "")
        with self.cond:
            if namespace not in self.namespaces:
                return 404, _status(404, "NotFound", f'namespaces "{namespace}" not found')
            if (namespace, name) in self.pods:
                return 409, _status(409, "AlreadyExists", f'pods "{name}" already exists')
            if self.quota_pods is not None and len(self.pods) >= self.quota_pods:
                message = f'pods "{name}" is forbidden: exceeded quota: pods, limited: pods={self.quota_pods}'
                return 403, _status(403, "Forbidden", message)
            pod = copy.deepcopy(body)
            pod.setdefault("apiVersion", "v1")
            pod.setdefault("kind", "Pod")
            pod["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now())
            pod["status"] = {"phase": "Pending", "conditions": []}
            self.pods[(namespace, name)] = pod
            self._event("ADDED", pod)
            result = copy.deepcopy(pod)
        _named(threading.Timer(0.05, self._kubelet, (namespace, name))).start()
        return 201, result

    def _kubelet(self, namespace: str, name: str) -> None:
        with self.cond:
            pod = self.pods.get((namespace, name))
            if pod is None or pod["metadata"].get("deletionTimestamp") or pod["status"]["phase"] != "Pending":
                return
            status = pod["status"]
            container = pod["spec"]["containers"][0]
            unschedulable = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu." if self.unschedulable else None
            if unschedulable is None and self.nodes is not None and not pod["spec"].get("nodeName"):
                unschedulable = self._bind(pod)
            if unschedulable is not None:
                condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
                if status["conditions"] == [{**condition, "message": unschedulable}]:
                    return  # tried again, still no room: nothing changed
                status["conditions"] = [{**condition, "message": unschedulable}]
                self._failed_scheduling(pod, unschedulable)
            elif container["image"] in self.bad_images:
                status["conditions"] = [{"type": "PodScheduled", "status": "True"}]
                waiting = {"reason": "ErrImagePull", "message": f'failed to pull image "{container["image"]}"'}
                status["containerStatuses"] = [_container_status(container, False, {"waiting": waiting})]
            else:
                self._home(pod).mkdir(parents=True, exist_ok=True)
                number = len(self.events) % 250 + 2
                status.update(phase="Running", podIP=f"127.0.77.{number}", startTime=_now())
                status["conditions"] = [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]
                status["containerStatuses"] = [_container_status(container, True, {"running": {"startedAt": _now()}})]
            self._event("MODIFIED", pod)

    def _bind(self, pod: dict[str, Any]) -> str | None:
        """The scheduler's filter step (module docstring): binds `pod` to the first node it fits, or
        returns the FailedScheduling message."""
        assert self.nodes is not None
        why: Counter[str] = Counter()
        for node in self.nodes:
            used: dict[str, float] = {}
            for other in self.pods.values():
                if other["spec"].get("nodeName") == node.name and other["status"]["phase"] in ("Pending", "Running"):
                    for name, amount in _requests(other).items():
                        used[name] = used.get(name, 0.0) + amount
            misfit = node.misfit(pod, used)
            if misfit is None:
                pod["spec"]["nodeName"] = node.name
                return None
            why[misfit] += 1
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(why.items()))
        total = len(self.nodes)
        preemption = f"preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling."
        return f"0/{total} nodes are available: {reasons}. {preemption}"

    def _failed_scheduling(self, pod: dict[str, Any], message: str) -> None:
        meta = pod["metadata"]
        self.scheduling_events.append(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
                "involvedObject": {
                    "kind": "Pod",
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta["uid"],
                },
                "type": "Warning",
                "reason": "FailedScheduling",
                "message": message,
                "source": {"component": "default-scheduler"},
                "firstTimestamp": _now(),
                "lastTimestamp": _now(),
                "count": 1,
            }
        )

    def _delete(self, pod: dict[str, Any]) -> None:
        if pod["metadata"].get("deletionTimestamp"):
            return
        pod["metadata"]["deletionTimestamp"] = _now()
        self._event("MODIFIED", pod)
        meta = pod["metadata"]
        _named(threading.Timer(0.1, self._finalize, (meta["namespace"], meta["name"], meta["uid"]))).start()

    def _finalize(self, namespace: str, name: str, uid: str) -> None:
        with self.cond:
            pod = self.pods.get((namespace, name))
            if pod is None or pod["metadata"]["uid"] != uid:
                return
            self._kill(pod)
            shutil.rmtree(self._home(pod), ignore_errors=True)
            del self.pods[(namespace, name)]
            self._event("DELETED", pod)
        if self.nodes is not None:
            self.schedule_pending()  # the room it leaves may fit a waiting pod

    def _kill(self, *pods: dict[str, Any]) -> None:
        """SIGKILLs the processes of `pods`; one pass over /proc serves them all (a busy machine has thousands)."""
        self._kill_tagged([f"{_POD_TAG}={self.process_mark}/{pod['metadata']['uid']}".encode() for pod in pods])

    @staticmethod
    def _kill_tagged(needles: list[bytes]) -> None:
        if not needles:
            return
        for _ in range(3):  # a process may fork while we scan
            for pid in _live_pids_marked(needles):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def fault(self, kind: str) -> tuple[int, dict[str, Any]] | None:
        with self.cond:
            queued = self.faults.get(kind)
            code = queued.pop(0) if queued else None
        if code is None:
            return None
        if code == 429:
            return 429, _status(429, "TooManyRequests", "Too many requests, please try again later.")
        return code, _status(code, "InternalError", "Internal error occurred: etcdserver: request timed out")

    def events_list(self, namespace: str) -> dict[str, Any]:
        with self.cond:
            items = [copy.deepcopy(e) for e in self.scheduling_events if e["metadata"]["namespace"] == namespace]
            return {
                "kind": "EventList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.rv)},
                "items": items,
            }

    def list(self, namespace: str | None, selector: str) -> dict[str, Any]:
        terms = _selector(selector)
        with self.cond:
            items = [
                copy.deepcopy(p)
                for (ns, _), p in sorted(self.pods.items())
                if namespace in (None, ns) and _matches(p["metadata"].get("labels", {}), terms)
            ]
            return {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.rv)},
                "items": items,
            }


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # the listen backlog: hundreds of watchers may connect at once, as to a real one

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hang up on kept-alive connections and websockets: not the tests' business


class _Handler(BaseHTTPRequestHandler):
    kube: FakeKube
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are written separately: no 40 ms delayed-ACK stalls

    def setup(self) -> None:
        threading.current_thread().name = THREAD_NAME  # one thread per connection, the server's
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> tuple[re.Match[str] | None, dict[str, list[str]]]:
        url = urlsplit(self.path)
        self.kube.requests.append((self.command, url.path))
        return _PODS.match(url.path), parse_qs(url.query)

    def _unauthorized(self) -> bool:
        """Answers 401, as an API server does, unless the request carries the kubeconfig's bearer token."""
        if self.headers.get("Authorization") == f"Bearer {self.kube.token}":
            return False
        self.close_connection = True
        self._send(401, _status(401, "Unauthorized", "Unauthorized"))
        return True

    def do_GET(self) -> None:
        match, query = self._route()
        if self._unauthorized():
            return
        if match is None and (events := _EVENTS.match(urlsplit(self.path).path)):
            self._send(200, self.kube.events_list(events["ns"]))
            return
        if match is None:
            self._send(404, _status(404, "NotFound", f"the server could not find {self.path}"))
            return
        ns, name, sub = match["ns"], match["name"], match["sub"]
        if sub == "exec":
            self._exec(ns, name, query)
        elif name is not None:
            pod = self.kube.pod(name, ns)
            if pod is None:
                self._send(404, _status(404, "NotFound", f'pods "{name}" not found'))
            else:
                self._send(200, pod)
        elif query.get("watch", ["false"])[0] in ("true", "1"):
            self._watch(ns, query)
        elif injected := self.kube.fault("list"):
            self._send(*injected)
        else:
            self._send(200, self.kube.list(ns, query.get("labelSelector", [""])[0]))

    def do_POST(self) -> None:
        match, _ = self._route()
        if self._unauthorized():
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if match is None or match["name"] is not None or match["ns"] is None:
            self._send(404, _status(404, "NotFound", f"the server could not find {self.path}"))
            return
        self._send(*(self.kube.fault("create") or self.kube.create(match["ns"], body)))

    def do_DELETE(self) -> None:
        match, _ = self._route()
        if self._unauthorized():
            return
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if match is None or match["name"] is None:
            self._send(404, _status(404, "NotFound", f"the server could not find {self.path}"))
            return
        kube = self.kube
        with kube.cond:
            pod = kube.pods.get((match["ns"], match["name"]))
            if pod is not None:
                kube._delete(pod)
                pod = copy.deepcopy(pod)
        if pod is None:
            self._send(404, _status(404, "NotFound", f'pods "{match["name"]}" not found'))
        else:
            self._send(200, pod)

    # -- watch ------------------------------------------------------------------------------------------

    def _watch(self, ns: str | None, query: dict[str, list[str]]) -> None:
        kube = self.kube
        terms = _selector(query.get("labelSelector", [""])[0])
        deadline = time.monotonic() + float(query.get("timeoutSeconds", ["30"])[0])
        since_text = query.get("resourceVersion", [""])[0]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def emit(kind: str, pod: dict[str, Any]) -> None:
            line = json.dumps({"type": kind, "object": pod}).encode() + b"\n"
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            self.wfile.flush()

        def wanted(pod: dict[str, Any]) -> bool:
            return ns in (None, pod["metadata"]["namespace"]) and _matches(pod["metadata"].get("labels", {}), terms)

        try:
            with kube.cond:
                if since_text in ("", "0"):  # no version: the current state first, as synthetic ADDED events
                    since = kube.rv
                    initial = [copy.deepcopy(p) for p in kube.pods.values() if wanted(p)]
                else:
                    since, initial = int(since_text), []
            for pod in initial:
                emit("ADDED", pod)
            with kube.cond:
                error = kube.watch_errors.pop(0) if kube.watch_errors else None
            if error is not None:
                words = {410: ("Expired", "too old resource version: 1 (2)")}
                reason, message = words.get(error, ("InternalError", "etcdserver: leader changed"))
                emit("ERROR", _status(error, reason, message))
                deadline = 0.0
            while True:
                with kube.cond:
                    fresh = [(rv, kind, pod) for rv, kind, pod in kube.events if rv > since and wanted(pod)]
                    since = kube.rv
                    if not fresh:
                        left = deadline - time.monotonic()
                        if left <= 0 or kube.server is None:
                            break
                        kube.cond.wait(min(left, 0.5))
                for _, kind, pod in fresh:
                    emit(kind, pod)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True

    # -- exec ---------------------------------------------------------------------------------------------

    def _exec(self, ns: str, name: str, query: dict[str, list[str]]) -> None:
        kube = self.kube
        pod = kube.pod(name, ns)
        if pod is None or pod["status"]["phase"] != "Running" or pod["metadata"].get("deletionTimestamp"):
            self._send(404 if pod is None else 400, _status(400, "BadRequest", f"pod {name} is not running"))
            return
        if self.headers.get("Upgrade", "").lower() != "websocket":
            self._send(400, _status(400, "BadRequest", "exec needs a websocket upgrade"))
            return
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
        self.end_headers()
        self.close_connection = True
        write_lock = threading.Lock()

        def send(opcode: int, payload: bytes) -> None:
            with write_lock:
                try:
                    self.wfile.write(_ws_frame(opcode, payload))
                    self.wfile.flush()
                except OSError:
                    pass

        argv = query.get("command", [])
        home = kube._home(pod)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "HOSTNAME": name,
            "LANG": "C.UTF-8",
            _POD_TAG: f"{kube.process_mark}/{pod['metadata']['uid']}",
        }
        if pod["spec"]["containers"][0]["image"] in kube.busybox_images:
            env["PATH"] = f"{_busybox_tail(kube.root)}:{env['PATH']}"
        want_stdin = query.get("stdin", ["false"])[0] in ("true", "1")
        try:
            proc = subprocess.Popen(
                argv,
                cwd="/",
                env=env,
                stdin=subprocess.PIPE if want_stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as err:
            message = f'exec: "{argv[0] if argv else ""}": {err.strerror}: unknown'
            send(0x2, b"\x03" + json.dumps({"metadata": {}, "status": "Failure", "message": message}).encode())
            send(0x8, (1000).to_bytes(2, "big"))
            return

        def pump(src: Any, channel: int) -> None:
            while chunk := os.read(src.fileno(), 1 << 16):
                send(0x2, bytes([channel]) + chunk)

        def feed() -> None:
            try:
                while (frame := self._read_frame()) is not None:
                    opcode, data = frame
                    if opcode == 0x8:
                        break
                    if opcode == 0x9:
                        send(0xA, data)
                    elif data[:1] == b"\x00" and proc.stdin is not None:
                        proc.stdin.write(data[1:])
                        proc.stdin.flush()
            except (OSError, ValueError):
                pass
            finally:
                if proc.stdin is not None:
                    with contextlib.suppress(OSError):
                        proc.stdin.close()

        with kube.cond:
            kube.exec_connections.add(self.connection)
        pumps = [
            threading.Thread(target=pump, args=(proc.stdout, 1), name=THREAD_NAME),
            threading.Thread(target=pump, args=(proc.stderr, 2), name=THREAD_NAME),
        ]
        for thread in pumps:
            thread.start()
        if want_stdin:
            threading.Thread(target=feed, name=THREAD_NAME, daemon=True).start()
        code = proc.wait()
        for thread in pumps:
            thread.join()
        with kube.cond:
            kube.exec_connections.discard(self.connection)
        if code == 0:
            status: dict[str, Any] = {"metadata": {}, "status": "Success"}
        else:
            status = {
                "metadata": {},
                "status": "Failure",
                "message": f"command terminated with non-zero exit code: exit status {code}",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": str(code if code > 0 else 128 - code)}]},
            }
        send(0x2, b"\x03" + json.dumps(status).encode())
        send(0x8, (1000).to_bytes(2, "big"))

    def _read_frame(self) -> tuple[int, bytes] | None:
        head = self.rfile.read(2)
        if len(head) < 2:
            return None
        opcode, size = head[0] & 0x0F, head[1] & 0x7F
        if size == 126:
            size = int.from_bytes(self.rfile.read(2), "big")
        elif size == 127:
            size = int.from_bytes(self.rfile.read(8), "big")
        mask = self.rfile.read(4) if head[1] & 0x80 else b""
        data = self.rfile.read(size)
        if mask and data:
            # XOR with the repeated 4-byte key as one big integer: fast enough for megabytes of stdin
            key = (mask * (size // 4 + 1))[:size]
            data = (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")
        return opcode, data
