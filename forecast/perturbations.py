"""Initial-condition and model perturbations of the ensemble generator.

A `Perturbation` turns one analysis `(channel, lat, lon)` (physical fields, channels in the
emulator's `input_variables` order) into the initial states `(member, channel, lat, lon)` of
the members `member_ids`. Member k draws its noise only from `generator_for(k)`, a generator
seeded by `(base_seed, init_time, k)` (`member_generator`), and the perturbations loop over
members (or bred vectors) rather than drawing one batch for all, so a member's initial state is
bitwise the same whatever batch it is computed in, alone or among a thousand.

The random fields are drawn on the CPU (`data_pipeline.sphere.gaussian_random_field` draws
there), so `generator_for` must give CPU generators; the fields then move to the analysis'
device, and a member's noise is the same on a CPU and on a GPU.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np
import torch
from wxens.data_pipeline.config import PerturbationConfig
from wxens.data_pipeline.sphere import LatLonGrid, gaussian_random_field, synthesis
from wxens.data_pipeline.training_data import NormalisationStats, area_weights
from wxens.models.emulator import Emulator
from wxens.models.sfno import SFNOEmulator

GeneratorFor = Callable[[int], torch.Generator]
MemberIds = Sequence[int] | np.ndarray | torch.Tensor


class Perturbation(Protocol):
    """`(initial_state, member_ids, generator_for) -> perturbed_states` (see the module)."""

    def __call__(
        self, initial_state: torch.Tensor, member_ids: MemberIds, generator_for: GeneratorFor
    ) -> torch.Tensor: ...


def member_generator(
    base_seed: int,
    init_time: np.datetime64,
    member: int,
    device: torch.device | str = "cpu",
    stream: str = "",
) -> torch.Generator:
    """A generator for member `member` of the forecast from `init_time`.

    Its seed is the first 8 bytes (little-endian, an unsigned 64-bit integer) of the sha256 of
    the text `"{base_seed}/{s}/{member}"`, `s` the init time in whole seconds since 1970, so it
    depends on those three numbers alone (not on the unit `init_time` is written in). A named
    `stream` (text `"{base_seed}/{s}/{member}/{stream}"`) gives an independent generator for
    another use, such as the weight noise, so adding one kind of noise never shifts another.
    """
    seconds = int(np.datetime64(init_time, "s").astype(np.int64))
    text = f"{base_seed}/{seconds}/{member}" + (f"/{stream}" if stream else "")
    digest = hashlib.sha256(text.encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little"))


def member_list(member_ids: MemberIds) -> list[int]:
    """The member numbers as Python ints; a one-line ValueError unless a non-empty 1-D
    sequence of integers >= 0."""
    ids = (
        member_ids.cpu().numpy() if isinstance(member_ids, torch.Tensor) else np.asarray(member_ids)
    )
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"member_ids must be a non-empty 1-D sequence, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"member_ids must be integers, got {ids.dtype}")
    if ids.min() < 0:
        raise ValueError(f"member numbers must be >= 0, got {int(ids.min())}")
    return [int(k) for k in ids]


def check_state(initial_state: torch.Tensor, channels: int) -> None:
    """Refuse an analysis that is not `(channel, lat, lon)` with `channels` channels."""
    if initial_state.ndim != 3 or initial_state.shape[0] != channels:
        raise ValueError(
            f"initial_state must be (channel={channels}, lat, lon),"
            f" got {tuple(initial_state.shape)}"
        )


def unperturbed(
    initial_state: torch.Tensor, member_ids: MemberIds, generator_for: GeneratorFor
) -> torch.Tensor:
    """Every member starts from the analysis itself (`perturbation.initial: none`)."""
    members = member_list(member_ids)
    return initial_state.expand(len(members), *initial_state.shape).clone()


class GaussianRandomFieldPerturbation:
    """Analysis plus spatially correlated Gaussian noise. Member k starts from

        x_k = x_a + a_c f_kc        (units of variable c)

    with `a_c` the amplitude of channel c and `f_kc` independent random fields (one per
    channel, all from `generator_for(k)`) of zero global mean, correlated over a Gaussian width
    L, of degree <= T and each normalised to area-mean variance 1 (`gaussian_random_field`):
    every draw's area-mean variance is exactly `a_c^2`, and the field is isotropic (the same
    variance at every point, on average over draws). `from_stats` takes `a_c` as a fraction of
    each variable's anomaly std.
    """

    def __init__(
        self, grid: LatLonGrid, truncation: int, amplitude: Sequence[float], length_scale_m: float
    ):
        self.grid = grid
        self.truncation = truncation
        self.amplitude = torch.tensor(amplitude, dtype=torch.float64)[:, None, None]
        self.length_scale_m = length_scale_m

    @classmethod
    def from_stats(
        cls,
        grid: LatLonGrid,
        truncation: int,
        stats: NormalisationStats,
        variables: Sequence[str],
        fraction: float,
        length_scale_m: float,
    ) -> GaussianRandomFieldPerturbation:
        """Amplitudes `a_c = fraction x anomaly_std_c` (the std about the zonal-mean jet)."""
        amplitude = [fraction * stats.variables[name].anomaly_std for name in variables]
        return cls(grid, truncation, amplitude, length_scale_m)

    def field(self, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        """One draw `a_c f_c`, `(channel, lat, lon)`, in the dtype and on the device of `like`."""
        channels = self.amplitude.shape[0]
        coeffs = gaussian_random_field((channels,), self.truncation, self.length_scale_m, generator)
        values = synthesis(self.grid, self.truncation).cpu()(coeffs) * self.amplitude
        return values.to(device=like.device, dtype=like.dtype)

    def __call__(
        self, initial_state: torch.Tensor, member_ids: MemberIds, generator_for: GeneratorFor
    ) -> torch.Tensor:
        members = member_list(member_ids)
        check_state(initial_state, self.amplitude.shape[0])
        return torch.stack(
            [initial_state + self.field(generator_for(k), initial_state) for k in members]
        )


def hemisphere_masks(latitude: np.ndarray) -> torch.Tensor:
    """`(2, lat, 1)` booleans: north (latitude >= 0, so an equator row is northern), south."""
    north = torch.as_tensor(np.asarray(latitude) >= 0)[:, None]
    return torch.stack([north, ~north])


def hemispheric_rms(field: torch.Tensor, latitude: np.ndarray, weights: np.ndarray) -> torch.Tensor:
    """Area-weighted RMS of `(..., lat, lon)` over each hemisphere, `(..., 2)` (north, south):

        rms_H = sqrt( sum_{i in H} sum_j w_ij x_ij^2 / sum_{i in H} sum_j w_ij )

    in the units of `field`, with `w_ij` cell-area weights (`area_weights`) and the hemispheres
    of `hemisphere_masks`; computed in float64.
    """
    masks = hemisphere_masks(latitude).to(field.device)
    hemisphere_weights = torch.as_tensor(weights, device=field.device) * masks
    squares = field.double()[..., None, :, :] ** 2 * hemisphere_weights
    return (squares.sum(dim=(-2, -1)) / hemisphere_weights.sum(dim=(-2, -1))).sqrt()


class BredVectorPerturbation:
    """Centred pairs of bred vectors (the Huge Ensembles recipe, DESIGN.md).

    Bred vector j is grown with `generator_for(j)`:

        dx_0 = a_c f_c                              (a draw of the `seed` random field)
        dx_n = R[ M(x_a + dx_{n-1}) - M(x_a) ]      n = 1 .. N cycles

    with `M` one emulator step (6 h; the control and the perturbed states of all the vectors a
    call needs stepped as one batch, without a generator: breeding runs the emulator as a
    deterministic model) and `R` the hemispheric rescaling of each variable c:

        R(dx)_cij = dx_cij x target_c / rms_cH(dx)   for row i in hemisphere H,
        target_c  = fraction x RMSE_48h(c)           (units of variable c),

    `rms_cH` from `hemispheric_rms` (northern hemisphere latitude >= 0, southern < 0), so after
    each cycle both hemispheres of every variable have area-weighted RMS `target_c` exactly
    (the scale factor jumps at the equator). Members 2j and 2j+1 start from `x_a + dx_j` and
    `x_a - dx_j`: each pair is centred on the analysis, and member 2j+1 alone grows the same
    dx_j as its partner (bitwise, when the emulator's numbers per state do not depend on the
    batch: `models.emulator.FixedBatchEmulator`).

    Simplification: there is no assimilation cycle to breed along, so every cycle restarts from
    the analysis x_a itself (the control is x_a each time). The bred vector is then a
    finite-amplitude power iteration of the 6 h propagator around x_a (the perturbation that
    grows fastest there) rather than one bred along the trajectory of the preceding N x 6 h.
    """

    def __init__(
        self,
        emulator: Emulator,
        seed: GaussianRandomFieldPerturbation,
        rmse_48h: Mapping[str, float],
        fraction: float = 0.35,
        cycles: int = 4,
    ):
        missing = [name for name in emulator.input_variables if name not in rmse_48h]
        if missing:
            raise ValueError(f"rmse_48h lacks the variables {missing}")
        if cycles < 1:
            raise ValueError(f"bred vectors need at least one cycle, got {cycles}")
        self.emulator = emulator
        self.seed = seed
        self.cycles = cycles
        target = [fraction * float(rmse_48h[name]) for name in emulator.input_variables]
        self.target = torch.tensor(target, dtype=torch.float64)
        self.latitude = emulator.grid.latitude
        self.weights = area_weights(emulator.grid.latitude, emulator.grid.longitude)

    def rescale(self, dx: torch.Tensor) -> torch.Tensor:
        """`R(dx)`: each hemisphere of each channel of `(..., channel, lat, lon)` to RMS
        `target`."""
        rms = hemispheric_rms(dx, self.latitude, self.weights)
        factor = self.target.to(dx.device)[:, None] / rms.clamp_min(torch.finfo(rms.dtype).tiny)
        masks = hemisphere_masks(self.latitude).to(dx.device)
        scale = (factor[..., None, None] * masks).sum(dim=-3)  # (..., channel, lat, 1)
        return (dx.double() * scale).to(dx.dtype)

    def bred_vectors(
        self, analysis: torch.Tensor, generators: Sequence[torch.Generator]
    ) -> torch.Tensor:
        """`dx_N` `(vector, channel, lat, lon)` grown from `analysis` `(channel, lat, lon)`,
        vector j seeded from `generators[j]`."""
        dx = torch.stack([self.seed.field(generator, analysis) for generator in generators])
        for _ in range(self.cycles):
            stepped = self.emulator.step(torch.cat([analysis[None], analysis + dx]))
            dx = self.rescale(stepped[1:] - stepped[:1])
        return dx

    def __call__(
        self, initial_state: torch.Tensor, member_ids: MemberIds, generator_for: GeneratorFor
    ) -> torch.Tensor:
        members = member_list(member_ids)
        check_state(initial_state, len(self.emulator.input_variables))
        pairs = sorted({k // 2 for k in members})
        grown = self.bred_vectors(initial_state, [generator_for(j) for j in pairs])
        vectors = dict(zip(pairs, grown, strict=True))
        return torch.stack(
            [
                initial_state - vectors[k // 2] if k % 2 else initial_state + vectors[k // 2]
                for k in members
            ]
        )


CHECKPOINT_GROUP = 4
"""Consecutive members on one checkpoint by default: two bred pairs, half a forward pass of
8. Each checkpoint's share of a task is then a multiple of 4 but for its last group, so a
pass of 8 wastes at most 4 slots a checkpoint: 100 members on 4 checkpoints fill 13 passes
(104 slots, 3.8 % padding) where pairs need 14 (10.7 %) and single members 16 (21.9 %). Any
ensemble of 4N members or more puts members on all N checkpoints."""


def assign_checkpoints(
    member_ids: MemberIds,
    checkpoints: int | Sequence[int],
    group_size: int = 1,
    shares: Sequence[int] = (1,),
) -> np.ndarray:
    """The checkpoint index of each member, as an int array; it depends on k alone.

    Member k belongs to group G = k // g (g = `group_size` consecutive members). With one kind
    (`checkpoints` a count N, or N zeros), group G runs on checkpoint G mod N. With several,
    `checkpoints[c]` is checkpoint c's kind, an index into `shares`: group G falls to kind i
    when G mod S (S = sum of the shares) lies in kind i's block [O_i, O_i + share_i) of the
    cycle, and is that kind's j-th group, j = (G // S) share_i + (G mod S) - O_i, which runs
    on the kind's checkpoint j mod N_i (its checkpoints in the order given).

    Members are spread evenly: any run of whole cycles gives each kind its share, and any run
    of one kind's groups puts as many on each of its checkpoints as it can (the counts differ
    by at most one). With bred vectors g is even, so both members of a pair, analysis +/- dx,
    run on the checkpoint that bred dx and each pair stays centred for its own model.
    """
    kinds = np.zeros(checkpoints, int) if isinstance(checkpoints, int) else np.asarray(checkpoints)
    shares = np.asarray(shares)
    if kinds.size < 1 or group_size < 1 or shares.min() < 1:
        raise ValueError(
            f"need a checkpoint, group_size >= 1 and shares >= 1, got {kinds.size},"
            f" {group_size}, {shares.tolist()}"
        )
    if kinds.min() < 0 or kinds.max() >= len(shares):
        raise ValueError(f"checkpoint kinds {kinds.tolist()} must index the {len(shares)} shares")
    unused = sorted(set(range(len(shares))) - set(kinds.tolist()))
    if unused:
        raise ValueError(f"no checkpoint of kind {unused[0]}, which has a share of the members")
    group = np.asarray(member_list(member_ids), dtype=np.int64) // group_size
    offsets = np.cumsum(shares) - shares
    position = group % shares.sum()
    kind = np.searchsorted(offsets, position, side="right") - 1
    within = group // shares.sum() * shares[kind] + position - offsets[kind]
    of_kind = [np.flatnonzero(kinds == i) for i in range(len(shares))]
    return np.array([of_kind[i][j % len(of_kind[i])] for i, j in zip(kind, within, strict=True)])


class ParameterPerturbation:
    """Multiplicative Gaussian noise on the network weights of an SFNO member:

        w'_i = w_i (1 + sigma eps_i),   eps_i ~ N(0, 1) independent,

    with `eps` drawn from the member's generator, parameter by parameter in the network's
    `parameters()` order (one real eps per entry; a complex spectral weight is scaled as a
    whole). Every weight's relative change then has std `sigma` (dimensionless); zero weights
    stay zero and the normalisation buffers are untouched. `sigma = 0` returns the emulator
    itself, unperturbed; otherwise a perturbed deep copy, the original left as it was.
    """

    def __init__(self, sigma: float):
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"parameter perturbation sigma must be >= 0, got {sigma}")
        self.sigma = sigma

    def __call__(self, emulator: SFNOEmulator, generator: torch.Generator) -> SFNOEmulator:
        if self.sigma == 0:
            return emulator
        perturbed = copy.deepcopy(emulator)
        with torch.no_grad():
            for parameter in perturbed.network.parameters():
                eps = torch.randn(
                    parameter.shape,
                    generator=generator,
                    dtype=parameter.real.dtype,
                    device=generator.device,
                )
                parameter.mul_(1 + self.sigma * eps.to(parameter.device))
        return perturbed


def initial_condition_perturbation(
    settings: PerturbationConfig,
    emulator: Emulator,
    truncation: int,
    stats: NormalisationStats,
    rmse_48h: Mapping[str, float] | None = None,
) -> Perturbation:
    """The config's `perturbation.initial` for `emulator`'s grid and variables (random fields
    of degree <= `truncation`); `bred_vector` needs the emulator's 48 h RMSE per variable."""
    random_field = GaussianRandomFieldPerturbation.from_stats(
        emulator.grid,
        truncation,
        stats,
        emulator.input_variables,
        settings.random_field_fraction,
        settings.length_scale_km * 1e3,
    )
    if settings.initial == "none":
        return unperturbed
    if settings.initial == "random_field":
        return random_field
    if rmse_48h is None:
        raise ValueError("perturbation.initial bred_vector needs the emulator's 48 h RMSE")
    return BredVectorPerturbation(
        emulator, random_field, rmse_48h, settings.bred_fraction, settings.bred_cycles
    )
