"""The plan a launch shows is the plan it would carry out: chosen among enabled infra only."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.harness import EXAMPLES, TSKY

HELLO = str(EXAMPLES / "hello_sky.yaml")


def _tsky(home: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TSKY_", "AWS_", "GOOGLE_", "KUBECONFIG"))}
    env.update(
        TSKY_HOME=str(home),
        HOME=str(home),  # no ~/.aws, ~/.kube or gcloud files of this machine
        AWS_EC2_METADATA_DISABLED="true",
        NO_GCE_CHECK="True",
        GCE_METADATA_HOST="127.0.0.1:9",
        GCE_METADATA_IP="127.0.0.1:9",
        **extra_env,
    )
    return subprocess.run([TSKY, *args], capture_output=True, text=True, env=env, timeout=120)


def _row(stdout: str, infra: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith(f" {infra}"))


def test_dryrun_chooses_among_enabled_infra_and_greys_the_rest(tmp_path: Path) -> None:
    result = _tsky(tmp_path, "jobs", "launch", "--dryrun", HELLO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _row(result.stdout, "Local").endswith("✔")
    for cloud in ("AWS", "GCP"):
        assert _row(result.stdout, cloud).endswith("not enabled"), result.stdout
    assert "aws: not enabled: no AWS credentials found" in result.stdout
    assert result.stdout.count("✔") == 1

    # With AWS credentials, a GPU request is planned on AWS; GCP stays greyed and is never chosen.
    on_aws = _tsky(tmp_path, "jobs", "launch", "--dryrun", "--gpus", "H100:1", HELLO,
                   AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")  # fmt: skip
    assert on_aws.returncode == 0, on_aws.stdout + on_aws.stderr
    assert _row(on_aws.stdout, "AWS").endswith("✔")
    assert _row(on_aws.stdout, "GCP").endswith("not enabled")


def test_no_resources_is_one_short_error_with_a_line_per_disabled_infra(tmp_path: Path) -> None:
    for args in (("--dryrun",), ("-y",)):
        result = _tsky(tmp_path, "jobs", "launch", *args, "--gpus", "H100:1", HELLO)
        assert result.returncode == 2, result.stdout + result.stderr
        output = result.stdout + result.stderr
        assert output.count("No enabled infra offers H100") == 1, output
        assert "✔" not in output and "Considered resources" not in output
        lines = result.stderr.splitlines()
        assert lines[0].startswith("Error: Nothing was launched: no resources: No enabled infra offers H100")
        assert "aws and gcp would offer it" in lines[0]
        assert [line.split(":")[0].strip() for line in lines[1:]] == ["ssh", "aws", "gcp", "k8s"]
        assert lines[2].startswith("  aws: not enabled: no AWS credentials found")
