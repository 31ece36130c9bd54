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
from dataclasses import dataclass, field

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

# A host's claims, under the login home: `~/.tsky/claims/<host key>` and, on a host that takes several
# clusters (`max_clusters`), `<host key>#<slot>` too, each with its holder's meta lines in `<claim>.meta`.
# Keyed by host, so hosts that share one home (NFS) are claimed one by one. `held` prints "<holder>\t<claim>"
# for each: one `readlink` for all of them where it takes several operands (GNU), else one per claim
# (busybox), since a launch probes every host of its pool and a host may hold a hundred claims.
_CLAIMS = r"""
claims() { for c in "$HOME/.tsky/claims/$1" "$HOME/.tsky/claims/$1#"*; do [ -L "$c" ] && echo "$c"; done; }
held() {
  local cs=() hs=() c h i
  for c in "$HOME/.tsky/claims/$1" "$HOME/.tsky/claims/$1#"*; do [ -L "$c" ] && cs+=("$c"); done
  [ ${#cs[@]} -gt 0 ] || return 0
  mapfile -t hs < <(readlink -- "${cs[@]}" 2>/dev/null)
  if [ ${#hs[@]} -eq ${#cs[@]} ]; then
    for i in "${!cs[@]}"; do printf '%s\t%s\n' "${hs[$i]}" "${cs[$i]}"; done
  else
    for c in "${cs[@]}"; do h=$(readlink "$c") && printf '%s\t%s\n' "$h" "$c"; done
  fi
}
"""

# args: host-key. Prints "claim <holder>" and its meta lines for each claim on the host. A host claimed
# before claims were keyed by host holds `~/.tsky/claim` (meta in the cluster's directory): still honoured,
# so a job in flight across the upgrade keeps its hosts.
_PROBE = (
    _CLAIMS
    + r"""
n=0
while IFS=$'\t' read -r h c; do
  n=1; echo "claim $h"
  [ ! -f "$c.meta" ] || while IFS= read -r l || [ -n "$l" ]; do echo "$l"; done <"$c.meta"
done < <(held "$1")
if [ $n = 0 ] && h=$(readlink "$HOME/.tsky/claim" 2>/dev/null); then
  echo "claim $h"; m="$HOME/.tsky/clusters/${h%@*}/meta"; [ ! -f "$m" ] || cat "$m"
fi
exit 0
"""
)

# args: host-key holder meta max-clusters. Prints "claimed" when the host is (now) held by `holder`, in
# the claim that names it or the first free one of its `max_clusters` slots, else "taken". A new claim
# writes its meta (a stale file of an interrupted release is replaced); an adopted one keeps it.
_CLAIM = (
    _CLAIMS
    + r"""
umask 077
mkdir -p "$HOME/.tsky/claims" || exit 3
c=
while IFS=$'\t' read -r h x; do [ "$h" = "$2" ] && c=$x; done < <(held "$1")
i=0
while [ -z "$c" ] && [ $i -lt "$4" ]; do
  x="$HOME/.tsky/claims/$1"; [ $i = 0 ] || x="$x#$i"
  ln -s "$2" "$x" 2>/dev/null && rm -f "$x.meta" && c=$x
  i=$((i + 1))
done
[ -n "$c" ] || { echo taken; exit 0; }
[ -f "$c.meta" ] || { printf '%s\n' "$3" >"$c.meta.tmp" && mv -f "$c.meta.tmp" "$c.meta"; } || exit 4
echo claimed
"""
)

# args: host-key holder cluster workdir. Frees the host's claim that `holder` has. Removes this host's node
# directory of the cluster whatever its rank (a teardown that finds hosts by their claims does not know
# it), then the cluster's directory once no node of it is left there (its nodes may share this home),
# and the workdir once no cluster holds the host (clusters that share a host share its home).
_RELEASE = (
    _CLAIMS
    + r"""
while IFS=$'\t' read -r h c; do
  if [ "$h" = "$2" ]; then rm -f "$c.meta" && rm -f "$c"; fi
done < <(held "$1")
if [ "$(readlink "$HOME/.tsky/claim" 2>/dev/null)" = "$2" ]; then
  rm -f "$HOME/.tsky/clusters/$3/meta" && rm -f "$HOME/.tsky/claim"
fi
rm -rf -- "$HOME/.tsky/clusters/$3/"*"@$1"
rmdir -- "$HOME/.tsky/clusters/$3" 2>/dev/null
[ -n "$(claims "$1")" ] || [ -L "$HOME/.tsky/claim" ] || { cd "$HOME" && rm -rf -- "$4"; }
exit 0
"""
)


@dataclass
class _Probe:
    host: PoolHost
    claims: dict[str, dict[str, str]] = field(default_factory=dict)  # holder -> its meta
    error: str | None = None  # set when the host could not be reached

    @property
    def free(self) -> bool:
        return self.error is None and len(self.claims) < self.host.max_clusters


@dataclass
class _RecentProbe:
    started: float
    task: asyncio.Future[_Probe]


class SSHBackend:
    name = NAME
    # A status check costs one command per host, shared by every cluster on it (`_recent_probe`); the
    # watcher also checks at once when a process vanishes.
    state_check_seconds = 10.0

    def __init__(self, settings: Settings, options: SSHOptions | None = None):
        self.settings = settings
        self.options = options or SSHOptions()
        self.owner = owner_of(settings)
        self._recent: dict[str, _RecentProbe] = {}

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
        probe = _Probe(host)
        meta: dict[str, str] = {}
        for line in out.decode(errors="replace").splitlines():
            if line.startswith("claim "):
                meta = probe.claims.setdefault(line.split(" ", 1)[1], {})
            elif "=" in line:
                key, value = line.split("=", 1)
                meta[key] = value
        return probe

    async def _recent_probe(self, host: PoolHost, holder: str, fresh: bool) -> _Probe:
        """The host's probe, shared by every cluster on it for `state_check_seconds`: at rest, SSH
        commands grow with hosts, not jobs. Only a probe made after the call is evidence of a lost
        claim (the shared one may predate this cluster's claim)."""
        asked = time.monotonic()
        recent = self._recent.get(host.key)
        loop = asyncio.get_running_loop()
        if (
            fresh
            or recent is None
            or recent.task.get_loop() is not loop
            or asked - recent.started >= self.state_check_seconds
        ):
            recent = self._recent[host.key] = _RecentProbe(asked, asyncio.ensure_future(self._probe(host)))
        probe = await asyncio.shield(recent.task)
        if probe.error is None and holder not in probe.claims and recent.started < asked:
            return await self._recent_probe(host, holder, fresh=True)
        return probe

    async def _claim(self, host: PoolHost, cluster_name: str, meta: JobMeta) -> bool:
        # A tsky pool's worker belongs to its pool, not to the jobs it runs one after another.
        whose = {"pool": meta.pool} if meta.pool else {"job_id": meta.job_id, "task_index": meta.task_index}
        info = {**whose, "owner": self.owner, "launched_at": int(time.time())}
        text = "\n".join(f"{k}={v}" for k, v in info.items())
        args = [host.key, self._holder(cluster_name), text, str(host.max_clusters)]
        try:
            out = await run_program(self._target(host), _CLAIM, args, options=self.options)
        except NodeUnreachable:
            return False
        return out.strip() == b"claimed"

    async def _release(self, host: PoolHost, cluster_name: str, rank: int) -> None:
        """Stop the cluster's processes on `host`, remove its files, free the host."""
        agent = cluster_node(self._target(host), cluster_name, rank, self.options)
        # Every process tagged with the cluster, whatever its rank, goes.
        await agent.terminate(grace=3.0, tag_prefix=f"{cluster_name}/")
        args = [host.key, self._holder(cluster_name), cluster_name, DEFAULT_WORKDIR]
        await run_program(self._target(host), _RELEASE, args, options=self.options)

    # -- protocol ------------------------------------------------------------------------------------

    async def provision(self, cluster_name: str, candidate: Candidate, num_nodes: int, meta: JobMeta) -> ClusterInfo:
        pool = self._pool(candidate.region)
        if num_nodes > len(pool.hosts):
            raise PrecheckError(
                f"ssh pool '{pool.name}' has {len(pool.hosts)} host(s); the task asks for {num_nodes} nodes"
            )
        holder = self._holder(cluster_name)
        probes = await asyncio.gather(*(self._probe(h) for h in pool.hosts))
        mine = [p.host for p in probes if holder in p.claims]  # a retried provision adopts these
        free = [p.host for p in probes if p.free and holder not in p.claims]
        for host in free:
            if len(mine) >= num_nodes:
                break
            if await self._claim(host, cluster_name, meta):  # one at a time: never hold more than needed
                mine.append(host)
        if len(mine) < num_nodes:
            await asyncio.gather(
                *(self._release(h, cluster_name, r) for r, h in enumerate(mine)), return_exceptions=True
            )
            taken = sum(1 for p in probes if p.error is None and not p.free and holder not in p.claims)
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
        probes = await asyncio.gather(
            *(self._recent_probe(self._host_of(cluster, n), holder, fresh) for n in cluster.nodes)
        )
        states = [
            NodeState.UNKNOWN if p.error else NodeState.UP if p.claims.get(holder) else NodeState.GONE for p in probes
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
            hosts = [p.host for p in probes if holder in p.claims]
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
        claims = [(pool, key, holder, meta) for (pool, key), p in probes.items() for holder, meta in p.claims.items()]
        for pool_name, key, holder, meta in claims:
            name, _, owner = holder.rpartition("@")
            record = records.get(holder)
            if record is None:
                job_id = meta.get("job_id", "")
                launched = meta.get("launched_at", "")
                record = records[holder] = ClusterRecord(
                    name=name or holder,
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
