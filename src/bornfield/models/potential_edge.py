"""Allegro-style edge potential (``train.potential.architecture: edge``).

Site energy ``E_i = E0[z_i] + scale * Σ_j env(r_ij) ε(x_ij) / sqrt(avg_neighbours) [+ baseline_i]``:
``x_ij`` is the scalar latent of edge i→j after the edge layers of
:class:`~bornfield.models.born_edge.EdgeStack` (tensor products of equivariant edge features with
the centre's environment, irreps up to l = 2), ``ε`` an MLP. Every quantity is a sum over the
centre's own edges, so the receptive field is the cutoff and the MD contracts of
:class:`~bornfield.models.potential.NNPotential` (ghosts of one cutoff, blocks of centres, the
shared geometry of a step) hold unchanged. Forces and stress come from autograd through the edge
vectors (inference and training alike); the baseline, energy bookkeeping and file format are
those of :class:`NNPotential`.
"""

from __future__ import annotations

import torch

from bornfield.models.base import BornfieldModel
from bornfield.models.born_edge import EdgeStack, _mlp
from bornfield.models.graph import Graph
from bornfield.models.layers import EdgeGeometry, ExactConstants
from bornfield.models.potential import NNPotential, edge_geometry, edge_gradient_by_autograd


class EdgePotential(EdgeStack, NNPotential):
    """Strictly local edge-layer NN potential (eV, Å); ``architecture="edge"``.

    Args:
        species, cutoff, channels (equivariant edge channels), n_basis, radial_hidden (edge latent
        width), hidden (edge-energy MLP width), avg_neighbours, atomic_energies, energy_scale,
        baseline: as :class:`NNPotential`.
        edge_layers: number of edge layers (≥ 1).
    """

    architecture = "edge"

    def __init__(
        self,
        species,
        cutoff: float = 5.0,
        channels: int = 8,
        n_basis: int = 8,
        radial_hidden: int = 32,
        hidden: int = 64,
        avg_neighbours: float = 30.0,
        atomic_energies: dict[str, float] | None = None,
        energy_scale: float = 1.0,
        baseline: dict | None = None,
        edge_layers: int = 2,
        architecture: str = "edge",
    ):
        BornfieldModel.__init__(self, species, cutoff)
        if architecture != self.architecture:
            raise ValueError(f"{type(self).__name__} needs architecture {self.architecture!r} (got {architecture!r})")
        self.hyperparameters = {
            **self._potential_hyperparameters(
                channels, n_basis, radial_hidden, hidden, avg_neighbours, atomic_energies, energy_scale),
            "architecture": self.architecture,
            "edge_layers": int(edge_layers),
        }
        coupling = self.build_edge_stack(cutoff, channels, n_basis, radial_hidden, avg_neighbours, edge_layers)
        self.edge_energy = _mlp(int(radial_hidden), int(hidden), 1)
        with torch.no_grad():  # start near the reference energies
            self.edge_energy[-1].weight.mul_(0.1)
            self.edge_energy[-1].bias.zero_()
        self.constants = ExactConstants(coupling=coupling)
        self._init_energy_terms(baseline)

    @torch.no_grad()
    def fit_normalisation(self, graphs) -> None:
        """Nothing to fit: the edge sums are normalised by ``avg_neighbours``, the output by ``energy_scale``."""

    def site_energies(
        self, graph: Graph, edge_vec: torch.Tensor, geometry: EdgeGeometry | None = None
    ) -> torch.Tensor:
        """Site energies (N_c,) eV in float64 of the centres of ``geometry`` (default: all of ``graph``)."""
        if geometry is None:
            geometry = edge_geometry(graph, edge_vec)
        x, _, envelope = self.edge_features(geometry)
        edges = self.edge_energy(x).squeeze(-1) * envelope  # (N_c, K), 0 on padding slots
        network = edges.sum(1) * (self.hyperparameters["energy_scale"] / self.avg_neighbours**0.5)
        return network.to(torch.float64) + self._e0[geometry.centre_species]

    def site_energies_and_edge_gradient(
        self,
        graph: Graph,
        edge_vec: torch.Tensor,
        geometry: EdgeGeometry | None = None,
        energy_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Site energies (N_c,) eV (float64, detached) and ``dE/d edge_vec`` (N_c, K, 3) eV/Å, by autograd.

        Same contract as :meth:`NNPotential.site_energies_and_edge_gradient`; ``geometry`` (a block of
        centres, possibly built without gradients) only supplies the species of its edges (default: the
        graph's).
        """
        if geometry is None:
            species = graph.centre_species, graph.species[graph.neighbours]
        else:
            species = geometry.centre_species, geometry.neighbour_species
        return edge_gradient_by_autograd(lambda vec: self.site_energies(graph, vec, EdgeGeometry(vec, *species)),
                                         edge_vec, energy_mask)
