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
from collections.abc import Iterable, Iterator

import torch
from e3nn import o3
from torch import nn


def polynomial_envelope(r: torch.Tensor, cutoff: float, p: int = 6) -> torch.Tensor:
    """Smooth cutoff envelope (Klicpera et al. 2020): 1 at r=0, 0 with p-1 zero derivatives at r_c."""
    x = r / cutoff
    # 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2), in Horner form (fewer kernels)
    value = 1.0 + x**p * (-(p + 1) * (p + 2) / 2 + x * (p * (p + 2) - p * (p + 1) / 2 * x))
    return torch.where(x < 1.0, value, torch.zeros_like(value))


def polynomial_envelope_derivative(r: torch.Tensor, cutoff: float, p: int = 6) -> torch.Tensor:
    """d/dr of :func:`polynomial_envelope` (1/Å); zero beyond the cutoff."""
    x = r / cutoff
    a, b, c = -(p + 1) * (p + 2) / 2, p * (p + 2), -p * (p + 1) / 2
    value = x ** (p - 1) * (p * a + x * ((p + 1) * b + (p + 2) * c * x)) / cutoff
    return torch.where(x < 1.0, value, torch.zeros_like(value))


def _harmonic_polynomials() -> dict[str, torch.Tensor]:
    """e3nn's l = 1, 2 "component" spherical harmonics as homogeneous polynomials of the unit vector u.

    ``Y1_m(u) = Σ_a linear[m, a] u_a`` and ``Y2_m(u) = Σ_ab quadratic[m, a, b] u_a u_b``
    (quadratic symmetric), read off e3nn by polarisation in float64. Used for the
    analytic gradient ``∂Y/∂v = (1 - u uᵀ) ∇P(u) / |v|`` (:class:`DensityTape`).
    """
    eye = torch.eye(3, dtype=torch.float64)

    def homogeneous(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # P_l(v) = |v|^l Y_l(v / |v|)
        sh = o3.spherical_harmonics([1, 2], v, normalize=True, normalization="component")
        norm = v.norm(dim=-1, keepdim=True)
        return sh[..., :3] * norm, sh[..., 3:] * norm**2

    linear, diagonal = homogeneous(eye)  # (3 axes, 3 m), (3 axes, 5 m)
    quadratic = torch.zeros(5, 3, 3, dtype=torch.float64)
    for a in range(3):
        quadratic[:, a, a] = diagonal[a]
        for b in range(a + 1, 3):
            mixed = (homogeneous(eye[a] + eye[b])[1] - diagonal[a] - diagonal[b]) / 2
            quadratic[:, a, b] = quadratic[:, b, a] = mixed
    return {"linear": linear.T.contiguous(), "quadratic": quadratic}


def coupled(x: torch.Tensor, y: torch.Tensor, w3j: torch.Tensor) -> torch.Tensor:
    """Channel-wise coupling ``out[n, c, k] = Σ_ij x[n, c, i] y[n, c, j] w3j[i, j, k]`` (= einsum "nci,ncj,ijk->nck").

    Written as one matrix product and one batched (1 x i) @ (i x k) product:
    the same numbers as the einsum (to round-off) without its 5-index intermediates.
    """
    n, c, i = x.shape
    j, k = y.shape[-1], w3j.shape[-1]
    partial = (y.reshape(n * c, j) @ w3j.permute(1, 0, 2).reshape(j, i * k)).view(n * c, i, k)
    return torch.bmm(x.reshape(n * c, 1, i), partial).view(n, c, k)


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

    def unit_vectors(self) -> torch.Tensor:
        """(N, K, 3) edge directions ``edge_vec / r``."""
        return self._cached(("unit",), lambda: self.edge_vec / self.r.unsqueeze(-1))

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

    def radial_inputs(self, basis: "BesselBasis", n_species: int, rows_per_block: int) -> list[torch.Tensor]:
        """Blocks of ``rows_per_block`` centres of the radial MLP input ``[bessel(r), onehot(z_i), onehot(z_j)]``.

        Each block is (n, K, n_basis + 2 n_species). The blocks come from one
        ``split`` of the full tensors, so a backward pass through all of them
        concatenates their gradients once (slicing each block out of the full
        tensor would zero-fill a full-size gradient per block).
        """
        def compute() -> list[torch.Tensor]:
            bessel = self.bessel(basis)
            onehot = self.species_onehot(n_species, bessel.dtype)
            return [torch.cat(pair, dim=-1) for pair in zip(bessel.split(rows_per_block), onehot.split(rows_per_block))]

        key = ("radial_in", basis.cutoff, int(basis.frequencies.numel()), n_species, rows_per_block)
        return self._cached(key, compute)

    def scaled_harmonics_blocks(self, cutoff: float, avg_neighbours: float, rows_per_block: int) -> list[torch.Tensor]:
        """:meth:`scaled_harmonics` split into blocks of ``rows_per_block`` centres, (n, K, 9) each."""
        key = ("sh_blocks", float(cutoff), float(avg_neighbours), rows_per_block)
        return self._cached(key, lambda: list(self.scaled_harmonics(cutoff, avg_neighbours).split(rows_per_block)))

    def scaled_harmonics(self, cutoff: float, avg_neighbours: float) -> torch.Tensor:
        """(N, K, 9) spherical harmonics times the cutoff envelope / sqrt(avg_neighbours)."""
        def compute() -> torch.Tensor:
            envelope = polynomial_envelope(self.r, cutoff) * avg_neighbours**-0.5
            return self.sh * envelope.unsqueeze(-1)

        return self._cached(("sh", float(cutoff), float(avg_neighbours)), compute)


def sequential(layers: nn.Sequential, inputs: torch.Tensor) -> torch.Tensor:
    """``layers(inputs)``; without autograd, with in-place activations (no buffers to keep)."""
    if torch.is_grad_enabled():
        return layers(inputs)
    hidden = inputs
    for layer in layers:
        hidden = nn.functional.silu(hidden, inplace=True) if isinstance(layer, nn.SiLU) else layer(hidden)
    return hidden


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

    def derivative(self, r: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """d/dr (1/Å) of the basis ``values = self(r)``: ``(sqrt(2/r_c) f cos(f r) - values) / r``."""
        r = r.unsqueeze(-1)
        return (math.sqrt(2.0 / self.cutoff) * self.frequencies * torch.cos(self.frequencies * r) - values) / r


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

    def rows_per_block(self, n_neighbours: int) -> int:
        """Centres per block of :meth:`densities_from_geometry` for ``n_neighbours`` (K) slots per centre."""
        return max(1, self.EDGES_PER_BLOCK // max(n_neighbours, 1))

    def radial_network(self, radial_in: torch.Tensor) -> torch.Tensor:
        """(..., 3C) radial channel weights R_{lc}(r_ij, z_i, z_j) (before the envelope) of radial MLP inputs.

        ``radial_in`` is ``[bessel(r), onehot(z_i), onehot(z_j)]`` (..., n_basis + 2 n_species),
        see :meth:`EdgeGeometry.radial_inputs`.
        """
        return sequential(self.radial, radial_in)

    def densities_from_geometry(self, geometry: EdgeGeometry) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A0 (N, C), A1 (N, C, 3), A2 (N, C, 5) from shared per-edge quantities (see :meth:`densities`).

        Evaluated in blocks of centres (cache-sized edge blocks; the result does
        not depend on the blocking).
        """
        c = self.channels
        rows = self.rows_per_block(geometry.r.shape[1])
        inputs = geometry.radial_inputs(self.basis, self.n_species, rows)
        harmonics = geometry.scaled_harmonics_blocks(self.cutoff, self.avg_neighbours, rows)
        # one batched product for all l per block: (n, 3C, K) @ (n, K, 9); keep the diagonal (l, l) blocks
        parts = [torch.bmm(self.radial_network(x).transpose(1, 2), h) for x, h in zip(inputs, harmonics)]
        full = parts[0] if len(parts) == 1 else torch.cat(parts)
        return full[:, :c, 0], full[:, c : 2 * c, 1:4], full[:, 2 * c :, 4:9]

    def densities_with_tape(
        self, geometry: EdgeGeometry
    ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], "DensityTape"]:
        """:meth:`densities_from_geometry` without autograd, plus what :class:`DensityTape` needs.

        For inference forces: the densities are the same numbers as
        :meth:`densities_from_geometry`; ``tape.edge_gradient(dE/dA0, dE/dA1, dE/dA2)``
        then gives ``dE/d edge_vec`` with a hand-written backward pass (no autograd
        graph over the edges). Call under ``torch.no_grad()`` with a geometry built
        under ``no_grad`` from edge vectors that do not require grad.
        """
        first, act1, second, act2, last = self.radial
        if not (isinstance(act1, nn.SiLU) and isinstance(act2, nn.SiLU)):
            raise TypeError("densities_with_tape expects the Linear-SiLU-Linear-SiLU-Linear radial MLP")
        c = self.channels
        rows = self.rows_per_block(geometry.r.shape[1])
        inputs = geometry.radial_inputs(self.basis, self.n_species, rows)
        harmonics = geometry.scaled_harmonics_blocks(self.cutoff, self.avg_neighbours, rows)
        saved, parts = [], []
        for x, h in zip(inputs, harmonics):
            pre1 = first(x)
            pre2 = second(nn.functional.silu(pre1))
            weights = last(nn.functional.silu(pre2))
            saved.append((pre1, pre2, weights))
            parts.append(torch.bmm(weights.transpose(1, 2), h))
        full = parts[0] if len(parts) == 1 else torch.cat(parts)
        densities = (full[:, :c, 0], full[:, c : 2 * c, 1:4], full[:, 2 * c :, 4:9])
        return densities, DensityTape(self, geometry, rows, saved, harmonics)

    def invariants(self, a0: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
        """Invariant features (N, 5C) of the densities."""
        a1m = torch.einsum("ncm,cd->ndm", a1, self.mix1)
        a2m = torch.einsum("ncm,cd->ndm", a2, self.mix2)
        a2n = torch.einsum("ncm,cd->ndm", a2, self.mix2b)
        p1 = (a1 * a1m).sum(-1)
        p2 = (a2 * a2m).sum(-1)
        sym2 = coupled(a1, a1m, self.constants.get("w3j_112", a1.dtype))
        t112 = (sym2 * a2n).sum(-1)
        t222 = (coupled(a2, a2m, self.constants.get("w3j_222", a1.dtype)) * a2n).sum(-1)
        features = torch.cat([a0, p1, p2, t112, t222], dim=-1)
        return (features - self.feature_shift) / self.feature_scale

    @torch.no_grad()
    def fit_normalisation(self, features_raw: torch.Tensor) -> None:
        """Standardise the invariant features with the mean and std of ``features_raw`` (M, 5C).

        Called once by the trainer on the training set before optimisation.
        """
        fit_standardisation(self.feature_shift, self.feature_scale, features_raw)


@torch.no_grad()
def fit_standardisation(shift: torch.Tensor, scale: torch.Tensor, values: torch.Tensor) -> None:
    """Mean/std standardisation of ``values`` (M, F) into the buffers ``shift``, ``scale`` (F,).

    The std is floored at 10 % of the feature's RMS, so features that barely vary in a small
    training set (e.g. one crystal) are not blown up.
    """
    rms = values.pow(2).mean(0).sqrt()
    std = values.std(0) if values.shape[0] > 1 else torch.zeros_like(rms)
    shift.copy_(values.mean(0))
    scale.copy_(torch.maximum(std, 0.1 * rms).clamp(min=1e-6))


def squashed(features: torch.Tensor, squash: bool) -> torch.Tensor:
    """``asinh`` of standardised invariant features if ``squash`` (identity near 0, logarithmic
    beyond a few standard deviations), else the features unchanged.

    Without a gradient to propagate, asinh is evaluated as ``sign(x) log(|x| + hypot(x, 1))``
    (the same values to round-off; torch's own CPU asinh kernel is several times slower,
    ``benchmarks/md_throughput.py --before-src``); with one, ``torch.asinh`` (exact derivative at 0).
    """
    if not squash:
        return features
    if torch.is_grad_enabled() and features.requires_grad:
        return torch.asinh(features)
    magnitude = features.abs()
    return torch.copysign(torch.log(magnitude + torch.hypot(magnitude, torch.ones((), dtype=features.dtype))), features)


class EdgeInteraction(nn.Module):
    """Second strictly local interaction: a density whose edge weights see the centre's environment.

    Edge scalars ``s_ij = [bessel(r_ij), onehot(z_i), onehot(z_j), Y1(r̂_ij)·A1_i,c, Y2(r̂_ij)·A2_i,c]``
    (the last two standardised) and the centre latent ``h_i`` give, through an MLP,
    ``W_ij`` (3C): ``B_i[l, c] = Σ_j W_ij,lc env(r_ij) Y_l(r̂_ij) / sqrt(avg_neighbours)``.
    Invariants of the pair (A, B): ``B0``, ``B1·A1``, ``B2·A2``, ``|B1|²``, ``|B2|²`` (5C, standardised).
    """

    def __init__(self, n_species: int, n_basis: int, channels: int, hidden: int, latent: int,
                 squash: bool = False):
        super().__init__()
        c = channels
        self.channels = c
        self.squash = bool(squash)
        self.first = nn.Linear(n_basis + 2 * n_species + 2 * c, hidden)
        self.from_latent = nn.Linear(latent, hidden, bias=False)
        #: message passing sets a Linear(latent, hidden) of the neighbour's latent, fed as ``edge_bias`` below
        self.from_neighbour: nn.Linear | None = None
        self.rest = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 3 * c))
        self.n_invariants = 5 * c
        self.register_buffer("edge_shift", torch.zeros(2 * c))
        self.register_buffer("edge_scale", torch.ones(2 * c))
        self.register_buffer("feature_shift", torch.zeros(5 * c))
        self.register_buffer("feature_scale", torch.ones(5 * c))

    @staticmethod
    def edge_invariants(geometry: EdgeGeometry, a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
        """(N, K, 2C) unstandardised ``Y1(r̂_ij)·A1_i,c`` and ``Y2(r̂_ij)·A2_i,c``."""
        return _edge_products(geometry.sh, a1, a2)

    def densities(self, geometry: EdgeGeometry, density: AtomicDensity, a1, a2, latent, edge_bias=None):
        """Second density B0 (N, C), B1 (N, C, 3), B2 (N, C, 5) of the centres of ``geometry``.

        ``edge_bias`` (N, K, hidden): a per-edge term added to the first layer of the edge MLP
        (:meth:`from_neighbour` of the neighbours' latents, message passing), or None.
        """
        return self._blocked_densities(geometry, density, a1, a2, latent, None, edge_bias)

    def _blocked_densities(self, geometry: EdgeGeometry, density: AtomicDensity, a1, a2, latent, saved: list | None,
                           edge_bias=None):
        """:meth:`densities` in the density's cache-sized blocks of centres; with ``saved`` (a list,
        no autograd) the per-block tensors :class:`InteractionTape` needs are appended to it."""
        if edge_bias is not None and saved is not None:
            raise ValueError("the interaction tape has no backward for a per-edge bias (message passing)")
        c = self.channels
        rows = density.rows_per_block(geometry.r.shape[1])
        inputs = geometry.radial_inputs(density.basis, density.n_species, rows)  # [bessel(r), onehot(z_i), onehot(z_j)]
        harmonics = geometry.scaled_harmonics_blocks(density.cutoff, density.avg_neighbours, rows)  # envelope included
        n_radial = inputs[0].shape[-1]
        weight_radial, weight_edge = self.first.weight[:, :n_radial], self.first.weight[:, n_radial:]
        shifted = (self.from_latent(latent) + self.first.bias).unsqueeze(1)
        _, second, _, last = self.rest
        biases = shifted.split(rows) if edge_bias is None else (shifted + edge_bias).split(rows)
        parts = []
        for x, h, sh, b1, b2, bias in zip(inputs, harmonics, geometry.sh.split(rows), a1.split(rows),
                                          a2.split(rows), biases):
            standard = (_edge_products(sh, b1, b2) - self.edge_shift) / self.edge_scale
            # first layer on [radial inputs, edge invariants] as two products (no concatenated copy)
            pre1 = x @ weight_radial.T + squashed(standard, self.squash) @ weight_edge.T + bias
            if saved is None:
                weights = sequential(self.rest, pre1)  # (n, K, 3C)
            else:
                pre2 = second(nn.functional.silu(pre1))
                weights = last(nn.functional.silu(pre2))
                saved.append((standard, pre1, pre2, weights))
            parts.append(torch.bmm(weights.transpose(1, 2), h))
        full = parts[0] if len(parts) == 1 else torch.cat(parts)
        return full[:, :c, 0], full[:, c : 2 * c, 1:4], full[:, 2 * c :, 4:9]

    def raw_invariants(self, geometry, density, a1, a2, latent, edge_bias=None) -> torch.Tensor:
        """(N, 5C) unstandardised invariants of (A, B)."""
        b0, b1, b2 = self.densities(geometry, density, a1, a2, latent, edge_bias)
        return self._invariants(a1, a2, b0, b1, b2)

    @staticmethod
    def _invariants(a1, a2, b0, b1, b2) -> torch.Tensor:
        return torch.cat([b0, (b1 * a1).sum(-1), (b2 * a2).sum(-1), b1.pow(2).sum(-1), b2.pow(2).sum(-1)], -1)

    def standardised_invariants(self, a1, a2, b0, b1, b2) -> torch.Tensor:
        """(N, 5C) standardised (and squashed if so built) invariants of (A, B)."""
        return squashed((self._invariants(a1, a2, b0, b1, b2) - self.feature_shift) / self.feature_scale, self.squash)

    def forward(self, geometry, density, a1, a2, latent, edge_bias=None):
        """B0 (N, C), B1 (N, C, 3), B2 (N, C, 5) and the standardised invariants (N, 5C)."""
        b0, b1, b2 = self.densities(geometry, density, a1, a2, latent, edge_bias)
        return b0, b1, b2, self.standardised_invariants(a1, a2, b0, b1, b2)

    def densities_with_tape(self, geometry: EdgeGeometry, density: AtomicDensity, a1, a2, latent):
        """:meth:`densities` without autograd, plus its :class:`InteractionTape`.
        Call under ``torch.no_grad()`` with detached inputs."""
        saved: list = []
        densities = self._blocked_densities(geometry, density, a1, a2, latent, saved)
        rows = density.rows_per_block(geometry.r.shape[1])
        harmonics = geometry.scaled_harmonics_blocks(density.cutoff, density.avg_neighbours, rows)  # cached
        return densities, InteractionTape(self, density, geometry, rows, saved, harmonics, a1, a2)

    @torch.no_grad()
    def fit_normalisation(self, geometries: list[EdgeGeometry], density: AtomicDensity, inputs: list) -> None:
        """Standardise the edge invariants, then the invariants of (A, B), on training geometries.

        ``inputs``: per geometry ``(a1, a2, latent)`` or ``(a1, a2, latent, edge_bias)`` of its centres
        (the first density, already standardised upstream, the centre latent the model feeds this
        interaction and the per-edge bias of message passing).
        """
        edge = [self.edge_invariants(g, x[0], x[1])[g.r < density.cutoff] for g, x in zip(geometries, inputs)]
        fit_standardisation(self.edge_shift, self.edge_scale, torch.cat(edge))
        node = [self.raw_invariants(g, density, *x) for g, x in zip(geometries, inputs)]
        fit_standardisation(self.feature_shift, self.feature_scale, torch.cat(node))


def _edge_products(sh: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """(N, K, 2C) ``Y1(r̂_ij)·A1_i,c`` and ``Y2(r̂_ij)·A2_i,c`` of harmonics ``sh`` (N, K, 9)."""
    return torch.cat([torch.bmm(sh[..., 1:4], a1.transpose(1, 2)), torch.bmm(sh[..., 4:9], a2.transpose(1, 2))], -1)


class InteractionTape:
    """Hand-written backward pass of :meth:`EdgeInteraction.densities_with_tape` (the analogue of
    :class:`DensityTape` for the second interaction).

    From ``dE/dB`` it gives the per-edge upstream gradients for :func:`edge_vector_gradient`
    (through the Bessel basis, the scaled harmonics of B and the bare harmonics of the edge
    invariants ``Y·A``) and the gradients of its per-atom inputs A1, A2 and the latent.
    Same result as autograd (tested in float64); no autograd graph over the edges is built.
    """

    def __init__(self, interaction: "EdgeInteraction", density: AtomicDensity, geometry: EdgeGeometry, rows: int,
                 saved: list, harmonics: list, a1: torch.Tensor, a2: torch.Tensor):
        self.interaction, self.density, self.geometry = interaction, density, geometry
        self.rows, self.saved, self.harmonics = rows, saved, harmonics
        self.a1, self.a2 = a1, a2

    def backward(self, grad_b0, grad_b1, grad_b2) -> tuple[list, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Edge upstream blocks, dE/dA1 (N, C, 3), dE/dA2 (N, C, 5), dE/dlatent (N, latent)
        from dE/dB0 (N, C), dE/dB1 (N, C, 3), dE/dB2 (N, C, 5)."""
        interaction = self.interaction
        c = interaction.channels
        upstream = density_upstream(grad_b0, grad_b1, grad_b2, c)
        n_basis = int(self.density.basis.frequencies.numel())
        weight = interaction.first.weight
        weight_bessel, weight_edge = weight[:, :n_basis], weight[:, weight.shape[1] - 2 * c :]
        _, second, _, last = interaction.rest
        blocks, grad_a1, grad_a2, grad_latent = [], [], [], []
        for (standard, pre1, pre2, weights), h, g, sh, a1, a2 in zip(
            self.saved, self.harmonics, upstream.split(self.rows), self.geometry.sh.split(self.rows),
            self.a1.split(self.rows), self.a2.split(self.rows),
        ):
            grad, grad_h = _weights_backward(h, g, weights, pre1, pre2, second, last)  # grad: dE/d(first layer)
            grad_latent.append(grad.sum(1) @ interaction.from_latent.weight)
            grad_edge = grad @ weight_edge
            if interaction.squash:
                grad_edge = grad_edge * torch.rsqrt(1.0 + standard * standard)
            grad_edge = grad_edge / interaction.edge_scale
            edge1, edge2 = grad_edge[..., :c], grad_edge[..., c:]
            grad_y = torch.cat([torch.zeros_like(sh[..., :1]), torch.bmm(edge1, a1), torch.bmm(edge2, a2)], -1)
            grad_a1.append(torch.bmm(edge1.transpose(1, 2), sh[..., 1:4]))
            grad_a2.append(torch.bmm(edge2.transpose(1, 2), sh[..., 4:9]))
            blocks.append([grad @ weight_bessel, grad_h, grad_y])
        return blocks, torch.cat(grad_a1), torch.cat(grad_a2), torch.cat(grad_latent)


class DensityTape:
    """Hand-written backward pass from the densities of :meth:`AtomicDensity.densities_with_tape` to the edges.

    With ``G = dE/dA`` (the upstream gradient of the densities, any scalar E):

    * ``dE/dR[e, lc] = Σ_m G[i, lc, m] H[e, m]`` and ``dE/dH[e, m] = Σ_c G[i, lc, m] R[e, lc]``
      (R radial weights, H scaled harmonics of edge e = (i, k));
    * through the radial MLP (saved pre-activations, ``silu_backward``) to the Bessel
      basis, then ``dE/dr`` with the analytic Bessel and envelope derivatives;
    * ``dE/dv = dE/dr u + (1 - u uᵀ) ∇P(u)·dE/dY / r`` for the harmonics (l = 1, 2
      polynomials of :func:`_harmonic_polynomials`; Y_00 is constant).

    Same result as autograd through :meth:`AtomicDensity.densities_from_geometry`
    (tested in float64); no autograd graph over the (N, K) edges is built.
    """

    def __init__(self, density: AtomicDensity, geometry: EdgeGeometry, rows: int, saved: list, harmonics: list):
        self.density = density
        self.geometry = geometry
        self.rows = rows
        self.saved = saved
        self.harmonics = harmonics

    def edge_gradient(self, grad_a0: torch.Tensor, grad_a1: torch.Tensor, grad_a2: torch.Tensor) -> torch.Tensor:
        """dE/d edge_vec (N, K, 3) from dE/dA0 (N, C), dE/dA1 (N, C, 3), dE/dA2 (N, C, 5)."""
        return edge_vector_gradient(self.density, self.geometry, self.rows,
                                    self.edge_upstream(grad_a0, grad_a1, grad_a2))

    def edge_upstream(self, grad_a0: torch.Tensor, grad_a1: torch.Tensor, grad_a2: torch.Tensor) -> Iterator[list]:
        """Per block of centres ``[dE/d bessel (n, K, n_basis), dE/dH (n, K, 9), None]`` (see
        :func:`edge_vector_gradient`) from the gradients of the densities; yielded block by block,
        so each block is converted while it is in cache."""
        c = self.density.channels
        upstream = density_upstream(grad_a0, grad_a1, grad_a2, c)
        first, _, second, _, last = self.density.radial
        bessel_weight = first.weight[:, : int(self.density.basis.frequencies.numel())]
        for (pre1, pre2, weights), h, g in zip(self.saved, self.harmonics, upstream.split(self.rows)):
            grad, grad_h = _weights_backward(h, g, weights, pre1, pre2, second, last)
            yield [grad @ bessel_weight, grad_h, None]


def _weights_backward(h, g, weights, pre1, pre2, second: nn.Linear, last: nn.Linear):
    """Backward of ``B = (weights)ᵀ @ h`` with ``weights = last(silu(second(silu(pre1))))``
    (``pre2 = second(silu(pre1))``) for the upstream ``g = dE/dB`` (n, 3C, 9) of one block:
    ``dE/d pre1`` (n, K, hidden) and ``dE/dh`` (n, K, 9)."""
    grad_weights = torch.bmm(h, g.transpose(1, 2))  # (n, K, 3C)
    grad = torch.ops.aten.silu_backward(grad_weights @ last.weight, pre2)
    grad = torch.ops.aten.silu_backward(grad @ second.weight, pre1)
    return grad, torch.bmm(weights, g)


def density_upstream(grad_0: torch.Tensor, grad_1: torch.Tensor, grad_2: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, 3C, 9) gradient of the ``(radial weights)ᵀ @ harmonics`` product whose diagonal
    (l, l) blocks are the densities (N, C), (N, C, 3), (N, C, 5)."""
    c = channels
    upstream = grad_0.new_zeros(grad_0.shape[0], 3 * c, 9)
    upstream[:, :c, 0] = grad_0
    upstream[:, c : 2 * c, 1:4] = grad_1
    upstream[:, 2 * c :, 4:9] = grad_2
    return upstream


def edge_vector_gradient(density: AtomicDensity, geometry: EdgeGeometry, rows: int, blocks: Iterable) -> torch.Tensor:
    """dE/d edge_vec (N, K, 3) of the centres of ``geometry`` from per-edge upstream gradients.

    ``blocks``: per block of ``rows`` centres ``[dE/d bessel, dE/dH, dE/dY or None]`` with the
    Bessel basis of ``density.basis`` (n, K, n_basis), the scaled harmonics
    ``H = Y env(r) / sqrt(avg_neighbours)`` of ``density`` (n, K, 9) and the bare harmonics
    ``Y`` (n, K, 9). Then ``dE/dv = dE/dr u + (1 - u uᵀ) ∇P(u)·dE/dY / r`` (l = 1, 2 polynomials
    of :func:`_harmonic_polynomials`; Y_00 is constant).
    """
    dtype = geometry.sh.dtype
    linear = _HARMONIC_POLYNOMIALS.get("linear", dtype)
    quadratic = _HARMONIC_POLYNOMIALS.get("quadratic", dtype).reshape(5, 9)
    scale = density.avg_neighbours**-0.5
    parts = []
    for (grad_bessel, grad_h, grad_y), r, unit, sh, bessel in zip(
        blocks, geometry.r.split(rows), geometry.unit_vectors().split(rows), geometry.sh.split(rows),
        geometry.bessel(density.basis).split(rows),
    ):
        grad_r = (grad_bessel * density.basis.derivative(r, bessel)).sum(-1)
        envelope = polynomial_envelope(r, density.cutoff) * scale
        envelope_slope = polynomial_envelope_derivative(r, density.cutoff) * scale
        grad_r = grad_r + (grad_h * sh).sum(-1) * envelope_slope
        grad_sh = grad_h * envelope.unsqueeze(-1)
        if grad_y is not None:
            grad_sh = grad_sh + grad_y
        # ∇P(u)·dE/dY: l = 1 linear, l = 2 2 Q u
        tangent = grad_sh[..., 1:4] @ linear
        weighted = grad_sh[..., 4:9] @ quadratic  # (n, K, 9): M_ab = Σ_m dE/dY2_m Q_m[a, b]
        for b in range(3):  # tangent_a += 2 Σ_b M_ab u_b (fused multiply-adds, no batched 3x3 products)
            tangent = torch.addcmul(tangent, weighted[..., b::3], unit[..., b : b + 1], value=2.0)
        radial_part = tangent - (tangent * unit).sum(-1, keepdim=True) * unit
        parts.append(grad_r.unsqueeze(-1) * unit + radial_part / r.unsqueeze(-1))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


_HARMONIC_POLYNOMIALS = ExactConstants(**_harmonic_polynomials())
