"""Mean-squared displacement tensors and mean displacements, all time origins.

For a species s with atoms i and frames t = 0…T-1 (interval Δt), with positions
taken relative to the mass-weighted centre of mass of the whole cell,
``u_i(t) = r_i(t) - R_com(t)``, the functions here return for every lag
k = 0…K (τ = kΔt), averaged over all T-k time origins and all atoms of s:

* the displacement second-moment tensor ``M_ab(τ) = <Δu_a Δu_b>`` (Å², 3×3);
* the mean displacement ``d_a(τ) = <Δu_a>`` (Å), whose growth is the drift;
* the same two moments of one point's trajectory (:func:`point_moments`), e.g. the
  species centroid ``ū(t)`` (whose all-origins ``<Δū_a Δū_b>`` is what the
  per-origin removal of the species' collective motion needs, see
  :func:`drift_free_covariance`) or the centroid relative to the host framework.

From these, for a unit vector ê (field direction, or a reference axis at zero
field): ``MSD_∥ = êᵀ M ê``, ``MSD_total = tr M``, ``MSD_⊥ = tr M - MSD_∥`` (two
directions), the drift displacement ``<Δr_∥> = ê·d`` and the drift-corrected
(variance) ``MSD_∥ - (ê·d)²``. The all-origins sums are evaluated with FFTs
(the algorithm of Kneller et al., nMoldyn; Calandrini et al. 2011), O(T log T) per atom.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sp_fft

_PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))


def center_of_mass_positions(positions: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Mass-weighted centre of mass per frame, (T, 3) Å, of unwrapped positions (T, N, 3)."""
    masses = np.asarray(masses, dtype=float)
    return np.einsum("tnc,n->tc", positions, masses) / masses.sum()


def _summed_msd_columns(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Σ over columns of the all-origins MSD of each column of ``x`` (T, M), lags 0…max_lag.

    Returns the column-summed mean over origins: (max_lag + 1,).
    """
    n_frames = x.shape[0]
    n_fft = sp_fft.next_fast_len(2 * n_frames, real=True)
    spectrum = sp_fft.rfft(x, n=n_fft, axis=0)
    power = (spectrum.real**2 + spectrum.imag**2).sum(axis=1)
    autocorrelation = sp_fft.irfft(power, n=n_fft)[: max_lag + 1]
    squares = (x**2).sum(axis=1)
    cumulative = np.concatenate(([0.0], np.cumsum(squares)))
    lags = np.arange(max_lag + 1)
    # Σ_{t0=0}^{T-k-1} [x(t0+k)² + x(t0)²]
    square_sums = (cumulative[n_frames] - cumulative[lags]) + cumulative[n_frames - lags]
    return (square_sums - 2.0 * autocorrelation) / (n_frames - lags)


def _summed_mean_displacement(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Σ over columns of the all-origins mean displacement <x(t0+k) - x(t0)>, lags 0…max_lag."""
    n_frames = x.shape[0]
    cumulative = np.concatenate(([0.0], np.cumsum(x.sum(axis=1))))
    lags = np.arange(max_lag + 1)
    return ((cumulative[n_frames] - cumulative[lags]) - cumulative[n_frames - lags]) / (n_frames - lags)


def displacement_moments(
    positions: np.ndarray,
    masses: np.ndarray,
    atom_indices: np.ndarray,
    max_lag: int,
    *,
    remove_com: bool = True,
    chunk_atoms: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """Species-averaged displacement tensor and mean displacement for all lags.

    Args:
        positions: (T, N, 3) unwrapped positions in Å.
        masses: (N,) amu; the COM of *all* atoms is removed (mass-weighted).
        atom_indices: indices of the atoms to average over (one species).
        max_lag: largest lag in frames (< T).
        remove_com: subtract the whole-cell centre of mass frame by frame.
        chunk_atoms: atoms per FFT batch (bounds memory at ~ 2T·chunk complex numbers).

    Returns:
        M: (max_lag + 1, 3, 3) Å², ``<Δu_a Δu_b>``; d: (max_lag + 1, 3) Å, ``<Δu_a>``.
    """
    positions = np.asarray(positions, dtype=float)
    n_frames = positions.shape[0]
    if not 0 < max_lag < n_frames:
        raise ValueError(f"max_lag must be in 1…{n_frames - 1}, got {max_lag}")
    atom_indices = np.asarray(atom_indices, dtype=int)
    if atom_indices.size == 0:
        raise ValueError("no atoms to average over")
    com = center_of_mass_positions(positions, masses) if remove_com else np.zeros((n_frames, 3))
    diagonal_sums = np.zeros((max_lag + 1, 6))
    mean_sums = np.zeros((max_lag + 1, 3))
    for lo in range(0, atom_indices.size, chunk_atoms):
        relative = positions[:, atom_indices[lo : lo + chunk_atoms]] - com[:, None, :]
        # displacements are invariant under a constant shift: measuring from frame 0 keeps the
        # FFT round-off at the scale of the displacements, not of the absolute positions
        relative = relative - relative[0]
        for column, (a, b) in enumerate(_PAIRS):
            combination = relative[..., a] if a == b else relative[..., a] + relative[..., b]
            diagonal_sums[:, column] += _summed_msd_columns(combination, max_lag)
        for a in range(3):
            mean_sums[:, a] += _summed_mean_displacement(relative[..., a], max_lag)
    diagonal_sums /= atom_indices.size
    mean_sums /= atom_indices.size
    tensor = np.zeros((max_lag + 1, 3, 3))
    for a in range(3):
        tensor[:, a, a] = diagonal_sums[:, a]
    for column, (a, b) in enumerate(_PAIRS[3:], start=3):
        # polarization identity: <Δa Δb> = (<(Δa+Δb)²> - <Δa²> - <Δb²>) / 2
        tensor[:, a, b] = tensor[:, b, a] = 0.5 * (
            diagonal_sums[:, column] - diagonal_sums[:, a] - diagonal_sums[:, b]
        )
    tensor[0] = 0.0
    mean_sums[0] = 0.0
    return tensor, mean_sums


def point_moments(trajectory: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """All-origins ``<Δx_a Δx_b>`` (max_lag + 1, 3, 3) Å² and ``<Δx_a>`` (max_lag + 1, 3) Å of one point (T, 3)."""
    trajectory = np.asarray(trajectory, dtype=float)
    return displacement_moments(trajectory[:, None, :], np.ones(1), np.zeros(1, dtype=int), max_lag, remove_com=False)


def drift_free_covariance(tensor: np.ndarray, centroid_tensor: np.ndarray, n_atoms: int) -> np.ndarray:
    """Displacement covariance about the species mean, taken at each time origin (…, 3, 3) Å².

    ``C_ab = N/(N-1) <(Δu_a - Δū_a)(Δu_b - Δū_b)> = N/(N-1) (M_ab - <Δū_a Δū_b>)`` with ``Δū`` the
    mean displacement of the N atoms over the same origin and lag (``centroid_tensor``, from
    :func:`point_moments` of the species centroid). For N independent walkers with a common drift
    (and any common shift, e.g. the host's recoil) it is unbiased for ``2 D τ``. For N = 1 there is
    nothing to subtract per origin: the caller must remove a time-averaged drift instead.
    """
    if n_atoms < 2:
        raise ValueError(f"the covariance about the species mean needs at least 2 atoms, got {n_atoms}")
    return n_atoms / (n_atoms - 1) * (np.asarray(tensor) - np.asarray(centroid_tensor))


def species_moments(
    positions: np.ndarray,
    masses: np.ndarray,
    atom_indices: np.ndarray,
    host_indices: np.ndarray,
    max_lag: int,
    *,
    chunk_atoms: int = 128,
) -> dict[str, np.ndarray]:
    """Every moment the transport analysis of one species needs, for one trajectory.

    Args:
        positions: (T, N, 3) unwrapped positions in Å; masses: (N,) amu.
        atom_indices: the species' atoms; host_indices: the atoms of the host framework.
        max_lag: largest lag in frames (< T).

    Returns (lags 0…max_lag): ``tensor`` (L, 3, 3) and ``mean`` (L, 3), relative to the whole
    cell's centre of mass (:func:`displacement_moments`); ``centroid_tensor`` (L, 3, 3), the
    all-origins ``<Δū_a Δū_b>`` of the species centroid ū (for :func:`drift_free_covariance`);
    ``mean_relative_to_host`` (L, 3), the mean displacement relative to the mass-weighted centre
    of the host atoms.
    """
    positions = np.asarray(positions, dtype=float)
    masses = np.asarray(masses, dtype=float)
    atom_indices = np.asarray(atom_indices, dtype=int)
    host_indices = np.asarray(host_indices, dtype=int)
    if host_indices.size == 0:
        raise ValueError("no host atoms to measure the drift against")
    tensor, mean = displacement_moments(positions, masses, atom_indices, max_lag, chunk_atoms=chunk_atoms)
    centroid = positions[:, atom_indices].mean(axis=1)
    host = center_of_mass_positions(positions[:, host_indices], masses[host_indices])
    centroid_tensor, _ = point_moments(centroid - center_of_mass_positions(positions, masses), max_lag)
    _, mean_relative_to_host = point_moments(centroid - host, max_lag)
    return {
        "tensor": tensor,
        "mean": mean,
        "centroid_tensor": centroid_tensor,
        "mean_relative_to_host": mean_relative_to_host,
    }


def project(tensor: np.ndarray, mean: np.ndarray, direction: np.ndarray) -> dict[str, np.ndarray]:
    """Parallel / perpendicular curves of a displacement tensor (…, 3, 3) and mean (…, 3).

    Returns a dict of arrays (…,) in Å² (``parallel``, ``perpendicular`` — both
    perpendicular directions summed —, ``perpendicular_per_direction``,
    ``total``, ``total_per_direction`` = total/3, ``parallel_drift_corrected``,
    ``x``, ``y``, ``z``) and ``drift_parallel`` in Å.
    """
    unit = np.asarray(direction, dtype=float)
    unit = unit / np.linalg.norm(unit)
    parallel = np.einsum("...ab,a,b->...", tensor, unit, unit)
    total = np.trace(tensor, axis1=-2, axis2=-1)
    drift = mean @ unit
    return {
        "parallel": parallel,
        "perpendicular": total - parallel,
        "perpendicular_per_direction": 0.5 * (total - parallel),
        "total": total,
        "total_per_direction": total / 3.0,
        "parallel_drift_corrected": parallel - drift**2,
        "x": tensor[..., 0, 0],
        "y": tensor[..., 1, 1],
        "z": tensor[..., 2, 2],
        "drift_parallel": drift,
    }
