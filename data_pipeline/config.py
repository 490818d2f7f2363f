"""Experiment configs: YAML read with `yaml.safe_load`, validated by pydantic.

A bad file fails with one line, `FILE: dotted.key: what was expected`, raised as `ConfigError`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from wxens.data_pipeline.qg import QGParameters

PositiveFloat = Annotated[float, Field(gt=0)]


class ConfigError(ValueError):
    """A config file that cannot be used; the message is one line naming the culprit."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TruthConfig(Strict):
    """The fine-resolution truth model (see `data_pipeline.qg`; defaults from `QGParameters`)."""

    truncation: int = Field(QGParameters.truncation, ge=5, le=340)
    timestep_minutes: PositiveFloat = QGParameters.timestep_minutes
    deformation_radius_km: PositiveFloat = QGParameters.deformation_radius_km
    relaxation_days: PositiveFloat = QGParameters.relaxation_days
    jet_shear_m_s: float = QGParameters.jet_shear_m_s
    drag_days: PositiveFloat = QGParameters.drag_days
    hyperdiffusion_hours: PositiveFloat = QGParameters.hyperdiffusion_hours
    hyperdiffusion_order: int = Field(QGParameters.hyperdiffusion_order, ge=1, le=8)
    spinup_days: float = Field(200.0, ge=0)
    output_interval_hours: int = Field(6, gt=0)
    dtype: Literal["float32", "float64"] = "float64"

    def qg_parameters(self) -> QGParameters:
        names = QGParameters.__dataclass_fields__.keys() & type(self).model_fields.keys()
        return QGParameters(**{name: getattr(self, name) for name in names})


class GridConfig(Strict):
    """The model grid: equiangular, poles included, latitude descending (as ERA5)."""

    nlat: int = Field(33, ge=3)
    nlon: int = Field(64, ge=4)
    truncation: int = Field(21, ge=1)

    @model_validator(mode="after")
    def _resolvable(self) -> GridConfig:
        if self.truncation > self.nlon // 2 - 1:
            raise ValueError(
                f"truncation T{self.truncation} needs more than {self.nlon} longitudes"
            )
        return self


class Years(Strict):
    first: int
    last: int

    @model_validator(mode="after")
    def _ordered(self) -> Years:
        if self.last < self.first:
            raise ValueError(f"last year {self.last} is before first year {self.first}")
        return self


class PeriodsConfig(Strict):
    """Calendar of the truth world: its first analysis, and the train/validation/test years."""

    start: dt.date = dt.date(2025, 1, 1)
    train: Years = Years(first=2025, last=2029)
    validation: Years = Years(first=2030, last=2030)
    test: Years = Years(first=2031, last=2031)

    @property
    def total_years(self) -> int:
        return max(p.last for p in (self.train, self.validation, self.test)) - self.start.year + 1


class DiagnoseConfig(Strict):
    """Settings of `wxens data diagnose` (twin experiments and the climate run)."""

    years: int = Field(5, ge=1)
    twin_pairs: int = Field(8, ge=1)
    small_error: PositiveFloat = 1e-3
    analysis_error: PositiveFloat = 0.1
    twin_days: int = Field(30, ge=6)
    perturbation_length_scale_km: PositiveFloat = 1000.0
    analysis_length_scale_km: PositiveFloat = 2000.0


class SourceField(Strict):
    """Where a model variable comes from in a reanalysis file, and its unit conversion.

    value = source_value * scale + offset
    """

    source: str
    level: float | None = None
    scale: float = 1.0
    offset: float = 0.0
    units: str
    long_name: str
    standard_name: str | None = None


class SFNOConfig(Strict):
    """Architecture of the SFNO emulator (torch-harmonics `SphericalFourierNeuralOperator`).

    The network keeps spherical-harmonic degrees below `grid.truncation + 1` inside its spectral
    convolutions (on an internal grid `scale_factor` times coarser than the model grid).

    With `gradient_features`, each field's gradient components enter beside it. The SFNO's
    spectral convolutions are isotropic (one weight per degree l), so they cannot form the
    directional derivatives that advection needs; given the gradient, they can (the Laplacian
    commutes with d/dlambda), and the MLPs can multiply winds by gradients.
    """

    embed_dim: int = Field(64, ge=1)
    num_layers: int = Field(4, ge=1)
    scale_factor: int = Field(1, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    pos_embed: Literal["none", "learnable lat", "learnable latlon", "spectral"] = "learnable lat"
    gradient_features: bool = True  # also feed the fields' exact spectral gradients
    precision: Literal["float32", "tf32", "bf16"] = "float32"  # tf32/bf16 apply on CUDA only


class FGNConfig(Strict):
    """The FGN emulator (`models.fgn`): an SFNO (`sfno`) whose blocks `noise_dim`-dimensional
    noise modulates; `wxens train --model fgn` minimises the fair CRPS of `samples` forecasts
    of each training state (the FGN paper uses 2)."""

    noise_dim: int = Field(32, ge=1)
    samples: int = Field(2, ge=2)


class VAEConfig(Strict):
    """The VAE emulator (`models.vae`; FuXi-ENS, Zhong et al. 2024, arXiv:2405.05925): an SFNO
    whose hidden state after the encoder is perturbed, point by point, by a latent field of
    `latent_channels` maps, drawn from a prior p(z | x_t) when it forecasts and from a
    posterior q(z | x_t, x_t+dt) when it trains. `wxens train --model vae` minimises the fair
    CRPS of `samples` forecasts of each training state plus `kl_weight` x KL(q || p) in nats
    per latent value. Both terms are averages per grid point (the CRPS in units of the 6 h
    tendency std: about 0.2 for the default SFNO over 24 h), so their balance does not depend
    on the grid. At 0.01, a posterior with half the prior's std (0.32 nat per value) costs
    0.003, a few percent of the CRPS: it may carry what the target tells about the step where
    that lowers the CRPS by more, and the KL pulls the prior toward it. Near 1 the KL
    would dominate and collapse the posterior onto the prior (an FGN with local noise); at 0
    nothing would tie the prior, which forecasts, to the posterior, which trains."""

    latent_channels: int = Field(8, ge=1)
    samples: int = Field(2, ge=2)
    kl_weight: float = Field(0.01, ge=0)


class DiffusionConfig(Strict):
    """The diffusion emulator (`models.diffusion`, EDM; Karras et al. 2022, arXiv:2206.00364):
    an SFNO (`sfno`) denoiser of the normalised 6 h tendency, its noise level sigma entering
    through a sinusoidal embedding of `noise_embedding` numbers. Sampling: `sampler` (`heun`,
    EDM's 2nd order; `euler`, 1st order, DDIM-like) on `sampler_steps` levels from `sigma_max`
    to `sigma_min` spaced as `rho`; training draws ln sigma ~ N(`p_mean`, `p_std`^2) and adds
    to each conditioning state white noise of `input_noise` times each channel's 6 h tendency
    std (projected to the truncation; 0: none), its target still the true next state, so the
    denoiser learns to remove such errors rather than carry them forward (the noise injection
    of Sanchez-Gonzalez et al. 2020, arXiv:2002.09405, for stable rollouts); validation scores
    the fair CRPS of `samples` forecasts of each state."""

    sampler_steps: int = Field(8, ge=2)
    sampler: Literal["heun", "euler"] = "heun"
    sigma_min: PositiveFloat = 0.002
    sigma_max: PositiveFloat = 80.0
    rho: PositiveFloat = 7.0
    p_mean: float = -1.2
    p_std: PositiveFloat = 1.2
    noise_embedding: int = Field(32, ge=2, multiple_of=2)
    input_noise: float = Field(0.0, ge=0)
    samples: int = Field(2, ge=2)

    @model_validator(mode="after")
    def _levels_ordered(self) -> DiffusionConfig:
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min {self.sigma_min} must be below sigma_max {self.sigma_max}")
        return self


class TrainingConfig(Strict):
    """`wxens train`: AdamW with linear warm-up then cosine decay, area-weighted MSE.

    `rollout_schedule` maps an epoch (counting from 0) to the length of the autoregressive
    rollouts trained on from that epoch on (1 before its first entry), a curriculum such as
    `{0: 1, 40: 2, 50: 4}`; `samples_per_epoch` draws a random subset of the training pairs
    each epoch (all of them when null). Validation is the area-weighted RMSE over
    `validation_lead_steps` steps from `validation_inits` evenly spaced validation-year inits.
    """

    batch_size: int = Field(32, ge=1)
    epochs: int = Field(8, ge=1)
    samples_per_epoch: int | None = Field(None, ge=1)
    learning_rate: PositiveFloat = 2e-3
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(50, ge=0)
    rollout_schedule: dict[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=1)]] = {0: 1}
    loss: Literal["mse", "amse"] = "mse"  # amse: models.training.adjusted_mse (sharper)
    validation_inits: int = Field(64, ge=1)
    validation_lead_steps: int = Field(4, ge=1)
    threads: int | None = Field(None, ge=1)  # torch CPU threads; null: torch's default


InitialPerturbation = Literal["none", "random_field", "bred_vector"]
Kind = Literal["sfno", "fgn", "vae", "diffusion"]
"""The emulator kinds (`models.checkpoint.KINDS`)."""


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
    `sampler_steps` overrides a diffusion checkpoint's `DiffusionConfig.sampler_steps` (null:
    as trained): more levels cost more denoiser calls and bias the spread less.
    """

    share: int = Field(1, ge=1)
    initial: InitialPerturbation | None = None
    noise_scale: PositiveFloat = 1.0
    sampler_steps: int | None = Field(None, ge=2)


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
    are the emulator kinds these may be (a checkpoint of another kind is refused), each with
    its share of the members and their perturbation (`MemberKind`; a list of kinds gives each
    the defaults). List the checkpoints of several kinds to mix them: member k's group falls to
    a kind by the shares, then to that kind's checkpoints in turn (`assign_checkpoints`).
    `micro_batch` is the batch size of every CPU forward pass (padded when short), so a
    member's numbers never depend on the batch it is computed in. `checkpoint_group` is how
    many consecutive members share a checkpoint, member k on checkpoint (k // g) mod N of one
    kind (null: a bred pair, 2, with bred vectors, else 1; with bred vectors it must be even).
    Groups of more than a pair can save padding: 100 bred members over 4 checkpoints fill 13
    passes of 8 in groups of 4 (28, 24, 24, 24 members), 14 in pairs (26, 26, 24, 24).
    `seeds`: the members start from a few seed members of another store (`SeedMembers`).
    """

    seed: int = 0
    checkpoints: list[Path] = Field(default_factory=list)
    kinds: dict[Kind, MemberKind] = Field(
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

    @model_validator(mode="after")
    def _kind_settings_apply(self) -> EnsembleConfig:
        if self.kinds.get("sfno", MemberKind()).noise_scale != 1:
            raise ValueError("ensemble.kinds.sfno.noise_scale: SFNO members draw no noise")
        for kind, members in self.kinds.items():
            if members.sampler_steps is not None and kind != "diffusion":
                raise ValueError(f"ensemble.kinds.{kind}.sampler_steps: only diffusion samples")
        return self


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


class ExperimentConfig(Strict):
    name: str = "default"
    seed: int = 0
    analyses: Path | None = None  # the analysis store that train and skill read (--analyses)
    truth: TruthConfig = TruthConfig()
    grid: GridConfig = GridConfig()
    variables: list[str] = Field(default_factory=lambda: ["psi_upper", "psi_lower"], min_length=1)
    periods: PeriodsConfig = PeriodsConfig()
    diagnose: DiagnoseConfig = DiagnoseConfig()
    ingest: dict[str, SourceField] | None = None
    sfno: SFNOConfig = SFNOConfig()
    fgn: FGNConfig = FGNConfig()
    vae: VAEConfig = VAEConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    training: TrainingConfig = TrainingConfig()
    perturbation: PerturbationConfig = PerturbationConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    nwp: NWPConfig = NWPConfig()

    @model_validator(mode="after")
    def _variables_known(self) -> ExperimentConfig:
        from wxens.data_pipeline.truth import TRUTH_FIELDS

        allowed = self.ingest.keys() if self.ingest is not None else TRUTH_FIELDS.keys()
        unknown = [v for v in self.variables if v not in allowed]
        if unknown:
            where = "ingest" if self.ingest is not None else "the truth world"
            raise ValueError(f"variables: unknown {unknown}; {where} provides {sorted(allowed)}")
        return self

    def initial_perturbation(self, kind: str) -> InitialPerturbation:
        """The initial-condition perturbation of `kind`'s members (`MemberKind.initial`; none
        when they start from `ensemble.seeds`, which carry theirs)."""
        if self.ensemble.seeds is not None:
            return "none"
        settings = self.ensemble.kinds.get(kind)
        chosen = settings.initial if settings is not None else None
        return chosen or self.perturbation.initial

    def breeds(self) -> bool:
        """Whether any member kind starts from bred vectors."""
        return any(self.initial_perturbation(kind) == "bred_vector" for kind in self.ensemble.kinds)

    @model_validator(mode="after")
    def _bred_pairs_share_a_checkpoint(self) -> ExperimentConfig:
        group = self.ensemble.checkpoint_group
        if group is not None and group % 2 and self.breeds():
            raise ValueError(
                f"ensemble.checkpoint_group: {group} would split a bred pair over two"
                " checkpoints; use an even number"
            )
        return self

    @model_validator(mode="after")
    def _nwp_steps_fit_the_output_interval(self) -> ExperimentConfig:
        minutes = self.nwp.timestep_minutes
        steps = self.truth.output_interval_hours * 60 / (minutes or 1)
        if minutes is not None and abs(steps - round(steps)) > 1e-9:
            raise ValueError(
                f"nwp.timestep_minutes: {minutes} does not divide the"
                f" {self.truth.output_interval_hours} h output interval"
            )
        return self


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    location = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, error["loc"][:-1])
        return f"{location}: unknown key; allowed: {', '.join(allowed)}"
    message = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    suffix = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{location}: {message}{suffix}" if location else message


def _allowed_keys(model: type[BaseModel], parent: tuple) -> list[str]:
    for part in parent:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def parse_config(data: Any, source: str = "<config>") -> ExperimentConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc.errors()[0], ExperimentConfig)}") from None


def read_yaml(path: Path) -> Any:
    """The YAML document in `path` (`yaml.safe_load`); `ConfigError` with one line on failure."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None


def merged(base: dict, override: dict, depth: int = 2) -> dict:
    """`base` with `override` laid over it: sections (`training:`) merge key by key, and the
    value of a key (`training.rollout_schedule`, `periods.train`) is replaced whole."""
    result = dict(base)
    for key, value in override.items():
        both = depth > 1 and isinstance(value, dict) and isinstance(result.get(key), dict)
        result[key] = merged(result[key], value, depth - 1) if both else value
    return result


def resolve_base(path: Path, seen: tuple[Path, ...] = ()) -> Any:
    """The document in `path` laid over the config its `base:` key names (a path relative to
    `path`'s folder), recursively: a config can change a few keys of another one."""
    data = read_yaml(path)
    if not isinstance(data, dict) or "base" not in data:
        return data
    base = (path.parent / str(data.pop("base"))).resolve()
    if base in seen:
        raise ConfigError(f"{path}: base: {base} includes itself")
    parent = resolve_base(base, (*seen, path.resolve()))
    if not isinstance(parent, dict):
        raise ConfigError(f"{base}: expected a mapping at the top level (the base of {path})")
    return merged(parent, data)


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment config; raise `ConfigError` with one line on failure."""
    path = Path(path)
    return parse_config(resolve_base(path), str(path))
