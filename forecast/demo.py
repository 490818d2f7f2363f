"""`make demo`: the main job on the embedded default, for now.

Runs a short truth world (one year after spin-up) into `out/demo/truth.zarr`, draws a few of
its fields to `out/demo/truth_fields.png`, runs the diagnostics of `wxens data diagnose` and
prints a summary. Later issues extend it into the full ensemble-and-verification demo.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt  # falls back to the Agg backend with no display
import numpy as np

from data_pipeline.analysis_store import open_analyses
from data_pipeline.config import load_config
from data_pipeline.diagnose import diagnose
from data_pipeline.truth import write_truth

CONFIG = Path("configs/default.yaml")
OUT = Path("out/demo")


def plot_fields(store: Path, png: Path) -> None:
    """Upper and lower streamfunction at the last analysis, and the zonal-mean upper wind."""
    ds = open_analyses(store)
    last = ds.isel(time=-1).load()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), gridspec_kw={"width_ratios": [2, 2, 1]})
    for ax, name in zip(axes[:2], ["psi_upper", "psi_lower"], strict=True):
        field = last[name]
        mesh = ax.pcolormesh(ds.longitude, ds.latitude, field / 1e6, cmap="RdBu_r", shading="auto")
        ax.set(
            title=f"{field.attrs['long_name']}, {str(last.time.values)[:13]}",
            xlabel="longitude (deg E)",
            ylabel="latitude (deg N)",
        )
        fig.colorbar(mesh, ax=ax, label=f"10^6 {field.attrs['units']}")
    zonal = ds.psi_upper.mean(("time", "longitude")).values
    lat = np.radians(ds.latitude.values)
    u = -np.gradient(zonal, lat) / 6.371e6
    axes[2].plot(u[1:-1], ds.latitude[1:-1])  # one-sided differences at the poles are no wind
    axes[2].set(title="zonal-mean upper wind", xlabel="u (m/s)", ylabel="latitude (deg N)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    config = load_config(CONFIG)
    OUT.mkdir(parents=True, exist_ok=True)
    store = OUT / "truth.zarr"
    write_truth(config, config.model_dump(mode="json"), 1, store, overwrite=True)
    png = OUT / "truth_fields.png"
    plot_fields(store, png)
    numbers = diagnose(config)
    (OUT / "diagnose.json").write_text(json.dumps(numbers, indent=2))
    ds = open_analyses(store)
    print("\nwxens demo: the truth world")
    print(f"  store    {store}  ({ds.sizes['time']} analyses, {dict(ds.sizes)})")
    print(f"  figure   {png}")
    print(f"  numbers  {OUT / 'diagnose.json'}")
    for key, value in numbers.items():
        print(f"    {key:36s} {value}")


if __name__ == "__main__":
    main()
