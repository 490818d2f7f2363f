"""Loss functions of the emulators, in torch (differentiable): the area-weighted MSE, the
adjusted MSE (AMSE) and the fair CRPS, each per channel in units of a scale (the 6 h tendency
std), and the deterministic rollout loss of an SFNO-like emulator (`rollout_errors`).

Each member kind names its training loss and validation terms in its registry entry
(`models.kinds.EmulatorKind`); these are their building blocks.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from wxens.data_pipeline.sphere import order_weights

if TYPE_CHECKING:
    from wxens.data_pipeline.config import TrainingConfig
    from wxens.models.sfno import SFNOEmulator


def weighted_mse(
    prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Per-channel area-weighted MSE in units of `scale`, shape `(channel,)`: the batch mean
    of `sum_ij w_ij ((prediction - target) / scale)^2`."""
    squared = ((prediction - target) / scale) ** 2
    return (squared * weights).sum(dim=(-2, -1)).mean(dim=0)


def adjusted_mse(
    prediction: torch.Tensor, target: torch.Tensor, emulator: SFNOEmulator
) -> torch.Tensor:
    """Per-channel AMSE in units of the tendency std, shape `(channel,)`, the batch mean of

        AMSE = (1 / 4 pi) sum_l [ (sqrt(P_x) - sqrt(P_y))^2
                                  + 2 max(P_x, P_y) (1 - C_xy / sqrt(P_x P_y)) ]

    with `P_x(l) = sum_m w_m |x_lm|^2`, `C_xy(l) = sum_m w_m Re(x_lm conj(y_lm))` from the
    orthonormal SHT of prediction `x` and target `y` (`w_m` = 2 for m > 0). The MSE is the same
    sum with `sqrt(P_x P_y)` in place of `max(P_x, P_y)`, so a forecast can lower its MSE by
    damping the scales it cannot predict (the "double penalty" that blurs emulators trained on
    rollouts); under AMSE it cannot. Subich, Rodriguez and Chaudhari (2025), "Fixing the double
    penalty in data-driven weather forecasting through a modified spherical harmonic loss
    function", arXiv:2501.19374. Written here because no library we use provides it.
    """
    scale = emulator.tendency_std
    x = emulator.transforms.to_spectral(prediction / scale)
    y = emulator.transforms.to_spectral(target / scale)
    weight = order_weights(x)
    power_x = (x.abs() ** 2 * weight).sum(dim=-1)
    power_y = (y.abs() ** 2 * weight).sum(dim=-1)
    cross = ((x * y.conj()).real * weight).sum(dim=-1)
    tiny = 1e-12 * (power_x + power_y).detach().mean()
    amplitude = ((power_x + tiny).sqrt() - (power_y + tiny).sqrt()) ** 2
    coherence = cross / (power_x * power_y + tiny**2).sqrt()
    decorrelation = 2 * torch.maximum(power_x, power_y) * (1 - coherence)
    return (amplitude + decorrelation).sum(dim=-1).mean(dim=0) / (4 * math.pi)


def fair_crps(
    samples: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Per-channel area-weighted fair CRPS in units of `scale`, shape `(channel,)`: the batch
    mean of `sum_ij w_ij CRPS_ij` for K samples `(K, batch, channel, lat, lon)`, where

        CRPS = (1 / K) sum_k |x_k - y| - 1 / (2 K (K - 1)) sum_k sum_l |x_k - x_l|

    (Ferro 2014; `verification.metrics.crps_ensemble`'s fair form, here in torch so that it is
    differentiable). Its expectation is minimised by samples from the true distribution."""
    x, y = samples / scale, target / scale
    k = len(x)
    skill = (x - y).abs().mean(dim=0)
    pairs = sum((x[i] - x[j]).abs() for i in range(k) for j in range(i + 1, k))
    crps = skill - pairs / (k * (k - 1))
    return (crps * weights).sum(dim=(-2, -1)).mean(dim=0)


def rollout_errors(
    emulator: SFNOEmulator,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    loss: str = "mse",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Normalised errors `(step, channel)` of a deterministic rollout (`emulator(state)`, the
    differentiable step) from `inputs` against `targets` `(batch, step, channel, lat, lon)`:
    the area-weighted MSE, or with `loss="amse"` the `adjusted_mse`. `generator` is unused
    (the emulator draws no noise)."""
    state, errors = inputs, []
    for k in range(targets.shape[1]):
        state = emulator(state)
        if loss == "amse":
            errors.append(adjusted_mse(state, targets[:, k], emulator))
        else:
            errors.append(weighted_mse(state, targets[:, k], weights, emulator.tendency_std))
    return torch.stack(errors)


def rollout_loss(
    emulator: SFNOEmulator,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    training: TrainingConfig,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """A deterministic kind's training loss terms: `rollout_errors` with `training.loss`."""
    return rollout_errors(emulator, inputs, targets, weights, training.loss, generator)


def rollout_validation(
    emulator: SFNOEmulator,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """A deterministic kind's validation terms: the MSE `rollout_errors`, nothing else."""
    return rollout_errors(emulator, inputs, targets, weights, "mse", generator), {}
