"""Pipelines end to end through the CLI: tasks in order on fresh clusters, data passed through a bucket
mounted at /checkpoint, failure and cancel semantics, preemption and worker crashes mid-pipeline."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import EXAMPLES, TskyEnv, WorkerProc

pytestmark = pytest.mark.integration


@pytest.fixture
def host_checkpoint() -> Iterator[None]:
    """The seed's pipeline mounts a bucket at /checkpoint. A mount point missing on the host is created
    (empty) by the job; the test removes it again if it made it, and checks the host saw no data."""
    path = Path("/checkpoint")
    existed = path.exists()
    yield
    if not existed and path.is_dir():
        assert not any(path.iterdir()), "the job's files leaked into the host's /checkpoint"
        path.rmdir()


def rows(env: TskyEnv, job_id: int) -> list[str]:
    """The lines of `tsky jobs queue` for one job: the pipeline row and its ` ↳` rows."""
    out = env.tsky("jobs", "queue").stdout
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"^{job_id}\s", line))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith(" ↳"):
            break
        block.append(line)
    return block


def test_seed_pipeline_passes_the_checkpoint_through_a_bucket(
    tsky_env: TskyEnv, worker: WorkerProc, host_checkpoint: None
) -> None:
    result = tsky_env.tsky("jobs", "launch", "-y", str(EXAMPLES / "pipeline.yaml"))
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Managed job finished: 1 (status: SUCCEEDED)." in out
    # eval read what train wrote, through /checkpoint (a `local` bucket bound in each job's namespace)
    train_id = re.search(r"\(train, pid=\d+\) Saved /checkpoint/model", out)
    assert train_id, out
    model = re.search(r"\(eval, pid=\d+\) model trained by (sky-managed-\S+_train-eval_train_1-0)", out)
    assert model, out
    block = rows(tsky_env, 1)
    assert len(block) == 3 and "SUCCEEDED" in block[0], block
    assert re.search(r"↳\s+0\s+train\s.*SUCCEEDED", block[1]) and re.search(r"↳\s+1\s+eval\s.*SUCCEEDED", block[2])
    bucket = tsky_env.home / "buckets" / "tsky-train-eval-checkpoints"
    assert (bucket / "model").read_text().strip() == f"model trained by {model.group(1)}"
    # each task ran on its own cluster, torn down when it ended
    controller = tsky_env.tsky("jobs", "logs", "--controller", "1").stdout
    assert "Cluster train-1 torn down." in controller and "Cluster eval-1-t1 torn down." in controller
    assert tsky_env.tsky("status").stdout.strip() == "No live clusters."
    # logs by task index or name
    eval_logs = tsky_env.tsky("jobs", "logs", "1", "eval", "--no-follow").stdout
    assert "model trained by" in eval_logs and "Training..." not in eval_logs
    train_logs = tsky_env.tsky("jobs", "logs", "1", "0", "--no-follow").stdout
    assert "Training..." in train_logs and "Evaluating" not in train_logs
