"""Allegro-style edge Born-charge model (``architecture: "edge"``).

Features live on the edges i→j of a centre i (pairs within the cutoff) and are
iterated over ``edge_layers`` layers; every quantity is a sum over the centre's
own edges, so the receptive field equals the cutoff (the MD domain
decomposition relies on that).

Per edge: a scalar latent ``x_ij`` (``radial_hidden`` wide) and equivariant
features ``V_ij[c]`` (``channels`` C) with irreps 0e ⊕ 1o ⊕ 1e ⊕ 2e (12
components, e3nn real basis, 1o = Cartesian x, y, z). One layer:

1. environment of the centre ``E_i[c] = Σ_k w_c(x_ik) env(r_ik) Y(r̂_ik) / avg_neighbours``
   (0e ⊕ 1o ⊕ 2e);
2. channel-wise tensor product ``V_ij ⊗ E_i`` over all 17 parity-allowed paths into
   0e ⊕ 1o ⊕ 1e ⊕ 2e (Wigner 3j, learned per path and channel); since ``E_i`` is per
   centre this is one 12×12 matrix per (centre, channel) applied to every edge;
3. channel mixing, then the latent update ``x ← x + MLP(x, invariants)`` (the 0e
   part and squared norms of the 1o, 1e, 2e parts) and latent-dependent gates on
   each irrep of ``V`` (residual).

Readout: ``Z̃_i = Σ_j env(r_ij) [s(x_ij) ⊕ Σ_c a_c(x_ij) V_ij[c, 1e] ⊕ Σ_c b_c(x_ij) V_ij[c, 2e]] /
sqrt(avg_neighbours)`` — isotropic (0e), antisymmetric (1e) and symmetric traceless (2e)
parts of Z — times the per-species ``charge_scales`` (e), plus the per-species isotropic
prior ``mean_charges`` (e), mapped to Cartesian ``Z[α, β]`` by e3nn's
``CartesianTensor("ij")``. ASR: mean subtraction per structure (as
:class:`~bornfield.models.born.EquivariantBornModel`, whose forward and
evaluation methods this class inherits). Exactly O(3)-equivariant.
"""

from __future__ import annotations

import math

import torch
from e3nn import io, o3
from torch import nn

from bornfield.models.base import BornfieldModel
from bornfield.models.born import EquivariantBornModel
from bornfield.models.graph import Graph
from bornfield.models.layers import BesselBasis, EdgeGeometry, ExactConstants, polynomial_envelope
from bornfield.models.potential import edge_geometry

#: edge feature irreps (l, parity) and their component slices in the 12-vector
FEATURE_IRREPS = ((0, 1), (1, -1), (1, 1), (2, 1))
FEATURE_SLICES = ((0, 1), (1, 4), (4, 7), (7, 12))
#: environment irreps (spherical harmonics of the edges): 0e, 1o, 2e, slices of the 9-vector
ENV_IRREPS = ((0, 1), (1, -1), (2, 1))
ENV_SLICES = ((0, 1), (1, 4), (4, 9))


def tensor_product_paths() -> tuple[list[tuple[int, int, int]], torch.Tensor]:
    """Paths (feature irrep, env irrep, output irrep) and their coupling tensors (P, 9, 12, 12), float64.

    ``basis[p, j, i, k]`` couples feature component i and environment component j into
    output component k (Wigner 3j times sqrt(2 l_out + 1)).
    """
    paths, tensors = [], []
    for a, (l1, p1) in enumerate(FEATURE_IRREPS):
        for b, (l2, p2) in enumerate(ENV_IRREPS):
            for c, (l3, p3) in enumerate(FEATURE_IRREPS):
                if p1 * p2 != p3 or not abs(l1 - l2) <= l3 <= l1 + l2:
                    continue
                block = torch.zeros(9, 12, 12, dtype=torch.float64)
                w3j = o3.wigner_3j(l1, l2, l3, dtype=torch.float64) * math.sqrt(2 * l3 + 1)  # (i, j, k)
                (i0, i1), (j0, j1), (k0, k1) = FEATURE_SLICES[a], ENV_SLICES[b], FEATURE_SLICES[c]
                block[j0:j1, i0:i1, k0:k1] = w3j.permute(1, 0, 2)
                paths.append((a, b, c))
                tensors.append(block)
    return paths, torch.stack(tensors)


def _mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_out))


class EdgeLayer(nn.Module):
    """One edge layer: environment, tensor product, channel mixing, latent update, gates."""

    def __init__(self, channels: int, latent: int, n_paths: int, path_out: list[int]):
        super().__init__()
        c = channels
        self.channels = c
        self.env_weights = nn.Linear(latent, 3 * c)
        # per path and channel; normalised by the number of paths into each output irrep
        fan_in = torch.tensor([path_out.count(k) for k in path_out], dtype=torch.get_default_dtype())
        self.path_weight = nn.Parameter(torch.randn(n_paths, c) / fan_in.sqrt().unsqueeze(1))
        self.mix = nn.Parameter(torch.eye(c) + 0.1 * torch.randn(c, c) / math.sqrt(c))
        self.update = _mlp(latent + 4 * c, latent, latent)
        self.gates = nn.Linear(latent, 4 * c)
        with torch.no_grad():
            self.update[-1].weight.mul_(0.1)
            self.gates.bias.fill_(1.0)

    def forward(self, x, v, sh_env, basis, norm_sums, avg_neighbours):
        """x (N, K, H), v (N, C, K, 12), sh_env (N, K, 9) harmonics × envelope -> new (x, v).

        ``norm_sums`` (11, 3) 0/1 sums the squared 1o, 1e, 2e components.
        """
        n, c, k, _ = v.shape
        weights = self.env_weights(x)  # (N, K, 3C)
        full = torch.bmm(weights.transpose(1, 2), sh_env) / avg_neighbours  # (N, 3C, 9)
        env = torch.cat([full[:, :c, 0:1], full[:, c : 2 * c, 1:4], full[:, 2 * c :, 4:9]], dim=-1)  # (N, C, 9)
        coupling = torch.einsum("pc,pjik->cjik", self.path_weight, basis).reshape(c, 9, 144)
        matrices = torch.bmm(env.transpose(0, 1), coupling).view(c, n, 12, 12).transpose(0, 1)  # (N, C, 12, 12)
        out = torch.bmm(v.reshape(n * c, k, 12), matrices.reshape(n * c, 12, 12)).view(n, c, k * 12)
        out = torch.bmm(self.mix.expand(n, c, c), out).view(n, c, k, 12)  # (faster than a broadcast matmul)
        # invariants: the 0e value and the squared norms of 1o, 1e, 2e -> (N, K, 4C), irrep-major
        norms = torch.matmul(out[..., 1:].square(), norm_sums.to(out.dtype))  # (N, C, K, 3)
        invariants = torch.cat([out[..., :1], norms], dim=-1).permute(0, 2, 3, 1).reshape(n, k, 4 * c)
        x = x + self.update(torch.cat([x, invariants], dim=-1))
        gates = self.gates(x).view(n, k, 4, c).permute(0, 3, 1, 2)  # (N, C, K, 4)
        gated = torch.cat([out[..., lo:hi] * gates[..., s : s + 1] for s, (lo, hi) in enumerate(FEATURE_SLICES)], -1)
        return x, v + gated


class EdgeStack:
    """The edge layers of an Allegro-style model (mixin of an ``nn.Module`` with ``constants``).

    :meth:`build_edge_stack` creates the embedding of the edges, their first equivariant features
    and the :class:`EdgeLayer` s; :meth:`edge_features` runs them. The subclass stores the returned
    coupling tensor as ``constants["coupling"]`` and reads the edges out.
    """

    def build_edge_stack(self, cutoff: float, channels: int, n_basis: int, radial_hidden: int,
                         avg_neighbours: float, edge_layers: int) -> torch.Tensor:
        """Create the stack's modules; returns the tensor-product coupling (P, 9, 12, 12), float64."""
        if edge_layers < 1:
            raise ValueError(f"edge_layers must be >= 1 (got {edge_layers})")
        c, h = int(channels), int(radial_hidden)
        self.channels = c
        self.avg_neighbours = float(avg_neighbours)
        self.n_species = len(self.species)
        self.basis = BesselBasis(cutoff, n_basis)
        self.embed = nn.Sequential(_mlp(n_basis + 2 * self.n_species, h, h), nn.SiLU())
        self.initial = nn.Linear(h, 3 * c)  # weights of Y_0, Y_1, Y_2 in the first edge features
        paths, coupling = tensor_product_paths()
        path_out = [p[2] for p in paths]
        self.layers = nn.ModuleList(EdgeLayer(c, h, len(paths), path_out) for _ in range(int(edge_layers)))
        # (11, 3): sums the squares of the 1o, 1e, 2e components (0/1)
        self.norm_sums = torch.zeros(11, 3)
        for a, (lo, hi) in enumerate(FEATURE_SLICES[1:]):
            self.norm_sums[lo - 1 : hi - 1, a] = 1.0
        return coupling

    def edge_features(self, geometry: EdgeGeometry) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """After the edge layers: latent x (N, K, H), features v (N, C, K, 12), envelope (N, K) (0 on padding)."""
        dtype = geometry.sh.dtype
        c = self.channels
        n, k = geometry.r.shape
        envelope = polynomial_envelope(geometry.r, self.cutoff)  # (N, K); 0 on padding slots
        sh = geometry.sh
        sh_env = sh * envelope.unsqueeze(-1)
        x = self.embed(torch.cat([geometry.bessel(self.basis), geometry.species_onehot(self.n_species, dtype)], -1))
        w0 = self.initial(x).view(n, k, 3, c)  # (N, K, 3, C)
        v = sh.new_zeros(n, c, k, 12)
        v[..., 0] = (w0[:, :, 0] * sh[..., 0:1]).transpose(1, 2)
        v[..., 1:4] = (w0[:, :, 1].unsqueeze(-1) * sh[..., 1:4].unsqueeze(2)).permute(0, 2, 1, 3)
        v[..., 7:12] = (w0[:, :, 2].unsqueeze(-1) * sh[..., 4:9].unsqueeze(2)).permute(0, 2, 1, 3)
        basis = self.constants.get("coupling", dtype)
        for layer in self.layers:
            x, v = layer(x, v, sh_env, basis, self.norm_sums, self.avg_neighbours)
        return x, v, envelope


class EdgeBornModel(EdgeStack, EquivariantBornModel):
    """Allegro-style edge model of the full Born tensor (e); ``architecture="edge"``.

    Args:
        species: chemical symbols. cutoff: Å (= receptive field).
        channels: equivariant edge channels C. n_basis: Bessel functions.
        radial_hidden: width H of the edge latent. hidden: width of the edge readout MLP.
        avg_neighbours: typical neighbour count (normalises the sums).
        mean_charges: isotropic prior per species (e). charge_scales: per-species scale (e) of the learned part.
        edge_layers: number of edge layers (≥ 1).
        interactions: stored for file compatibility; unused.
    """

    architecture = "edge"
    #: Z is assembled from its 0e + 1e + 2e parts (the change of basis to Cartesian 3x3 is kept)
    assembles_irreps = True

    def __init__(
        self,
        species,
        cutoff: float = 5.0,
        channels: int = 8,
        n_basis: int = 8,
        radial_hidden: int = 32,
        hidden: int = 64,
        avg_neighbours: float = 30.0,
        mean_charges: dict[str, float] | None = None,
        charge_scales: dict[str, float] | None = None,
        edge_layers: int = 2,
        architecture: str = "edge",
        interactions: int = 2,
    ):
        BornfieldModel.__init__(self, species, cutoff)
        if architecture != self.architecture:
            raise ValueError(f"{type(self).__name__} needs architecture {self.architecture!r} (got {architecture!r})")
        mean_charges = {s: float((mean_charges or {}).get(s, 0.0)) for s in self.species}
        charge_scales = {s: float((charge_scales or {}).get(s, 1.0)) for s in self.species}
        self.hyperparameters = {
            **self._density_hyperparameters(channels, n_basis, radial_hidden, hidden, avg_neighbours),
            "mean_charges": mean_charges,
            "charge_scales": charge_scales,
            "edge_layers": int(edge_layers),
            "architecture": self.architecture,
            "interactions": int(interactions),
        }
        self.interactions = int(interactions)
        coupling = self.build_edge_stack(cutoff, channels, n_basis, radial_hidden, avg_neighbours, edge_layers)
        c, h = self.channels, int(radial_hidden)
        self.readout = _mlp(h, hidden, self.readout_width(c))
        with torch.no_grad():  # start near the isotropic prior
            self.readout[-1].weight.mul_(0.1)
            self.readout[-1].bias.zero_()
        self.charge_offset = nn.Parameter(torch.tensor([mean_charges[s] for s in self.species]))
        self.register_buffer("charge_scale", torch.tensor([charge_scales[s] for s in self.species]))
        constants = {"coupling": coupling}
        if self.assembles_irreps:
            previous = torch.get_default_dtype()
            torch.set_default_dtype(torch.float64)
            try:
                constants["to_cartesian"] = io.CartesianTensor("ij").reduced_tensor_products().change_of_basis
            finally:
                torch.set_default_dtype(previous)
        self.constants = ExactConstants(**constants)

    @staticmethod
    def readout_width(channels: int) -> int:
        """Outputs of the per-edge readout MLP: the 0e coefficient and the 1e, 2e channel weights."""
        return 1 + 2 * channels

    def set_charge_scales(self, charge_scales: dict[str, float]) -> None:
        """Per-species scale (e) of the network output (the spread of the training tensors)."""
        values = {s: float(charge_scales.get(s, 1.0)) for s in self.species}
        self.hyperparameters["charge_scales"] = values
        with torch.no_grad():
            self.charge_scale.copy_(torch.tensor([values[s] for s in self.species]))

    @torch.no_grad()
    def fit_normalisation(self, graphs) -> None:
        """Nothing to fit: the edge sums are normalised by ``avg_neighbours`` and the output by ``charge_scales``."""

    def raw_charges(self, graph: Graph, geometry: EdgeGeometry | None = None) -> torch.Tensor:
        """Per-centre tensors (N_c, 3, 3) e before the ASR correction (``geometry`` may be a block of centres)."""
        if geometry is None:
            graph = graph.within(self.cutoff)
            geometry = edge_geometry(graph, graph.edge_vectors())
        dtype = geometry.sh.dtype
        c = self.channels
        x, v, envelope = self.edge_features(geometry)
        coeffs = self.readout(x) * (envelope * self.avg_neighbours**-0.5).unsqueeze(-1)  # (N, K, 1 + 2C)
        scalar = coeffs[..., 0].sum(1, keepdim=True)  # (N, 1)
        vector = torch.einsum("nkc,nckm->nm", coeffs[..., 1 : 1 + c], v[..., 4:7])
        tensor = torch.einsum("nkc,nckm->nm", coeffs[..., 1 + c :], v[..., 7:12])
        species = geometry.centre_species
        scale = self.charge_scale[species, None]
        scalar = scalar * scale + self.charge_offset[species, None] * math.sqrt(3.0)
        irreps = torch.cat([scalar, vector * scale, tensor * scale], dim=-1)
        return torch.einsum("nk,kij->nij", irreps, self.constants.get("to_cartesian", dtype))
