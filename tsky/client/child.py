"""Managed jobs as child workflows of your own Temporal workflows.

A workflow of yours starts a tsky managed job (one task or a pipeline) as a child and awaits a typed
`JobResult`: the final status, each task's status, recoveries and attempts. The job is an ordinary tsky
job: a normal id (`tsky-job-<n>`, from the same allocator as `tsky jobs launch`), listed by
`tsky jobs queue`, followed by `tsky jobs logs`, cancellable by `tsky jobs cancel`.

    from tsky.client.child import ChildJob, execute_managed_job

    @workflow.defn
    class TrainThenEval:
        @workflow.run
        async def run(self, train: ChildJob, evaluate: ChildJob) -> str:
            result = await execute_managed_job(train)
            if result.status is not ManagedJobStatus.SUCCEEDED:
                return f"training ended {result.status}"
            return (await execute_managed_job(evaluate)).status.value

    # outside the workflow (it reads files): ChildJob.load("train.yaml")

Requirements: your workflow runs in the same namespace as tsky's workers (children live in their parent's
namespace), and its client and worker use tsky's pydantic data converter (`tsky.client.connect.connect`).
Pass tsky's spec through the sandbox: `tsky.worker.main.workflow_runner()` does.

Why these choices:
- Job ids: a workflow cannot send the id registry an update, so an activity on tsky's worker
  (`allocate_job_id`) does, with an update id derived from the workflow's deterministic uuid.
- `parent_close_policy=REQUEST_CANCEL`: a job owns clusters. If the parent is terminated (or times out),
  the job is asked to cancel and tears its clusters down. The default, TERMINATE, would kill the job
  workflow without its teardown and leak the clusters; ABANDON would leave it running unwatched.
- Cancelling the parent while it awaits a job cancels the job (WAIT_CANCELLATION_COMPLETED: the parent
  resumes only once the job's clusters are gone), then the parent's cancellation continues.
- A job cancelled from outside (`tsky jobs cancel`) is not the parent's failure: its result (status
  CANCELLED, per-task statuses) is returned like any other ending.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from temporalio import workflow
from temporalio.exceptions import ChildWorkflowError, is_cancelled_exception
from temporalio.workflow import ChildWorkflowHandle

with workflow.unsafe.imports_passed_through():
    import tsky.workflows.job_children as job_children
    from tsky.contract.activity_io import ActivityName, JobResultInput
    from tsky.contract.ids import CONTROL_QUEUE
    from tsky.contract.job import JobRequest, JobResult
    from tsky.contract.orchestration import Orchestration
    from tsky.spec.storage import UploadLocation
    from tsky.spec.task import Pipeline

__all__ = ["ChildJob", "ManagedJobHandle", "execute_managed_job", "start_managed_job"]


class ChildJob(BaseModel):
    """A managed job ready to be started from a workflow: the pipeline, its secrets sealed (task secrets
    never travel in clear through Temporal), its local files uploaded. Build it outside workflow code
    with `ChildJob.load(...)`; pass it to your workflow as (part of) its input."""

    model_config = ConfigDict(extra="forbid")

    pipeline: Pipeline
    sealed_secrets: list[dict[str, str]] = []  # per task, see tsky.spec.secrets
    uploads: list[UploadLocation] = []  # removed when the job ends
    name: str | None = None  # the job's name; default: the pipeline's
    user: str | None = None  # shown in `tsky jobs queue`; default: the tsky worker's user
    priority: int = 0
    # Dependencies, notifications, the schedule that starts it (tsky.contract.orchestration).
    orchestration: Orchestration = Orchestration()

    @classmethod
    def load(
        cls,
        source: str | Path | Pipeline,
        *,
        env_overrides: dict[str, str] | None = None,
        secret_overrides: dict[str, str] | None = None,
        name: str | None = None,
        user: str | None = None,
    ) -> ChildJob:
        """A task or pipeline YAML made ready to start from a workflow.

        Reads files, the secret key and the settings of `$TSKY_HOME`, and uploads local workdir and file
        mounts as `tsky jobs launch` does: never call it inside a workflow.

        Args:
            source: A YAML path, YAML text, or an already loaded `Pipeline`.
            env_overrides: Values for the tasks' `envs` (like `--env`).
            secret_overrides: Values for the tasks' `secrets` (like `--secret`); sealed here.
            name: The job's name; default: the pipeline's.
            user: Shown in `tsky jobs queue`; default: the current user.

        Returns:
            The job, to pass to your workflow as (part of) its input.

        Raises:
            tsky.spec.errors.SpecError: The YAML is invalid (the message names the field).
            tsky.ops.uploads.UploadError: Local files could not be uploaded.
        """
        import getpass
        import socket
        import uuid

        from tsky.contract.ids import user_hash
        from tsky.ops.uploads import Uploader
        from tsky.spec.loader import load_pipeline
        from tsky.spec.secrets import load_key, seal
        from tsky.spec.settings import load_settings

        settings = load_settings()
        if isinstance(source, Pipeline):
            pipeline = source
        else:
            pipeline = load_pipeline(source, env_overrides=env_overrides, secret_overrides=secret_overrides)
        who = user or getpass.getuser()
        uploader = Uploader(settings, pipeline, user=who, user_hash=user_hash(who, socket.gethostname()))
        pipeline, uploads = uploader.upload(f"child-{uuid.uuid4().hex[:8]}")
        key = load_key(settings.home, create=True) if any(t.secrets for t in pipeline.tasks) else None
        sealed = [seal(t.secrets, key) if t.secrets and key is not None else {} for t in pipeline.tasks]
        return cls(pipeline=pipeline, sealed_secrets=sealed, uploads=uploads, name=name, user=user)


@dataclass
class ManagedJobHandle:
    """A managed job started by this workflow."""

    job_id: int
    workflow_id: str
    _handle: ChildWorkflowHandle[object, JobResult]

    async def result(self) -> JobResult:
        """Wait for the job to end.

        Returns:
            The job's result. A job cancelled from outside (`tsky jobs cancel`) returns its final state
            (CANCELLED); it is not this workflow's failure.

        Raises:
            asyncio.CancelledError: This workflow was cancelled meanwhile; the job was cancelled and
                its clusters torn down first.
        """
        try:
            return await self._handle
        except ChildWorkflowError as err:
            if not is_cancelled_exception(err) or workflow.cancellation_reason() is not None:
                raise
        return await workflow.execute_activity(
            ActivityName.JOB_RESULT,
            JobResultInput(job_id=self.job_id),
            result_type=JobResult,
            task_queue=CONTROL_QUEUE,
            start_to_close_timeout=job_children.ACTIVITY_TIMEOUT,
            retry_policy=job_children.ACTIVITY_RETRY,
        )

    def cancel(self) -> None:
        """Ask the job to cancel (like `tsky jobs cancel`); `result()` then returns it CANCELLED."""
        self._handle.cancel()


async def start_managed_job(job: ChildJob) -> ManagedJobHandle:
    """Start a managed job as a child of the current workflow (call it from workflow code only).

    The job gets an ordinary id from the same allocator as `tsky jobs launch`, and shows in
    `tsky jobs queue`, `logs` and `cancel` like any other.

    Args:
        job: The job, prepared outside the workflow with `ChildJob.load`.

    Returns:
        A handle to await its result or cancel it; returned once the job has started.
    """
    alloc = await job_children.allocate_job_id("allocate a tsky job id")
    req = JobRequest(
        job_id=alloc.job_id,
        name=job.name or job.pipeline.name,
        pipeline=job.pipeline,
        user=job.user or alloc.user,
        user_hash=alloc.user_hash,
        submitted_at=workflow.now(),
        sealed_secrets=job.sealed_secrets,
        priority=job.priority,
        policy=alloc.policy,
        uploads=job.uploads,
        orchestration=job.orchestration,
    )
    handle = await job_children.start_job(req)
    return ManagedJobHandle(job_id=req.job_id, workflow_id=handle.id, _handle=handle)


async def execute_managed_job(job: ChildJob) -> JobResult:
    """Start a managed job as a child of the current workflow and wait for it to end.

    Args:
        job: The job, prepared outside the workflow with `ChildJob.load`.

    Returns:
        Its result: the final status, each task's status, recoveries and attempts.
    """
    return await (await start_managed_job(job)).result()
