"""A ManagedJob's clean-up: its cluster after each task (or its pool worker given back), and on every
ending the job's uploads and ephemeral buckets. Each is shielded: a cancel arriving meanwhile waits for
it, then proceeds. A new thing a job must remove when it ends goes here.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    import tsky.workflows.cluster_lifecycle as lifecycle
    from tsky.contract.activity_io import ActivityName, CleanupJobInput
    from tsky.contract.ids import LAUNCH_QUEUE
    from tsky.contract.job import TaskState
    from tsky.spec.status import ManagedJobStatus
    from tsky.spec.storage import BucketRef, is_url, parse_bucket_url, storage_store
    from tsky.spec.task import Storage
    from tsky.workflows.job_state import JobRun
    from tsky.workflows.pool_lease import release_worker
    from tsky.workflows.shield import shielded


async def release_cluster(run: JobRun, ts: TaskState, lost: bool = False) -> None:
    """Tear down the task's cluster (or what a launch in flight may have made). A pool worker is given
    back instead (`lost`: it was preempted or unreachable under the job, so the pool replaces it). Past
    the give-up window the task ends FAILED_CONTROLLER; the sweeper keeps trying."""
    if run.req.pool is not None:
        await release_worker(run, ts, lost)
        return
    if not run.hold.teardown_targets():
        return
    failed: list[tuple[str, ActivityError]] = []

    async def teardown_all() -> None:
        failed.extend(await lifecycle.teardown(run.calls, run.hold, lambda name: run.log(f"Cluster {name} torn down.")))

    try:
        await shielded(teardown_all)
    finally:  # also when a cancel arrived meanwhile: the leak is the news
        if failed:
            names = ", ".join(name for name, _ in failed)
            run.finish(
                ts,
                ManagedJobStatus.FAILED_CONTROLLER,
                f"Failed to clean up {names}, resources may have leaked: {failed[0][1].cause}",
            )


def _ephemeral_buckets(run: JobRun) -> list[BucketRef]:
    """The `persistent: false` buckets tsky made for the job (a bucket named by a source URL is
    someone else's and stays). A store left to the infra is the one of each backend a task ran on."""
    refs: list[BucketRef] = []
    for task, ts in zip(run.req.pipeline.tasks, run.job.tasks, strict=True):
        backends = sorted({a.candidate.cloud for a in ts.attempts if a.candidate is not None})
        for storage in task.file_mounts.values():
            if not isinstance(storage, Storage) or storage.persistent or storage.name is None:
                continue
            source = storage.source if isinstance(storage.source, str) else None
            if source is not None and is_url(source):
                try:
                    where = parse_bucket_url(source)
                except ValueError:
                    continue
                if where.bucket == storage.name:  # the local source the CLI uploaded into `name`
                    refs.append(BucketRef(store=where.store, name=where.bucket))
            elif storage.store:
                refs.append(BucketRef(store=storage.store, name=storage.name))
            else:
                refs += [BucketRef(store=storage_store(storage, b), name=storage.name) for b in backends]
    return list(dict.fromkeys(refs))


async def cleanup_job(run: JobRun) -> None:
    """Remove the job's uploads and ephemeral buckets, once its clusters are gone. A failure is logged,
    never changes the job's status."""
    work = CleanupJobInput(job_id=run.req.job_id, uploads=run.req.uploads, buckets=_ephemeral_buckets(run))
    if not work.uploads and not work.buckets:
        return

    async def cleanup() -> None:
        await run.calls(
            ActivityName.CLEANUP_JOB,
            work,
            type(None),
            LAUNCH_QUEUE,
            timeout=lifecycle.TEARDOWN_TIMEOUT,
            heartbeat=run.calls.heartbeat,
            retry=lifecycle.TEARDOWN_RETRY,
            schedule_to_close=lifecycle.TEARDOWN_GIVE_UP,
        )

    try:
        await shielded(cleanup)
        run.log("Cleaned up the job's uploaded files and ephemeral buckets.")
    except ActivityError as err:
        if is_cancelled_exception(err):
            raise
        run.log(f"Could not clean up the job's uploads/buckets, they may have leaked: {err.cause or err}")
    await run.publish()  # a cancelled job publishes nothing after this
