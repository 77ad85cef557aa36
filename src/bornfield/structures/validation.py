"""Validation of the Pedone potential on the Li3PO4 crystals (box relaxation).

The Pedone 2006 potential was not fitted to Li3PO4, so before it makes glasses
we relax beta and gamma supercells (positions + anisotropic box, 0 bar) and
compare with experiment (Keffer 1967; Wang 1995): lattice constants within
``tolerance`` (3 %), P–O bonds, Li–O coordination, space group kept.
"""

from __future__ import annotations

import numpy as np

from bornfield.structures.analysis import coordination
from bornfield.structures.crystals import PHASES, build_crystal, density_g_cm3, spacegroup_of
from bornfield.structures.meltquench import PedoneLammpsEngine
from bornfield.structures.supercells import build_supercell, choose_repetition


def validate_pedone_on_crystals(lammps: dict, phases=("beta", "gamma"), target_atoms: int = 64,
                                tolerance: float = 0.03) -> dict:
    """Relax each crystal with the Pedone engine and compare with experiment.

    ``lammps``: the ``structures.amorphous.lammps`` settings (cutoff_A, kspace_accuracy, thermo_every).

    Returns:
        dict per phase: experimental and relaxed lattice (Å), relative
        deviations, P–O bond range (Å), Li–O coordination, space group after
        relaxation (symprec 0.05 Å), density (g/cm^3), ``pass``; and
        ``all_pass``.
    """
    engine = PedoneLammpsEngine(cutoff=lammps["cutoff_A"], kspace_accuracy=lammps["kspace_accuracy"],
                                thermo_every=lammps["thermo_every"], progress=False)
    out: dict = {"potential": "Pedone et al., J. Phys. Chem. B 110, 11780 (2006)", "tolerance": tolerance,
                 "phases": {}}
    for phase in phases:
        unit = build_crystal(phase)
        reps = choose_repetition(unit, target_atoms, 0.5)
        cell = build_supercell(unit, reps)
        relaxed, summary = engine.relax(cell, box="aniso")
        lattice = relaxed.cell.lengths() / np.asarray(reps)
        experiment = np.asarray(PHASES[phase].cellpar[:3])
        deviation = lattice / experiment - 1.0
        _, cn_p, d_po = coordination(relaxed, "P", "O", 2.0)
        _, cn_li, d_lio = coordination(relaxed, "Li", "O", 2.6)
        symbol, number = spacegroup_of(relaxed, symprec=0.05)
        ok = bool(np.all(np.abs(deviation) <= tolerance) and np.all(cn_p == 4))
        out["phases"][phase] = {
            "supercell": list(reps),
            "n_atoms": len(cell),
            "lattice_experiment_A": experiment.tolist(),
            "lattice_relaxed_A": lattice.round(5).tolist(),
            "relative_deviation": deviation.round(5).tolist(),
            "angles_relaxed_deg": relaxed.cell.angles().round(3).tolist(),
            "P-O_bond_range_A": [float(d_po.min()), float(d_po.max())],
            "P-O_coordination": float(cn_p.mean()),
            "Li-O_coordination": float(cn_li.mean()),
            "Li-O_mean_bond_A": float(d_lio.mean()),
            "spacegroup_relaxed": f"{symbol} ({number})",
            "spacegroup_experiment": f"{PHASES[phase].symbol} ({PHASES[phase].spacegroup})",
            "density_relaxed_g_cm3": density_g_cm3(relaxed),
            "density_experiment_g_cm3": PHASES[phase].density_g_cm3,
            "residual_pressure_bar": summary["pressure_bar"],
            "pass": ok,
        }
    out["all_pass"] = all(v["pass"] for v in out["phases"].values())
    return out
