"""Provenance of generated structures: derived seeds, stable ids, info keys."""

from __future__ import annotations

import hashlib

import numpy as np
from ase import Atoms

#: Keys every structure written by this stage carries in ``atoms.info``.
REQUIRED_INFO_KEYS = ("config_type", "structure_id", "seed", "source")


def derive_seed(master_seed: int, *labels: object) -> int:
    """A reproducible 31-bit seed from the master seed and a tuple of labels.

    Independent streams (one per phase, defect, copy, melt-quench cell) come
    from hashing the labels, so adding a structure never shifts the seeds of
    the others.
    """
    text = "|".join([str(int(master_seed)), *map(str, labels)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def structure_id(atoms: Atoms, decimals: int = 5) -> str:
    """Stable 12-hex-digit hash of atomic numbers, positions and cell.

    Positions and cell are rounded to ``decimals`` places in Å, so the id is
    insensitive to float noise from reading/writing extxyz.
    """
    digest = hashlib.sha256()
    digest.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    for array in (atoms.positions, atoms.cell[:]):
        rounded = np.round(np.asarray(array, dtype=np.float64), decimals) + 0.0  # no -0.0
        digest.update(rounded.tobytes())
    digest.update(np.asarray(atoms.pbc, dtype=np.int8).tobytes())
    return digest.hexdigest()[:12]


def annotate(atoms: Atoms, *, config_type: str, seed: int | None, source: str, **extra) -> Atoms:
    """Set the stage's info keys in place and return ``atoms``.

    ``seed`` is the seed of the random operation that produced the structure
    (-1 for deterministic structures, stored so every record has the key).
    The ``structure_id`` is computed last, from the final geometry.
    """
    atoms.info["config_type"] = config_type
    atoms.info["seed"] = -1 if seed is None else int(seed)
    atoms.info["source"] = source
    for key, value in extra.items():
        atoms.info[key] = value
    atoms.info["structure_id"] = structure_id(atoms)
    return atoms
