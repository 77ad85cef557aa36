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

from bornfield.fieldphysics import asr_correct_batched
from bornfield.models.base import BornfieldModel
from bornfield.models.graph import Graph, build_cluster_graph
from bornfield.models.layers import AtomicDensity, EdgeGeometry, ExactConstants, SpeciesMLP, coupled
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
    """

    kind = "born"

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
    ):
        super().__init__(species, cutoff)
        mean_charges = {s: float((mean_charges or {}).get(s, 0.0)) for s in self.species}
        self.hyperparameters = {
            **self._density_hyperparameters(channels, n_basis, radial_hidden, hidden, avg_neighbours),
            "mean_charges": mean_charges,
        }
        c = int(channels)
        self.channels = c
        self.density = AtomicDensity(len(self.species), cutoff, channels, n_basis, radial_hidden, avg_neighbours)
        self.readout = SpeciesMLP(len(self.species), self.density.n_invariants, hidden, 1 + 4 * c)
        with torch.no_grad():  # start near the isotropic prior
            self.readout.rest[-1].weight.mul_(0.1)
            self.readout.rest[-1].bias.zero_()
        self.charge_offset = torch.nn.Parameter(torch.tensor([mean_charges[s] for s in self.species]))
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
            to_cartesian=basis,
        )

    def set_mean_charges(self, mean_charges: dict[str, float]) -> None:
        values = {s: float(mean_charges.get(s, 0.0)) for s in self.species}
        self.hyperparameters["mean_charges"] = values
        with torch.no_grad():
            self.charge_offset.copy_(torch.tensor([values[s] for s in self.species]))

    def raw_charges(self, graph: Graph, geometry: EdgeGeometry | None = None) -> torch.Tensor:
        """Per-centre tensors (N_c, 3, 3) e before the ASR correction.

        ``geometry`` (of the graph's edge vectors) shares distances and spherical
        harmonics with other models evaluated on the same step; it may cover a
        block of the graph's centres (then the result is that block's).
        """
        if geometry is None:
            geometry = edge_geometry(graph, graph.edge_vectors())
        density = self.density
        species = geometry.centre_species
        a0, a1, a2 = density.densities_from_geometry(geometry)
        features = density.invariants(a0, a1, a2)
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

    def forward(self, graph: Graph, asr: bool = True) -> torch.Tensor:
        """Born charges (N, 3, 3) e; ASR-corrected per structure unless ``asr=False``.

        Under ``torch.no_grad()`` (inference) the raw tensors are computed block by
        block of centres, in parallel threads when torch has several
        (:mod:`bornfield.models.threads`); the same numbers as one pass.
        """
        if torch.is_grad_enabled():
            z = self.raw_charges(graph)
            return asr_correct_batched(z, graph.centre_batch, graph.n_structures) if asr else z
        with parallel_section():
            z = torch.cat(map_geometry_blocks(graph, lambda rows, geometry: self.raw_charges(graph, geometry)))
            return asr_correct_batched(z, graph.centre_batch, graph.n_structures) if asr else z

    # ---- BornChargeModel protocol ----------------------------------------------------

    def born_charges(self, positions, numbers, cell, pbc) -> np.ndarray:
        """Periodic evaluation: Z (N, 3, 3) e, ASR exact."""
        with torch.no_grad():
            z = self.forward(self.make_graph(positions, numbers, cell, pbc))
        return z.double().numpy()

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
        edge_vec = graph.edge_vectors()
        a0, a1, a2 = self.density.densities(graph.species, graph.neighbours, edge_vec)
        rows = self.readout(self.density.invariants(a0, a1, a2), graph.species) + self.row_offset[graph.species]
        return asr_correct_batched(rows, graph.batch, graph.n_structures) if self.asr else rows

    def born_rows(self, positions, numbers, cell, pbc) -> np.ndarray:
        """Rows ``Z[:, field_axis, :]`` (N, 3) e for one structure."""
        with torch.no_grad():
            return self.forward(self.make_graph(positions, numbers, cell, pbc)).double().numpy()
