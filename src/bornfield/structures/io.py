"""Reading, checking and atomically writing extxyz structure files.

:func:`check_structure` is the door every stage's structure input goes through
(``structures``, ``dft plan``/``run``, ``train explore``/``select``, ``predict``,
``md run``): finite positions and cell, no two atoms closer than
:data:`MIN_DISTANCE_A`, only known elements -- with the file and frame named, so a
broken structure never reaches QE or a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from ase import Atoms
from ase.io import read, write

from bornfield import atomic
from bornfield.errors import InputFileError
from bornfield.structures import SPECIES
from bornfield.structures.identity import REQUIRED_INFO_KEYS

MIN_DISTANCE_A = 0.5
"""Two atoms closer than this (Å) are coincident or the structure is broken (the shortest
bond of Li3PO4, P-O, is 1.54 Å; melt snapshots at 3000 K stay above 1.2 Å)."""


def check_structure(atoms: Atoms, where: str, species=SPECIES, min_distance_A: float = MIN_DISTANCE_A) -> None:
    """Raise InputFileError (message starts with ``where``, e.g. "cells.extxyz frame 3") unless
    ``atoms`` has atoms, finite positions, a finite non-degenerate cell along its periodic
    directions, only elements of ``species`` (None: any) and no pair closer than ``min_distance_A``."""
    from ase.neighborlist import neighbor_list

    if len(atoms) == 0:
        raise InputFileError(f"{where}: no atoms")
    bad = np.flatnonzero(~np.isfinite(atoms.positions).all(axis=1))
    if bad.size:
        k = int(bad[0])
        raise InputFileError(f"{where}: atom {k} ({atoms[k].symbol}) has position {atoms.positions[k].tolist()} "
                             f"({bad.size} atom(s) with non-finite positions)")
    if not np.isfinite(atoms.cell.array).all():
        raise InputFileError(f"{where}: cell {atoms.cell.array.tolist()} is not finite")
    degenerate = (atoms.pbc & (atoms.cell.lengths() < 1e-6)).any() or (atoms.pbc.all() and abs(atoms.cell.volume) < 1e-6)
    if degenerate:
        raise InputFileError(f"{where}: periodic cell {atoms.cell.array.tolist()} has zero length or volume")
    if species is not None:
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(species))
        if unknown:
            raise InputFileError(f"{where}: element(s) {unknown} not known here; allowed: {list(species)}")
    i, j, d = neighbor_list("ijd", atoms, min_distance_A)
    if len(d):
        k = int(np.argmin(d))
        raise InputFileError(
            f"{where}: atoms {int(i[k])} ({atoms[int(i[k])].symbol}) and {int(j[k])} ({atoms[int(j[k])].symbol}) "
            f"are {d[k]:.3f} Å apart (closest allowed {min_distance_A} Å): coincident or broken structure")


def read_checked(path: str | Path, species=SPECIES, index: str = ":") -> list[Atoms]:
    """Every frame (``index``) of an extxyz file, each passed through :func:`check_structure`."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"structure file not found: {path}")
    if path.stat().st_size == 0:
        raise InputFileError(f"structure file is empty: {path}")
    try:
        images = read(path, index=index, format="extxyz")
    except Exception as exc:  # ase raises many types for malformed text
        raise InputFileError(f"{path}: not a readable extxyz file ({type(exc).__name__}: {exc})") from exc
    if not images:
        raise InputFileError(f"{path}: no structures in file")
    for number, atoms in enumerate(images):
        check_structure(atoms, f"{path} frame {number}", species)
    return images


def write_extxyz_atomic(path: str | Path, images: Iterable[Atoms]) -> Path:
    """Write ``images`` to ``path`` (extxyz) via a temporary file and a rename.

    A crash mid-write never leaves a partial file under the final name.
    """
    path = Path(path)
    images = list(images)
    if not images:
        raise ValueError(f"refusing to write an empty structure file {path}")
    clean = []
    for atoms in images:
        copy = atoms.copy()
        copy.calc = None
        clean.append(copy)
    with atomic.atomic_path(path) as tmp:
        write(tmp, clean, format="extxyz")
    return path


def write_json_atomic(path: str | Path, data: object) -> Path:
    """Write JSON via a temporary file and a rename."""
    return atomic.write_json(path, data, indent=2, sort_keys=True)


def read_structures(path: str | Path, require_info: bool = True) -> list[Atoms]:
    """Read every frame of an extxyz file of the structures stage (checked: :func:`check_structure`).

    Raises:
        InputFileError: missing, empty, malformed or broken structure file, or (with
            ``require_info``) a frame without the stage's info keys.
    """
    images = read_checked(path)
    for number, atoms in enumerate(images):
        if require_info:
            missing = [key for key in REQUIRED_INFO_KEYS if key not in atoms.info]
            if missing:
                raise InputFileError(f"{path}: frame {number} lacks info keys {missing}")
    return images
