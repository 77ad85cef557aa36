"""Message-passing potential (``train.potential.architecture: message``).

:class:`~bornfield.models.potential.NNPotential` with two interactions, where the second
interaction's edge weights see the latent of the neighbour as well as the centre's:

    ``pre1_ij = W [bessel(r_ij), onehot(z_i), onehot(z_j), Y(r̂_ij)·A_i] + U h_i + V h_j``,

``h`` being the per-atom latent of the first density. ``E_i`` then depends on every atom within
two cutoffs (a two-hop receptive field, as MACE's two layers). Consequences for evaluation, as
for the polar Born model: whole graphs only (no blocks of centres, ``shares_blocks`` False);
open-boundary clusters need ghosts to :attr:`receptive_field` (twice the network cutoff, or the
baseline's cutoff if that is longer); forces and stress come from autograd through the edge vectors.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from bornfield.models.graph import Graph, build_cluster_graph
from bornfield.models.layers import EdgeGeometry
from bornfield.models.potential import NNPotential, edge_geometry, edge_gradient_by_autograd


class MessagePotential(NNPotential):
    """Two-interaction NN potential with a neighbour-latent message (eV, Å); ``architecture="message"``.

    Args: as :class:`NNPotential` (``interactions`` is always 2).
    """

    architecture = "message"
    #: E_i needs the latents of its neighbours: not evaluable block by block of centres
    shares_blocks = False

    def __init__(self, species, cutoff: float = 5.0, channels: int = 16, n_basis: int = 8,
                 radial_hidden: int = 32, hidden: int = 64, avg_neighbours: float = 30.0,
                 atomic_energies: dict[str, float] | None = None, energy_scale: float = 1.0,
                 baseline: dict | None = None, interactions: int = 2, architecture: str = "message"):
        if architecture != self.architecture:
            raise ValueError(f"{type(self).__name__} needs architecture {self.architecture!r} (got {architecture!r})")
        if interactions != 2:
            raise ValueError(f"the message potential has 2 interactions (got {interactions})")
        super().__init__(species, cutoff, channels, n_basis, radial_hidden, hidden, avg_neighbours,
                         atomic_energies, energy_scale, baseline, interactions=2)
        self.hyperparameters["architecture"] = self.architecture
        self.interaction.from_neighbour = torch.nn.Linear(hidden, self.interaction.first.out_features, bias=False)
        with torch.no_grad():  # start as the strictly local model, let training open the message
            self.interaction.from_neighbour.weight.mul_(0.1)

    @property
    def network_receptive_field(self) -> float:
        """Å: twice the network cutoff (the neighbours' latents)."""
        return 2.0 * self.local_cutoff

    @property
    def receptive_field(self) -> float:
        """Å: :attr:`network_receptive_field`, or the baseline's cutoff if longer."""
        return max(self.network_receptive_field, self.cutoff)

    def _edge_bias(self, graph: Graph, latent: torch.Tensor) -> torch.Tensor:
        """(N_c, K, hidden) ``V h_j`` of every edge; ``latent`` (N_c, hidden) of the graph's centres.

        Neighbours that are not centres (ghosts beyond one cutoff of the atoms whose energy is
        wanted) get a zero latent.
        """
        if graph.centres is None:
            atoms = latent
        else:
            atoms = latent.new_zeros(graph.n_atoms, latent.shape[-1]).index_copy(0, graph.centres, latent)
        return self.interaction.from_neighbour(atoms)[graph.neighbours]

    def _interaction_inputs(self, graph: Graph, geometry: EdgeGeometry, densities) -> tuple:
        """``(a1, a2, latent, edge_bias)`` the second interaction reads for the centres of ``graph``."""
        a1, a2, latent = super()._interaction_inputs(graph, geometry, densities)
        return a1, a2, latent, self._edge_bias(graph, latent)

    def site_energies(self, graph: Graph, edge_vec: torch.Tensor, geometry: EdgeGeometry | None = None) -> torch.Tensor:
        """Site energies (N_c,) eV (float64) of all centres of ``graph`` (pairs within :attr:`local_cutoff`).

        Complete for a centre whose neighbours within one cutoff are centres too (periodic graphs;
        clusters as built by :meth:`cluster_site_energies_forces`). Blocks (``geometry``) are refused.
        """
        if geometry is not None:
            raise ValueError("MessagePotential evaluates whole graphs, not blocks of centres")
        geometry = edge_geometry(graph, edge_vec)
        a1, a2, latent, bias = self._interaction_inputs(graph, geometry, self.density.densities_from_geometry(geometry))
        *_, second = self.interaction(geometry, self.density, a1, a2, latent, bias)
        return self._site_energies_from_features(torch.cat([latent, second], -1), geometry.centre_species)

    def site_energies_and_edge_gradient(self, graph, edge_vec, geometry=None, energy_mask=None):
        """Site energies (N_c,) eV (float64, detached) and ``dE/d edge_vec`` (N_c, K, 3) eV/Å of a whole
        graph, by autograd (``geometry`` is refused, as in :meth:`site_energies`)."""
        return edge_gradient_by_autograd(lambda vec: self.site_energies(graph, vec, geometry), edge_vec, energy_mask)

    def cluster_site_energies_forces(self, positions, numbers, energy_mask,
                                     with_baseline: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Open-boundary evaluation: site energies (M,) eV, forces (M, 3) of ``sum(E[mask])``.

        The latents are computed for every atom within one network cutoff of a masked atom, so the
        cluster must hold all atoms within :attr:`receptive_field` (:attr:`network_receptive_field`
        without the baseline) of the masked ones; site energies of the other atoms are NaN.
        """
        mask = np.asarray(energy_mask, dtype=bool)
        positions = np.asarray(positions, dtype=float)
        centres = mask.copy()
        if mask.any():
            distance, _ = cKDTree(positions[mask]).query(positions, distance_upper_bound=self.local_cutoff)
            centres |= distance < self.local_cutoff
        cutoff = self.cutoff if with_baseline else self.local_cutoff
        graph = build_cluster_graph(positions, numbers, centres, self.species, cutoff, self.dtype)
        centre_mask = torch.from_numpy(mask[centres])
        out = self.forward(graph, forces=True, stress=False, energy_mask=centre_mask, with_baseline=with_baseline)
        sites = np.full(len(mask), np.nan)
        sites[mask] = out["site_energies"].detach().numpy()[mask[centres]]
        return sites, out["forces"].detach().double().numpy()
