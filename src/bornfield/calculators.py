"""ASE calculator for NN potential + NN Born charges in a uniform electric field.

    calc = FieldCalculator(potential="models/gen0/potential_0.pt",
                           born=["born_0.pt", "born_1.pt"], field=(0.1, 0.0, 0.0))
    atoms.calc = calc
    forces = atoms.get_forces()                      # eV/Å, includes Zᵀ·E
    z = calc.get_property("born_charges", atoms)     # (N, 3, 3) e, Z[atom, α, β]

Units: field in V/Å, forces eV/Å, energy eV, stress eV/Å³ (ASE sign), Born
charges e. The field force on atom κ is ``F_κβ = Σ_α Z_καβ E_α``
(``np.einsum("kab,a->kb", Z, E)``, e·V/Å = eV/Å).

``energy`` and ``stress`` are those of the NN potential alone: the Born-charge
force is in general not the gradient of any energy (Z depends on the
positions), so the work done by the field is accounted for by the MD stage,
not by a field energy here.

A list of model files makes a committee: results are the member means and
``<key>_var`` the variance across members (``energy_var``, ``forces_var``
(N, 3), ``stress_var``, ``born_charges_var`` (N, 3, 3)); ``forces_uncertainty``
and ``born_charges_uncertainty`` (N,) are the per-atom standard deviations
``sqrt(Σ var)``. Forces variance includes only the potential committee.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from bornfield.errors import ConfigError
from bornfield.models import load_born, load_potential
from bornfield.models.born import EquivariantBornModel
from bornfield.models.committee import BornCommittee, PotentialCommittee
from bornfield.models.graph import build_graph
from bornfield.models.potential import NNPotential

ModelSpec = str | Path | Sequence[str | Path] | NNPotential | EquivariantBornModel | PotentialCommittee | BornCommittee | None
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _as_potential_committee(spec, dtype) -> PotentialCommittee | None:
    if spec is None:
        return None
    if isinstance(spec, PotentialCommittee):
        return spec
    if isinstance(spec, NNPotential):
        return PotentialCommittee([spec])
    loaded = load_potential(spec, dtype=dtype)
    return loaded if isinstance(loaded, PotentialCommittee) else PotentialCommittee([loaded])


def _as_born_committee(spec, dtype) -> BornCommittee | None:
    if spec is None:
        return None
    if isinstance(spec, BornCommittee):
        return spec
    if isinstance(spec, EquivariantBornModel):
        return BornCommittee([spec])
    loaded = load_born(spec, dtype=dtype)
    return loaded if isinstance(loaded, BornCommittee) else BornCommittee([loaded])


class FieldCalculator(Calculator):
    """NN potential + NN Born charges + uniform field (V/Å) as an ASE calculator.

    Args:
        potential: model file, list of files (committee) or a loaded model; None for Born-only use.
        born: model file(s) or loaded model; required for a non-zero field.
        field: (Ex, Ey, Ez) in V/Å.
        dtype: "float32" (fast, default) or "float64".
    """

    implemented_properties = [
        "energy",
        "free_energy",
        "energies",
        "forces",
        "stress",
        "born_effective_charges",
        "born_charges",
        "field_forces",
        "energy_var",
        "energies_var",
        "forces_var",
        "stress_var",
        "born_charges_var",
        "forces_uncertainty",
        "born_charges_uncertainty",
    ]

    def __init__(self, potential: ModelSpec = None, born: ModelSpec = None, field=(0.0, 0.0, 0.0), dtype: str = "float32", **kwargs):
        super().__init__(**kwargs)
        if dtype not in _DTYPES:
            raise ConfigError(f"FieldCalculator dtype must be one of {sorted(_DTYPES)} (got {dtype!r})")
        torch_dtype = _DTYPES[dtype]
        self.potential = _as_potential_committee(potential, torch_dtype)
        self.born = _as_born_committee(born, torch_dtype)
        if self.potential is None and self.born is None:
            raise ConfigError("FieldCalculator needs a potential and/or a Born-charge model")
        self.field = self._check_field(field)

    def _check_field(self, field) -> np.ndarray:
        field = np.asarray(field, dtype=float).reshape(-1)
        if field.shape != (3,) or not np.all(np.isfinite(field)):
            raise ConfigError(f"field must be three finite numbers (V/Å), got {field!r}")
        if np.any(field != 0) and self.born is None:
            raise ConfigError("a non-zero field needs a Born-charge model (born=...)")
        return field

    def set_field(self, field) -> None:
        """Change the field (V/Å); cached results are discarded."""
        self.field = self._check_field(field)
        self.reset()

    @property
    def receptive_field(self) -> float:
        return max(m.receptive_field for m in (self.potential, self.born) if m is not None)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        args = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
        periodic = bool(np.all(atoms.pbc))
        results: dict[str, np.ndarray | float] = {}
        shared = None
        if self.potential is not None and self.born is not None and self.potential.species == self.born.species:
            cutoff = max(self.potential.cutoff, self.born.cutoff)
            shared = build_graph([args], self.potential.species, cutoff, self.potential.dtype)
        if self.potential is not None:
            graph = shared if shared is not None else self.potential.make_graph(*args)
            out = self.potential.evaluate_graph(graph, stress=periodic)
            results["energy"] = float(out["energy"])
            results["free_energy"] = float(out["energy"])
            results["energy_var"] = float(out["energy_var"])
            results["energies"] = out["energies"]
            results["energies_var"] = out["energies_var"]
            forces = out["forces"]
            results["forces_var"] = out["forces_var"]
            results["forces_uncertainty"] = np.sqrt(out["forces_var"].sum(axis=1))
            if periodic:
                results["stress"] = full_3x3_to_voigt_6_stress(out["stress"])
                results["stress_var"] = full_3x3_to_voigt_6_stress(out["stress_var"])
        else:
            forces = np.zeros((len(atoms), 3))
        if self.born is not None:
            graph = shared if shared is not None else self.born.make_graph(*args)
            out = self.born.evaluate_graph(graph.to(self.born.dtype))
            z = out["born_charges"]
            results["born_charges"] = z
            results["born_effective_charges"] = z
            results["born_charges_var"] = out["born_charges_var"]
            results["born_charges_uncertainty"] = np.sqrt(out["born_charges_var"].sum(axis=(1, 2)))
            field_forces = np.einsum("kab,a->kb", z, self.field)
            results["field_forces"] = field_forces
            forces = forces + field_forces
        if self.potential is not None or np.any(self.field != 0):
            results["forces"] = forces
        self.results = results
