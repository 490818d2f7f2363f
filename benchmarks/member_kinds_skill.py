"""Fair CRPS, spread-skill ratio and day-10 spectra of each kind of member, from `wxens verify`.

    python benchmarks/member_kinds_skill.py SCORES.zarr

SCORES.zarr is what `wxens verify` wrote for ensembles of the same members, inits and leads,
for example (after `make demo` and `make fgn-checkpoint`; 20 members, the demo's 8 inits):

    wxens hindcast --config configs/demo-fgn.yaml --members 20 ... --out fgn.zarr
    wxens hindcast --config configs/demo.yaml --members 20 ... --out sfno.zarr
    wxens hindcast --config configs/demo.yaml --model nwp --members 20 ... --out nwp.zarr
    wxens verify --forecast fgn.zarr --truth out/demo/truth.zarr --reference sfno=sfno.zarr
        --reference nwp=nwp.zarr --out SCORES.zarr

It prints, per system (global means, both variables averaged): the fair CRPS and the
spread-skill ratio at days 1, 2, 3, 5, 7 and 10, the mean SSR over days 2-10 (issue 6: within
[0.8, 1.2] for a generative kind without initial perturbations), and the members' power at
wavenumbers 10-16 (all the scores' spectra resolve) over the truth's at day 10, its smallest
and largest (issue 6: within a factor 2, no blurring).
"""

from __future__ import annotations

import sys

import numpy as np
import xarray as xr

DAYS = (1, 2, 3, 5, 7, 10)
BAND = (10, 20)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__.splitlines()[2].strip())
    scores = xr.open_zarr(sys.argv[1]).sel(region="global").load()
    days = scores.lead_time / np.timedelta64(1, "D")
    members = scores.attrs.get("members", "")
    print(f"members per system: {members}")
    header = "".join(f"{'d' + str(d):>9}" for d in DAYS)
    print(f"{'system':10}{'score':>6}{header}{'SSR d2-10':>11}{'P10-16/truth d10':>20}")
    for system in scores.system.values:
        one = scores.sel(system=system)
        crps = one.crps.mean("variable")
        ssr = one.spread_skill_ratio.mean("variable")
        at = {d: int(np.argmin(np.abs(days.values - d))) for d in DAYS}
        late = ssr.where((days >= 2) & (days <= 10), drop=True)
        band = one.wavenumber.values
        band = (band >= BAND[0]) & (band <= BAND[1])
        day10 = one.isel(lead_time=at[10], wavenumber=band)
        ratio = (day10.power_members / day10.power_truth).values
        print(
            f"{system:10}{'CRPS':>6}"
            + "".join(f"{float(crps[at[d]]):>9.3g}" for d in DAYS)
            + f"{'':>11}{ratio.min():>10.2f}-{ratio.max():.2f}"
        )
        print(
            f"{'':10}{'SSR':>6}"
            + "".join(f"{float(ssr[at[d]]):>9.2f}" for d in DAYS)
            + f"{float(late.mean()):>11.2f}"
        )


if __name__ == "__main__":
    main()
