"""One night of operations (`wxens nightly --config ops.yaml [--date D]`, `run_night`).

1. truth: extend the truth store to the night's init time (`truth.extend_truth`), or, for
   real analyses, ingest the new files matched by `sources` (`reanalysis.extend_analyses`);
2. forecast: append the init to the archive (`runner.append_ensemble`);
3. statistics: add the (init, lead) pairs whose valid time the truth now holds
   (`verification.stats_store.update_statistics`);
4. scores: the scores of every night and of the last `recent_nights` (`finalize`), written to
   `scores/all.zarr` and `scores/recent.zarr`, and their reports when `report` is set.

Each step is skipped when done already, so a rerun of a night does nothing, and the next run
finishes a night that crashed (each step is resumable on its own). Every line of progress is
appended, with a UTC timestamp, to the `log` file.

Exit codes of the command, for a scheduler to alert on (`EXIT_CODES`).
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from wxens.data_pipeline.config import ConfigError, describe_error, load_config, read_yaml

EXIT_CODES = {
    0: "the night is done (or was already)",
    1: "bad input: the ops config, the truth (a gap, time going backwards), or an archive or"
    " statistics store of another ensemble; nothing was changed: fix it, then rerun",
    4: "another run is writing the truth, archive or statistics; it will finish the night",
    5: "a step failed (a full disk, an I/O error); rerun: the night resumes where it stopped",
}
"""What each exit code of `wxens nightly` means."""


class NightlySettings(BaseModel):
    """`ops.yaml`: what a night runs and where it keeps its stores (paths relative to the
    working directory)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: Path
    """The experiment config: the truth world, the members' settings."""
    truth: Path
    """The analysis store, extended each night (`wxens data truth` or, for real analyses,
    `wxens data ingest` makes the first one)."""
    sources: str | None = None
    """Real analyses: a glob pattern of reanalysis files (GRIB, netCDF, Zarr) that the
    config's `ingest` section reads; each night appends those newer than the store's last
    (`reanalysis.extend_analyses`). None: the embedded truth world, run on by its model."""
    archive: Path
    stats: Path
    scores: Path
    """A folder: `all.zarr` (every night) and `recent.zarr` (the last `recent_nights`)."""
    members: Annotated[int, Field(ge=1)]
    lead_days: Annotated[float, Field(gt=0)]
    model: str = "sfno"
    checkpoints: list[Path] | None = None
    init_hour: Annotated[int, Field(ge=0, le=23)] = 0
    references: list[str] = ["persistence"]
    score_names: list[str] | None = None
    regions: list[str] | None = None
    recent_nights: Annotated[int, Field(ge=1)] = 30
    report: Path | None = None
    """A folder for the HTML reports (`all/`, `recent/`); none when unset."""
    log: Path | None = None
    scheduler: str = "threads"


def load_nightly_settings(path: str | Path) -> NightlySettings:
    """Read and validate `ops.yaml`; `ConfigError` with one line naming the culprit."""
    data = read_yaml(Path(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return NightlySettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_error(exc.errors()[0], NightlySettings)}") from None


class NightlyError(ValueError):
    """Input a night cannot run on; one line naming the culprit."""


@dataclass
class NightReport:
    """What each step of a night did ("done ..." or "skipped ...") and its wall time."""

    date: str
    steps: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return "\n".join(f"{self.date} {step}: {what}" for step, what in self.steps.items())


def run_night(settings: NightlySettings, date: object, log=print) -> NightReport:
    """Run the night of `date` (its init at `init_hour`), step by step, skipping what is done;
    `log(line)` gets each step's outcome as it ends."""
    config = load_config(settings.config)
    init = pd.Timestamp(date).normalize() + pd.Timedelta(hours=settings.init_hour)
    report = NightReport(str(init)[:16])
    started = time.perf_counter()

    def record(step: str, what: str) -> None:
        nonlocal started
        seconds, started = time.perf_counter() - started, time.perf_counter()
        report.steps[step], report.seconds[step] = what, seconds
        log(f"{report.date} {step}: {what} ({seconds:.1f} s)")

    check_truth(settings.truth)
    added = update_analyses(settings, config, init)
    check_truth(settings.truth)
    record("truth", f"done, {added} analyses added" if added else "skipped, up to date")
    record("forecast", _forecast(settings, config, init))
    changed = _statistics(settings)
    record("statistics", changed)
    record("scores", _scores(settings, refresh=not changed.startswith("skipped")))
    return report


def update_analyses(settings: NightlySettings, config, init: pd.Timestamp) -> int:
    """Bring the analyses up to the night's init: the truth world's model runs on
    (`truth.extend_truth`), or the new files of `settings.sources` are ingested
    (`reanalysis.extend_analyses`); return how many analyses were added."""
    if settings.sources is None:
        from wxens.data_pipeline.truth import extend_truth

        return extend_truth(config, settings.truth, init)
    from wxens.data_pipeline.reanalysis import extend_analyses

    files = [Path(p) for p in sorted(glob.glob(settings.sources))]
    return extend_analyses(config, settings.truth, files, init)


def check_truth(path: Path) -> None:
    """Refuse a truth whose times go backwards or skip an analysis (its steps must all be
    its first step)."""
    from wxens.data_pipeline.analysis_store import open_analyses

    times = open_analyses(path).get_index("time").values
    steps = np.diff(times)
    bad = np.flatnonzero(steps != steps[0]) if steps.size else steps
    if bad.size:
        kind = "goes backwards" if steps[bad[0]] <= np.timedelta64(0) else "has a gap"
        raise NightlyError(f"{path}: the truth {kind} after {str(times[bad[0]])[:16]}")


def _forecast(settings: NightlySettings, config, init: pd.Timestamp) -> str:
    from wxens.forecast.runner import RunOptions, run_configured_ensemble

    options = RunOptions(
        settings.archive, scheduler=settings.scheduler, quiet=True, command="nightly", archive=True
    )
    summary = run_configured_ensemble(
        config,
        [np.datetime64(init, "ns")],
        settings.members,
        f"{settings.lead_days * 24}h",
        options,
        model=settings.model,
        checkpoints=settings.checkpoints,
        analyses=settings.truth,
        recorded={"members": settings.members, "lead_days": settings.lead_days},
    )
    if not summary.written:
        return "skipped, the archive holds the init"
    return f"done, {summary.member_steps} member-steps in {summary.seconds:.1f} s"


def _statistics(settings: NightlySettings) -> str:
    from wxens.verification.stats_store import update_statistics

    update = update_statistics(
        settings.stats,
        settings.archive,
        settings.truth,
        {name: name for name in settings.references},
        scores=settings.score_names,
        regions=settings.regions,
    )
    pairs = sum(update.pairs.values())
    if not pairs:
        return "skipped, no new (init, lead) pair"
    return f"done, {json.dumps(update.pairs)} new (init, lead) pairs"


def _scores(settings: NightlySettings, refresh: bool) -> str:
    from wxens.verification.report import report as write_report
    from wxens.verification.stats_store import finalize
    from wxens.verification.verify import write_scores

    outputs = {"all": None, "recent": settings.recent_nights}
    missing = [name for name in outputs if not (settings.scores / f"{name}.zarr").exists()]
    if not refresh and not missing:
        return "skipped, up to date"
    settings.scores.mkdir(parents=True, exist_ok=True)
    for name, inits in outputs.items():
        scores = finalize(settings.stats, inits)
        write_scores(scores, settings.scores / f"{name}.zarr", overwrite=True)
        if settings.report is not None:
            write_report(scores, settings.report / name)
    return f"done, {settings.scores}/all.zarr and recent.zarr" + (
        f", reports in {settings.report}" if settings.report is not None else ""
    )


def timestamped(log_file: Path | None, echo: Callable[[str], object]) -> Callable[[str], None]:
    """A `log(line)` that echoes `line` and appends it, with a UTC timestamp, to `log_file`."""

    def log(line: str) -> None:
        echo(line)
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            with log_file.open("a", encoding="utf-8") as handle:
                handle.write(f"{stamp} {line}\n")

    return log
