"""Active learning: pick candidate structures on which the committee disagrees most.

Generation k+1 of the dataset adds DFT labels for snapshots of NN MD run with
the generation-k committee. Each candidate gets

* ``force_std``: max over atoms of ``sqrt(Σ_β Var_members F_β)`` (eV/Å),
* ``born_std``: max over atoms of ``sqrt(Σ_αβ Var_members Z_αβ)`` (e),

and the score is one of them or (``combined``) the sum of both, each divided
by its median over the candidates. Candidates are taken greedily by
decreasing score; two snapshots of the same trajectory (``info["trajectory"]``
or ``info["source"]``) must be at least ``min_frame_gap`` frames apart
(``info["frame"]``, else the order in the file).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

from bornfield.errors import ConfigError, InputFileError
from bornfield.models.committee import BornCommittee, PotentialCommittee


def read_candidates(paths: Sequence[str | Path], stride: int = 1) -> list[Atoms]:
    """Candidate snapshots from extxyz files and/or MD trajectories (``traj.h5``, bornfield-traj).

    Trajectory frames (every ``stride``-th) become Atoms with ``info["trajectory"]``
    (the file), ``info["frame"]`` and ``info["step"]``; positions are the stored
    unwrapped ones (periodic images are equivalent for labelling).
    """
    from ase.io import read

    if stride < 1:
        raise ConfigError(f"candidate stride must be >= 1 (got {stride})")
    frames: list[Atoms] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise InputFileError(f"candidate file not found: {path}")
        if path.suffix in (".h5", ".hdf5"):
            import h5py

            try:
                with h5py.File(path, "r") as handle:
                    if handle.attrs.get("format") != "bornfield-traj":
                        raise InputFileError(f"{path}: not a bornfield trajectory (format attribute)")
                    numbers = handle["numbers"][()]
                    cell = handle["cell"][()]
                    steps = handle["step"][()]
                    positions = handle["positions"]
                    for t in range(0, positions.shape[0], stride):
                        atoms = Atoms(numbers=numbers, positions=positions[t], cell=cell, pbc=True)
                        atoms.info.update(trajectory=str(path), frame=t, step=int(steps[t]))
                        frames.append(atoms)
            except (OSError, KeyError) as exc:
                raise InputFileError(f"{path}: unreadable trajectory: {exc}") from exc
        else:
            try:
                images = read(path, index=f"::{stride}", format="extxyz")
            except Exception as exc:  # ASE raises several types on malformed files
                raise InputFileError(f"{path}: not a readable extxyz file: {exc}") from exc
            for k, atoms in enumerate(images):
                atoms.info.setdefault("trajectory", str(path))
                atoms.info.setdefault("frame", k * stride)
                frames.append(atoms)
    return frames


def committee_disagreement(
    candidates: Sequence[Atoms],
    potential: PotentialCommittee | None,
    born: BornCommittee | None,
) -> dict[str, np.ndarray]:
    """Per-candidate ``force_std`` (eV/Å) and ``born_std`` (e) (NaN when that committee is absent)."""
    if potential is None and born is None:
        raise ConfigError("active-learning selection needs a potential and/or a Born committee")
    for name, committee in (("potential", potential), ("born", born)):
        if committee is not None and len(committee) < 2:
            raise ConfigError(f"the {name} committee has {len(committee)} member: disagreement needs at least 2")
    force_std = np.full(len(candidates), np.nan)
    born_std = np.full(len(candidates), np.nan)
    for k, atoms in enumerate(candidates):
        args = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
        if potential is not None:
            out = potential.evaluate_graph(potential.make_graph(*args), stress=False)
            force_std[k] = float(np.sqrt(out["forces_var"].sum(axis=1)).max())
        if born is not None:
            out = born.evaluate_graph(born.make_graph(*args))
            born_std[k] = float(np.sqrt(out["born_charges_var"].sum(axis=(1, 2))).max())
    return {"force_std": force_std, "born_std": born_std}


def selection_scores(disagreement: dict[str, np.ndarray], score: str) -> np.ndarray:
    """Ranking score of every candidate (larger = more informative)."""
    f, z = disagreement["force_std"], disagreement["born_std"]
    if score == "forces":
        if np.isnan(f).all():
            raise ConfigError("score 'forces' needs a potential committee")
        return f
    if score == "born":
        if np.isnan(z).all():
            raise ConfigError("score 'born' needs a Born committee")
        return z
    if score != "combined":
        raise ConfigError(f"unknown selection score '{score}' (forces, born or combined)")
    total = np.zeros(len(f))
    for values in (f, z):
        if not np.isnan(values).all():
            median = np.median(values)
            total += values / (median if median > 0 else 1.0)
    return total


def select_candidates(
    candidates: Sequence[Atoms], scores: np.ndarray, n_select: int, min_frame_gap: int = 0
) -> list[int]:
    """Indices of at most ``n_select`` candidates, greedily by score, decorrelated within trajectories."""
    chosen: list[int] = []
    taken: dict[str, list[int]] = {}
    for k in np.argsort(-np.asarray(scores), kind="stable"):
        if len(chosen) >= n_select:
            break
        atoms = candidates[int(k)]
        traj = str(atoms.info.get("trajectory", atoms.info.get("source", "")))
        frame = int(atoms.info.get("frame", k))
        if any(abs(frame - other) < min_frame_gap for other in taken.get(traj, [])):
            continue
        chosen.append(int(k))
        taken.setdefault(traj, []).append(frame)
    return sorted(chosen)
