"""Building blocks shared by the potential and the Born-charge models.

One strictly local, single-pass design (no message passing, receptive field =
cutoff), chosen for CPU speed in long field MD:

1. Edge features: Bessel radial basis of r_ij, one-hot species of i and j ->
   radial MLP -> ``C`` radial channels for each l = 0, 1, 2, multiplied by a
   polynomial envelope that vanishes with its first derivatives at the cutoff
   (smooth energies and forces).
2. Atomic density (ACE "A-basis"): ``A_i[l, c, m] = Σ_j R_{lc}(r_ij, z_i, z_j) Y_lm(r̂_ij)``
   with e3nn real spherical harmonics (1o vectors are Cartesian x, y, z in
   e3nn 0.6; 2e tensors are symmetric traceless).
3. Invariants from products of the densities: power spectrum with learned
   channel mixing for l = 1, 2 and the (1,1,2), (2,2,2) bispectrum-like
   triple products (Wigner 3j). These are body-order 3-4 invariant features.

Everything is exactly rotation, reflection, translation and permutation
invariant/equivariant by construction; tests check it numerically.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn


def polynomial_envelope(r: torch.Tensor, cutoff: float, p: int = 6) -> torch.Tensor:
    """Smooth cutoff envelope (Klicpera et al. 2020): 1 at r=0, 0 with p-1 zero derivatives at r_c."""
    x = r / cutoff
    # 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2), in Horner form (fewer kernels)
    value = 1.0 + x**p * (-(p + 1) * (p + 2) / 2 + x * (p * (p + 2) - p * (p + 1) / 2 * x))
    return torch.where(x < 1.0, value, torch.zeros_like(value))


class EdgeGeometry:
    """Per-edge quantities that do not depend on a model's weights, computed once per step.

    Shared by every :class:`AtomicDensity` evaluated on the same edges (the
    potential and the Born model of one MD step, committee members), so the
    distances and spherical harmonics are computed once. Radial inputs
    (Bessel basis, envelope) are cached per (cutoff, n_basis, avg_neighbours).

    Args:
        edge_vec: (N, K, 3) Å, padding slots longer than every cutoff.
        centre_species: (N,) species index of the centre of each row.
        neighbour_species: (N, K) species index of each neighbour.
    """

    def __init__(self, edge_vec: torch.Tensor, centre_species: torch.Tensor, neighbour_species: torch.Tensor):
        self.edge_vec = edge_vec
        self.centre_species = centre_species
        self.neighbour_species = neighbour_species
        self.r = torch.linalg.norm(edge_vec, dim=-1)
        self._with_grad = torch.is_grad_enabled()
        # (N, K, 9): Y_00 = 1, then the 1o (x, y, z) and 2e components (e3nn "component" normalisation)
        self.sh = o3.spherical_harmonics([0, 1, 2], edge_vec, normalize=True, normalization="component")
        self._cache: dict[tuple, torch.Tensor] = {}

    def _cached(self, key: tuple, compute) -> torch.Tensor:
        # a value computed under no_grad must not be reused when gradients are wanted
        grad = torch.is_grad_enabled()
        if grad and not self._with_grad and self.edge_vec.requires_grad:
            raise RuntimeError("EdgeGeometry built under torch.no_grad() cannot serve a gradient evaluation")
        for mode in ((True,) if grad else (False, True)):
            if (key, mode) in self._cache:
                return self._cache[(key, mode)]
        value = compute()
        self._cache[(key, grad)] = value
        return value

    def species_onehot(self, n_species: int, dtype: torch.dtype) -> torch.Tensor:
        """(N, K, 2 n_species) one-hot species of the centre and of the neighbour of each edge."""
        key = ("onehot", n_species, dtype)
        if key not in self._cache:  # no gradient flows through the species
            eye = torch.eye(n_species, dtype=dtype)
            n, k = self.neighbour_species.shape
            self._cache[key] = torch.cat(
                [eye[self.centre_species].unsqueeze(1).expand(n, k, n_species), eye[self.neighbour_species]], dim=-1
            )
        return self._cache[key]

    def bessel(self, basis: "BesselBasis") -> torch.Tensor:
        """(N, K, n_basis) radial basis of the edge lengths."""
        return self._cached(("bessel", basis.cutoff, int(basis.frequencies.numel())), lambda: basis(self.r))

    def scaled_harmonics(self, cutoff: float, avg_neighbours: float) -> torch.Tensor:
        """(N, K, 9) spherical harmonics times the cutoff envelope / sqrt(avg_neighbours)."""
        def compute() -> torch.Tensor:
            envelope = polynomial_envelope(self.r, cutoff) * avg_neighbours**-0.5
            return self.sh * envelope.unsqueeze(-1)

        return self._cached(("sh", float(cutoff), float(avg_neighbours)), compute)


class ExactConstants:
    """Fixed coupling tensors (Wigner 3j, change of basis) kept in float64 and cast on use.

    Not buffers on purpose: a model saved in float32 and loaded in float64 must
    still use the exact constants, or equivariance degrades to float32 precision.
    """

    def __init__(self, **tensors: torch.Tensor):
        self._float64 = {k: v.to(torch.float64) for k, v in tensors.items()}
        self._cache: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        key = (name, dtype)
        if key not in self._cache:
            self._cache[key] = self._float64[name].to(dtype)
        return self._cache[key]


class BesselBasis(nn.Module):
    """Radial basis ``sqrt(2/r_c) sin(n π r / r_c) / r`` for n = 1..n_basis (r in Å)."""

    def __init__(self, cutoff: float, n_basis: int):
        super().__init__()
        self.cutoff = float(cutoff)
        self.register_buffer("frequencies", torch.arange(1, n_basis + 1) * math.pi / self.cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r.unsqueeze(-1)
        return math.sqrt(2.0 / self.cutoff) * torch.sin(self.frequencies * r) / r


class SpeciesMLP(nn.Module):
    """MLP whose first layer has separate weights per centre species.

    Input (N, F) features and (N,) species index; output (N, n_out).
    """

    def __init__(self, n_species: int, n_in: int, n_hidden: int, n_out: int):
        super().__init__()
        self.first_weight = nn.Parameter(torch.randn(n_species, n_in, n_hidden) / math.sqrt(n_in))
        self.first_bias = nn.Parameter(torch.zeros(n_species, n_hidden))
        self.rest = nn.Sequential(nn.SiLU(), nn.Linear(n_hidden, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_out))

    def forward(self, features: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        hidden = features.new_zeros(features.shape[0], self.first_bias.shape[1])
        for s in range(self.first_bias.shape[0]):
            mask = species == s
            if mask.any():
                hidden = hidden.index_put((mask,), features[mask] @ self.first_weight[s] + self.first_bias[s])
        return self.rest(hidden)


class AtomicDensity(nn.Module):
    """Equivariant per-atom neighbour densities A0 (0e), A1 (1o), A2 (2e) and their invariants.

    Args:
        n_species: number of elements the model knows.
        cutoff: Å.
        channels: radial channels C per l.
        n_basis: Bessel functions.
        radial_hidden: width of the radial MLP.
        avg_neighbours: typical number of neighbours, used to normalise the sums.
    """

    def __init__(
        self,
        n_species: int,
        cutoff: float,
        channels: int = 16,
        n_basis: int = 8,
        radial_hidden: int = 32,
        avg_neighbours: float = 30.0,
    ):
        super().__init__()
        self.n_species = n_species
        self.cutoff = float(cutoff)
        self.channels = channels
        self.avg_neighbours = float(avg_neighbours)
        self.basis = BesselBasis(cutoff, n_basis)
        self.radial = nn.Sequential(
            nn.Linear(n_basis + 2 * n_species, radial_hidden),
            nn.SiLU(),
            nn.Linear(radial_hidden, radial_hidden),
            nn.SiLU(),
            nn.Linear(radial_hidden, 3 * channels),
        )
        c = channels
        # channel mixing matrices (act on the channel index only: equivariant)
        self.mix1 = nn.Parameter(torch.eye(c) + 0.1 * torch.randn(c, c))
        self.mix2 = nn.Parameter(torch.eye(c) + 0.1 * torch.randn(c, c))
        self.mix2b = nn.Parameter(torch.eye(c) + 0.1 * torch.randn(c, c))
        self.constants = ExactConstants(
            w3j_112=o3.wigner_3j(1, 1, 2, dtype=torch.float64) * math.sqrt(5.0),
            w3j_222=o3.wigner_3j(2, 2, 2, dtype=torch.float64) * math.sqrt(5.0),
        )
        self.n_invariants = 5 * c
        # standardisation of the invariants (fitted on training data, saved in the state dict)
        self.register_buffer("feature_shift", torch.zeros(self.n_invariants))
        self.register_buffer("feature_scale", torch.ones(self.n_invariants))

    def densities(
        self, species: torch.Tensor, neighbours: torch.Tensor, edge_vec: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Neighbour densities of every atom.

        Args:
            species: (N,) species index. neighbours: (N, K) neighbour index.
            edge_vec: (N, K, 3) Å; padding slots must be longer than the cutoff.

        Returns:
            A0 (N, C), A1 (N, C, 3) Cartesian vectors (1o), A2 (N, C, 5) e3nn 2e components.
        """
        return self.densities_from_geometry(EdgeGeometry(edge_vec, species, species[neighbours]))

    #: edges per block of the radial MLP: keeps its (edges, hidden) activations in the CPU's L2 cache
    EDGES_PER_BLOCK = 8192

    def radial_weights(self, geometry: EdgeGeometry, rows: slice = slice(None)) -> torch.Tensor:
        """(n, K, 3C) radial channel weights R_{lc}(r_ij, z_i, z_j) (before the envelope) of the ``rows`` centres.

        The radial MLP acts on ``[bessel(r), onehot(z_i), onehot(z_j)]``.
        """
        bessel = geometry.bessel(self.basis)[rows]
        radial_in = torch.cat([bessel, geometry.species_onehot(self.n_species, bessel.dtype)[rows]], dim=-1)
        if torch.is_grad_enabled():
            return self.radial(radial_in)
        # inference: the same layers with in-place activations (no autograd buffers to keep)
        hidden = radial_in
        for layer in self.radial:
            hidden = nn.functional.silu(hidden, inplace=True) if isinstance(layer, nn.SiLU) else layer(hidden)
        return hidden

    def densities_from_geometry(self, geometry: EdgeGeometry) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A0 (N, C), A1 (N, C, 3), A2 (N, C, 5) from shared per-edge quantities (see :meth:`densities`).

        Evaluated in blocks of centres (cache-sized edge blocks; the result does
        not depend on the blocking).
        """
        c = self.channels
        harmonics = geometry.scaled_harmonics(self.cutoff, self.avg_neighbours)
        n, k = harmonics.shape[:2]
        block = max(1, self.EDGES_PER_BLOCK // max(k, 1))
        parts = []
        for start in range(0, n, block):
            rows = slice(start, min(start + block, n))
            weights = self.radial_weights(geometry, rows)
            # one batched product for all l: (n, 3C, K) @ (n, K, 9); keep the diagonal (l, l) blocks
            parts.append(torch.bmm(weights.transpose(1, 2), harmonics[rows]))
        full = parts[0] if len(parts) == 1 else torch.cat(parts)
        return full[:, :c, 0], full[:, c : 2 * c, 1:4], full[:, 2 * c :, 4:9]

    def invariants(self, a0: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
        """Invariant features (N, 5C) of the densities."""
        a1m = torch.einsum("ncm,cd->ndm", a1, self.mix1)
        a2m = torch.einsum("ncm,cd->ndm", a2, self.mix2)
        a2n = torch.einsum("ncm,cd->ndm", a2, self.mix2b)
        p1 = (a1 * a1m).sum(-1)
        p2 = (a2 * a2m).sum(-1)
        sym2 = torch.einsum("nci,ncj,ijk->nck", a1, a1m, self.constants.get("w3j_112", a1.dtype))
        t112 = (sym2 * a2n).sum(-1)
        t222 = torch.einsum("nci,ncj,nck,ijk->nc", a2, a2m, a2n, self.constants.get("w3j_222", a1.dtype))
        features = torch.cat([a0, p1, p2, t112, t222], dim=-1)
        return (features - self.feature_shift) / self.feature_scale

    @torch.no_grad()
    def fit_normalisation(self, features_raw: torch.Tensor) -> None:
        """Standardise the invariant features with the mean and std of ``features_raw`` (M, 5C).

        Called once by the trainer on the training set before optimisation.
        """
        # the floor keeps features that barely vary in a small training set (e.g. one crystal)
        # from being blown up: scale >= 10 % of the feature's RMS
        rms = features_raw.pow(2).mean(0).sqrt()
        std = features_raw.std(0) if features_raw.shape[0] > 1 else torch.zeros_like(rms)
        self.feature_shift.copy_(features_raw.mean(0))
        self.feature_scale.copy_(torch.maximum(std, 0.1 * rms).clamp(min=1e-6))
