"""Structure report of one set (JSON + PNG): density, partial RDFs, coordination, PO4/P2O7.

For sets with several cells (amorphous) every metric is given as mean, standard
deviation, min, max and the per-cell values. Acceptance checks for amorphous
sets (LI3PO4_FACTS.md / structures brief): density 2.2–2.5 g/cm^3, P–O first
peak 1.50–1.58 Å, at least 95 % of P four-fold coordinated.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from ase import Atoms

from bornfield.atomic import atomic_path
from bornfield.structures.analysis import RDF_PAIRS, analyse_structure

SCALAR_METRICS = (
    "density_g_cm3", "P-O_first_peak_A", "Li-O_first_peak_A", "O-O_first_peak_A", "Li-Li_first_peak_A",
    "P-O_mean_bond_A", "P-O_min_bond_A", "P-O_max_bond_A", "Li-O_mean_bond_A",
    "P-O_coordination", "Li-O_coordination", "P_fourfold_fraction", "isolated_PO4_fraction",
    "bridging_O", "P2O7_count",
)

#: info keys of melt-quench cells reported (mean ± std over cells) when present
MELT_QUENCH_KEYS = ("pressure_before_anneal_bar", "anneal_density_g_cm3")
#: info keys of NN-equilibrated cells (bornfield.structures.nn_equilibration) reported when present
NN_KEYS = ("classical_density_g_cm3", "nn_density_g_cm3", "nn_density_std_g_cm3", "nn_density_drift_g_cm3_per_ps",
           "nn_force_uncertainty_max_eV_per_A")

#: acceptance windows for amorphous Li3PO4: metric -> (low, high)
AMORPHOUS_ACCEPTANCE = {
    "density_g_cm3": (2.2, 2.5),
    "P-O_first_peak_A": (1.50, 1.58),
    "P_fourfold_fraction": (0.95, 1.0),
}


def _stats(values: list[float]) -> dict:
    array = np.asarray(values, dtype=float)
    return {"mean": float(np.mean(array)), "std": float(np.std(array, ddof=1)) if array.size > 1 else 0.0,
            "min": float(np.min(array)), "max": float(np.max(array)), "values": array.tolist()}


def build_report(images: list[Atoms], set_name: str, settings: dict) -> dict:
    """Report dict of a set of structures (all analysed), JSON-serialisable.

    Args:
        images: the structures of the set (e.g. N amorphous cells).
        set_name: label (``beta``, ``amorphous``, ...).
        settings: validated ``structures.report`` settings.
    """
    per_cell = [analyse_structure(a, settings["rdf_rmax_A"], settings["rdf_bin_A"],
                                  settings["p_o_cutoff_A"], settings["li_o_cutoff_A"]) for a in images]
    metrics = {key: _stats([c[key] for c in per_cell]) for key in SCALAR_METRICS}
    r = per_cell[0]["rdf"]["r_A"]
    rdf = {"r_A": np.round(r, 6).tolist()}
    for a, b in RDF_PAIRS:
        key = f"{a}-{b}"
        stack = np.array([c["rdf"][key] for c in per_cell])
        rdf[key] = np.round(stack.mean(axis=0), 6).tolist()
        rdf[f"{key}_std"] = np.round(stack.std(axis=0), 6).tolist()
    report = {
        "set": set_name,
        "n_structures": len(images),
        "n_atoms": [len(a) for a in images],
        "structure_ids": [a.info.get("structure_id") for a in images],
        "config_types": sorted({str(a.info.get("config_type")) for a in images}),
        "cutoffs_A": {"P-O": settings["p_o_cutoff_A"], "Li-O": settings["li_o_cutoff_A"]},
        "metrics": metrics,
        "rdf": rdf,
    }
    for key in (*MELT_QUENCH_KEYS, *NN_KEYS):
        values = [float(a.info[key]) for a in images if key in a.info]
        if values:
            report["metrics"][key] = _stats(values)
    if any(a.info.get("config_type") == "amorphous" for a in images):
        report["acceptance"] = acceptance(metrics)
    return report


def acceptance(metrics: dict) -> dict:
    """Per-metric acceptance of an amorphous set: the mean must lie in the window."""
    out = {}
    for key, (low, high) in AMORPHOUS_ACCEPTANCE.items():
        mean = metrics[key]["mean"]
        out[key] = {"window": [low, high], "mean": mean, "std": metrics[key]["std"],
                    "pass": bool(math.isfinite(mean) and low <= mean <= high)}
    out["all_pass"] = all(v["pass"] for v in out.values())
    return out


def plot_report(report: dict, path: str | Path) -> None:
    """Partial RDFs (mean ± std over cells) with the key numbers, saved as PNG (atomically)."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    rdf = report["rdf"]
    r = np.asarray(rdf["r_A"])
    fig, axes = plt.subplots(1, len(RDF_PAIRS), figsize=(4 * len(RDF_PAIRS), 3.6), constrained_layout=True)
    for ax, (a, b) in zip(axes, RDF_PAIRS):
        key = f"{a}-{b}"
        g, s = np.asarray(rdf[key]), np.asarray(rdf[f"{key}_std"])
        ax.plot(r, g, lw=1.2, label=key)
        if report["n_structures"] > 1:
            ax.fill_between(r, g - s, g + s, alpha=0.3, lw=0)
        peak = report["metrics"][f"{key}_first_peak_A"]["mean"]
        if math.isfinite(peak):
            ax.axvline(peak, ls=":", c="k", lw=0.8)
            ax.set_title(f"g$_{{{key}}}$(r), first peak {peak:.3f} Å")
        else:
            ax.set_title(f"g$_{{{key}}}$(r), no first peak")
        ax.set_xlabel("r (Å)")
        ax.set_ylabel("g(r)")
    m = report["metrics"]
    text = (f"{report['set']}: {report['n_structures']} cell(s), {report['n_atoms'][0]} atoms; "
            f"density {m['density_g_cm3']['mean']:.3f} ± {m['density_g_cm3']['std']:.3f} g/cm³; "
            f"CN(P–O) {m['P-O_coordination']['mean']:.2f}, CN(Li–O) {m['Li-O_coordination']['mean']:.2f}; "
            f"P four-fold {100 * m['P_fourfold_fraction']['mean']:.0f} %; "
            f"P2O7 {m['P2O7_count']['mean']:.1f} per cell")
    if "nn_density_g_cm3" in m:
        text += f"\nNN-equilibrated (NPT): classical {m['classical_density_g_cm3']['mean']:.3f} → NN " \
                f"{m['nn_density_g_cm3']['mean']:.3f} g/cm³ (fluctuation ± {m['nn_density_std_g_cm3']['mean']:.3f})"
        if "nn_force_uncertainty_max_eV_per_A" in m:
            text += f"; committee force spread max {m['nn_force_uncertainty_max_eV_per_A']['max']:.2f} eV/Å"
    elif "anneal_density_g_cm3" in m:
        text += f"\nrelaxed cells; during the NPT anneal: {m['anneal_density_g_cm3']['mean']:.3f} ± " \
                f"{m['anneal_density_g_cm3']['std']:.3f} g/cm³"
    fig.suptitle(text, fontsize=9)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
