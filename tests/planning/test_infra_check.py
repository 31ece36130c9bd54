"""`check_infra`: which infra is enabled, from credentials and config files only, never the network."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from tsky.ops.infra_check import NodeShape, RecentInfraCheck, check_infra, enabled_infra
from tsky.spec.settings import Settings


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any connection attempt: the checks must stay on this machine."""

    def refuse(self: socket.socket, address: Any) -> None:
        raise AssertionError(f"infra check tried to connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def status(settings: Settings, name: str) -> Any:
    (found,) = check_infra(settings, [name])
    return found


def test_nothing_configured_leaves_only_local(offline: dict[str, str], no_network: None, settings: Settings) -> None:
    statuses = check_infra(settings)
    assert [(s.name, s.enabled) for s in statuses] == [
        ("local", True),
        ("ssh", False),
        ("aws", False),
        ("gcp", False),
        ("k8s", False),
    ]
    reasons = {s.name: s.reason for s in statuses}
    assert "no node pool file at" in reasons["ssh"]
    assert "no AWS credentials found" in reasons["aws"]
    assert "gcloud auth application-default login" in reasons["gcp"]
    assert "no kubeconfig with contexts" in reasons["k8s"]
    assert [e.cloud for e in enabled_infra(statuses)] == ["local"]
    assert enabled_infra(statuses)[0].regions == ["local"]


def test_aws_credentials_from_the_environment(
    offline: dict[str, str], no_network: None, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    found = status(settings, "aws")
    assert (found.enabled, found.reason) == (True, "credentials from env")


def test_aws_credentials_from_a_profile_file(
    offline: dict[str, str], no_network: None, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = AKID\naws_secret_access_key = secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    assert status(settings, "aws").reason == "credentials from shared-credentials-file"


def test_gcp_application_default_credentials(
    offline: dict[str, str], no_network: None, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adc = tmp_path / "adc.json"
    adc.write_text(
        json.dumps({"type": "authorized_user", "client_id": "id", "client_secret": "s", "refresh_token": "t"})
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "my-project")
    found = status(settings, "gcp")
    assert found.enabled and found.reason == f"authorized_user credentials from {adc}, project my-project"
    adc.write_text('{"type": "service_account", "client_email": "x@y"}')
    found = status(settings, "gcp")
    assert not found.enabled and found.reason.endswith("is not usable: missing private_key, token_uri")


def test_k8s_uses_the_current_context(
    offline: dict[str, str], no_network: None, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\ncurrent-context: prod\n"
        "contexts:\n- name: dev\n  context: {cluster: a}\n- name: prod\n  context: {cluster: b}\n"
    )
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{config}")
    found = status(settings, "k8s")
    assert (found.enabled, found.regions) == (True, ["prod"])
    assert [e.regions for e in enabled_infra([found])] == [["prod"]]


def test_ssh_node_pools(offline: dict[str, str], settings: Settings) -> None:
    settings.home.mkdir(parents=True)
    pools = settings.home / "ssh_node_pools.yaml"
    pools.write_text("{broken: [")
    assert "not readable YAML" in status(settings, "ssh").reason
    pools.write_text("lab:\n  user: me\n")
    assert status(settings, "ssh").reason.endswith("pool 'lab' has no `hosts` list")
    pools.write_text(
        "lab:\n  hosts: [10.0.0.1, 10.0.0.2]\n  accelerators: {A100: 8}\n  vcpus: 64\n"
        "bare:\n  hosts:\n    - ip: 10.0.0.3\n"
        "empty: {}\n"
    )
    found = status(settings, "ssh")
    assert found.enabled and found.regions == ["lab", "bare"]
    assert found.shapes == {"lab": NodeShape(vcpus=64, accelerators={"A100": 8})}
    assert "skipped: pool 'empty' has no `hosts` list" in found.reason


def test_a_worker_answers_from_a_recent_check_and_sees_new_credentials_after_it(
    offline: dict[str, str], no_network: None, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def aws(check: RecentInfraCheck) -> bool:
        return next(s for s in check.statuses() if s.name == "aws").enabled

    recent = RecentInfraCheck(settings, max_age=3600)
    expired = RecentInfraCheck(settings, max_age=0)
    assert not aws(recent) and not aws(expired)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert not aws(recent)  # the check of a moment ago still answers (a worker plans every launch)
    assert aws(expired)  # once it is older than max_age, the credentials count
