"""Fit the Pedone pair baseline of the potential to DFT labels (``train.potential.baseline: pedone_fitted``).

The fitted baseline has the form and cutoff of :func:`bornfield.models.baseline.pedone_baseline`;
the fit varies one common scale of the partial charges (the cell stays neutral) and each short-range
pair's Morse ``r0`` (Å) (``D0``, ``a``, ``C0`` kept: the short-range walls keep their published
stiffness), within bounds around the published values, and can add a Born–Mayer wall
``A exp(-r/rho)`` to chosen pairs (``wall_pairs``, e.g. Li–Li, which Pedone leaves to the
partial charges' Coulomb term), fitting ``A`` (eV) and ``rho`` (Å). The target is the squared
force error over the training atoms plus, with ``energy_weight`` w > 0, w² times the squared
per-atom energy error of the neutral training cells, both as means:
``mean |F_DFT - F_b|² + w² mean ((E_DFT - E_b)/N - Σ_s x_s e_s)²`` (eV/Å, eV/atom), where the
per-species references ``e_s`` are the least-squares ones for each trial (``x_s`` the cell's
fraction of species s; the network re-fits its own references anyway). Forces and energies are
computed by :class:`~bornfield.models.baseline.PairBaseline` itself, so the fitted numbers mean
exactly what the model evaluates. The result is a baseline hyperparameter dict (stored in every
model file trained with it) with a ``fit`` record: the structures, the force RMSE before and
after per species, the energy RMSE before and after per config_type.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from bornfield.errors import ConfigError, InputFileError
from bornfield.models.baseline import PairBaseline, pedone_baseline
from bornfield.models.graph import collate
from bornfield.train.data import Sample, attach_edges

#: bounds of the fitted quantities: charge scale, shift of each pair's r0 (Å), Born-Mayer A (eV) and rho (Å)
CHARGE_SCALE_BOUNDS = (0.5, 1.5)
R0_SHIFT_BOUNDS_A = (-0.3, 0.3)
WALL_A_BOUNDS_EV = (0.0, 1.0e5)
WALL_RHO_BOUNDS_A = (0.1, 1.0)
#: start of a Born-Mayer wall's fit: A (eV), rho (Å)
WALL_START = (100.0, 0.3)


def _with_parameters(start: dict[str, Any], theta: np.ndarray, wall_pairs: Sequence[str] = ()) -> dict[str, Any]:
    """Baseline hyperparameters of ``start`` with charge scale ``theta[0]``, pair r0 (Å) ``theta[1:1+P]``
    (P = the start's pairs) and, per name of ``wall_pairs``, a Born–Mayer A (eV), rho (Å) from the rest."""
    h = dict(start)
    n_pairs = len(start["pairs"])
    h["charges"] = {s: float(q) * float(theta[0]) for s, q in start["charges"].items()}
    h["pairs"] = {name: [float(d0), float(a), float(r0), float(c0)]
                  for (name, (d0, a, _, c0, *_)), r0 in zip(start["pairs"].items(), theta[1:1 + n_pairs])}
    for k, name in enumerate(wall_pairs):
        wall, rho = (float(v) for v in theta[1 + n_pairs + 2 * k:3 + n_pairs + 2 * k])
        d0, a, r0, c0 = h["pairs"].get(name, [0.0, 1.0, 1.0, 0.0])
        h["pairs"][name] = [d0, a, r0, c0, wall, rho]
    return h


def _evaluate(hyperparameters: dict[str, Any], species: Sequence[str], graphs) -> tuple[np.ndarray, np.ndarray]:
    """Baseline energies (one per structure, eV) and forces (sum n, 3) eV/Å of the collated ``graphs``."""
    from bornfield.models.potential import forces_from_edge_gradient

    baseline = PairBaseline(species, hyperparameters)
    energies, forces = [], []
    for graph in graphs:
        site, grad = baseline.site_energies_and_edge_gradient(graph)
        per_structure = site.new_zeros(graph.n_structures).index_add(0, graph.centre_batch, site)
        energies.append(per_structure.numpy())
        forces.append(forces_from_edge_gradient(graph, grad).numpy())
    return np.concatenate(energies), np.concatenate(forces)


def _rmse_by_label(error: np.ndarray, labels) -> dict[str, float]:
    """RMSE of ``error`` (rows: atoms or structures) over all rows and per value of ``labels`` (one per row)."""
    labels = np.asarray(labels)
    out = {"all": float(np.sqrt((error ** 2).mean()))}
    for label in sorted(set(labels.tolist())):
        out[label] = float(np.sqrt((error[labels == label] ** 2).mean()))
    return out


def _energy_residual(delta: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Per-atom energy residuals (eV/atom) ``delta - fractions @ e`` with the least-squares references ``e``."""
    references = np.linalg.lstsq(fractions, delta, rcond=None)[0]
    return delta - fractions @ references


def fit_pedone_baseline(samples: Sequence[Sample], species: Sequence[str], cutoff: float, dsf_alpha: float,
                        description: str, energy_weight: float = 0.0,
                        wall_pairs: Sequence[str] = ()) -> dict[str, Any]:
    """Pedone + DSF baseline hyperparameters fitted to the labels of ``samples`` (list of Sample with forces).

    Args:
        samples: training structures (their forces in eV/Å, and with ``energy_weight`` the energies
            of the neutral ones, are the target).
        species: the model's chemical symbols.
        cutoff: Å, baseline cutoff; dsf_alpha: 1/Å, Coulomb damping (as ``pedone_baseline``).
        description: what the structures are (dataset file, hash, split), kept in the ``fit`` record.
        energy_weight: w, Å/atom: weight of the per-atom energy error against the force error (0 = forces only).
        wall_pairs: pair names ("Li-Li") that get a fitted Born–Mayer wall; each of two species of the model.

    Raises:
        InputFileError: no structure with forces; energy_weight > 0 and no neutral structure with an energy.
        ConfigError: a wall pair that is not two of the model's species, or given twice.
    """
    from scipy.optimize import least_squares

    samples = [s for s in samples if s.forces is not None]
    if not samples:
        raise InputFileError(f"{description}: no structures with forces to fit the pair baseline to")
    wall_pairs = [str(p) for p in wall_pairs]
    for name in wall_pairs:
        a, _, b = name.partition("-")
        if a not in species or b not in species:
            raise ConfigError(f"train.potential.baseline_wall_pairs: {name!r} is not 'A-B' of the model's species "
                              f"{list(species)}")
    canonical = ["-".join(sorted(p.split("-"))) for p in wall_pairs]
    if len(set(canonical)) != len(canonical):
        raise ConfigError(f"train.potential.baseline_wall_pairs: {wall_pairs} names a pair twice")
    if energy_weight < 0:
        raise ConfigError(f"train.potential.baseline_energy_weight must be >= 0 (got {energy_weight})")
    start = pedone_baseline(cutoff, dsf_alpha)
    existing = {"-".join(sorted(name.split("-"))): name for name in start["pairs"]}
    wall_pairs = [existing.get(c, p) for c, p in zip(canonical, wall_pairs)]  # a wall joins a Pedone pair's entry
    attach_edges(samples, species, cutoff)
    graphs = [collate([s.edges for s in samples[i:i + 16]], torch.float64) for i in range(0, len(samples), 16)]
    target = np.concatenate([s.forces for s in samples])
    symbols = np.concatenate([s.atoms.get_chemical_symbols() for s in samples])
    energetic = np.array([s.energy is not None and s.charge == 0 for s in samples])
    if energy_weight > 0 and not energetic.any():
        raise InputFileError(f"{description}: baseline_energy_weight > 0 but no neutral structure has an energy")
    n_atoms = np.array([len(s.atoms) for s in samples], dtype=float)
    e_dft = np.array([s.energy if e else 0.0 for s, e in zip(samples, energetic)])
    numbers = sorted({int(z) for s in samples for z in s.atoms.numbers})
    fractions = np.array([[np.count_nonzero(s.atoms.numbers == z) for z in numbers] for s in samples],
                         dtype=float) / n_atoms[:, None]
    config_types = [str(s.atoms.info.get("config_type", "unknown")) for s, e in zip(samples, energetic) if e]

    def energy_error(e_base: np.ndarray) -> np.ndarray:
        return _energy_residual(((e_dft - e_base) / n_atoms)[energetic], fractions[energetic])

    def residual(theta: np.ndarray) -> np.ndarray:
        e_base, forces = _evaluate(_with_parameters(start, theta, wall_pairs), species, graphs)
        parts = [(forces - target).ravel() / np.sqrt(target.size)]
        if energy_weight > 0:
            parts.append(energy_weight * energy_error(e_base) / np.sqrt(energetic.sum()))
        return np.concatenate(parts)

    r0s = [values[2] for values in start["pairs"].values()]
    theta0 = [1.0] + r0s + list(WALL_START) * len(wall_pairs)
    lower = ([CHARGE_SCALE_BOUNDS[0]] + [r0 + R0_SHIFT_BOUNDS_A[0] for r0 in r0s]
             + [WALL_A_BOUNDS_EV[0], WALL_RHO_BOUNDS_A[0]] * len(wall_pairs))
    upper = ([CHARGE_SCALE_BOUNDS[1]] + [r0 + R0_SHIFT_BOUNDS_A[1] for r0 in r0s]
             + [WALL_A_BOUNDS_EV[1], WALL_RHO_BOUNDS_A[1]] * len(wall_pairs))
    start_theta = np.array([1.0] + r0s + [0.0, WALL_START[1]] * len(wall_pairs))  # the published baseline
    with torch.no_grad():
        e_before, f_before = _evaluate(_with_parameters(start, start_theta, wall_pairs), species, graphs)
        result = least_squares(residual, np.array(theta0), bounds=(lower, upper), x_scale="jac", xtol=1e-6,
                               ftol=1e-8, max_nfev=400)
        fitted = _with_parameters(start, result.x, wall_pairs)
        e_after, f_after = _evaluate(fitted, species, graphs)
    fitted["source"] = start["source"] + (
        "; charge scale and Morse r0 refitted to DFT forces" + (" and energies" if energy_weight > 0 else "")
        + (f"; Born-Mayer walls on {', '.join(wall_pairs)} fitted" if wall_pairs else ""))
    fitted["fit"] = {
        "target": ("forces (eV/Å)" + (f" and per-atom energies (eV/atom, weight {energy_weight:g} Å/atom)"
                                      if energy_weight > 0 else "")) + " of the training structures",
        "structures": description,
        "n_structures": len(samples),
        "n_atoms": int(len(target)),
        "charge_scale": float(result.x[0]),
        "wall_pairs": {name: fitted["pairs"][name][4:] for name in wall_pairs},
        "force_rmse_eV_per_A_before": _rmse_by_label(f_before - target, symbols),
        "force_rmse_eV_per_A_after": _rmse_by_label(f_after - target, symbols),
        "evaluations": int(result.nfev),
    }
    if energetic.any():
        fitted["fit"]["energy_rmse_meV_per_atom_before"] = _rmse_by_label(energy_error(e_before) * 1000, config_types)
        fitted["fit"]["energy_rmse_meV_per_atom_after"] = _rmse_by_label(energy_error(e_after) * 1000, config_types)
    return fitted
