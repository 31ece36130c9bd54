"""The clusters tsky launched, asked of the backends directly: the local simulator's list, the survey of
every enabled infra (`tsky status --all-infra`), and the simulator's preemption (`tsky debug preempt`)."""

from __future__ import annotations

from tsky.ops.clouds import get_backend
from tsky.ops.clouds.base import ClusterRecord
from tsky.ops.clouds.local import preempt_cluster_named as preempt_cluster_named
from tsky.ops.clouds.local import preempt_job as preempt_job
from tsky.ops.sweeping import UNKNOWN_JOB as UNKNOWN_JOB
from tsky.ops.sweeping import ClusterView as ClusterView
from tsky.ops.sweeping import survey as survey
from tsky.spec.settings import Settings


async def local_clusters(settings: Settings) -> list[ClusterRecord]:
    """The live clusters on the local simulator."""
    return await get_backend("local", settings).list_clusters()
