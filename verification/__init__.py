"""wxens verification: score any ensemble store against a truth store.

`verification` imports none of `data_pipeline`, `models` or `forecast`: it reads Zarr/netCDF
through xarray, so it scores a stranger's ensemble as well as ours.

Modules, each one small piece:

- `aggregation`: cos-latitude area weights, the regions, area and init-time means.
- `metrics`: per-point ensemble metrics (CRPS, spread, ensemble-mean error, ACC, ranks,
  outliers, energy score), each a plain function on xarray objects with a `member` dimension.
- `probability`: threshold exceedance (Brier score, reliability diagram, ROC).
- `extremes`: model climate, EFI, SOT, extreme-event and tail scores.
- `spectra`: total-wavenumber power spectra (torch-harmonics).
- `plots`, `report`: figures, scorecards and the HTML report drawn from a scores dataset.
- `verify`: the pipeline behind `wxens verify`.

Input conventions: dimensions `init_time`, `lead_time`, `member`, `latitude` (descending or
ascending), `longitude`; one data variable per physical field. Other names are mapped first.

The scores dataset (`wxens verify --out scores.zarr`) has one data variable per score, with
dimensions `system` (the forecast and any references, by name), `variable` (the physical field),
`region`, `lead_time` and, for some scores, one more:

| score | extra dimension | meaning |
| --- | --- | --- |
| `crps`, `crps_ecdf` | | fair and ECDF CRPS, field units (one member: both ECDF = MAE) |
| `rmse`, `spread` | | ensemble-mean RMSE, sqrt of the mean ensemble variance |
| `spread_skill_ratio`, `spread_skill_ratio_debiased` | | unitless |
| `acc` | | ensemble-mean anomaly correlation against the truth climatology |
| `outlier_fraction` | | truth outside the ensemble range (2/(M+1) if calibrated) |
| `energy_score` | | multivariate over the grid points of the region |
| `rank_histogram` | `rank` (0..M) | frequencies, summing to 1 |
| `brier_score`, `roc_auc` | `quantile` | events "truth above the climate's q-quantile" |
| `efi_roc_auc` | `quantile` | ROC area of the EFI as a predictor of those events |
| `tail_fraction` | `tail` (low, high) | truth under the members' 1st, over their 99th pct |
| `tail_reach` | `tail` (low, high) | (mean - min) / std and (max - mean) / std of the members |
| `reliability_*` | `quantile`, `probability_bin` | reliability diagram (see below) |
| `power_members`, `power_ensemble_mean`, `power_truth` | `wavenumber` | spectra (no `region`) |

The reliability diagram is `reliability_forecast_probability`, `reliability_observed_frequency`
and `reliability_count` (the area-weighted number of cases in each probability bin).

The climate (thresholds, EFI model climate, ACC climatology) is the truth's analyses within
15 days of the init dates' calendar days, or all of them when that leaves fewer than 100.

Regions are `global`, `nh_extratropics` (20-90N), `tropics` (20S-20N) and `sh_extratropics`
(90-20S). Means are area-weighted over a region, then taken over init times; square roots are
taken last.
"""
