"""NN interatomic potential: energy, forces = -dE/dr and stress for periodic cells and clusters.

Site energy ``E_i = E0[z_i] + scale * MLP_{z_i}(invariants_i) [+ baseline_i]`` where the
invariants come from the strictly local :class:`~bornfield.models.layers.AtomicDensity`
(receptive field = cutoff) or, with ``interactions=2``, from the density plus the second
strictly local :class:`~bornfield.models.layers.EdgeInteraction` (the readout sees a
per-atom latent of the first density and the invariants of the second; receptive field
still the cutoff), and the optional physical baseline
(:mod:`bornfield.models.baseline`, Δ-learning: the network learns the residual to it)
is a fixed pair potential with its own, usually longer, cutoff. The model's
neighbour list covers the longer of the two (``cutoff``); the network sees only
the pairs within its own (``local_cutoff``, :meth:`~bornfield.models.graph.Graph.within`).
Forces and the virial are obtained in one backward pass through the edge vectors:

* ``F_k = Σ_{e: src=k} g_e - Σ_{e: dst=k} g_e`` with ``g_e = ∂E/∂r_e`` and
  ``r_e = r_dst - r_src + shift``;
* ``σ_ab = (1/V) Σ_e r_{e,a} g_{e,b}`` = ``(1/V) ∂E/∂ε_ab`` (ASE sign convention).

Energies are accumulated in float64 even when the network runs in float32; the
baseline is evaluated in float64.
"""

from __future__ import annotations

import numpy as np
import torch

from bornfield.models.base import BornfieldModel
from bornfield.models.baseline import PairBaseline
from bornfield.models.graph import Graph, build_cluster_graph
from bornfield.models.layers import AtomicDensity, EdgeGeometry, EdgeInteraction, SpeciesMLP, edge_vector_gradient
from bornfield.models.threads import map_geometry_blocks, parallel_section


def edge_geometry(graph: Graph, edge_vec: torch.Tensor) -> EdgeGeometry:
    """Model-independent per-edge quantities of ``graph`` for the edge vectors (N_c, K, 3) Å."""
    return EdgeGeometry(edge_vec, graph.centre_species, graph.species[graph.neighbours])


def forces_from_edge_gradient(graph: Graph, grad: torch.Tensor) -> torch.Tensor:
    """Forces (N, 3) eV/Å on all atoms from ``grad = dE/d(edge_vec)`` (N_c, K, 3) eV/Å.

    ``edge_vec = r_j - r_i + shift``, so ``F_i += Σ_j g_ij`` and ``F_j -= g_ij``.
    """
    if graph.centres is None:
        forces = grad.sum(1)
    else:
        forces = grad.new_zeros(graph.n_atoms, 3).index_add(0, graph.centres, grad.sum(1))
    return forces.index_add(0, graph.neighbours.reshape(-1), -grad.reshape(-1, 3))


def edge_gradient_by_autograd(site_energies, edge_vec: torch.Tensor, energy_mask: torch.Tensor | None = None,
                              create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Site energies and ``dE/d edge_vec`` (N_c, K, 3) eV/Å by autograd, ``E = Σ site_energies[energy_mask]``.

    ``site_energies(vec)`` maps the edge vectors (a leaf requiring gradients) to site energies (N_c,) eV.
    Without ``create_graph`` both results are detached; with it ``edge_vec`` must already require
    gradients (the caller differentiates through it, training on forces).
    """
    with torch.enable_grad():
        vec = edge_vec if create_graph else edge_vec.detach().requires_grad_(True)
        sites = site_energies(vec)
        target = sites[energy_mask].sum() if energy_mask is not None else sites.sum()
        (grad,) = torch.autograd.grad(target, vec, create_graph=create_graph)
    return (sites, grad) if create_graph else (sites.detach(), grad)


def stress_from_edge_gradient(graph: Graph, edge_vec: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Stress (B, 3, 3) eV/Å³ (ASE sign), ``σ_ab = (1/V) Σ_e r_{e,a} g_{e,b}``; NaN unless fully periodic."""
    virial = torch.einsum("nka,nkb->nab", edge_vec, grad).reshape(-1, 9)
    per_structure = virial.new_zeros(graph.n_structures, 9).index_add(0, graph.centre_batch, virial)
    volumes = graph.volumes.to(per_structure.dtype)
    safe = torch.where(volumes > 0, volumes, torch.ones_like(volumes))
    s = per_structure.view(-1, 3, 3) / safe.view(-1, 1, 1)
    s = 0.5 * (s + s.transpose(1, 2))
    return torch.where(volumes.view(-1, 1, 1) > 0, s, torch.full_like(s, float("nan")))


class NNPotential(BornfieldModel):
    """Strictly local NN potential (eV, Å).

    Args:
        species: chemical symbols the model knows.
        cutoff: neighbour cutoff of the network, Å.
        channels: radial channels per angular momentum l = 0, 1, 2.
        n_basis: Bessel radial basis size.
        radial_hidden: width of the radial MLP.
        hidden: width of the per-species readout MLP.
        avg_neighbours: normalisation of the neighbour sums.
        atomic_energies: reference energy per species (eV), added to every site.
        energy_scale: eV, scale of the network output.
        baseline: hyperparameters of a physical baseline added to the energy
            (:func:`bornfield.models.baseline.pedone_baseline`), or None (no baseline).
        interactions: 1 (one density) or 2
            (plus :class:`~bornfield.models.layers.EdgeInteraction`, with its own edge backward).
    """

    kind = "potential"

    def __init__(
        self,
        species,
        cutoff: float = 5.0,
        channels: int = 16,
        n_basis: int = 8,
        radial_hidden: int = 32,
        hidden: int = 64,
        avg_neighbours: float = 30.0,
        atomic_energies: dict[str, float] | None = None,
        energy_scale: float = 1.0,
        baseline: dict | None = None,
        interactions: int = 1,
    ):
        super().__init__(species, cutoff)
        if interactions not in (1, 2):
            raise ValueError(f"interactions must be 1 or 2 (got {interactions})")
        self.hyperparameters = self._potential_hyperparameters(
            channels, n_basis, radial_hidden, hidden, avg_neighbours, atomic_energies, energy_scale)
        n_species = len(self.species)
        self.interactions = int(interactions)
        self.density = AtomicDensity(n_species, cutoff, channels, n_basis, radial_hidden, avg_neighbours)
        if self.interactions == 1:
            self.readout = SpeciesMLP(n_species, self.density.n_invariants, hidden, 1)
        else:  # (files of one interaction carry no "interactions" key and load unchanged)
            self.hyperparameters["interactions"] = 2
            self.latent = SpeciesMLP(n_species, self.density.n_invariants, hidden, hidden)
            self.interaction = EdgeInteraction(n_species, n_basis, channels, radial_hidden, hidden)
            self.readout = SpeciesMLP(n_species, hidden + self.interaction.n_invariants, hidden, 1)
        self._init_energy_terms(baseline)

    def _potential_hyperparameters(self, channels, n_basis, radial_hidden, hidden, avg_neighbours,
                                   atomic_energies: dict[str, float] | None, energy_scale: float) -> dict:
        """The density hyperparameters, the reference energy of every species (eV, 0 if not given)
        and the energy scale (eV)."""
        return {
            **self._density_hyperparameters(channels, n_basis, radial_hidden, hidden, avg_neighbours),
            "atomic_energies": {s: float((atomic_energies or {}).get(s, 0.0)) for s in self.species},
            "energy_scale": float(energy_scale),
        }

    def _init_energy_terms(self, baseline: dict | None) -> None:
        """Reference energies of the hyperparameters (float64, kept out of the state dict's dtype casts) and
        the pair baseline."""
        atomic_energies = self.hyperparameters["atomic_energies"]
        self._e0 = torch.tensor([atomic_energies[s] for s in self.species], dtype=torch.float64)
        self.baseline = None if baseline is None else PairBaseline(self.species, baseline)
        if self.baseline is not None:
            self.hyperparameters["baseline"] = self.baseline.hyperparameters
            self.cutoff = max(self.local_cutoff, self.baseline.cutoff)

    def set_atomic_energies(self, atomic_energies: dict[str, float]) -> None:
        """Set the per-species reference energies (eV)."""
        values = {s: float(atomic_energies.get(s, 0.0)) for s in self.species}
        self.hyperparameters["atomic_energies"] = values
        self._e0 = torch.tensor([values[s] for s in self.species], dtype=torch.float64)

    def set_energy_scale(self, scale: float) -> None:
        self.hyperparameters["energy_scale"] = float(scale)

    def site_energies(
        self, graph: Graph, edge_vec: torch.Tensor, geometry: EdgeGeometry | None = None
    ) -> torch.Tensor:
        """Site energies (N_c,) eV in float64 of the graph's centres for the edge vectors (N_c, K, 3) Å.

        ``geometry`` (built from the same ``edge_vec``) shares distances and
        spherical harmonics with other models evaluated on the same step; it may
        cover a block of the graph's centres (then the result is that block's).
        """
        if geometry is None:
            geometry = edge_geometry(graph, edge_vec)
        return self._site_energies_from_densities(self.density.densities_from_geometry(geometry), geometry)

    def _site_energies_from_densities(self, densities, geometry: EdgeGeometry) -> torch.Tensor:
        features = self.density.invariants(*densities)
        species = geometry.centre_species
        if self.interactions == 2:
            return self._site_energies_from_interaction(geometry, densities[1], densities[2],
                                                        self.latent(features, species))
        return self._site_energies_from_features(features, species)

    def _site_energies_from_interaction(self, geometry: EdgeGeometry, a1, a2, latent,
                                        edge_bias=None) -> torch.Tensor:
        """Site energies (N_c,) eV (float64) from the second interaction's inputs: the first density's
        A1, A2, the centre latent and an optional per-edge bias (message passing)."""
        *_, second = self.interaction(geometry, self.density, a1, a2, latent, edge_bias)
        return self._site_energies_from_features(torch.cat([latent, second], dim=-1), geometry.centre_species)

    def _site_energies_from_features(self, features: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        network = self.readout(features, species).squeeze(-1) * self.hyperparameters["energy_scale"]
        return network.to(torch.float64) + self._e0[species]

    @torch.no_grad()
    def fit_normalisation(self, graphs) -> None:
        """Standardise the invariant features on training graphs (list of Graph, pairs within :attr:`cutoff`).

        The first density's invariants, then (``interactions=2``) the second
        interaction's edge invariants and its density invariants, each fitted on
        the features standardised before it.
        """
        graphs = [graph.within(self.local_cutoff) for graph in graphs]
        geometries = [edge_geometry(g, g.edge_vectors()) for g in graphs]
        density = self.density
        first = [density.densities_from_geometry(g) for g in geometries]
        density.fit_normalisation(torch.cat([density.invariants(*a) for a in first]))
        if self.interactions == 1:
            return
        inputs = [self._interaction_inputs(graph, geometry, densities)
                  for graph, geometry, densities in zip(graphs, geometries, first)]
        self.interaction.fit_normalisation(geometries, density, inputs)

    def _interaction_inputs(self, graph: Graph, geometry: EdgeGeometry, densities) -> tuple:
        """``(a1, a2, latent)`` the second interaction reads for the centres of ``geometry``."""
        a0, a1, a2 = densities
        return a1, a2, self.latent(self.density.invariants(a0, a1, a2), geometry.centre_species)

    def site_energies_and_edge_gradient(
        self,
        graph: Graph,
        edge_vec: torch.Tensor,
        geometry: EdgeGeometry | None = None,
        energy_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Site energies (N_c,) eV (float64, detached) and ``dE/d edge_vec`` (N_c, K, 3) eV/Å for inference.

        ``E = Σ site_energies`` (or ``Σ site_energies[energy_mask]``). Autograd runs
        only through the per-atom invariants and readout; the gradient through the
        (N_c, K) edges is the hand-written :class:`~bornfield.models.layers.DensityTape`
        (same numbers as autograd, much less work per edge). The result carries no
        graph: use :meth:`forward` with ``create_graph=True`` to train on forces.

        ``geometry`` (built under ``torch.no_grad()`` from the same ``edge_vec``)
        shares per-edge quantities with other models evaluated on the same step.
        With ``interactions=2`` the second interaction has its own tape
        (:class:`~bornfield.models.layers.InteractionTape`).
        """
        with torch.no_grad():
            if geometry is None:
                geometry = edge_geometry(graph, edge_vec.detach())
            densities, tape = self.density.densities_with_tape(geometry)
        if self.interactions == 2:
            return self._two_interaction_edge_gradient(geometry, densities, tape, energy_mask)
        with torch.enable_grad():
            leaves = [d.detach().requires_grad_(True) for d in densities]
            sites = self._site_energies_from_densities(leaves, geometry)
            target = sites[energy_mask].sum() if energy_mask is not None else sites.sum()
            upstream = torch.autograd.grad(target, leaves)
        with torch.no_grad():
            return sites.detach(), tape.edge_gradient(*upstream)

    def _two_interaction_edge_gradient(self, geometry, densities, tape, energy_mask):
        """:meth:`site_energies_and_edge_gradient` with ``interactions=2``: autograd only over
        per-atom tensors, both tapes over the edges, one conversion to edge-vector gradients."""
        species = geometry.centre_species
        with torch.enable_grad():
            a0, a1, a2 = (d.detach().requires_grad_(True) for d in densities)
            latent = self.latent(self.density.invariants(a0, a1, a2), species)
        with torch.no_grad():
            second, second_tape = self.interaction.densities_with_tape(
                geometry, self.density, densities[1], densities[2], latent.detach())
        with torch.enable_grad():
            b0, b1, b2 = (b.requires_grad_(True) for b in second)
            latent_leaf = latent.detach().requires_grad_(True)
            invariants = self.interaction.standardised_invariants(a1, a2, b0, b1, b2)
            sites = self._site_energies_from_features(torch.cat([latent_leaf, invariants], -1), species)
            target = sites[energy_mask].sum() if energy_mask is not None else sites.sum()
            g_a1, g_a2, g_b0, g_b1, g_b2, g_latent = torch.autograd.grad(target, (a1, a2, b0, b1, b2, latent_leaf))
        with torch.no_grad():
            second_upstream, t_a1, t_a2, t_latent = second_tape.backward(g_b0, g_b1, g_b2)
        with torch.enable_grad():
            l_a0, l_a1, l_a2 = torch.autograd.grad(latent, (a0, a1, a2), g_latent + t_latent)
        with torch.no_grad():
            first_upstream = tape.edge_upstream(l_a0, l_a1 + g_a1 + t_a1, l_a2 + g_a2 + t_a2)
            blocks = ([f[0] + s[0], f[1] + s[1], s[2]] for f, s in zip(first_upstream, second_upstream))
            return sites.detach(), edge_vector_gradient(self.density, geometry, tape.rows, blocks)

    def forward(
        self,
        graph: Graph,
        forces: bool = True,
        stress: bool = False,
        create_graph: bool = False,
        energy_mask: torch.Tensor | None = None,
        with_baseline: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Evaluate a batch.

        Args:
            graph: structures and neighbour list.
            forces / stress: which derivatives to compute.
            create_graph: keep the autograd graph of the derivatives (training on forces). Without it,
                forces/stress come from the hand-written edge backward of
                :meth:`site_energies_and_edge_gradient` (blocks of centres, in parallel threads
                when torch has several, :mod:`bornfield.models.threads`) and every output is detached.
            energy_mask: (N,) bool; if given, forces are those of ``sum(site_energies[mask])``.
            with_baseline: add the physical baseline (False: the network alone, the caller adds it).

        If the graph has ``centres``, site energies are those of the centres (N_c,),
        ``energy`` sums them and ``energy_mask`` (N_c,) refers to the centres.
        The graph must hold the pairs within :attr:`cutoff` (the network uses those
        within :attr:`local_cutoff`); with a baseline the outputs are float64.

        Returns:
            ``site_energies`` (N,) eV, ``energy`` (B,) eV, ``forces`` (N, 3) eV/Å,
            ``stress`` (B, 3, 3) eV/Å³ (NaN for structures that are not fully periodic).
        """
        if (forces or stress) and not create_graph:  # inference: blocks of centres in parallel
            with parallel_section():
                return self._forward(graph, forces, stress, create_graph, energy_mask, with_baseline)
        return self._forward(graph, forces, stress, create_graph, energy_mask, with_baseline)

    def _forward(self, graph, forces, stress, create_graph, energy_mask, with_baseline=True) -> dict[str, torch.Tensor]:
        full, graph = graph, graph.within(self.local_cutoff)  # the network's pairs
        grad = None
        if not (forces or stress):
            edge_vec = graph.edge_vectors().detach()
            sites = self.site_energies(graph, edge_vec)
        elif create_graph:  # training on forces: autograd through the edges, graph of the derivatives kept
            edge_vec = graph.edge_vectors().detach().requires_grad_(True)
            sites, grad = edge_gradient_by_autograd(lambda vec: self.site_energies(graph, vec), edge_vec,
                                                    energy_mask, create_graph=True)
        elif not self.shares_blocks:  # inference on the whole graph at once
            edge_vec = graph.edge_vectors().detach()
            sites, grad = self.site_energies_and_edge_gradient(graph, edge_vec, None, energy_mask)
        else:  # inference: hand-written backward over the edges (same numbers, a fraction of the work)

            def block(rows: slice, geometry: EdgeGeometry):
                mask = None if energy_mask is None else energy_mask[rows]
                return self.site_energies_and_edge_gradient(graph, geometry.edge_vec, geometry, mask)

            site_parts, grad_parts = zip(*map_geometry_blocks(graph, block))
            edge_vec = graph.inference_edge_vectors()  # those of the blocks (the graph's cache)
            sites, grad = torch.cat(site_parts), torch.cat(grad_parts)
        baseline = None
        if self.baseline is not None and with_baseline:  # fixed pair potential on the full neighbour list
            baseline = self.baseline.site_energies_and_edge_gradient(full, energy_mask if forces or stress else None)
            sites = sites + baseline[0]
        energy = torch.zeros(graph.n_structures, dtype=torch.float64).index_add(0, graph.centre_batch, sites)
        out = {"site_energies": sites, "energy": energy}
        if forces:
            out["forces"] = forces_from_edge_gradient(graph, grad)
            if baseline is not None:
                out["forces"] = out["forces"] + forces_from_edge_gradient(full, baseline[1])
        if stress:
            out["stress"] = stress_from_edge_gradient(graph, edge_vec, grad)
            if baseline is not None:
                out["stress"] = out["stress"] + stress_from_edge_gradient(
                    full, full.inference_edge_vectors().to(torch.float64), baseline[1])
        return out

    # ---- PotentialModel protocol (numpy in, numpy out) -------------------------------

    def energy_forces_stress(self, positions, numbers, cell, pbc) -> tuple[float, np.ndarray, np.ndarray]:
        """Periodic evaluation: energy (eV), forces (N, 3) eV/Å, stress (3, 3) eV/Å³ (ASE sign)."""
        graph = self.make_graph(positions, numbers, cell, pbc)
        out = self.forward(graph, forces=True, stress=True)
        return (
            float(out["energy"][0].detach()),
            out["forces"].detach().double().numpy(),
            out["stress"][0].detach().double().numpy(),
        )

    def cluster_site_energies_forces(self, positions, numbers, energy_mask,
                                     with_baseline: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Open-boundary evaluation: site energies (M,) eV, forces (M, 3) of ``sum(E[mask])``.

        Only the ``energy_mask`` atoms are centres (the others, e.g. ghosts, enter
        as neighbours only); their site energies are NaN in the returned array.
        ``with_baseline`` False: the network alone (neighbours within :attr:`local_cutoff`).
        """
        mask = np.asarray(energy_mask, dtype=bool)
        cutoff = self.cutoff if with_baseline else self.local_cutoff
        graph = build_cluster_graph(positions, numbers, mask, self.species, cutoff, self.dtype)
        out = self.forward(graph, forces=True, stress=False, with_baseline=with_baseline)
        sites = np.full(len(mask), np.nan)
        sites[mask] = out["site_energies"].detach().numpy()
        return sites, out["forces"].detach().double().numpy()
