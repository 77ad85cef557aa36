"""Supercells closest to cubic that reach a target atom count."""

from __future__ import annotations

import itertools

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
    best_key, best = None, None
    fallback_key, fallback = None, None
    upper = target_atoms * (1.0 + max_excess_fraction)
    for reps in itertools.product(range(1, max_repeat + 1), repeat=3):
        n = n0 * reps[0] * reps[1] * reps[2]
        if n < target_atoms:
            continue
        cell = atoms.cell[:] * np.asarray(reps)[:, None]
        widths = perpendicular_widths(cell)
        cubicity = widths.min() / abs(np.linalg.det(cell)) ** (1.0 / 3.0)
        if n <= upper:
            key = (-round(cubicity, 6), n, reps)
            if best_key is None or key < best_key:
                best_key, best = key, reps
        key = (n, -round(cubicity, 6), reps)
        if fallback_key is None or key < fallback_key:
            fallback_key, fallback = key, reps
    if best is None and fallback is None:
        raise ConfigError(
            f"no repetition up to {max_repeat} per axis reaches target_atoms={target_atoms} "
            f"from a {n0}-atom cell"
        )
    return tuple(int(r) for r in (best if best is not None else fallback))


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
