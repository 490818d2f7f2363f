"""The `wxens` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from data_pipeline.config import ConfigError, ExperimentConfig, load_config

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="wxens: huge weather ensembles, verified."
)
config_app = typer.Typer(no_args_is_help=True, help="Experiment configs.")
data_app = typer.Typer(no_args_is_help=True, help="Truth world, reanalysis ingestion, diagnostics.")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")

ConfigOption = Annotated[Path, typer.Option("--config", help="Experiment YAML.")]
QuietOption = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]
OutOption = Annotated[Path, typer.Option("--out", help="Output Zarr store.")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace an existing store.")]


def fail(message: str) -> None:
    """Print one line on stderr and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def read_config(path: Path) -> tuple[ExperimentConfig, dict]:
    try:
        config = load_config(path)
    except ConfigError as exc:
        fail(str(exc))
    return config, config.model_dump(mode="json")


@config_app.command("check")
def config_check(file: Path) -> None:
    """Validate FILE and print the resolved config (defaults filled in) as YAML."""
    _, resolved = read_config(file)
    typer.echo(yaml.safe_dump(resolved, sort_keys=False), nl=False)


@data_app.command("truth")
def data_truth(
    config: ConfigOption,
    out: OutOption,
    years: Annotated[
        float | None, typer.Option("--years", help="Years to simulate (default: all periods).")
    ] = None,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Run the truth world at the fine resolution and write a 6-hourly CF Zarr reanalysis."""
    from data_pipeline.analysis_store import StoreError
    from data_pipeline.truth import write_truth

    cfg, resolved = read_config(config)
    years = cfg.periods.total_years if years is None else years
    try:
        write_truth(cfg, resolved, years, out, overwrite=overwrite, quiet=quiet)
    except (StoreError, ValueError, FloatingPointError) as exc:
        fail(str(exc))
    typer.echo(str(out))


@data_app.command("ingest")
def data_ingest(
    config: ConfigOption,
    source: Annotated[
        list[Path], typer.Option("--source", help="ERA5 file(s): netCDF, GRIB, Zarr.")
    ],
    out: OutOption,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Read reanalysis files, map them to the model variables, regrid spectrally, write a store."""
    from data_pipeline.analysis_store import StoreError
    from data_pipeline.reanalysis import ingest

    cfg, resolved = read_config(config)
    if cfg.ingest is None:
        fail(f"{config}: no 'ingest' section mapping model variables to source fields")
    try:
        ingest(cfg, resolved, source, out, overwrite=overwrite, quiet=quiet)
    except (StoreError, ValueError) as exc:
        fail(str(exc))
    typer.echo(str(out))


@data_app.command("diagnose")
def data_diagnose(
    config: ConfigOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Climate and predictability numbers of the truth world (twin experiments)."""
    from data_pipeline.diagnose import diagnose

    cfg, _ = read_config(config)
    try:
        numbers = diagnose(cfg, quiet=quiet)
    except FloatingPointError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(numbers))
    else:
        for key, value in numbers.items():
            typer.echo(f"{key:36s} {value}")


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="wxens")


if __name__ == "__main__":
    sys.exit(main())
