"""Figures, skill scores, scorecards and the HTML report, on a small synthetic scores dataset."""

from __future__ import annotations

import io
import json
import re
import urllib.request

import numpy as np
import pytest
import xarray as xr
from wxens.verification.errors import ScoreError
from wxens.verification.plots import (
    plot_map,
    plot_rank_histogram,
    plot_reliability,
    plot_score_by_lead,
    plot_spectra,
    plot_spread_skill,
)
from wxens.verification.report import (
    not_significant,
    report,
    scorecard,
    scorecard_table,
    skill_score,
)

SYSTEMS = ["sfno <b>", "nwp"]  # an HTML-special name, escaped in the report
MEMBERS = {"sfno <b>": 8, "nwp": 4}
VARIABLES = ["z500", "t850"]
REGIONS = ["global", "nh_extratropics", "tropics", "sh_extratropics"]
LEADS_DAYS = [1, 2, 3]
BINS = 10


def synthetic_scores() -> xr.Dataset:
    """2 systems, 2 variables, 4 regions, 3 leads; ranks 0..8 (the 4-member `nwp` has NaN above
    rank 4), quantile 0.9, 10 probability bins, wavenumbers 0..21.

    CRPS of `sfno <b>` is 1, 2, 3 by lead against 2 for `nwp` (CRPSS 0.5, 0, -0.5); ACC 0.8
    against 0.6 (skill 0.5)."""
    rng = np.random.default_rng(0)
    coords = {
        "system": SYSTEMS,
        "variable": VARIABLES,
        "region": REGIONS,
        "lead_time": np.array(LEADS_DAYS, dtype="timedelta64[D]").astype("timedelta64[ns]"),
        "rank": np.arange(9),
        "quantile": [0.9],
        "probability_bin": np.arange(BINS),
        "wavenumber": np.arange(22),
    }
    base = ("system", "variable", "region", "lead_time")

    def score(*extra: str, values=None) -> xr.DataArray:
        dims = (*base, *extra)
        shape = tuple(len(coords[dim]) for dim in dims)
        data = rng.uniform(0.1, 0.9, shape) if values is None else np.broadcast_to(values, shape)
        return xr.DataArray(data, dims=dims)

    crps = np.where(np.arange(2)[:, None] == 0, [1.0, 2.0, 3.0], 2.0)[:, None, None, :]
    ranks = np.where(np.arange(9) <= np.array([8, 4])[:, None], 1.0, np.nan)
    ranks = ranks / np.nansum(ranks, axis=1, keepdims=True)
    spectra = 10.0 ** -np.arange(1.0, 23.0)
    no_region = ("system", "variable", "lead_time", "wavenumber")
    scores = xr.Dataset(
        {
            "crps": score(values=crps).assign_attrs(units="m2 s-2"),
            "rmse": score(),
            "spread": score(),
            "acc": score(values=np.array([0.8, 0.6])[:, None, None, None]),
            "brier_score": score("quantile"),
            "roc_auc": score("quantile"),
            "rank_histogram": score("rank", values=ranks[:, None, None, None, :]),
            "reliability_forecast_probability": score(
                "quantile", "probability_bin", values=(np.arange(BINS) + 0.5) / BINS
            ),
            "reliability_observed_frequency": score("quantile", "probability_bin"),
            "reliability_count": score(
                "quantile", "probability_bin", values=np.arange(BINS) % 4 * 10.0
            ),
            **{
                name: xr.DataArray(
                    np.broadcast_to(spectra * factor, (2, 2, 3, 22)).copy(), dims=no_region
                )
                for name, factor in [
                    ("power_members", 1.0),
                    ("power_ensemble_mean", 0.5),
                    ("power_truth", 1.0),
                ]
            },
        },
        coords=coords,
        attrs={"config": "seed: 1\nname: <script>", "git_revision": "abc123"},
    )
    return scores


@pytest.fixture(scope="module")
def scores() -> xr.Dataset:
    return synthetic_scores()


def test_skill_score_by_hand(scores):
    crpss = skill_score(scores, "crps", reference="nwp")
    assert crpss.system.values.tolist() == ["sfno <b>"]
    np.testing.assert_allclose(crpss.sel(variable="z500", region="tropics"), [[0.5, 0.0, -0.5]])
    acc_skill = skill_score(scores, "acc", reference="nwp")  # (0.8 - 0.6) / (1 - 0.6)
    np.testing.assert_allclose(acc_skill, 0.5)
    brier_skill = skill_score(scores, "brier_score", reference="nwp")
    assert "quantile" in brier_skill.dims
    expected = 1 - scores.brier_score.sel(system="sfno <b>") / scores.brier_score.sel(system="nwp")
    np.testing.assert_allclose(brier_skill.sel(system="sfno <b>"), expected)


def test_unknown_score_reference_or_label_is_named(scores):
    with pytest.raises(ScoreError, match="unknown score 'crpss'"):
        skill_score(scores, "crpss", reference="nwp")
    with pytest.raises(ScoreError, match="unknown reference system 'ifs'"):
        skill_score(scores, "crps", reference="ifs")
    with pytest.raises(ScoreError, match="no skill score for 'spread'"):
        skill_score(scores, "spread", reference="nwp")
    with pytest.raises(ScoreError, match="unknown variable 'q700'"):
        plot_score_by_lead(scores, "crps", variable="q700")
    with pytest.raises(ScoreError, match=r"unknown lead_time 5 .*\['1 d', '2 d', '3 d'\]"):
        plot_rank_histogram(scores, "z500", "global", lead_time=5)
    with pytest.raises(ScoreError, match="unknown reference system 'ifs'"):
        report(scores, "unused", reference="ifs")


def test_score_by_lead_and_spread_skill_draw_a_line_per_system(scores):
    (ax,) = plot_score_by_lead(scores, "crps", variable="z500", region="tropics").axes
    assert [line.get_label() for line in ax.lines] == SYSTEMS
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), LEADS_DAYS)
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [1.0, 2.0, 3.0])
    assert ax.get_ylabel() == "crps (m2 s-2)"
    (ax,) = plot_spread_skill(scores, "t850", "global").axes
    assert [line.get_linestyle() for line in ax.lines] == ["-", "-", "--", "--"]


def test_rank_histogram_has_m_plus_one_bars_and_a_flat_line(scores):
    axes = plot_rank_histogram(scores, "z500", "global", lead_time=np.timedelta64(2, "D")).axes
    for ax, members in zip(axes, MEMBERS.values(), strict=True):
        assert len(ax.patches) == members + 1
        (flat,) = ax.lines
        np.testing.assert_allclose(flat.get_ydata(), 1 / (members + 1))


def test_reliability_diagram_has_the_diagonal_and_a_curve_per_system(scores):
    (ax,) = plot_reliability(scores, "z500", "global", 1, 0.9).axes
    diagonal, *curves = ax.lines
    np.testing.assert_array_equal(diagonal.get_xdata(), [0, 1])
    assert len(curves) == len(SYSTEMS)
    filled = np.count_nonzero(np.arange(BINS) % 4)  # bins whose count is not 0
    assert all(len(curve.get_xdata()) == filled for curve in curves)
    assert len(ax.collections) == len(SYSTEMS)  # markers sized by count


def test_spectra_draw_members_mean_and_truth_per_lead(scores):
    axes = plot_spectra(scores, "t850", lead_times=[1, 3]).axes
    assert len(axes) == 2
    for ax in axes:
        assert len(ax.lines) == 2 * len(SYSTEMS) + 1
        assert ax.lines[0].get_xdata()[0] == 1  # wavenumber 0 is left off the log axis
        assert ax.get_xscale() == ax.get_yscale() == "log"


def test_scorecard_image_holds_the_percent_difference_of_each_cell(scores):
    figure = scorecard(scores, reference="nwp", score="crps")
    ax = figure.axes[0]
    cells = ax.images[0].get_array()  # coloured by improvement: -(% difference) for CRPS
    assert cells.shape == (len(VARIABLES) * len(REGIONS), len(LEADS_DAYS))
    np.testing.assert_allclose(cells, np.tile([50.0, 0.0, -50.0], (8, 1)))
    assert [text.get_text() for text in ax.texts[:3]] == ["-50%", "+0%", "+50%"]
    assert len(ax.texts) == cells.size
    assert not ax.patches  # no per-init scores: no hatching
    assert ax.images[0].norm.vmin == -ax.images[0].norm.vmax
    acc = scorecard(scores, reference="nwp", score="acc").axes[0]  # (0.8 - 0.6) / 0.6
    np.testing.assert_allclose(acc.images[0].get_array(), 100 / 3)
    with pytest.raises(ValueError, match=r"extra dimension\(s\) \['quantile'\]"):
        scorecard(scores, reference="nwp", score="brier_score")


def per_init_crps(scores: xr.Dataset, inits: int = 20) -> xr.DataArray:
    """`crps` repeated over init times."""
    return scores.crps.expand_dims(init_time=inits).transpose(..., "init_time")


def by_init(systems: dict[str, list[float]]) -> xr.DataArray:
    values = list(systems.values())
    return xr.DataArray(values, dims=("system", "init_time"), coords={"system": list(systems)})


def test_bootstrap_hatches_only_what_init_times_cannot_separate(scores):
    # Identical init times: every difference is certain, only the 0 % cells are not.
    exact = not_significant(per_init_crps(scores), reference="nwp")
    assert exact.dims == ("system", "variable", "region", "lead_time")
    np.testing.assert_array_equal(exact.sel(variable="z500", region="global"), [[0, 1, 0]])
    # Paired: init times that are hard for both systems move both; the difference stays.
    shared = per_init_crps(scores) * np.exp(np.random.default_rng(4).normal(size=20))
    paired = not_significant(shared, reference="nwp")
    np.testing.assert_array_equal(paired.sel(variable="t850", region="tropics"), [[0, 1, 0]])
    # Two init times, one better for each system: a quarter of the draws take the first twice
    # (-67 %), a quarter the second (+200 %), so the 95 % interval spans 0. Better on both: not.
    swapped = not_significant(by_init({"a": [1.0, 3.0], "nwp": [3.0, 1.0]}), reference="nwp")
    better = not_significant(by_init({"a": [1.0, 2.0], "nwp": [3.0, 4.0]}), reference="nwp")
    assert swapped.values.tolist() == [True] and better.values.tolist() == [False]
    with_inits = scores.assign(crps_by_init=per_init_crps(scores)).assign_attrs(
        members=json.dumps(dict.fromkeys(SYSTEMS, 4))
    )
    ax = scorecard(with_inits, reference="nwp").axes[0]
    assert len(ax.patches) == len(VARIABLES) * len(REGIONS)  # the 0 % column


def test_scorecard_table_is_markdown(scores):
    table = scorecard_table(scores, reference="nwp")
    assert "| variable | region | 1 d | 2 d | 3 d |" in table
    assert "| z500 | tropics | 0.500 | 0.000 | -0.500 |" in table
    assert table.count("\n| t850 |") == len(REGIONS)


def test_report_links_every_figure_and_escapes_names(scores, tmp_path):
    fewer = scores.sel(variable=["z500"], region=["global", "tropics"])  # fewer figures: faster
    index = report(fewer, tmp_path / "report", reference="nwp", title="skill & <spread>")
    html = index.read_text()
    linked = re.findall(r'<img src="([^"]+)"', html)
    written = sorted(path.name for path in index.parent.glob("*.png"))
    assert sorted(linked) == written
    sections = ("Scores by lead time", "Scorecards", "Rank histograms", "Reliability", "Spectra")
    for heading in (*sections, "Provenance"):
        assert f">{heading}</h2>" in html
    # scorecards are HTML tables: crps, rmse, acc, brier, roc_auc, a row per system x variable
    # x region, a cell per lead, each with its scores as a hover title
    assert html.count('<table class="scorecard">') == 5
    assert not any("scorecard" in name for name in written)
    cell = 'title="sfno &lt;b&gt; against nwp, z500 / global, 1 d: crps 1 against 2 (-50.0 %)"'
    assert cell in html
    assert "<b>" not in html and "sfno &lt;b&gt;" in html
    assert "skill &amp; &lt;spread&gt;" in html
    assert "name: &lt;script&gt;" in html and "abc123" in html


def test_report_skips_what_the_scores_lack(scores, tmp_path):
    lean = scores[["crps"]].isel(region=[0], variable=[0], system=[0])  # no reference
    lean.attrs = {}
    html = report(lean, tmp_path).read_text()
    assert ">Scores by lead time</h2>" in html
    for heading in ("Scorecards", "Rank histograms", "Reliability", "Spectra", "Provenance"):
        assert f">{heading}</h2>" not in html
    assert len(list(tmp_path.glob("*.png"))) == 1


def field_on_grid() -> xr.DataArray:
    latitude, longitude = np.linspace(90, -90, 33), np.arange(64) * 360 / 64
    values = np.cos(np.radians(latitude))[:, None] * np.sin(np.radians(longitude))[None, :]
    coords = {"latitude": latitude, "longitude": longitude}
    return xr.DataArray(values, dims=("latitude", "longitude"), coords=coords, name="z500")


def feature_artists(ax) -> list:
    from cartopy.mpl.feature_artist import FeatureArtist

    return [child for child in ax.get_children() if isinstance(child, FeatureArtist)]


def test_map_draws_coastlines_from_the_sample_data_without_network(sample_data, monkeypatch):
    monkeypatch.setenv("WXENS_SAMPLE_DATA", str(sample_data))

    def no_network(*args, **kwargs):
        raise AssertionError("plot_map tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    figure = plot_map(field_on_grid(), title="a wave")
    figure.savefig(io.BytesIO(), format="png")  # reads the shapefile
    ax = figure.axes[0]
    assert ax.get_title() == "a wave"
    assert len(feature_artists(ax)) == 1


def test_map_without_coastline_data_warns_and_draws_bare(tmp_path, monkeypatch):
    monkeypatch.setenv("WXENS_SAMPLE_DATA", str(tmp_path))
    with pytest.warns(UserWarning, match="no Natural Earth coastlines"):
        figure = plot_map(field_on_grid())
    assert not feature_artists(figure.axes[0])
    with pytest.raises(ValueError, match="2-D"):
        plot_map(field_on_grid().expand_dims(member=2))
