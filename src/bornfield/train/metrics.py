"""Predictions and error metrics of trained models on labelled samples.

Units: energies reported in meV/atom, forces in meV/Å, stress in GPa, Born
charges in e. Born-charge targets are the ASR-corrected DFPT tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ase.units import GPa

from bornfield.models.graph import collate
from bornfield.train.data import Sample, attach_edges

_DIAG = np.eye(3, dtype=bool)


def _batches(samples: Sequence[Sample], size: int):
    for start in range(0, len(samples), size):
        yield samples[start : start + size]


def _rmse(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else float("nan")


def _mae(x: np.ndarray) -> float:
    return float(np.mean(np.abs(x))) if x.size else float("nan")


def predict_potential(models, samples: Sequence[Sample], batch_size: int = 8) -> dict[str, np.ndarray]:
    """Committee-mean predictions of energies (eV), forces (eV/Å) and stress (eV/Å³) for every sample.

    ``models`` is one NNPotential or a list (committee mean). Returns arrays
    concatenated over samples: ``energy`` (S,), ``forces`` (sum n, 3),
    ``stress`` (S, 3, 3) (NaN if not periodic), ``forces_std`` (sum n, 3).
    """
    models = models if isinstance(models, (list, tuple)) else [models]
    cutoff = max(m.cutoff for m in models)
    attach_edges(samples, models[0].species, cutoff)
    per_model = []
    for m in models:
        energies, forces, stresses = [], [], []
        for batch in _batches(list(samples), batch_size):
            out = m.forward(collate([s.edges for s in batch], m.dtype), forces=True, stress=True)
            energies.append(out["energy"].detach().numpy())
            forces.append(out["forces"].detach().double().numpy())
            stresses.append(out["stress"].detach().double().numpy())
        per_model.append((np.concatenate(energies), np.concatenate(forces), np.concatenate(stresses)))
    stack = [np.stack([p[k] for p in per_model]) for k in range(3)]
    return {
        "energy": stack[0].mean(0),
        "forces": stack[1].mean(0),
        "stress": stack[2].mean(0),
        "forces_std": stack[1].std(0),
    }


def _committee_forward(models, samples: Sequence[Sample], batch_size: int) -> np.ndarray:
    """Per-atom outputs of every committee member, shape (n_models, sum n, ...), float64."""
    models = models if isinstance(models, (list, tuple)) else [models]
    attach_edges(samples, models[0].species, max(m.cutoff for m in models))
    per_model = []
    for m in models:
        values = []
        with torch.no_grad():
            for batch in _batches(list(samples), batch_size):
                values.append(m.forward(collate([s.edges for s in batch], m.dtype)).double().numpy())
        per_model.append(np.concatenate(values))
    return np.stack(per_model)


def predict_born(models, samples: Sequence[Sample], batch_size: int = 8) -> dict[str, np.ndarray]:
    """Committee-mean Born charges (sum n, 3, 3) e (ASR-corrected) and their std."""
    stack = _committee_forward(models, samples, batch_size)
    return {"born_charges": stack.mean(0), "born_charges_std": stack.std(0)}


def predict_rows(models, samples: Sequence[Sample], batch_size: int = 8) -> np.ndarray:
    """Paper-style baseline rows Z[:, a, :] (sum n, 3) e (committee mean)."""
    return _committee_forward(models, samples, batch_size).mean(0)


def potential_metrics(models, samples: Sequence[Sample]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Energy/force/stress errors; returns (metrics, arrays for parity plots).

    Errors are predicted - reference; ``energy_mean_error_meV_per_atom`` is the signed mean (a
    systematic offset). Energy and stress errors use neutral cells only (charged-cell DFT energies
    include background terms, see ``charged_cells`` in the train schema); force
    errors use every structure.
    """
    samples = [s for s in samples if s.energy is not None and s.forces is not None]
    pred = predict_potential(models, samples)
    n_atoms = np.array([s.n_atoms for s in samples])
    neutral = np.array([s.charge == 0 for s in samples])
    e_ref = np.array([s.energy for s in samples]) / n_atoms
    e_pred = pred["energy"] / n_atoms
    f_ref = np.concatenate([s.forces for s in samples])
    symbols = np.concatenate([s.atoms.get_chemical_symbols() for s in samples])
    de = (e_pred - e_ref)[neutral] * 1000.0
    df = (pred["forces"] - f_ref) * 1000.0
    metrics = {
        "n_structures": float(len(samples)),
        "n_atoms": float(n_atoms.sum()),
        "n_charged_structures": float((~neutral).sum()),
        "energy_rmse_meV_per_atom": _rmse(de),
        "energy_mae_meV_per_atom": _mae(de),
        "energy_mean_error_meV_per_atom": float(np.mean(de)) if de.size else float("nan"),
        "force_rmse_meV_per_A": _rmse(df),
        "force_mae_meV_per_A": _mae(df),
    }
    for symbol in sorted(set(symbols)):
        metrics[f"force_rmse_meV_per_A_{symbol}"] = _rmse(df[symbols == symbol])
    if isinstance(models, (list, tuple)) and len(models) > 1:
        metrics.update(committee_calibration(df / 1000.0, pred["forces_std"]))
    has_stress = [k for k, s in enumerate(samples) if s.stress is not None and s.atoms.pbc.all() and neutral[k]]
    arrays = {"energy_ref": e_ref[neutral], "energy_pred": e_pred[neutral], "forces_ref": f_ref,
              "forces_pred": pred["forces"]}
    if has_stress:
        s_ref = np.stack([samples[k].stress for k in has_stress])
        s_pred = pred["stress"][has_stress]
        metrics["stress_rmse_GPa"] = _rmse((s_pred - s_ref) / GPa)
        arrays["stress_ref"], arrays["stress_pred"] = s_ref / GPa, s_pred / GPa
    return metrics, arrays


def committee_calibration(errors: np.ndarray, spread: np.ndarray) -> dict[str, float]:
    """How well a committee's force spread predicts its error (both (n, 3), eV/Å: error of the
    committee mean, population std over members). ``force_error_spread_ratio``: RMS error / RMS
    spread (1 = calibrated, > 1 = the spread understates the error); ``force_error_spread_spearman``:
    rank correlation of per-atom |error| and |spread| (1 = the spread ranks atoms by error)."""
    from scipy.stats import spearmanr

    ratio = float(np.sqrt(np.mean(errors**2) / np.mean(spread**2))) if np.any(spread) else float("nan")
    rho = float(spearmanr(np.linalg.norm(spread, axis=1), np.linalg.norm(errors, axis=1)).statistic) \
        if len(errors) > 2 else float("nan")
    return {"force_spread_rms_meV_per_A": _rmse(spread * 1000.0), "force_error_spread_ratio": ratio,
            "force_error_spread_spearman": rho}


def born_error_metrics(
    z_pred: np.ndarray, z_ref: np.ndarray, symbols: np.ndarray, prefix: str = "bec"
) -> dict[str, float]:
    """RMSE/MAE of full tensors: all, diagonal, off-diagonal, per species, per field-axis row."""
    diff = z_pred - z_ref
    metrics = {
        f"{prefix}_rmse_e": _rmse(diff),
        f"{prefix}_mae_e": _mae(diff),
        f"{prefix}_rmse_diag_e": _rmse(diff[:, _DIAG]),
        f"{prefix}_rmse_offdiag_e": _rmse(diff[:, ~_DIAG]),
        f"{prefix}_mae_diag_e": _mae(diff[:, _DIAG]),
        f"{prefix}_mae_offdiag_e": _mae(diff[:, ~_DIAG]),
    }
    for axis, name in enumerate("xyz"):
        metrics[f"{prefix}_row_{name}_rmse_e"] = _rmse(diff[:, axis, :])
        metrics[f"{prefix}_row_{name}_mae_e"] = _mae(diff[:, axis, :])
    for symbol in sorted(set(symbols)):
        sel = symbols == symbol
        metrics[f"{prefix}_rmse_e_{symbol}"] = _rmse(diff[sel])
        metrics[f"{prefix}_mae_e_{symbol}"] = _mae(diff[sel])
        metrics[f"{prefix}_rmse_diag_e_{symbol}"] = _rmse(diff[sel][:, _DIAG])
        metrics[f"{prefix}_rmse_offdiag_e_{symbol}"] = _rmse(diff[sel][:, ~_DIAG])
    return metrics


def born_metrics(models, samples: Sequence[Sample]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Errors of the equivariant model against ASR-corrected DFPT tensors."""
    samples = [s for s in samples if s.born is not None]
    pred = predict_born(models, samples)
    ref = np.concatenate([s.born for s in samples])
    symbols = np.concatenate([s.atoms.get_chemical_symbols() for s in samples])
    metrics = {"n_structures": float(len(samples)), "n_atoms": float(len(ref))}
    metrics.update(born_error_metrics(pred["born_charges"], ref, symbols))
    z_sum = np.array([0.0])
    offset = 0
    for s in samples:  # ASR of the prediction (should be float-precision zero)
        z_sum = np.maximum(z_sum, np.abs(pred["born_charges"][offset : offset + s.n_atoms].sum(0)).max())
        offset += s.n_atoms
    metrics["bec_asr_max_abs_e"] = float(z_sum.max())
    return metrics, {"born_ref": ref, "born_pred": pred["born_charges"], "symbols": symbols}


def row_metrics(models, samples: Sequence[Sample]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Errors of the paper-style baseline on its field-axis row(s).

    Models are grouped by field axis (a committee per axis); each axis gets its row
    metrics (``bec_row_<x>_*``). When the models cover all three axes, their rows are
    stacked into full tensors ``Z[atom, α, :]`` and the full-tensor metrics
    (``bec_rmse_e``, diagonal, off-diagonal, per species) are added, comparable with
    the equivariant model's.
    """
    samples = [s for s in samples if s.born is not None]
    models_list = list(models) if isinstance(models, (list, tuple)) else [models]
    by_axis: dict[int, list] = {}
    for m in models_list:
        by_axis.setdefault(int(m.field_axis), []).append(m)
    ref_full = np.concatenate([s.born for s in samples])
    symbols = np.concatenate([s.atoms.get_chemical_symbols() for s in samples])
    metrics = {"n_structures": float(len(samples)), "n_atoms": float(len(ref_full))}
    arrays: dict[str, np.ndarray] = {"symbols": symbols}
    rows = {}
    for axis in sorted(by_axis):
        pred = predict_rows(by_axis[axis], samples)
        rows[axis] = pred
        ref = ref_full[:, axis, :]
        diff = pred - ref
        name = "xyz"[axis]
        metrics.update({
            f"bec_row_{name}_rmse_e": _rmse(diff),
            f"bec_row_{name}_mae_e": _mae(diff),
            f"bec_row_{name}_rmse_diag_e": _rmse(diff[:, axis]),
            f"bec_row_{name}_rmse_offdiag_e": _rmse(np.delete(diff, axis, axis=1)),
        })
        for symbol in sorted(set(symbols)):
            metrics[f"bec_row_{name}_rmse_e_{symbol}"] = _rmse(diff[symbols == symbol])
            metrics[f"bec_row_{name}_mae_e_{symbol}"] = _mae(diff[symbols == symbol])
        if "row_ref" not in arrays:
            arrays["row_ref"], arrays["row_pred"] = ref, pred
    if sorted(rows) == [0, 1, 2]:
        z_pred = np.stack([rows[a] for a in range(3)], axis=1)
        metrics.update(born_error_metrics(z_pred, ref_full, symbols))
        arrays["born_ref"], arrays["born_pred"] = ref_full, z_pred
    return metrics, arrays
