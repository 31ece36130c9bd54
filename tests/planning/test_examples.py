"""End to end from YAML: the seed examples planned through `Task.requests()`, in-process and through the
`plan_task` activity, and the "Considered resources" table they print."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from temporalio.testing import ActivityEnvironment

from tsky.activities.plan_activity import PlanningActivities
from tsky.cli.plan_table import render_pipeline_plan, render_plan
from tsky.contract.activity_io import JobMeta, PlanInput, PlanResult
from tsky.ops.catalog import Catalog
from tsky.ops.infra_check import InfraStatus
from tsky.ops.planning import plan_for_task
from tsky.spec.loader import load_pipeline
from tsky.spec.settings import Settings
from tsky.spec.task import Task

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CLOUDS = [
    InfraStatus(name="local", enabled=True, reason="simulated", regions=["local"]),
    InfraStatus(name="aws", enabled=True, reason="credentials from env"),
    InfraStatus(name="gcp", enabled=True, reason="credentials from file"),
]


def load_task(text: str) -> Task:
    (task,) = load_pipeline(text).tasks
    return task


def printed(render: object, *args: object, **kwargs: object) -> str:
    out = io.StringIO()
    render(Console(file=out, width=200), *args, **kwargs)  # type: ignore[operator]
    return out.getvalue()


def test_bert_qa_runs_on_the_cheapest_spot_v100(catalog: Catalog, settings: Settings) -> None:
    (task,) = load_pipeline(EXAMPLES / "bert_qa.yaml").tasks
    result = plan_for_task(task, settings, CLOUDS)
    spot_v100 = [o for o in catalog.offers if o.accelerator == "V100" and o.accelerator_count == 1]
    best = min(spot_v100, key=lambda o: o.spot_price or 0.0)
    chosen = result.candidates[0]
    assert (chosen.cloud, chosen.instance_type, chosen.use_spot) == (best.cloud, best.instance_type, True)
    assert chosen.price_per_node_hour == best.spot_price
    table = printed(render_plan, task.name, task.num_nodes, result)
    assert table.splitlines()[0] == "Considered resources (1 node):"
    header = table.splitlines()[2].split()
    assert header == ["INFRA", "INSTANCE", "vCPUs", "Mem(GB)", "GPUS", "COST", "($)", "CHOSEN"]
    rows = [line for line in table.splitlines() if "[Spot]" in line]
    # The cheapest row per cloud, cheapest first, the first one ticked.
    assert len(rows) == 2 and "GCP" in rows[0] and "AWS" in rows[1]
    assert rows[0].rstrip().endswith("✔") and "✔" not in rows[1]
    assert "n1-highmem-8[Spot]" in rows[0] and f"{chosen.hourly_cost:.2f}" in rows[0]


def test_gpu_set_takes_the_cheapest_gpu(settings: Settings) -> None:
    task = load_task("resources:\n  accelerators: {L4: 1, A10G: 1, T4: 1}\nrun: nvidia-smi\n")
    result = plan_for_task(task, settings, CLOUDS)
    chosen = result.candidates[0]
    assert (chosen.cloud, chosen.instance_type, chosen.accelerator) == ("aws", "g4dn.xlarge", "T4")
    table = printed(render_plan, task.name, 1, result)
    assert {"T4:1", "L4:1", "A10G:1"} <= set(table.split())


def test_impossible_yaml_fails_fast(settings: Settings) -> None:
    task = load_task("resources:\n  accelerators: H100:16\nrun: train\n")
    result = plan_for_task(task, settings, CLOUDS)
    assert result.candidates == []
    assert (result.infeasible_reason or "").startswith("No enabled infra offers H100:16 per node")
    assert "No resources (1 node): No enabled infra offers H100:16" in printed(render_plan, "t", 1, result)


def test_pipeline_tables(settings: Settings) -> None:
    first = load_task("name: prep\nresources:\n  cpus: 1+\nrun: prep\n")
    second = load_task("name: train\nnum_nodes: 2\nresources:\n  accelerators: A100:8\nrun: train\n")
    plans = [(t.name or "", t.num_nodes, plan_for_task(t, settings, CLOUDS)) for t in (first, second)]
    text = printed(render_pipeline_plan, plans)
    assert "Considered resources for task 'prep' (1 node):" in text
    assert "Considered resources for task 'train' (2 nodes):" in text
    best = text[text.index("Best plan:") :].splitlines()
    assert best[2].split()[:2] == ["TASK", "#NODES"]
    assert best[4].split()[:4] == ["prep", "1", "Local", "(local)"]
    assert best[5].split()[:2] == ["train", "2"] and "p4d.24xlarge" in best[5]


@pytest.mark.asyncio
async def test_the_plan_activity_runs_the_same_planner(offline: dict[str, str], settings: Settings) -> None:
    task = load_task("name: hi\nresources:\n  cpus: 1+\nrun: echo hi\n")
    meta = JobMeta(job_id=1, job_name="hi", task_index=0, task_name="hi", task_id="t", task_ids=["t"], user="me")
    result = await ActivityEnvironment().run(PlanningActivities(settings).plan_task, PlanInput(meta=meta, task=task))
    assert isinstance(result, PlanResult)
    # Offline, only the local simulator is enabled.
    assert {c.cloud for c in result.candidates} == {"local"}
    assert result == plan_for_task(task, settings)
