"""Small analytic models implementing the bornfield model Protocols (test fixtures).

* :class:`MorsePotential` — force-shifted Morse pair potential (smooth energy
  conservation), periodic and cluster evaluations (vesin neighbour lists).
* :class:`EnvironmentBorn` — per-species tensor scaled by a smooth
  coordination number, ASR by subtracting the mean (position dependent, so
  ghosts and the MPI-reduced ASR matter).
* :class:`ConstantBorn` — position-independent per-species tensors with ASR.
* :class:`ZeroPotential` — no interactions (free flight).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk
from vesin import NeighborList


def _pairs(positions, cell, pbc, cutoff, periodic=True):
    nl = NeighborList(cutoff=cutoff, full_list=False)
    if periodic:
        i, j, vec = nl.compute(points=positions, box=cell, periodic=bool(np.all(pbc)), quantities="ijD")
    else:
        i, j, vec = nl.compute(points=positions, box=np.zeros((3, 3)), periodic=False, quantities="ijD")
    return i, j, vec


class MorsePotential:
    """φ(r) = D (e^{-2a(r-r0)} − 2 e^{-a(r-r0)}), force-shifted to zero at the cutoff."""

    def __init__(self, depth=0.5, alpha=1.6, r0=2.6, cutoff=5.0, species=("Li", "O")):
        self.depth, self.alpha, self.r0 = depth, alpha, r0
        self.cutoff = cutoff
        self.receptive_field = cutoff
        self.species = species
        self.calls = 0

    def _raw(self, r):
        e = np.exp(-self.alpha * (r - self.r0))
        phi = self.depth * (e * e - 2 * e)
        dphi = self.depth * (-2 * self.alpha * e * e + 2 * self.alpha * e)
        return phi, dphi

    def _phi(self, r):
        phi, dphi = self._raw(r)
        phic, dphic = self._raw(np.asarray(self.cutoff))
        return phi - phic - (r - self.cutoff) * dphic, dphi - dphic

    def _accumulate(self, n, i, j, vec, weights):
        r = np.linalg.norm(vec, axis=1)
        phi, dphi = self._phi(r)
        # d phi / d r_j = dphi * vec / r ; force on j = -w dphi vec/r, on i the opposite
        fij = (weights * dphi / r)[:, None] * vec
        forces = np.zeros((n, 3))
        np.add.at(forces, i, fij)
        np.add.at(forces, j, -fij)
        return phi, forces

    def energy_forces_stress(self, positions, numbers, cell, pbc):
        self.calls += 1
        i, j, vec = _pairs(positions, cell, pbc, self.cutoff)
        phi, forces = self._accumulate(len(positions), i, j, vec, np.ones(len(i)))
        r = np.linalg.norm(vec, axis=1)
        _, dphi = self._phi(r)
        virial = -np.einsum("p,pa,pb->ab", dphi / np.maximum(r, 1e-12), vec, vec)
        stress = -virial / abs(np.linalg.det(cell))
        return float(phi.sum()), forces, stress

    def cluster_site_energies_forces(self, positions, numbers, energy_mask):
        i, j, vec = _pairs(positions, None, None, self.cutoff, periodic=False)
        mask = np.asarray(energy_mask, dtype=float)
        weights = 0.5 * (mask[i] + mask[j])
        phi, forces = self._accumulate(len(positions), i, j, vec, weights)
        site = np.zeros(len(positions))
        np.add.at(site, i, 0.5 * phi)
        np.add.at(site, j, 0.5 * phi)
        return site, forces


class ZeroPotential:
    species = ("Li", "O")
    cutoff = 1.0
    receptive_field = 1.0

    def energy_forces_stress(self, positions, numbers, cell, pbc):
        return 0.0, np.zeros((len(positions), 3)), np.zeros((3, 3))

    def cluster_site_energies_forces(self, positions, numbers, energy_mask):
        return np.zeros(len(positions)), np.zeros((len(positions), 3))


DEFAULT_Z = {
    3: np.array([[1.1, 0.15, 0.0], [0.05, 0.9, 0.1], [0.0, -0.1, 1.0]]),
    8: np.array([[-1.6, 0.2, 0.05], [-0.1, -1.4, 0.0], [0.1, 0.0, -1.5]]),
}


class ConstantBorn:
    """Z_κ = Z0[species] − mean over the cell (exact ASR)."""

    species = ("Li", "O")
    cutoff = 1.0
    receptive_field = 1.0

    def __init__(self, table=None):
        self.table = DEFAULT_Z if table is None else table

    def cluster_born_charges_raw(self, positions, numbers):
        return np.stack([self.table[int(z)] for z in numbers]).astype(float)

    def born_charges(self, positions, numbers, cell, pbc):
        raw = self.cluster_born_charges_raw(positions, numbers)
        return raw - raw.mean(axis=0)


class EnvironmentBorn(ConstantBorn):
    """Rotation-equivariant, position-dependent Born charges (ASR by mean subtraction).

    Z_κ,raw = q_s (1 + 0.1 Σ_j w_κj) I + c_s Σ_j w_κj r̂_κj r̂_κjᵀ,  w = (1 − (r/rc)²)²
    """

    charges = {3: (1.0, 0.3), 8: (-1.0, -0.5)}

    def __init__(self, cutoff=4.0):
        super().__init__()
        self.cutoff = cutoff
        self.receptive_field = cutoff

    def _raw(self, numbers, i, vec):
        n = len(numbers)
        r = np.linalg.norm(vec, axis=1)
        w = (1 - (r / self.cutoff) ** 2) ** 2
        unit = vec / r[:, None]
        coordination = np.zeros(n)
        np.add.at(coordination, i, w)
        outer = np.zeros((n, 3, 3))
        np.add.at(outer, i, w[:, None, None] * unit[:, :, None] * unit[:, None, :])
        q = np.array([self.charges[int(z)][0] for z in numbers])
        c = np.array([self.charges[int(z)][1] for z in numbers])
        return (q * (1 + 0.1 * coordination))[:, None, None] * np.eye(3) + c[:, None, None] * outer

    def cluster_born_charges_raw(self, positions, numbers):
        nl = NeighborList(cutoff=self.cutoff, full_list=True)
        i, vec = nl.compute(points=positions, box=np.zeros((3, 3)), periodic=False, quantities="iD")
        return self._raw(numbers, i, vec)

    def born_charges(self, positions, numbers, cell, pbc):
        nl = NeighborList(cutoff=self.cutoff, full_list=True)
        i, vec = nl.compute(points=positions, box=cell, periodic=True, quantities="iD")
        raw = self._raw(numbers, i, vec)
        return raw - raw.mean(axis=0)


def fcc_cell(repeat=2, a=3.6, rattle=0.03, seed=0) -> Atoms:
    """A rattled FCC supercell (4·repeat³ atoms, Li and O alternating) stable under MorsePotential."""
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(repeat)
    numbers = np.where(np.arange(len(atoms)) % 2 == 0, 3, 8)
    atoms.set_atomic_numbers(numbers)
    atoms.rattle(rattle, seed=seed)
    return atoms
