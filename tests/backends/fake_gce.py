"""A small fake of the Compute Engine REST API for the gcp backend tests: no usable GCE emulator exists (see
`test-infrastructure.md` §2), so the tests talk to this one through google-cloud-compute (`transport="rest"`).

It serves the routes the backend uses, with the wire formats the client parses: instances insert / get /
list (zone, with `filter`) / aggregated list / delete; zone operations get / wait / list (with `filter`);
errors as `{"error": {"code", "message", "errors": [{"reason"}]}}`. Operations have numeric-string ids and
stay RUNNING for `operation_polls` looks (a `wait` returns them RUNNING, as GCE's does when its deadline
passes first), then end, which is when their effect lands: an inserted instance goes PROVISIONING → STAGING
(seen once) → RUNNING, a deleted one is gone. Tests play GCE through the knobs: `exhausted_zones` (inserts
end ZONE_RESOURCE_POOL_EXHAUSTED), `quota_zones` (insert operations end QUOTA_EXCEEDED), `quota_exceeded`
(inserts rejected with 403 quotaExceeded), `faults` (the next requests of a kind answered with an HTTP
error such as 403 rateLimitExceeded, 429 or 503), `preempt()` (a SPOT instance preempted: a
`compute.instances.preempted` operation, then deleted, as `instanceTerminationAction: DELETE` does).
`requests` logs every request, so tests can count the calls a backend makes.

Stdlib only; listens on 127.0.0.1 on a free port.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

BASE = "https://www.googleapis.com/compute/v1"
_ZONE_PATH = re.compile(
    r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/(?P<kind>instances|operations)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<verb>wait))?$"
)
_AGGREGATED = re.compile(r"^/compute/v1/projects/(?P<project>[^/]+)/aggregated/instances$")
_TERM = re.compile(r'([\w.-]+)\s*(=|!=|:)\s*"?([^")\s]*)"?')


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _field(obj: dict[str, Any], path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _matches(obj: dict[str, Any], text: str) -> bool:
    """GCE list filters as the backend writes them: `(a = "x") (b = "y")` (AND), `a:*`, or `(..) OR (..)`."""
    if not text:
        return True
    alternatives = re.split(r"\)\s*OR\s*\(", text)
    for alternative in alternatives:
        terms = _TERM.findall(alternative)
        ok = True
        for path, op, value in terms:
            have = _field(obj, path)
            if op == ":" and value == "*":
                ok = ok and have is not None
            elif op == "!=":
                ok = ok and str(have) != value
            else:
                ok = ok and have is not None and str(have) == value
        if ok:
            return True
    return False


def _error(code: int, message: str, reason: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "errors": [{"message": message, "reason": reason}]}}


class FakeCompute:
    def __init__(self) -> None:
        self.instances: dict[tuple[str, str, str], dict[str, Any]] = {}  # (project, zone, name)
        self.operations: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.ids = itertools.count(4_000_000_000_000_000_001)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.inserted: list[dict[str, Any]] = []  # every insert body, for assertions
        # knobs
        self.exhausted_zones: set[str] = set()
        self.quota_zones: set[str] = set()
        self.quota_exceeded = False
        self.operation_polls = 2
        # request kind ("insert", "delete", "list", "aggregated", "operation") -> errors to answer with, in order
        self.faults: dict[str, list[tuple[int, str]]] = {}
        self._polls: dict[str, int] = {}
        self._staged: set[str] = set()  # instances already seen STAGING once
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> FakeCompute:
        fake = self

        class Handler(_Handler):
            compute = fake

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    # -- what tests look at and do -----------------------------------------------------------------------

    def instance(self, name: str) -> dict[str, Any] | None:
        with self.lock:
            for (_, _, n), instance in self.instances.items():
                if n == name:
                    return copy.deepcopy(instance)
        return None

    def names(self) -> list[str]:
        with self.lock:
            return sorted(name for _, _, name in self.instances)

    def operations_for(self, name: str) -> list[str]:
        """Names of the operations that target instance `name`, oldest first."""
        with self.lock:
            return [op["name"] for op in self.operations.values() if _last(op["targetLink"]) == name]

    def preempt(self, name: str, delete: bool = True) -> None:
        """GCE takes a SPOT instance back: a preempted operation; TERMINATED, then gone when its
        termination action is DELETE (or kept TERMINATED, as with STOP)."""
        with self.lock:
            key = next(k for k in self.instances if k[2] == name)
            instance = self.instances[key]
            assert instance.get("scheduling", {}).get("provisioningModel") == "SPOT", "only SPOT VMs are preempted"
            op = self._operation(key[0], key[1], "compute.instances.preempted", instance["selfLink"], user="system")
            op["status"] = "DONE"
            if delete:
                del self.instances[key]
            else:
                instance["status"] = "TERMINATED"

    # -- the store ---------------------------------------------------------------------------------------

    def _operation(self, project: str, zone: str, kind: str, target: str, user: str = "tester") -> dict[str, Any]:
        number = next(self.ids)
        op = {
            "kind": "compute#operation",
            "id": str(number),
            "name": f"operation-{number}",
            "zone": f"{BASE}/projects/{project}/zones/{zone}",
            "operationType": kind,
            "targetLink": target,
            "status": "RUNNING",
            "user": user,
            "progress": 0,
            "insertTime": _now(),
            "selfLink": f"{BASE}/projects/{project}/zones/{zone}/operations/operation-{number}",
        }
        self.operations[(project, zone, op["name"])] = op
        return op

    def _finish(self, op: dict[str, Any]) -> None:
        """An operation ends after `operation_polls` looks; its effect lands then."""
        if op["status"] == "DONE":
            return
        polls = self._polls[op["name"]] = self._polls.get(op["name"], 0) + 1
        if polls <= self.operation_polls:
            op["progress"] = 50
            return
        op.update(status="DONE", progress=100, endTime=_now())
        project = op["targetLink"].split("/projects/", 1)[1].split("/", 1)[0]
        zone, name = _last(op["zone"]), _last(op["targetLink"])
        instance = self.instances.get((project, zone, name))
        if op["operationType"] == "insert" and instance is not None:
            if zone in self.quota_zones:
                message = f"Quota 'CPUS' exceeded.  Limit: 24.0 in region {zone.rsplit('-', 1)[0]}."
                op.update(httpErrorStatusCode=403, httpErrorMessage="FORBIDDEN")
                op["error"] = {"errors": [{"code": "QUOTA_EXCEEDED", "message": message}]}
                del self.instances[(project, zone, name)]
            else:
                instance["status"] = "STAGING"
        elif op["operationType"] == "delete":
            self.instances.pop((project, zone, name), None)

    def _seen(self, instance: dict[str, Any]) -> dict[str, Any]:
        """An instance as a read shows it: STAGING is seen once, then it runs."""
        if instance["status"] == "STAGING":
            if instance["selfLink"] in self._staged:
                instance["status"] = "RUNNING"
            self._staged.add(instance["selfLink"])
        return copy.deepcopy(instance)

    def fault(self, kind: str) -> tuple[int, dict[str, Any]] | None:
        """The next injected error for a request of `kind`, as GCE words it."""
        with self.lock:
            queued = self.faults.get(kind)
            if not queued:
                return None
            code, reason = queued.pop(0)
        messages = {
            "rateLimitExceeded": "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute' of "
            "service 'compute.googleapis.com' for consumer 'project_number:1'.",
            "userRateLimitExceeded": "User Rate Limit Exceeded",
            "backendError": "Internal error. Please try again or contact Google Support.",
        }
        return code, _error(code, messages.get(reason, reason), reason)

    def insert(self, project: str, zone: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = body["name"]
        link = f"{BASE}/projects/{project}/zones/{zone}/instances/{name}"
        with self.lock:
            self.inserted.append(copy.deepcopy(body))
            if (project, zone, name) in self.instances:
                return 409, _error(409, f"The resource '{link[len(BASE) + 1 :]}' already exists", "alreadyExists")
            if self.quota_exceeded:
                message = f"Quota 'CPUS' exceeded.  Limit: 8.0 in region {zone.rsplit('-', 1)[0]}."
                return 403, _error(403, message, "quotaExceeded")
            op = self._operation(project, zone, "insert", link)
            if zone in self.exhausted_zones:
                message = (
                    f"The zone 'projects/{project}/zones/{zone}' does not have enough resources available to "
                    "fulfill the request.  Try a different zone, or try again later."
                )
                op.update(status="DONE", httpErrorStatusCode=503, httpErrorMessage="SERVICE UNAVAILABLE")
                op["error"] = {"errors": [{"code": "ZONE_RESOURCE_POOL_EXHAUSTED", "message": message}]}
                return 200, copy.deepcopy(op)
            number = len(self.instances) % 250 + 2
            instance = copy.deepcopy(body)
            instance.update(
                kind="compute#instance",
                id=str(next(self.ids)),
                status="PROVISIONING",
                zone=f"{BASE}/projects/{project}/zones/{zone}",
                selfLink=link,
                creationTimestamp=_now(),
                machineType=f"{BASE}/projects/{project}/{body['machineType']}",
            )
            for nic in instance.get("networkInterfaces", []):
                nic["networkIP"] = f"10.128.0.{number}"
                for access in nic.get("accessConfigs", []):
                    access["natIP"] = f"203.0.113.{number}"  # TEST-NET-3: never reached (the stand-in nodes are)
            self.instances[(project, zone, name)] = instance
            op["targetId"] = instance["id"]
            return 200, copy.deepcopy(op)

    def delete(self, project: str, zone: str, name: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            instance = self.instances.get((project, zone, name))
            if instance is None:
                return 404, _error(
                    404, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found", "notFound"
                )
            instance["status"] = "STOPPING"
            return 200, copy.deepcopy(self._operation(project, zone, "delete", instance["selfLink"]))

    def operation(self, project: str, zone: str, name: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            op = self.operations.get((project, zone, name))
            if op is None:
                return 404, _error(404, f"operation {name} not found", "notFound")
            self._finish(op)
            return 200, copy.deepcopy(op)


def _last(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hang up on kept-alive connections: not the tests' business


class _Handler(BaseHTTPRequestHandler):
    compute: FakeCompute
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are written separately: no 40 ms delayed-ACK stalls

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}") if length else {}
        fake = self.compute
        fake.requests.append((self.command, url.path))
        filter_ = unquote(query.get("filter", ""))
        zone_match = _ZONE_PATH.match(url.path)
        if _AGGREGATED.match(url.path):
            kind = "aggregated"
        elif zone_match is not None and zone_match["kind"] == "operations":
            kind = "operation"
        else:
            kind = {"POST": "insert", "DELETE": "delete"}.get(self.command, "list")
        if injected := fake.fault(kind):
            self._send(*injected)
            return
        if match := _AGGREGATED.match(url.path):
            with fake.lock:
                items: dict[str, Any] = {}
                for (project, zone, _), instance in sorted(fake.instances.items()):
                    if project == match["project"] and _matches(instance, filter_):
                        items.setdefault(f"zones/{zone}", {"instances": []})["instances"].append(fake._seen(instance))
            self._send(200, {"kind": "compute#instanceAggregatedList", "id": "agg", "items": items})
            return
        match = _ZONE_PATH.match(url.path)
        if match is None:
            self._send(404, _error(404, f"no route for {self.command} {url.path}", "notFound"))
            return
        # `.../operations/<name>` and `.../operations/<name>/wait` both end the operation.
        project, zone, kind, name = match["project"], match["zone"], match["kind"], match["name"]
        if kind == "operations":
            if name is None:
                with fake.lock:
                    ops = [
                        copy.deepcopy(op)
                        for (p, z, _), op in fake.operations.items()
                        if (p, z) == (project, zone) and _matches(op, filter_)
                    ]
                self._send(200, {"kind": "compute#operationList", "id": "ops", "items": ops})
            else:
                self._send(*fake.operation(project, zone, name))
            return
        if self.command == "POST" and name is None:
            self._send(*fake.insert(project, zone, body))
        elif self.command == "DELETE" and name is not None:
            self._send(*fake.delete(project, zone, name))
        elif self.command == "GET" and name is not None:
            with fake.lock:
                instance = fake.instances.get((project, zone, name))
                instance = fake._seen(instance) if instance is not None else None
            if instance is None:
                message = f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found"
                self._send(404, _error(404, message, "notFound"))
            else:
                self._send(200, copy.deepcopy(instance))
        elif self.command == "GET":
            with fake.lock:
                found = [
                    fake._seen(i)
                    for (p, z, _), i in sorted(fake.instances.items())
                    if (p, z) == (project, zone) and _matches(i, filter_)
                ]
            self._send(200, {"kind": "compute#instanceList", "id": "list", "items": found})
        else:
            self._send(405, _error(405, f"{self.command} not supported on {url.path}", "badRequest"))

    do_GET = _dispatch
    do_POST = _dispatch
    do_DELETE = _dispatch
