"""Figures of the training stage: parity plots, loss histories, error vs training-set size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bornfield.atomic import atomic_path  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=130, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _parity(ax, ref, pred, label, unit, groups=None):
    ref, pred = np.ravel(ref), np.ravel(pred)
    if groups is None:
        ax.scatter(ref, pred, s=4, alpha=0.5)
    else:
        for name in sorted(set(np.ravel(groups).tolist())):
            sel = np.ravel(groups) == name
            ax.scatter(ref[sel], pred[sel], s=4, alpha=0.5, label=name)
        ax.legend(fontsize=7, markerscale=3)
    lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    rmse = float(np.sqrt(np.mean((pred - ref) ** 2)))
    ax.set_title(f"{label}: RMSE {rmse:.3g} {unit}", fontsize=9)
    ax.set_xlabel(f"reference ({unit})")
    ax.set_ylabel(f"predicted ({unit})")


def potential_parity(arrays: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Energy (eV/atom), force components (eV/Å) and, if present, stress (GPa) parity plots."""
    n = 3 if "stress_ref" in arrays else 2
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.8))
    _parity(axes[0], arrays["energy_ref"], arrays["energy_pred"], "energy", "eV/atom")
    _parity(axes[1], arrays["forces_ref"], arrays["forces_pred"], "force components", "eV/Å")
    if n == 3:
        _parity(axes[2], arrays["stress_ref"], arrays["stress_pred"], "stress", "GPa")
    fig.suptitle(title)
    return _save(fig, path)


def born_parity(arrays: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Born-charge parity: diagonal and off-diagonal components, coloured by species."""
    ref, pred, symbols = arrays["born_ref"], arrays["born_pred"], arrays["symbols"]
    diag = np.eye(3, dtype=bool)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
    groups = np.repeat(symbols[:, None], 3, axis=1)
    _parity(axes[0], ref[:, diag], pred[:, diag], "Z diagonal", "e", groups)
    groups = np.repeat(symbols[:, None], 6, axis=1)
    _parity(axes[1], ref[:, ~diag], pred[:, ~diag], "Z off-diagonal", "e", groups)
    fig.suptitle(title)
    return _save(fig, path)


def row_parity(arrays: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Paper-style baseline parity of the field-axis row."""
    fig, ax = plt.subplots(figsize=(4, 3.8))
    groups = np.repeat(arrays["symbols"][:, None], 3, axis=1)
    _parity(ax, arrays["row_ref"], arrays["row_pred"], "Z[a, :] (baseline)", "e", groups)
    fig.suptitle(title)
    return _save(fig, path)


def loss_history(histories: Sequence[Sequence[dict]], labels: Sequence[str], path: str | Path) -> Path:
    """Training and validation loss per epoch for each model (log scale)."""
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for history, label in zip(histories, labels):
        epochs = [row["epoch"] for row in history]
        ax.semilogy(epochs, [row["train_loss"] for row in history], label=f"{label} train")
        ax.semilogy(epochs, [row["val_loss"] for row in history], "--", label=f"{label} val")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    return _save(fig, path)


def learning_curve(
    sizes: Sequence[int], errors: dict[str, Sequence[float]], ylabel: str, path: str | Path
) -> Path:
    """Test error vs number of training structures (log-log)."""
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for name, values in errors.items():
        ax.loglog(sizes, values, "o-", label=name)
    ax.set_xlabel("training structures")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return _save(fig, path)
