"""The environment a task's `setup` and `run` see on each node: the task's envs and secrets plus
SkyPilot's variables (docs/pipelines-and-storage.md), regenerated for every attempt (`SKYPILOT_TASK_ID` stays put)."""

from __future__ import annotations

import json

from tsky.contract.activity_io import ClusterInfo, JobMeta


def task_environment(
    meta: JobMeta,
    cluster: ClusterInfo,
    rank: int,
    phase: str,
    envs: dict[str, str],
    secrets: dict[str, str],
    gpus_per_node: float,
) -> dict[str, str]:
    ips = "\n".join(node.ip for node in cluster.nodes)
    gpus = str(int(gpus_per_node)) if gpus_per_node == int(gpus_per_node) else str(gpus_per_node)
    env = dict(envs)
    env.update(secrets)
    env.update(
        {
            "SKYPILOT_TASK_ID": meta.task_id,
            "SKYPILOT_TASK_IDS": "\n".join(meta.task_ids),
            "SKYPILOT_MANAGED_JOB_ID": str(meta.job_id),
            "SKYPILOT_JOB_RANK": str(meta.rank),
            "SKYPILOT_NUM_JOBS": str(meta.num_jobs),
            "SKYPILOT_NUM_NODES": str(len(cluster.nodes)),
            "SKYPILOT_USER": meta.user,
            "SKYPILOT_CLUSTER_INFO": json.dumps(
                {
                    "cluster_name": cluster.name,
                    "cloud": cluster.backend,
                    "region": cluster.region,
                    "zone": cluster.zone,
                }
            ),
        }
    )
    if phase == "setup":
        env.update(
            {
                "SKYPILOT_SETUP_NODE_RANK": str(rank),
                "SKYPILOT_SETUP_NODE_IPS": ips,
                "SKYPILOT_SETUP_NUM_GPUS_PER_NODE": gpus,
            }
        )
    else:
        env.update(
            {
                "SKYPILOT_NODE_RANK": str(rank),
                "SKYPILOT_NODE_IPS": ips,
                "SKYPILOT_NUM_GPUS_PER_NODE": gpus,
            }
        )
    return env
