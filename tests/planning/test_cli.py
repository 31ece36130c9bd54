"""`tsky check`, `tsky show-gpus` and `tsky catalog refresh aws`, run as the installed command with a
temporary TSKY_HOME and no cloud credentials; the refresh talks to moto on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import typer
from moto.server import ThreadedMotoServer
from typer.testing import CliRunner, Result

from tsky.cli.infra import register
from tsky.ops.catalog import CloudCatalog, bundled_catalog, load_catalog, override_path
from tsky.ops.catalog_aws import refresh_aws

TSKY = str(Path(sys.executable).with_name("tsky"))


def tsky(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TSKY, *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def env(offline: dict[str, str]) -> dict[str, str]:
    # Also applied to this process (the `offline` fixture), for the in-process runs.
    return offline


def in_process(env: dict[str, str], *args: str) -> Result:
    """The same commands through Typer's runner: for the variants, without a process start each."""
    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, list(args), env=env)


def test_check_lists_every_infra_with_its_reason(env: dict[str, str]) -> None:
    done = tsky({**env, "AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s"}, "check")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("Checking infra for tsky")
    for line in ("  Local: enabled", "  SSH: disabled", "  AWS: enabled", "  GCP: disabled", "  Kubernetes: disabled"):
        assert line in out.splitlines()
    assert "  AWS: enabled\n    Credentials from env\n" in out
    assert "    Reason: no GCP credentials" in out
    assert "🎉 Enabled infra 🎉\n  Local [local]\n  AWS\n" in out

    offline = in_process(env, "check", "aws", "kubernetes")
    assert offline.exit_code == 0
    assert "  AWS: disabled\n    Reason: no AWS credentials found" in offline.stdout
    assert "Local" not in offline.stdout and "No infra enabled." in offline.stdout
    assert in_process(env, "check", "azure").exit_code == 2


def test_show_gpus(env: dict[str, str]) -> None:
    summary = tsky(env, "show-gpus")
    assert summary.returncode == 0, summary.stderr
    lines = summary.stdout.splitlines()
    assert lines[0].split() == ["GPU", "AVAILABLE_QUANTITIES", "INFRA"]
    rows = {line.split()[0]: line for line in lines[1:9]}
    assert set(rows) == {"T4", "L4", "A10G", "V100", "A100", "A100-80GB", "H100", "H200"}
    assert rows["H100"].split()[1:] == ["1,", "2,", "4,", "8", "aws,", "gcp"]

    v100 = tsky(env, "show-gpus", "V100")
    assert v100.returncode == 0
    table = v100.stdout.splitlines()
    assert table[0].split()[:4] == ["GPU", "QTY", "INFRA", "INSTANCE_TYPE"]
    p3 = next(line for line in table if "p3.2xlarge" in line)
    # On-demand and spot price ranges over the regions, cheapest region named.
    assert "$ 3.060 - 4.194" in p3 and "us-east-1 (+5)" in p3
    assert any("n1-highmem-8" in line and "GCP" in line for line in table)

    per_region = in_process(env, "show-gpus", "H100:8", "--infra", "aws", "--all")
    assert per_region.exit_code == 0
    rows_ = per_region.stdout.split("\n\n")[0].splitlines()[1:]
    assert {line.split()[3] for line in rows_} == {"p5.48xlarge"}
    assert {line.split()[-1] for line in rows_} == {"us-east-1", "us-east-2", "us-west-2", "ap-northeast-1"}

    every = in_process(env, "show-gpus", "--all", "--infra", "gcp")
    assert every.exit_code == 0 and "a3-ultragpu-8g" in every.stdout and "p3.2xlarge" not in every.stdout

    missing = in_process(env, "show-gpus", "B300")
    assert missing.exit_code == 102 and "No offer of 'B300'" in missing.stdout

    # SkyPilot's NAME:COUNT with a count no node has: what comes closest, and which clouds are off here.
    three = tsky(env, "show-gpus", "A100:3")
    assert three.returncode == 0, three.stdout + three.stderr
    assert "No node offers exactly 3 A100; it comes 1, 2, 4, 8, 16 per node:" in three.stdout
    assert "a2-highgpu-4g" in three.stdout and "a2-highgpu-2g" not in three.stdout
    assert "Listed but not enabled here" in three.stdout
    assert "  AWS: no AWS credentials found" in three.stdout
    assert in_process(env, "show-gpus", "--infra", "azure").exit_code == 2


@pytest.fixture
def moto_url() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_catalog_refresh_aws_against_moto(env: dict[str, str], moto_url: str) -> None:
    aws_env = {
        **env,
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    done = tsky(aws_env, "catalog", "refresh", "aws", "--region", "us-east-1")
    assert done.returncode == 0, done.stdout + done.stderr
    home = Path(env["TSKY_HOME"])
    assert f"Wrote {override_path(home, 'aws')}" in done.stdout
    # moto has no Price List API and quotes every spot price at $0.00001: both are reported, not trusted.
    assert "The AWS Price List API is unavailable" in done.stdout
    assert "spot prices below 5% of on-demand" in done.stdout
    catalog = load_catalog(home)
    assert catalog.origin["aws"] == str(override_path(home, "aws"))
    assert catalog.origin["gcp"] == "bundled"
    bundled = bundled_catalog().clouds["aws"]
    # us-east-1's zones now come from the API (moto has us-east-1e, which the bundled file leaves out).
    assert "us-east-1e" in catalog.regions("aws")["us-east-1"]
    assert catalog.regions("aws")["eu-west-1"] == bundled.regions["eu-west-1"]
    # Shapes come from DescribeInstanceTypes (GpuInfo), on-demand prices from the previous catalog.
    p4de = next(o for o in catalog.offers if o.instance_type == "p4de.24xlarge" and o.region == "us-east-1")
    assert (p4de.accelerator, p4de.accelerator_count, p4de.accelerator_memory_gb) == ("A100-80GB", 8, 80)
    assert p4de.price == 27.4471
    assert all(o.spot_price is None or o.spot_price > 0.001 for o in catalog.offers)

    shown = in_process(aws_env, "show-gpus", "A100-80GB", "--infra", "aws/us-east-1")
    assert shown.exit_code == 0 and "p4de.24xlarge" in shown.stdout


def test_catalog_refresh_needs_credentials(env: dict[str, str]) -> None:
    done = tsky(env, "catalog", "refresh", "aws")
    assert done.returncode == 2
    assert "No AWS credentials found" in done.stdout
    assert not override_path(Path(env["TSKY_HOME"]), "aws").exists()
    assert in_process(env, "catalog", "refresh", "gcp").exit_code == 2


class FakePricing:
    """The Price List API's answer shape, for the parsing path moto cannot exercise."""

    def get_products(self, **request: Any) -> dict[str, Any]:
        instance_type = next(f["Value"] for f in request["Filters"] if f["Field"] == "instanceType")
        price = "0.0001" if instance_type.startswith("m5.") else "0"
        product = {"terms": {"OnDemand": {"X": {"priceDimensions": {"Y": {"pricePerUnit": {"USD": price}}}}}}}
        return {"PriceList": [json.dumps(product)]}


class Session:
    def __init__(self, url: str) -> None:
        self.session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing")
        self.url = url

    def get_credentials(self) -> Any:
        return self.session.get_credentials()

    def client(self, name: str, region_name: str) -> Any:
        if name == "pricing":
            return FakePricing()
        return self.session.client(name, region_name=region_name, endpoint_url=self.url)


def test_refresh_uses_price_list_prices_and_zonal_spot_prices(moto_url: str) -> None:
    current = bundled_catalog().clouds["aws"]
    report = refresh_aws(current, ["us-east-2"], session=Session(moto_url), families=["m5"])
    part: CloudCatalog = report.catalog
    assert report.warnings == []
    m5 = {t.name: t for t in part.instance_types}["m5.large"]
    price = m5.prices["us-east-2"]
    assert price.od == 0.0001  # from the (fake) Price List API
    # moto's $0.00001 is plausible next to a $0.0001 on-demand price: kept, one price per zone.
    assert price.spot == {"us-east-2a": 0.00001, "us-east-2b": 0.00001, "us-east-2c": 0.00001}
    assert m5.prices["us-east-1"] == {t.name: t for t in current.instance_types}["m5.large"].prices["us-east-1"]
    assert report.on_demand_from_api == len([t for t in part.instance_types if "us-east-2" in t.prices])


def test_catalog_refresh_without_credentials_calls_no_one(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Even where the instance-metadata provider is not disabled by the environment, the credential lookup
    # stays offline: the one check `tsky check` uses. Any connection off loopback is refused and recorded.
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    env = {k: v for k, v in env.items() if k != "AWS_EC2_METADATA_DISABLED"}
    tried: list[object] = []
    real_connect = socket.socket.connect

    def loopback_only(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not str(address[0]).startswith(("127.", "::1")):
            tried.append(address)
            raise OSError(f"test: no connection to {address} allowed")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    done = in_process(env, "catalog", "refresh", "aws")
    assert tried == []
    assert done.exit_code == 2, done.stdout
    assert "No AWS credentials found" in done.stdout
    assert not override_path(Path(env["TSKY_HOME"]), "aws").exists()
