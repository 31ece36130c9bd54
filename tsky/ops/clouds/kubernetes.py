"""The `k8s` infra: one pod per node, through the official Kubernetes client.

A cluster is a set of pods `<cluster>-<owner>-<rank>` in the configured namespace of the context named by
`infra: k8s/<context>` (kubeconfig from KUBECONFIG or ~/.kube/config; the service account when tsky runs
in a pod, as context `in-cluster`). Pods carry the labels of `labels.py` (cluster, job id, task
index, rank, spot, owner: the installation, `base.owner_of`), so the sweeper finds them and two tsky
installations sharing a namespace never touch each other's pods.

How phases run: each pod runs an idle entrypoint and tsky execs its phases in it through the pod exec
API (`pod_exec.PodAgent`), with the ssh runner's node programs and on-node layout, so setup and run stay
separate phases, the workdir is copied after provisioning, and a restart on the same pods is just a new
phase. (Running setup and run as the pod's own command, with logs from the pod log API, would tie a phase
to the pod's creation: no restart on the same cluster, and the env and secrets of the run phase fixed
before provisioning.)

Node states (evidence for recovery) come from one pod list per namespace, shared by every watcher of the
worker (`state_checks.py`): a missing pod, or one being deleted, is GONE; a Failed pod whose reason is an
eviction, a node shutdown or a preemption (or with a DisruptionTarget condition) is PREEMPTED; any other
ended pod (its entrypoint died) is GONE; phase Unknown (its node stopped reporting), or an API server that
answers 429 (ThrottledError), is UNKNOWN, which the watcher turns into "unreachable" only past its window.

FUSE (for a task that mounts a bucket live, `Candidate.fuse`): the pod asks for `kubernetes.fuse_device`,
a FUSE device plugin's resource (default SkyPilot's `smarter-devices/fuse`) with CAP_SYS_ADMIN and no
AppArmor confinement, as SkyPilot's pods do; or runs privileged; with `none` such a task fails its
prechecks here. Other tasks' pods ask for nothing, so clusters without a FUSE plugin still run them.

Launch errors: a pod Unschedulable for more than `kubernetes.provision_timeout` seconds, or a quota
rejection, is a CapacityError (try elsewhere); a missing namespace or context, a forbidden or invalid
request, an image that cannot be pulled or lacks bash/tar is a PrecheckError.

Client calls block; they run on the Kubernetes client's thread pool (`pod_exec.in_thread`). A running
phase's log streams over an exec websocket on the event loop instead (`exec_socket.py`): no thread per pod.

Why one module of this size: it is one `Backend` (see `base.py`), one module by design (`get_backend`
loads it with its SDK); the pod exec agent and the label keys already live in `pod_exec.py` and `labels.py`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.watch.watch import iter_resp_lines

from tsky.contract.activity_io import ClusterInfo, JobMeta, NodeInfo
from tsky.ops.clouds import labels as keys
from tsky.ops.clouds.base import (
    BackendError,
    CapacityError,
    ClusterRecord,
    PrecheckError,
    ThrottledError,
    TransientError,
    owner_of,
)
from tsky.ops.clouds.labels import Listed, cluster_records
from tsky.ops.clouds.node_programs import RemoteCommandError
from tsky.ops.clouds.pod_exec import CONTAINER, PodAgent, api_message, in_thread
from tsky.ops.clouds.state_checks import SharedStateChecks
from tsky.spec.requests import Candidate
from tsky.spec.settings import Settings
from tsky.spec.status import NodeState

NAME = "k8s"
IN_CLUSTER = "in-cluster"
# `kubernetes.fuse_device` values that are not a device plugin's resource name
PRIVILEGED = "privileged"
NO_FUSE = "none"

# PID 1 of the pod: idles, and ends at once on SIGTERM so deleting the pod is quick.
IDLE_COMMAND = ["/bin/sh", "-c", 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done']
TERMINATION_GRACE_SECONDS = 5
START_TIMEOUT = 900.0  # seconds for scheduled pods to pull their image and start
DELETE_TIMEOUT = 300.0  # seconds for deleted pods to be gone
WATCH_WINDOW = 5.0  # seconds per watch request

# Pod reasons that mean the node took the pod away (evicted, shut down, preempted), not that it crashed.
_LOST_REASONS = {"Evicted", "Preempting", "NodeLost", "Shutdown", "NodeShutdown", "Terminated", "DeadlineExceeded"}
# Container waiting reasons that no retry will fix.
_IMAGE_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_CONFIG_ERRORS = {"CreateContainerConfigError", "CreateContainerError"}
_CHECK_IMAGE = 'for c in tar head setsid grep; do command -v $c >/dev/null || { echo "missing $c"; exit 1; }; done'

# Pods are handled as the API's JSON (`_preload_content=False`): no model validation stands between tsky
# and whatever fields a given API server version sends.
Pod = dict[str, Any]


def _kubeconfig() -> str:
    return os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")


def _api_error(err: ApiException, what: str) -> BackendError:
    message = api_message(err)
    if err.status == 403 and "exceeded quota" in message:
        return CapacityError(f"{what}: {message}")
    if err.status == 429:  # the API server's priority and fairness (or a proxy) says: slow down
        return ThrottledError(f"{what}: {message}")
    if err.status in (401, 403):
        return PrecheckError(f"{what}: not allowed ({message}); check the kubeconfig user's permissions")
    if err.status in (400, 404, 422):
        return PrecheckError(f"{what}: {message}")
    return TransientError(f"{what}: {message}")


def _condition(pod: Pod, kind: str) -> dict[str, Any]:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def _name(pod: Pod) -> str:
    return str(pod["metadata"]["name"])


def _timestamp(text: str | None) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None
    except ValueError:
        return None


def node_state(pod: Pod | None) -> NodeState:
    """What one pod says about its node (module docstring)."""
    if pod is None or pod["metadata"].get("deletionTimestamp"):
        return NodeState.GONE
    status = pod.get("status") or {}
    phase = status.get("phase")
    disrupted = _condition(pod, "DisruptionTarget").get("status") == "True"
    if phase == "Failed" and (status.get("reason") in _LOST_REASONS or disrupted):
        return NodeState.PREEMPTED
    if phase in ("Failed", "Succeeded"):
        return NodeState.GONE
    if phase == "Running":
        if any("terminated" in (cs.get("state") or {}) for cs in status.get("containerStatuses") or []):
            return NodeState.GONE
        return NodeState.UP
    return NodeState.UNKNOWN


class KubernetesBackend:
    name = NAME

    def __init__(self, settings: Settings):
        self.settings = settings
        self.config = settings.kubernetes
        self.state_check_seconds = self.config.state_check_seconds
        self.owner = owner_of(settings)
        # (context, namespace) -> every pod of this installation there (by name), one list for all watchers
        self.state_checks: SharedStateChecks[tuple[str, str]] = SharedStateChecks(
            self._owned_pods, self.state_check_seconds
        )
        self._configurations: dict[str, client.Configuration] = {}
        self._apis: dict[str, client.CoreV1Api] = {}

    # -- contexts and clients ------------------------------------------------------------------------------

    def contexts(self) -> list[str]:
        """Where tsky may have pods: `allowed_contexts`, else the current context (or in-cluster)."""
        if self.config.allowed_contexts:
            return list(self.config.allowed_contexts)
        try:
            _, active = config.list_kube_config_contexts(config_file=_kubeconfig())
            return [active["name"]]
        except (ConfigException, OSError, TypeError, KeyError):
            in_cluster = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
            return [IN_CLUSTER] if os.environ.get("KUBERNETES_SERVICE_HOST") and in_cluster.exists() else []

    def configuration(self, context: str) -> client.Configuration:
        if context not in self._configurations:
            cfg = client.Configuration()
            try:
                if context == IN_CLUSTER:
                    config.load_incluster_config(client_configuration=cfg)
                else:
                    config.load_kube_config(
                        config_file=_kubeconfig(), context=context, client_configuration=cfg, persist_config=False
                    )
            except (ConfigException, OSError) as err:
                raise PrecheckError(
                    f"k8s context {context!r} cannot be used: {err}. List contexts with `kubectl config get-contexts`."
                ) from err
            self._configurations[context] = cfg
        return self._configurations[context]

    def _api(self, context: str) -> client.CoreV1Api:
        if context not in self._apis:
            self._apis[context] = client.CoreV1Api(client.ApiClient(self.configuration(context)))
        return self._apis[context]

    def _selector(self, cluster_name: str) -> str:
        return f"{keys.CLUSTER}={cluster_name},{keys.OWNER}={self.owner}"

    def pod_name(self, cluster_name: str, rank: int) -> str:
        """Unique per installation: two users' clusters `train-1` never collide in a shared namespace."""
        return f"{cluster_name}-{self.owner[:6]}-{rank}"

    async def _list(self, context: str, namespace: str, selector: str) -> tuple[list[Pod], str]:
        """The pods matching `selector`, and the list's resourceVersion (to watch from)."""
        api = self._api(context)
        try:
            # Raw JSON: with _preload_content=False the client returns the HTTP response.
            resp: Any = await in_thread(
                api.list_namespaced_pod, namespace, label_selector=selector, _preload_content=False
            )
        except ApiException as err:
            raise _api_error(err, f"listing pods in {context}/{namespace}") from err
        listing = json.loads(resp.data)
        return list(listing.get("items") or []), str((listing.get("metadata") or {}).get("resourceVersion", ""))

    def _watch_until(
        self,
        context: str,
        namespace: str,
        selector: str,
        resource_version: str,
        window: float,
        pods: dict[str, Pod],
        done: Callable[[dict[str, Pod]], bool],
    ) -> None:
        """Apply watch events to `pods` for up to `window` seconds (ended by the server), or until
        `done(pods)`. Blocking: run it through `in_thread`."""
        try:
            resp: Any = self._api(context).list_namespaced_pod(
                namespace,
                label_selector=selector,
                watch=True,
                resource_version=resource_version,
                timeout_seconds=int(window),
                _request_timeout=window + 10,
                _preload_content=False,
            )
        except ApiException as err:
            raise _api_error(err, f"watching pods in {context}/{namespace}") from err
        try:
            for line in iter_resp_lines(resp):
                if not line.strip():
                    continue
                event = json.loads(line)
                pod = event.get("object") or {}
                if event.get("type") == "ERROR":
                    # The watch only wakes the caller, who lists again: an expired version (410) or a failing
                    # API server says nothing about the pods. A pause, so a failing server is not hammered.
                    if pod.get("code") != 410:
                        time.sleep(1)
                    return
                if event.get("type") == "DELETED":
                    pods.pop(_name(pod), None)
                elif event.get("type") in ("ADDED", "MODIFIED"):
                    pods[_name(pod)] = pod
                if done(pods):
                    return
        finally:
            resp.close()
            resp.release_conn()

    # -- provisioning ------------------------------------------------------------------------------------

    def image(self, candidate: Candidate) -> str:
        """The task's `image_id: docker:<image>`, else `kubernetes.image`."""
        return candidate.image_id.removeprefix("docker:") if candidate.image_id else self.config.image

    def pod_manifest(self, cluster_name: str, rank: int, candidate: Candidate, meta: JobMeta) -> Pod:
        requests: dict[str, str] = {}
        limits: dict[str, str] = {}
        if candidate.vcpus > 0:
            requests["cpu"] = f"{candidate.vcpus:g}"
        if candidate.memory_gb > 0:
            requests["memory"] = f"{candidate.memory_gb:g}Gi"
        node_selector: dict[str, str] = {}
        tolerations: list[dict[str, Any]] = []
        if candidate.accelerator and candidate.accelerator_count > 0:
            # Extended resources are whole devices, set as limits (requests follow).
            limits["nvidia.com/gpu"] = str(math.ceil(candidate.accelerator_count))
            if self.config.accelerator_label:
                node_selector[self.config.accelerator_label] = candidate.accelerator.lower()
        if candidate.use_spot:
            node_selector.update(self.config.spot_node_selector)
            tolerations.extend(self.config.spot_tolerations)
        container: dict[str, Any] = {"name": CONTAINER, "image": self.image(candidate), "command": IDLE_COMMAND}
        annotations: dict[str, str] = {}
        if candidate.fuse and self.config.fuse_device == PRIVILEGED:
            container["securityContext"] = {"privileged": True}
        elif candidate.fuse:
            # SkyPilot's recipe: the device plugin puts /dev/fuse in the container; mounting it takes
            # CAP_SYS_ADMIN, and the default AppArmor profile forbids mount().
            requests[self.config.fuse_device] = limits[self.config.fuse_device] = "1"
            container["securityContext"] = {"capabilities": {"add": ["SYS_ADMIN"]}}
            annotations[f"container.apparmor.security.beta.kubernetes.io/{CONTAINER}"] = "unconfined"
        container["resources"] = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
        labels = {
            **dict(candidate.labels),  # the user's first: tsky's own labels (the sweeper's) win a clash
            keys.CLUSTER: cluster_name,
            keys.JOB: str(meta.job_id),
            keys.K8S_TASK: str(meta.task_index),
            keys.RANK: str(rank),
            keys.OWNER: self.owner,
            keys.SPOT: "true" if candidate.use_spot else "false",
        }
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
            "automountServiceAccountToken": False,
            "containers": [container],
        }
        if node_selector:
            spec["nodeSelector"] = node_selector
        if tolerations:
            spec["tolerations"] = tolerations
        metadata: dict[str, Any] = {"name": self.pod_name(cluster_name, rank), "labels": labels}
        if annotations:
            metadata["annotations"] = annotations
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}

    async def provision(self, cluster_name: str, candidate: Candidate, num_nodes: int, meta: JobMeta) -> ClusterInfo:
        context, namespace = candidate.region, self.config.namespace
        if candidate.use_spot and not (self.config.spot_node_selector or self.config.spot_tolerations):
            raise PrecheckError(
                f"k8s context {context} has no spot nodes configured: set kubernetes.spot_node_selector or "
                "kubernetes.spot_tolerations in config.yaml"
            )
        if candidate.fuse and self.config.fuse_device == NO_FUSE:
            raise PrecheckError(
                f"k8s context {context}: the task mounts a bucket (MOUNT or MOUNT_CACHED), which needs FUSE in the "
                "pod, but kubernetes.fuse_device is none in config.yaml: set it to the resource your cluster's "
                "FUSE device plugin offers (smarter-devices/fuse with SkyPilot's fuse device manager) or to "
                "`privileged`, or use mode: COPY"
            )
        api = self._api(context)
        for rank in range(num_nodes):
            manifest = self.pod_manifest(cluster_name, rank, candidate, meta)
            try:
                await in_thread(api.create_namespaced_pod, namespace, manifest, _preload_content=False)
            except ApiException as err:
                # 409: a retried provision adopts the pods the first try created.
                if err.status != 409:
                    where = f"creating pod {manifest['metadata']['name']} in {context}/{namespace}"
                    raise _api_error(err, where) from err
        pods = await self._wait_running(context, namespace, cluster_name, num_nodes)
        info = ClusterInfo(
            name=cluster_name,
            backend=NAME,
            region=context,
            instance_type=candidate.instance_type,
            use_spot=candidate.use_spot,
            nodes=[NodeInfo(rank=r, ip=p["status"].get("podIP") or "", host_id=_name(p)) for r, p in enumerate(pods)],
            extra={"namespace": namespace, "job_id": str(meta.job_id), "task_index": str(meta.task_index)},
        )
        image = self.image(candidate)
        await asyncio.gather(*(self._check_image(self.node(info, r), image) for r in range(num_nodes)))
        return info

    async def _check_image(self, agent: PodAgent, image: str) -> None:
        try:
            result = await agent.run(["bash", "-c", _CHECK_IMAGE])
        except RemoteCommandError as err:
            raise PrecheckError(f"image {image} cannot run tsky's phases (needs bash): {err}") from err
        if result.exit_status != 0:
            why = result.stdout.decode(errors="replace").strip()
            needs = "bash, tar, head, setsid and grep"
            raise PrecheckError(f"image {image} cannot run tsky's phases: {why} (needs {needs})")

    def _verdict(self, pods: dict[str, Pod], names: list[str], since: dict[str, float]) -> bool:
        """True when every pod runs; raises when one never will. `since` records since when each pod has
        been waiting in vain (unschedulable, image not pulled)."""
        now = time.monotonic()
        ready = True
        for name in names:
            pod = pods.get(name)
            if pod is None or pod["metadata"].get("deletionTimestamp"):
                raise TransientError(f"pod {name} was deleted while starting")
            status = pod.get("status") or {}
            if status.get("phase") in ("Failed", "Succeeded"):
                why = f"{status.get('reason') or status.get('phase')} {status.get('message') or ''}".strip()
                raise TransientError(f"pod {name} ended while starting: {why}")
            if status.get("phase") == "Running" and node_state(pod) is NodeState.UP:
                since.pop(name, None)
                continue
            ready = False
            scheduled = _condition(pod, "PodScheduled")
            waiting = [(cs.get("state") or {}).get("waiting") or {} for cs in status.get("containerStatuses") or []]
            stuck = [w for w in waiting if w.get("reason") in _IMAGE_ERRORS | _CONFIG_ERRORS]
            if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
                waited = now - since.setdefault(name, now)
                if waited >= self.config.provision_timeout:
                    why = f"pod {name} unschedulable for {waited:.0f}s: {scheduled.get('message')}"
                    if f"Insufficient {self.config.fuse_device}" in why:
                        why += (
                            f" (does a FUSE device plugin offer {self.config.fuse_device} on this cluster's nodes? "
                            "See kubernetes.fuse_device.)"
                        )
                    raise CapacityError(why)
            elif stuck:
                waited = now - since.setdefault(name, now)
                if waited >= self.config.provision_timeout or stuck[0].get("reason") in _CONFIG_ERRORS:
                    reason, message = stuck[0].get("reason"), stuck[0].get("message")
                    image = pod["spec"]["containers"][0].get("image")
                    raise PrecheckError(f"pod {name} cannot start ({image}): {reason}: {message}")
            else:
                since.pop(name, None)
        return ready

    def _settled(self, pods: dict[str, Pod], names: list[str], since: dict[str, float], waiting: set[str]) -> bool:
        """For the watch: stop once `_verdict` has an answer (the caller lists again and gets it), or once
        another pod starts waiting in vain (its timeout shortens the next watch)."""
        try:
            return self._verdict(pods, names, since) or set(since) != waiting
        except BackendError:
            return True

    async def _wait_running(self, context: str, namespace: str, cluster_name: str, num_nodes: int) -> list[Pod]:
        names = [self.pod_name(cluster_name, r) for r in range(num_nodes)]
        selector = self._selector(cluster_name)
        since: dict[str, float] = {}
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            items, version = await self._list(context, namespace, selector)
            pods = {_name(p): p for p in items}
            if self._verdict(pods, names, since):
                return [pods[n] for n in names]
            if time.monotonic() > deadline:
                raise TransientError(f"pods of {cluster_name} did not start within {START_TIMEOUT:.0f}s")
            window = WATCH_WINDOW
            if since:  # wake up when the first pod waiting in vain reaches the timeout
                left = min(since.values()) + self.config.provision_timeout - time.monotonic()
                window = max(1.0, min(window, math.ceil(left)))
            settled = functools.partial(self._settled, names=names, since=since, waiting=set(since))
            await in_thread(self._watch_until, context, namespace, selector, version, window, pods, settled)

    # -- the protocol ------------------------------------------------------------------------------------

    def node(self, cluster: ClusterInfo, rank: int) -> PodAgent:
        namespace = cluster.extra.get("namespace", self.config.namespace)
        return PodAgent(
            functools.partial(self.configuration, cluster.region),
            cluster.region,
            namespace,
            cluster.nodes[rank].host_id,
            tag=f"{cluster.name}/{rank}",
        )

    async def _owned_pods(self, place: tuple[str, str]) -> dict[str, Any]:
        items, _ = await self._list(*place, f"{keys.OWNER}={self.owner}")
        return {_name(p): p for p in items}

    async def node_states(self, cluster: ClusterInfo, fresh: bool = False) -> list[NodeState]:
        place = (cluster.region, cluster.extra.get("namespace", self.config.namespace))
        try:
            snap = await self.state_checks.snapshot(place, fresh)
            if not fresh and any(n.host_id not in snap.items for n in cluster.nodes):
                # Missing from a listing older than the question is no evidence (a cluster launched since).
                snap = await self.state_checks.snapshot(place, fresh=True)
        except ThrottledError:
            return [NodeState.UNKNOWN] * len(cluster.nodes)
        return [node_state(snap.items.get(node.host_id)) for node in cluster.nodes]

    async def teardown(self, cluster_name: str, cluster: ClusterInfo | None) -> None:
        if cluster is not None:
            places = [(cluster.region, cluster.extra.get("namespace", self.config.namespace))]
        else:
            places = [(context, self.config.namespace) for context in self.contexts()]
        for context, namespace in places:
            await self._delete_pods(context, namespace, cluster_name)

    async def _delete_pods(self, context: str, namespace: str, cluster_name: str) -> None:
        selector = self._selector(cluster_name)
        api = self._api(context)
        deadline = time.monotonic() + DELETE_TIMEOUT
        while True:
            items, version = await self._list(context, namespace, selector)
            if not items:
                return
            for pod in items:
                if not pod["metadata"].get("deletionTimestamp"):
                    try:
                        await in_thread(api.delete_namespaced_pod, _name(pod), namespace, _preload_content=False)
                    except ApiException as err:
                        if err.status != 404:
                            raise _api_error(err, f"deleting pod {_name(pod)} in {context}/{namespace}") from err
            if time.monotonic() > deadline:
                raise TransientError(f"pods of {cluster_name} still exist {DELETE_TIMEOUT:.0f}s after deletion")
            remaining = {_name(p): p for p in items}
            gone: Callable[[dict[str, Pod]], bool] = lambda p: not p  # noqa: E731
            await in_thread(self._watch_until, context, namespace, selector, version, WATCH_WINDOW, remaining, gone)

    async def list_clusters(self) -> list[ClusterRecord]:
        """Every tsky pod group in the namespace of each usable context, whoever launched it (`owner`)."""
        namespace = self.config.namespace
        listed: list[Listed[Pod]] = []
        for context in self.contexts():
            items, _ = await self._list(context, namespace, keys.CLUSTER)
            listed += [
                Listed(
                    place=context,
                    labels=pod["metadata"].get("labels") or {},
                    state=node_state(pod),
                    launched_at=_timestamp(pod["metadata"].get("creationTimestamp")),
                    resource=pod,
                )
                for pod in items
            ]

        def describe(context: str, pods: list[Pod]) -> tuple[str, dict[str, str]]:
            spot = (pods[0]["metadata"].get("labels") or {}).get(keys.SPOT) == "true"
            return context, {"instance_type": "pod", "spot": str(spot), "namespace": namespace}

        return cluster_records(NAME, listed, describe)


def make_backend(settings: Settings) -> KubernetesBackend:
    return KubernetesBackend(settings)
