"""Random perturbations for DFT candidates: Gaussian rattle and symmetric strain.

Every operation takes an explicit integer seed (recorded by the caller in
``info["seed"]``), so the same seed gives the same structure bit for bit.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from bornfield.errors import ConfigError


def rattle(atoms: Atoms, amplitude: float, seed: int) -> Atoms:
    """Copy with every Cartesian coordinate displaced by N(0, amplitude²), amplitude in Å."""
    if amplitude < 0:
        raise ConfigError(f"rattle amplitude must be >= 0 Å, got {amplitude}")
    rng = np.random.default_rng(seed)
    out = atoms.copy()
    out.positions = atoms.positions + rng.normal(0.0, amplitude, size=atoms.positions.shape)
    return out


def random_strain_tensor(max_strain: float, seed: int) -> np.ndarray:
    """Symmetric 3×3 strain with components uniform in [-max_strain, max_strain]."""
    if not 0 <= max_strain < 0.5:
        raise ConfigError(f"max_strain must be in [0, 0.5), got {max_strain}")
    rng = np.random.default_rng(seed)
    upper = rng.uniform(-max_strain, max_strain, size=(3, 3))
    return np.triu(upper) + np.triu(upper, 1).T


def strain(atoms: Atoms, max_strain: float, seed: int, rattle_amplitude: float = 0.0) -> tuple[Atoms, np.ndarray]:
    """Copy with the cell deformed by (1 + ε) (atoms scaled with it), then optionally rattled.

    Returns:
        the strained copy and the strain tensor ε (3, 3), dimensionless.
    """
    epsilon = random_strain_tensor(max_strain, seed)
    out = atoms.copy()
    out.set_cell(atoms.cell[:] @ (np.eye(3) + epsilon), scale_atoms=True)
    if rattle_amplitude > 0:
        out = rattle(out, rattle_amplitude, seed + 1)
    return out, epsilon
