"""`tsky validate` as users run it: a subprocess, one line per file, exit 0 or 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
TSKY = Path(sys.executable).parent / "tsky"
EXAMPLES = sorted(ROOT.joinpath("examples").glob("*.yaml"))


def tsky(*args: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TSKY), "validate", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def test_every_example_validates() -> None:
    names = {path.name for path in EXAMPLES}
    assert {
        "hello_sky.yaml",
        "spot_job.yaml",
        "any_of.yaml",
        "pipeline.yaml",
        "pool.yaml",
        "batch.yaml",
        "bert_qa.yaml",
    } <= names
    result = tsky(*(path.relative_to(ROOT) for path in EXAMPLES))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "ok  examples/hello_sky.yaml  (1 task)" in lines
    assert "ok  examples/pipeline.yaml  (2 tasks)" in lines
    assert "ok  examples/pool.yaml  (pool, fixed-size (3 workers))" in lines
    assert sum(line.startswith("ok  ") for line in lines) == len(EXAMPLES)


def test_hello_sky_is_the_seed_job() -> None:
    text = ROOT.joinpath("examples/hello_sky.yaml").read_text()
    assert "name: hello-sky" in text
    assert 'setup: echo "Running setup."' in text
    assert 'run: echo "Hello, SkyPilot!"' in text


BAD_FILES = {
    "runn.yaml": "runn: echo hi\n",
    "dup.yaml": "run: a\nrun: b\n",
    "syntax.yaml": "run: [a\n",
    "scalar.yaml": "just a string\n",
    "empty.yaml": "",
    "binary.yaml": None,  # not UTF-8
    "group.yaml": "name: g\nexecution: parallel\n---\nrun: a\n",
    "cpus.yaml": "resources:\n  cpus: lots\n",
    "pool.yaml": "pool:\n  min_workers: 3\n  max_workers: 1\n",
}


def test_bad_files_exit_2_without_traceback(tmp_path: Path) -> None:
    for name, text in BAD_FILES.items():
        path = tmp_path / name
        if text is None:
            path.write_bytes(b"\xff\xfe\x00bad")
        else:
            path.write_text(text)
    (tmp_path / "good.yaml").write_text("run: echo ok\n")
    (tmp_path / "dir.yaml").mkdir()
    files = [*BAD_FILES, "good.yaml", "missing.yaml", "dir.yaml"]
    result = tsky(*files, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(files), result.stdout
    assert lines[0] == "error  runn.yaml:1:1: runn: Invalid task YAML: Instead of 'runn', did you mean 'run'?"
    assert "ok  good.yaml  (1 task)" in lines
    assert all(line.startswith("error  ") for line in lines if "good.yaml" not in line)
    assert any("Duplicate key 'run'" in line for line in lines)
    assert any("File not found: missing.yaml" in line for line in lines)
    assert any("not supported yet" in line for line in lines)
    assert any("min_workers (3) must be <= max_workers (1)" in line for line in lines)


def test_null_env_needs_the_env_flag(tmp_path: Path) -> None:
    path = tmp_path / "hf.yaml"
    path.write_text("envs:\n  HF_TOKEN:\nrun: echo $HF_TOKEN\n")
    failed = tsky(path)
    assert failed.returncode == 2
    assert "envs.HF_TOKEN" in failed.stdout
    assert "--env HF_TOKEN=value" in failed.stdout
    env_file = tmp_path / ".env"
    env_file.write_text("OTHER=1\n")
    passed = tsky(path, "--env", "HF_TOKEN=x", "--env-file", env_file, "--secret", "S=1")
    assert passed.returncode == 0, passed.stdout
    from_environment = tsky(path, "--env", "HF_TOKEN", env={"HF_TOKEN": "y"})
    assert from_environment.returncode == 0, from_environment.stdout


@pytest.mark.parametrize("flag", ["--env", "--secret"])
def test_bad_flags_exit_2(flag: str, tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("run: x\n")
    result = tsky(path, flag, "UNSET_FOR_SURE_42")
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert f"{flag} UNSET_FOR_SURE_42" in result.stdout
