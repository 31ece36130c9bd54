"""`tsky show-gpus`, `tsky check` and `tsky catalog refresh`: what tsky can plan on, and at what price."""

from __future__ import annotations

from collections.abc import Sequence

import typer
from rich.console import Console
from rich.text import Text

from tsky.client.infra import (
    CATALOG_CLOUDS,
    INFRA_ALIASES,
    INFRA_NAMES,
    CatalogError,
    EnabledInfra,
    Offer,
    bundled_catalog,
    check_infra,
    detect_host,
    infra_offers,
    load_catalog,
)
from tsky.spec.requests import CLOUD_DISPLAY, Infra
from tsky.spec.settings import Settings, SettingsError, load_settings
from tsky.spec.status import JobExitCode

# No markup (infra names like "[local]" are data) and no wrapping (reasons are long, output is grepped).
console = Console(highlight=False, markup=False, soft_wrap=True)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as err:
        console.print(Text(str(err), style="red"))
        raise typer.Exit(2) from err


def _columns(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for cells in (headers, *rows):
        line = "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
        console.print(Text(line, style="bold" if cells is headers else ""))


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _parse_infra(text: str) -> Infra:
    parts = [p if p != "*" else None for p in text.split("/")]
    cloud = parts[0].lower() if parts[0] else None
    cloud = INFRA_ALIASES.get(cloud, cloud) if cloud else None
    if cloud is not None and cloud not in INFRA_NAMES:
        console.print(Text(f"Unknown infra '{text}': expected one of {', '.join(INFRA_NAMES)}.", style="red"))
        raise typer.Exit(2)
    return Infra(
        cloud=cloud,
        region=parts[1] if len(parts) > 1 else None,
        zone=parts[2] if len(parts) > 2 else None,
    )


def _gpu_offers(settings: Settings, infra: Infra | None) -> list[Offer]:
    """Every accelerator offer of the catalog clouds (enabled or not) and of the local simulator."""
    try:
        catalog = load_catalog(settings.home)
    except CatalogError as err:
        console.print(Text(str(err), style="red"))
        raise typer.Exit(2) from err
    everything = [EnabledInfra(cloud=c) for c in (*CATALOG_CLOUDS, "local")]
    offers = infra_offers(everything, catalog, settings, detect_host())
    return [o for o in offers if o.accelerator and (infra is None or infra.contains(o.cloud, o.region, o.zone))]


def _price_range(prices: list[float]) -> str:
    if not prices:
        return "-"
    low, high = min(prices), max(prices)
    return f"$ {low:.3f}" if abs(high - low) < 5e-4 else f"$ {low:.3f} - {high:.3f}"


def _gpu_table(name: str, offers: list[Offer], per_region: bool) -> None:
    """One row per (cloud, instance type) with price ranges over regions, or one row per region."""
    groups: dict[tuple[str, str, float, str], list[Offer]] = {}
    for o in offers:
        key = (o.cloud, o.instance_type, o.accelerator_count, o.region if per_region else "")
        groups.setdefault(key, []).append(o)
    rows = []
    for (cloud, itype, count, _), group in groups.items():
        on_demand = [o.price for o in group if o.price is not None]
        spot = [o.spot_price for o in group if o.spot_price is not None]
        cheapest = min(group, key=lambda o: (o.price if o.price is not None else float("inf"), o.region))
        regions = sorted({o.region for o in group})
        where = cheapest.region if per_region or len(regions) == 1 else f"{cheapest.region} (+{len(regions) - 1})"
        device = f"{_num(cheapest.accelerator_memory_gb)}GB" if cheapest.accelerator_memory_gb else "-"
        rows.append(
            (
                (count, min(on_demand, default=float("inf")), cloud, itype, cheapest.region),
                (
                    cheapest.accelerator or name,
                    _num(count),
                    CLOUD_DISPLAY.get(cloud, cloud),
                    itype,
                    device,
                    _num(cheapest.vcpus) if cheapest.vcpus is not None else "-",
                    f"{_num(cheapest.memory_gb)}GB" if cheapest.memory_gb is not None else "-",
                    _price_range(on_demand),
                    _price_range(spot),
                    where,
                ),
            )
        )
    rows.sort(key=lambda row: row[0])
    headers = (
        "GPU",
        "QTY",
        "INFRA",
        "INSTANCE_TYPE",
        "DEVICE_MEM",
        "vCPUs",
        "HOST_MEM",
        "HOURLY_PRICE",
        "HOURLY_SPOT_PRICE",
        "REGION",
    )
    _columns(headers, [cells for _, cells in rows])


def _split_name(name: str) -> tuple[str, float | None]:
    gpu, _, count = name.partition(":")
    if not count:
        return gpu, None
    try:
        return gpu, float(count)
    except ValueError:
        console.print(Text(f"'{name}' is not <GPU> or <GPU>:<count>.", style="red"))
        raise typer.Exit(2) from None


def show_gpus(name: str | None, infra: str | None, show_all: bool) -> None:
    settings = _settings()
    offers = _gpu_offers(settings, _parse_infra(infra) if infra else None)
    names = sorted({o.accelerator for o in offers if o.accelerator}, key=str.lower)
    if name:
        gpu, count = _split_name(name)
        matched = [o for o in offers if (o.accelerator or "").lower() == gpu.lower()]
        if not matched:
            where = f" in {infra}" if infra else ""
            console.print(
                Text(f"No offer of '{gpu}'{where} in the catalog. GPUs offered: {', '.join(names)}.", style="red")
            )
            raise typer.Exit(JobExitCode.NOT_FOUND)
        if count is not None:
            exact = [o for o in matched if o.accelerator_count == count]
            if not exact:  # SkyPilot's NAME:COUNT; show what comes closest rather than nothing
                quantities = ", ".join(_num(c) for c in sorted({o.accelerator_count for o in matched}))
                console.print(f"No node offers exactly {_num(count)} {gpu}; it comes {quantities} per node:")
                exact = [o for o in matched if o.accelerator_count >= count] or matched
            matched = exact
        _gpu_table(gpu, matched, per_region=show_all)
        _not_enabled_note(settings, {o.cloud for o in matched})
        return
    if not names:
        console.print("No GPUs offered" + (f" in {infra}." if infra else "."))
        return
    if show_all:
        for gpu in names:
            _gpu_table(gpu, [o for o in offers if o.accelerator == gpu], per_region=False)
            console.print()
        return
    rows = []
    for gpu in names:
        mine = [o for o in offers if o.accelerator == gpu]
        counts = sorted({o.accelerator_count for o in mine})
        clouds = sorted({o.cloud for o in mine}, key=lambda c: (*INFRA_NAMES, c).index(c))
        rows.append((gpu, ", ".join(_num(c) for c in counts), ", ".join(clouds)))
    _columns(("GPU", "AVAILABLE_QUANTITIES", "INFRA"), rows)
    _not_enabled_note(settings, {o.cloud for o in offers})
    console.print()
    console.print(
        "Hint: `tsky show-gpus <GPU>` lists instance types and hourly prices (price ranges over regions, "
        "cheapest region shown); add --all for one row per region, or use --all alone for every GPU."
    )


def _not_enabled_note(settings: Settings, clouds: set[str]) -> None:
    """The catalog lists clouds this installation cannot launch on: say which, and why."""
    disabled = [s for s in check_infra(settings, clouds) if not s.enabled]
    if disabled:
        console.print()
        console.print(Text("Listed but not enabled here (a launch skips them; see `tsky check`):", style="dim"))
        for s in disabled:
            console.print(Text(f"  {CLOUD_DISPLAY.get(s.name, s.name)}: {s.reason}", style="dim"))


def check(only: list[str] | None) -> None:
    settings = _settings()
    wanted = None
    if only:
        wanted = [INFRA_ALIASES.get(name.lower(), name.lower()) for name in only]
        unknown = [name for name in wanted if name not in INFRA_NAMES]
        if unknown:
            console.print(Text(f"Unknown infra {', '.join(unknown)}: expected {', '.join(INFRA_NAMES)}.", style="red"))
            raise typer.Exit(2)
    statuses = check_infra(settings, wanted)
    console.print("Checking infra for tsky (credentials and config files only; no network calls).")
    for s in statuses:
        label = CLOUD_DISPLAY.get(s.name, s.name)
        if s.enabled:
            console.print(Text.assemble(f"  {label}: ", ("enabled", "green")))
            console.print(f"    {s.reason[:1].upper()}{s.reason[1:]}")
            if s.regions:
                kind = {"ssh": "Node pools", "k8s": "Contexts"}.get(s.name, "Regions")
                console.print(f"    {kind}: {', '.join(s.regions)}")
        else:
            console.print(Text.assemble(f"  {label}: ", ("disabled", "dim")))
            console.print(Text(f"    Reason: {s.reason}", style="dim"))
    enabled = [s for s in statuses if s.enabled]
    console.print()
    if not enabled:
        console.print("No infra enabled.")
        return
    console.print("🎉 Enabled infra 🎉")
    for s in enabled:
        where = f" [{', '.join(s.regions)}]" if s.regions else ""
        console.print(f"  {CLOUD_DISPLAY.get(s.name, s.name)}{where}")
    console.print()
    console.print("Only enabled infra is planned on. The local infra is a simulator running on this host.")


def catalog_refresh(cloud: str, regions: list[str] | None) -> None:
    if cloud.lower() != "aws":
        console.print(
            Text(
                f"Refreshing the '{cloud}' catalog is not supported (only aws); the bundled prices are used.",
                style="red",
            )
        )
        raise typer.Exit(2)
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError as err:
        console.print(Text("Refreshing the AWS catalog needs boto3: pip install 'tsky[aws]'.", style="red"))
        raise typer.Exit(2) from err

    from tsky.client.aws_catalog import NoAwsCredentials, refresh_aws
    from tsky.client.infra import write_cloud_catalog

    settings = _settings()
    try:
        current = load_catalog(settings.home).clouds["aws"]
    except CatalogError:
        current = bundled_catalog().clouds["aws"]  # a broken refresh is what this command repairs
    console.print(f"Refreshing the AWS catalog for {', '.join(regions or current.regions)} ...")
    try:
        report = refresh_aws(current, regions or None)
    except NoAwsCredentials as err:
        console.print(Text(str(err), style="red"))
        raise typer.Exit(2) from err
    except (BotoCoreError, ClientError) as err:
        console.print(Text(f"AWS error: {err}", style="red"))
        raise typer.Exit(1) from err
    path = write_cloud_catalog(settings.home, "aws", report.catalog)
    for warning in report.warnings:
        console.print(Text(f"Warning: {warning}", style="yellow"))
    console.print(
        f"Wrote {path}: {report.instance_types} instance types in {len(report.catalog.regions)} regions "
        f"({len(report.regions)} refreshed), {report.spot_prices} zonal spot prices, "
        f"{report.on_demand_from_api} on-demand prices from the Price List API."
    )


def register(app: typer.Typer) -> None:
    @app.command("show-gpus")
    def _show_gpus(
        name: str | None = typer.Argument(None, help="A GPU name (V100), optionally with a count (V100:4)."),
        infra: str | None = typer.Option(None, "--infra", help="Only this infra: aws, gcp/us-central1, local."),
        show_all: bool = typer.Option(False, "--all", "-a", help="One row per region; without NAME, every GPU."),
    ) -> None:
        """List accelerators, their counts per node, instance types and hourly prices from the catalog."""
        show_gpus(name, infra, show_all)

    @app.command("check")
    def _check(
        infra: list[str] | None = typer.Argument(None, help="Only these: local, ssh, aws, gcp, k8s."),
    ) -> None:
        """Show which infra is enabled (credentials, kubeconfig, node pools found) and why not."""
        check(infra)

    catalog_app = typer.Typer(help="The instance and price catalog the planner uses.", no_args_is_help=True)

    @catalog_app.command("refresh")
    def _refresh(
        cloud: str = typer.Argument(..., help="The cloud whose catalog to rebuild (aws)."),
        region: list[str] | None = typer.Option(None, "--region", help="Only these regions (repeatable)."),
    ) -> None:
        """Rebuild a cloud's instance types and prices from its APIs into $TSKY_HOME/catalogs/<cloud>.json."""
        catalog_refresh(cloud, region)

    app.add_typer(catalog_app, name="catalog")
