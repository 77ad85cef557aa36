"""Common base of bornfield's torch models: hyperparameters, species, dtype, graph building."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from bornfield.models.graph import Graph, build_graph


class BornfieldModel(nn.Module):
    """A torch module that knows how to rebuild itself from its hyperparameters.

    Subclasses set ``kind`` and store every constructor argument in
    ``self.hyperparameters`` (JSON-serialisable), so a model file is the pair
    (hyperparameters, state_dict) plus metadata (see :mod:`bornfield.models.io`).
    """

    kind: ClassVar[str] = ""
    #: site quantities of a block of centres need only that block's edges (False: whole graphs only)
    shares_blocks: ClassVar[bool] = True

    def __init__(self, species: tuple[str, ...] | list[str], cutoff: float):
        super().__init__()
        if not species:
            raise ValueError("a model needs at least one species")
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive (got {cutoff} Å)")
        self.species = tuple(str(s) for s in species)
        #: Å, neighbour-list cutoff the model needs (a subclass with a longer-ranged part raises it)
        self.cutoff = float(cutoff)
        #: Å, cutoff of the learned local part (the ``cutoff`` hyperparameter)
        self.local_cutoff = float(cutoff)
        self.hyperparameters: dict[str, Any] = {}
        self.metadata: dict[str, Any] = {}

    def _density_hyperparameters(self, channels: int, n_basis: int, radial_hidden: int, hidden: int,
                                 avg_neighbours: float) -> dict[str, Any]:
        """The hyperparameters shared by every model built on :class:`AtomicDensity` + a readout MLP."""
        return {
            "species": list(self.species),
            "cutoff": self.local_cutoff,
            "channels": int(channels),
            "n_basis": int(n_basis),
            "radial_hidden": int(radial_hidden),
            "hidden": int(hidden),
            "avg_neighbours": float(avg_neighbours),
        }

    @property
    def receptive_field(self) -> float:
        """Å: single-pass models see exactly their (neighbour-list) cutoff."""
        return self.cutoff

    @property
    def network_receptive_field(self) -> float:
        """Å: the reach of the learned part alone (a physical baseline left out): the local cutoff."""
        return self.local_cutoff

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def make_graph(self, positions, numbers, cell, pbc) -> Graph:
        """Graph of one structure in the model's dtype (open boundaries if ``pbc`` all False)."""
        return build_graph([(positions, numbers, cell, pbc)], self.species, self.cutoff, self.dtype)

    @staticmethod
    def _open_cell() -> np.ndarray:
        return np.zeros((3, 3))
