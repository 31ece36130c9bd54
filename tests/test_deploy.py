"""The deployment files: docker-compose.yml parses and has the production shape, the Dockerfile runs
the worker under an init, and the namespace set-up registers tsky's search attributes on a real server.
(Docker itself cannot run here: the compose file is checked, not started.)"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client

from tests.harness import DevServer
from tsky.contract import search_attributes
from tsky.spec.settings import LogsSettings, WorkerSettings

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def seconds(duration: str) -> float:
    units = {"s": 1, "m": 60}
    return float(duration[:-1]) * units[duration[-1]]


def test_compose_names_the_production_services() -> None:
    services = compose()["services"]
    assert services["postgresql"]["image"].startswith("postgres:")
    assert services["temporal-schema"]["image"].startswith("temporalio/admin-tools:")
    assert services["temporal"]["image"].startswith("temporalio/server:")
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")
    # The server's version and the schema tool's must move together.
    assert services["temporal"]["image"].split(":")[1] == services["temporal-schema"]["image"].split(":")[1]
    assert services["temporal"]["environment"]["DB"] == "postgres12"

    init = services["temporal-init"]
    assert init["build"] == "." and "tsky.worker.namespace_setup" in init["command"]

    workers = {name: s for name, s in services.items() if name.startswith("worker-")}
    assert len(workers) >= 2
    for name, worker in workers.items():
        assert worker["build"] == ".", name
        env = worker["environment"]
        assert env["TSKY_TEMPORAL_ADDRESS"] == "temporal:7233"
        assert env["TSKY_METRICS_ADDRESS"] == "0.0.0.0"
        assert worker["depends_on"]["temporal-init"]["condition"] == "service_completed_successfully"
        assert seconds(worker["stop_grace_period"]) > WorkerSettings().graceful_shutdown_seconds
        assert any(v.endswith(":/var/lib/tsky") for v in worker["volumes"])
    assert all(w.get("pid") == "service:worker-1" for n, w in workers.items() if n != "worker-1")


def test_compose_workers_write_logs_to_the_minio_bucket_it_creates() -> None:
    services = compose()["services"]
    assert services["minio"]["image"].startswith("minio/minio:")
    create_bucket = " ".join(services["minio-init"]["command"])
    for name, worker in services.items():
        if not name.startswith("worker-"):
            continue
        env = worker["environment"]
        store = env["TSKY_LOG_STORE"]  # ${TSKY_LOG_STORE:-s3://tsky-logs/...}: the default is MinIO's bucket
        default = store.split(":-", 1)[1]
        bucket = default.removeprefix("s3://").split("/")[0]
        assert default.startswith("s3://") and f"mb --ignore-existing store/{bucket}" in create_bucket, name
        assert "http://minio:9000" in env["AWS_ENDPOINT_URL"], name
        assert worker["depends_on"]["minio-init"]["condition"] == "service_completed_successfully", name
        LogsSettings(store=default.replace("${TSKY_NAMESPACE:-default}", "default"))  # a store tsky accepts
    codec = services["codec-server"]
    assert codec["profiles"] == ["codec"] and "codec-server" in codec["command"]


def test_compose_files_it_mounts_exist() -> None:
    services = compose()["services"]
    for name in ("temporal-schema", "temporal"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert (ROOT / source).exists(), f"{name} mounts {source}"
    dynamic = services["temporal"]["environment"]["DYNAMIC_CONFIG_FILE_PATH"]
    assert (ROOT / "deploy" / "dynamicconfig" / Path(dynamic).name).exists()
    subprocess.run(["sh", "-n", str(ROOT / "deploy" / "postgres-schema.sh")], check=True)


def test_dockerfile_runs_the_worker_under_an_init() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["tini", "-s", "--"]' in text
    assert 'CMD ["python", "-m", "tsky.worker"]' in text
    assert "pip install --no-cache-dir '.[all]'" in text  # the light install would lack the cloud SDKs


@pytest.mark.integration
def test_namespace_setup_registers_tskys_search_attributes_once(dev_server: DevServer, tmp_path: Path) -> None:
    namespace = f"setup-{uuid.uuid4().hex[:8]}"
    env = {"PATH": "/usr/bin:/bin", "TSKY_HOME": str(tmp_path), "TSKY_TEMPORAL_ADDRESS": dev_server.address,
           "TSKY_TEMPORAL_NAMESPACE": namespace}  # fmt: skip
    command = [sys.executable, "-m", "tsky.worker.namespace_setup", "--timeout", "60"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert f"namespace {namespace}: created" in first.stdout
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"namespace {namespace}: exists; search attributes: all registered" in again.stdout

    async def listed() -> set[str]:
        client = await Client.connect(dev_server.address, namespace=namespace)
        reply = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
        return set(reply.custom_attributes)

    assert {key.name for key in search_attributes.ALL} <= asyncio.run(listed())
