"""Reading and atomically writing extxyz structure files."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from ase import Atoms
from ase.io import read, write

from bornfield import atomic
from bornfield.errors import InputFileError
from bornfield.structures.identity import REQUIRED_INFO_KEYS


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
    """Read every frame of an extxyz file.

    Raises:
        InputFileError: missing, empty or malformed file, or (with
            ``require_info``) a frame without the stage's info keys.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"structure file not found: {path}")
    if path.stat().st_size == 0:
        raise InputFileError(f"structure file is empty: {path}")
    try:
        images = read(path, index=":", format="extxyz")
    except Exception as exc:  # ase raises many types for malformed text
        raise InputFileError(f"{path}: not a readable extxyz file ({type(exc).__name__}: {exc})") from exc
    if not images:
        raise InputFileError(f"{path}: no structures in file")
    for number, atoms in enumerate(images):
        if len(atoms) == 0:
            raise InputFileError(f"{path}: frame {number} has no atoms")
        if not np.all(np.isfinite(atoms.positions)):
            raise InputFileError(f"{path}: frame {number} has non-finite positions")
        if require_info:
            missing = [key for key in REQUIRED_INFO_KEYS if key not in atoms.info]
            if missing:
                raise InputFileError(f"{path}: frame {number} lacks info keys {missing}")
    return images
