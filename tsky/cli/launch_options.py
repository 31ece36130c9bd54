"""The options `tsky jobs launch` shares with `tsky jobs schedule create` (SkyPilot's names), defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

EnvOption = Annotated[list[str] | None, typer.Option("--env", help="KEY=VALUE, or KEY to take it from here.")]
EnvFileOption = Annotated[Path | None, typer.Option("--env-file", help="A dotenv file of envs.")]
SecretOption = Annotated[list[str] | None, typer.Option("--secret", help="KEY=VALUE, or KEY from here.")]
SecretFileOption = Annotated[Path | None, typer.Option("--secret-file", help="A dotenv file of secrets.")]
InfraOption = Annotated[
    str | None, typer.Option("--infra", help="aws, aws/us-east-1, gcp/*/us-central1-a, k8s/CTX, ssh/POOL, local.")
]
UseSpotOption = Annotated[bool | None, typer.Option("--use-spot/--no-use-spot", help="Use spot instances.")]
CpusOption = Annotated[str | None, typer.Option("--cpus", help="vCPUs per node: N or N+.")]
MemoryOption = Annotated[str | None, typer.Option("--memory", help="Memory per node in GB: N or N+.")]
GpusOption = Annotated[str | None, typer.Option("--gpus", help="Accelerators per node, e.g. A100:8.")]
InstanceTypeOption = Annotated[str | None, typer.Option("--instance-type", "-t", help="Instance type.")]
NumNodesOption = Annotated[int | None, typer.Option("--num-nodes", help="Number of nodes.")]
DiskSizeOption = Annotated[int | None, typer.Option("--disk-size", help="Boot disk size in GB.")]
DiskTierOption = Annotated[str | None, typer.Option("--disk-tier", help="low, medium, high, ultra, best or none.")]
NetworkTierOption = Annotated[str | None, typer.Option("--network-tier", help="standard, best or none.")]
PortsOption = Annotated[
    list[str] | None, typer.Option("--ports", help="Ports to open: 8080, 8000-8010 or 80,443 (repeatable).")
]
ImageIdOption = Annotated[str | None, typer.Option("--image-id", help="ami-..., a GCE image, docker:IMAGE.")]
PriorityOption = Annotated[
    str | None, typer.Option("--priority", help="-1000..1000: higher runs first when jobs wait for a slot.")
]
PoolOption = Annotated[str | None, typer.Option("--pool", "-p", help="Run on a pool's workers.")]
GitUrlOption = Annotated[str | None, typer.Option("--git-url", help="Make the workdir a checkout of this repo.")]
GitRefOption = Annotated[str | None, typer.Option("--git-ref", help="Branch, tag or commit of the git workdir.")]
JobRecoveryOption = Annotated[
    str | None, typer.Option("--job-recovery", help="Recovery strategy (replaces the YAML's job_recovery).")
]
ConfigOption = Annotated[
    list[str] | None,
    typer.Option("--config", help="Settings for this job: a YAML file, or key.path=value (repeatable)."),
]
NotifyOption = Annotated[
    list[str] | None, typer.Option("--notify", help="POST each status change to this webhook URL (repeatable).")
]
