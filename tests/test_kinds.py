"""The member-kind registry (`models.kinds.KINDS`): a kind defined in this file, with its own
settings section, registers itself and then trains through `wxens train --model`, saves and
loads through the checkpoint loader and forecasts through `wxens forecast`, none of which
names it; its config section and its `ensemble.kinds` settings are checked against the
registry."""

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from pydantic import BaseModel, ConfigDict, Field
from wxens.data_pipeline.analysis_store import AnalysisStoreWriter, analysis_dataset, open_analyses
from wxens.data_pipeline.config import ConfigError, load_config, parse_config
from wxens.data_pipeline.sphere import LatLonGrid
from wxens.data_pipeline.training_data import analysis_states
from wxens.data_pipeline.truth import TRUTH_FIELDS
from wxens.forecast.perturbations import member_generator
from wxens.models.checkpoint import load_checkpoint
from wxens.models.emulator import FixedBatchEmulator, Generators
from wxens.models.fgn import draw_noise
from wxens.models.kinds import KINDS, EmulatorKind, register_kind
from wxens.models.losses import rollout_loss, rollout_validation
from wxens.models.sfno import SFNOEmulator
from wxens.models.training import PeriodStates, validate


class JitterConfig(BaseModel):
    """The `jittered:` section: the amplitude of the jitter, in 6 h tendency stds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    amplitude: float = Field(0.5, ge=0)


class JitteredSFNO(SFNOEmulator):
    """An SFNO whose step adds `P_T[a s sigma_tend n]`, `n ~ N(0, I)` white on the grid from
    each member's own generator, `a` the `jittered.amplitude` and `s` its members'
    `ensemble.kinds.jittered.noise_scale`; trained as the SFNO is (the jitter is not)."""

    kind = "jittered"
    noise_scale = 1.0

    def __init__(self, grid, truncation, variables, stats, sfno, jitter: JitterConfig):
        super().__init__(grid, truncation, variables, stats, sfno)
        self.jitter = jitter

    def architecture(self) -> dict:
        return {**super().architecture(), self.kind: self.jitter.model_dump()}

    @classmethod
    def from_architecture(cls, architecture: dict) -> "JitteredSFNO":
        return cls(*cls.arguments(architecture), JitterConfig(**architecture[cls.kind]))

    @classmethod
    def config_settings(cls, config) -> tuple:
        return (config.sfno, config.jittered)

    def use_member_settings(self, members) -> None:
        self.noise_scale = members.noise_scale

    def jitter_of(self, state: torch.Tensor, generator: Generators) -> torch.Tensor:
        shape = (len(self.input_variables), self.grid.nlat, self.grid.nlon)
        noise = draw_noise(len(state), shape, generator).to(state.device)
        return self.project(self.jitter.amplitude * self.noise_scale * self.tendency_std * noise)

    @torch.no_grad()
    def step(self, state: torch.Tensor, *, generator: Generators = None) -> torch.Tensor:
        return self.forward(state) + self.jitter_of(state, generator)


def jittered_kind() -> EmulatorKind:
    return EmulatorKind(
        name="jittered",
        title="jittered SFNO",
        emulator=JitteredSFNO,
        settings=JitterConfig,
        build=JitteredSFNO.from_config,
        load=JitteredSFNO.from_architecture,
        loss=rollout_loss,
        validation=rollout_validation,
        starts_from=("sfno",),
        member_settings=("noise_scale",),
        use_member_settings=JitteredSFNO.use_member_settings,
    )


@pytest.fixture(scope="module")
def jittered():
    """The kind, registered for this module's tests only."""
    kind = register_kind(jittered_kind())
    yield kind
    KINDS.unregister(kind.name)


WORLD = {
    "name": "kinds",
    "grid": {"nlat": 9, "nlon": 16, "truncation": 4},
    "periods": {
        "start": "2025-01-01",
        "train": {"first": 2025, "last": 2025},
        "validation": {"first": 2025, "last": 2025},
        "test": {"first": 2025, "last": 2025},
    },
    "sfno": {"embed_dim": 8, "num_layers": 1},
    "jittered": {"amplitude": 0.25},
    "training": {
        "batch_size": 8,
        "epochs": 1,
        "samples_per_epoch": 16,
        "warmup_steps": 1,
        "validation_inits": 4,
        "validation_lead_steps": 2,
    },
    "perturbation": {"initial": "none"},
    "ensemble": {"kinds": {"jittered": {"noise_scale": 2.0}}, "micro_batch": 4},
}
"""A tiny world of one year (trained and validated on, as this is about the plumbing)."""
INIT = np.datetime64("2025-06-01T00", "ns")


@pytest.fixture(scope="module")
def world(jittered, tmp_path_factory) -> tuple[Path, Path]:
    """The config (`analyses:` set) and an analysis store of 2025, 6-hourly: waves that travel
    east (psi_upper, period 5 days, about 2e7 m2/s) over a jet-like zonal mean, plus seeded
    noise of 1e6 m2/s."""
    folder = tmp_path_factory.mktemp("kinds")
    store = folder / "analyses.zarr"
    year = np.datetime64("2025-01-01", "ns"), np.datetime64("2026-01-01", "ns")
    times = np.arange(*year, np.timedelta64(6, "h"))
    grid = LatLonGrid(9, 16)
    days = ((times - times[0]) / np.timedelta64(1, "D"))[:, None, None]
    lat = np.radians(grid.latitude)[None, :, None]
    lon = np.radians(grid.longitude)[None, None, :]
    wave = np.cos(lat) * np.sin(3 * lon - 2 * np.pi * days / 5)
    noise = np.random.default_rng(0).standard_normal((2, len(times), 9, 16))
    fields = {
        "psi_upper": -4e7 * np.sin(lat) + 2e7 * wave + 1e6 * noise[0],
        "psi_lower": -1e7 * np.sin(lat) + 5e6 * wave + 1e6 * noise[1],
    }
    with AnalysisStoreWriter(store, {"title": "tests/test_kinds.py"}) as writer:
        writer.append(analysis_dataset(fields, times, grid, TRUTH_FIELDS))
    path = folder / "kinds.yaml"
    path.write_text(yaml.safe_dump({**WORLD, "analyses": str(store)}, sort_keys=False))
    return path, store


def test_the_config_takes_the_kinds_section_from_the_registry(jittered):
    """Its section is validated by its schema and dumped beside the trained kinds' (before
    `training`); `ensemble.kinds` may name it and set what it reads, nothing else."""
    config = parse_config(WORLD)
    assert config.jittered == JitterConfig(amplitude=0.25)
    assert config.ensemble.kinds["jittered"].noise_scale == 2.0
    keys = list(config.model_dump(mode="json"))
    assert keys[keys.index("training") - 2 : keys.index("training")] == ["diffusion", "jittered"]
    assert keys[-1] == "nwp" and parse_config({}).jittered.amplitude == 0.5
    refused = {
        "jittered.amplitud: unknown key; allowed: amplitude": {"jittered": {"amplitud": 1}},
        "jittered.amplitude: Input should be greater than or equal to 0 (got -1)": {
            "jittered": {"amplitude": -1}
        },
        "ensemble.kinds.jittered.sampler_steps: jittered SFNO members have no sampler levels;"
        " it is for diffusion": {"ensemble": {"kinds": {"jittered": {"sampler_steps": 4}}}},
        "ensemble.kinds.sfno.noise_scale: SFNO members draw no noise; it is for fgn, vae,"
        " diffusion, jittered": {"ensemble": {"kinds": {"sfno": {"noise_scale": 2}}}},
        "ensemble.kinds.fgn.tendency_sigma: FGN members have no deterministic tendency to"
        " scale; it is for sfno": {"ensemble": {"kinds": {"fgn": {"tendency_sigma": 0.5}}}},
        "ensemble.kinds.nwp: expected a kind of checkpoint, one of sfno, fgn, vae, diffusion,"
        " jittered (got 'nwp')": {"ensemble": {"kinds": ["nwp"]}},
    }
    for message, data in refused.items():
        with pytest.raises(ConfigError) as error:
            parse_config(data)
        assert str(error.value) == f"<config>: {message}"


def test_a_kind_of_our_own_trains_loads_and_forecasts(world, wxens, tmp_path):
    """`wxens train --model jittered` writes a checkpoint of the kind with its section; the
    loader rebuilds it (its validation score recomputed equal to the recorded one); its step
    is the SFNO's plus `P_T[a s sigma_tend n]`; `wxens forecast` runs its members, member k
    the analysis stepped with the generator of (seed, init, k) and noise scale 2."""
    path, store = world
    out = tmp_path / "jittered-seed1"
    code, output = wxens(
        "train", "--config", path, "--model", "jittered", "--seed", 1, "--out", out, "--quiet"
    )
    assert code == 0, output
    config = load_config(path)
    emulator = load_checkpoint(out, config)
    metadata = emulator.metadata
    assert type(emulator) is JitteredSFNO and metadata["kind"] == "jittered"
    assert metadata["architecture"]["jittered"] == {"amplitude": 0.25}
    training = metadata["training"]
    assert training["model"] == "jittered" and training["finished"] and training["step"] == 2
    validation = PeriodStates(store, tuple(config.variables), (2025, 2025), torch.device("cpu"))
    score = validate(emulator, validation, 4, 8, 2)
    assert score["score"] == pytest.approx(metadata["validation"]["score"], rel=1e-6)
    assert set(score["rmse"]) == {"psi_upper", "psi_lower"} and np.isfinite(score["score"])

    state = validation.states[:3]
    deterministic = emulator.step(state)
    with torch.no_grad():  # the step's network: bf16-cpu's copy outside autograd
        torch.testing.assert_close(deterministic, emulator(state), rtol=0, atol=0)
    seeds = (1, 2, 3)
    jittered = emulator.step(state, generator=[torch.Generator().manual_seed(s) for s in seeds])
    noise = torch.stack(
        [torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(s)) for s in seeds]
    )
    expected = emulator.project(0.25 * emulator.tendency_std * noise)
    rounding = 1e-6 * float(state.abs().max())  # float32 sums of states of that size
    torch.testing.assert_close(jittered - deterministic, expected, rtol=0, atol=rounding)
    assert float(expected.abs().max()) > 1000 * rounding

    forecast = tmp_path / "forecast.zarr"
    code, output = wxens(
        "forecast", "--config", path, "--checkpoints", out, "--init", INIT, "--members", 3,
        "--lead-days", 0.5, "--out", forecast, "--quiet",
    )  # fmt: skip
    assert code == 0, output
    written = xr.open_zarr(forecast)
    assert written["kind"].attrs["flag_meanings"] == "jittered"
    values = np.stack([written[name].values[0] for name in config.variables], axis=2)
    dataset = open_analyses(store)
    analysis = analysis_states(dataset, config.variables, dataset.get_index("time").get_loc(INIT))
    emulator.use_member_settings(config.ensemble.kinds["jittered"])  # noise_scale 2, as the runner
    members = FixedBatchEmulator(emulator, config.ensemble.micro_batch)
    generators = [member_generator(0, INIT, k, stream="model") for k in range(3)]
    state = analysis.expand(3, -1, -1, -1).clone()
    np.testing.assert_array_equal(values[0], state.numpy())
    for lead in (1, 2):
        state = members.step(state, generator=generators)
        np.testing.assert_allclose(values[lead], state.numpy(), rtol=0, atol=rounding)
    spread = values[2].std(axis=0).max()
    assert spread > 1000 * rounding  # the members differ: each drew its own jitter
