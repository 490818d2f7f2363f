"""Two-layer quasi-geostrophic model on the sphere: the dynamical core of the truth world.

Equal-depth layers (1 = upper, 2 = lower), streamfunctions psi_i, potential vorticity

    q_i = lap(psi_i) + f + (-1)^i (F / 2) (psi_1 - psi_2),     F = 1 / L_d^2,

with a constant deformation radius L_d (Phillips' model, e.g. Vallis 2017, sect. 5.6 and
9.4). The model evolves the PV anomaly q'_i = q_i - f in spectral space:

    dq'_i/dt = -J(psi_i, q'_i) - (2 Omega / a^2) dpsi_i/dlambda          advection, beta
               -/+ F (psi_T - psi_T_eq) / tau_r  (upper: +, lower: -)       interface relaxation
               - [i = 2] lap(psi_2) / tau_d                                 surface drag
               - nu (-lap)^p q'_i                                           hyperdiffusion

psi_T = (psi_1 - psi_2) / 2 is relaxed toward a baroclinically unstable jet whose vertical shear
is `U sin^2(2 phi)` (jets in both hemispheres). The Jacobian is evaluated on a Gauss grid fine
enough to be alias-free for quadratic terms (nlat >= (3T + 1) / 2) and time stepping is SSP-RK3.

Energy per unit mass, averaged over the layers (conserved by advection and beta):

    E = < |grad psi_1|^2 + |grad psi_2|^2 > / 4 + F < (psi_1 - psi_2)^2 > / 8   [m2 s-2]

with <.> the area mean. `energy_budget` splits dE/dt into the contribution of each term.
Batched over a leading member dimension; runs on any torch device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from wxens.data_pipeline.sphere import (
    EARTH_RADIUS_M,
    EARTH_ROTATION_RATE,
    LatLonGrid,
    SpectralTransforms,
    check_synthesis,
    spectral_inner,
    synthesis,
    truncate,
)

DAY = 86400.0


@dataclass(frozen=True)
class QGParameters:
    """Physical parameters of the two-layer model (SI units unless the name says otherwise)."""

    truncation: int = 42
    timestep_minutes: float = 30.0
    deformation_radius_km: float = 566.0
    relaxation_days: float = 20.0
    jet_shear_m_s: float = 40.0
    drag_days: float = 4.0
    hyperdiffusion_hours: float = 3.0
    hyperdiffusion_order: int = 4  # (-lap)^4 = del^8
    forcing: bool = True
    drag: bool = True


def dynamics_grid(truncation: int) -> LatLonGrid:
    """The alias-free Gauss grid for quadratic terms at triangular truncation T."""
    nlat = math.ceil((3 * truncation + 1) / 2)
    nlat += nlat % 2
    return LatLonGrid(nlat, 2 * nlat, kind="legendre-gauss")


class TwoLayerQG(torch.nn.Module):
    """Spectral two-layer QG model. State: PV-anomaly coefficients `(batch, 2, T+1, T+1)`."""

    def __init__(self, params: QGParameters, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.params = params
        self.real_dtype = dtype
        self.grid = dynamics_grid(params.truncation)
        self.transforms = SpectralTransforms(self.grid, params.truncation)
        self.dt = params.timestep_minutes * 60.0
        self.inverse_deformation_sq = 1.0 / (params.deformation_radius_km * 1e3) ** 2

        l_index = self.transforms.total_wavenumber
        k_sq = l_index * (l_index + 1) / EARTH_RADIUS_M**2
        smallest = params.truncation * (params.truncation + 1) / EARTH_RADIUS_M**2
        hyper_rate = (k_sq / smallest) ** params.hyperdiffusion_order / (
            params.hyperdiffusion_hours * 3600.0
        )
        inverse_k_sq = torch.where(k_sq > 0, 1.0 / k_sq.clamp_min(1e-30), torch.zeros_like(k_sq))
        beta_factor = 1j * self.transforms.zonal_wavenumber * 2 * EARTH_ROTATION_RATE
        self.transforms.to(dtype)
        for name, value in {
            "k_sq": k_sq,
            "inverse_k_sq": inverse_k_sq,
            "hyper_rate": hyper_rate,
            "beta_factor": beta_factor / EARTH_RADIUS_M**2,
            "psi_t_equilibrium": self._equilibrium_psi_t(),
        }.items():
            target = self.complex_dtype if value.is_complex() else dtype
            self.register_buffer(name, value.to(target), persistent=False)

    @property
    def complex_dtype(self) -> torch.dtype:
        return torch.complex128 if self.real_dtype == torch.float64 else torch.complex64

    def _equilibrium_psi_t(self) -> torch.Tensor:
        """Coefficients of psi_T_eq: shear u_1 - u_2 = U sin^2(2 phi) = -(2/a) dpsi_T/dphi."""
        phi = torch.deg2rad(torch.from_numpy(self.grid.latitude))[:, None]
        # integral of sin^2(2 phi) dphi = phi / 2 - sin(4 phi) / 8
        psi_t = (
            -0.5 * EARTH_RADIUS_M * self.params.jet_shear_m_s * (phi / 2 - torch.sin(4 * phi) / 8)
        )
        psi_t = psi_t.expand(self.grid.nlat, self.grid.nlon).contiguous()
        coeffs = self.transforms.to_spectral(psi_t.to(self.real_dtype))
        coeffs[..., 0, 0] = 0.0
        return coeffs

    # --- PV <-> streamfunction --------------------------------------------------------------

    def streamfunction(self, q: torch.Tensor) -> torch.Tensor:
        """Invert PV anomaly to streamfunction.

        Barotropic `psi_B = -q_B / k^2`, baroclinic `psi_T = -q_T / (k^2 + F)`.
        """
        q_barotropic = (q[:, 0] + q[:, 1]) / 2
        q_baroclinic = (q[:, 0] - q[:, 1]) / 2
        psi_barotropic = -q_barotropic * self.inverse_k_sq
        psi_baroclinic = -q_baroclinic / (self.k_sq + self.inverse_deformation_sq)
        return torch.stack(
            [psi_barotropic + psi_baroclinic, psi_barotropic - psi_baroclinic], dim=1
        )

    def potential_vorticity(self, psi: torch.Tensor) -> torch.Tensor:
        """PV anomaly coefficients from streamfunction coefficients `(batch, 2, l, m)`."""
        thermal = self.inverse_deformation_sq / 2 * (psi[:, 0] - psi[:, 1])
        return torch.stack(
            [-self.k_sq * psi[:, 0] - thermal, -self.k_sq * psi[:, 1] + thermal], dim=1
        )

    # --- tendencies ---------------------------------------------------------------------------

    def tendency_terms(self, q: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each term of dq'/dt (spectral), by name."""
        psi = self.streamfunction(q)
        gradients = self.transforms.gradient(torch.stack([psi, q], dim=1))  # (b, 2, 2, 2, lat, lon)
        grad_psi, grad_q = gradients[:, 0], gradients[:, 1]
        jacobian = (
            grad_psi[:, :, 0] * grad_q[:, :, 1] - grad_psi[:, :, 1] * grad_q[:, :, 0]
        ) / EARTH_RADIUS_M**2
        terms = {
            "advection": -truncate(self.transforms.to_spectral(jacobian), self.params.truncation),
            "beta": -self.beta_factor * psi,
            "hyperdiffusion": -self.hyper_rate * q,
        }
        if self.params.forcing:
            psi_t = (psi[:, 0] - psi[:, 1]) / 2
            relax = (
                self.inverse_deformation_sq
                * (psi_t - self.psi_t_equilibrium)
                / (self.params.relaxation_days * DAY)
            )
            terms["relaxation"] = torch.stack([relax, -relax], dim=1)
        if self.params.drag:
            drag = self.k_sq * psi[:, 1] / (self.params.drag_days * DAY)
            terms["drag"] = torch.stack([torch.zeros_like(drag), drag], dim=1)
        return terms

    def tendency(self, q: torch.Tensor) -> torch.Tensor:
        return sum(self.tendency_terms(q).values())

    def step(self, q: torch.Tensor) -> torch.Tensor:
        """One SSP-RK3 step (Shu and Osher 1988) of length `timestep_minutes`."""
        dt = self.dt
        q1 = q + dt * self.tendency(q)
        q2 = 0.75 * q + 0.25 * (q1 + dt * self.tendency(q1))
        return q / 3 + 2 / 3 * (q2 + dt * self.tendency(q2))

    def integrate(self, q: torch.Tensor, steps: int) -> torch.Tensor:
        for _ in range(steps):
            q = self.step(q)
        return q

    # --- diagnostics --------------------------------------------------------------------------

    def energy(self, q: torch.Tensor) -> torch.Tensor:
        """Total energy per unit mass `E` [m2 s-2] of each member (see module docstring)."""
        return -0.25 * self._area_mean_inner(self.streamfunction(q), q)

    def energy_budget(self, q: torch.Tensor) -> dict[str, torch.Tensor]:
        """Contribution of each tendency term to dE/dt [m2 s-3]: `-(1/2) sum_i <psi_i dq_i/dt>`."""
        psi = self.streamfunction(q)
        return {
            name: -0.5 * self._area_mean_inner(psi, term)
            for name, term in self.tendency_terms(q).items()
        }

    def _area_mean_inner(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return spectral_inner(a, b).sum(dim=1) / (4 * math.pi)

    def eddy_kinetic_energy(self, q: torch.Tensor) -> torch.Tensor:
        """Layer-mean eddy (m > 0) kinetic energy per unit mass [m2 s-2], per member."""
        return self.eddy_kinetic_energy_spectrum(q).sum(dim=-1)

    def eddy_kinetic_energy_spectrum(self, q: torch.Tensor) -> torch.Tensor:
        """Layer-mean eddy kinetic energy by total wavenumber l, `(batch, T+1)` [m2 s-2]."""
        psi = self.streamfunction(q)
        weight = torch.full((psi.shape[-1],), 2.0, dtype=self.real_dtype, device=psi.device)
        weight[0] = 0.0  # eddies only: m > 0, counted for +m and -m
        power = (psi.abs() ** 2 * self.k_sq * weight).sum(dim=(1, -1))
        return 0.25 * power / (4 * math.pi)

    # --- initial states and output ------------------------------------------------------------

    def rest_state(
        self, batch: int, generator: torch.Generator, noise_m2_s: float = 1e5
    ) -> torch.Tensor:
        """The equilibrium jet (all shear, no barotropic flow) plus small random eddies."""
        n = self.params.truncation + 1
        noise = torch.randn((batch, 2, n, n, 2), generator=generator, dtype=torch.float64)
        # drawn on the generator's device (the CPU: the same state on any device), then moved
        noise = torch.view_as_complex(noise).to(self.k_sq.device) * noise_m2_s * (self.k_sq > 0)
        noise[..., 0] = noise[..., 0].real  # m = 0 coefficients of a real field are real
        noise = truncate(noise, self.params.truncation).to(self.complex_dtype)
        psi = torch.stack([self.psi_t_equilibrium, -self.psi_t_equilibrium]).expand(batch, 2, n, n)
        return self.potential_vorticity(psi + noise)

    def streamfunction_on(self, q: torch.Tensor, grid: LatLonGrid, truncation: int) -> torch.Tensor:
        """Streamfunction `(batch, 2, nlat, nlon)` truncated to T`truncation` on `grid`."""
        check_synthesis(grid, truncation)
        coeffs = truncate(self.streamfunction(q), truncation)
        return synthesis(grid, truncation).to(q.device)(coeffs)
