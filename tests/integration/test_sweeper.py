"""The sweeper and `tsky status --all-infra`: real dev server, real worker, the local backend.

Leaked clusters are made directly through the local backend, tagged with a job id that never existed or
with the id of a job that has ended, exactly as a cloud cluster left behind by a failed teardown.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.harness import TskyEnv, wait_until
from tests.integration.test_jobs_cli import job_status, no_tagged_processes, wait_status
from tsky.contract.activity_io import ClusterInfo, JobMeta
from tsky.contract.ids import SWEEPER_WORKFLOW_ID
from tsky.ops.clouds.local import LocalBackend
from tsky.spec.requests import Candidate
from tsky.spec.settings import load_settings
from tsky.workflows.sweeper import SweeperState, SweeperWorkflow

pytestmark = pytest.mark.integration

KEEPER = """\
name: sweep-keeper
run: sleep 600
"""


def local_only(tmp: Path) -> dict[str, str]:
    """Environment for a worker that must see no cloud credentials or kubeconfig, whatever this host has."""
    missing = str(tmp / "missing")
    return {
        "KUBECONFIG": missing,
        "GOOGLE_APPLICATION_CREDENTIALS": "",
        "CLOUDSDK_CONFIG": missing,
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SHARED_CREDENTIALS_FILE": missing,
        "AWS_CONFIG_FILE": missing,
    }


def leak_cluster(env: TskyEnv, name: str, job_id: int) -> ClusterInfo:
    """A local cluster tagged with `job_id` and running a process, made outside any workflow."""
    backend = LocalBackend(load_settings(env.home))
    candidate = Candidate(cloud="local", region="local", instance_type="local", vcpus=1, memory_gb=1)
    meta = JobMeta(
        job_id=job_id, job_name=name, task_index=0, task_name=name, task_id=name, task_ids=[name], user="test"
    )

    async def make() -> ClusterInfo:
        info = await backend.provision(name, candidate, 1, meta)
        await backend.node(info, 0).start_phase("run-a0", "sleep 600", {})
        return info

    return asyncio.run(make())


def sweeper_state(env: TskyEnv) -> SweeperState:
    async def query() -> SweeperState:
        client = await env.client()
        return await client.get_workflow_handle(SWEEPER_WORKFLOW_ID).query(SweeperWorkflow.status)

    return asyncio.run(query())


def test_status_all_infra_shows_each_cluster_with_its_job(tsky_env: TskyEnv, tmp_path: Path) -> None:
    tsky_env.start_worker(extra_env=local_only(tmp_path))  # the sweeper is off (harness default)
    job = tsky_env.write("keeper.yaml", KEEPER)
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(job)).returncode == 0
    wait_status(tsky_env, 1, "RUNNING")
    leak_cluster(tsky_env, "ghost-4242", 4242)

    result = tsky_env.tsky("status", "--all-infra")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^NAME\s+JOB\s+JOB STATUS\s+JOB LIVE\s+INFRA", out, re.M), out
    assert re.search(r"^ghost-4242\s+4242\s+UNKNOWN \(no such job\)\s+no\s+local \(local\)\s+1\s", out, re.M), out
    assert re.search(r"^sweep-keeper-1\s+1\s+RUNNING\s+yes\s+local \(local\)\s+1\s", out, re.M), out
    assert "torn down by the sweeper" in out

    assert tsky_env.tsky("jobs", "cancel", "-y", "1").returncode == 0
    wait_status(tsky_env, 1, "CANCELLED")


def test_sweeper_tears_down_orphans_after_grace_and_never_touches_a_running_job(
    tsky_env: TskyEnv, tmp_path: Path
) -> None:
    tsky_env.configure({"jobs": {"sweeper": {"enabled": True, "interval_seconds": 1, "grace_seconds": 2}}})
    clusters = tsky_env.home / "clusters"
    leak_cluster(tsky_env, "ghost-4242", 4242)  # a job that never existed
    tsky_env.start_worker(extra_env=local_only(tmp_path))
    job = tsky_env.write("keeper.yaml", KEEPER)
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(job)).returncode == 0
    wait_status(tsky_env, 1, "RUNNING")

    wait_until(lambda: not (clusters / "ghost-4242").exists(), 60, what="the unknown job's cluster to be swept")
    assert no_tagged_processes("ghost-4242/")

    # Sweeps well past the grace period leave the running job's cluster alone.
    seen = sweeper_state(tsky_env).sweeps
    wait_until(lambda: sweeper_state(tsky_env).sweeps >= seen + 4, 60, what="four more sweeps")
    state = sweeper_state(tsky_env)
    assert (clusters / "sweep-keeper-1").exists()
    assert not any(key.endswith("/sweep-keeper-1") for key in state.orphans_since)
    assert job_status(tsky_env, 1) == "RUNNING"

    # A cluster of a job that has ended (its own teardown leaked it) goes too.
    assert tsky_env.tsky("jobs", "cancel", "-y", "1").returncode == 0
    wait_status(tsky_env, 1, "CANCELLED")
    leak_cluster(tsky_env, "leaked-1", 1)
    wait_until(lambda: not (clusters / "leaked-1").exists(), 60, what="the ended job's cluster to be swept")
    assert no_tagged_processes("leaked-1/")
    assert sweeper_state(tsky_env).torn_down == 2
    assert tsky_env.tsky("status").stdout.strip() == "No live clusters."


def test_sweeper_deletes_old_logs_of_ended_jobs_only(tsky_env: TskyEnv, tmp_path: Path) -> None:
    # Retention of ~1 s: an ended job's logs go at the next sweep; a running job's logs stay however old.
    tsky_env.configure(
        {"jobs": {"sweeper": {"enabled": True, "interval_seconds": 1}, "logs": {"retention_days": 1 / 86400}}}
    )
    tsky_env.start_worker(extra_env=local_only(tmp_path))
    keeper = tsky_env.write("keeper.yaml", KEEPER)
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(keeper)).returncode == 0
    wait_status(tsky_env, 1, "RUNNING")
    done = tsky_env.write("done.yaml", "name: done\nrun: echo finished\n")
    assert tsky_env.tsky("jobs", "launch", "-y", str(done)).returncode == 0
    logs = tsky_env.home / "logs" / "jobs"

    wait_until(lambda: not (logs / "2").exists(), 60, what="the ended job's logs to expire")
    seen = sweeper_state(tsky_env).sweeps
    wait_until(lambda: sweeper_state(tsky_env).sweeps >= seen + 3, 60, what="three more sweeps")
    assert (logs / "1" / "controller.log").exists()
    assert tsky_env.tsky("jobs", "cancel", "-y", "1").returncode == 0
    wait_status(tsky_env, 1, "CANCELLED")
