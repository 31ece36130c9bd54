"""A Temporal workflow of your own that trains, then evaluates only if training succeeded, each step a
tsky managed job started as a child workflow (tsky.client.child).

    python examples/child_workflow.py                  # train, then eval: both jobs SUCCEEDED
    python examples/child_workflow.py --fail-training  # train FAILED: eval is never started

It uses the same tsky setup as `tsky jobs launch` ($TSKY_HOME/config.yaml; the embedded server and
worker are started if needed) and runs its own worker for this workflow on the task queue
`train-then-eval`. Both jobs appear in `tsky jobs queue`; cancelling (or terminating) this workflow
cancels the running job and tears its cluster down.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

from pydantic import BaseModel
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from tsky.client.child import ChildJob, execute_managed_job
    from tsky.contract.job import JobResult
    from tsky.spec.status import ManagedJobStatus

TASK_QUEUE = "train-then-eval"

# The seed pipeline's two tasks (examples/pipeline.yaml), as separate jobs: they share the bucket.
TRAIN = """\
name: train
envs:
  FAIL: "0"
  TRAIN_SECONDS: "5"
file_mounts:
  /checkpoint:
    name: tsky-train-eval-checkpoints
    store: local
run: |
  echo "Training..."
  sleep "$TRAIN_SECONDS"
  if [ "$FAIL" = 1 ]; then echo "Training diverged."; exit 1; fi
  echo "model trained by $SKYPILOT_TASK_ID" > /checkpoint/model
  echo "Saved /checkpoint/model"
"""

EVAL = """\
name: eval
file_mounts:
  /checkpoint:
    name: tsky-train-eval-checkpoints
    store: local
run: |
  echo "Evaluating:"
  cat /checkpoint/model
"""


class TrainThenEvalInput(BaseModel):
    train: ChildJob
    evaluate: ChildJob


class TrainThenEvalResult(BaseModel):
    train: JobResult
    evaluate: JobResult | None = None  # None: training did not succeed, so nothing was evaluated


@workflow.defn
class TrainThenEval:
    @workflow.run
    async def run(self, inp: TrainThenEvalInput) -> TrainThenEvalResult:
        train = await execute_managed_job(inp.train)
        if train.status is not ManagedJobStatus.SUCCEEDED:
            workflow.logger.info("training ended %s: skipping evaluation", train.status.value)
            return TrainThenEvalResult(train=train)
        return TrainThenEvalResult(train=train, evaluate=await execute_managed_job(inp.evaluate))


def _describe(label: str, result: JobResult | None) -> str:
    if result is None:
        return f"{label}: not run"
    attempts = sum(len(t.attempts) for t in result.tasks)
    tasks = ", ".join(f"{t.name} {t.status.value}" for t in result.tasks)
    return f"{label}: job {result.job_id} {result.status.value} ({tasks}; {attempts} attempt(s))"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fail-training", action="store_true", help="make the training job fail")
    parser.add_argument("--train-seconds", type=int, default=5, help="how long training takes")
    parser.add_argument("--id", default=None, help="workflow id (default: train-then-eval-<random>)")
    args = parser.parse_args()

    from temporalio.client import WorkflowFailureError
    from temporalio.worker import Worker

    from tsky.cli.common import client_for
    from tsky.spec.settings import load_settings
    from tsky.worker.main import workflow_runner

    settings = load_settings()
    client = await client_for(settings)  # the embedded stack, or the Temporal cluster of config.yaml
    inp = TrainThenEvalInput(
        train=ChildJob.load(
            TRAIN,
            env_overrides={"FAIL": "1" if args.fail_training else "0", "TRAIN_SECONDS": str(args.train_seconds)},
        ),
        evaluate=ChildJob.load(EVAL),
    )
    workflow_id = args.id or f"train-then-eval-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=TASK_QUEUE, workflows=[TrainThenEval], workflow_runner=workflow_runner()):
        print(f"Started workflow {workflow_id}", flush=True)
        try:
            result = await client.execute_workflow(TrainThenEval.run, inp, id=workflow_id, task_queue=TASK_QUEUE)
        except WorkflowFailureError as err:
            print(f"Workflow {workflow_id} ended: {err.cause}", flush=True)
            return 1
    print(_describe("train", result.train))
    print(_describe("eval", result.evaluate))
    return 0 if result.evaluate is not None and result.evaluate.status is ManagedJobStatus.SUCCEEDED else 1


if __name__ == "__main__":
    import os
    import sys

    code = asyncio.run(main())
    sys.stdout.flush()
    os._exit(code)  # a process that used the Temporal client can abort at exit (sdk-python#300)
