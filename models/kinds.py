"""The member-kind registry: `KINDS` maps each kind of ensemble member to its `EmulatorKind`.

An entry holds everything the rest of wxens needs to know about a kind, so that the trainer
(`models.training`), the checkpoint loader (`models.checkpoint`), the config
(`data_pipeline.config`) and the ensemble runner (`forecast.runner`) hold no switch on kinds:

- `emulator`, its class, and `build`, a new one from the experiment config (an untrained
  network from the normalisation statistics; the NWP baseline is the model itself);
- `settings`, the pydantic schema of its own config section, the top-level key of its `name`
  (`fgn:`), which `ExperimentConfig` validates and exposes as `config.<name>`;
- `load`, the emulator from a checkpoint's `architecture` (None: no checkpoints; the NWP);
- `loss` and `validation`, its training loss and validation terms (None: not trainable);
- `member_settings`, the forecast-time settings of `ensemble.kinds.<name>` it reads
  (`MemberKind.FORECAST_SETTINGS`; `lacks` words the refusal of the others),
  `use_member_settings`, which applies them, and
  `member_models`, the member models a checkpoint makes under them (itself, or one per mean
  network of a residual diffusion checkpoint).

A kind's module registers its entry when it is imported (`KINDS.register`); the registry
imports the built-in kinds' modules (`BUILTIN`) the first time it is read. Adding a kind
means writing its module, which registers it, and its config section; a built-in one also
names its module in `BUILTIN`, so that it is known before anything imports it. A kind of your
own registers the same way once its module is imported (tests/test_kinds.py does).

This module imports no torch: reading the config only loads the kinds' modules when it
validates one.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from wxens.forecast.settings import MemberKind

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from pydantic import BaseModel
    from wxens.data_pipeline.config import ExperimentConfig
    from wxens.models.emulator import Emulator

BUILTIN = (
    "wxens.models.sfno",
    "wxens.models.fgn",
    "wxens.models.vae",
    "wxens.models.diffusion",
    "wxens.models.nwp",
    "wxens.models.limit",
)
"""The modules of the built-in kinds, in the order the registry lists them."""

Loss = Callable[..., "torch.Tensor"]
"""`loss(emulator, inputs, targets, weights, training, generator) -> errors`: inputs
`(batch, channel, lat, lon)`, targets `(batch, step, channel, lat, lon)`, normalised area
weights `(lat, lon)`, the `training:` section (`TrainingConfig`) and the generator of the
step's noise; errors `(step, channel)` (or `(channel,)`), whose mean the trainer minimises."""

Validation = Callable[..., tuple["torch.Tensor", dict[str, Any]]]
"""`validation(emulator, inputs, targets, weights, generator) -> (errors, extra)`: errors
`(step, channel)` of one batch (as `EmulatorKind.score` says), and scalar extra terms (such as
a VAE's `kl`) that the validation averages over the batches."""


def _apply_nothing(emulator: Emulator, members: MemberKind) -> None:
    """A kind that reads no forecast-time member settings."""


def _itself(
    emulator: Emulator, members: MemberKind, load: Callable[[Path], Emulator]
) -> list[Emulator]:
    """A kind whose checkpoint makes one member model: the emulator itself."""
    return [emulator]


def _ensemble_micro_batch(config: ExperimentConfig) -> int:
    return config.ensemble.micro_batch


@dataclass(frozen=True)
class EmulatorKind:
    """One kind of ensemble member (see the module docstring).

    `name` is the kind's key everywhere: a checkpoint's `kind`, `ensemble.kinds`, its config
    section and `wxens train --model`; `title` names it in messages ("SFNO"). `build(config,
    stats, device)` makes a new emulator from the config (`stats`: the normalisation
    statistics of a new network; None where the kind needs none). `score` is what the
    validation errors are: "rmse", normalised squared errors (the score is the square root of
    their mean), or "crps", normalised CRPS (the score is their mean). `starts_from` are the
    kinds whose checkpoints can start its training (`--init-from`) though they lack some of
    its layers (an FGN starts from an SFNO: its noise layers start at zero). `check(config)`
    raises ValueError (one line, a dotted path) where the config cannot run this kind.
    `member_models(emulator, members, load)` are the member models one loaded checkpoint makes
    under `ensemble.kinds.<name>` (`load(path)` loads another checkpoint).
    `micro_batch(config)` is its members per CPU forward pass.
    """

    name: str
    title: str
    emulator: type
    build: Callable[..., Emulator]
    settings: type[BaseModel] | None = None
    load: Callable[[dict[str, Any]], Emulator] | None = None
    loss: Loss | None = None
    validation: Validation | None = None
    score: Literal["rmse", "crps"] = "rmse"
    starts_from: tuple[str, ...] = ()
    member_settings: tuple[str, ...] = ()
    use_member_settings: Callable[[Emulator, MemberKind], None] = _apply_nothing
    member_models: Callable[[Emulator, MemberKind, Callable[[Path], Emulator]], list[Emulator]] = (
        _itself
    )
    check: Callable[[ExperimentConfig], None] | None = None
    micro_batch: Callable[[ExperimentConfig], int] = _ensemble_micro_batch

    @property
    def trainable(self) -> bool:
        """Whether `wxens train --model NAME` trains it (it has a loss and validation terms)."""
        return self.loss is not None and self.validation is not None

    def lacks(self, setting: str) -> str | None:
        """What this kind's members lack that `ensemble.kinds.<kind>.<setting>` acts on, in
        the words of the refusal ("SFNO members draw no noise"); None where they read it."""
        if setting in self.member_settings:
            return None
        return f"{self.title} members {MemberKind.FORECAST_SETTINGS[setting]}"

    @property
    def from_checkpoints(self) -> bool:
        """Whether its members come from checkpoints (else it is built from the config)."""
        return self.load is not None


class KindRegistry(Mapping[str, EmulatorKind]):
    """`name -> EmulatorKind`, the built-in kinds (`BUILTIN`, imported on first use) first,
    then the others in the order they registered.

    Example:
        >>> from wxens.models.kinds import KINDS
        >>> list(KINDS)
        ['sfno', 'fgn', 'vae', 'diffusion', 'nwp', 'truth']
        >>> fgn = KINDS["fgn"]
        >>> fgn.emulator.__name__, fgn.settings.__name__, fgn.starts_from
        ('FGNEmulator', 'FGNConfig', ('sfno',))
        >>> fgn.member_settings
        ('noise_scale', 'noise_ramp_hours', 'noise_profile', 'tendency_length_km',
         'tendency_hours', 'tendency_ramp_hours', 'tendency_additive')
        >>> KINDS.trainable(), KINDS["nwp"].from_checkpoints
        (['sfno', 'fgn', 'vae', 'diffusion'], False)
    """

    def __init__(self) -> None:
        self._kinds: dict[str, EmulatorKind] = {}
        self._lock = threading.RLock()
        self._loaded = False
        self._loading = False

    def register(self, kind: EmulatorKind, replace: bool = False) -> EmulatorKind:
        """Add `kind` (a kind's module calls this when it is imported); returns it.

        A second kind of the same name is refused unless `replace`."""
        with self._lock:
            known = self._kinds.get(kind.name)
            if known is not None and known != kind and not replace:
                raise ValueError(f"member kind {kind.name!r} is already registered")
            self._kinds[kind.name] = kind
        return kind

    def unregister(self, name: str) -> None:
        """Remove the kind `name` (a test's own kind, when the test is done)."""
        with self._lock:
            self._kinds.pop(name, None)

    def _ordered(self) -> dict[str, EmulatorKind]:
        with self._lock:
            if not self._loaded and not self._loading:  # a module that imports registers
                self._loading = True
                try:
                    for module in BUILTIN:
                        importlib.import_module(module)
                    self._loaded = True
                finally:
                    self._loading = False
            kinds = list(self._kinds.values())

        def position(kind: EmulatorKind) -> int:
            module = kind.emulator.__module__
            return BUILTIN.index(module) if module in BUILTIN else len(BUILTIN)

        return {kind.name: kind for kind in sorted(kinds, key=position)}  # a stable sort

    def __getitem__(self, name: str) -> EmulatorKind:
        kinds = self._ordered()
        if name not in kinds:
            raise KeyError(f"unknown member kind {name!r}; registered: {', '.join(kinds)}")
        return kinds[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ordered())

    def __len__(self) -> int:
        return len(self._ordered())

    def trainable(self) -> list[str]:
        """The kinds that `wxens train --model` trains, in registry order."""
        return [name for name, kind in self._ordered().items() if kind.trainable]

    def checkpointed(self) -> list[str]:
        """The kinds whose members come from checkpoints (those `ensemble.kinds` may name)."""
        return [name for name, kind in self._ordered().items() if kind.from_checkpoints]


KINDS = KindRegistry()
"""The member-kind registry (see the module docstring)."""


def register_kind(kind: EmulatorKind, replace: bool = False) -> EmulatorKind:
    """`KINDS.register(kind, replace)`."""
    return KINDS.register(kind, replace)
