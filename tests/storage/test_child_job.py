"""`ChildJob.load`: what a user's starter does outside its workflow before starting a managed job as a
child: secrets sealed (never in clear in Temporal payloads), local files uploaded like the CLI's."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsky.client.child import ChildJob
from tsky.spec.secrets import load_key, unseal


def test_load_seals_secrets_and_uploads_local_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("TSKY_HOME", str(home))
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("print('hi')\n")
    job = ChildJob.load(
        f"name: train\nworkdir: {project}\nsecrets:\n  HF_TOKEN: null\nrun: python train.py\n",
        secret_overrides={"HF_TOKEN": "hf-123"},
    )
    payload = job.model_dump_json()
    assert "hf-123" not in payload  # redacted in the pipeline, sealed beside it
    assert unseal(job.sealed_secrets[0], load_key(home, create=False)) == {"HF_TOKEN": "hf-123"}
    # Two-hop (no object store here): the job refers to its copy in the worker's file store.
    workdir = job.pipeline.tasks[0].workdir
    assert isinstance(workdir, str) and workdir.startswith(str(home / "uploads" / "job-child-"))
    assert (Path(workdir) / "train.py").read_text() == "print('hi')\n"
    assert [u.path for u in job.uploads] == [str(Path(workdir).parent)]
    assert ChildJob.model_validate_json(payload).sealed_secrets == job.sealed_secrets
