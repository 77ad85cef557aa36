"""Learned models: NN potential, equivariant NN Born charges, paper-style baseline, model files.

Public entry points::

    load_potential(path | [paths])  -> NNPotential | PotentialCommittee
    load_born(path | [paths])       -> EquivariantBornModel | BornCommittee
    create_random_model_file(kind, species, cutoff, path, seed)   # untrained, loadable

Both returned objects implement the Protocols of :mod:`bornfield.models.interface`.

Design (chosen for CPU speed in long field MD; measurements in ``docs/decisions.md``):

* strictly local, single pass (no message passing): receptive field = cutoff (5 Å default),
  so LAMMPS ghosts need one cutoff and the cost is linear in the number of atoms; an optional
  physical baseline of the potential (:mod:`bornfield.models.baseline`, Pedone 2006 + DSF
  Coulomb, a fixed pair potential with a longer cutoff) makes the neighbour list and the
  receptive field that longer cutoff while the network keeps its own;
* per atom, equivariant neighbour densities A_l (l = 0, 1, 2; C channels each) from a
  species-aware radial MLP times e3nn spherical harmonics, summed with batched matrix
  products over a padded neighbour matrix (vesin neighbour list, computed once and shared
  by the potential and the Born model when their species/cutoff agree);
* invariants: A0, power spectrum of A1/A2 with learned channel mixing, and the (1,1,2) and
  (2,2,2) Wigner-3j triple products; a per-species MLP gives the site energy;
* Born model: the same densities give the 0e (isotropic), 1e (antisymmetric, from
  A1×A1 and A2×A2 cross couplings) and 2e (symmetric traceless, from A2 and (A1⊗A1)_2)
  parts of Z with invariant, species-dependent coefficients; e3nn's CartesianTensor("ij")
  change of basis maps them to Z[α, β]. Exactly equivariant under O(3);
* ASR: subtract the per-structure mean tensor (minimum-norm correction), also applied to
  the DFPT targets;
* one MD step evaluates both models from one neighbour list and one set of edge
  quantities (:mod:`bornfield.models.combined`), block by block of centres (exact; bounded
  memory); cluster calls (LAMMPS, several ranks) use only the owned atoms as centres, the
  ghosts as neighbours;
* inference forces/stress come from a hand-written backward over the edges
  (:class:`~bornfield.models.layers.DensityTape`: radial MLP through ``silu_backward`` of the
  saved pre-activations, analytic Bessel, envelope and spherical-harmonic derivatives;
  autograd only over the per-atom invariants), the same numbers as autograd (tested in
  float64) at a fraction of the work; training (``create_graph=True``) keeps autograd;
* blocks of centres run in ``torch.get_num_threads()`` Python threads
  (:mod:`bornfield.models.threads`), and a graph caches its edge vectors and per-block edge
  geometry, shared by the potential, the Born model and committee members.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from bornfield.fieldphysics import asr_correct_batched as apply_asr
from bornfield.models.born import EquivariantBornModel, PaperRowBaseline
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


def _load_one_or_committee(path, kind: str, committee_class, dtype: torch.dtype):
    """One file -> the model; a list of files -> ``committee_class`` over the members."""
    members = [load_model(p, kind=kind, dtype=dtype) for p in _paths(path)]
    return members[0] if isinstance(path, (str, Path)) else committee_class(members)


def load_potential(
    path: str | Path | Sequence[str | Path], dtype: torch.dtype = torch.float32
) -> NNPotential | PotentialCommittee:
    """One potential file -> NNPotential; a list of files -> PotentialCommittee (mean + variance)."""
    return _load_one_or_committee(path, "potential", PotentialCommittee, dtype)


def load_born(
    path: str | Path | Sequence[str | Path], dtype: torch.dtype = torch.float32
) -> EquivariantBornModel | BornCommittee:
    """One Born-model file -> EquivariantBornModel; a list -> BornCommittee."""
    return _load_one_or_committee(path, "born", BornCommittee, dtype)


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
