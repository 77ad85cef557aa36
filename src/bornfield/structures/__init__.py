"""STRUCTURES stage: Li3PO4 crystals, supercells, Li defects, perturbed DFT
candidates, amorphous cells by melt-quench (LAMMPS) and structure reports.

Outputs (under ``{results_dir}/structures/``): ``md_cells/<phase>.extxyz``,
``dft_candidates.extxyz`` and ``report/<set>.json|png``; see
``docs/architecture.md``.
"""

SPECIES = ("Li", "P", "O")
"""Elements of every structure the stage builds (Li3PO4 and its Li defects), in LAMMPS type order."""
