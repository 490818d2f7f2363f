"""Helpers for the tests of stochastic member kinds (tests/test_fgn.py, tests/test_vae.py,
tests/test_diffusion.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import yaml
from wxens.models.emulator import Emulator, FixedBatchEmulator

INIT = "2027-02-01T00"


def fine_tune(wxens: Callable, config: Path, model: str, start: Path, out: Path) -> Path:
    """`wxens train --model MODEL --seed 1` started from the checkpoint `start`, into `out`."""
    code, output = wxens(
        "train", "--config", config, "--model", model, "--seed", 1, "--out", out,
        "--init-from", start, "--quiet",
    )  # fmt: skip
    assert code == 0, output
    return out


def with_ensemble(base: Path, tmp_path: Path, **ensemble) -> Path:
    """A copy of the config `base` in `tmp_path` with `ensemble` keys replaced."""
    data = yaml.safe_load(base.read_text())
    data["ensemble"] = {**data.get("ensemble", {}), **ensemble}
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))  # the kinds in their order
    return path


def member_kinds(store: xr.Dataset) -> tuple[list[str], list[str]]:
    """Each member's kind, and the checkpoint names, read from a store's flag coordinates."""
    kinds = np.array(store["kind"].attrs["flag_meanings"].split())[store["kind"].values]
    return list(kinds), store["checkpoint"].attrs["flag_meanings"].split()


def check_sampling_per_member(emulator: Emulator) -> torch.Tensor:
    """Member k's noise comes from its own generator alone: the same member alone, among
    others, or in a padded pass gives the same numbers; another generator gives others.
    Returns the states it stepped `(5, channel, lat, lon)`."""
    state = torch.randn(5, 2, 9, 16, generator=torch.Generator().manual_seed(0)) * emulator.std

    def generators(seeds: list[int]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in seeds]

    batched = FixedBatchEmulator(emulator, 4)
    together = batched.step(state, generator=generators([11, 12, 13, 14, 15]))
    alone = batched.step(state[2:3], generator=generators([13]))
    assert torch.equal(together[2:3], alone)
    other = batched.step(state[2:3], generator=generators([99]))
    assert not torch.allclose(other, alone)
    assert torch.equal(emulator.step(state), emulator.step(state))  # no generator: zero noise
    return state


def check_two_draws_differ(emulator: Emulator) -> None:
    """Two members stepped from one state (about the emulator's mean) with two generators are
    finite and differ: the emulator's noise acts."""
    grid = (1, len(emulator.input_variables), emulator.grid.nlat, emulator.grid.nlon)
    noise = torch.randn(grid, generator=torch.Generator().manual_seed(0))
    state = (emulator.mean + emulator.std * noise).expand(2, -1, -1, -1).contiguous()
    stepped = emulator.step(state, generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    assert torch.isfinite(stepped).all() and not torch.equal(stepped[0], stepped[1])


def one_day_forecast(
    wxens: Callable, config: Path, checkpoints: Sequence[Path], members: int, out: Path, *extra
) -> tuple[int, str]:
    """`wxens forecast` of `members` members over `checkpoints` from `INIT`, one day, into
    `out`: its exit code and output."""
    options = [option for path in checkpoints for option in ("--checkpoints", path)]
    return wxens(
        "forecast", "--config", config, *options, "--init", INIT, "--members", members,
        "--lead-days", 1, "--out", out, "--quiet", *extra,
    )  # fmt: skip


def check_mixed_ensemble(wxens: Callable, config: Path, sfno: Path, other: Path, tmp: Path) -> None:
    """A checkpoint `other` of a stochastic kind under the default `ensemble.kinds` ([sfno]) is
    refused in one line; allowed, the members alternate between the SFNO `sfno` and `other`
    by bred pairs, the store says which, and a member run alone (its own noise stream) equals
    the same member in the whole ensemble."""
    kind = json.loads((other / "metadata.json").read_text())["kind"]

    def run(config: Path, out: Path, *extra, members: int = 8) -> tuple[int, str]:
        return one_day_forecast(wxens, config, [sfno, other], members, out, *extra)

    code, output = run(config, tmp / "refused.zarr")
    assert code == 1
    assert f"{other.name}: a checkpoint of kind {kind}, but ensemble.kinds is ['sfno']" in output
    assert not (tmp / "refused.zarr").exists()
    mixed = with_ensemble(config, tmp, kinds=["sfno", kind], checkpoint_group=2)
    code, output = run(mixed, tmp / "mixed.zarr")
    assert code == 0, output
    store = xr.open_zarr(tmp / "mixed.zarr")
    assert member_kinds(store) == (["sfno", "sfno", kind, kind] * 2, [sfno.name, other.name])
    values = store["psi_upper"].values
    assert np.isfinite(values).all()
    assert not np.array_equal(values[:, -1, 2], values[:, -1, 3])  # its members differ
    code, output = run(mixed, tmp / "four.zarr", "--batch-size", 1, members=4)
    assert code == 0, output
    four = xr.open_zarr(tmp / "four.zarr")["psi_upper"].values
    np.testing.assert_array_equal(four, values[:, :, :4])
