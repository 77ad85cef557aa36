"""Fit the Pedone pair baseline of the potential to DFT forces (``train.potential.baseline: pedone_fitted``).

The fitted baseline has the form and cutoff of :func:`bornfield.models.baseline.pedone_baseline`;
the fit varies one common scale of the partial charges (the cell stays neutral) and each short-range
pair's Morse ``r0`` (Å) (``D0``, ``a``, ``C0`` kept: the short-range walls keep their published
stiffness), within bounds around the published values, to minimise the squared force error
``Σ |F_DFT - F_baseline|²`` (eV/Å) over the training structures, by bounded least squares. Forces are
computed by :class:`~bornfield.models.baseline.PairBaseline` itself, so the fitted numbers mean exactly
what the model evaluates. The result is a baseline hyperparameter dict (stored in every model file
trained with it) with a ``fit`` record: the structures, the force RMSE before and after, per species.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from bornfield.errors import InputFileError
from bornfield.models.baseline import PairBaseline, pedone_baseline
from bornfield.models.graph import collate
from bornfield.train.data import Sample, attach_edges

#: bounds of the fitted quantities: charge scale, shift of each pair's r0 (Å)
CHARGE_SCALE_BOUNDS = (0.5, 1.5)
R0_SHIFT_BOUNDS_A = (-0.3, 0.3)


def _with_parameters(start: dict[str, Any], theta: np.ndarray) -> dict[str, Any]:
    """Baseline hyperparameters of ``start`` with charge scale ``theta[0]`` and pair r0 (Å) ``theta[1:]``."""
    h = dict(start)
    h["charges"] = {s: float(q) * float(theta[0]) for s, q in start["charges"].items()}
    h["pairs"] = {name: [float(d0), float(a), float(r0), float(c0)]
                  for (name, (d0, a, _, c0)), r0 in zip(start["pairs"].items(), theta[1:])}
    return h


def _forces(hyperparameters: dict[str, Any], species: Sequence[str], graphs) -> np.ndarray:
    """Baseline forces (sum n, 3) eV/Å of the collated ``graphs``."""
    from bornfield.models.potential import forces_from_edge_gradient

    baseline = PairBaseline(species, hyperparameters)
    parts = []
    for graph in graphs:
        _, grad = baseline.site_energies_and_edge_gradient(graph)
        parts.append(forces_from_edge_gradient(graph, grad).numpy())
    return np.concatenate(parts)


def _rmse_per_species(error: np.ndarray, symbols: np.ndarray) -> dict[str, float]:
    out = {"all": float(np.sqrt((error ** 2).mean()))}
    for s in sorted(set(symbols)):
        out[s] = float(np.sqrt((error[symbols == s] ** 2).mean()))
    return out


def fit_pedone_baseline(samples: Sequence[Sample], species: Sequence[str], cutoff: float, dsf_alpha: float,
                        description: str) -> dict[str, Any]:
    """Pedone + DSF baseline hyperparameters fitted to the forces of ``samples`` (list of Sample with forces).

    Args:
        samples: training structures (their forces in eV/Å are the target).
        species: the model's chemical symbols.
        cutoff: Å, baseline cutoff; dsf_alpha: 1/Å, Coulomb damping (as ``pedone_baseline``).
        description: what the structures are (dataset file, hash, split), kept in the ``fit`` record.

    Raises:
        InputFileError: no structure with forces.
    """
    from scipy.optimize import least_squares

    samples = [s for s in samples if s.forces is not None]
    if not samples:
        raise InputFileError(f"{description}: no structures with forces to fit the pair baseline to")
    start = pedone_baseline(cutoff, dsf_alpha)
    attach_edges(samples, species, cutoff)
    graphs = [collate([s.edges for s in samples[i:i + 16]], torch.float64) for i in range(0, len(samples), 16)]
    target = np.concatenate([s.forces for s in samples])
    symbols = np.concatenate([s.atoms.get_chemical_symbols() for s in samples])

    def residual(theta: np.ndarray) -> np.ndarray:
        return (_forces(_with_parameters(start, theta), species, graphs) - target).ravel()

    r0s = [values[2] for values in start["pairs"].values()]
    theta0 = [1.0] + r0s
    lower = [CHARGE_SCALE_BOUNDS[0]] + [r0 + R0_SHIFT_BOUNDS_A[0] for r0 in r0s]
    upper = [CHARGE_SCALE_BOUNDS[1]] + [r0 + R0_SHIFT_BOUNDS_A[1] for r0 in r0s]
    with torch.no_grad():
        before = _rmse_per_species(residual(np.array(theta0)).reshape(-1, 3), symbols)
        result = least_squares(residual, np.array(theta0), bounds=(lower, upper), x_scale="jac", xtol=1e-6,
                               ftol=1e-8, max_nfev=400)
        after = _rmse_per_species(result.fun.reshape(-1, 3), symbols)
    fitted = _with_parameters(start, result.x)
    fitted["source"] = start["source"] + "; charge scale and Morse r0 refitted to DFT forces"
    fitted["fit"] = {
        "target": "forces (eV/Å) of the training structures",
        "structures": description,
        "n_structures": len(samples),
        "n_atoms": int(len(target)),
        "charge_scale": float(result.x[0]),
        "force_rmse_eV_per_A_before": before,
        "force_rmse_eV_per_A_after": after,
        "evaluations": int(result.nfev),
    }
    return fitted
