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

import numpy as np
from ase import Atoms

from bornfield.errors import ConfigError
from bornfield.models.committee import BornCommittee, PotentialCommittee


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
