"""Settings of the ensemble (the `perturbation:`, `ensemble:` and `nwp:` sections of an
experiment config), validated by pydantic.

A leaf module: pydantic only. `data_pipeline.config` assembles them into `ExperimentConfig`
and re-exports them; there, `ensemble.kinds` is checked against the member-kind registry
(`models.kinds.KINDS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from wxens.models.settings import Sampler

PositiveFloat = Annotated[float, Field(gt=0)]


class Strict(BaseModel):
    """A settings section: unknown keys are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


InitialPerturbation = Literal["none", "random_field", "bred_vector"]


class PerturbationConfig(Strict):
    """Initial-condition and model perturbations of the ensemble (`forecast.perturbations`).

    `initial`: `none`, every member starts from the analysis; `random_field`, analysis + a
    correlated Gaussian random field of rms `random_field_fraction` x each variable's anomaly
    std (correlation length `length_scale_km`); `bred_vector`, pairs analysis +/- dx of vectors
    bred from that field over `bred_cycles` 6 h cycles, each hemisphere rescaled to
    `bred_fraction` x the emulator's 48 h RMSE. `parameter_sigma` scales multiplicative noise
    on the network weights, w' = w (1 + sigma eps) (0: off). `bred_rmse_48h` fixes the 48 h
    RMSE per variable (in its units); null measures it for each checkpoint on
    `calibration_inits` validation-period analyses when the ensemble starts.
    """

    initial: InitialPerturbation = "bred_vector"
    length_scale_km: PositiveFloat = 1000.0
    random_field_fraction: PositiveFloat = 0.1
    bred_cycles: int = Field(4, ge=1)
    bred_fraction: PositiveFloat = 0.35
    parameter_sigma: float = Field(0.0, ge=0)
    bred_rmse_48h: dict[str, PositiveFloat] | None = None
    calibration_inits: int = Field(16, ge=1)


class MemberKind(Strict):
    """The members of one emulator kind (`ensemble.kinds`).

    `share`: of every `sum(shares)` consecutive checkpoint groups (`ensemble.checkpoint_group`
    members each, a bred pair by default), this kind takes `share`, in the order the kinds are
    listed: shares 4, 3, 3 of groups of 2 make 40 %, 30 %, 30 % of every 20 members.
    `initial`: this kind's initial-condition perturbation (null: `perturbation.initial`), such
    as bred vectors for SFNO members and none for generative ones. `noise_scale` multiplies a
    generative member's noise draws (1: as trained; larger spreads the members more, an
    inflation calibrated on analyses the model never saw); deterministic kinds draw none.
    `noise_ramp_hours` ramps that scale up linearly over the member's first hours (0: none),
    for generative members that would otherwise spread too soon. `noise_profile` multiplies
    it further by a factor piecewise linear in the hours the member has stepped, given as
    `{hours: factor}` knots and constant beyond the first and the last (empty: 1): a
    lead-dependent inflation, such as more noise at days 3-6 than at day 2 or 10.
    `sampler_steps` and `sampler` override a diffusion checkpoint's `DiffusionConfig` ones
    (null: as trained): more levels cost more denoiser calls and bias the spread less;
    `dpmpp_2m` makes one call a level where `heun` makes two.
    `tendency_sigma` perturbs a deterministic SFNO member's tendencies step by step, with a
    pattern of its own correlated over `tendency_length_km` and `tendency_hours` (0: white in
    time) (`models.sfno`, SPPT; 0: none): model uncertainty that grows the spread with the lead,
    where initial perturbations alone leave the late leads under-dispersive. Its amplitude
    ramps up linearly over the member's first `tendency_ramp_hours` (0: none).
    `tendency_additive` adds the same pattern times the 6 h tendency's std (0: none), ramped
    alike: spread where the tendency itself, and so the multiplicative part, is small.
    `mean_checkpoints` (SFNO checkpoints, or folders of them) replaces a residual diffusion
    checkpoint's frozen mean network with each one's in turn, one member model per checkpoint
    that the members cycle over as over `ensemble.checkpoints` (empty: its own): the
    multi-checkpoint model uncertainty of the SFNO ensemble under the sampled corrections.
    `correction_damping` damps a diffusion member's sampled correction (a residual member's
    `c`, else its whole tendency) at the small scales each step: its spherical-harmonic
    coefficient of total wavenumber `l` times `exp(-d (l (l + 1) / (T (T + 1)))^2)`, `d` the
    setting (e-foldings at the truncation T; 0: none), a del^4 hyperdiffusion of what the
    denoiser adds (`models.diffusion`), for members whose states gain small-scale power.

    `share` and `initial` apply to every kind; each of `FORECAST_SETTINGS` only to the kinds
    that read it (`models.kinds.EmulatorKind.member_settings`): set away from its default for
    another kind, the config is refused.
    """

    FORECAST_SETTINGS: ClassVar[dict[str, str]] = {
        "noise_scale": "draw no noise",
        "noise_ramp_hours": "draw no noise",
        "noise_profile": "draw no noise",
        "sampler_steps": "have no sampler levels",
        "sampler": "have no sampler",
        "tendency_sigma": "have no deterministic tendency to scale",
        "tendency_length_km": "have no emulated tendency to perturb",
        "tendency_hours": "have no emulated tendency to perturb",
        "tendency_ramp_hours": "have no emulated tendency to perturb",
        "tendency_additive": "have no emulated tendency to perturb",
        "mean_checkpoints": "have no mean network",
        "correction_damping": "have no sampled correction to damp",
    }
    """The settings that only some kinds read, and what the others lack (for the error)."""

    share: int = Field(1, ge=1)
    initial: InitialPerturbation | None = None
    noise_scale: PositiveFloat = 1.0
    noise_ramp_hours: float = Field(0.0, ge=0)
    noise_profile: dict[Annotated[float, Field(ge=0)], Annotated[float, Field(ge=0)]] = {}
    sampler_steps: int | None = Field(None, ge=2)
    sampler: Sampler | None = None
    tendency_sigma: float = Field(0.0, ge=0)
    tendency_length_km: PositiveFloat = 2000.0
    tendency_hours: float = Field(0.0, ge=0)
    tendency_ramp_hours: float = Field(0.0, ge=0)
    tendency_additive: float = Field(0.0, ge=0)
    mean_checkpoints: tuple[Path, ...] = ()
    correction_damping: float = Field(0.0, ge=0)

    def forecast_settings(self) -> list[str]:
        """The names of the `FORECAST_SETTINGS` set away from their defaults."""
        fields = type(self).model_fields
        return [
            name for name in self.FORECAST_SETTINGS if getattr(self, name) != fields[name].default
        ]


class SeedMembers(Strict):
    """SEEDS-like members (after Li et al. 2024, "Generative emulation of weather forecast
    ensembles with diffusion models", Sci. Adv. 10, eadk4489): many members drawn from a few
    seed members of an ensemble store `store` (a forecast or hindcast of the same inits and
    grid, at the same time step). Member k follows seed k mod `members` up to `lead_hours`
    (its states copied), then steps on with its own kind and noise: each new member is a draw
    of a generative model conditioned on its seed's state at that lead. The seeds carry the
    initial perturbations, so none is added."""

    store: Path
    members: int = Field(2, ge=1)
    lead_hours: float = Field(0.0, ge=0)


class EnsembleConfig(Strict):
    """`wxens forecast` and `wxens hindcast` (`forecast.runner`).

    `seed` is the base seed of every member's generator (`member_generator`); `checkpoints`
    are emulator checkpoints, or folders of them, that the members are spread across; `kinds`
    are the emulator kinds these may be (a checkpoint of another kind is refused; the names
    are those of `models.kinds.KINDS`, checked where the config is assembled), each with
    its share of the members and their perturbation (`MemberKind`; a list of kinds gives each
    the defaults). List the checkpoints of several kinds to mix them: member k's group falls to
    a kind by the shares, then to that kind's checkpoints in turn (`assign_checkpoints`).
    `micro_batch` is the batch size of every CPU forward pass (padded when short), so a
    member's numbers never depend on the batch it is computed in. `checkpoint_group` is how
    many consecutive members share a checkpoint, member k on checkpoint (k // g) mod N of one
    kind (null: 4, two bred pairs, `forecast.perturbations.CHECKPOINT_GROUP`; with bred
    vectors it must be even). Groups of 4 save padding: 100 members over 4 checkpoints fill 13
    passes of 8 (28, 24, 24, 24 members), 14 in pairs (26, 26, 24, 24), 16 one by one.
    `seeds`: the members start from a few seed members of another store (`SeedMembers`).
    """

    seed: int = 0
    checkpoints: list[Path] = Field(default_factory=list)
    kinds: dict[str, MemberKind] = Field(
        default_factory=lambda: {"sfno": MemberKind()}, min_length=1
    )
    micro_batch: int = Field(8, ge=1)
    checkpoint_group: int | None = Field(None, ge=1)
    seeds: SeedMembers | None = None

    @model_validator(mode="before")
    @classmethod
    def _kinds_from_a_list(cls, data: Any) -> Any:
        """`kinds: [sfno, fgn]` or `{sfno: , fgn: {share: 3}}`: the unset ones get defaults."""
        kinds = data.get("kinds") if isinstance(data, dict) else None
        if isinstance(kinds, list):
            kinds = dict.fromkeys(kinds)
        if isinstance(kinds, dict):
            return {**data, "kinds": {k: {} if v is None else v for k, v in kinds.items()}}
        return data


class NWPConfig(Strict):
    """The NWP baseline (`models.nwp`): the truth's QG model at the model grid's truncation.

    `dtype` is its floating-point precision (the truth's own is `truth.dtype`): float32 runs
    1.4 times as fast on a CPU (2.2 times at a `micro_batch` of 32), and its rounding changes
    a 10-day forecast by about 1e-4 of its error against the truth (operational NWP, e.g.
    ECMWF's IFS since 2021, runs in single precision too). `micro_batch` is its members per
    CPU forward pass (`ensemble.micro_batch` is the emulators'). `timestep_minutes` is its
    time step (null: the truth's `truth.timestep_minutes`); it must divide the 6 h output
    interval. At T21, 90 min is well inside the advective limit (about a / (U_max T) = 140 min
    for 60 m/s winds), and changes 10-day forecasts by under 0.2 % of their error against the
    truth (configs/demo.yaml).
    """

    dtype: Literal["float32", "float64"] = "float64"
    micro_batch: int = Field(8, ge=1)
    timestep_minutes: PositiveFloat | None = None
    bred_rmse_48h: dict[str, PositiveFloat] | None = None
    """The baseline's own 48 h RMSE per variable, which sizes its bred vectors as each
    emulator's own sizes theirs (a fair baseline); null: `perturbation.bred_rmse_48h`, else
    measured on the baseline itself."""
    bred_fraction: PositiveFloat | None = None
    """The baseline's own bred fraction (`wxens calibrate --model nwp --knob bred_fraction`
    writes it); null: `perturbation.bred_fraction`."""
