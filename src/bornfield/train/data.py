"""Labelled structures for training: reading extxyz, label extraction, splits, statistics.

Label keys follow the project design notes: ``info["energy"]`` (eV),
``info["stress"]`` (ASE convention, eV/Å³), ``arrays["forces"]`` (eV/Å),
``arrays["born_charges"]`` (9 floats per atom, row-major, α major) —
ASE's extxyz reader may move energy/forces/stress into a
SinglePointCalculator, so both places are read.

Born-charge targets are ASR-corrected before training exactly as the model
output is (subtract the per-structure mean tensor); the raw residual is
kept for reporting.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read

from bornfield.errors import InputFileError
from bornfield.fieldphysics import asr_correct
from bornfield.structures.io import check_structure
from bornfield.models.graph import StructureEdges, structure_edges


@dataclass
class Sample:
    """One labelled structure and its neighbour list."""

    index: int  # position in the dataset file
    atoms: Atoms
    config_type: str
    energy: float | None  # eV
    forces: np.ndarray | None  # (n, 3) eV/Å
    stress: np.ndarray | None  # (3, 3) eV/Å³
    born: np.ndarray | None  # (n, 3, 3) e, ASR-corrected
    born_asr_residual: np.ndarray | None = None  # (3, 3) e, sum over atoms of the raw tensors
    charge: float = 0.0  # total charge of the cell (e), info["charge"]; non-zero for charged defects
    edges: StructureEdges | None = field(default=None, repr=False)

    @property
    def n_atoms(self) -> int:
        return len(self.atoms)


def _stress_matrix(value, where: str) -> np.ndarray:
    s = np.asarray(value, dtype=float).reshape(-1)
    if s.size == 9:
        return s.reshape(3, 3)
    if s.size == 6:  # Voigt xx yy zz yz xz xy
        xx, yy, zz, yz, xz, xy = s
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise InputFileError(f"{where}: stress has {s.size} values, expected 6 (Voigt) or 9")


def labels_of(atoms: Atoms, where: str) -> tuple:
    """(energy, forces, stress, born_raw) of one frame; absent labels are None."""
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    energy = atoms.info.get("energy", results.get("energy"))
    forces = atoms.arrays.get("forces", results.get("forces"))
    stress = atoms.info.get("stress", results.get("stress"))
    born = atoms.arrays.get("born_charges")
    if born is None:
        born = results.get("born_effective_charges")
    n = len(atoms)
    if energy is not None and not np.isfinite(float(energy)):
        raise InputFileError(f"{where}: label 'energy' is {float(energy)} (not finite)")
    if forces is not None:
        forces = np.asarray(forces, dtype=float)
        if forces.shape != (n, 3):
            raise InputFileError(f"{where}: forces have shape {forces.shape}, expected ({n}, 3)")
        _finite_per_atom(atoms, forces, "forces", where)
    if born is not None:
        born = np.asarray(born, dtype=float)
        if born.size != 9 * n:
            raise InputFileError(f"{where}: born_charges has {born.size} values, expected 9 per atom ({9 * n})")
        born = born.reshape(n, 3, 3)
        _finite_per_atom(atoms, born, "born_charges", where)
    if stress is not None:
        stress = _stress_matrix(stress, where)
        if not np.isfinite(stress).all():
            raise InputFileError(f"{where}: label 'stress' is {stress.reshape(-1).tolist()} (not finite)")
    return None if energy is None else float(energy), forces, stress, born


def _finite_per_atom(atoms: Atoms, values: np.ndarray, key: str, where: str) -> None:
    """InputFileError naming the first atom whose ``key`` label is NaN or infinite."""
    bad = np.flatnonzero(~np.isfinite(values.reshape(len(atoms), -1)).all(axis=1))
    if bad.size:
        k = int(bad[0])
        raise InputFileError(f"{where}, atom {k} ({atoms[k].symbol}): label '{key}' is "
                             f"{values[k].reshape(-1).tolist()} (not finite; {bad.size} atom(s) affected)")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of the dataset file (the training-data hash written into model files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_samples(paths: str | Path | Sequence[str | Path]) -> list[Sample]:
    """Read one or several extxyz datasets into :class:`Sample` objects (file order kept)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    samples: list[Sample] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise InputFileError(f"dataset not found: {path}")
        try:
            frames = read(path, index=":", format="extxyz")
        except Exception as exc:  # ASE raises several types on malformed extxyz
            raise InputFileError(f"{path}: not a readable extxyz file: {exc}") from exc
        samples.extend(samples_of(frames, str(path), first_index=len(samples)))
    if not samples:
        raise InputFileError(f"no structures in {', '.join(map(str, paths))}")
    return samples


def samples_of(frames: Sequence[Atoms], source: str, first_index: int = 0) -> list[Sample]:
    """Labelled Atoms (DESIGN.md keys or an ASE calculator) as :class:`Sample` objects.

    Sample ``k`` gets ``index`` ``first_index + k``; errors name ``"<source> frame <k>"``.
    """
    samples = []
    for k, atoms in enumerate(frames):
        where = f"{source} frame {k}"
        check_structure(atoms, where, species=None)
        energy, forces, stress, born = labels_of(atoms, where)
        residual = None
        if born is not None:
            residual = born.sum(axis=0)
            born = asr_correct(born)
        samples.append(
            Sample(
                index=first_index + k,
                atoms=atoms,
                config_type=str(atoms.info.get("config_type", "unknown")),
                energy=energy,
                forces=forces,
                stress=stress,
                born=born,
                born_asr_residual=residual,
                charge=float(atoms.info.get("charge", 0.0) or 0.0),
            )
        )
    return samples


def attach_edges(samples: Sequence[Sample], species: Sequence[str], cutoff: float) -> None:
    """Compute (once) the neighbour list of every sample."""
    for s in samples:
        if s.edges is None or s.edges.cutoff != cutoff:
            a = s.atoms
            s.edges = structure_edges(a.positions, a.numbers, np.asarray(a.cell), a.pbc, species, cutoff)


def dataset_species(samples: Sequence[Sample]) -> list[str]:
    """Chemical symbols present, ordered by atomic number."""
    from ase.data import chemical_symbols

    numbers = sorted({int(z) for s in samples for z in s.atoms.numbers})
    return [chemical_symbols[z] for z in numbers]


def stratified_split(
    samples: Sequence[Sample], val_fraction: float, test_fraction: float, seed: int,
    val_exclude: Sequence[str] = (),
) -> dict[str, list[int]]:
    """Split structures into train/val/test, stratified by ``config_type``.

    Within each config_type the structures are shuffled with ``seed`` and
    ``round(n * fraction)`` go to test and validation; every config_type
    keeps at least one training structure, and a group of one structure
    goes to training. A subset asked for (fraction > 0) that comes out empty
    -- small datasets of many singleton config_types -- gets one structure
    from the largest training group (ties: first name), as long as one
    training structure remains. Config types in ``val_exclude`` never go to
    validation. Returns sorted sample indices per split.
    """
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for s in samples:
        groups.setdefault(s.config_type, []).append(s.index)
    split = {"train": [], "val": [], "test": []}
    for name in sorted(groups):
        members = np.array(groups[name])
        rng.shuffle(members)
        n = len(members)
        n_test = min(int(round(n * test_fraction)), max(n - 1, 0))
        n_val = 0 if name in val_exclude else min(int(round(n * val_fraction)), max(n - 1 - n_test, 0))
        split["test"].extend(members[:n_test].tolist())
        split["val"].extend(members[n_test : n_test + n_val].tolist())
        split["train"].extend(members[n_test + n_val :].tolist())
    config_type = {s.index: s.config_type for s in samples}
    for subset, fraction in (("test", test_fraction), ("val", val_fraction)):
        if fraction > 0 and not split[subset] and len(split["train"]) > 1:
            sizes = {name: sum(config_type[i] == name for i in split["train"]) for name in sorted(groups)
                     if not (subset == "val" and name in val_exclude)}
            if not sizes:
                continue
            donor = max(sorted(sizes), key=lambda name: sizes[name])
            moved = next(i for i in split["train"] if config_type[i] == donor)
            split["train"].remove(moved)
            split[subset].append(moved)
    return {k: sorted(v) for k, v in split.items()}


def carve_validation(samples: Sequence[Sample], train: Sequence[int], val_fraction: float, seed: int,
                     val_exclude: Sequence[str] = ()) -> dict[str, list[int]]:
    """Validation rows carved from the training rows ``train`` of a predefined split (e.g. the ledger's).

    Rows with Born-charge labels and rows without are carved separately, ``round(n * val_fraction)``
    of each group with at least one training row left in it, so the scarce DFPT rows go to
    validation in proportion to their own number. Within a group rows are ordered by
    ``sha256(seed, dft_id)`` (the row index when a row has no ``dft_id``): the choice does not
    depend on the order of the dataset file, and rows added later change it only where they
    enter the order. Rows whose config type is in ``val_exclude`` stay in training.
    Returns sorted dataset indices ``{"train": [...], "val": [...]}``.
    """
    def order_key(index: int) -> str:
        name = samples[index].atoms.info.get("dft_id", f"row {index}")
        return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()

    split = {"train": [i for i in train if samples[i].config_type in val_exclude], "val": []}
    for has_born in (True, False):
        group = sorted((i for i in train if (samples[i].born is not None) == has_born
                        and samples[i].config_type not in val_exclude), key=order_key)
        n_val = min(int(round(len(group) * val_fraction)), max(len(group) - 1, 0))
        split["val"].extend(group[:n_val])
        split["train"].extend(group[n_val:])
    return {k: sorted(v) for k, v in split.items()}


SPLIT_NAMES = ("train", "val", "test")


def split_from_info(samples: Sequence[Sample]) -> dict[str, list[int]] | None:
    """The predefined split of the extxyz key ``info["split"]`` (train, val or test), or None if no frame has it.

    Raises:
        InputFileError: if only some frames carry the key or a value is not a split name.
    """
    labels = [s.atoms.info.get("split") for s in samples]
    if all(label is None for label in labels):
        return None
    missing = [s.index for s, label in zip(samples, labels) if label is None]
    if missing:
        raise InputFileError(
            f"info['split'] is set on some structures but not on structure(s) {missing[:10]}: "
            "give it to every structure (train, val or test) or to none"
        )
    bad = sorted({str(label) for label in labels} - set(SPLIT_NAMES))
    if bad:
        raise InputFileError(f"info['split'] has value(s) {bad}; expected one of {list(SPLIT_NAMES)}")
    return {name: [s.index for s, label in zip(samples, labels) if label == name] for name in SPLIT_NAMES}


def read_split_file(path: str | Path, n_structures: int) -> dict[str, list[int]]:
    """A user split file: JSON with lists "train", "val", "test" of 0-based structure indices.

    Missing lists are empty; structures in no list are not used. Indices must be
    integers in range and each structure may appear in one list only.
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"split file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not any(name in data for name in SPLIT_NAMES):
        raise InputFileError(f"{path}: expected a JSON object with lists {list(SPLIT_NAMES)}")
    split, seen = {}, set()
    for name in SPLIT_NAMES:
        values = data.get(name, [])
        if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise InputFileError(f"{path}: '{name}' must be a list of integer structure indices")
        outside = [v for v in values if not 0 <= v < n_structures]
        if outside:
            raise InputFileError(f"{path}: '{name}' has indices {outside[:5]} outside 0..{n_structures - 1}")
        twice = sorted(seen & set(values))
        if twice or len(set(values)) != len(values):
            raise InputFileError(f"{path}: structure(s) {twice[:5] or values[:0]} listed more than once")
        seen |= set(values)
        split[name] = sorted(values)
    if not split["train"]:
        raise InputFileError(f"{path}: the 'train' list is empty")
    return split


def fit_atomic_energies(
    samples: Sequence[Sample], species: Sequence[str], offsets: Sequence[float] | None = None
) -> dict[str, float]:
    """Per-species reference energies (eV) by least squares of E - offset against composition.

    ``offsets`` (eV, one per sample; default 0) is the part of the energy the
    model gets elsewhere, e.g. a physical baseline. For data of a single
    stoichiometry the system is rank deficient; the minimum-norm solution is
    used (only the combination that matters is fixed).
    """
    rows, energies = [], []
    for k, s in enumerate(samples):
        if s.energy is None or s.charge != 0:
            continue
        symbols = s.atoms.get_chemical_symbols()
        rows.append([symbols.count(x) for x in species])
        energies.append(s.energy - (0.0 if offsets is None else float(offsets[k])))
    if not rows:
        raise InputFileError("no neutral structure with an energy label to fit reference energies")
    solution, *_ = np.linalg.lstsq(np.array(rows, float), np.array(energies), rcond=None)
    return {x: float(v) for x, v in zip(species, solution)}


def mean_neighbours(samples: Sequence[Sample]) -> float:
    """Average number of neighbours per atom (needs :func:`attach_edges` first)."""
    edges = sum(len(s.edges.src) for s in samples)
    atoms = sum(s.n_atoms for s in samples)
    return max(edges / max(atoms, 1), 1.0)


def mean_born_per_species(samples: Sequence[Sample], species: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-species mean ASR-corrected Born tensor (3, 3) e over the samples that have one."""
    sums = {x: np.zeros((3, 3)) for x in species}
    counts = dict.fromkeys(species, 0)
    for s in samples:
        if s.born is None:
            continue
        for symbol, z in zip(s.atoms.get_chemical_symbols(), s.born):
            sums[symbol] += z
            counts[symbol] += 1
    return {x: sums[x] / counts[x] if counts[x] else np.zeros((3, 3)) for x in species}


def born_scale_per_species(
    samples: Sequence[Sample], species: Sequence[str], mean_charges: dict[str, float]
) -> dict[str, float]:
    """Per-species RMS (e) of ``Z - m_s·1`` over atoms and components (floored at 0.01 e; 1 if absent)."""
    sums = dict.fromkeys(species, 0.0)
    counts = dict.fromkeys(species, 0)
    for s in samples:
        if s.born is None:
            continue
        for symbol, z in zip(s.atoms.get_chemical_symbols(), s.born):
            sums[symbol] += float(np.sum((z - mean_charges.get(symbol, 0.0) * np.eye(3)) ** 2))
            counts[symbol] += 9
    return {x: max(float(np.sqrt(sums[x] / counts[x])), 0.01) if counts[x] else 1.0 for x in species}
