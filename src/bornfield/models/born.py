"""Born effective charge models.

:class:`EquivariantBornModel` predicts the full tensor ``Z[atom, α, β]`` (e),
exactly equivariant under rotations *and* reflections (``Z(Rx) = R Z Rᵀ``).
A rank-2 tensor of two polar vectors decomposes as 0e ⊕ 1e ⊕ 2e (isotropic
part, antisymmetric pseudovector part, symmetric traceless part); each
irreducible part is built from the atomic densities (A1: 1o, A2: 2e) with
invariant, species-dependent coefficients:

* 0e: ``z0[z_i] + s(inv_i)``;
* 1e: ``Σ_c a_c (A1_c ⊗ A1'_c)_1e + Σ_c b_c (A2_c ⊗ A2'_c)_1e`` (Wigner 3j);
* 2e: ``Σ_c d_c A2_c + Σ_c f_c (A1_c ⊗ A1'_c)_2e``;

and mapped to a Cartesian 3×3 matrix with e3nn's ``io.CartesianTensor("ij")``
change of basis.

With ``interactions=2`` a second, strictly local interaction (:class:`EdgeInteraction`)
builds a second density ``B_i[l, c] = Σ_j W_c(s_ij, h_i) Y_l(r̂_ij)`` whose edge
weights depend on invariants of the edge *in the centre's environment*
(``s_ij``: radial basis, species, ``Y_1(r̂_ij)·A1_i``, ``Y_2(r̂_ij)·A2_i``) and on the
centre's latent ``h_i``; neighbours at equal distance get different weights, which
one density with radial weights cannot do. The readout then also uses
``B2``, ``(A1 ⊗ B1)_1e,2e`` and ``(A2 ⊗ B2)_1e,2e``. The receptive field stays the
cutoff (every quantity is a sum over the centre's own edges), so the MD contracts
(ghosts reach one cutoff, blocks of centres are independent) are unchanged.
``charge_scales`` (e, per species, the spread of the training tensors) multiply the
network output: per-species normalisation of the targets.

Acoustic sum rule: the raw per-atom tensors ``Z̃_i`` are corrected by
subtracting their mean over the atoms of the structure,
``Z_i = Z̃_i - (1/N) Σ_j Z̃_j``. This is the minimum-norm correction (the
smallest change in the Frobenius norm that makes the sum vanish); it
preserves equivariance because the mean of equivariant tensors is
equivariant, and it is local-decomposable: under domain decomposition the
caller subtracts an MPI-reduced mean over owned atoms (both are
:mod:`bornfield.fieldphysics`). The same correction is
applied to the DFPT targets before training, so the model fits the
ASR-corrected DFPT tensors.

:class:`PaperRowBaseline` is the paper-style (Shimizu et al. 2023) baseline:
invariant features -> MLP -> the three components ``Z[atom, a, :]`` for one
fixed field axis a. It is not equivariant (rotating the structure does not
rotate its prediction) and only valid in the training frame.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from e3nn import io, o3
from torch import nn

from bornfield.fieldphysics import (
    asr_correct,
    asr_correct_batched,
    field_forces,
    field_forces_batched,
)
from bornfield.models.base import BornfieldModel
from bornfield.models.graph import Graph, build_cluster_graph
from bornfield.models.layers import (
    AtomicDensity,
    EdgeGeometry,
    EdgeInteraction,
    ExactConstants,
    SpeciesMLP,
    coupled,
    squashed,
)
from bornfield.models.potential import edge_geometry
from bornfield.models.threads import map_geometry_blocks, parallel_section


class EquivariantBornModel(BornfieldModel):
    """Full-tensor equivariant Born-charge model (e).

    Args:
        species: chemical symbols.
        cutoff: Å.
        channels, n_basis, radial_hidden, avg_neighbours: atomic density settings.
        hidden: width of the per-species readout MLP.
        mean_charges: isotropic prior charge per species (e), e.g. the mean of
            tr(Z)/3 in the training data; the network learns the rest.
        interactions: 1 (one density, the original model) or 2 (plus :class:`EdgeInteraction`).
        charge_scales: per-species scale (e) of the learned part (interactions=2; 1 if absent).
        feature_squash: ``asinh`` of every standardised invariant before an MLP (:func:`squashed`),
            so features far outside the training range (disordered environments) grow the
            outputs logarithmically, not polynomially; False in files written before it.
    """

    kind = "born"
    #: Z of a centre depends on its own edges only: evaluable block by block of centres, in one
    #: pass with the potential (bornfield.models.combined)
    shares_blocks = True
    #: :meth:`raw_field_rows` costs less than the full tensors (True where the rows come from one
    #: backward pass instead of three); the MD then evaluates the rows unless it needs Z itself
    field_rows_cheaper = False

    def __init__(
        self,
        species,
        cutoff: float = 5.0,
        channels: int = 16,
        n_basis: int = 8,
        radial_hidden: int = 32,
        hidden: int = 64,
        avg_neighbours: float = 30.0,
        mean_charges: dict[str, float] | None = None,
        interactions: int = 1,
        charge_scales: dict[str, float] | None = None,
        feature_squash: bool = False,
    ):
        super().__init__(species, cutoff)
        if interactions not in (1, 2):
            raise ValueError(f"interactions must be 1 or 2 (got {interactions})")
        mean_charges = {s: float((mean_charges or {}).get(s, 0.0)) for s in self.species}
        charge_scales = {s: float((charge_scales or {}).get(s, 1.0)) for s in self.species}
        self.hyperparameters = {
            **self._density_hyperparameters(channels, n_basis, radial_hidden, hidden, avg_neighbours),
            "mean_charges": mean_charges,
            "interactions": int(interactions),
            "charge_scales": charge_scales,
        }
        self.feature_squash = bool(feature_squash)
        if self.feature_squash:  # (absent from older files: they load unchanged)
            self.hyperparameters["feature_squash"] = True
        c = int(channels)
        self.channels = c
        self.interactions = int(interactions)
        n_species = len(self.species)
        self.density = AtomicDensity(n_species, cutoff, channels, n_basis, radial_hidden, avg_neighbours)
        if self.interactions == 1:
            self.readout = SpeciesMLP(n_species, self.density.n_invariants, hidden, 1 + 4 * c)
        else:
            self.latent = SpeciesMLP(n_species, self.density.n_invariants, hidden, hidden)
            self.interaction = EdgeInteraction(n_species, n_basis, c, radial_hidden, hidden, self.feature_squash)
            # 0e: 1; 1e: A1xA1', A2xA2', A1xB1, A2xB2; 2e: A2, (A1A1')_2, B2, (A1B1)_2, (A2B2)_2
            self.readout = SpeciesMLP(n_species, hidden + self.interaction.n_invariants, hidden, 1 + 9 * c)
        with torch.no_grad():  # start near the isotropic prior
            self.readout.rest[-1].weight.mul_(0.1)
            self.readout.rest[-1].bias.zero_()
        self.charge_offset = torch.nn.Parameter(torch.tensor([mean_charges[s] for s in self.species]))
        if self.interactions == 2:  # (model files of one interaction predate the per-species scale)
            self.register_buffer("charge_scale", torch.tensor([charge_scales[s] for s in self.species]))
        # (9, 3, 3): irreps 0e+1e+2e -> Cartesian Z[α, β]; built in float64 (see ExactConstants)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            basis = io.CartesianTensor("ij").reduced_tensor_products().change_of_basis
        finally:
            torch.set_default_dtype(previous)
        self.constants = ExactConstants(
            w3j_111=o3.wigner_3j(1, 1, 1, dtype=torch.float64) * math.sqrt(3.0),
            w3j_221=o3.wigner_3j(2, 2, 1, dtype=torch.float64) * math.sqrt(3.0),
            w3j_112=o3.wigner_3j(1, 1, 2, dtype=torch.float64) * math.sqrt(5.0),
            w3j_222=o3.wigner_3j(2, 2, 2, dtype=torch.float64) * math.sqrt(5.0),
            to_cartesian=basis,
        )

    def set_mean_charges(self, mean_charges: dict[str, float]) -> None:
        values = {s: float(mean_charges.get(s, 0.0)) for s in self.species}
        self.hyperparameters["mean_charges"] = values
        with torch.no_grad():
            self.charge_offset.copy_(torch.tensor([values[s] for s in self.species]))

    def set_charge_scales(self, charge_scales: dict[str, float]) -> None:
        """Per-species scale (e) of the network output (the spread of the training tensors)."""
        values = {s: float(charge_scales.get(s, 1.0)) for s in self.species}
        self.hyperparameters["charge_scales"] = values
        if self.interactions == 2:
            with torch.no_grad():
                self.charge_scale.copy_(torch.tensor([values[s] for s in self.species]))

    @torch.no_grad()
    def fit_normalisation(self, graphs) -> None:
        """Standardise the invariant features of both interactions on training graphs (list of Graph).

        In order: the first density's invariants, then the edge invariants of the
        second interaction, then the invariants of its density (each fit uses the
        standardisation fitted before it).
        """
        geometries = [edge_geometry(graph, graph.edge_vectors()) for graph in graphs]
        density = self.density
        self.density.fit_normalisation(torch.cat([density.invariants(*density.densities_from_geometry(g))
                                                  for g in geometries]))
        if self.interactions == 1:
            return
        self.interaction.fit_normalisation(geometries, density, [self._first_interaction(g) for g in geometries])

    def _first_interaction(self, geometry: EdgeGeometry):
        """A1 (N, C, 3), A2 (N, C, 5) and the latent (N, hidden) of the centres of ``geometry``."""
        density = self.density
        a0, a1, a2 = density.densities_from_geometry(geometry)
        return a1, a2, self.latent(squashed(density.invariants(a0, a1, a2), self.feature_squash),
                                   geometry.centre_species)

    def raw_charges(self, graph: Graph, geometry: EdgeGeometry | None = None) -> torch.Tensor:
        """Per-centre tensors (N_c, 3, 3) e before the ASR correction.

        ``geometry`` (of the graph's edge vectors) shares distances and spherical
        harmonics with other models evaluated on the same step; it may cover a
        block of the graph's centres (then the result is that block's).
        """
        if geometry is None:
            graph = graph.within(self.cutoff)
            geometry = edge_geometry(graph, graph.edge_vectors())
        if self.interactions == 2:
            return self._raw_charges_two(geometry)
        density = self.density
        species = geometry.centre_species
        a0, a1, a2 = density.densities_from_geometry(geometry)
        features = squashed(density.invariants(a0, a1, a2), self.feature_squash)
        coeffs = self.readout(features, species)
        c = self.channels
        a1m = torch.einsum("ncm,cd->ndm", a1, density.mix1)
        a2m = torch.einsum("ncm,cd->ndm", a2, density.mix2)
        const = self.constants
        cross11 = coupled(a1, a1m, const.get("w3j_111", a1.dtype))
        cross22 = coupled(a2, a2m, const.get("w3j_221", a1.dtype))
        sym11 = coupled(a1, a1m, const.get("w3j_112", a1.dtype))
        scalar = coeffs[:, 0:1] + self.charge_offset[species, None] * math.sqrt(3.0)
        vector = (coeffs[:, 1 : 1 + c, None] * cross11).sum(1) + (coeffs[:, 1 + c : 1 + 2 * c, None] * cross22).sum(1)
        tensor = (coeffs[:, 1 + 2 * c : 1 + 3 * c, None] * a2).sum(1) + (coeffs[:, 1 + 3 * c :, None] * sym11).sum(1)
        irreps = torch.cat([scalar, vector, tensor], dim=-1)
        return torch.einsum("nk,kij->nij", irreps, const.get("to_cartesian", irreps.dtype))

    def _raw_charges_two(self, geometry: EdgeGeometry) -> torch.Tensor:
        """:meth:`raw_charges` with the second interaction (``interactions=2``)."""
        a1, a2, latent = self._first_interaction(geometry)
        _, b1, b2, invariants = self.interaction(geometry, self.density, a1, a2, latent)
        species = geometry.centre_species
        coeffs = self.readout(torch.cat([latent, invariants], dim=-1), species)
        c = self.channels
        density = self.density
        const = self.constants
        a1m = torch.einsum("ncm,cd->ndm", a1, density.mix1)
        a2m = torch.einsum("ncm,cd->ndm", a2, density.mix2)
        w111, w221 = const.get("w3j_111", a1.dtype), const.get("w3j_221", a1.dtype)
        w112, w222 = const.get("w3j_112", a1.dtype), const.get("w3j_222", a1.dtype)
        vectors = (coupled(a1, a1m, w111), coupled(a2, a2m, w221), coupled(a1, b1, w111), coupled(a2, b2, w221))
        tensors = (a2, coupled(a1, a1m, w112), b2, coupled(a1, b1, w112), coupled(a2, b2, w222))
        vector = sum((coeffs[:, 1 + k * c : 1 + (k + 1) * c, None] * v).sum(1) for k, v in enumerate(vectors))
        tensor = sum((coeffs[:, 1 + (4 + k) * c : 1 + (5 + k) * c, None] * t).sum(1) for k, t in enumerate(tensors))
        scale = self.charge_scale[species, None]
        scalar = coeffs[:, 0:1] * scale + self.charge_offset[species, None] * math.sqrt(3.0)
        irreps = torch.cat([scalar, vector * scale, tensor * scale], dim=-1)
        return torch.einsum("nk,kij->nij", irreps, const.get("to_cartesian", irreps.dtype))

    def forward(self, graph: Graph, asr: bool = True) -> torch.Tensor:
        """Born charges (N, 3, 3) e; ASR-corrected per structure unless ``asr=False``.

        Under ``torch.no_grad()`` (inference) the raw tensors are computed block by
        block of centres, in parallel threads when torch has several
        (:mod:`bornfield.models.threads`); the same numbers as one pass. A graph with
        longer pairs than the model's cutoff is restricted to it (:meth:`Graph.within`).
        """
        graph = graph.within(self.cutoff)
        if torch.is_grad_enabled():
            z = self.raw_charges(graph)
            return asr_correct_batched(z, graph.centre_batch, graph.n_structures) if asr else z
        with parallel_section():
            z = torch.cat(map_geometry_blocks(graph, lambda rows, geometry: self.raw_charges(graph, geometry)))
            return asr_correct_batched(z, graph.centre_batch, graph.n_structures) if asr else z

    def raw_field_rows(self, graph: Graph, field: torch.Tensor) -> torch.Tensor:
        """Field-force rows ``Z̃[κ].T @ E`` (N, 3) eV/Å of the atoms :meth:`raw_charges` returns,
        before the ASR correction (which the rows take as the tensors do, a mean subtraction).

        Args:
            graph: as for :meth:`raw_charges` (whole graph).
            field: (B, 3) V/Å, the field of each of the graph's B structures.
        """
        return field_forces_batched(self.raw_charges(graph), field, graph.within(self.cutoff).centre_batch)

    # ---- BornChargeModel protocol ----------------------------------------------------

    def born_charges(self, positions, numbers, cell, pbc) -> np.ndarray:
        """Periodic evaluation: Z (N, 3, 3) e, ASR exact."""
        with torch.no_grad():
            z = self.forward(self.make_graph(positions, numbers, cell, pbc))
        return z.double().numpy()

    def born_field_forces(self, positions, numbers, cell, pbc, field) -> np.ndarray:
        """Periodic evaluation of the field forces ``Z.T @ E`` (N, 3) eV/Å for ``field`` (3,) V/Å,
        ASR exact: ``field_forces(born_charges(...), field)`` to float round-off."""
        graph = self.make_graph(positions, numbers, cell, pbc)
        field = torch.as_tensor(np.asarray(field, dtype=float).reshape(1, 3))
        with torch.no_grad():
            rows = self.raw_field_rows(graph, field)
        return asr_correct(rows.double().numpy())

    def cluster_field_rows_raw(self, positions, numbers, field, centre_mask=None) -> np.ndarray:
        """:meth:`cluster_born_charges_raw` contracted with ``field`` (3,) V/Å: raw rows (count, 3) eV/Å."""
        return field_forces(self.cluster_born_charges_raw(positions, numbers, centre_mask), field)

    def cluster_born_charges_raw(self, positions, numbers, centre_mask=None) -> np.ndarray:
        """Open-boundary raw tensors (M, 3, 3) e before the ASR correction.

        With ``centre_mask`` (M,) bool only those atoms are evaluated (the others
        enter as neighbours only) and the result has shape (count, 3, 3).
        """
        if centre_mask is None:
            centre_mask = np.ones(len(numbers), dtype=bool)
        graph = build_cluster_graph(positions, numbers, centre_mask, self.species, self.cutoff, self.dtype)
        with torch.no_grad():
            z = self.raw_charges(graph)
        return z.double().numpy()


class PaperRowBaseline(BornfieldModel):
    """Paper-style baseline: invariant features -> ``Z[atom, field_axis, :]`` (3 numbers per atom).

    Not equivariant. ``asr=True`` (default) subtracts the per-structure mean
    row so the predicted row also obeys the sum rule.
    """

    kind = "born_row"

    def __init__(
        self,
        species,
        cutoff: float = 5.0,
        field_axis: int = 0,
        channels: int = 16,
        n_basis: int = 8,
        radial_hidden: int = 32,
        hidden: int = 64,
        avg_neighbours: float = 30.0,
        mean_rows: dict[str, list[float]] | None = None,
        asr: bool = True,
    ):
        super().__init__(species, cutoff)
        if field_axis not in (0, 1, 2):
            raise ValueError(f"field_axis must be 0, 1 or 2 (got {field_axis})")
        mean_rows = {s: [float(v) for v in (mean_rows or {}).get(s, [0.0, 0.0, 0.0])] for s in self.species}
        self.field_axis = int(field_axis)
        self.asr = bool(asr)
        self.hyperparameters = {
            **self._density_hyperparameters(channels, n_basis, radial_hidden, hidden, avg_neighbours),
            "field_axis": self.field_axis,
            "mean_rows": mean_rows,
            "asr": self.asr,
        }
        self.density = AtomicDensity(len(self.species), cutoff, channels, n_basis, radial_hidden, avg_neighbours)
        self.readout = SpeciesMLP(len(self.species), self.density.n_invariants, hidden, 3)
        self.row_offset = torch.nn.Parameter(torch.tensor([mean_rows[s] for s in self.species]))

    def set_mean_rows(self, mean_rows: dict[str, list[float]]) -> None:
        values = {s: [float(v) for v in mean_rows.get(s, [0.0, 0.0, 0.0])] for s in self.species}
        self.hyperparameters["mean_rows"] = values
        with torch.no_grad():
            self.row_offset.copy_(torch.tensor([values[s] for s in self.species]))

    def forward(self, graph: Graph) -> torch.Tensor:
        """Rows ``Z[:, field_axis, :]`` (N, 3) e."""
        graph = graph.within(self.cutoff)
        edge_vec = graph.edge_vectors()
        a0, a1, a2 = self.density.densities(graph.species, graph.neighbours, edge_vec)
        rows = self.readout(self.density.invariants(a0, a1, a2), graph.species) + self.row_offset[graph.species]
        return asr_correct_batched(rows, graph.batch, graph.n_structures) if self.asr else rows

    def born_rows(self, positions, numbers, cell, pbc) -> np.ndarray:
        """Rows ``Z[:, field_axis, :]`` (N, 3) e for one structure."""
        with torch.no_grad():
            return self.forward(self.make_graph(positions, numbers, cell, pbc)).double().numpy()
