"""The pipeline behind `wxens verify`: open any ensemble store, map its names, score it.

1. `standardise` maps a store's names onto ours (cfgrib's `number`/`time`/`step`,
   WeatherBench2's `prediction_timedelta`, explicit renames), adds `lead_time = 0` to an
   ensemble of analyses, and splits extra dimensions such as pressure levels into variables
   (`z` at 500 hPa becomes `z500`).
2. `truth_at_valid_times` picks the truth at `init_time + lead_time` on the same grid.
3. `score_system` builds every score lazily; `verify` computes all systems in one dask pass and
   writes the scores dataset described in `verification/__init__.py`.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import xarray as xr
from threadpoolctl import threadpool_limits
from wxens.verification import metrics
from wxens.verification.aggregation import (
    LATITUDE,
    LONGITUDE,
    REGIONS,
    regional_means,
    regional_weights,
)
from wxens.verification.extremes import by_tail, calendar_window, climate_at, efi, model_climate
from wxens.verification.probability import (
    VALUE,
    brier_score_from_table,
    contingency_table,
    exceeds,
    reliability_from_table,
    roc_auc_from_table,
)
from wxens.verification.spectra import ensemble_spectra

INIT, LEAD, MEMBER, TIME = "init_time", "lead_time", "member", "time"
FORECAST_ALIASES = {
    "number": MEMBER,
    "realization": MEMBER,
    "ensemble": MEMBER,
    "step": LEAD,
    "prediction_timedelta": LEAD,
    "lat": LATITUDE,
    "lon": LONGITUDE,
    TIME: INIT,
}
"""Names other tools give our dimensions (cfgrib, WeatherBench2, CMIP); applied when ours are
absent. A forecast's `time` is its init time, as in cfgrib and WeatherBench2."""
TRUTH_ALIASES = {"valid_time": TIME, "lat": LATITUDE, "lon": LONGITUDE}


class VerificationError(ValueError):
    """Bad input to `verify`: the message names the store and the culprit."""


@dataclass(frozen=True)
class VerifyOptions:
    """What `verify` computes; every field is recorded in the scores' attributes."""

    variables: Sequence[str] | None = None
    regions: Sequence[str] = tuple(REGIONS)
    quantiles: Sequence[float] = (0.5, 0.9, 0.95, 0.99)
    """Events "truth above the climate's q-quantile" for reliability, Brier, ROC and EFI ROC."""
    climate_window_days: int = 15
    probability_bins: int = 10
    seed: int = 0
    truncation: int | None = None
    """Spectral truncation of the spectra; None: the largest the grid resolves exactly."""
    forecast_renames: Mapping[str, str] = field(default_factory=dict)
    truth_renames: Mapping[str, str] = field(default_factory=dict)


def open_store(path: str | Path) -> xr.Dataset:
    """Open a Zarr store, a netCDF file or a GRIB file (cfgrib) lazily."""
    path = Path(path)
    if not path.exists():
        raise VerificationError(f"{path} does not exist")
    if path.is_dir():
        return xr.open_zarr(path, consolidated=_consolidated(path))
    engine = "cfgrib" if path.suffix in {".grib", ".grib2", ".grb", ".grb2"} else None
    if engine == "cfgrib":
        # pyproj (cartopy's, for the report's maps) must load before eccodes: the other way
        # round the two wheels' bundled libraries abort the interpreter at exit (double free).
        import pyproj  # noqa: F401
    kwargs = {"backend_kwargs": {"indexpath": ""}} if engine == "cfgrib" else {}
    return xr.open_dataset(path, engine=engine, chunks={}, **kwargs)


def _consolidated(store: Path) -> bool | None:
    """Whether a Zarr v3 store's metadata is consolidated (so xarray does not try and warn);
    None for Zarr v2, where xarray's own try-then-fall-back is quiet."""
    root = store / "zarr.json"
    if not root.is_file():
        return None
    return json.loads(root.read_text()).get("consolidated_metadata") is not None


def _rename(ds: xr.Dataset, renames: Mapping[str, str], aliases: Mapping[str, str], label: str):
    missing = [old for old in renames if old not in ds.variables and old not in ds.dims]
    if missing:
        raise VerificationError(f"{label} has no {missing[0]!r} to rename")
    ds = ds.rename(dict(renames))
    implied = {
        old: new
        for old, new in aliases.items()
        if old in ds.dims and new not in ds.variables and old not in renames.values()
    }
    return ds.rename(implied)


def _split_extra_dims(ds: xr.Dataset, keep: Sequence[str]) -> xr.Dataset:
    """One variable per value of every dimension outside `keep` (`z` by level -> `z500`)."""
    fields = {}
    for name, data in ds.data_vars.items():
        extra = [dim for dim in data.dims if dim not in keep]
        if not extra:
            fields[name] = data
            continue
        stacked = data.stack(_extra=extra)
        for i, labels in enumerate(stacked["_extra"].values):
            suffix = "_".join(f"{value:g}" for value in np.atleast_1d(labels))
            fields[f"{name}{suffix}"] = stacked.isel(_extra=i, drop=True)
    return xr.Dataset(fields)


def standardise(
    ds: xr.Dataset, renames: Mapping[str, str], label: str, *, forecast: bool
) -> xr.Dataset:
    """Our names, our dimensions; see the module docstring."""
    ds = _rename(ds, renames, FORECAST_ALIASES if forecast else TRUTH_ALIASES, label)
    required = (INIT, MEMBER) if forecast else (TIME,)
    for dim in (*required, LATITUDE, LONGITUDE):
        if dim not in ds.dims:
            raise VerificationError(
                f"{label} has no {dim!r} dimension (it has {', '.join(map(str, ds.dims))}); "
                "map one with a rename"
            )
    if forecast and LEAD not in ds.dims:
        ds = ds.expand_dims({LEAD: [np.timedelta64(0, "ns")]})
    keep = (INIT, LEAD, MEMBER, LATITUDE, LONGITUDE) if forecast else (TIME, LATITUDE, LONGITUDE)
    ds = ds.reset_coords(drop=True)
    return _split_extra_dims(ds, keep)


def check_same_grid(forecast: xr.Dataset, truth: xr.Dataset, label: str) -> None:
    """Verification does not regrid: the forecast's grid must be the truth's."""
    for dim in (LATITUDE, LONGITUDE):
        ours, theirs = forecast[dim].values, truth[dim].values
        if ours.shape != theirs.shape or not np.allclose(ours, theirs):
            raise VerificationError(
                f"{label} is on another grid than the truth: {dim} has {ours.size} points "
                f"({ours[0]:g}..{ours[-1]:g}) against {theirs.size} ({theirs[0]:g}..{theirs[-1]:g})"
            )


def truth_at_valid_times(truth: xr.DataArray, forecast: xr.DataArray | xr.Dataset) -> xr.DataArray:
    """The truth at `valid_time = init_time + lead_time`, dims (init_time, lead_time, lat, lon)."""
    valid = forecast[INIT] + forecast[LEAD]
    missing = ~np.isin(valid.values, truth[TIME].values)
    if missing.any():
        first = np.datetime_as_string(valid.values[missing][0], unit="h")
        raise VerificationError(
            f"the truth has no analysis at valid time {first} "
            f"({int(missing.sum())} of {missing.size} valid times missing)"
        )
    # One 1-D selection per lead: dask indexes those chunk by chunk (a 2-D fancy index would
    # make one task per valid time).
    per_lead = [
        truth.sel({TIME: valid.sel({LEAD: lead}).values}).rename({TIME: INIT}).drop_vars(INIT)
        for lead in forecast[LEAD].values
    ]
    selected = xr.concat(per_lead, dim=forecast[LEAD]).assign_coords({INIT: forecast[INIT]})
    return selected.transpose(INIT, LEAD, ...)


def choose_variables(forecast: xr.Dataset, truth: xr.Dataset, wanted: Sequence[str] | None):
    """The variables to score: `wanted`, else every variable both stores have."""
    if wanted:
        for name in wanted:
            for label, ds in (("forecast", forecast), ("truth", truth)):
                if name not in ds.data_vars:
                    raise VerificationError(
                        f"{label} has no variable {name!r} (it has {', '.join(ds.data_vars)})"
                    )
        return list(wanted)
    shared = [name for name in forecast.data_vars if name in truth.data_vars]
    if not shared:
        raise VerificationError(
            f"forecast ({', '.join(forecast.data_vars)}) and truth "
            f"({', '.join(truth.data_vars)}) share no variable"
        )
    return shared


def _per_region(score, regions: Sequence[str]) -> xr.DataArray:
    """`score(region)` for each region, stacked on a `region` dimension."""
    values = [score(region) for region in regions]
    return xr.concat(values, dim=xr.DataArray(list(regions), dims=["region"], name="region"))


def truth_climate(truth: xr.DataArray, inits: xr.DataArray, half_width_days: int) -> xr.DataArray:
    """The analyses within +-`half_width_days` of the init dates' calendar days (all of them
    when that leaves fewer than 100), as one dask chunk in time."""
    window = calendar_window(truth, inits.values, half_width_days, TIME)
    if window.sizes[TIME] < 100:
        window = truth
    if window.sizes[TIME] < 100:
        warnings.warn(
            f"the climate of {truth.name} rests on only {window.sizes[TIME]} analyses",
            stacklevel=2,
        )
    return window.chunk({TIME: -1})


EFI_CATEGORIES = 200
"""The EFI's ROC is counted in 200 equal bins on [-1, 1] (ties within a bin count one half)."""


def event_scores(
    forecast: xr.DataArray, truth: xr.DataArray, climate: xr.DataArray, options: VerifyOptions
) -> xr.Dataset:
    """Brier score, reliability, ROC area and the EFI's ROC area for the events "truth above
    the climate's q-quantile", by region, from contingency tables counted once per latitude."""
    members = forecast.sizes[MEMBER]
    thresholds = climate_at(climate, list(options.quantiles))
    complete = forecast.notnull().all(MEMBER)
    members_above = (forecast > thresholds).sum(MEMBER).where(complete, -1)
    event = exceeds(truth, thresholds)
    index = efi(forecast, climate)
    efi_category = np.floor((index + 1) / 2 * EFI_CATEGORIES).clip(0, EFI_CATEGORIES - 1)
    weights = regional_weights(truth[LATITUDE], options.regions)

    def regional_table(category: xr.DataArray, values: int) -> xr.DataArray:
        table = contingency_table(category, event, values, (INIT, LONGITUDE))
        return (table * weights).sum(LATITUDE)

    table = regional_table(members_above, members + 1)
    probabilities = xr.DataArray(np.arange(members + 1) / members, dims=[VALUE])
    reliability = reliability_from_table(table, probabilities, options.probability_bins)
    return xr.Dataset(
        {
            "brier_score": brier_score_from_table(table, probabilities),
            "roc_auc": roc_auc_from_table(table),
            "efi_roc_auc": roc_auc_from_table(
                regional_table(efi_category.fillna(-1).astype(int), EFI_CATEGORIES)
            ),
            **{f"reliability_{name}": score for name, score in reliability.items()},
        }
    )


def score_variable(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    climate_sample: xr.DataArray,
    options: VerifyOptions,
) -> xr.Dataset:
    """Every score of one variable of one system, lazily; dims (region, lead_time, ...)."""
    members = forecast.sizes[MEMBER]
    regions = list(options.regions)

    def mean(per_point: xr.DataArray) -> xr.DataArray:
        return regional_means(per_point, regions)

    # CRPS, mean, variance, rank, outliers and tails from one sort of each chunk's members.
    summary = metrics.ensemble_summary(forecast, truth, seed=options.seed)
    variance = mean(summary["variance"])
    squared_error_of_mean = (summary["mean"] - truth) ** 2
    squared_error = mean(squared_error_of_mean)
    unbiased = mean(squared_error_of_mean - summary["variance"] / members)
    climatology = climate_sample.mean(TIME)
    climate = model_climate(climate_sample, TIME)
    # Counted once per latitude; each region then weights the latitudes (no recount per region).
    by_latitude = metrics.rank_counts(summary["rank"], members, (INIT, LONGITUDE))
    rank_counts = (by_latitude * regional_weights(truth[LATITUDE], regions)).sum(LATITUDE)
    fair = members > 1  # one member: a deterministic forecast, whose CRPS is the ECDF form
    # Per init time too, for the scorecards' bootstrap over init times.
    crps = summary["crps_fair" if fair else "crps_ecdf"]
    crps_by_init = regional_means(crps, regions, None)
    scores = {
        "crps": crps_by_init.mean(INIT),
        "crps_by_init": crps_by_init,
        "crps_ecdf": mean(summary["crps_ecdf"]),
        "rmse": np.sqrt(squared_error),
        "spread": np.sqrt(variance),
        "spread_skill_ratio": metrics.spread_skill_ratio(variance, squared_error, members),
        "spread_skill_ratio_debiased": metrics.spread_skill_ratio_debiased(variance, unbiased),
        "outlier_fraction": mean(summary["outside"]),
        "acc": _per_region(
            lambda r: metrics.anomaly_correlation(summary["mean"], truth, climatology, r), regions
        ).mean(INIT),
        "energy_score": _per_region(
            lambda r: metrics.energy_score(forecast, truth, r, fair=fair), regions
        ).mean(INIT),
        "rank_histogram": rank_counts / rank_counts.sum("rank"),
    }
    events = event_scores(forecast, truth, climate, options)
    tails = {
        "tail_fraction": mean(by_tail(summary["tail_low"], summary["tail_high"])),
        "tail_reach": mean(by_tail(summary["reach_low"], summary["reach_high"])),
    }
    spectra = spectra_or_none(forecast, truth, options.truncation)
    return xr.merge(
        [scores, events, tails, spectra.mean(INIT) if spectra is not None else {}],
        compat="no_conflicts",
        join="exact",
    )


def spectra_or_none(
    forecast: xr.DataArray, truth: xr.DataArray, truncation: int | None
) -> xr.Dataset | None:
    """Member, ensemble-mean and truth spectra; None (with a warning) on a non-global grid."""
    try:
        return ensemble_spectra(forecast, truth, MEMBER, truncation=truncation)
    except ValueError as exc:
        warnings.warn(f"no spectra: {exc}", stacklevel=2)
        return None


LEAD_GROUP_BYTES = 512 * 2**20
"""Forecast bytes (all variables of one system) that one compute call of `verify` scores."""

CHUNK_BYTES = 16 * 2**20
"""Target size of one forecast chunk while scoring: all members of whole fields, as many init
times as fit (memory per worker thread is a small multiple of this). Fewer, bigger chunks
spend less on dask's scheduling: the demo's 100-member stores (all 8 inits in a chunk) score
1.4 x as fast as with 8 MB chunks (2 inits)."""


def score_chunks(forecast: xr.DataArray) -> dict[str, int]:
    """All members and the whole grid in each chunk, one lead, init times up to CHUNK_BYTES."""
    field_bytes = forecast.sizes[MEMBER] * forecast.sizes[LATITUDE] * forecast.sizes[LONGITUDE] * 8
    inits = int(np.clip(CHUNK_BYTES // field_bytes, 1, forecast.sizes[INIT]))
    return {INIT: inits, LEAD: 1, MEMBER: -1, LATITUDE: -1, LONGITUDE: -1}


def score_system(
    forecast: xr.Dataset, truth: xr.Dataset, variables: Sequence[str], options: VerifyOptions
) -> xr.Dataset:
    """All scores of one system, lazily, with a `variable` dimension."""
    per_variable = []
    for name in variables:
        chunks = score_chunks(forecast[name])
        data = forecast[name].chunk(chunks)
        observed = truth_at_valid_times(truth[name], data).chunk(
            {dim: size for dim, size in chunks.items() if dim != MEMBER}
        )
        climate_sample = truth_climate(truth[name], data[INIT], options.climate_window_days)
        per_variable.append(score_variable(data, observed, climate_sample, options))
    return xr.concat(per_variable, dim=xr.DataArray(list(variables), dims=["variable"]))


def score_system_by_leads(
    forecast: xr.Dataset, truth: xr.Dataset, variables: Sequence[str], options: VerifyOptions
) -> xr.Dataset:
    """`score_system`, computed a few lead times at a time: about LEAD_GROUP_BYTES of forecasts
    each, so peak memory stays flat however many leads there are.

    Each group's graph is built from its own leads: a compute call materialises and culls the
    whole graph it is given, and one graph of every system and lead, sliced per group, cost the
    demo's verify 40 s of that (a third of its time) with the workers idle.
    """
    per_lead = sum(forecast[name].nbytes for name in variables) // forecast.sizes[LEAD]
    group = int(np.clip(LEAD_GROUP_BYTES // max(per_lead, 1), 1, None))
    # One BLAS thread per dask thread: OpenBLAS's own threads on top of dask's oversubscribe
    # the cores and spin, making the energy score's Gram matrices several times slower.
    with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
        # NaN scores are expected (no events in a region, a negative unbiased squared error
        # under a square root); numpy's warnings about them would drown the output.
        warnings.simplefilter("ignore", RuntimeWarning)
        by_lead = [
            score_system(
                forecast.isel({LEAD: slice(first, first + group)}), truth, variables, options
            ).compute()
            for first in range(0, forecast.sizes[LEAD], group)
        ]
    return xr.concat(by_lead, dim=LEAD, data_vars="all", coords="minimal", compat="override")


MAP_LEADS = 3
MAP_MEMBERS = 4


def map_fields(forecast: xr.DataArray, truth: xr.DataArray, climate: xr.DataArray) -> xr.Dataset:
    """The report's maps of the first init time, at up to MAP_LEADS lead times after lead 0
    (dimension `map_lead_time`): the truth, the ensemble mean, the spread (std, field units),
    the EFI against `climate` (`model_climate`, unitless) and the first MAP_MEMBERS members."""
    leads = forecast.sizes[LEAD]
    picks = np.unique(np.linspace(min(1, leads - 1), leads - 1, MAP_LEADS).round().astype(int))
    first = forecast.isel({INIT: 0, LEAD: picks})
    fields = xr.Dataset(
        {
            "map_truth": truth.isel({INIT: 0, LEAD: picks}),
            "map_ensemble_mean": metrics.ensemble_mean(first),
            "map_spread": np.sqrt(metrics.ensemble_variance(first))
            if first.sizes[MEMBER] > 1
            else xr.zeros_like(first.isel({MEMBER: 0})),
            "map_efi": efi(first, climate),
            "map_members": first.isel({MEMBER: slice(0, MAP_MEMBERS)}).rename(
                {MEMBER: "map_member"}
            ),
        }
    )
    fields = fields.reset_coords(drop=True).rename({LEAD: "map_lead_time"})
    return fields.assign_coords(map_lead_time=forecast[LEAD].values[picks])


def system_maps(
    forecast: xr.Dataset, truth: xr.Dataset, variables: Sequence[str], options: VerifyOptions
) -> xr.Dataset:
    """`map_fields` of every variable (dimension `variable`), computed."""
    per_variable = []
    for name in variables:
        data = forecast[name].isel({INIT: [0]}).chunk({MEMBER: -1})
        observed = truth_at_valid_times(truth[name], data)
        climate_sample = truth_climate(truth[name], data[INIT], options.climate_window_days)
        per_variable.append(map_fields(data, observed, model_climate(climate_sample, TIME)))
    maps = xr.concat(per_variable, dim=xr.DataArray(list(variables), dims=["variable"]))
    return maps.compute().assign_attrs(map_init_time=str(forecast[INIT].values[0]))


def climatological_ensemble(
    truth: xr.Dataset, like: xr.Dataset, half_width_days: int = 15, step_days: int = 5
) -> xr.Dataset:
    """A probabilistic climatology for the inits and leads of `like`, built from the truth.

    Member (k, d) of the forecast valid at time v is the analysis at `v - (365 k + d) days`,
    for every earlier year k the truth holds and d = -15, -10, ..., 15: the same time of day
    around the same calendar date in other years (WeatherBench2's probabilistic climatology;
    the valid year itself is never used).
    """
    valid = (like[INIT] + like[LEAD]).values
    shifts = range(-half_width_days, half_width_days + 1, step_days)
    offsets = [
        np.timedelta64(365 * year + shift, "D")
        for year in range(1, 200)
        for shift in shifts
        if np.isin(valid - np.timedelta64(365 * year + shift, "D"), truth[TIME].values).all()
    ]
    if not offsets:
        raise VerificationError(
            "the truth holds no earlier year of the valid times, so no climatological ensemble"
        )
    members = []
    for offset in offsets:
        earlier = like.assign_coords({INIT: like[INIT].values - offset})
        shifted = {name: truth_at_valid_times(truth[name], earlier) for name in truth}
        members.append(xr.Dataset(shifted).assign_coords({INIT: like[INIT]}))
    return xr.concat(members, dim=MEMBER).transpose(INIT, LEAD, MEMBER, ...)


def persistence_forecast(truth: xr.Dataset, like: xr.Dataset) -> xr.Dataset:
    """One member, the analysis at the init time, at every lead of `like`: a deterministic
    forecast, scored as a one-member ensemble (its CRPS is its mean absolute error)."""
    inits = like[INIT].values
    missing = ~np.isin(inits, truth[TIME].values)
    if missing.any():
        first = np.datetime_as_string(inits[missing][0], unit="h")
        raise VerificationError(f"the truth has no analysis at init time {first} for persistence")
    at_init = truth.sel({TIME: inits}).rename({TIME: INIT}).assign_coords({INIT: like[INIT]})
    return at_init.expand_dims({LEAD: like[LEAD].values, MEMBER: 1}).transpose(INIT, LEAD, ...)


REFERENCE_BUILDERS = {"climatology": climatological_ensemble, "persistence": persistence_forecast}
"""References given by name instead of a path are built from the truth."""


def verify(
    forecast_path: str | Path,
    truth_path: str | Path,
    out: str | Path,
    references: Mapping[str, str | Path] | None = None,
    options: VerifyOptions | None = None,
    overwrite: bool = False,
) -> xr.Dataset:
    """Score the forecast (and any references) against the truth; write `out` (Zarr).

    The store is written to `OUT.partial` and renamed when complete; an existing `out` is
    replaced only with `overwrite`.
    """
    options = options or VerifyOptions()
    out = Path(out)
    if out.exists() and not overwrite:
        raise VerificationError(f"{out} already exists; pass --overwrite to replace it")
    truth = standardise(open_store(truth_path), options.truth_renames, "truth", forecast=False)
    truth = truth.chunk({LATITUDE: -1, LONGITUDE: -1})  # whole fields, however it was written
    systems = {"forecast": forecast_path, **(references or {})}
    stores = {}
    for name, path in systems.items():
        if path in REFERENCE_BUILDERS:
            continue
        label = f"{name} ({path})"
        stores[name] = standardise(open_store(path), options.forecast_renames, label, forecast=True)
        check_same_grid(stores[name], truth, label)
    variables = choose_variables(stores["forecast"], truth, options.variables)
    for name, path in systems.items():
        if path in REFERENCE_BUILDERS:
            stores[name] = REFERENCE_BUILDERS[path](truth[variables], stores["forecast"])
    scored = [score_system_by_leads(ds, truth, variables, options) for ds in stores.values()]
    # Systems of other sizes have other rank axes (M + 1): the outer join pads them with NaN.
    scores = xr.concat(scored, dim=xr.DataArray(list(stores), dims=["system"]), join="outer")
    scores.attrs = provenance(systems, truth_path, variables, options, stores)
    # "earth" unless the truth says otherwise: the report draws coastlines only on Earth.
    scores.attrs["planet"] = truth.attrs.get("planet", "earth")
    maps = system_maps(stores["forecast"], truth, variables, options)
    scores = xr.merge([scores, maps], combine_attrs="override")
    scores.attrs["map_init_time"] = maps.attrs["map_init_time"]
    write_scores(scores, out, overwrite)
    return scores


def provenance(systems, truth_path, variables, options: VerifyOptions, stores) -> dict:
    """Attributes of the scores dataset: inputs, options, members, package version."""
    return {
        "systems": json.dumps({name: str(path) for name, path in systems.items()}),
        "truth": str(truth_path),
        "members": json.dumps({name: ds.sizes[MEMBER] for name, ds in stores.items()}),
        "variables": json.dumps(list(variables)),
        "options": json.dumps(
            {
                "regions": list(options.regions),
                "quantiles": list(options.quantiles),
                "probability_bins": options.probability_bins,
                "seed": options.seed,
                "truncation": options.truncation,
                "climate_window_days": options.climate_window_days,
                "forecast_renames": dict(options.forecast_renames),
                "truth_renames": dict(options.truth_renames),
            }
        ),
        "wxens_version": version("wxens"),
    }


def write_scores(scores: xr.Dataset, out: Path, overwrite: bool) -> None:
    """Write to `OUT.partial`, then move it into place (replacing `out` only now)."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    # Variable-length strings: zarr v3 has no stable spec for numpy's fixed-width unicode.
    labels = {name: c.astype(object) for name, c in scores.coords.items() if c.dtype.kind == "U"}
    with warnings.catch_warnings():
        # Consolidated metadata lets `xr.open_zarr(out)` open quietly; zarr warns it is not
        # (yet) part of the v3 spec.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        scores.assign_coords(labels).to_zarr(partial, mode="w", consolidated=True)
    if out.exists() and overwrite:
        shutil.rmtree(out)
    partial.rename(out)
