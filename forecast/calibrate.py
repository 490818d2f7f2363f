"""Calibration as a command (`wxens calibrate`, `calibrate`): one dispersion knob of one member
kind tuned on a calibration period, written into a new config with the table of what it
tried.

The search: golden-section search (Kiefer 1953) on the knob's logarithm over `[low, high]`,
each round one new ensemble (the first round two). Each try runs the kind's ensemble from the
calibration inits and scores it against the analyses; its objective is

    J = mean_{variable, lead} CRPS / sigma_clim  x  (1 + 10 mean_{variable, lead} e),
    e = max(0, |spread-skill ratio - 1| - b)

over the leads of days 2 to 10 (those of the run), `sigma_clim` each variable's area-mean
temporal standard deviation over the calibration period: the fair CRPS, made unitless, and a
penalty that is zero while the spread-skill ratio stays within [1 - b, 1 + b] (`band` b, 0.1
by default). Near its minimum the fair CRPS is flat (it changes by about 0.1 % while the
ratio moves by 0.05), so J cannot tell tries apart there; a narrower band (b = 0.05) picks
the try whose every day is nearest 1, and leaves room for a test period whose weather shifts
the ratio of a day by a few hundredths. Golden-section search assumes J unimodal in the
knob, which a dispersion knob gives (CRPS falls, then rises, as the spread passes the
error); `rounds` rounds shrink the bracket by 0.618^rounds.

Refused in one line, with no config written: a calibration period that overlaps the test
period, a knob the kind does not have, fewer than `MIN_INITS` inits, and a try whose members
are not whole cycles of the kind's models (`member_cycle`): a try that leaves some
checkpoints or mean networks without members reads a lower spread-skill ratio than the
ensemble it stands for, and one that weights them unevenly another one.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import xarray as xr
import yaml
from wxens.data_pipeline.analysis_store import open_analyses
from wxens.data_pipeline.config import ExperimentConfig, load_config, merged, parse_config
from wxens.forecast.runner import (
    ForecastError,
    RunOptions,
    checkpoint_group_size,
    load_models,
    member_checkpoints,
    run_configured_ensemble,
)
from wxens.models.checkpoint import find_checkpoints
from wxens.models.kinds import KINDS

MIN_INITS = 8
"""Fewest calibration inits: the spread-skill ratio of N independent inits has a standard
error of about 1/sqrt(2N), 0.25 at N = 8; fewer would leave it wider than twice the [0.9, 1.1]
band the search holds it to."""

GOLDEN = (math.sqrt(5) - 1) / 2

BAND = 0.1
"""The default half-width b of the band [1 - b, 1 + b] that J holds each spread-skill ratio in."""


@dataclass(frozen=True)
class Knob:
    """A dispersion setting: where it lives in the config, which kinds read it, its range."""

    name: str
    path: tuple[str, ...]
    """Keys into the config; `{kind}` stands for the member kind."""
    applies: Callable[[ExperimentConfig, str], str | None]
    """`(config, kind) -> None`, or why the kind does not have the knob."""
    low: float
    high: float

    def setting(self, kind: str, value: float) -> dict:
        """The config fragment that sets the knob to `value` for `kind`: in the kind's own
        config section where it has the setting (`nwp.bred_fraction`), else at `path`."""
        settings = KINDS[kind].settings
        if settings is not None and self.path[-1] in settings.model_fields:
            return {kind: {self.path[-1]: float(value)}}
        keys = [key.format(kind=kind) for key in self.path]
        fragment: dict = {keys[-1]: float(value)}
        for key in reversed(keys[:-1]):
            fragment = {key: fragment}
        return fragment


def _breeds(config: ExperimentConfig, kind: str) -> str | None:
    if config.initial_perturbation(kind) != "bred_vector":
        return f"kind {kind} does not start from bred vectors (perturbation.initial)"
    return None


def _random_field(config: ExperimentConfig, kind: str) -> str | None:
    if config.initial_perturbation(kind) != "random_field":
        return f"kind {kind} does not start from random fields (perturbation.initial)"
    return None


def _weights(config: ExperimentConfig, kind: str) -> str | None:
    if not KINDS[kind].from_checkpoints:
        return f"kind {kind} has no network weights to perturb"
    return None


def _member_setting(name: str, low: float, high: float) -> Knob:
    """The knob of `ensemble.kinds.<kind>.<name>`, one of a kind's `member_settings`: kinds
    that do not read it are refused with what they lack, as the config check words it
    (`EmulatorKind.lacks`)."""

    def applies(config: ExperimentConfig, kind: str) -> str | None:
        lacks = KINDS[kind].lacks(name)
        return f"kind {kind}: {lacks}" if lacks else None

    return Knob(name, ("ensemble", "kinds", "{kind}", name), applies, low, high)


KNOBS = {
    knob.name: knob
    for knob in (
        Knob("bred_fraction", ("perturbation", "bred_fraction"), _breeds, 0.05, 2.0),
        Knob(
            "random_field_fraction",
            ("perturbation", "random_field_fraction"),
            _random_field,
            0.01,
            1.0,
        ),
        _member_setting("noise_scale", 0.25, 8.0),
        Knob("parameter_sigma", ("perturbation", "parameter_sigma"), _weights, 1e-4, 0.1),
        _member_setting("tendency_sigma", 0.05, 2.0),
        _member_setting("correction_damping", 0.05, 4.0),
        _member_setting("tendency_additive", 0.01, 1.0),
    )
}
"""The knobs `wxens calibrate --knob` searches, by name."""


@dataclass
class Calibration:
    """What a calibration tried (`tries`: knob value, objective J, mean normalised CRPS, mean
    spread-skill ratio, mean outlier fraction over the calibrated one 2/(M+1), M members; all
    over days 2-10) and the value it chose. J does not use the outliers: they show where the
    spread is, which the ratio, a mean, does not. `band`: the half-width b of J's band."""

    knob: str
    kind: str
    tries: list[tuple[float, float, float, float, float]] = field(default_factory=list)
    band: float = BAND

    @property
    def best(self) -> tuple[float, float, float, float, float]:
        return min(self.tries, key=lambda row: row[1])

    def table(self) -> str:
        lines = [
            f"| {self.knob} | J | CRPS / sigma_clim | spread-skill ratio | outliers / 2/(M+1) |"
        ]
        lines.append("| --- | --- | --- | --- | --- |")
        lines += [
            f"| {v:.4g} | {j:.4f} | {c:.4f} | {r:.3f} | {o:.2f} |" for v, j, c, r, o in self.tries
        ]
        return "\n".join(lines)


def golden_section(
    objective: Callable[[float], float], low: float, high: float, rounds: int
) -> float:
    """The minimiser of a unimodal `objective` on `[low, high]`, to a bracket of
    `(high - low) 0.618^rounds`: `rounds + 1` evaluations (each round one, the first two).

    Example:
        >>> round(golden_section(lambda x: (x - 0.3) ** 2, 0.0, 1.0, 20), 3)
        0.3
    """
    a, b = low, high
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = objective(c), objective(d)
    for _ in range(rounds - 1):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = objective(c)
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = objective(d)
    return c if fc <= fd else d


class MemberCycle(NamedTuple):
    """How a kind's members repeat: `models` member models, a cycle of `members` members,
    drawn `bred` (in bred pairs) or not."""

    models: int
    members: int
    bred: bool


def member_cycle(config: ExperimentConfig, kind: str) -> MemberCycle:
    """How many member models `kind`'s ensemble of `config` runs (one per checkpoint, or per
    mean network of a residual diffusion checkpoint) and the members of one cycle of them:
    the period of the member-to-model assignment (`runner.member_checkpoints`;
    `checkpoint_group` times the models for one kind, longer with the shares of several),
    and at least a bred pair where the kind starts from bred vectors. The period is found
    from the assignment itself, because with shares and checkpoint counts that have common
    factors no closed form is simpler."""
    checkpoints = []
    if KINDS[kind].from_checkpoints:
        checkpoints = [str(p) for p in find_checkpoints(list(config.ensemble.checkpoints))]
    models = load_models(kind, checkpoints, config, torch.device("cpu"))
    shares = sum(member.share for member in config.ensemble.kinds.values())
    longest = checkpoint_group_size(config) * len(models) * max(1, shares)
    assigned = member_checkpoints(range(2 * longest), [m.kind for m in models], config)
    cycle = next(p for p in range(1, longest + 1) if (assigned[p:] == assigned[:-p]).all())
    bred = config.initial_perturbation(kind) == "bred_vector"
    return MemberCycle(len(models), math.lcm(cycle, 2 if bred else 1), bred)


def check_request(
    config: ExperimentConfig, kind: str, knob: str, init_times: np.ndarray, members: int
) -> Knob:
    """Refuse, with one line, a knob the kind lacks, too few inits, inits in the test
    period, or a try of `members` that is not whole cycles of the kind's models; return the
    knob."""
    if knob not in KNOBS:
        raise ForecastError(f"knob {knob!r}: expected one of {', '.join(KNOBS)}")
    if kind not in KINDS:
        raise ForecastError(f"model {kind!r}: expected one of {', '.join(KINDS)}")
    reason = KNOBS[knob].applies(config, kind)
    if reason is not None:
        raise ForecastError(f"knob {knob}: {reason}")
    if len(init_times) < MIN_INITS:
        raise ForecastError(
            f"calibration needs at least {MIN_INITS} inits to estimate the spread-skill ratio,"
            f" got {len(init_times)}"
        )
    test = config.periods.test
    years = pd.DatetimeIndex(init_times).year
    if ((years >= test.first) & (years <= test.last)).any():
        raise ForecastError(
            f"the calibration inits ({str(init_times[0])[:10]} to {str(init_times[-1])[:10]})"
            f" overlap the test period {test.first}-{test.last}"
        )
    cycle = member_cycle(config, kind)
    if members % cycle.members:
        raise ForecastError(
            f"--members {members}: kind {kind}'s members come in cycles of {cycle.members}"
            f" over its {cycle.models} model(s){' in bred pairs' if cycle.bred else ''}; a try"
            f" of {members} would not stand for the ensemble (use a multiple of"
            f" {cycle.members})"
        )
    return KNOBS[knob]


def objective_j(crps: float, ratio: np.ndarray | xr.DataArray, band: float = BAND) -> float:
    """The search's objective: the mean normalised fair CRPS `crps` (unitless) times
    `1 + 10 mean(max(0, |ratio - 1| - band))` over the spread-skill ratios `ratio` of each
    variable and lead (see the module).

    Example:
        >>> round(objective_j(0.3, np.array([1.0, 1.15, 0.8]), band=0.1), 4)
        0.45
    """
    excess = float(np.maximum(0.0, abs(np.asarray(ratio) - 1) - band).mean())
    return crps * (1 + 10 * excess)


def calibrate(
    config_path: Path,
    kind: str,
    knob: str,
    init_times: np.ndarray,
    members: int,
    lead_days: float,
    *,
    analyses: Path | None = None,
    rounds: int = 6,
    low: float | None = None,
    high: float | None = None,
    band: float = BAND,
) -> Calibration:
    """Tune `knob` of `kind`'s members on `init_times` (see the module); return the tries."""
    config = load_config(config_path)
    init_times = np.sort(np.asarray(init_times, dtype="datetime64[ns]"))
    chosen = check_request(config, kind, knob, init_times, members)
    low = chosen.low if low is None else low
    high = chosen.high if high is None else high
    if rounds < 1:
        raise ForecastError(f"the search needs at least 1 round, got {rounds}")
    if not 0 < band < 1:
        raise ForecastError(f"the spread-skill band needs 0 < band < 1, got {band}")
    if not 0 < low < high:
        raise ForecastError(f"the search range needs 0 < low < high, got {low} and {high}")
    source = Path(analyses or config.analyses)
    sigma = climate_sigma(open_analyses(source), config, init_times)
    result = Calibration(knob, kind, band=band)

    def objective(log_value: float) -> float:
        value = math.exp(log_value)
        trial = _with_setting(config, chosen.setting(kind, value))
        scores = scored_trial(
            trial, kind, init_times, members, lead_days, source, ["outlier_fraction"]
        ).squeeze("region", drop=True)
        days = scores.lead_time / np.timedelta64(1, "D")
        scores = scores.where((days >= 2) & (days <= 10), drop=True)
        crps = float((scores.crps.sel(system="forecast") / sigma).mean())
        ratio = scores.spread_skill_ratio.sel(system="forecast")
        j = objective_j(crps, ratio, band)
        outliers = float(scores.outlier_fraction.sel(system="forecast").mean()) * (members + 1) / 2
        result.tries.append((value, j, crps, float(ratio.mean()), outliers))
        return j

    golden_section(objective, math.log(low), math.log(high), rounds)
    return result


def climate_sigma(
    truth: xr.Dataset, config: ExperimentConfig, init_times: np.ndarray
) -> xr.DataArray:
    """Each variable's area-mean temporal standard deviation over the inits' period (field
    units, dimension `variable`): what J's CRPS is divided by."""
    period = truth[list(config.variables)].sel(time=slice(init_times[0], init_times[-1]))
    return period.std("time").mean(("latitude", "longitude")).to_array("variable").compute()


def scored_trial(
    config: ExperimentConfig,
    kind: str,
    init_times: np.ndarray,
    members: int,
    lead_days: float,
    analyses: Path,
    extra_scores: list[str],
) -> xr.Dataset:
    """`kind`'s ensemble of `config` from `init_times` (`members` members, `lead_days` days,
    in a temporary store) scored against `analyses`: the fair CRPS, the spread-skill ratio
    and `extra_scores`, global, system `forecast`."""
    from wxens.verification.verify import VerifyOptions, score

    with tempfile.TemporaryDirectory(prefix="wxens-calibrate-") as folder:
        out = Path(folder) / "ensemble.zarr"
        options = RunOptions(out, quiet=True, command="calibrate")
        lead = f"{lead_days * 24}h"
        run_configured_ensemble(
            config, init_times, members, lead, options, model=kind, analyses=analyses
        )
        return score(
            xr.open_zarr(out),
            open_analyses(analyses),
            scores=["crps", "spread_skill_ratio", *extra_scores],
            regions=["global"],
            options=VerifyOptions(maps=False),
        ).compute()


def _with_setting(config: ExperimentConfig, fragment: dict) -> ExperimentConfig:
    """`config` with the knob's fragment laid over it (validated again)."""
    return parse_config(merged(config.model_dump(mode="json"), fragment, depth=4))


def write_calibrated(calibration: Calibration, config_path: Path, out: Path, knob: Knob) -> None:
    """A config at `out` that is `config_path` with the chosen value, the table as comments."""
    value = calibration.best[0]
    relative = os.path.relpath(Path(config_path).resolve(), Path(out).resolve().parent)
    header = [
        f"# wxens calibrate: {calibration.knob} of kind {calibration.kind} (golden-section",
        "# search; J = mean CRPS / sigma_clim x (1 + 10 x mean excess of |ratio - 1| over"
        f" {calibration.band:g}),",
        "# leads of days 2-10). What it tried:",
        *[f"# {line}" for line in calibration.table().splitlines()],
    ]
    fragment = knob.setting(calibration.kind, round(value, 6))
    if "ensemble" in fragment:
        # Under `base:` the `kinds` mapping is replaced whole, not merged: write every kind's
        # settings, so that the kind's other settings (a ramp, a share) stay as they were.
        kinds = load_config(config_path).ensemble.kinds
        written = {
            name: kind.model_dump(mode="json", exclude_defaults=True)
            for name, kind in kinds.items()
        }
        fragment = merged({"ensemble": {"kinds": written}}, fragment, depth=4)
    body = {"base": str(relative), **fragment}
    Path(out).write_text("\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False))
