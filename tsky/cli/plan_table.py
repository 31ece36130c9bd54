"""SkyPilot's "Considered resources" table, printed by `tsky jobs launch` (and `--dryrun`) before submitting.

One row per (cloud, accelerator, spot/on-demand) group: its cheapest candidate, cheapest first; the
candidate the launch will try first is ticked in CHOSEN. For a pipeline, one table per task, then a
"Best plan" summary.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.text import Text

from tsky.contract.activity_io import PlanResult
from tsky.spec.requests import Candidate

CHECK = "✔"


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.1f}"


def _instance(c: Candidate) -> str:
    return c.instance_type + ("[Spot]" if c.use_spot else "")


def _size(value: float) -> str:
    # 0 means "not known before launch" (a k8s pod or an ssh node without a declared shape).
    return _num(value) if value else "-"


def considered_rows(result: PlanResult) -> list[tuple[Candidate, bool]]:
    """The rows to show and which one is chosen: the cheapest candidate per (cloud, accelerator, spot)
    group, plus the chosen candidate (the first one, which for `ordered` requests need not be the
    cheapest), sorted by cost."""
    if not result.candidates:
        return []
    chosen = result.candidates[0]
    groups: dict[tuple[str, str | None, float, bool], Candidate] = {}
    for c in result.candidates:
        key = (c.cloud, c.accelerator, c.accelerator_count, c.use_spot)
        if key not in groups or c.hourly_cost < groups[key].hourly_cost:
            groups[key] = c
    groups[(chosen.cloud, chosen.accelerator, chosen.accelerator_count, chosen.use_spot)] = chosen
    rows = sorted(groups.values(), key=lambda c: (c.hourly_cost, c.cloud))
    return [(c, c is chosen) for c in rows]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return " " + "   ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    rule = "-" * (sum(widths) + 3 * (len(widths) - 1) + 2)
    return [rule, line(headers), rule, *(line(r) for r in rows), rule]


def _nodes(num_nodes: int) -> str:
    return f"{num_nodes} node{'s' if num_nodes != 1 else ''}"


def render_plan(
    console: Console,
    task_name: str | None,
    num_nodes: int,
    result: PlanResult,
    *,
    in_pipeline: bool = False,
    not_enabled: Sequence[tuple[Candidate, str]] = (),
) -> None:
    """Print one task's "Considered resources" table, or why nothing fits.

    `in_pipeline` titles it "Considered resources for task 'x' (…)", as SkyPilot does for each task of
    a pipeline. `not_enabled`: offers of infra that is off here (with why), listed greyed, never chosen."""
    if result.infeasible_reason or not result.candidates:
        label = f" for task '{task_name}'" if in_pipeline and task_name else ""
        reason = result.infeasible_reason or "no candidates"
        console.print(Text(f"No resources{label} ({_nodes(num_nodes)}): {reason}", style="red"), soft_wrap=True)
        return
    title = (
        f"Considered resources for task '{task_name}' ({_nodes(num_nodes)}):"
        if in_pipeline and task_name
        else f"Considered resources ({_nodes(num_nodes)}):"
    )
    headers = ("INFRA", "INSTANCE", "vCPUs", "Mem(GB)", "GPUS", "COST ($)", "CHOSEN")
    rows = [
        (
            c.display_infra(),
            _instance(c),
            _size(c.vcpus),
            _size(c.memory_gb),
            c.accelerators_label(),
            f"{c.hourly_cost:.2f}",
            f"   {CHECK}" if chosen else "",
        )
        for c, chosen in considered_rows(result)
    ]
    greyed = [
        (c.display_infra(), _instance(c), _size(c.vcpus), _size(c.memory_gb), c.accelerators_label(),
         f"{c.hourly_cost:.2f}", "not enabled")
        for c, _ in not_enabled
    ]  # fmt: skip
    console.print(Text(title, style="bold"))
    lines = _table(headers, rows + greyed)
    for index, text in enumerate(lines):
        # The rule, header, rule, the chosen-among rows, then the greyed ones, then the closing rule.
        grey = 3 + len(rows) <= index < len(lines) - 1
        console.print(Text(text, style="dim" if grey else ""), soft_wrap=True)
    for c, reason in not_enabled:
        console.print(Text(f"{c.cloud}: not enabled: {reason}", style="dim"), soft_wrap=True)
    console.print()


def render_pipeline_plan(console: Console, tasks: Sequence[tuple[str, int, PlanResult]]) -> None:
    """Each task's table, then SkyPilot's "Best plan" summary (TASK, #NODES and the chosen place)."""
    for name, num_nodes, result in tasks:
        render_plan(console, name, num_nodes, result, in_pipeline=True)
    rows = []
    for name, num_nodes, result in tasks:
        if not result.candidates:
            rows.append((name, str(num_nodes), "-", "-", "-", "-", "-"))
            continue
        c = result.candidates[0]
        rows.append(
            (
                name,
                str(num_nodes),
                c.display_infra(),
                _instance(c),
                _size(c.vcpus),
                _size(c.memory_gb),
                c.accelerators_label(),
            )
        )
    console.print(Text("Best plan:", style="bold"))
    for text in _table(("TASK", "#NODES", "INFRA", "INSTANCE", "vCPUs", "Mem(GB)", "GPUS"), rows):
        console.print(Text(text), soft_wrap=True)
    console.print()
