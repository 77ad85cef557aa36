"""Crystalline Li3PO4 from published Wyckoff positions.

Two polymorphs are built with :func:`ase.spacegroup.crystal` from their
asymmetric units (standard settings, fractional coordinates):

* beta-Li3PO4, Pmn2_1 (No. 31), Z = 2, 16 atoms.
  Keffer, Mighell, Mauer, Swanson, Block, Inorg. Chem. 6, 119 (1967),
  doi:10.1021/ic50047a027 (AMCSD 0012673). a = 6.1150, b = 5.2394,
  c = 4.8554 Å, rho = 2.472 g/cm^3.
* gamma-Li3PO4, Pnma (No. 62), Z = 4, 32 atoms.
  Wang, Chakoumakos, Sales, Kwak, Bates, J. Solid State Chem. 115, 313 (1995)
  (AMCSD 0013843), published in Pmnb and transformed to the standard Pnma
  setting: a = 10.4612, b = 6.1113, c = 4.9208 Å, rho = 2.445 g/cm^3.

Lengths are in Å (ASE units).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import spglib
from ase import Atoms
from ase.spacegroup import crystal

from bornfield.errors import ConfigError

#: Nominal oxidation states used for charge bookkeeping of defect cells.
NOMINAL_OXIDATION_STATES = {"Li": 1, "P": 5, "O": -2}


@dataclass(frozen=True)
class CrystalPhase:
    """A published crystal structure.

    Attributes:
        name: phase name used in configs and ``info["config_type"]``.
        spacegroup: international number.
        symbol: Hermann–Mauguin symbol (standard setting).
        cellpar: a, b, c (Å), alpha, beta, gamma (degrees).
        basis: species and fractional coordinates of the asymmetric unit.
        n_atoms: atoms in the conventional cell after symmetry expansion.
        density_g_cm3: experimental X-ray density.
        reference: literature source of the positions.
    """

    name: str
    spacegroup: int
    symbol: str
    cellpar: tuple[float, float, float, float, float, float]
    basis: tuple[tuple[str, tuple[float, float, float]], ...]
    n_atoms: int
    density_g_cm3: float
    reference: str


BETA = CrystalPhase(
    name="beta",
    spacegroup=31,
    symbol="Pmn2_1",
    cellpar=(6.1150, 5.2394, 4.8554, 90.0, 90.0, 90.0),
    basis=(
        ("Li", (0.24810, 0.32770, 0.98600)),  # Li1 4b
        ("Li", (0.5, 0.84280, 0.98930)),  # Li2 2a
        ("P", (0.0, 0.82430, 0.0)),  # P 2a
        ("O", (0.20777, 0.68676, 0.89610)),  # O1 4b
        ("O", (0.0, 0.10520, 0.90040)),  # O2 2a
        ("O", (0.5, 0.18140, 0.81720)),  # O3 2a
    ),
    n_atoms=16,
    density_g_cm3=2.472,
    reference="Keffer et al., Inorg. Chem. 6, 119 (1967), doi:10.1021/ic50047a027",
)

GAMMA = CrystalPhase(
    name="gamma",
    spacegroup=62,
    symbol="Pnma",
    cellpar=(10.4612, 6.1113, 4.9208, 90.0, 90.0, 90.0),
    basis=(
        ("Li", (0.83730, 0.50160, 0.30080)),  # Li1 8d
        ("Li", (0.57540, 0.75, 0.20450)),  # Li2 4c
        ("P", (0.58850, 0.25, 0.30790)),  # P 4c
        ("O", (0.65820, 0.04410, 0.20540)),  # O1 8d
        ("O", (0.94970, 0.25, 0.29280)),  # O2 4c
        ("O", (0.91040, 0.75, 0.12230)),  # O3 4c
    ),
    n_atoms=32,
    density_g_cm3=2.445,
    reference="Wang et al., J. Solid State Chem. 115, 313 (1995) (AMCSD 0013843), Pnma setting",
)

PHASES: dict[str, CrystalPhase] = {BETA.name: BETA, GAMMA.name: GAMMA}


def build_crystal(phase: str) -> Atoms:
    """Conventional cell of a Li3PO4 polymorph (``"beta"`` or ``"gamma"``).

    Returns:
        Periodic Atoms (Å) with ``info["config_type"] = phase`` and
        ``info["source"]`` naming the literature reference.
    """
    if phase not in PHASES:
        raise ConfigError(f"unknown crystal phase '{phase}'; known phases: {sorted(PHASES)}")
    spec = PHASES[phase]
    symbols = [s for s, _ in spec.basis]
    positions = [p for _, p in spec.basis]
    atoms = crystal(
        symbols,
        basis=positions,
        spacegroup=spec.spacegroup,
        cellpar=list(spec.cellpar),
        primitive_cell=False,
        onduplicates="error",
    )
    if len(atoms) != spec.n_atoms:  # a wrong Wyckoff position would show here
        raise RuntimeError(f"{phase}: expanded cell has {len(atoms)} atoms, expected {spec.n_atoms}")
    # deterministic species order Li, P, O (stable structure ids, readable files)
    order = np.argsort([{"Li": 0, "P": 1, "O": 2}[s] for s in atoms.get_chemical_symbols()], kind="stable")
    atoms = atoms[order]
    for name in [n for n in atoms.arrays if n not in ("numbers", "positions")]:
        del atoms.arrays[name]  # e.g. ase's spacegroup_kinds
    atoms.info.clear()
    atoms.info["config_type"] = phase
    atoms.info["source"] = f"{spec.symbol} (No. {spec.spacegroup}) from {spec.reference}"
    return atoms


def spacegroup_of(atoms: Atoms, symprec: float = 1e-3) -> tuple[str, int]:
    """spglib international symbol and number of a periodic structure."""
    cell = (atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers)
    dataset = spglib.get_symmetry_dataset(cell, symprec=symprec)
    if dataset is None:
        raise RuntimeError("spglib could not determine the space group")
    return dataset.international, int(dataset.number)


def density_g_cm3(atoms: Atoms) -> float:
    """Mass density in g/cm^3 (masses in amu, volume in Å^3)."""
    from ase.units import _amu

    mass_g = atoms.get_masses().sum() * _amu * 1e3
    volume_cm3 = atoms.get_volume() * 1e-24
    return float(mass_g / volume_cm3)
