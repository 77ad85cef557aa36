"""Transverse field forces from off-diagonal Born charges.

The field force on atom κ is ``F[κ] = Z[κ]ᵀ·E`` (eV/Å for E in V/Å). With
ê = E/|E|, ``F_∥ = F·ê`` (signed) and ``F_⊥ = F - F_∥ ê``; an isotropic
(diagonal, equal) Born tensor gives ``F_⊥ = 0``, so ``|F_⊥|`` measures the
off-diagonal / anisotropic part of Z seen along the field. ``F/|E|`` is an
effective charge (e): ``F_∥/|E| = êᵀ Z ê`` and ``|F_⊥|/|E| = |Zᵀê - (êᵀZê) ê|``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def decompose(forces: np.ndarray, field_V_per_A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split field forces into components along and across the field.

    Args:
        forces: (T, n, 3) eV/Å.
        field_V_per_A: (T, 3) V/Å, nonzero in every frame.

    Returns:
        F_par (T, n) eV/Å signed, |F_perp| (T, n) eV/Å, F_perp vectors (T, n, 3) eV/Å.
    """
    strength = np.linalg.norm(field_V_per_A, axis=-1)
    if np.any(strength <= 0):
        raise ValueError("the field is zero in some frames; the parallel direction is undefined there")
    unit = field_V_per_A / strength[:, None]
    parallel = np.einsum("tkb,tb->tk", forces, unit)
    perpendicular = forces - parallel[..., None] * unit[:, None, :]
    return parallel, np.linalg.norm(perpendicular, axis=-1), perpendicular


@dataclass
class TransverseAccumulator:
    """Streaming statistics of the field force of one species (frames arrive in chunks).

    Histograms: ``|F_⊥|/|F_∥|`` on [0, ratio_max] and ``|F_⊥|/|E|``, ``|F_∥|/|E|`` on
    [0, charge_max] (e); values above the range are counted as overflow.
    """

    ratio_threshold: float
    ratio_max: float
    charge_max: float
    bins: int
    n_atoms: int
    n_samples: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    ratio_hist: np.ndarray | None = None
    perp_hist: np.ndarray | None = None
    par_hist: np.ndarray | None = None
    overflow: dict[str, int] = field(default_factory=dict)
    frame_time: list[float] = field(default_factory=list)
    frame_perp_mean: list[float] = field(default_factory=list)
    frame_fraction: list[float] = field(default_factory=list)
    perp_values: list[np.ndarray] = field(default_factory=list)
    ratio_values: list[np.ndarray] = field(default_factory=list)
    per_atom_force_sum: np.ndarray | None = None
    per_atom_frames: int = 0
    time_averaged_perp: list[np.ndarray] = field(default_factory=list)
    max_stored_samples: int = 2_000_000
    """Bound on the values kept for exact percentiles (memory); beyond it every k-th value is kept."""
    keep_every: int = 1

    def __post_init__(self) -> None:
        self.ratio_hist = np.zeros(self.bins, dtype=np.int64)
        self.perp_hist = np.zeros(self.bins, dtype=np.int64)
        self.par_hist = np.zeros(self.bins, dtype=np.int64)
        self.overflow = {"ratio": 0, "perp_charge": 0, "par_charge": 0}
        self.sums = {k: 0.0 for k in ("perp", "par", "abs_par", "perp_charge", "par_charge", "exceed", "ratio_finite", "n_ratio_finite")}
        self.per_atom_force_sum = np.zeros((self.n_atoms, 3))

    def add(self, time_fs: np.ndarray, field_V_per_A: np.ndarray, forces: np.ndarray) -> None:
        """Add frames: times (t,), field (t, 3) V/Å, forces (t, n, 3) eV/Å of this species."""
        parallel, perp, perp_vectors = decompose(forces, field_V_per_A)
        strength = np.linalg.norm(field_V_per_A, axis=-1)[:, None]
        abs_parallel = np.abs(parallel)
        exceed = perp > self.ratio_threshold * abs_parallel
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(abs_parallel > 0, perp / abs_parallel, np.inf)
        finite = np.isfinite(ratio)
        self.n_samples += perp.size
        self.sums["perp"] += perp.sum()
        self.sums["par"] += parallel.sum()
        self.sums["abs_par"] += abs_parallel.sum()
        self.sums["perp_charge"] += (perp / strength).sum()
        self.sums["par_charge"] += (parallel / strength).sum()
        self.sums["exceed"] += exceed.sum()
        self.sums["ratio_finite"] += ratio[finite].sum()
        self.sums["n_ratio_finite"] += finite.sum()
        self._histogram("ratio", self.ratio_hist, ratio, self.ratio_max)
        self._histogram("perp_charge", self.perp_hist, perp / strength, self.charge_max)
        self._histogram("par_charge", self.par_hist, abs_parallel / strength, self.charge_max)
        self.frame_time.extend(np.asarray(time_fs, dtype=float).tolist())
        self.frame_perp_mean.extend(perp.mean(axis=1).tolist())
        self.frame_fraction.extend(exceed.mean(axis=1).tolist())
        self.perp_values.append(perp.astype(np.float32).ravel()[:: self.keep_every])
        self.ratio_values.append(ratio.astype(np.float32).ravel()[:: self.keep_every])
        if sum(v.size for v in self.perp_values) > self.max_stored_samples:
            # thin what is stored and what comes: a uniform subsample for the percentiles
            self.perp_values = [np.concatenate(self.perp_values)[::2]]
            self.ratio_values = [np.concatenate(self.ratio_values)[::2]]
            self.keep_every *= 2
        # time average of the transverse force vector per atom: a systematic sideways push
        self.per_atom_force_sum += perp_vectors.sum(axis=0)
        self.per_atom_frames += perp_vectors.shape[0]

    def end_replica(self) -> None:
        """Close one replica: store |time average of F_⊥| of each of its atoms, reset the sums."""
        if self.per_atom_frames:
            average = self.per_atom_force_sum / self.per_atom_frames
            self.time_averaged_perp.append(np.linalg.norm(average, axis=-1))
        self.per_atom_force_sum = np.zeros((self.n_atoms, 3))
        self.per_atom_frames = 0

    def _histogram(self, key: str, counts: np.ndarray, values: np.ndarray, upper: float) -> None:
        values = values[np.isfinite(values)] if key != "ratio" else values
        inside = values <= upper
        counts += np.histogram(values[inside], bins=self.bins, range=(0.0, upper))[0]
        self.overflow[key] += int((~inside).sum())

    def result(self, time_series_points: int) -> dict:
        """JSON-friendly statistics (see module docstring for the quantities)."""
        n = max(self.n_samples, 1)
        perp = np.concatenate(self.perp_values) if self.perp_values else np.zeros(0)
        ratio = np.concatenate(self.ratio_values) if self.ratio_values else np.zeros(0)
        self.end_replica()
        # per-frame values averaged over replicas that share the frame time
        times, inverse = np.unique(np.round(self.frame_time, 9), return_inverse=True)
        counts = np.bincount(inverse)
        per_frame_fraction = np.bincount(inverse, weights=self.frame_fraction) / counts
        per_frame_perp = np.bincount(inverse, weights=self.frame_perp_mean) / counts
        keep = np.unique(np.linspace(0, len(times) - 1, min(len(times), time_series_points)).astype(int))
        time_averaged_perp = (
            np.concatenate(self.time_averaged_perp) if self.time_averaged_perp else np.full(1, np.nan)
        )

        def hist(counts: np.ndarray, upper: float, key: str) -> dict:
            width = upper / self.bins
            return {
                "edges": np.linspace(0.0, upper, self.bins + 1).tolist(),
                "density": (counts / (n * width)).tolist(),
                "overflow_fraction": self.overflow[key] / n,
            }

        return {
            "n_samples": int(self.n_samples),
            "n_samples_for_percentiles": int(perp.size),
            "n_atoms": int(self.n_atoms),
            "mean_abs_perp_eV_per_A": self.sums["perp"] / n,
            "median_abs_perp_eV_per_A": float(np.median(perp)) if perp.size else float("nan"),
            "p90_abs_perp_eV_per_A": float(np.percentile(perp, 90)) if perp.size else float("nan"),
            "max_abs_perp_eV_per_A": float(perp.max()) if perp.size else float("nan"),
            "mean_par_eV_per_A": self.sums["par"] / n,
            "mean_abs_par_eV_per_A": self.sums["abs_par"] / n,
            "mean_perp_charge_e": self.sums["perp_charge"] / n,
            "mean_par_charge_e": self.sums["par_charge"] / n,
            "median_ratio": float(np.median(ratio)) if ratio.size else float("nan"),
            "mean_ratio_finite": self.sums["ratio_finite"] / max(self.sums["n_ratio_finite"], 1),
            "p90_ratio": float(np.percentile(ratio, 90)) if ratio.size else float("nan"),
            "fraction_above_threshold": self.sums["exceed"] / n,
            "ratio_threshold": self.ratio_threshold,
            "time_average": {
                "fraction_above_threshold_mean": float(per_frame_fraction.mean()),
                "fraction_above_threshold_std": float(per_frame_fraction.std(ddof=1)) if per_frame_fraction.size > 1 else 0.0,
                "mean_abs_perp_mean_eV_per_A": float(per_frame_perp.mean()),
                "mean_abs_perp_std_eV_per_A": float(per_frame_perp.std(ddof=1)) if per_frame_perp.size > 1 else 0.0,
                "per_atom_time_averaged_abs_perp_mean_eV_per_A": float(time_averaged_perp.mean()),
                "per_atom_time_averaged_abs_perp_max_eV_per_A": float(time_averaged_perp.max()),
            },
            "time_series": {
                "time_fs": times[keep].tolist(),
                "mean_abs_perp_eV_per_A": per_frame_perp[keep].tolist(),
                "fraction_above_threshold": per_frame_fraction[keep].tolist(),
            },
            "histograms": {
                "ratio": hist(self.ratio_hist, self.ratio_max, "ratio"),
                "perp_charge_e": hist(self.perp_hist, self.charge_max, "perp_charge"),
                "abs_par_charge_e": hist(self.par_hist, self.charge_max, "par_charge"),
            },
        }
