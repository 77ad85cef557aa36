"""Supercells closest to cubic that reach a target atom count."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import make_supercell

from bornfield.errors import ConfigError


def perpendicular_widths(cell: np.ndarray) -> np.ndarray:
    """Distances (Å) between opposite faces of a cell with rows as cell vectors."""
    cell = np.asarray(cell, dtype=float)
    volume = abs(np.linalg.det(cell))
    return np.array(
        [volume / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)]
    )


def choose_repetition(
    atoms: Atoms, target_atoms: int, max_excess_fraction: float = 0.5, max_repeat: int = 20
) -> tuple[int, int, int]:
    """Diagonal repetition (n1, n2, n3) of ``atoms`` with at least ``target_atoms``.

    Among repetitions with ``target <= N <= target * (1 + max_excess_fraction)``
    the one closest to cubic wins, measured by the smallest face-to-face width
    divided by V^(1/3) (1 for a cube); ties go to fewer atoms. If no
    repetition falls in that window, the smallest N >= target is used.
    """
    if target_atoms < 1:
        raise ConfigError(f"supercell target_atoms must be >= 1, got {target_atoms}")
    n0 = len(atoms)
    if n0 == 0:
        raise ConfigError("cannot build a supercell of an empty structure")
    min_cells = -(-target_atoms // n0)  # ceil
    max_cells = max(min_cells, int(target_atoms * (1.0 + max_excess_fraction)) // n0)
    if min_cells > max_repeat**3:
        raise ConfigError(
            f"no repetition up to {max_repeat} per axis reaches target_atoms={target_atoms} "
            f"from a {n0}-atom cell"
        )
    r = np.arange(1, min(max_repeat, max_cells) + 1)
    reps = np.array(np.meshgrid(r, r, r, indexing="ij")).reshape(3, -1).T
    cells = reps.prod(axis=1)
    reps = reps[(cells >= min_cells) & (cells <= max_cells)]
    cells = reps.prod(axis=1)
    lattice = atoms.cell[:]
    volume = abs(np.linalg.det(lattice)) * cells
    # face-to-face widths of the supercell: n_i * (width of the unit cell along i)
    widths = reps * perpendicular_widths(lattice)[None, :]
    cubicity = np.round(widths.min(axis=1) / np.cbrt(volume), 6)
    in_window = cells * n0 <= target_atoms * (1.0 + max_excess_fraction)
    if in_window.any():
        order = np.lexsort((reps[:, 2], reps[:, 1], reps[:, 0], cells, -cubicity, ~in_window))
    else:
        order = np.lexsort((reps[:, 2], reps[:, 1], reps[:, 0], -cubicity, cells))
    return tuple(int(x) for x in reps[order[0]])


def build_supercell(atoms: Atoms, repetition: tuple[int, int, int]) -> Atoms:
    """Diagonal supercell; keeps ``info`` and records the repetition in ``info["supercell"]``."""
    if any(int(r) < 1 for r in repetition):
        raise ConfigError(f"supercell repetition must be positive integers, got {list(repetition)}")
    supercell = make_supercell(atoms, np.diag(repetition), order="atom-major")
    # keep species blocks together: Li..., P..., O...
    order = np.argsort([{3: 0, 15: 1, 8: 2}.get(int(z), 3) for z in supercell.numbers], kind="stable")
    supercell = supercell[order]
    supercell.info = dict(atoms.info)
    supercell.info["supercell"] = [int(r) for r in repetition]
    return supercell
