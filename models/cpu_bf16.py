"""A torch-harmonics SFNO as matrix products in a token layout, for the CPU: bfloat16
inference on its matrix units (`sfno.precision: bf16-cpu`) and float32 training.

`matmul_network(network)` returns a copy of the network whose spectral convolutions and MLPs
run as bfloat16 matrix products (float32 accumulation) in a token layout `(lon, lat, batch,
channel)`, so that oneDNN takes every operand without a copy but for the spectral
coefficients' reorder from orders to degrees and back around the channel mixing:

    X = F x                      real DFT in longitude, (2M x W) @ (W x lat.batch.channel)
    Y_m = P_m X_m                Legendre analysis per order m, (L x K) @ (K x batch.channel)
    Z_l = Y_l W_l                the spectral convolution per degree l, complex as real blocks
                                 [Re Z, Im Z] = [Re Y, Im Y] @ [[Re W, Im W], [-Im W, Re W]]
    G_m = Q_m Z_m                Legendre synthesis per order m, (K x L) @ (L x batch.channel)
    x' = F^-1 G                  inverse real DFT, (W x 2M) @ (2M x lat.batch.channel)
    MLP: gelu(x' W1^T + b1) W2^T on the tokens

with `P_m` torch-harmonics' quadrature-weighted Legendre functions (`RealSHT.weights`), `Q_m`
its synthesis functions (`InverseRealSHT.pct`) and `F` the DFT that `torch.fft.rfft(norm=
"forward")` computes, truncated at the network's order M. In float32 the same steps equal
torch-harmonics' to 1e-6 (tests/test_cpu_bf16.py). The encoder's and decoder's 1x1
convolutions run as float32 products on the same tokens; skips and normalisation layers stay
as they are, in float32.

`training_network(network)` is the same in float32 with the network's own parameters, for
training on the CPU: autograd takes the products back as products, where torch-harmonics'
layout sends each 1x1 convolution's backward through torch's slow path.

Written here rather than taken from torch-harmonics: its transforms build complex tensors
with `torch.complex`, which has no bfloat16 kernel on the CPU (so `torch.autocast` cannot run
them), and its `(batch, channel, lat, lon)` layout makes every 1x1 convolution and Legendre
step copy its operands; an FFT has no bfloat16 kernel on the CPU either, hence the DFTs as
matrix products (143 MFLOP a forward pass of 8 members: less than the copies they replace).
"""

from __future__ import annotations

import copy
import functools
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch_harmonics.examples.models._layers import MLP, SpectralConvS2

BF16 = torch.bfloat16


@functools.cache
def cpu_has_bf16_matrix_units() -> bool:
    """Whether this CPU multiplies bfloat16 natively (`avx512_bf16` or `amx_bf16` in
    /proc/cpuinfo); elsewhere oneDNN emulates it, slower than float32."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def tokens(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The `(lon, lat, batch, channel)` tokens in `dtype` of a `(batch, channel, lat, lon)`
    tensor (no copy where it already has that memory layout, as this module's outputs do)."""
    return x.to(dtype).permute(3, 2, 0, 1).contiguous()


def as_grid(tokens: torch.Tensor) -> torch.Tensor:
    """The `(batch, channel, lat, lon)` view of `(lon, lat, batch, channel)` tokens."""
    return tokens.permute(2, 3, 1, 0)


def dft_matrices(nlon: int, mmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The real DFT in longitude as matrices, float64: the analysis `(2M, W)`, rows `Re X_m`
    then `Im X_m` of `X_m = (1/W) sum_w x_w exp(-2 pi i m w / W)` (`rfft(norm="forward")`),
    and the synthesis `(W, 2M)`, `x_w = sum_m c_m (Re X_m cos - Im X_m sin)(2 pi m w / W)` with
    `c_m` 1 at m = 0 and the Nyquist order, else 2, the imaginary parts of those two ignored
    (as `irfft` does); orders above the Nyquist order are zero."""
    m = torch.arange(mmax, dtype=torch.float64)[:, None]
    angle = 2 * math.pi * m * torch.arange(nlon, dtype=torch.float64) / nlon
    kept, real_only = 2 * m <= nlon, (m == 0) | (2 * m == nlon)
    weight = torch.where(real_only, 1.0, 2.0) * kept
    analysis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * kept.repeat(2, 1)
    synthesis = torch.cat([weight * torch.cos(angle), -weight * ~real_only * torch.sin(angle)])
    return analysis / nlon, synthesis.T.contiguous()


def real_blocks(weight: torch.Tensor) -> torch.Tensor:
    """torch-harmonics' complex spectral weights `W` `(out, in, L)` as real blocks `B_l`
    `(L, 2 in, 2 out)`, rows (real, imaginary part) x in, columns `Re Z`, then `Im Z`, so
    that `[Re Z_l, Im Z_l] = [Re Y_l, Im Y_l] B_l` is `Z_l = Y_l W_l`:
    `B_l = [[Re W_l, Im W_l], [-Im W_l, Re W_l]]`."""
    weight = weight.permute(2, 1, 0)  # (L, in, out)
    real, imag = weight.real, weight.imag
    return torch.cat([torch.cat([real, imag], 2), torch.cat([-imag, real], 2)], 1)


def hold(
    module: torch.nn.Module,
    name: str,
    tensor: torch.Tensor | None,
    dtype: torch.dtype,
    shared: bool,
) -> None:
    """Put a layer's weight `tensor` on `module` as `name`: the parameter itself where
    `shared` (a training view: gradients reach the original layer), else a detached buffer
    in `dtype` (an inference copy)."""
    if shared:
        setattr(module, name, tensor)
    else:
        value = tensor.detach().to(dtype) if tensor is not None else None
        module.register_buffer(name, value, persistent=False)


class MatmulSpectralConv(torch.nn.Module):
    """torch-harmonics' `SpectralConvS2` (Driscoll-Healy weights, one per degree and channel
    pair, same grid in and out) as matrix products in `compute` precision; returns `(x', x)`
    as it does, `x'` in `output` precision. `shared`: its weights are the layer's own
    parameters (float32 training), else a copy."""

    def __init__(
        self,
        conv: SpectralConvS2,
        compute: torch.dtype = BF16,
        output: torch.dtype = BF16,
        shared: bool = False,
    ):
        super().__init__()
        analysis, synthesis = conv.forward_transform, conv.inverse_transform
        self.compute, self.output, self.shared = compute, output, shared
        forward_dft, inverse_dft = dft_matrices(analysis.nlon, analysis.mmax)
        buffers = {
            "forward_dft": forward_dft,  # (2M, W)
            "inverse_dft": inverse_dft,  # (W, 2M)
            "analysis": analysis.weights,  # (M, L, K)
            "synthesis": synthesis.pct,  # (M, K, L)
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.to(compute), persistent=False)
        if shared:
            self.weight = conv.weight  # (out, in, L) complex
        else:  # (L, 2 in, 2 out)
            self.register_buffer("blocks", real_blocks(conv.weight.detach()).to(compute), False)

    @staticmethod
    def supports(conv: torch.nn.Module) -> bool:
        """Whether `conv` is a spectral convolution this class computes (the same grid and
        truncation in and out)."""
        if type(conv) is not SpectralConvS2 or hasattr(conv, "bias"):
            return False
        analysis, synthesis = conv.forward_transform, conv.inverse_transform
        shape = ("nlat", "nlon", "lmax", "mmax")
        same = all(getattr(analysis, n) == getattr(synthesis, n) for n in shape)
        return conv.operator_type == "driscoll-healy" and same

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = tokens(x, self.compute)
        lon, lat, batch, channels = grid.shape
        orders, _, degrees = self.synthesis.shape
        blocks = real_blocks(self.weight) if self.shared else self.blocks
        out = blocks.shape[2] // 2
        # X = F x: (part, m, lat, batch.channel), then Y_m = P_m X_m: (part, m, l, batch.channel)
        spectral = (self.forward_dft @ grid.view(lon, -1)).view(2, orders, lat, -1)
        legendre = torch.matmul(self.analysis, spectral)
        # by degree, rows (m, batch), columns (part, channel): [Re Z, Im Z]_l = [Re Y, Im Y]_l B_l
        by_degree = legendre.view(2, orders, degrees, batch, channels).permute(2, 1, 3, 0, 4)
        mixed = torch.bmm(by_degree.reshape(degrees, orders * batch, 2 * channels), blocks)
        # G_m = Q_m Z_m per part, then x' = F^-1 G: (lon, lat, batch, out)
        by_order = mixed.view(degrees, orders, batch, 2, out).permute(3, 1, 0, 2, 4)
        synthesised = torch.matmul(self.synthesis, by_order.reshape(2, orders, degrees, -1))
        result = self.inverse_dft @ synthesised.view(2 * orders, -1)
        return as_grid(result.view(lon, lat, batch, out).to(self.output)), x


class MatmulMLP(torch.nn.Module):
    """torch-harmonics' `MLP` (1x1 convolution with bias, GELU, 1x1 convolution) as matrix
    products on the tokens in `compute` precision; float32 out. `shared`: its weights are
    the layer's own parameters (float32 training), else a copy."""

    def __init__(self, mlp: MLP, compute: torch.dtype = BF16, shared: bool = False):
        super().__init__()
        first, second = mlp.fwd[0], mlp.fwd[-1]
        self.compute = compute
        hold(self, "weight1", first.weight, compute, shared)  # (hidden, in, 1, 1)
        hold(self, "bias1", first.bias, compute, shared)
        hold(self, "weight2", second.weight, compute, shared)  # (out, hidden, 1, 1)

    @staticmethod
    def supports(mlp: torch.nn.Module) -> bool:
        """Whether `mlp` is an MLP this class computes (no dropout, output without bias)."""
        if type(mlp) is not MLP or len(mlp.fwd) != 3:
            return False
        first, activation, second = mlp.fwd
        return (
            first.bias is not None
            and second.bias is None
            and type(activation) is torch.nn.GELU
            and activation.approximate == "none"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.linear(tokens(x, self.compute), self.weight1[:, :, 0, 0], self.bias1)
        return as_grid(F.linear(F.gelu(hidden), self.weight2[:, :, 0, 0]).float())


class MatmulPointwise(torch.nn.Module):
    """A 1x1 `Conv2d` (the network's encoder or decoder) as a float32 matrix product on the
    tokens: its output keeps the token layout that the blocks read without a copy.
    `shared`: its weights are the layer's own parameters (training), else a copy."""

    def __init__(self, conv: torch.nn.Conv2d, shared: bool = False):
        super().__init__()
        hold(self, "weight", conv.weight, torch.float32, shared)  # (out, in, 1, 1)
        hold(self, "bias", conv.bias, torch.float32, shared)

    @staticmethod
    def supports(layer: torch.nn.Module) -> bool:
        """Whether `layer` is a 1x1 convolution this class computes."""
        return (
            type(layer) is torch.nn.Conv2d
            and layer.kernel_size == (1, 1)
            and layer.stride == (1, 1)
            and layer.groups == 1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return as_grid(F.linear(tokens(x, torch.float32), self.weight[:, :, 0, 0], self.bias))


def swap_pointwise(layers: torch.nn.Module, shared: bool) -> None:
    """Replace, in place, the 1x1 convolutions among the children of `layers` (an encoder or
    decoder `Sequential`, or a VAE's `LatentEncoder`, which is one) by `MatmulPointwise`."""
    if not isinstance(layers, torch.nn.Sequential):
        return
    for name, child in layers.named_children():
        if MatmulPointwise.supports(child):
            setattr(layers, name, MatmulPointwise(child, shared))


def swap_layers(network: torch.nn.Module, compute: torch.dtype, shared: bool) -> None:
    """Replace, in place, `network`'s blocks' spectral convolutions and MLPs by their matrix
    products in `compute` precision and its encoder's and decoder's 1x1 convolutions by
    float32 ones on the same tokens; layers of another make are kept as they are."""
    swap_pointwise(network.encoder, shared), swap_pointwise(network.decoder, shared)
    for block in network.blocks:
        mlp = MatmulMLP.supports(getattr(block, "mlp", None))
        if mlp:
            block.mlp = MatmulMLP(block.mlp, compute, shared)
        if MatmulSpectralConv.supports(block.global_conv):
            output = compute if mlp else torch.float32
            block.global_conv = MatmulSpectralConv(block.global_conv, compute, output, shared)


def matmul_network(network: torch.nn.Module, compute: torch.dtype = BF16) -> torch.nn.Module:
    """A copy of the torch-harmonics SFNO `network` (or one with conditional norms or a
    latent encoder, as the generative kinds build) whose layers run as matrix products on
    the tokens (`swap_layers`) in `compute` precision, for inference."""
    fast = copy.deepcopy(network)
    swap_layers(fast, compute, shared=False)
    return fast.eval()


def training_network(network: torch.nn.Module) -> torch.nn.Module:
    """A view of `network` for float32 training on the CPU: the same matrix products on the
    tokens (`swap_layers`), with `network`'s own parameters, so that gradients and optimizer
    steps reach them. Its gradients equal torch-harmonics' to round-off, and a step forward
    and back takes 0.6-0.7 of the time: no slow-path 1x1 convolutions and no layout copies
    (`benchmarks/training_speed.py`)."""
    view = copy.deepcopy(network, memo={id(p): p for p in network.parameters()})
    swap_layers(view, torch.float32, shared=True)
    return view
