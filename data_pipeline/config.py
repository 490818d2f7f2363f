"""Experiment configs: YAML read with `yaml.safe_load`, validated by pydantic.

A bad file fails with one line, `FILE: dotted.key: what was expected`, raised as `ConfigError`.

Each package owns its settings: this module those of the data pipeline (truth, grid, periods,
diagnose, ingest); `models.settings` the models' (`sfno`, `fgn`, `vae`, `diffusion`,
`training`); `forecast.settings` the ensemble's (`perturbation`, `ensemble`, `nwp`). Here
`ExperimentConfig` assembles them: the sections of the member kinds (`sfno:`, `fgn:`, ...,
`nwp:`) are those of the kind registry (`models.kinds.KINDS`, each kind's `settings` under its
name), and `ensemble.kinds` is checked against it. The moved names are imported from here too.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic.fields import FieldInfo
from wxens.data_pipeline.qg import QGParameters
from wxens.forecast.settings import (  # noqa: F401 - also imported from here
    EnsembleConfig,
    InitialPerturbation,
    MemberKind,
    NWPConfig,
    PerturbationConfig,
    SeedMembers,
)
from wxens.models.kinds import KINDS
from wxens.models.settings import (  # noqa: F401 - also imported from here
    DiffusionConfig,
    FGNConfig,
    SFNOConfig,
    TrainingConfig,
    VAEConfig,
)

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


class ExperimentConfig(Strict):
    """A whole experiment: the sections above, and one section per member kind of the
    registry (`models.kinds.KINDS`), `config.<kind>` (`config.sfno`, `config.fgn`, ...,
    `config.nwp`), validated by the kind's `settings` schema (its defaults when absent).

    In its dump (`model_dump`, which a training run's identity hashes) the sections of the
    trained kinds come before `training`, and the others (the NWP baseline's) after
    `ensemble`, as they always have.
    """

    model_config = ConfigDict(extra="allow", frozen=True)  # the kinds' sections

    name: str = "default"
    seed: int = 0
    analyses: Path | None = None  # the analysis store that train and skill read (--analyses)
    truth: TruthConfig = TruthConfig()
    grid: GridConfig = GridConfig()
    variables: list[str] = Field(default_factory=lambda: ["psi_upper", "psi_lower"], min_length=1)
    periods: PeriodsConfig = PeriodsConfig()
    diagnose: DiagnoseConfig = DiagnoseConfig()
    ingest: dict[str, SourceField] | None = None
    training: TrainingConfig = TrainingConfig()
    perturbation: PerturbationConfig = PerturbationConfig()
    ensemble: EnsembleConfig = EnsembleConfig()

    @model_validator(mode="wrap")
    @classmethod
    def _kind_sections(cls, data: Any, handler: Any) -> ExperimentConfig:
        """Validate each kind's section with its schema (refusing keys that are neither a
        field nor a kind's), then the rest, then what the kinds ask of the whole config."""
        if not isinstance(data, dict):
            return handler(data)
        sections = kind_sections()
        unknown = [key for key in data if key not in cls.model_fields and key not in sections]
        if unknown:
            raise ValidationError.from_exception_data(
                cls.__name__,
                [{"type": "extra_forbidden", "loc": (key,), "input": data[key]} for key in unknown],
            )
        values, errors = {}, []
        for name, schema in sections.items():
            try:
                values[name] = schema.model_validate(data[name]) if name in data else schema()
            except ValidationError as exc:
                errors += [located(error, name) for error in exc.errors()]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        config = handler({**{k: v for k, v in data.items() if k not in sections}, **values})
        config.check_kinds()
        return config

    def check_kinds(self) -> None:
        """`ensemble.kinds` names kinds of checkpoint, and sets only the forecast-time
        settings each reads (`EmulatorKind.member_settings`); each kind's own `check`."""
        known = KINDS.checkpointed()
        for name, members in self.ensemble.kinds.items():
            if name not in known:
                raise ValueError(
                    f"ensemble.kinds.{name}: expected a kind of checkpoint, one of"
                    f" {', '.join(known)} (got {name!r})"
                )
            kind = KINDS[name]
            for setting in members.forecast_settings():
                if lacks := kind.lacks(setting):
                    readers = ", ".join(k for k in KINDS if setting in KINDS[k].member_settings)
                    raise ValueError(
                        f"ensemble.kinds.{name}.{setting}: {lacks};"
                        f" it is for {readers or 'no kind'}"
                    )
        for name, kind in KINDS.items():
            if kind.check is not None and name in (self.__pydantic_extra__ or {}):
                kind.check(self)

    @model_serializer(mode="wrap")
    def _sections_in_place(self, handler: Any) -> dict[str, Any]:
        """The dump, the trained kinds' sections before `training`, the others at the end."""
        data = handler(self)
        fields = list(type(self).model_fields)
        sections = [key for key in data if key not in type(self).model_fields]
        trained = [key for key in sections if key in KINDS and KINDS[key].trainable]
        at = fields.index("training")
        order = [*fields[:at], *trained, *fields[at:], *(k for k in sections if k not in trained)]
        return {key: data[key] for key in order if key in data}

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


def kind_sections() -> dict[str, type[BaseModel]]:
    """Each registered kind's config section: its name and settings schema."""
    return {name: kind.settings for name, kind in KINDS.items() if kind.settings is not None}


def located(error: dict[str, Any], section: str) -> dict[str, Any]:
    """A pydantic error of a section's schema, located under `section` (for re-raising)."""
    located = {"type": error["type"], "loc": (section, *error["loc"]), "input": error["input"]}
    return {**located, **({"ctx": error["ctx"]} if "ctx" in error else {})}


def describe_error(error: dict[str, Any], model: type[BaseModel]) -> str:
    location = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, error["loc"][:-1])
        return f"{location}: unknown key; allowed: {', '.join(allowed)}"
    message = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    suffix = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{location}: {message}{suffix}" if location else message


def _allowed_keys(model: type[BaseModel], parent: tuple) -> list[str]:
    fields = dict(model.model_fields)
    if model is ExperimentConfig:
        fields.update(kind_sections())
    for part in parent:
        field = fields.get(part)
        annotation = field.annotation if isinstance(field, FieldInfo) else field
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        fields = dict(annotation.model_fields)
    return sorted(fields)


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
        reason = describe_error(exc.errors()[0], ExperimentConfig)
        raise ConfigError(f"{source}: {reason}") from None


def read_yaml(path: Path) -> Any:
    """The YAML document in `path` (`yaml.safe_load`); `ConfigError` with one line on failure."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte {exc.start}: {exc.object[exc.start]:#04x})"
        ) from None
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


def write_overlay(path: str | Path, base: str | Path, overlay: dict[str, Any]) -> Path:
    """Write at `path` a config that lays `overlay` over the config at `base` (its `base:`
    key, as an absolute path, so `path` may live anywhere); return `path`."""
    path = Path(path)
    path.write_text(yaml.safe_dump({"base": str(Path(base).resolve()), **overlay}))
    return path


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment config; raise `ConfigError` with one line on failure."""
    path = Path(path)
    return parse_config(resolve_base(path), str(path))
