"""Helpers shared by the planner tests."""

from __future__ import annotations

import os
from pathlib import Path

from tsky.contract.activity_io import PlanResult
from tsky.ops.catalog import Catalog
from tsky.ops.infra_check import EnabledInfra, InfraStatus
from tsky.ops.planning import HostFacts, plan
from tsky.spec.requests import ResourceRequest
from tsky.spec.settings import Settings
from tsky.spec.task import TaskRequests

HOST = HostFacts(vcpus=4, memory_gb=16)
CLOUD_ENV_PREFIXES = ("AWS_", "GOOGLE_", "CLOUDSDK_", "KUBE")


def offline_env(tmp: Path) -> dict[str, str]:
    """os.environ minus every cloud credential, with config paths pointing into an empty directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLOUD_ENV_PREFIXES)}
    env.update(
        AWS_CONFIG_FILE=str(tmp / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        CLOUDSDK_CONFIG=str(tmp / "no-gcloud"),
        KUBECONFIG=str(tmp / "no-kubeconfig"),
        TSKY_HOME=str(tmp / "home"),
    )
    return env


def enabled(*names: str) -> list[EnabledInfra]:
    return [EnabledInfra(cloud=name) for name in names]


def disabled(*names: str) -> list[InfraStatus]:
    return [InfraStatus(name=name, enabled=False, reason=f"no {name} credentials") for name in names]


def run(
    catalog: Catalog,
    settings: Settings,
    *options: ResourceRequest,
    num_nodes: int = 1,
    infra: list[EnabledInfra] | None = None,
    ordered: bool = False,
    off: list[InfraStatus] | None = None,
) -> PlanResult:
    return plan(
        TaskRequests(options=list(options), ordered=ordered),
        num_nodes,
        infra if infra is not None else enabled("aws", "gcp"),
        catalog,
        settings,
        host=HOST,
        disabled=off,
    )
