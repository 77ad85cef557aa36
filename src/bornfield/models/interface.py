"""Contracts between the learned models and the stages that use them.

Units: positions Å, energies eV, forces eV/Å, Born charges e. Born charge
index order is ``Z[atom, field α, force β]``; the field force on atom κ is
``Z[κ].T @ E`` (eV/Å for E in V/Å).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class PotentialModel(Protocol):
    """An interatomic potential usable both periodically and on clusters."""

    species: tuple[str, ...]
    cutoff: float
    """Neighbour cutoff in Å."""
    receptive_field: float
    """Distance (Å) beyond which an atom cannot influence a site energy."""

    def energy_forces_stress(
        self, positions: np.ndarray, numbers: np.ndarray, cell: np.ndarray, pbc: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """Periodic evaluation.

        Args:
            positions: (N, 3) Å. numbers: (N,) atomic numbers.
            cell: (3, 3) Å, rows are cell vectors. pbc: (3,) bool.

        Returns:
            energy (eV), forces (N, 3) eV/Å, stress (3, 3) eV/Å³ (ASE sign).
        """

    def cluster_site_energies_forces(
        self, positions: np.ndarray, numbers: np.ndarray, energy_mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Open-boundary evaluation of M atoms (owned + ghost atoms).

        Returns:
            site energies (M,) eV, and forces (M, 3) eV/Å equal to
            ``-d/dr sum(site_energies[energy_mask])``. bornfield's models evaluate
            only the ``energy_mask`` atoms as centres (ghosts cost only their
            neighbour contributions); their site energies are NaN elsewhere.
        """


@runtime_checkable
class BornChargeModel(Protocol):
    """A Born effective charge model: full 3×3 tensor per atom."""

    species: tuple[str, ...]
    cutoff: float
    receptive_field: float

    def born_charges(
        self, positions: np.ndarray, numbers: np.ndarray, cell: np.ndarray, pbc: np.ndarray
    ) -> np.ndarray:
        """Periodic evaluation: Z of shape (N, 3, 3), ASR exact (sums to zero)."""

    def cluster_born_charges_raw(self, positions: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """Open-boundary raw tensors (M, 3, 3) before the ASR correction.

        The caller subtracts the mean over all owned atoms of the whole cell
        (an MPI-reduced sum when the cell is split over ranks). bornfield's
        models also accept ``centre_mask`` (M,) bool and then return only those
        atoms' tensors, (count, 3, 3), with all M atoms as neighbours.
        """
