"""wxens verification: score any ensemble against a truth, as xarray in and xarray out.

`verification` imports none of `data_pipeline`, `models` or `forecast`: it scores xarray
objects (or Zarr/netCDF/GRIB files it opens), so it scores a stranger's ensemble as well as ours.

The API (`wxens.score`, `wxens.verify`, `wxens.report`, ...; `score`, the registries and
`ScoreError` are importable from here too, while `verify` and `report` share their names with
modules here: `from wxens.verification.verify import verify`):

- `score(forecast, truth, references=None, *, scores=None, regions=None, variables=None,
  options=None) -> xr.Dataset` (`verify.score`): pure, writes nothing; in-memory or
  dask-backed Datasets or paths; a reference may be the name `"climatology"` or
  `"persistence"` (built from the truth).
- `verify(forecast, truth, out, references=None, *, ..., overwrite=False)`: `score`, then the
  dataset written to `out` (Zarr; through `OUT.partial`, renamed when complete).
- `report(scores, out) -> Path` (`report.report`): the HTML report of a scores dataset or store.
- `SCORES` (`scores.py`): the registry of scores, name -> `Score`; `REGIONS`, `EXTRA_REGIONS`
  and `REGION_SETS` (`aggregation.py`): the regions by name, name -> `Region`
  (`LatitudeBand`, `LatitudeBands`, `LatLonBox`, `PolygonRegion`, `NaturalEarthRegion`,
  `MaskRegion`), and sets of them. `score(..., scores=[...], regions=[...])` and `wxens verify
  --scores ... --regions ...` take names (or objects).
- `ScoreError` (a `ValueError`): API misuse and bad input, one line naming the culprit.

Modules, each one small piece:

- `aggregation`: the one area weighting (`cell_area_weights`, also used by training and
  `wxens skill`), the regions, area and init-time means.
- `natural_earth`: where the local Natural Earth data is (`cartopy_data_dir`), and land
  polygons built from its 1:110m coastlines.
- `metrics`: `ensemble_summary`, the per-point kernel (CRPS, mean, variance, rank, outliers,
  tails from one sort of the members), its views (`crps_ensemble`), spread-skill ratios, rank
  counts, ACC, energy score.
- `probability`: threshold events and contingency tables (Brier score, reliability, ROC).
- `extremes`: model climate, EFI, SOT, extreme-event scores, tails.
- `spectra`: total-wavenumber power spectra (torch-harmonics).
- `scores`: the registry; `verify`: `score` and `verify`; `plots`, `report`: figures,
  scorecards and the HTML report drawn from a scores dataset.

Input conventions: dimensions `init_time`, `lead_time`, `member`, `latitude` (descending or
ascending), `longitude`; one data variable per physical field. Other names are mapped first.

Missing data: a forecast or reference with a NaN member value is refused (ScoreError naming
the system, variable, init and lead where it first happens), not scored with the NaN member
left out: leave out or fill those members first (`forecast.dropna("member", how="any")`).

The scores dataset (`score`'s result, `wxens verify --out scores.zarr`) has one data variable
per score, with dimensions `system` (the forecast and any references, by name), `variable`
(the physical field), `region`, `lead_time` and, for some scores, one more. The `SCORES` entry
that computes each is in brackets where its name differs:

| score | extra dimension | meaning |
| --- | --- | --- |
| `crps`, `crps_ecdf` | | fair and ECDF CRPS, field units (one member: both ECDF = MAE) |
| `{statistic}_by_init` | `init_time` | per-init means (`crps`, `squared_error`, ...) |
| `rmse`, `spread` | | ensemble-mean RMSE, sqrt of the mean ensemble variance |
| `spread_skill_ratio`, `spread_skill_ratio_debiased` | | unitless |
| `acc` | | ensemble-mean anomaly correlation against the truth climatology |
| `outlier_fraction` | | truth outside the ensemble range (2/(M+1) if calibrated) |
| `energy_score` | | multivariate over the grid points of the region |
| `rank_histogram` | `rank` (0..M) | frequencies, summing to 1 |
| `brier_score`, `roc_auc` | `quantile` | events "truth above the climate's q-quantile" |
| `brier_score_fair` | `quantile` | Ferro's fair Brier score of those events |
| `twcrps` | `quantile` | CRPS of the values above the climate's q-quantile, field units |
| `relative_economic_value` | `quantile`, `cost_loss_ratio` | 1 perfect, 0 the climate's |
| `corp_*` [corp] | `quantile`, `forecast_probability` | CORP reliability (below) |
| `pit_histogram`, `pit_alpha` [pit] | `pit_bin` | PIT of the members' ECDF (alpha: to uniform) |
| `efi_roc_auc` | `quantile` | ROC area of the EFI as a predictor of those events |
| `tail_fraction` [tails] | `tail` (low, high) | truth under the members' 1st, over their 99th pct |
| `tail_reach` [tails] | `tail` (low, high) | (mean - min) / std and (max - mean) / std |
| `reliability_*` [reliability] | `quantile`, `probability_bin` | reliability diagram (below) |
| `power_members`, `power_ensemble_mean`, `power_truth` [spectra] | `wavenumber` | no `region` |
| `map_*` | `map_lead_time`, ... | maps of the first init (unless `VerifyOptions(maps=False)`) |

The reliability diagram is `reliability_forecast_probability`, `reliability_observed_frequency`
and `reliability_count` (the area-weighted number of cases in each probability bin).

The CORP reliability diagram (Dimitriadis et al. 2021) is `corp_observed_frequency` (the
isotonic regression of the events on the forecast probabilities k/M, NaN where no case) with
its 90 % consistency band `corp_band_low`/`corp_band_high`, and the Brier score's exact
decomposition `corp_miscalibration - corp_discrimination + corp_uncertainty` (dims `quantile`
only). The PIT, REV and CORP scores are finished from the rank counts and event tables, so
they merge over inits like the rest.

The climate (thresholds, EFI model climate, ACC climatology) is the truth's analyses within
15 days of the init dates' calendar days, or all of them when that leaves fewer than 100.

Regions: a region's weights are cell areas times its mask, the share of each grid cell inside
it (0 to 1). Means are area-weighted over a region, then taken over init times; square roots
are taken last. By name:

- `REGIONS`, scored when no regions are named: `global`, `nh_extratropics` (20-90N),
  `tropics` (20S-20N) and `sh_extratropics` (90-20S);
- `EXTRA_REGIONS`, scored when named: `land` and `sea` (the 1:110m Natural Earth coastlines
  in the local cartopy data folder, `$WXENS_CARTOPY_DATA` or `$WXENS_SAMPLE_DATA/cartopy_data`;
  cell fractions; sea = 1 - land), and WeatherBench2's regions `wb2_extratropics`,
  `wb2_europe`, `wb2_north_america`, `wb2_north_atlantic`, `wb2_north_pacific`,
  `wb2_east_asia`, `wb2_ausnz`, `wb2_arctic`, `wb2_antarctic`;
- `REGION_SETS`: `weatherbench2`, WeatherBench2's regional set (`global`, `tropics`,
  `wb2_extratropics`, `nh_extratropics` and `sh_extratropics` for its hemispheres, then its
  boxes and polar caps);
- a box `NAME=S,N,W,E` (degrees; longitudes east from W to E, wrapping past 0).

Objects: any `LatitudeBand`, `LatitudeBands`, `LatLonBox`, `PolygonRegion` (shapely polygons
masked on the grid with regionmask: cell fractions on equally spaced grids, else 0/1 by cell
centre) or `MaskRegion` (a 0-1 DataArray on the grid; `wxens verify --mask FILE`).
"""
