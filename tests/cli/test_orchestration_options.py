"""The orchestration launch options, checked before anything starts: `--after` ids and webhook URLs
(from `--notify` and `jobs.notify` settings), which leave the CLI sealed."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from tsky.cli.orchestration import notify_for, parse_after
from tsky.spec.secrets import load_key, unseal
from tsky.spec.settings import Settings
from tsky.spec.status import ManagedJobStatus as S


def test_after_takes_ids_comma_separated_or_repeated() -> None:
    assert parse_after(["3,4", "7", "3"]) == [3, 4, 7]
    assert parse_after(None) == []
    with pytest.raises(typer.Exit) as raised:
        parse_after(["3,x"])
    assert raised.value.exit_code == 2


def test_webhook_urls_from_the_flag_and_the_settings_are_sealed_once_each(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {"home": tmp_path, "jobs": {"notify": {"urls": ["https://example.test/b"], "statuses": ["FAILED"]}}}
    )
    notify = notify_for(["http://127.0.0.1:9/a", "https://example.test/b"], settings)
    assert len(notify.sealed_urls) == 2 and notify.statuses == [S.FAILED]
    assert not any("example.test" in sealed or "127.0.0.1" in sealed for sealed in notify.sealed_urls)
    key = load_key(tmp_path, create=False)
    opened = unseal(dict(enumerate(notify.sealed_urls)), key)  # type: ignore[arg-type]
    assert sorted(opened.values()) == ["http://127.0.0.1:9/a", "https://example.test/b"]
    assert notify_for(None, Settings(home=tmp_path)).sealed_urls == []


def test_a_webhook_that_is_not_http_exits_2_without_echoing_its_secret_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(typer.Exit) as raised:
        notify_for(["ftp://hooks.example.test/T0/secret-token"], Settings(home=tmp_path))
    assert raised.value.exit_code == 2
    err = capsys.readouterr().err
    assert "not an http(s) URL" in err and "secret-token" not in err
