"""Fits and unit conversions for transport coefficients.

Conventions (per species):

* diffusion tensor ``D_ab = (1/2) dC_ab/dτ`` in the linear (diffusive) regime, C the
  displacement covariance about the species mean (frame-independent, the tracer D
  relative to the host); ``D = tr(D)/3`` (the isotropic tracer diffusion
  coefficient); along a unit vector ê: ``D_ê = êᵀ D ê``;
* drift velocity ``v = d<Δu>/dτ`` (Å/fs), ``v_∥ = v·ê``, relative to the cell's
  centre of mass or to the host framework (atoms other than the mobile species);
* field-driven mobility ``μ = v_∥ / |E|`` (Å²/(V·fs) for E in V/Å) with v relative
  to the host, the frame in which Nernst–Einstein holds;
* Nernst–Einstein mobility of a unit charge ``μ_NE = e D_ê / (k_B T)``: with D in
  Å²/fs and k_B T in eV, e·D/(k_B T) is in Å²/(V·fs).
"""

from __future__ import annotations

import math

import numpy as np
from ase.units import kB

A2_PER_FS_IN_CM2_PER_S = 1.0e-16 / 1.0e-15
"""1 Å²/fs = 0.1 cm²/s."""
MOBILITY_A2_PER_V_FS_IN_CM2_PER_V_S = 1.0e-16 / 1.0e-15
"""1 Å²/(V·fs) = 0.1 cm²/(V·s)."""
A_PER_FS_IN_M_PER_S = 1.0e-10 / 1.0e-15
"""1 Å/fs = 1e5 m/s."""
ELEMENTARY_CHARGE_C = 1.602176634e-19
"""Exact SI value (C)."""


def linear_slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of ``y = a + b x`` over the first axis of y (…): returns b.

    Linear in y, so the slope of a replica-averaged curve equals the average of
    the replica slopes.
    """
    x = np.asarray(x, dtype=float)
    centred = x - x.mean()
    y = np.asarray(y, dtype=float)
    return np.tensordot(centred, y - y.mean(axis=0), axes=(0, 0)) / np.dot(centred, centred)


def loglog_exponent(lag_fs: np.ndarray, msd: np.ndarray) -> float:
    """Exponent β of MSD ∝ τ^β over the given points (β = 1 diffusive, 2 ballistic/drift, ≈0 caged)."""
    positive = (msd > 0) & (lag_fs > 0)
    if positive.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(lag_fs[positive]), np.log(msd[positive]), 1)[0])


def mean_and_sem(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean over axis 0 and its standard error (ddof=1); sem is None for a single sample."""
    samples = np.asarray(samples, dtype=float)
    mean = samples.mean(axis=0)
    if samples.shape[0] < 2:
        return mean, None
    return mean, samples.std(axis=0, ddof=1) / math.sqrt(samples.shape[0])


def thermal_energy_eV(temperature_K: float) -> float:
    """k_B T in eV."""
    return float(kB * temperature_K)


def nernst_einstein_mobility(diffusion_A2_per_fs: float, temperature_K: float) -> float:
    """e·D/(k_B T) in Å²/(V·fs) for a unit charge."""
    return float(diffusion_A2_per_fs / thermal_energy_eV(temperature_K))


def nernst_einstein_conductivity_S_per_cm(
    number_density_per_A3: float, diffusion_A2_per_fs: float, temperature_K: float, haven_ratio: float = 1.0
) -> float:
    """σ = n e² D / (H_R k_B T) for unit charges, in S/cm.

    SI: n [m⁻³] = n [Å⁻³]·1e30, D [m²/s] = D [Å²/fs]·1e-5, k_B T [J] = k_B T [eV]·e,
    so σ [S/m] = n e D / (H_R k_B T [eV]); /100 for S/cm.
    """
    n_si = number_density_per_A3 * 1.0e30
    d_si = diffusion_A2_per_fs * 1.0e-5
    sigma_si = n_si * ELEMENTARY_CHARGE_C * d_si / (haven_ratio * thermal_energy_eV(temperature_K))
    return float(sigma_si / 100.0)


def hopping_nonlinearity(field_V_per_A: float, temperature_K: float, hop_length_A: float) -> dict:
    """Hopping-model estimate of how far from linear response a field is.

    A charge e hopping a distance a over a barrier, biased by the field, drifts
    with ``v ∝ sinh(x)`` where ``x = e E a / (2 k_B T)``; linear response is
    ``v ∝ x``, so the relative excess is ``sinh(x)/x - 1``.
    """
    x = field_V_per_A * hop_length_A / (2.0 * thermal_energy_eV(temperature_K))
    excess = math.sinh(x) / x - 1.0 if x > 0 else 0.0
    return {"reduced_field": x, "relative_excess": excess}
