"""Score a member kind's dispersion settings on the calibration period, day by day: what
`wxens calibrate` does for one knob, for any settings you write down, with the spread-skill
ratio of each day and the members' small-scale power instead of one objective.

Each overlay is a YAML fragment laid over the config (`configs/demo-KIND.yaml`, or
`configs/demo.yaml` for sfno and nwp); `ensemble.kinds` is replaced whole, so an overlay that
sets one of a kind's settings restates the others. The calibration truth comes first:

    wxens data truth --config configs/calibration.yaml --years 1 --out out/calibration/truth.zarr
    python examples/explore_dispersion.py diffusion 8 tendency.yaml [more.yaml ...]

Printed per overlay: the mean fair CRPS over the climatological std (days 2-10), the
spread-skill ratio and the outlier fraction over 2/(M+1) at days 1-10 (mean over the
variables), and the members' day-10 power over the truth's at wavenumbers 10-16, per
variable. `INITS=start,end,freq` sets the inits (default: 17, 2030-01-16 to 2030-07-01 every
10 days, those of `wxens calibrate` in docs/ensembles.md).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from wxens.data_pipeline.analysis_store import open_analyses
from wxens.data_pipeline.config import load_config, merged, parse_config
from wxens.forecast.calibrate import climate_sigma, scored_trial

TRUTH = Path("out/calibration/truth.zarr")
DAYS = np.arange(1, 11)


def explore(kind: str, members: int, overlay: Path, inits: np.ndarray) -> str:
    """One overlay's line: CRPS / sigma, ratio and outliers by day, day-10 power ratio."""
    base = Path("configs/demo.yaml" if kind in ("sfno", "nwp") else f"configs/demo-{kind}.yaml")
    fragment = yaml.safe_load(overlay.read_text()) or {}
    config = parse_config(merged(load_config(base).model_dump(mode="json"), fragment, depth=4))
    sigma = climate_sigma(open_analyses(TRUTH), config, inits)
    extra = ["outlier_fraction", "spectra"]
    scores = scored_trial(config, kind, inits, members, 10, TRUTH, extra).sel(system="forecast")
    days = scores.lead_time / np.timedelta64(1, "D")
    late = (days >= 2) & (days <= 10)
    crps = float((scores.crps.squeeze("region", drop=True).where(late) / sigma).mean())
    daily = scores.assign_coords(lead_time=days).sel(lead_time=DAYS)
    ratio = daily.spread_skill_ratio.mean(("variable", "region"))
    outliers = daily.outlier_fraction.mean(("variable", "region")) * (members + 1) / 2
    power = scores.power_members / scores.power_truth
    power = power.sel(lead_time=np.timedelta64(10, "D"), wavenumber=slice(10, 16)).mean(
        "wavenumber"
    )
    return (
        f"{overlay.name}: CRPS/sigma {crps:.4f}\n"
        f"  ratio    {' '.join(f'{v:.2f}' for v in ratio.values)}\n"
        f"  outliers {' '.join(f'{v:.2f}' for v in outliers.values)}\n"
        f"  power d10 k10-16 {' / '.join(f'{float(v):.2f}' for v in power.values)}"
    )


def main() -> None:
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    kind, members, overlays = sys.argv[1], int(sys.argv[2]), [Path(p) for p in sys.argv[3:]]
    start, end, freq = os.environ.get("INITS", "2030-01-16,2030-07-01,10D").split(",")
    inits = pd.date_range(start, end, freq=freq).values
    for overlay in overlays:
        started = time.perf_counter()
        line = explore(kind, members, overlay, inits)
        print(f"{line}\n  ({(time.perf_counter() - started) / 60:.1f} min)", flush=True)


if __name__ == "__main__":
    main()
