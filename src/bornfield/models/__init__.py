"""Learned models: NN potential, equivariant NN Born charges, paper-style baseline, model files.

Public entry points::

    load_potential(path | [paths])  -> NNPotential | PotentialCommittee
    load_born(path | [paths])       -> EquivariantBornModel | BornCommittee
    create_random_model_file(kind, species, cutoff, path, seed)   # untrained, loadable

Both returned objects implement the Protocols of :mod:`bornfield.models.interface`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from bornfield.models.born import EquivariantBornModel, PaperRowBaseline, apply_asr
from bornfield.models.committee import BornCommittee, PotentialCommittee
from bornfield.models.graph import Graph, build_graph, graph_from_atoms
from bornfield.models.interface import BornChargeModel, PotentialModel
from bornfield.models.io import (
    create_model,
    create_random_model_file,
    load_model,
    read_model_file,
    save_model,
)
from bornfield.models.potential import NNPotential


def _paths(path: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(path, (str, Path)):
        return [Path(path)]
    return [Path(p) for p in path]


def load_potential(
    path: str | Path | Sequence[str | Path], dtype: torch.dtype = torch.float32
) -> NNPotential | PotentialCommittee:
    """One potential file -> NNPotential; a list of files -> PotentialCommittee (mean + variance)."""
    paths = _paths(path)
    members = [load_model(p, kind="potential", dtype=dtype) for p in paths]
    if isinstance(path, (str, Path)):
        return members[0]
    return PotentialCommittee(members)


def load_born(
    path: str | Path | Sequence[str | Path], dtype: torch.dtype = torch.float32
) -> EquivariantBornModel | BornCommittee:
    """One Born-model file -> EquivariantBornModel; a list -> BornCommittee."""
    paths = _paths(path)
    members = [load_model(p, kind="born", dtype=dtype) for p in paths]
    if isinstance(path, (str, Path)):
        return members[0]
    return BornCommittee(members)


__all__ = [
    "BornChargeModel",
    "BornCommittee",
    "EquivariantBornModel",
    "Graph",
    "NNPotential",
    "PaperRowBaseline",
    "PotentialCommittee",
    "PotentialModel",
    "apply_asr",
    "build_graph",
    "create_model",
    "create_random_model_file",
    "graph_from_atoms",
    "load_born",
    "load_model",
    "load_potential",
    "read_model_file",
    "save_model",
]
