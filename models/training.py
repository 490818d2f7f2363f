"""Training one emulator of a trainable member kind (`wxens train --model KIND`: `sfno`, `fgn`,
`vae`, `diffusion`, or any kind registered in `models.kinds.KINDS` with a loss).

AdamW with a linear warm-up then cosine decay of the learning rate; the loss is the kind's
(`EmulatorKind.loss`). The SFNO's is the area-weighted MSE of the predicted states, each
channel in units of its 6 h tendency std (so that both layers count alike, and 1 is the error
of persistence after one step),

    L = (1 / K C) sum_k sum_c sum_ij w_ij ((x^_k - x_k)_cij / sigma_tend_c)^2,

averaged over a batch of K-step autoregressive rollouts (K from the config's
`rollout_schedule`, a curriculum that lengthens the rollouts epoch by epoch); an FGN minimises
instead the `fair_crps` of `fgn.samples` sampled rollouts per state, in the same units, and a
VAE that of `vae.samples` rollouts sampled from its posterior plus `vae.kl_weight` x its KL
divergence from the prior (`models.fgn.sampled_rollout_terms`); a diffusion model the EDM loss
of one-step pairs (`models.diffusion.denoising_loss`). The
analyses of the training and validation years are held in memory on the training device
(`PeriodStates`), so a batch is one gather. After every epoch the model is scored on the
validation years (`EmulatorKind.validation`) and the best one is kept as the checkpoint in
`out/`; the latest state (weights, optimizer, epoch) goes to `out/last/`, from which an
interrupted run resumes (`run(max_epochs=N)` stops on purpose after N epochs, to resume the
same way). `Trainer.continuing` finishes the schedule of a checkpoint that stopped short of it
and kept no `last/` (its optimizer moments start afresh). Batches are drawn in an order seeded
by `(seed, epoch)`, a generative model's noise from a generator seeded by `(seed, step)`, and
no other randomness is used, so the same seed on the same machine gives the same weights,
interrupted or not.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import safetensors.torch
import torch
import yaml
from wxens.data_pipeline.analysis_store import open_analyses
from wxens.data_pipeline.config import ExperimentConfig
from wxens.data_pipeline.progress import progress_bar
from wxens.data_pipeline.training_data import (
    analysis_states,
    area_weights,
    check_variables,
    compute_normalisation,
    timestep,
    year_window,
)
from wxens.models.checkpoint import (
    METADATA,
    WEIGHTS,
    CheckpointError,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
    save_json,
    save_tensors,
    sha256_file,
)
from wxens.models.fgn import sampled_rollout_errors, sampled_rollout_terms
from wxens.models.kinds import KINDS
from wxens.models.losses import adjusted_mse, fair_crps, rollout_errors, weighted_mse
from wxens.models.sfno import differing_section

__all__ = [  # the losses live beside their kinds; they are imported from here too
    "KINDS", "LAST", "OPTIMIZER", "STATE", "PeriodStates", "Trainer", "adjusted_mse",
    "batches", "data_description", "fair_crps", "learning_rate_factor", "rollout_errors",
    "sampled_rollout_errors", "sampled_rollout_terms", "sha256_json", "validate",
    "weighted_mse",
]  # fmt: skip
DEFAULT_KIND = "sfno"
"""The kind `wxens train` trains without `--model`; its runs record no `model` in their
identity, as the runs from before there were other kinds did, so that they resume."""
LAST = "last"  # sub-directory of the output holding the state to resume from
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"


def data_description(analyses: Path, config: ExperimentConfig) -> dict[str, Any]:
    """What the training data is: the store's provenance, time axis, variables and years."""
    dataset = open_analyses(analyses)
    times = dataset["time"].values
    description = {
        "store": str(analyses),
        "store_config": dataset.attrs.get("wxens_config"),
        "store_git_revision": dataset.attrs.get("git_revision"),
        "times": [str(times[0]), str(times[-1]), len(times)],
        "variables": list(config.variables),
        "train_years": [config.periods.train.first, config.periods.train.last],
        "validation_years": [config.periods.validation.first, config.periods.validation.last],
    }
    dataset.close()
    return description


def sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def learning_rate_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at step `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def flat_values(tree: Any) -> list[float]:
    """Every number in a nested dict/list of numbers, in key order (to compare statistics)."""
    if isinstance(tree, dict):
        return [value for key in sorted(tree) for value in flat_values(tree[key])]
    if isinstance(tree, list | tuple):
        return [value for item in tree for value in flat_values(item)]
    return [float(tree)] if isinstance(tree, int | float) else []


def batches(indices: np.ndarray, size: int) -> list[np.ndarray]:
    return [indices[start : start + size] for start in range(0, len(indices), size)]


class PeriodStates:
    """Every analysis of the calendar years `years`, held as one float32 tensor
    `states (time, channel, latitude, longitude)` on `device`, in the store's units.

    Five years of two fields at 33 x 64 are 123 MB: small enough for any training device, and
    a batch of rollout windows is then one gather instead of one store read per sample (the
    lazy `AnalysisPairs` is for data that does not fit). `area_weights` are the normalised
    cell-area weights `(latitude, longitude)` on `device`.
    """

    def __init__(
        self,
        analyses: Path,
        variables: tuple[str, ...],
        years: tuple[int, int],
        device: torch.device,
    ):
        dataset = open_analyses(analyses)
        check_variables(dataset, variables)
        times = dataset["time"].values
        self.states = analysis_states(dataset, variables, year_window(times, years)).to(device)
        self.timestep = timestep(times)
        self.variables, self.years = tuple(variables), years
        weights = area_weights(dataset["latitude"].values, dataset["longitude"].values)
        self.area_weights = torch.from_numpy(weights).float().to(device)
        dataset.close()

    def count(self, steps: int) -> int:
        """How many `steps`-step windows start in the period (and end inside it)."""
        count = len(self.states) - steps
        if count < 1:
            raise ValueError(f"years {self.years[0]}-{self.years[1]} hold no {steps}-step window")
        return count

    def windows(self, starts: np.ndarray, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs `(batch, channel, lat, lon)` at the window starts and targets
        `(batch, steps, channel, lat, lon)`: the `steps` analyses after each start."""
        index = torch.as_tensor(starts, device=self.states.device)
        offsets = torch.arange(1, steps + 1, device=self.states.device)
        return self.states[index], self.states[index[:, None] + offsets]


def content_named(tensors: dict[str, torch.Tensor], folder: Path, stem: str) -> tuple[str, str]:
    """Write `tensors` to `folder/<stem>-<sha256[:16]>.safetensors`; return its name and sha256.
    A file named by its content is never overwritten with other content mid-write."""
    temporary = folder / f"{stem}.partial.safetensors"
    save_tensors(tensors, temporary)
    digest = sha256_file(temporary)
    name = f"{stem}-{digest[:16]}.safetensors"
    temporary.replace(folder / name)
    return name, digest


@torch.no_grad()
def validate(
    emulator: Any, period: PeriodStates, count: int, batch_size: int, steps: int
) -> dict[str, Any]:
    """The validation score of `emulator` over `steps`-step rollouts from `count` evenly spaced
    inits: its kind's validation terms (`EmulatorKind.validation`), area-weighted.

    With `score: rmse` (deterministic kinds): `score` = sqrt of the normalised MSE averaged
    over leads and channels, lower is better, and `rmse` per variable at the last lead in the
    variable's units. With `score: crps` (generative kinds): `score` = the normalised fair
    CRPS, and `crps` per variable. A generative model's noise comes from a generator seeded 0:
    every epoch is scored on the same draws. The kind's extra terms (a VAE's `kl`, its mean
    KL(q || p) in nats per latent value, sampling its prior as it forecasts) are averaged
    over the inits.
    """
    kind = KINDS[emulator.kind]
    indices = np.unique(np.linspace(0, period.count(steps) - 1, count).round().astype(int))
    total = torch.zeros(steps, len(period.variables), dtype=torch.float64)
    generator, extra = torch.Generator().manual_seed(0), {}
    for chunk in batches(indices, batch_size):
        inputs, targets = period.windows(chunk, steps)
        errors, terms = kind.validation(emulator, inputs, targets, period.area_weights, generator)
        total += errors.cpu().double() * len(chunk)
        for name, value in terms.items():
            extra[name] = extra.get(name, 0.0) + float(value) * len(chunk)
    mean = total / len(indices)
    scale = emulator.tendency_std.flatten().cpu().double()
    if kind.score == "crps":
        score, last = float(mean.mean()), mean[-1] * scale
    else:
        score, last = float(mean.mean().sqrt()), (mean[-1] * scale**2).sqrt()
    return {
        "score": score,
        "lead_hours": float(steps * period.timestep / np.timedelta64(1, "h")),
        kind.score: dict(zip(period.variables, map(float, last), strict=True)),
        **{name: value / len(indices) for name, value in extra.items()},
        "inits": len(indices),
    }


class Trainer:
    """One training run of `wxens train` into the directory `out` (see the module docstring)."""

    def __init__(
        self,
        config: ExperimentConfig,
        config_dict: dict,
        analyses: Path,
        seed: int,
        out: Path,
        device: torch.device,
        quiet: bool = False,
        init_from: Path | None = None,
        model: str = DEFAULT_KIND,
    ):
        trainable = KINDS.trainable()
        if model not in trainable:
            raise ValueError(
                f"model {model!r}: expected a trainable member kind, one of {', '.join(trainable)}"
            )
        self.kind = KINDS[model]
        self.config, self.settings = config, config.training
        self.seed, self.out, self.device, self.quiet = seed, out, device, quiet
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        periods = config.periods
        train_years = (periods.train.first, periods.train.last)
        validation_years = (periods.validation.first, periods.validation.last)
        self.description = data_description(analyses, config)
        self.identity = {
            "seed": seed,
            "config": yaml.safe_dump(config_dict, sort_keys=False),
            "training_data_sha256": sha256_json(self.description),
            **({"model": model} if model != DEFAULT_KIND else {}),
        }
        variables = tuple(config.variables)
        self.train = PeriodStates(analyses, variables, train_years, device)
        self.validation = PeriodStates(analyses, variables, validation_years, device)
        start = load_checkpoint(init_from, config) if init_from is not None else None
        stats = (  # a fine-tune keeps its checkpoint's normalisation
            start.stats
            if start is not None
            else compute_normalisation(open_analyses(analyses), config.variables, train_years)
        )
        torch.manual_seed(seed)  # the new network's initial weights
        self.emulator = self.kind.build(config, stats, device)
        self.optimizer = torch.optim.AdamW(
            self.emulator.network.parameters(),
            lr=self.settings.learning_rate,
            weight_decay=self.settings.weight_decay,
        )
        if start is not None:
            self.start_from(init_from, start)
        self.epoch, self.step, self.best, self.history = 0, 0, math.inf, []
        self.batch = 0  # batches of epoch `self.epoch` done (a run saved mid-epoch)
        # A continued run's starting weights scored on its own analyses (`continuing`).
        self.start_validation: dict[str, Any] | None = None

    @classmethod
    def continuing(
        cls,
        checkpoint: Path,
        out: Path,
        device: torch.device,
        analyses: Path | None = None,
        quiet: bool = False,
    ) -> Trainer:
        """A run that finishes the schedule `checkpoint` stopped short of (`finished` is not
        true in its metadata), into `out`, with the checkpoint's own config, seed and kind.

        It starts from the checkpoint's weights at the epoch and step they were saved at (its
        best epoch; any later epochs are run again). Those weights are validated first on
        `analyses`, and later epochs must beat that score (`start_validation` in the metadata)
        rather than the recorded one: a truth run on other hardware follows another trajectory
        of the same world, whose validation year scores differently. The optimizer's moments
        were not kept, so AdamW starts them afresh, and the learning rate warms up again over
        `training.warmup_steps` from the schedule's value at that step. `analyses` (default:
        the config's) must be the data it was trained on (`check_training_data`). The run's
        identity records what it continues, so `out` resumes like any other run.
        """
        metadata = read_metadata(checkpoint)
        training = metadata.get("training", {})
        if training.get("finished"):
            raise CheckpointError(f"{checkpoint}: finished its schedule; nothing to continue")
        if not {"config", "seed", "epoch", "step"} <= training.keys():
            raise CheckpointError(
                f"{checkpoint}: records no training config, seed, epoch and step to continue from"
            )
        try:
            config = ExperimentConfig.model_validate(yaml.safe_load(training["config"]))
        except (yaml.YAMLError, pydantic.ValidationError) as exc:
            first_line = str(exc).strip().splitlines()[0]
            raise CheckpointError(
                f"{checkpoint}: its training config is invalid ({first_line})"
            ) from None
        store = analyses or config.analyses
        if store is None:
            raise CheckpointError(f"{checkpoint}: its config names no analyses; pass them")
        trainer = cls(
            config,
            config.model_dump(mode="json"),
            Path(store),
            training["seed"],
            out,
            device,
            quiet,
            init_from=checkpoint,
            model=training.get("model", DEFAULT_KIND),
        )
        trainer.continue_schedule(checkpoint, metadata, Path(store))
        return trainer

    def continue_schedule(self, checkpoint: Path, metadata: dict[str, Any], store: Path) -> None:
        """Take the counters, history and identity of `checkpoint` (see `continuing`)."""
        self.check_training_data(checkpoint, store)
        training = metadata["training"]
        self.identity.pop("init_weights_sha256")
        if "init_weights_sha256" in training:
            self.identity["init_weights_sha256"] = training["init_weights_sha256"]
        self.identity["continues"] = {
            "weights_sha256": metadata["weights_sha256"],
            "step": training["step"],
        }
        self.epoch, self.step = training["epoch"], training["step"]
        self.history = [e for e in training.get("history", []) if e["epoch"] < self.epoch]

    def start_from(self, checkpoint: Path, loaded: Any) -> None:
        """Fine-tune: begin with the weights (and normalisation) of `checkpoint`, `loaded`,
        in the network the emulator's `starting_network` names (its `network`; a residual
        diffusion model's frozen mean), which must be the one this config builds: every
        section of the two architectures that both have is the same (such as `sfno`). A kind
        may start from a checkpoint of a kind in its `starts_from` that lacks some of its
        layers (an FGN or VAE from an SFNO: its noise layers start at zero). Its weights'
        sha256 becomes part of the run's identity."""
        network, ours = self.emulator.starting_network()
        theirs = loaded.architecture()
        if (key := differing_section(ours, theirs)) is not None:
            raise CheckpointError(
                f"{checkpoint}: its network ({theirs[key]}) is not the config's {key}"
            )
        try:
            missing, unexpected = network.load_state_dict(loaded.network.state_dict(), strict=False)
        except RuntimeError:  # shapes differ (a diffusion denoiser has more input channels)
            missing, unexpected = [], ["(shapes differ)"]
        if unexpected or (missing and loaded.kind not in self.kind.starts_from):
            raise CheckpointError(
                f"{checkpoint}: a checkpoint of kind {loaded.kind} cannot start one of kind"
                f" {self.emulator.kind}"
            )
        self.identity["init_weights_sha256"] = loaded.metadata["weights_sha256"]

    def check_training_data(self, checkpoint: Path, store: Path) -> None:
        """Refuse analyses that are not what `checkpoint` was trained on: they must come from
        its truth world (the store's recorded config has the checkpoint's `seed` and `truth`;
        a truth run elsewhere can follow another trajectory of the same chaotic world), or
        their training years must give its normalisation statistics."""
        dataset = open_analyses(store)
        written_by = yaml.safe_load(dataset.attrs.get("wxens_config") or "{}") or {}
        ours = self.config.model_dump(mode="json")
        if all(written_by.get(key) == ours[key] for key in ("seed", "truth")):
            return
        years = (self.config.periods.train.first, self.config.periods.train.last)
        statistics = compute_normalisation(dataset, self.config.variables, years).to_dict()
        theirs = self.emulator.stats.to_dict()  # the checkpoint's, as `init_from` loads them
        if not np.allclose(flat_values(statistics), flat_values(theirs), rtol=1e-9, atol=0):
            raise CheckpointError(
                f"{store}: not the data {checkpoint} was trained on (written by another truth"
                f" run, with other normalisation statistics of {years[0]}-{years[1]})"
            )

    # --- the schedule ---------------------------------------------------------------------

    def rollout_steps(self, epoch: int) -> int:
        """Rollout length of `epoch`: the schedule's entry at the latest epoch <= `epoch`."""
        started = [start for start in self.settings.rollout_schedule if start <= epoch]
        return self.settings.rollout_schedule[max(started)] if started else 1

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The window starts of `epoch`, in an order seeded by `(seed, epoch)` alone."""
        size = self.train.count(self.rollout_steps(epoch))
        rng = np.random.default_rng([self.seed, epoch])
        count = min(size, self.settings.samples_per_epoch or size)
        return rng.permutation(size)[:count]

    def total_steps(self) -> int:
        return sum(
            math.ceil(len(self.epoch_order(e)) / self.settings.batch_size)
            for e in range(self.settings.epochs)
        )

    # --- training -------------------------------------------------------------------------

    def run(self, max_epochs: int | None = None, save_minutes: float = 10.0) -> dict[str, Any]:
        """Train (resuming from `out/last` when it is there) and return the summary, with
        `finished` false if `max_epochs` epochs of this call stopped it before the end.

        The state also goes to `out/last` every `save_minutes` within an epoch, so that a run
        stopped mid-epoch loses at most that much work; a run resumed mid-epoch goes on with the
        same batches and noise, and ends with the same weights."""
        self.resume()
        if "continues" in self.identity and not (self.out / LAST / STATE).is_file():
            self.start_validation = self.validation_metrics()
            self.best = self.start_validation["score"]
            self.save_best(self.start_validation)  # `out` holds a checkpoint from the start
            self.save_last()
        end, total = self.settings.epochs, self.total_steps()
        if max_epochs is not None:
            end = min(end, self.epoch + max_epochs)
        for epoch in range(self.epoch, end):
            self.train_epoch(epoch, total, save_minutes)
            metrics = self.validation_metrics()
            self.history.append({"epoch": epoch, "step": self.step, **metrics})
            self.epoch, self.batch = epoch + 1, 0
            if metrics["score"] < self.best:
                self.best = metrics["score"]
                self.save_best(metrics)
            self.save_last()
        finished = self.epoch >= self.settings.epochs
        if finished:
            self.mark_finished()
        summary = {"out": str(self.out), "best_score": self.best, "finished": finished}
        return {**summary, "history": self.history}

    def validation_metrics(self) -> dict[str, Any]:
        """The current weights' score on the validation years (`validate`)."""
        self.emulator.eval()
        return validate(
            self.emulator,
            self.validation,
            self.settings.validation_inits,
            self.settings.batch_size,
            self.settings.validation_lead_steps,
        )

    def train_epoch(self, epoch: int, total: int, save_minutes: float) -> None:
        """The batches of `epoch` from `self.batch` on (of `total` steps in the schedule),
        saving to `out/last` every `save_minutes` of wall time."""
        steps = self.rollout_steps(epoch)
        order = batches(self.epoch_order(epoch), self.settings.batch_size)
        label = f"epoch {epoch + 1}/{self.settings.epochs} ({steps}-step)"
        self.emulator.train()
        saved = time.monotonic()
        with progress_bar(len(order), label, self.quiet) as advance:
            advance(self.batch)
            for chunk in order[self.batch :]:
                loss = self.train_step(chunk, steps, total)
                self.batch += 1
                advance(status=f"loss {loss:.4f}")
                if self.batch < len(order) and time.monotonic() - saved >= 60 * save_minutes:
                    self.save_last()
                    saved = time.monotonic()

    def learning_rate(self, step: int, total: int) -> float:
        """The schedule's rate at `step`; a continued run's is multiplied by
        `min(1, (step - s0 + 1) / warmup)` from the step `s0` it continues at, a second warm-up,
        since its optimizer moments start afresh."""
        warmup = self.settings.warmup_steps
        factor = learning_rate_factor(step, warmup, total)
        if "continues" in self.identity:
            factor *= min(1.0, (step - self.identity["continues"]["step"] + 1) / max(1, warmup))
        return self.settings.learning_rate * factor

    def train_step(self, starts: np.ndarray, steps: int, total: int) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step, total)
        inputs, targets = self.train.windows(starts, steps)
        noise = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, self.step]).generate_state(1)[0])
        )
        weights = self.train.area_weights
        errors = self.kind.loss(self.emulator, inputs, targets, weights, self.settings, noise)
        loss = errors.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.emulator.network.parameters(), 1.0)
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    # --- checkpoints and resume -----------------------------------------------------------

    def save_best(self, metrics: dict[str, Any]) -> None:
        save_checkpoint(
            self.emulator,
            self.out,
            training={
                **self.identity,
                "epoch": self.epoch,
                "step": self.step,
                "device": str(self.device),
                "threads": torch.get_num_threads(),
                "history": self.history,  # so far: a run cut short can be continued from it
                **self.start_record(),
            },
            training_data=self.description,
            validation=metrics,
        )

    def start_record(self) -> dict[str, Any]:
        """`start_validation` for a continued run's metadata and state; nothing otherwise."""
        return {} if self.start_validation is None else {"start_validation": self.start_validation}

    def mark_finished(self) -> None:
        """Record in the best checkpoint's metadata that the run is over, with its history."""
        metadata = read_metadata(self.out)
        metadata["training"].update(finished=True, history=self.history)
        save_json(metadata, self.out / METADATA)

    def save_last(self) -> None:
        """Weights, optimizer moments and counters. The tensor files are named by their content
        and the state JSON, replaced atomically, goes last and names them; the files of the
        previous save are removed only after it. A run killed at any point of a save resumes
        from the previous complete one."""
        last = self.out / LAST
        last.mkdir(parents=True, exist_ok=True)
        state = self.optimizer.state_dict()
        moments = {
            f"{index}.{name}": value
            for index, entry in state["state"].items()
            for name, value in entry.items()
        }
        files = {
            "weights": content_named(self.emulator.weights(), last, "model"),
            "optimizer": content_named(moments, last, "optimizer"),
        }
        save_json(
            {
                **self.identity,
                "epoch": self.epoch,
                "batch": self.batch,
                "step": self.step,
                "best": self.best,
                "history": self.history,
                **self.start_record(),
                "param_groups": state["param_groups"],
                **{f"{part}_file": name for part, (name, _) in files.items()},
                **{f"{part}_sha256": digest for part, (_, digest) in files.items()},
            },
            last / STATE,
        )
        kept = {name for name, _ in files.values()}
        for stale in last.glob("*.safetensors"):
            if stale.name not in kept:
                stale.unlink()

    def check_identity(self, saved: dict[str, Any]) -> None:
        for key, value in self.identity.items():
            if saved.get(key) != value:
                raise CheckpointError(
                    f"{self.out}: holds a run with another {key.replace('_', ' ')};"
                    " choose another output folder"
                )

    def resume(self) -> None:
        """Continue from `out/last` if an earlier run with the same identity left it there;
        do nothing more if `out` holds the finished checkpoint of that run."""
        last = self.out / LAST
        if (self.out / METADATA).is_file():
            metadata = read_metadata(self.out)
            training = metadata.get("training", {})
            if training.get("finished"):
                self.check_identity(training)
                self.epoch, self.history = self.settings.epochs, training["history"]
                self.best = metadata["validation"]["score"]
                return
        if not (last / STATE).is_file():
            if (self.out / METADATA).exists():
                raise CheckpointError(f"{self.out}: holds a checkpoint but no {LAST}/{STATE}")
            return
        saved = json.loads((last / STATE).read_text())
        self.check_identity(saved)
        # A state saved before its files were named by content names the fixed ones.
        files = {
            part: last / saved.get(f"{part}_file", name)
            for part, name in (("weights", WEIGHTS), ("optimizer", OPTIMIZER))
        }
        for part, file in files.items():
            if not file.is_file() or sha256_file(file) != saved[f"{part}_sha256"]:
                raise CheckpointError(f"{file}: missing or corrupt (sha256 differs from {STATE})")
        self.emulator.load_weights(safetensors.torch.load_file(str(files["weights"])))
        moments = safetensors.torch.load_file(str(files["optimizer"]))
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in moments.items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
        self.epoch, self.batch, self.step = saved["epoch"], saved.get("batch", 0), saved["step"]
        self.best, self.history = saved["best"], saved["history"]
        self.start_validation = saved.get("start_validation")
