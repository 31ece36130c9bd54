"""The `ssh` infra: existing machines listed in `$TSKY_HOME/ssh_node_pools.yaml` (`infra: ssh/<pool>`).

A cluster takes `num_nodes` free hosts of its pool and runs its phases there with the SSH runner
(`ssh_runner.py`); teardown stops the cluster's processes, removes its files and frees the hosts. It never
powers anything off. A host that stops answering past the watcher's window is treated as lost (this
infra's "preemption"); a host that answers but no longer holds the cluster's claim is GONE.

Claims live on the hosts themselves, so they hold across activities, worker processes and worker
machines with no shared state: a host is taken by creating the symlink `~/.tsky/claims/<host>:<port>`
(named by host, since hosts may share one home over NFS) whose target is `<cluster name>@<owner id>`.
`ln -s` is atomic and the link carries its holder in the same step, so of two concurrent claims exactly
one wins, and there is never a claim without a known holder (a claim *directory* would be created first
and named later). Provisioning the same cluster again finds the links that already name it and adopts
those hosts. A host whose claim outlives its job (its teardown could not reach it) is listed by
`list_clusters` for the sweeper.

On each claimed host: `~/.tsky/claims/<host>:<port>.meta` (the holder's job), the node's phase files
(`phases.py`) in `~/.tsky/clusters/<cluster>/<rank>@<host>:<port>/` and the workdir `~/sky_workdir`, all
removed at teardown. Hosts of one cluster that share a home share its workdir (same content).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from tsky.contract.activity_io import ClusterInfo, JobMeta, NodeInfo
from tsky.ops.clouds.base import CapacityError, ClusterRecord, PrecheckError, owner_of
from tsky.ops.clouds.ssh_pools import NodePool, PoolFileError, PoolHost, load_pools
from tsky.ops.clouds.ssh_runner import (
    DEFAULT_WORKDIR,
    NodeUnreachable,
    SSHNodeAgent,
    SSHOptions,
    SSHTarget,
    cluster_node,
    run_program,
)
from tsky.spec.requests import Candidate
from tsky.spec.settings import Settings
from tsky.spec.status import NodeState

NAME = "ssh"
logger = logging.getLogger(__name__)

# Each host's claim and its holder's meta lines, under the login home: `~/.tsky/claims/<host key>` and
# `<host key>.meta`. Keyed by host, so hosts that share one home (NFS) are claimed one by one.
# args: host-key. Prints "claim <holder>|-" and, when the claim has them, its meta lines. A host claimed
# before claims were keyed by host holds `~/.tsky/claim` (meta in the cluster's directory): still honoured,
# so a job in flight across the upgrade keeps its hosts.
_PROBE = r"""
c="$HOME/.tsky/claims/$1"; m="$c.meta"
h=$(readlink "$c" 2>/dev/null) ||
  { h=$(readlink "$HOME/.tsky/claim" 2>/dev/null) && m="$HOME/.tsky/clusters/${h%@*}/meta"; }
echo "claim ${h:--}"
[ -n "$h" ] && [ -f "$m" ] && cat "$m"
exit 0
"""

# args: host-key holder meta. Prints "claimed" when the host is (now) held by `holder`, else "taken <holder>".
# A new claim writes its meta (a stale file of an interrupted release is replaced); an adopted one keeps it.
_CLAIM = r"""
umask 077
c="$HOME/.tsky/claims/$1"
mkdir -p "$HOME/.tsky/claims" || exit 3
ln -s "$2" "$c" 2>/dev/null && rm -f "$c.meta"
h=$(readlink "$c")
if [ "$h" = "$2" ]; then
  [ -f "$c.meta" ] || { printf '%s\n' "$3" >"$c.meta.tmp" && mv -f "$c.meta.tmp" "$c.meta"; } || exit 4
  echo claimed
else
  echo "taken ${h:--}"
fi
"""

# args: host-key holder cluster. Frees the host if `holder` holds it. Removes this host's node directory
# of the cluster whatever its rank (a teardown that finds hosts by their claims does not know it), then
# the cluster's directory once no node of it is left there (its nodes may share this home).
_RELEASE = r"""
c="$HOME/.tsky/claims/$1"
if [ "$(readlink "$c" 2>/dev/null)" = "$2" ]; then rm -f "$c.meta" && rm -f "$c"; fi
if [ "$(readlink "$HOME/.tsky/claim" 2>/dev/null)" = "$2" ]; then
  rm -f "$HOME/.tsky/clusters/$3/meta" && rm -f "$HOME/.tsky/claim"
fi
rm -rf -- "$HOME/.tsky/clusters/$3/"*"@$1"
rmdir -- "$HOME/.tsky/clusters/$3" 2>/dev/null
exit 0
"""


@dataclass
class _Probe:
    host: PoolHost
    holder: str | None = None  # None: free
    meta: dict[str, str] | None = None
    error: str | None = None  # set when the host could not be reached


class SSHBackend:
    name = NAME
    # A status check costs one command per host; the watcher also checks at once when a process vanishes.
    state_check_seconds = 10.0

    def __init__(self, settings: Settings, options: SSHOptions | None = None):
        self.settings = settings
        self.options = options or SSHOptions()
        self.owner = owner_of(settings)

    # -- pools and hosts -----------------------------------------------------------------------------

    def _pools(self) -> dict[str, NodePool]:
        try:
            pools, _ = load_pools(self.settings.home)
        except PoolFileError as err:
            raise PrecheckError(str(err)) from err
        return pools

    def _pool(self, name: str) -> NodePool:
        try:
            pools, problems = load_pools(self.settings.home)
        except PoolFileError as err:
            raise PrecheckError(str(err)) from err
        if name in problems:
            raise PrecheckError(problems[name])
        if name not in pools:
            raise PrecheckError(
                f"ssh pool '{name}' is not in {self.settings.home / 'ssh_node_pools.yaml'} "
                f"(pools: {', '.join(pools) or 'none'})"
            )
        return pools[name]

    def _holder(self, cluster_name: str) -> str:
        return f"{cluster_name}@{self.owner}"

    def _target(self, host: PoolHost) -> SSHTarget:
        return SSHTarget(host.ip, host.port, host.user, host.identity_file, host.password)

    def _host_of(self, cluster: ClusterInfo, node: NodeInfo) -> PoolHost:
        """The pool entry of a node (credentials never travel in ClusterInfo, which lands in workflow
        history); a host since removed from the file is still reached with what the node records."""
        key = f"{node.ip}:{node.ssh_port or 22}"
        try:
            pools = self._pools()
        except PrecheckError:
            pools = {}
        for pool in [pools[cluster.region]] if cluster.region in pools else pools.values():
            for host in pool.hosts:
                if host.key == key:
                    return host
        return PoolHost(ip=node.ip, port=node.ssh_port or 22, user=node.ssh_user)

    def node(self, cluster: ClusterInfo, rank: int) -> SSHNodeAgent:
        return cluster_node(self._target(self._host_of(cluster, cluster.nodes[rank])), cluster.name, rank, self.options)

    async def _probe(self, host: PoolHost) -> _Probe:
        try:
            out = await run_program(self._target(host), _PROBE, [host.key], options=self.options)
        except NodeUnreachable as err:
            return _Probe(host, error=str(err))
        lines = out.decode(errors="replace").splitlines()
        holder = lines[0].split(" ", 1)[1] if lines and lines[0].startswith("claim ") else "-"
        meta = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
        return _Probe(host, holder=None if holder == "-" else holder, meta=meta or None)

    async def _claim(self, host: PoolHost, cluster_name: str, meta: JobMeta) -> bool:
        # A tsky pool's worker belongs to its pool, not to the jobs it runs one after another.
        whose = {"pool": meta.pool} if meta.pool else {"job_id": meta.job_id, "task_index": meta.task_index}
        info = {**whose, "owner": self.owner, "launched_at": int(time.time())}
        text = "\n".join(f"{k}={v}" for k, v in info.items())
        try:
            out = await run_program(
                self._target(host), _CLAIM, [host.key, self._holder(cluster_name), text], options=self.options
            )
        except NodeUnreachable:
            return False
        return out.strip() == b"claimed"

    async def _release(self, host: PoolHost, cluster_name: str, rank: int) -> None:
        """Stop the cluster's processes on `host`, remove its files, free the host."""
        agent = cluster_node(self._target(host), cluster_name, rank, self.options)
        # The host was the cluster's alone: every process tagged with the cluster, whatever its rank, goes.
        await agent.terminate(grace=3.0, remove=[DEFAULT_WORKDIR], tag_prefix=f"{cluster_name}/")
        await run_program(
            self._target(host), _RELEASE, [host.key, self._holder(cluster_name), cluster_name], options=self.options
        )

    # -- protocol ------------------------------------------------------------------------------------

    async def provision(self, cluster_name: str, candidate: Candidate, num_nodes: int, meta: JobMeta) -> ClusterInfo:
        pool = self._pool(candidate.region)
        if num_nodes > len(pool.hosts):
            raise PrecheckError(
                f"ssh pool '{pool.name}' has {len(pool.hosts)} host(s); the task asks for {num_nodes} nodes"
            )
        holder = self._holder(cluster_name)
        probes = await asyncio.gather(*(self._probe(h) for h in pool.hosts))
        mine = [p.host for p in probes if p.holder == holder]  # a retried provision adopts these
        free = [p.host for p in probes if p.error is None and p.holder is None]
        for host in free:
            if len(mine) >= num_nodes:
                break
            if await self._claim(host, cluster_name, meta):  # one at a time: never hold more than needed
                mine.append(host)
        if len(mine) < num_nodes:
            await asyncio.gather(
                *(self._release(h, cluster_name, r) for r, h in enumerate(mine)), return_exceptions=True
            )
            taken = sum(1 for p in probes if p.holder not in (None, holder))
            down = [p.host.key for p in probes if p.error is not None]
            raise CapacityError(
                f"ssh pool '{pool.name}': {num_nodes} free host(s) needed, {len(mine)} available "
                f"({taken} in use by other clusters" + (f", unreachable: {', '.join(down)}" if down else "") + ")"
            )
        order = {h.key: i for i, h in enumerate(pool.hosts)}
        chosen = sorted(mine, key=lambda h: order[h.key])
        for extra_rank, host in enumerate(chosen[num_nodes:], start=num_nodes):
            await self._release(host, cluster_name, extra_rank)
        nodes = [
            NodeInfo(rank=r, ip=h.ip, host_id=h.key, ssh_port=h.port, ssh_user=h.user)
            for r, h in enumerate(chosen[:num_nodes])
        ]
        return ClusterInfo(
            name=cluster_name,
            backend=NAME,
            region=pool.name,
            instance_type=candidate.instance_type,
            nodes=nodes,
            extra={"node_pool": pool.name}
            | ({"pool": meta.pool} if meta.pool else {"job_id": str(meta.job_id), "task_index": str(meta.task_index)}),
        )

    async def node_states(self, cluster: ClusterInfo, fresh: bool = False) -> list[NodeState]:
        holder = self._holder(cluster.name)
        probes = await asyncio.gather(*(self._probe(self._host_of(cluster, n)) for n in cluster.nodes))
        states = [
            NodeState.UNKNOWN if p.error else NodeState.UP if p.holder == holder and p.meta else NodeState.GONE
            for p in probes
        ]
        if NodeState.GONE not in states and NodeState.UNKNOWN in states:
            # Not reaching a host is no evidence of loss: the watcher's window decides.
            raise NodeUnreachable("; ".join(p.error for p in probes if p.error))
        return states

    async def teardown(self, cluster_name: str, cluster: ClusterInfo | None) -> None:
        holder = self._holder(cluster_name)
        if cluster is not None:
            hosts = [self._host_of(cluster, n) for n in cluster.nodes]
        else:  # a launch that failed midway: find the claims among every pool's hosts
            everywhere = {h.key: h for pool in self._pools().values() for h in pool.hosts}
            probes = await asyncio.gather(*(self._probe(h) for h in everywhere.values()))
            hosts = [p.host for p in probes if p.holder == holder]
        results = await asyncio.gather(
            *(self._release(h, cluster_name, r) for r, h in enumerate(hosts)), return_exceptions=True
        )
        failed = []
        for host, result in zip(hosts, results, strict=True):
            if isinstance(result, NodeUnreachable):
                # A dead host cannot be cleaned now; its claim stays, and the sweeper finds it when the
                # host answers again. Waiting here would keep the job from recovering elsewhere.
                logger.warning("ssh teardown of %s: %s is unreachable, skipped: %s", cluster_name, host.key, result)
            elif isinstance(result, BaseException):
                failed.append(f"{host.key}: {result}")
        if failed:
            raise RuntimeError(f"teardown of {cluster_name} failed on " + "; ".join(failed))

    async def list_clusters(self) -> list[ClusterRecord]:
        try:
            pools = self._pools()
        except PrecheckError:
            return []
        tasks = {(pool.name, h.key): self._probe(h) for pool in pools.values() for h in pool.hosts}
        probes = dict(zip(tasks, await asyncio.gather(*tasks.values()), strict=True))
        records: dict[str, ClusterRecord] = {}
        for (pool_name, key), probe in probes.items():
            if probe.holder is None:
                continue
            name, _, owner = probe.holder.rpartition("@")
            meta = probe.meta or {}
            record = records.get(probe.holder)
            if record is None:
                job_id = meta.get("job_id", "")
                launched = meta.get("launched_at", "")
                record = records[probe.holder] = ClusterRecord(
                    name=name or probe.holder,
                    backend=NAME,
                    region=pool_name,
                    job_id=int(job_id) if job_id.isdigit() else None,
                    nodes=0,
                    launched_at=float(launched) if launched.isdigit() else None,
                    owner=owner or None,
                    extra={"instance_type": "node", "hosts": ""},
                    pool=meta.get("pool") or None,
                )
            record.nodes += 1
            record.extra["hosts"] = ",".join(filter(None, [record.extra["hosts"], key]))
        return list(records.values())


def make_backend(settings: Settings) -> SSHBackend:
    return SSHBackend(settings)
