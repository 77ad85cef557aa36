"""Quality gates on DFT labels.

SCF labels are kept when the SCF converged with finite forces; Born charges are kept
only when, in addition, the raw acoustic-sum-rule residual is below a threshold and
ε∞ is symmetric positive definite. A rejected structure keeps its SCF labels, loses
its Born charges and is listed with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class QCThresholds:
    """Gate thresholds (from ``dft.qc``)."""

    max_asr_residual_e: float
    max_epsilon_asymmetry: float
    max_force_eV_per_A: float

    @classmethod
    def from_section(cls, section: dict) -> QCThresholds:
        """Build from resolved ``dft`` settings (reads ``dft.qc``)."""
        qc = section["qc"]
        return cls(
            max_asr_residual_e=float(qc["max_asr_residual_e"]),
            max_epsilon_asymmetry=float(qc["max_epsilon_asymmetry"]),
            max_force_eV_per_A=float(qc["max_force_eV_per_A"]),
        )

    @classmethod
    def defaults(cls, **changes) -> QCThresholds:
        """The schema's default ``dft.qc`` thresholds with some changed (scripts, tests)."""
        from bornfield.config import default_settings

        return replace(cls.from_section(default_settings().dft), **changes)


@dataclass
class QCResult:
    """Outcome of the gates: which labels survive, and why others do not."""

    scf_ok: bool
    bec_ok: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {"scf_ok": self.scf_ok, "bec_ok": self.bec_ok, "reasons": list(self.reasons)}


def check_scf(forces: np.ndarray | None, energy: float | None, thresholds: QCThresholds) -> list[str]:
    """Reasons to reject SCF labels (empty list: accepted). Forces eV/Å, energy eV."""
    reasons = []
    if energy is None or not np.isfinite(energy):
        reasons.append("SCF energy missing or not finite")
    if forces is None:
        reasons.append("SCF forces missing")
    elif not np.all(np.isfinite(forces)):
        reasons.append("SCF forces not finite")
    elif np.abs(forces).max() > thresholds.max_force_eV_per_A:
        reasons.append(
            f"max |force| {np.abs(forces).max():.2f} eV/Å above {thresholds.max_force_eV_per_A} eV/Å (unphysical structure?)"
        )
    return reasons


def check_bec(asr_residual: np.ndarray, epsilon_inf: np.ndarray, born_charges_raw: np.ndarray, thresholds: QCThresholds) -> list[str]:
    """Reasons to reject Born charges (empty list: accepted).

    asr_residual (3,3) e; epsilon_inf (3,3); born_charges_raw (N,3,3) e.
    """
    reasons = []
    if not (np.all(np.isfinite(born_charges_raw)) and np.all(np.isfinite(epsilon_inf))):
        return ["Born charges or epsilon_inf not finite"]
    residual = float(np.abs(asr_residual).max())
    if residual > thresholds.max_asr_residual_e:
        reasons.append(f"max |ASR residual| {residual:.3f} e above {thresholds.max_asr_residual_e} e")
    asym = float(np.abs(epsilon_inf - epsilon_inf.T).max())
    if asym > thresholds.max_epsilon_asymmetry:
        reasons.append(f"epsilon_inf not symmetric (max |ε-εᵀ| = {asym:.2e})")
    eigenvalues = np.linalg.eigvalsh(0.5 * (epsilon_inf + epsilon_inf.T))
    if eigenvalues.min() <= 0:
        reasons.append(f"epsilon_inf not positive definite (eigenvalues {np.round(eigenvalues, 4).tolist()})")
    elif eigenvalues.min() < 1.0:
        reasons.append(f"epsilon_inf has an eigenvalue {eigenvalues.min():.3f} < 1 (unphysical for an insulator)")
    return reasons


def run_gates(
    scf_labels: dict | None,
    bec_labels: dict | None,
    thresholds: QCThresholds,
) -> QCResult:
    """Apply all gates to the labels of one job.

    ``scf_labels``: {"energy": eV, "forces": (N,3)} or None (SCF failed);
    ``bec_labels``: {"asr_residual", "epsilon_inf", "born_charges_raw"} or None (no DFPT).
    """
    if scf_labels is None:
        return QCResult(False, False, ["SCF failed"])
    reasons = check_scf(np.asarray(scf_labels.get("forces")), scf_labels.get("energy"), thresholds)
    if reasons:
        return QCResult(False, False, reasons)
    if bec_labels is None:
        return QCResult(True, False, ["no Born charges (DFPT failed or not requested)"])
    bec_reasons = check_bec(
        np.asarray(bec_labels["asr_residual"]),
        np.asarray(bec_labels["epsilon_inf"]),
        np.asarray(bec_labels["born_charges_raw"]),
        thresholds,
    )
    return QCResult(True, not bec_reasons, bec_reasons)
