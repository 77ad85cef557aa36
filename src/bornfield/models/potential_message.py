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
from bornfield.models.potential import (NNPotential, edge_geometry, edge_gradient_by_autograd,
                                        forces_from_edge_gradient)


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
        return self._neighbour_bias(graph, atoms)

    def _neighbour_bias(self, graph: Graph, atoms: torch.Tensor) -> torch.Tensor:
        """(N_c, K, hidden) ``V h_j`` of every edge from the latents ``atoms`` (N, hidden) of all graph atoms."""
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
        inputs = self._interaction_inputs(graph, geometry, self.density.densities_from_geometry(geometry))
        return self._site_energies_from_interaction(geometry, *inputs)

    def site_energies_and_edge_gradient(self, graph, edge_vec, geometry=None, energy_mask=None):
        """Site energies (N_c,) eV (float64, detached) and ``dE/d edge_vec`` (N_c, K, 3) eV/Å of a whole
        graph, by autograd (``geometry`` is refused, as in :meth:`site_energies`)."""
        return edge_gradient_by_autograd(lambda vec: self.site_energies(graph, vec, geometry), edge_vec, energy_mask)

    @property
    def latent_width(self) -> int:
        """Numbers per atom that :class:`OwnedSiteStep` exchanges between ranks (the latent's width)."""
        return int(self.interaction.from_neighbour.in_features)

    def owned_step(self, graph: Graph, with_baseline: bool = True) -> "OwnedSiteStep":
        """Start a domain-decomposed step of this rank's owned atoms (:class:`OwnedSiteStep`).

        ``graph``: open-boundary cluster graph (:func:`~bornfield.models.graph.build_cluster_graph`)
        whose centres are the owned atoms, with the ghosts within :attr:`local_cutoff` of them and
        the pairs within :attr:`local_cutoff` (:attr:`cutoff` with the baseline).
        """
        return OwnedSiteStep(self, graph, with_baseline)

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


class OwnedSiteStep:
    """One rank's share of a domain-decomposed step of a :class:`MessagePotential`, the neighbours'
    latents exchanged between ranks instead of recomputed in a ghost shell.

    Three calls, with two exchanges by the caller between them (sums over the ranks by atom tag):

    1. construction from the cluster graph whose centres are the owned atoms: the latents
       :attr:`latents` (n_owned, hidden) of the owned atoms;
    2. :meth:`latent_gradient` with the latents of all M cluster atoms (each from the rank that owns it):
       the owned site energies :attr:`site_energies` (n_owned,) eV and ``dE_rank/dh`` (M, hidden) of every
       latent this rank's sites read;
    3. :meth:`forces` with ``dE/dh`` (n_owned, hidden) of the owned latents summed over all ranks:
       forces (M, 3) eV/Å on the cluster atoms.

    Summed over ranks by tag, the forces are ``-dE/dx`` of the total energy ``Σ site_energies``, exactly
    as the periodic evaluation. The cluster needs the atoms within :attr:`MessagePotential.local_cutoff`
    of the owned ones (:attr:`MessagePotential.cutoff` with the baseline, which is added in step 3).
    """

    def __init__(self, model: MessagePotential, graph: Graph, with_baseline: bool = True):
        if graph.centres is None:
            raise ValueError("OwnedSiteStep needs a cluster graph whose centres are the owned atoms")
        self.model, self.n_atoms, self.n_owned = model, graph.n_atoms, int(graph.centres.numel())
        self.with_baseline = bool(with_baseline and model.baseline is not None)
        if self.n_owned == 0:
            self.latents = np.zeros((0, model.latent_width))
            return
        self.full = graph
        self.graph = graph.within(model.local_cutoff)
        self.edge_vec = self.graph.edge_vectors().detach().requires_grad_(True)
        with torch.enable_grad():
            self.geometry = edge_geometry(self.graph, self.edge_vec)
            densities = model.density.densities_from_geometry(self.geometry)
            # (a1, a2, latent) without the message bias: the neighbours' latents come from the exchange
            self.a1, self.a2, self.latent = NNPotential._interaction_inputs(model, self.graph, self.geometry,
                                                                            densities)
        self.latents = self.latent.detach().double().numpy()

    def latent_gradient(self, latents) -> np.ndarray:
        """``dE_rank/dh`` (M, hidden) from the latents (M, hidden) of every cluster atom."""
        model = self.model
        if self.n_owned == 0:
            self.site_energies = np.zeros(0)
            return np.zeros((self.n_atoms, self.latents.shape[1]))
        table = torch.as_tensor(np.asarray(latents), dtype=self.latent.dtype).requires_grad_(True)
        # the first density's outputs as leaves: its backward runs once, in forces(), for both paths
        a1, a2, latent = (x.detach().requires_grad_(True) for x in (self.a1, self.a2, self.latent))
        with torch.enable_grad():
            sites = model._site_energies_from_interaction(self.geometry, a1, a2, latent,
                                                          model._neighbour_bias(self.graph, table))
            self.edge_grad, *self.first_grads, grad_table = torch.autograd.grad(
                sites.sum(), (self.edge_vec, a1, a2, latent, table), retain_graph=True)
        self.site_energies = sites.detach().numpy()
        return grad_table.double().numpy()

    def forces(self, latent_gradient) -> np.ndarray:
        """Forces (M, 3) eV/Å from ``dE/dh`` (n_owned, hidden) of the owned latents summed over the ranks."""
        if self.n_owned == 0:
            return np.zeros((self.n_atoms, 3))
        g_a1, g_a2, g_latent = self.first_grads
        upstream = g_latent + torch.as_tensor(np.asarray(latent_gradient), dtype=self.latent.dtype)
        chain, = torch.autograd.grad((self.a1, self.a2, self.latent), self.edge_vec, (g_a1, g_a2, upstream))
        with torch.no_grad():
            forces = forces_from_edge_gradient(self.graph, self.edge_grad + chain).double()
            if self.with_baseline:
                b_sites, b_grad = self.model.baseline.site_energies_and_edge_gradient(self.full)
                self.site_energies = self.site_energies + b_sites.numpy()
                forces = forces + forces_from_edge_gradient(self.full, b_grad).double()
        return forces.numpy()
