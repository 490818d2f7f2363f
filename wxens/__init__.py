"""wxens: huge weather ensembles, verified.

The public API: objects and xarray in, xarray out. The `wxens` command line, `make demo` and
the benchmarks call these same functions.

- The truth world and analyses: `simulate_truth`, `open_analyses`.
- Members and ensembles: `load_members`, `run_ensemble`, `random_field_perturbation`,
  `bred_vector_perturbation`; the member-kind registry `KINDS`; `open_archive` (an archive
  that `run_ensemble(..., archive=...)` grows init by init); `score_ensemble_online` (members
  scored as they are made, into a statistics store, none of them stored).
- Verification: `score` (pure), `verify` (score and write), `report` (HTML);
  `update_statistics` and `finalize` (a statistics store that grows night by night and scores
  any set of its inits); `bootstrap_targets` (the targets of a trustworthy ensemble, with
  block-bootstrap intervals over the inits of statistics stores); the registries
  `SCORES` (of `Score`), `REGIONS` (of `Region`: `LatitudeBand`, `LatitudeBands`,
  `LatLonBox`, `PolygonRegion`, `MaskRegion`; the four regions scored by default),
  `EXTRA_REGIONS` (`land`, `sea`, WeatherBench2's regions) and `REGION_SETS`
  (`weatherbench2`); `read_stations` and `at_stations` (stations from a CSV file, and a grid
  sampled at them: stations and indices are scored like grids).
- Errors, each a `ValueError` (or `RuntimeError` for a store) with a one-line message naming
  the culprit: `ConfigError`, `CheckpointError`, `StoreError`, `ForecastError`, `ScoreError`.

Example (`examples/quickstart.py` adds bred-vector perturbations):

    import wxens

    truth = wxens.simulate_truth(days=6, spinup_days=25)
    members = wxens.load_members("checkpoints/default")
    ensemble = wxens.run_ensemble(members, truth, truth.time[0], 20, "5D")
    scores = wxens.score(ensemble, truth, references={"persistence": "persistence"})
    wxens.report(scores, "report/")

The names load on first use, so `import wxens` stays fast (torch and xarray load only when a
function that needs them is called).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wxens.data_pipeline.analysis_store import StoreError, open_analyses
    from wxens.data_pipeline.config import ConfigError, ExperimentConfig, load_config
    from wxens.data_pipeline.truth import simulate_truth
    from wxens.forecast.archive import open_archive
    from wxens.forecast.ensemble import (
        bred_vector_perturbation,
        load_members,
        random_field_perturbation,
        run_ensemble,
        score_ensemble_online,
    )
    from wxens.forecast.perturbations import Perturbation
    from wxens.forecast.runner import ForecastError
    from wxens.models.checkpoint import CheckpointError
    from wxens.models.emulator import Emulator
    from wxens.models.kinds import KINDS
    from wxens.verification.aggregation import (
        EXTRA_REGIONS,
        REGION_SETS,
        REGIONS,
        LatitudeBand,
        LatitudeBands,
        LatLonBox,
        MaskRegion,
        PolygonRegion,
        Region,
    )
    from wxens.verification.errors import ScoreError
    from wxens.verification.geometry import at_stations, read_stations
    from wxens.verification.report import report
    from wxens.verification.scores import SCORES, Score
    from wxens.verification.stats_store import finalize, update_statistics
    from wxens.verification.targets import bootstrap_targets
    from wxens.verification.verify import VerifyOptions, score, verify

_EXPORTS = {
    "simulate_truth": "wxens.data_pipeline.truth",
    "open_analyses": "wxens.data_pipeline.analysis_store",
    "StoreError": "wxens.data_pipeline.analysis_store",
    "ExperimentConfig": "wxens.data_pipeline.config",
    "load_config": "wxens.data_pipeline.config",
    "ConfigError": "wxens.data_pipeline.config",
    "Emulator": "wxens.models.emulator",
    "CheckpointError": "wxens.models.checkpoint",
    "Perturbation": "wxens.forecast.perturbations",
    "ForecastError": "wxens.forecast.runner",
    "open_archive": "wxens.forecast.archive",
    "load_members": "wxens.forecast.ensemble",
    "run_ensemble": "wxens.forecast.ensemble",
    "score_ensemble_online": "wxens.forecast.ensemble",
    "random_field_perturbation": "wxens.forecast.ensemble",
    "bred_vector_perturbation": "wxens.forecast.ensemble",
    "KINDS": "wxens.models.kinds",
    "score": "wxens.verification.verify",
    "VerifyOptions": "wxens.verification.verify",
    "verify": "wxens.verification.verify",
    "report": "wxens.verification.report",
    "update_statistics": "wxens.verification.stats_store",
    "finalize": "wxens.verification.stats_store",
    "bootstrap_targets": "wxens.verification.targets",
    "ScoreError": "wxens.verification.errors",
    "SCORES": "wxens.verification.scores",
    "Score": "wxens.verification.scores",
    "REGIONS": "wxens.verification.aggregation",
    "EXTRA_REGIONS": "wxens.verification.aggregation",
    "REGION_SETS": "wxens.verification.aggregation",
    "Region": "wxens.verification.aggregation",
    "LatitudeBand": "wxens.verification.aggregation",
    "LatitudeBands": "wxens.verification.aggregation",
    "LatLonBox": "wxens.verification.aggregation",
    "PolygonRegion": "wxens.verification.aggregation",
    "MaskRegion": "wxens.verification.aggregation",
    "read_stations": "wxens.verification.geometry",
    "at_stations": "wxens.verification.geometry",
}
"""Each public name and the module that defines it."""

__all__ = [
    "EXTRA_REGIONS",
    "KINDS",
    "REGIONS",
    "REGION_SETS",
    "SCORES",
    "CheckpointError",
    "ConfigError",
    "Emulator",
    "ExperimentConfig",
    "ForecastError",
    "LatLonBox",
    "LatitudeBand",
    "LatitudeBands",
    "MaskRegion",
    "Perturbation",
    "PolygonRegion",
    "Region",
    "Score",
    "ScoreError",
    "StoreError",
    "VerifyOptions",
    "at_stations",
    "bootstrap_targets",
    "bred_vector_perturbation",
    "finalize",
    "load_config",
    "load_members",
    "open_analyses",
    "open_archive",
    "random_field_perturbation",
    "read_stations",
    "report",
    "run_ensemble",
    "score",
    "score_ensemble_online",
    "simulate_truth",
    "update_statistics",
    "verify",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'wxens' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
