"""The `wxens` command line."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import yaml
from wxens.data_pipeline.config import ConfigError, ExperimentConfig, load_config
from wxens.data_pipeline.memory import keep_freed_memory

if TYPE_CHECKING:
    from wxens.verification.aggregation import Region

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="wxens: huge weather ensembles, verified."
)
config_app = typer.Typer(no_args_is_help=True, help="Experiment configs.")
data_app = typer.Typer(no_args_is_help=True, help="Truth world, reanalysis ingestion, diagnostics.")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")

THIRD_PARTY_LOGGERS = ("cfgrib", "distributed", "numcodecs", "fsspec")
"""Libraries whose log messages (cfgrib logs a traceback for every unreadable GRIB file) stay
off the terminal unless `wxens --verbose`."""


@app.callback()
def options(
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show third-party libraries' log messages.")
    ] = False,
) -> None:
    """wxens: huge weather ensembles, verified."""
    if not verbose:
        for name in THIRD_PARTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)


ConfigOption = Annotated[Path, typer.Option("--config", help="Experiment YAML.")]
QuietOption = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]
OutOption = Annotated[Path, typer.Option("--out", help="Output Zarr store.")]
OptionalOutOption = Annotated[Path | None, typer.Option("--out", help="Output Zarr store.")]
ArchiveOption = Annotated[
    Path | None,
    typer.Option(
        "--archive", help="Append the inits to this archive instead (skips those it holds)."
    ),
]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace an existing store.")]
ReferencesOption = Annotated[
    list[str], typer.Option("--reference", help="[NAME=]PATH, climatology or persistence.")
]
ScoreAgainstOption = Annotated[
    Path | None,
    typer.Option(
        "--score-against",
        help="Score the members against this truth as they are made (needs --stats).",
    ),
]
StatsOption = Annotated[
    Path | None,
    typer.Option(
        "--stats",
        help="Keep mergeable statistics here, computing only the (init, lead) pairs it lacks.",
    ),
]
KeepOption = Annotated[
    str,
    typer.Option(
        "--keep", help="With --score-against: keep none, the mean or N members (in --archive)."
    ),
]


FLAG_HINTS = {
    "resume it or overwrite it": "--resume or --overwrite",
    "overwrite it to replace it": "--overwrite",
    "choose another output folder": "another --out",
}
"""The flags that answer a library error (whose messages name no flag)."""


def fail(message: str) -> None:
    """Print one line on stderr (with the flags that answer it) and exit non-zero."""
    hints = [flags for phrase, flags in FLAG_HINTS.items() if phrase in message]
    typer.echo(f"error: {message}" + (f" (pass {hints[0]})" if hints else ""), err=True)
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
    from wxens.data_pipeline.analysis_store import StoreError
    from wxens.data_pipeline.truth import write_truth

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
    from wxens.data_pipeline.analysis_store import StoreError
    from wxens.data_pipeline.reanalysis import ingest

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
    from wxens.data_pipeline.diagnose import diagnose

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


AnalysesOption = Annotated[
    Path | None,
    typer.Option("--analyses", help="Analysis store (default: the config's `analyses`)."),
]
DeviceOption = Annotated[
    str | None, typer.Option("--device", help="torch device (default: cuda if present, else cpu).")
]


def analyses_path(cfg: ExperimentConfig, analyses: Path | None) -> Path:
    path = analyses or cfg.analyses
    if path is None:
        fail("no analysis store: pass --analyses or set `analyses:` in the config")
    return path


def pick_device(device: str | None):
    import torch
    from wxens.data_pipeline.provenance import default_device

    try:
        return torch.device(device) if device else default_device()
    except RuntimeError as exc:
        fail(f"--device {device}: {exc}")


def integer_seed(seed: str) -> int:
    try:
        return int(seed)
    except ValueError:
        fail(f"--seed must be an integer, got {seed!r}")


@app.command("train")
def train(
    out: Annotated[Path, typer.Option("--out", help="Checkpoint directory.")],
    config: Annotated[Path | None, typer.Option("--config", help="Experiment YAML.")] = None,
    seed: Annotated[
        str | None, typer.Option("--seed", help="Integer seed of the weights and batches.")
    ] = None,
    analyses: AnalysesOption = None,
    device: DeviceOption = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            "--init-from",
            help="Checkpoint whose weights to start from (fine-tune; a residual diffusion"
            " model's frozen SFNO).",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="sfno (default); fgn (an SFNO with noise, CRPS-trained); vae (an SFNO perturbed"
            " by a conditional VAE's latent, CRPS + KL-trained); or diffusion (an EDM denoiser).",
        ),
    ] = None,
    continue_from: Annotated[
        Path | None,
        typer.Option(
            "--continue",
            help="Finish the schedule this checkpoint stopped short of, with its own config,"
            " seed and kind (its optimizer moments start afresh).",
        ),
    ] = None,
    max_epochs: Annotated[
        int | None,
        typer.Option(
            "--max-epochs", min=1, help="Stop after this many epochs; run again to resume."
        ),
    ] = None,
    save_minutes: Annotated[
        float,
        typer.Option(
            "--save-minutes", min=0, help="Save the state to OUT/last this often within an epoch."
        ),
    ] = 10.0,
    quiet: QuietOption = False,
) -> None:
    """Train one SFNO, FGN, VAE or diffusion emulator; resume from OUT/last when an earlier run was
    interrupted or stopped by --max-epochs."""
    from wxens.data_pipeline.analysis_store import StoreError
    from wxens.models.checkpoint import CheckpointError
    from wxens.models.training import DEFAULT_KIND, Trainer

    if continue_from is not None and any(v is not None for v in (config, seed, init_from, model)):
        fail(
            "--continue takes the checkpoint's own config, seed and kind: drop --config,"
            " --seed, --init-from and --model"
        )
    if continue_from is None and (config is None or seed is None):
        fail("--config and --seed are required (or --continue CHECKPOINT)")
    try:
        if continue_from is not None:
            trainer = Trainer.continuing(continue_from, out, pick_device(device), analyses, quiet)
        else:
            cfg, resolved = read_config(config)
            trainer = Trainer(
                cfg,
                resolved,
                analyses_path(cfg, analyses),
                integer_seed(seed),
                out,
                pick_device(device),
                quiet,
                init_from,
                model or DEFAULT_KIND,
            )
        summary = trainer.run(max_epochs, save_minutes)
    except (StoreError, CheckpointError, ValueError) as exc:
        fail(str(exc))
    if not summary["finished"]:
        typer.echo(
            f"stopped after epoch {trainer.epoch} of {trainer.settings.epochs}; run the same"
            " command again to go on",
            err=True,
        )
    typer.echo(json.dumps(summary["history"][-1] if summary["history"] else summary))


@app.command("skill")
def skill(
    config: ConfigOption,
    checkpoints: Annotated[
        list[Path],
        typer.Option("--checkpoints", help="Checkpoint, or folder of checkpoints (repeatable)."),
    ],
    init_dates: Annotated[int, typer.Option("--init-dates", help="Test-period inits.")] = 16,
    lead_days: Annotated[float, typer.Option("--lead-days", help="Forecast length.")] = 10,
    stability_days: Annotated[
        int, typer.Option("--stability-days", help="Long-rollout check length (0: skip).")
    ] = 60,
    check_inits: Annotated[
        int, typer.Option("--check-inits", help="Inits of the long-rollout and spectrum checks.")
    ] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    analyses: AnalysesOption = None,
    device: DeviceOption = None,
    quiet: QuietOption = False,
) -> None:
    """Deterministic RMSE by variable and lead: checkpoints, NWP baseline, persistence,
    climatology; then a long-rollout stability and spectrum check of each checkpoint."""
    import numpy as np
    from wxens.data_pipeline.analysis_store import StoreError
    from wxens.forecast.runner import lead_steps_of
    from wxens.forecast.skill import Analyses, deterministic_skill, rollout_checks
    from wxens.models.checkpoint import (
        CheckpointError,
        checkpoint_labels,
        find_checkpoints,
        load_checkpoint,
    )
    from wxens.models.kinds import KINDS

    cfg, _ = read_config(config)
    torch_device = pick_device(device)
    try:
        interval = np.timedelta64(cfg.truth.output_interval_hours, "h")
        lead_steps = lead_steps_of(f"{lead_days * 24}h", interval)
        truth = Analyses(analyses_path(cfg, analyses), cfg)
        emulators = {
            label: load_checkpoint(path, cfg, torch_device)
            for label, path in checkpoint_labels(find_checkpoints(checkpoints)).items()
        }
        baseline = {"nwp": KINDS["nwp"].build(cfg, None, torch_device)}
        scores = deterministic_skill(
            truth,
            {**emulators, **baseline},
            cfg.variables,
            init_dates,
            lead_steps,
            torch_device,
            quiet,
        )
        if stability_days > 0:
            scores["rollout_checks"] = {
                name: rollout_checks(
                    truth, emulator, cfg, stability_days, 10, check_inits, torch_device
                )
                for name, emulator in emulators.items()
            }
    except (StoreError, CheckpointError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(scores))
    else:
        print_skill(scores)


MembersOption = Annotated[int, typer.Option("--members", help="Ensemble members per init.")]
LeadDaysOption = Annotated[
    float, typer.Option("--lead-days", help="Forecast length, a multiple of the time step.")
]
ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        help="sfno (the checkpoints), nwp (the NWP baseline) or truth (the predictability limit).",
    ),
]
CheckpointsOption = Annotated[
    list[Path] | None,
    typer.Option("--checkpoints", help="Checkpoints or folders (default: ensemble.checkpoints)."),
]
BatchOption = Annotated[
    int | None, typer.Option("--batch-size", help="Members per task (default: automatic).")
]
SchedulerOption = Annotated[
    str, typer.Option("--scheduler", help="threads[:N], local-cluster:N or a scheduler address.")
]
SeedOption = Annotated[
    int | None, typer.Option("--seed", help="Base seed of the members (default: ensemble.seed).")
]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Continue an interrupted run of the same ensemble.")
]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="List what would be computed.")]


def run_ensemble_command(
    command: str,
    config: Path,
    init_times: list,
    members: int,
    lead_days: float,
    out: Path | None,
    model: str,
    checkpoints: list[Path] | None,
    batch_size: int | None,
    scheduler: str,
    seed: int | None,
    analyses: Path | None,
    device: str | None,
    flags: dict[str, object],
) -> None:
    """What `wxens forecast` and `wxens hindcast` share: prepare the config's ensemble, write
    it, print the summary."""
    from wxens.data_pipeline.analysis_store import StoreError
    from wxens.forecast.runner import RunOptions, run_configured_ensemble
    from wxens.models.checkpoint import CheckpointError

    online = flags.pop("online")
    if online["truth"] is not None or online["stats"] is not None:
        check_online_flags(online, out, flags)
    elif (out is None) == (flags["archive"] is None):
        fail("name one output: --out STORE or --archive ARCHIVE")
    if flags["archive"] is not None and (flags["overwrite"] or flags["resume"]):
        fail("an archive is appended to, never overwritten, and always resumes")
    cfg, _ = read_config(config)
    if seed is not None:
        cfg = cfg.model_copy(update={"ensemble": cfg.ensemble.model_copy(update={"seed": seed})})
    recorded = {
        "init_times": ", ".join(str(t) for t in init_times),
        "members": members,
        "lead_days": lead_days,
        "model": model,
        "seed": cfg.ensemble.seed,
        "checkpoints": checkpoints or cfg.ensemble.checkpoints,
        "batch_size": batch_size,
    }
    chosen = {"model": model, "checkpoints": checkpoints, "analyses": analyses}
    chosen |= {"device": pick_device(device), "recorded": recorded}
    archive = flags.pop("archive")
    options = RunOptions(
        archive or out, batch_size, scheduler, command=command, archive=archive is not None, **flags
    )
    try:
        if online["truth"] is not None:
            summary = run_online(cfg, init_times, members, lead_days, options, online, **chosen)
        else:
            summary = run_configured_ensemble(
                cfg, init_times, members, f"{lead_days * 24}h", options, **chosen
            )
    except (StoreError, CheckpointError, ValueError, OSError) as exc:
        fail(str(exc).splitlines()[0])
    typer.echo(summary)


def check_online_flags(online: dict, out: Path | None, flags: dict[str, object]) -> None:
    """Refuse a misuse of --score-against, --stats, --keep and --archive, in one line."""
    if online["truth"] is None or online["stats"] is None:
        fail("online scoring needs both --score-against TRUTH and --stats STATS")
    if out is not None or flags["overwrite"] or flags["resume"] or flags["dry_run"]:
        fail("online scoring stores no ensemble (--out) and always resumes; keep with --archive")
    if (online["keep"].strip().lower() == "none") != (flags["archive"] is None):
        fail("--keep mean or --keep N stores into --archive; --keep none needs no --archive")


def run_online(cfg, init_times, members, lead_days, options, online, **chosen):
    """`wxens forecast/hindcast --score-against`: `forecast.online.score_online`."""
    from wxens.forecast.online import score_online
    from wxens.forecast.runner import configured_run, lead_steps_of

    run = configured_run(cfg, **chosen, command=options.command)
    steps = lead_steps_of(f"{lead_days * 24}h", run.timestep)
    return score_online(
        run,
        init_times,
        members,
        steps,
        options,
        online["truth"],
        online["stats"],
        keep=online["keep"],  # "none", "mean" or N: score_online parses it
        references=parse_references(online["refs"]),
    )


def parse_references(entries: list[str]) -> dict[str, str]:
    """`--reference [NAME=]PATH` entries: NAME (default the path's stem) -> PATH or builder."""
    references = {}
    for entry in entries:
        name, sep, path = entry.rpartition("=")
        references[name if sep else Path(path).stem] = path
    return references


def parse_time(text: str, option: str):
    import numpy as np

    try:
        return np.datetime64(text, "ns")
    except ValueError:
        fail(f"{option} {text!r}: not a time (expected e.g. 2031-01-01T00)")


@app.command("forecast")
def forecast(
    config: ConfigOption,
    init: Annotated[str, typer.Option("--init", help="Initial time, e.g. 2031-01-01T00.")],
    members: MembersOption,
    lead_days: LeadDaysOption,
    out: OptionalOutOption = None,
    archive: ArchiveOption = None,
    model: ModelOption = "sfno",
    checkpoints: CheckpointsOption = None,
    batch_size: BatchOption = None,
    scheduler: SchedulerOption = "threads",
    seed: SeedOption = None,
    analyses: AnalysesOption = None,
    device: DeviceOption = None,
    overwrite: OverwriteOption = False,
    resume: ResumeOption = False,
    dry_run: DryRunOption = False,
    quiet: QuietOption = False,
    score_against: ScoreAgainstOption = None,
    stats: StatsOption = None,
    keep: KeepOption = "none",
    reference: ReferencesOption = [],  # noqa: B006 - typer needs a literal default
) -> None:
    """One ensemble forecast from the analysis at INIT into a Zarr store (--out), or appended
    to an archive (--archive; a no-op when the archive holds INIT). With --score-against,
    its statistics go to --stats as the members are made, and only --keep is stored."""
    flags = {"overwrite": overwrite, "resume": resume, "dry_run": dry_run, "quiet": quiet}
    flags["archive"] = archive
    flags["online"] = {"truth": score_against, "stats": stats, "keep": keep, "refs": reference}
    run_ensemble_command(
        "forecast",
        config,
        [parse_time(init, "--init")],
        members,
        lead_days,
        out,
        model,
        checkpoints,
        batch_size,
        scheduler,
        seed,
        analyses,
        device,
        flags,
    )


@app.command("hindcast")
def hindcast(
    config: ConfigOption,
    start: Annotated[str, typer.Option("--start", help="First init time.")],
    end: Annotated[str, typer.Option("--end", help="Last init time (included).")],
    members: MembersOption,
    out: OptionalOutOption = None,
    archive: ArchiveOption = None,
    every: Annotated[str, typer.Option("--every", help="Init spacing (e.g. 1D, 12h).")] = "1D",
    lead_days: LeadDaysOption = 10,
    model: ModelOption = "sfno",
    checkpoints: CheckpointsOption = None,
    batch_size: BatchOption = None,
    scheduler: SchedulerOption = "threads",
    seed: SeedOption = None,
    analyses: AnalysesOption = None,
    device: DeviceOption = None,
    overwrite: OverwriteOption = False,
    resume: ResumeOption = False,
    dry_run: DryRunOption = False,
    quiet: QuietOption = False,
    score_against: ScoreAgainstOption = None,
    stats: StatsOption = None,
    keep: KeepOption = "none",
    reference: ReferencesOption = [],  # noqa: B006 - typer needs a literal default
) -> None:
    """Ensembles from every init START, START + EVERY, ... up to END into one store;
    resumable (--resume) after an interruption, and a no-op on a complete store. With
    --archive, the inits the archive lacks are appended to it (a backfill). With
    --score-against, their statistics go to --stats as the members are made (a reforecast
    campaign that stores no member), and only --keep is stored."""
    import pandas as pd

    first, last = parse_time(start, "--start"), parse_time(end, "--end")
    try:
        inits = list(pd.date_range(first, last, freq=every).values)
    except ValueError as exc:
        fail(f"--every {every!r}: {exc}")
    if not inits:
        fail(f"no init times from {start} to {end}")
    flags = {"overwrite": overwrite, "resume": resume, "dry_run": dry_run, "quiet": quiet}
    flags["archive"] = archive
    flags["online"] = {"truth": score_against, "stats": stats, "keep": keep, "refs": reference}
    run_ensemble_command(
        "hindcast",
        config,
        inits,
        members,
        lead_days,
        out,
        model,
        checkpoints,
        batch_size,
        scheduler,
        seed,
        analyses,
        device,
        flags,
    )


def print_skill(scores: dict) -> None:
    """RMSE / climatological std at whole days, one row per model and variable."""
    days = [i for i, hours in enumerate(scores["lead_hours"]) if hours % 24 == 0]
    header = "model".ljust(24) + "variable".ljust(12)
    typer.echo(header + "".join(f"d{scores['lead_hours'][i] / 24:<6.0f}" for i in days))
    for name, by_variable in scores["rmse"].items():
        for variable, values in by_variable.items():
            sigma = scores["climatological_std"][variable]
            row = "".join(f"{values[i] / sigma:<7.3f}" for i in days)
            typer.echo(f"{name:<24}{variable:<12}{row}")


def parse_pairs(pairs: list[str], option: str) -> dict[str, str]:
    """`["a=b", ...]` -> `{"a": "b"}`; a pair without `=` fails naming the option."""
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            fail(f"{option} {pair!r}: expected OLD=NEW")
        parsed[key] = value
    return parsed


def read_names(path: Path | None) -> dict[str, dict[str, str]]:
    """The `--names` YAML: `{forecast: {old: new}, truth: {old: new}}`."""
    if path is None:
        return {}
    try:
        names = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        fail(f"--names {path}: {exc}".splitlines()[0])
    valid = isinstance(names, dict) and set(names) <= {"forecast", "truth"}
    if not valid or not all(
        isinstance(m, dict) and all(isinstance(v, str) for v in m.values()) for m in names.values()
    ):
        fail(f"--names {path}: expected forecast: and truth: maps of OLD: NEW names")
    return names


def split_regions(text: str) -> list[str]:
    """`--regions` items between commas; a box `NAME=S,N,W,E` keeps the three commas after its
    `=` (the four items from the `=` on are one box)."""
    tokens, items = text.split(","), []
    while tokens:
        count = 4 if "=" in tokens[0] else 1
        item = ",".join(tokens[:count]).strip()
        tokens = tokens[count:]
        if item:
            items.append(item)
    return items


def chosen_regions(text: str | None, masks: list[Path]) -> dict[str, Region] | None:
    """The regions of `--regions` (default: the four bands) and `--mask` files, each mask
    the one variable of a netCDF file or Zarr store, named by the file's stem; None (the
    default four bands) when neither is given. Raises ScoreError on a bad region or mask."""
    from wxens.verification.aggregation import REGIONS, MaskRegion, resolve_regions
    from wxens.verification.errors import ScoreError
    from wxens.verification.verify import open_store

    if text is None and not masks:
        return None
    regions: list[str | Region] = [*(split_regions(text) if text is not None else REGIONS)]
    for path in masks:
        variables = list(open_store(path).data_vars.values())
        if len(variables) != 1:
            raise ScoreError(f"--mask {path}: expected one variable, found {len(variables)}")
        regions.append(MaskRegion(variables[0].load(), name=path.stem))
    return resolve_regions(regions)


@app.command("verify")
def verify(
    forecast: Annotated[
        Path, typer.Option("--forecast", help="Ensemble store (Zarr/netCDF/GRIB).")
    ],
    truth: Annotated[Path, typer.Option("--truth", help="Truth store: analyses by time.")],
    out: OptionalOutOption = None,
    reference: ReferencesOption = [],  # noqa: B006 - typer needs a literal default
    variables: Annotated[str | None, typer.Option("--variables", help="Comma-separated.")] = None,
    scores: Annotated[
        str | None,
        typer.Option("--scores", help="Comma-separated score names (default: all of them)."),
    ] = None,
    regions: Annotated[
        str | None,
        typer.Option(
            "--regions",
            help=(
                "Comma-separated regions: names (global, nh_extratropics, tropics,"
                " sh_extratropics, land, sea, wb2_europe, ...), sets (weatherbench2) and boxes"
                " NAME=S,N,W,E in degrees, e.g. europe2=35,70,-10,40 (default: the four bands)."
            ),
        ),
    ] = None,
    masks: Annotated[
        list[Path],
        typer.Option(
            "--mask",
            help=(
                "A region from a netCDF file or Zarr store of one 0-1 variable on latitude and"
                " longitude, named by the file's stem; added to --regions (repeatable)."
            ),
        ),
    ] = [],  # noqa: B006
    stations: Annotated[
        Path | None,
        typer.Option(
            "--stations",
            help=(
                "CSV of station,latitude,longitude[,weight]: sample gridded forecasts and truth"
                " at these stations (bilinearly) and score them as stations."
            ),
        ),
    ] = None,
    time_tolerance: Annotated[
        str | None,
        typer.Option(
            "--time-tolerance",
            help="Match each valid time to the nearest truth time within this, e.g. 12h.",
        ),
    ] = None,
    quantiles: Annotated[
        str, typer.Option("--quantiles", help="Climatological quantiles for threshold events.")
    ] = "0.5,0.9,0.95,0.99",
    rename_forecast: Annotated[
        list[str],
        typer.Option("--rename-forecast", help="OLD=NEW name in the forecast (repeatable)."),
    ] = [],  # noqa: B006
    rename_truth: Annotated[
        list[str], typer.Option("--rename-truth", help="OLD=NEW name in the truth (repeatable).")
    ] = [],  # noqa: B006
    names: Annotated[
        Path | None, typer.Option("--names", help="YAML with forecast: and truth: name maps.")
    ] = None,
    scheduler: Annotated[
        str, typer.Option("--scheduler", help="threads, local-cluster:N or a scheduler address.")
    ] = "threads",
    truncation: Annotated[
        int | None, typer.Option("--truncation", help="Spectra up to this wavenumber.")
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write an HTML report here.")
    ] = None,
    stats: StatsOption = None,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Score an ensemble (and references) against a truth store: CRPS, spread-skill, ranks,
    reliability, extremes, spectra; by variable, region and lead time. With --stats, update
    a statistics store instead (a nightly run: only the pairs whose truth is new), and with
    --out as well, write the scores of all its inits."""
    from wxens.verification.errors import ScoreError
    from wxens.verification.geometry import read_stations
    from wxens.verification.report import report as write_report
    from wxens.verification.report import summary_table
    from wxens.verification.scheduler import dask_scheduler
    from wxens.verification.stats_store import finalize, update_statistics
    from wxens.verification.verify import VerifyOptions, write_scores
    from wxens.verification.verify import verify as run_verify

    def listed(text: str | None) -> list[str] | None:
        return [item.strip() for item in text.split(",") if item.strip()] if text else None

    if out is None and stats is None:
        fail("name an output: --out SCORES or --stats STATS")
    if out is not None and out.exists() and not overwrite:
        fail(f"{out} already exists; pass --overwrite to replace it")
    name_maps = read_names(names)
    try:
        options = VerifyOptions(
            quantiles=tuple(float(q) for q in quantiles.split(",")),
            truncation=truncation,
            forecast_renames={
                **name_maps.get("forecast", {}),
                **parse_pairs(rename_forecast, "--rename-forecast"),
            },
            truth_renames={
                **name_maps.get("truth", {}),
                **parse_pairs(rename_truth, "--rename-truth"),
            },
            stations=None if stations is None else read_stations(stations),
            valid_time_tolerance=time_tolerance,
        )
        references = parse_references(reference)
        choices = {
            "scores": listed(scores),
            "regions": chosen_regions(regions, masks),
            "variables": listed(variables),
            "options": options,
        }
        with dask_scheduler(scheduler, progress=not quiet):
            if stats is None:
                result = run_verify(
                    forecast, truth, out, references, **choices, overwrite=overwrite
                )
            else:
                typer.echo(update_statistics(stats, forecast, truth, references, **choices))
                if out is None:
                    return
                result = finalize(stats)
                write_scores(result, out, overwrite)
        if report is not None:
            write_report(result, report)  # scorecards against the first reference
    except (ScoreError, ValueError, OSError) as exc:
        fail(str(exc).splitlines()[0])
    typer.echo(summary_table(result))
    typer.echo(f"wrote {out}" + (f" and {report}" if report else ""), err=True)


@app.command("calibrate")
def calibrate_command(
    config: ConfigOption,
    knob: Annotated[
        str,
        typer.Option(
            "--knob",
            help=(
                "bred_fraction, random_field_fraction, noise_scale, parameter_sigma,"
                " tendency_sigma or tendency_additive."
            ),
        ),
    ],
    start: Annotated[str, typer.Option("--start", help="First calibration init.")],
    end: Annotated[str, typer.Option("--end", help="Last calibration init (included).")],
    out: Annotated[Path, typer.Option("--out", help="The calibrated config to write.")],
    model: ModelOption = "sfno",
    every: Annotated[str, typer.Option("--every", help="Init spacing (e.g. 5D).")] = "5D",
    members: Annotated[int, typer.Option("--members", help="Members of each try.")] = 8,
    lead_days: LeadDaysOption = 10,
    rounds: Annotated[int, typer.Option("--rounds", help="Golden-section rounds.")] = 6,
    low: Annotated[float | None, typer.Option("--low", help="Lowest value tried.")] = None,
    high: Annotated[float | None, typer.Option("--high", help="Highest value tried.")] = None,
    analyses: AnalysesOption = None,
    band: Annotated[
        float,
        typer.Option(
            "--band",
            help=(
                "Half-width b of the band [1 - b, 1 + b] the spread-skill ratio of each day"
                " is held in; 0.05 leaves room for another period's weather."
            ),
        ),
    ] = 0.1,
    overwrite: OverwriteOption = False,
) -> None:
    """Tune one dispersion knob of one member kind on calibration inits that never overlap
    the test period: golden-section search for the lowest fair CRPS with the spread-skill
    ratio held in [0.9, 1.1] (--band) over days 2-10; writes a config with the chosen value
    and the table of what it tried (--config itself is never changed)."""
    import pandas as pd
    from wxens.data_pipeline.analysis_store import StoreError
    from wxens.forecast.calibrate import KNOBS, calibrate, write_calibrated
    from wxens.models.checkpoint import CheckpointError

    if out.exists() and not overwrite:
        fail(f"{out} already exists; pass --overwrite to replace it")
    if out.resolve() == config.resolve():
        fail("--out must not be --config: the calibrated config goes beside it")
    read_config(config)
    inits = pd.date_range(parse_time(start, "--start"), parse_time(end, "--end"), freq=every)
    try:
        result = calibrate(
            config,
            model,
            knob,
            inits.values,
            members,
            lead_days,
            analyses=analyses,
            rounds=rounds,
            low=low,
            high=high,
            band=band,
        )
    except (StoreError, CheckpointError, ValueError, OSError) as exc:
        fail(str(exc).splitlines()[0])
    write_calibrated(result, config, out, KNOBS[knob])
    typer.echo(result.table())
    typer.echo(f"chose {knob} = {result.best[0]:.4g}; wrote {out}")


@app.command("targets")
def targets_command(
    stats: Annotated[
        list[str],
        typer.Option(
            "--stats",
            help="Statistics store (wxens verify --stats), or NAME=STORE once per system:"
            " each store's forecast as system NAME.",
        ),
    ],
    baseline: Annotated[
        str, typer.Option("--baseline", help="The system every other must beat on CRPS.")
    ] = "nwp",
    limit: Annotated[
        str, typer.Option("--limit", help="The predictability limit's system.")
    ] = "limit",
    resamples: Annotated[int, typer.Option("--resamples", help="Bootstrap resamples.")] = 500,
    block: Annotated[
        int | None, typer.Option("--block", help="Inits a bootstrap block spans.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the table as JSON here.")
    ] = None,
) -> None:
    """The targets of a trustworthy ensemble for every system of a statistics store:
    spread-skill ratio on days 2-10, outlier fraction, fair CRPS against the baseline and the
    limit, day-10 small-scale power, EFI ROC area and the rank test, with moving-block
    bootstrap intervals over the inits (verification/targets.py)."""
    from wxens.verification.errors import ScoreError
    from wxens.verification.targets import bootstrap_targets, targets_summary, targets_table

    if resamples < 1:
        fail(f"--resamples must be at least 1, got {resamples}")
    named = [entry for entry in stats if "=" in entry]
    if len(stats) > 1 and len(named) != len(stats):
        fail("give --stats STORE once, or --stats NAME=STORE for every system")
    stores = parse_pairs(named, "--stats") if named else stats[0]
    try:
        values = bootstrap_targets(stores, baseline, limit, resamples=resamples, block=block)
    except (ScoreError, ValueError, OSError) as exc:
        fail(str(exc).splitlines()[0])
    typer.echo(targets_table(values))
    attrs = values.attrs
    typer.echo(
        f"{attrs['inits']} inits; {attrs['confidence']:.0%} intervals from {attrs['resamples']}"
        f" moving-block resamples of {attrs['block']} inits"
    )
    if json_out is not None:
        json_out.write_text(json.dumps(targets_summary(values), indent=2))


@app.command("finalize")
def finalize_scores(
    stats: Annotated[
        Path, typer.Option("--stats", help="Statistics store (wxens verify --stats).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Scores store to write.")],
    last: Annotated[int | None, typer.Option("--last", help="Only the last N inits.")] = None,
    start: Annotated[str | None, typer.Option("--start", help="First init time.")] = None,
    end: Annotated[str | None, typer.Option("--end", help="Last init time (included).")] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write an HTML report here.")
    ] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """The scores of a set of a statistics store's inits (all, the last N, or START to END),
    as `wxens verify` writes them, without reading a forecast."""
    from wxens.verification.errors import ScoreError
    from wxens.verification.report import report as write_report
    from wxens.verification.report import summary_table
    from wxens.verification.stats_store import finalize
    from wxens.verification.verify import write_scores

    if out.exists() and not overwrite:
        fail(f"{out} already exists; pass --overwrite to replace it")
    if last is not None and (start or end):
        fail("choose the inits with --last N or with --start/--end, not both")
    inits = last if last is not None else (slice(start, end) if start or end else None)
    try:
        result = finalize(stats, inits)
        write_scores(result, out, overwrite)
        if report is not None:
            write_report(result, report)
    except (ScoreError, ValueError, OSError) as exc:
        fail(str(exc).splitlines()[0])
    typer.echo(summary_table(result))
    typer.echo(f"wrote {out}" + (f" and {report}" if report else ""), err=True)


@app.command("report")
def report(
    scores: Annotated[Path, typer.Argument(help="Scores store written by `wxens verify`.")],
    out: Annotated[Path, typer.Option("--out", help="Report folder (index.html, PNG, CSV).")],
    reference: Annotated[
        str | None,
        typer.Option("--reference", help="System of the scorecards (default: the second)."),
    ] = None,
) -> None:
    """An HTML report of a scores store: scorecards, curves by lead, rank histograms,
    reliability, spectra, maps, and every score as CSV and JSON; prints index.html's path."""
    from wxens.verification.errors import ScoreError
    from wxens.verification.report import report as write_report

    try:
        index = write_report(scores, out, reference=reference)
    except (ScoreError, ValueError, KeyError, OSError) as exc:
        fail(str(exc).splitlines()[0])
    typer.echo(str(index.resolve()))


@app.command("nightly")
def nightly(
    config: Annotated[Path, typer.Option("--config", help="The ops config (ops.yaml).")],
    date: Annotated[
        str | None, typer.Option("--date", help="The night's date (default: today, UTC).")
    ] = None,
) -> None:
    """One night of operations: extend the truth, append the init to the archive, update the
    statistics, write the scores (and reports). Each step is skipped when done already.

    Exit codes: 0 done; 1 bad input (nothing changed); 4 another run is writing; 5 a step
    failed (a full disk): rerun to resume."""
    import datetime as dt

    from wxens.forecast.nightly import load_nightly_settings, run_night, timestamped
    from wxens.models.checkpoint import CheckpointError

    from wxens.stores import StoreBusyError, StoreError

    try:
        settings = load_nightly_settings(config)
    except ConfigError as exc:
        fail(str(exc))
    log = timestamped(settings.log, typer.echo)
    night = date or dt.datetime.now(dt.UTC).date().isoformat()
    try:
        run_night(settings, night, log)
    except StoreBusyError as exc:
        log(f"{night} error: {str(exc).splitlines()[0]}")
        raise typer.Exit(code=4) from None
    except (StoreError, ConfigError, CheckpointError, ValueError) as exc:
        log(f"{night} error: {str(exc).splitlines()[0]}")
        raise typer.Exit(code=1) from None
    except OSError as exc:
        log(f"{night} error: {str(exc).splitlines()[0]}")
        raise typer.Exit(code=5) from None


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as the one line `warning: MESSAGE` (`warnings.formatwarning`)."""
    return f"warning: {message}\n"


def main() -> None:  # pragma: no cover - console entry
    keep_freed_memory()
    warnings.formatwarning = one_line_warning
    app(prog_name="wxens")


if __name__ == "__main__":
    sys.exit(main())
