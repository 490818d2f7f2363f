"""SEEDS-like members: many members drawn from a few seed members of another ensemble store.

`ensemble.seeds` (`SeedMembers`) names the store, how many of its members seed (K) and the lead
L at which the new members branch. Member k copies seed k mod K's states at leads 0 to L, then
steps on from seed k mod K's state at L with its own emulator and noise (`forecast.runner`). So
a few costly members (a physics ensemble, or any wxens store) become a large ensemble of cheap
generative draws, each conditioned on its seed; a member still depends on its number alone.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from wxens.data_pipeline.analysis_store import StoreError, open_analyses
from wxens.data_pipeline.config import SeedMembers
from wxens.data_pipeline.sphere import LatLonGrid
from wxens.forecast.ensemble_store import FINGERPRINT, INIT, LEAD, MEMBER


class SeedStates:
    """The seed members of `settings.store`, checked against the run: its variables and
    `grid`, the `timestep` of its leads up to `settings.lead_hours`, and its member count."""

    def __init__(
        self,
        settings: SeedMembers,
        variables: tuple[str, ...],
        grid: LatLonGrid,
        timestep: np.timedelta64,
    ):
        self.settings, self.variables = settings, tuple(variables)
        path = settings.store
        try:
            self.dataset = open_analyses(path)  # any complete wxens store
        except StoreError as error:
            raise StoreError(f"ensemble.seeds.store: {error}") from None
        missing = [name for name in variables if name not in self.dataset]
        if missing or MEMBER not in self.dataset.dims:
            what = f"no variable {missing[0]}" if missing else "not an ensemble store"
            raise StoreError(f"ensemble.seeds.store: {path}: {what}")
        shape = (self.dataset.sizes["latitude"], self.dataset.sizes["longitude"])
        if shape != (grid.nlat, grid.nlon):
            raise StoreError(
                f"ensemble.seeds.store: {path}: a {shape[0]} x {shape[1]} grid, the model's is"
                f" {grid.nlat} x {grid.nlon}"
            )
        if self.dataset.sizes[MEMBER] < settings.members:
            raise ValueError(
                f"ensemble.seeds.members: {settings.members}, but {path} holds"
                f" {self.dataset.sizes[MEMBER]} members"
            )
        lead = np.timedelta64(round(settings.lead_hours * 3600), "s")
        self.steps = int(lead / timestep)
        expected = (np.arange(self.steps + 1) * timestep).astype("timedelta64[ns]")
        leads = self.dataset[LEAD].values[: self.steps + 1]
        if self.steps * timestep != lead or not np.array_equal(leads, expected):
            raise ValueError(
                f"ensemble.seeds.lead_hours: {settings.lead_hours} h is not a lead of {path}"
                f" every {timestep / np.timedelta64(1, 'h'):g} h (the members' step)"
            )

    @property
    def fingerprint(self) -> str:
        """The seed store's own fingerprint (part of the new run's identity)."""
        return str(self.dataset.attrs.get(FINGERPRINT))

    def check(self, init_times: np.ndarray, lead_steps: int) -> None:
        """Refuse inits the seed store lacks, and a branch lead beyond the run's last lead."""
        held = set(self.dataset[INIT].values)
        missing = [t for t in init_times if t not in held]
        if missing:
            raise ValueError(f"init time {missing[0]} is not in ensemble.seeds.store")
        if self.steps > lead_steps:
            raise ValueError(
                f"ensemble.seeds.lead_hours: {self.settings.lead_hours} h is past the last lead"
            )

    def states(self, init_time: np.datetime64, members: range) -> torch.Tensor:
        """Members' seed states at leads 0 to L, `(lead, member, channel, lat, lon)` float32:
        member k's are those of seed k mod K."""
        seeds = [k % self.settings.members for k in members]
        selected = self.dataset.sel({INIT: init_time}).isel(
            {LEAD: slice(0, self.steps + 1), MEMBER: seeds}
        )
        fields = xr.concat([selected[name] for name in self.variables], dim="channel")
        array = fields.transpose(LEAD, MEMBER, "channel", ...).values
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
