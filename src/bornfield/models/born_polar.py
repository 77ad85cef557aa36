"""Born charges as the derivative of a learned polarization (``architecture: "polar"``).

The Born tensor is by definition ``Z[j, α, β] = Ω/e ∂P_α/∂r_jβ``. With localised (Wannier)
electrons the cell dipole splits into fixed ionic charges and local dipoles,
``Ω P / e = Σ_i q_{s_i} r_i + Σ_i μ_i``, where ``μ_i`` (e·Å) is a polar vector of atom i's
environment. This model learns ``μ_i`` and differentiates:

    ``Z[j] = q_{s_j} 1 + Σ_i ∂μ_i/∂r_j``.

* ``μ_i = s_{z_i} Σ_k env(r_ik) Σ_c a_c(x_ik) V_ik[c, 1o] / sqrt(avg_neighbours)``: the 1o
  channels of the edge features of :class:`~bornfield.models.born_edge.EdgeBornModel` (same
  layers, same hyperparameters), ``s`` the per-species ``charge_scales``; ``q`` the per-species
  ``mean_charges`` (learned offsets).
* The derivative is taken through the edge vectors and scattered onto atoms like forces
  (:func:`~bornfield.models.potential.forces_from_edge_gradient`): three backward passes, one per
  field component α, kept differentiable while training. Field MD needs only the rows ``Zᵀ·E``:
  :meth:`~PolarizationBornModel.raw_field_rows` gets them by one backward pass of ``E·P``.
* Acoustic sum rule: ``Σ_j ∂μ_i/∂r_j = 0`` exactly (μ depends on differences only); the constant
  part is made sum-free by the usual mean subtraction (:mod:`bornfield.fieldphysics`).
* Equivariance: μ is an O(3) polar vector, so Z rotates as ``R Z Rᵀ``. The mixed derivatives of
  one function ``P`` make Z curl-free: ``∂Z[j, α, β]/∂r_kγ = ∂Z[k, α, γ]/∂r_jβ``.
* Receptive field: ``Z[j]`` collects ``μ_i`` of every i within the cutoff of j, each of which sees
  its own cutoff: twice the cutoff. The model is therefore evaluated as a whole structure (periodic)
  or through the cluster protocol with ghosts to :attr:`receptive_field`, not block by block of
  centres (:func:`bornfield.models.combined.shared_members` leaves it out of the shared pass). On a
  domain decomposition each domain sums its owned dipoles only, with ghosts to one cutoff, and the
  shares are summed by atom tag (:meth:`PolarizationBornModel.cluster_owned_partial`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from bornfield.fieldphysics import asr_correct_batched
from bornfield.models.born_edge import EdgeBornModel
from bornfield.models.graph import Graph, build_cluster_graph
from bornfield.models.potential import edge_geometry, forces_from_edge_gradient


class PolarizationBornModel(EdgeBornModel):
    """Z = d(polarization)/d(position) of learned local dipoles (e); ``architecture="polar"``.

    Hyperparameters as :class:`EdgeBornModel`.
    """

    architecture = "polar"
    #: Z[j] needs the dipoles of its neighbours: not evaluable block by block of centres
    shares_blocks = False
    assembles_irreps = False
    #: the rows Zᵀ·E take one backward pass, the full Z three
    field_rows_cheaper = True
    #: Z is a sum over dipoles: a domain may sum its owned dipoles only (:meth:`cluster_owned_partial`)
    sums_owned_dipoles = True

    @staticmethod
    def readout_width(channels: int) -> int:
        """Outputs of the per-edge readout MLP: one weight per 1o channel."""
        return channels

    @property
    def receptive_field(self) -> float:
        """Å: twice the cutoff (the dipoles of the neighbours within one cutoff)."""
        return 2.0 * self.cutoff

    @property
    def network_receptive_field(self) -> float:
        return self.receptive_field

    def dipoles(self, geometry) -> torch.Tensor:
        """Local dipoles μ (N_c, 3) e·Å of the centres of ``geometry``."""
        x, v, envelope = self.edge_features(geometry)
        coeffs = self.readout(x) * (envelope * self.avg_neighbours**-0.5).unsqueeze(-1)  # (N, K, C)
        vector = torch.einsum("nkc,nckm->nm", coeffs, v[..., 1:4])  # 1o = Cartesian (x, y, z)
        return vector * self.charge_scale[geometry.centre_species, None]

    def raw_charges(self, graph: Graph, geometry=None) -> torch.Tensor:
        """Tensors (N, 3, 3) e of every atom of ``graph`` before the ASR correction.

        Z of an atom is complete when every atom within one cutoff of it is a centre with its
        whole neighbourhood in the graph (periodic graphs; clusters as built by
        :meth:`cluster_born_charges_raw`). ``geometry`` (a block of centres) is not accepted.
        """
        if geometry is not None:
            raise ValueError("PolarizationBornModel evaluates whole graphs, not blocks of centres")
        graph = graph.within(self.cutoff)
        z = self._dipole_derivatives(graph)
        offset = self.charge_offset[graph.species].to(z.dtype)
        return z + offset[:, None, None] * torch.eye(3, dtype=z.dtype)

    def _dipole_derivatives(self, graph: Graph) -> torch.Tensor:
        """``Σ_i ∂μ_i/∂r_j`` (N, α, β) e of every atom j of ``graph`` over the dipoles of its centres i."""
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            edge_vec = graph.edge_vectors().detach().requires_grad_(True)
            mu = self.dipoles(edge_geometry(graph, edge_vec))
            rows = []
            for alpha in range(3):
                (grad,) = torch.autograd.grad(mu[:, alpha].sum(), edge_vec, create_graph=keep_graph,
                                              retain_graph=True)
                rows.append(-forces_from_edge_gradient(graph, grad))  # dP_α/dr (N, 3)
        z = torch.stack(rows, dim=1)  # (N, α, β)
        return z if keep_graph else z.detach()

    def raw_field_rows(self, graph: Graph, field: torch.Tensor) -> torch.Tensor:
        """``Z̃[j].T @ E`` (N, 3) eV/Å of every atom of ``graph`` by one backward pass, of
        ``Σ_i E·μ_i`` (``E`` of each atom's structure, ``field`` (B, 3) V/Å), plus ``q_j E``."""
        graph = graph.within(self.cutoff)
        rows = self._dipole_field_rows(graph, field)
        return rows + self.charge_offset[graph.species].to(rows.dtype)[:, None] * field.to(rows.dtype)[graph.batch]

    def _dipole_field_rows(self, graph: Graph, field: torch.Tensor) -> torch.Tensor:
        """``∂(Σ_i E·μ_i)/∂r_j`` (N, 3) eV/Å of every atom j of ``graph`` over the dipoles of its centres i
        (one backward pass; ``field`` (B, 3) V/Å per structure)."""
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            edge_vec = graph.edge_vectors().detach().requires_grad_(True)
            geometry = edge_geometry(graph, edge_vec)
            work = (self.dipoles(geometry) * field.to(edge_vec.dtype)[graph.centre_batch]).sum()
            (grad,) = torch.autograd.grad(work, edge_vec, create_graph=keep_graph)
        rows = -forces_from_edge_gradient(graph, grad)
        return rows if keep_graph else rows.detach()

    def cluster_owned_partial(self, positions, numbers, owned_mask, field=None) -> np.ndarray:
        """One domain's share of the raw Born values of every atom of an open-boundary cluster: the
        derivatives of the ``owned_mask`` atoms' dipoles only, plus the charge offsets of the owned
        atoms; (M, 3, 3) e, or the rows ``Z̃ᵀ·E`` (M, 3) eV/Å when ``field`` (3,) V/Å is given.

        Summed over domains that own every atom once, by atom tag, these are the owned atoms'
        :meth:`cluster_born_charges_raw` (or :meth:`cluster_field_rows_raw`). The cluster must hold the
        atoms within :attr:`cutoff` of the owned ones (not :attr:`receptive_field`).
        """
        owned = torch.as_tensor(np.asarray(owned_mask, dtype=bool))
        graph = build_cluster_graph(np.asarray(positions, dtype=float), np.asarray(numbers), owned.numpy(),
                                    self.species, self.cutoff, self.dtype)
        offset = self.charge_offset[graph.species] * owned.to(self.charge_offset.dtype)
        with torch.no_grad():
            if field is None:
                values = self._dipole_derivatives(graph)
                values = values + offset.to(values.dtype)[:, None, None] * torch.eye(3, dtype=values.dtype)
            else:
                e = torch.as_tensor(np.asarray(field, dtype=float).reshape(1, 3))
                values = self._dipole_field_rows(graph, e)
                values = values + offset.to(values.dtype)[:, None] * e[0].to(values.dtype)
        return values.double().numpy()

    def cluster_field_rows_raw(self, positions, numbers, field, centre_mask=None) -> np.ndarray:
        """:meth:`cluster_born_charges_raw` contracted with ``field`` (3,) V/Å: raw rows (count, 3) eV/Å."""
        graph, centre_mask = self._cluster_graph(positions, numbers, centre_mask)
        with torch.no_grad():
            rows = self.raw_field_rows(graph, torch.as_tensor(np.asarray(field, dtype=float).reshape(1, 3)))
        return rows.double().numpy()[centre_mask]

    def forward(self, graph: Graph, asr: bool = True) -> torch.Tensor:
        """Born charges (N, 3, 3) e of every atom; ASR-corrected per structure unless ``asr=False``."""
        graph = graph.within(self.cutoff)
        z = self.raw_charges(graph)
        return asr_correct_batched(z, graph.batch, graph.n_structures) if asr else z

    def cluster_born_charges_raw(self, positions, numbers, centre_mask=None) -> np.ndarray:
        """Open-boundary raw tensors of the ``centre_mask`` atoms (default all), (count, 3, 3) e.

        The dipoles are summed over every atom within one cutoff of a requested atom, so the
        cluster must hold all atoms within :attr:`receptive_field` of the requested ones.
        """
        graph, centre_mask = self._cluster_graph(positions, numbers, centre_mask)
        with torch.no_grad():
            z = self.raw_charges(graph)
        return z.double().numpy()[centre_mask]

    def _cluster_graph(self, positions, numbers, centre_mask) -> tuple[Graph, np.ndarray]:
        """The cluster graph whose dipole centres are the atoms within one cutoff of the
        ``centre_mask`` atoms (default all), and that mask as a bool array."""
        numbers = np.asarray(numbers)
        if centre_mask is None:
            centre_mask = np.ones(len(numbers), dtype=bool)
        centre_mask = np.asarray(centre_mask, dtype=bool)
        positions = np.asarray(positions, dtype=float)
        dipole_centres = np.zeros(len(numbers), dtype=bool)
        if centre_mask.any():
            distance, _ = cKDTree(positions[centre_mask]).query(positions, distance_upper_bound=self.cutoff)
            dipole_centres = distance < self.cutoff
        graph = build_cluster_graph(positions, numbers, dipole_centres, self.species, self.cutoff, self.dtype)
        return graph, centre_mask
