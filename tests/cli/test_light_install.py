"""The light install: a cloud whose SDK extra is not installed is disabled, and `tsky check` names the extra."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tsky.cli.main import app
from tsky.ops import infra_check


def test_check_names_the_extra_of_a_missing_sdk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = infra_check.distribution

    def without_boto3(name: str) -> object:
        if name == "boto3":
            raise PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(infra_check, "distribution", without_boto3)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # credentials alone do not enable aws
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    result = CliRunner().invoke(app, ["check"], env={"TSKY_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert "boto3 is not installed: pip install 'tsky[aws]'" in result.output
