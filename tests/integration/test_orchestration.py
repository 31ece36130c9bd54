"""Issue 18 end to end through the CLI (real dev server, real worker, local backend): scheduled jobs,
`--after` dependencies, relaunching a failed pipeline, webhook notifications."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.harness import TskyEnv, WorkerProc, wait_until
from tests.integration.test_jobs_cli import queue_json, wait_status

pytestmark = pytest.mark.integration

QUICK = "name: tick\nrun: echo tick\n"


def schedule_runs(env: TskyEnv, name: str) -> list[dict[str, object]]:
    result = env.tsky("jobs", "queue", "--json", "-a", "--schedule", name)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_schedule_every_5s_launches_tagged_jobs_until_it_is_deleted(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    project = tsky_env.home.parent / "project"
    project.mkdir()
    (project / "hello.txt").write_text("hello from the workdir\n")
    job = tsky_env.write("tick.yaml", f"name: tick\nworkdir: {project}\nrun: cat hello.txt\n")
    created = tsky_env.tsky("jobs", "schedule", "create", "ticker", str(job), "--every", "5s")
    assert created.returncode == 0, created.stdout + created.stderr
    assert "Schedule 'ticker' created: every 5s" in created.stdout
    (project / "hello.txt").write_text("changed after the schedule was created\n")  # runs use the schedule's copy

    listed = tsky_env.tsky("jobs", "schedule", "list")
    assert "ticker" in listed.stdout and "every 5s" in listed.stdout and "ACTIVE" in listed.stdout

    # Each run is an ordinary managed job, tagged with the schedule, that runs to its end.
    runs = wait_until(lambda: len(r := schedule_runs(tsky_env, "ticker")) >= 2 and r, timeout=120, what="2 runs")
    assert all(r["schedule"] == "ticker" and r["name"] == "tick" for r in runs)
    first = min(int(str(r["job_id"])) for r in runs)
    wait_status(tsky_env, first, "SUCCEEDED")
    assert "hello from the workdir" in tsky_env.tsky("jobs", "logs", str(first), "--no-follow").stdout
    unrelated = tsky_env.tsky("jobs", "launch", "-y", "-d", "-n", "other", "echo", "hi")
    assert unrelated.returncode == 0, unrelated.stderr
    assert all(r["name"] == "tick" for r in schedule_runs(tsky_env, "ticker"))

    described = tsky_env.tsky("jobs", "schedule", "describe", "ticker")
    assert described.returncode == 0, described.stderr
    assert "Overlap:         skip" in described.stdout and "Latest jobs:" in described.stdout

    deleted = tsky_env.tsky("jobs", "schedule", "delete", "ticker")
    assert deleted.returncode == 0, deleted.stderr
    count = len(schedule_runs(tsky_env, "ticker"))
    time.sleep(12)  # two more periods: a live schedule would have started more runs
    ran = schedule_runs(tsky_env, "ticker")
    assert len(ran) == count
    assert tsky_env.tsky("jobs", "schedule", "describe", "ticker").returncode == 102
    assert "No schedules" in tsky_env.tsky("jobs", "schedule", "list").stdout
    # The schedule's copy of the files went with it; each job removed its own copy when it ended.
    for r in ran:
        wait_status(tsky_env, int(str(r["job_id"])), "SUCCEEDED")
    uploads = tsky_env.home / "uploads"
    wait_until(lambda: not uploads.exists() or not any(uploads.iterdir()), timeout=30, what="no uploads left")


def test_bad_schedule_input_exits_2_and_creates_nothing(tsky_env: TskyEnv) -> None:
    job = tsky_env.write("tick.yaml", QUICK)
    both = tsky_env.tsky("jobs", "schedule", "create", "x", str(job), "--every", "5s", "--cron", "0 3 * * *")
    assert both.returncode == 2 and "exactly one of --cron" in both.stderr
    zone = tsky_env.tsky("jobs", "schedule", "create", "x", str(job), "--cron", "0 3 * * *", "--timezone", "Mars/Base")
    assert zone.returncode == 2 and "--timezone 'Mars/Base'" in zone.stderr
    overlap = tsky_env.tsky("jobs", "schedule", "create", "x", str(job), "--every", "1h", "--overlap", "never")
    assert overlap.returncode == 2 and "skip, buffer-one, allow-all" in overlap.stderr
    assert "Traceback" not in both.stderr + zone.stderr + overlap.stderr
    assert "No schedules" in tsky_env.tsky("jobs", "schedule", "list").stdout


def test_a_schedule_is_paused_unpaused_and_unknown_ones_are_not_found(tsky_env: TskyEnv) -> None:
    job = tsky_env.write("tick.yaml", QUICK)
    created = tsky_env.tsky(
        "jobs", "schedule", "create", "nightly", str(job), "--cron", "0 3 * * *", "--timezone", "Europe/Paris",
        "--paused", "--overlap", "buffer-one",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert re.search(r"nightly\s+tick\s+\S+\s+cron '0 3 \* \* \*' \(Europe/Paris\)\s+PAUSED", schedules(tsky_env))
    assert tsky_env.tsky("jobs", "schedule", "unpause", "nightly").returncode == 0
    assert "ACTIVE" in schedules(tsky_env)
    assert tsky_env.tsky("jobs", "schedule", "pause", "nightly").returncode == 0
    described = tsky_env.tsky("jobs", "schedule", "describe", "nightly").stdout
    assert "Overlap:         buffer-one" in described and "PAUSED (paused with tsky jobs schedule pause)" in described
    again = tsky_env.tsky("jobs", "schedule", "create", "nightly", str(job), "--every", "1h")
    assert again.returncode == 2 and "exists already" in again.stderr
    no_pool = tsky_env.tsky("jobs", "schedule", "create", "pooled", str(job), "--every", "1h", "--pool", "nope")
    assert no_pool.returncode == 102 and "Pool 'nope' not found" in no_pool.stderr
    for verb in ("pause", "unpause", "trigger", "delete", "describe"):
        missing = tsky_env.tsky("jobs", "schedule", verb, "nope")
        assert missing.returncode == 102 and "No schedule named 'nope'" in missing.stderr


def schedules(env: TskyEnv) -> str:
    listed = env.tsky("jobs", "schedule", "list")
    assert listed.returncode == 0, listed.stderr
    return listed.stdout


def test_a_job_after_a_failed_one_waits_then_ends_cancelled_with_the_reason(
    tsky_env: TskyEnv, worker: WorkerProc
) -> None:
    first = tsky_env.tsky("jobs", "launch", "-y", "-d", "-n", "first", "sleep 10; exit 1")
    assert first.returncode == 0, first.stderr
    second = tsky_env.tsky("jobs", "launch", "-y", "-d", "-n", "second", "--after", "1", "echo never")
    assert second.returncode == 0, second.stderr

    def waiting() -> bool:
        job = next(j for j in queue_json(tsky_env) if j["job_id"] == 2)
        return job["status"] == "PENDING" and job["tasks"][0]["details"] == "Waiting for job 1"  # type: ignore[index]

    wait_until(waiting, timeout=60, what="job 2 waiting for job 1")
    wait_status(tsky_env, 2, "CANCELLED")
    job = next(j for j in queue_json(tsky_env) if j["job_id"] == 2)
    assert "Job 1 (--after) ended FAILED" in str(job["tasks"][0]["failure_reason"])  # type: ignore[index]
    assert job["after"] == [1]
    assert not (tsky_env.home / "logs" / "jobs" / "2" / "task-0").exists()  # nothing ran

    missing = tsky_env.tsky("jobs", "launch", "-y", "-d", "--after", "99", "echo x")
    assert missing.returncode == 102 and "no managed job 99" in missing.stderr
    bad = tsky_env.tsky("jobs", "launch", "-y", "-d", "--after", "one", "echo x")
    assert bad.returncode == 2 and "--after 'one'" in bad.stderr


def test_a_pipeline_failed_at_its_second_task_is_relaunched_and_runs_tasks_2_and_3_only(
    tsky_env: TskyEnv, worker: WorkerProc
) -> None:
    out, mark = tsky_env.home / "ran.txt", tsky_env.home / "fixed"
    pipeline = tsky_env.write(
        "pipe.yaml",
        f"name: pipe\n---\nname: prep\nrun: echo prep >> {out}\n---\nname: train\n"
        f"run: echo train >> {out}; test -f {mark}\n---\nname: eval\nrun: echo eval >> {out}\n",
    )
    failed = tsky_env.tsky("jobs", "launch", "-y", str(pipeline))
    assert failed.returncode != 0
    wait_status(tsky_env, 1, "FAILED")
    assert out.read_text().split() == ["prep", "train"]

    still = tsky_env.tsky("jobs", "relaunch", "1", "--from-task", "2")
    assert still.returncode == 2 and "task 1 of job 1 ended FAILED" in still.stderr
    mark.touch()
    relaunched = tsky_env.tsky("jobs", "relaunch", "1")
    assert relaunched.returncode == 0, relaunched.stdout + relaunched.stderr
    assert "Managed job finished: 2 (status: SUCCEEDED)" in relaunched.stdout
    assert out.read_text().split() == ["prep", "train", "train", "eval"]  # prep is not run again

    job = next(j for j in queue_json(tsky_env) if j["job_id"] == 2)
    tasks = job["tasks"]
    assert job["relaunch_of"] == 1 and [t["status"] for t in tasks] == ["SUCCEEDED"] * 3  # type: ignore[index]
    old = next(j for j in queue_json(tsky_env) if j["job_id"] == 1)
    assert [t["task_id"] for t in tasks] == [t["task_id"] for t in old["tasks"]]  # type: ignore[index]
    verbose = tsky_env.tsky("jobs", "queue", "-v")
    assert "(relaunch of job 1)" in verbose.stdout

    async def web_ui_details() -> str | None:
        client = await tsky_env.client()
        return await (await client.get_workflow_handle("tsky-job-2").describe()).static_details()

    assert "Relaunch of job **1** (tasks done there: 0)" in str(asyncio.run(web_ui_details()))
    done = tsky_env.tsky("jobs", "relaunch", "2")
    assert done.returncode == 2 and "nothing to resume" in done.stderr
    assert tsky_env.tsky("jobs", "relaunch", "42").returncode == 102


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 500 to its first `failures` POSTs."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.events: list[dict[str, object]] = []
        self.attempts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                if receiver.failures > 0:
                    receiver.failures -= 1
                    self.send_response(500)
                else:
                    receiver.events.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T0-secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=3)
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_a_webhook_gets_each_transition_in_order_despite_three_500s_and_never_sees_history(
    tsky_env: TskyEnv, worker: WorkerProc, receiver: Receiver
) -> None:
    launched = tsky_env.tsky("jobs", "launch", "-y", "-n", "hooked", "--notify", receiver.url, "echo hi")
    assert launched.returncode == 0, launched.stdout + launched.stderr
    wait_until(lambda: len(receiver.events) >= 3, timeout=90, what="three events")
    time.sleep(1)
    assert [(e["previous_status"], e["status"]) for e in receiver.events] == [
        ("PENDING", "STARTING"),
        ("STARTING", "RUNNING"),
        ("RUNNING", "SUCCEEDED"),
    ]
    assert receiver.attempts == 6  # three refused, then each event once
    last = receiver.events[-1]
    assert last["job_id"] == 1 and last["name"] == "hooked" and last["cost_so_far"] is None
    assert last["text"] == "tsky job 1 'hooked' RUNNING → SUCCEEDED"

    async def history_text() -> str:
        client = await tsky_env.client()
        history = await client.get_workflow_handle("tsky-job-1").fetch_history()
        return history.to_json()

    assert "secret-token" not in asyncio.run(history_text())
    controller = tsky_env.tsky("jobs", "logs", "--controller", "1", "--no-follow")
    assert "Job finished" in controller.stdout and "secret-token" not in controller.stdout
