"""ASE calculator for NN potential + NN Born charges in a uniform electric field.

    calc = FieldCalculator(potential="models/gen0/potential_0.pt",
                           born=["born_0.pt", "born_1.pt"], field=(0.1, 0.0, 0.0))
    atoms.calc = calc
    forces = atoms.get_forces()                      # eV/Å, includes Zᵀ·E
    z = calc.get_property("born_charges", atoms)     # (N, 3, 3) e, Z[atom, α, β]

Units: field in V/Å, forces eV/Å, energy eV, stress eV/Å³ (ASE sign), Born
charges e. The field force on atom κ is ``F_κβ = Σ_α Z_καβ E_α``
(:func:`bornfield.fieldphysics.field_forces`, e·V/Å = eV/Å); the acoustic sum
rule is imposed on Z in float64 (:func:`bornfield.fieldphysics.asr_correct`).

``energy`` and ``stress`` are those of the NN potential alone: the Born-charge
force is in general not the gradient of any energy (Z depends on the
positions), so the work done by the field is accounted for by the MD stage,
not by a field energy here.

A list of model files makes a committee: results are the member means and
``<key>_var`` the variance across members (``energy_var``, ``forces_var``
(N, 3), ``stress_var``, ``born_charges_var`` (N, 3, 3)); ``forces_uncertainty``
and ``born_charges_uncertainty`` (N,) are the per-atom standard deviations
``sqrt(Σ var)``. Forces variance includes only the potential committee.

Evaluation: the means (energy, forces, stress, Z) come from one neighbour list
and one pass through both models (:func:`bornfield.models.combined.evaluate_periodic`);
the committee statistics (``*_var``, ``*_uncertainty``, per-atom ``energies``)
evaluate the members one by one and are computed when one of them is requested
(ASE asks again for a property missing from the results). Non-finite results,
and a net field force above ``safety.asr_tolerance_eV_per_A``, raise
:class:`bornfield.fieldphysics.UnsafeState`.

This is also the force field of the ASE MD backend and of the exploration MD:
``set_field(E, keep_results=True)`` applies E from the next evaluation on (the
forces of the current positions stay valid), and ``born_refresh_interval = n``
recomputes Z only when ``step`` (set by the integrator loop) is a multiple of n.

Born models whose field forces cost less than Z (``field_rows_cheaper``: the polar
model, one backward pass of E·P instead of three) give the rows ``Z.T @ E`` alone
when nothing asks for Z (``born_charges`` then is absent from the results until
requested; :meth:`FieldCalculator.born_charges_for_output` for trajectories); the
same numbers to round-off. Held rows serve a later field along the same direction
(:func:`bornfield.fieldphysics.held_rows_scale`); otherwise they are refreshed at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from bornfield.errors import ConfigError
from bornfield.fieldphysics import (SafetyLimits, asr_correct, check_finite, field_forces, held_rows_scale,
                                   per_atom_uncertainty)
from bornfield.models import load_born, load_potential
from bornfield.models.born import EquivariantBornModel
from bornfield.models.combined import evaluate_periodic, field_rows_cheaper, verlet_graphs
from bornfield.models.committee import BornCommittee, PotentialCommittee
from bornfield.models.graph import build_graph
from bornfield.models.interface import BornChargeModel, PotentialModel
from bornfield.models.potential import NNPotential

ModelSpec = (str | Path | Sequence[str | Path] | NNPotential | EquivariantBornModel | PotentialCommittee
             | BornCommittee | PotentialModel | BornChargeModel | None)
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: Å, default skin of the calculator's neighbour list (md.neighbour_skin_A has the same default)
DEFAULT_NEIGHBOUR_SKIN_A = 1.0
_STATISTICS = frozenset({"energies", "energy_var", "energies_var", "forces_var", "stress_var", "born_charges_var",
                         "forces_uncertainty", "born_charges_uncertainty"})


def _as_potential(spec, dtype):
    """A PotentialCommittee of bornfield models, or any other PotentialModel as it is."""
    if spec is None or isinstance(spec, PotentialCommittee):
        return spec
    if isinstance(spec, NNPotential):
        return PotentialCommittee([spec])
    if isinstance(spec, PotentialModel):
        return spec
    loaded = load_potential(spec, dtype=dtype)
    return loaded if isinstance(loaded, PotentialCommittee) else PotentialCommittee([loaded])


def _as_born(spec, dtype):
    """A BornCommittee of bornfield models, or any other BornChargeModel as it is."""
    if spec is None or isinstance(spec, BornCommittee):
        return spec
    if isinstance(spec, EquivariantBornModel):
        return BornCommittee([spec])
    if isinstance(spec, BornChargeModel):
        return spec
    loaded = load_born(spec, dtype=dtype)
    return loaded if isinstance(loaded, BornCommittee) else BornCommittee([loaded])


class FieldCalculator(Calculator):
    """NN potential + NN Born charges + uniform field (V/Å) as an ASE calculator.

    Args:
        potential: model file, list of files (committee), a loaded model or any
            :class:`~bornfield.models.interface.PotentialModel`; None for Born-only use.
        born: model file(s), a loaded model or any
            :class:`~bornfield.models.interface.BornChargeModel`; required for a non-zero field.
        field: (Ex, Ey, Ez) in V/Å.
        dtype: "float32" (fast, default) or "float64" for models loaded from files.
        born_refresh_interval: recompute Z when ``step`` is a multiple of n
            (1 = at every evaluation); in between the cached Z is used.
        safety: limits checked at every evaluation (the ASR tolerance; default: none).
        neighbour_skin: Å, skin of the neighbour list kept between evaluations (a Verlet
            list, rebuilt when an atom moved more than half of it or the cell changed;
            :class:`~bornfield.models.graph.VerletGraphs`); 0 = a fresh list at every
            evaluation. Results are the same to round-off either way.
        evaluator: what evaluates the means (energy, forces, stress, Z) in place of
            :func:`~bornfield.models.combined.evaluate_periodic`, called with the same
            arguments and returning the same :class:`~bornfield.models.combined.StepResult`,
            e.g. a :class:`bornfield.md.batching.ReplicaSlot` that batches replicas; None =
            ``evaluate_periodic``. Committee statistics are always evaluated here.
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

    def __init__(self, potential: ModelSpec = None, born: ModelSpec = None, field=(0.0, 0.0, 0.0),
                 dtype: str = "float32", born_refresh_interval: int = 1, safety: SafetyLimits | None = None,
                 neighbour_skin: float = DEFAULT_NEIGHBOUR_SKIN_A, evaluator=None, **kwargs):
        super().__init__(**kwargs)
        if dtype not in _DTYPES:
            raise ConfigError(f"FieldCalculator dtype must be one of {sorted(_DTYPES)} (got {dtype!r})")
        torch_dtype = _DTYPES[dtype]
        self.potential = _as_potential(potential, torch_dtype)
        self.born = _as_born(born, torch_dtype)
        if self.potential is None and self.born is None:
            raise ConfigError("FieldCalculator needs a potential and/or a Born-charge model")
        if int(born_refresh_interval) < 1:
            raise ConfigError(f"FieldCalculator born_refresh_interval must be >= 1 (got {born_refresh_interval!r})")
        self.born_refresh_interval = int(born_refresh_interval)
        self.safety = safety if safety is not None else SafetyLimits()
        if not float(neighbour_skin) >= 0.0:
            raise ConfigError(f"FieldCalculator neighbour_skin must be >= 0 Å (got {neighbour_skin!r})")
        self.graphs = verlet_graphs(self.potential, self.born, float(neighbour_skin))
        self.evaluator = evaluator
        self.field = self._check_field(field)
        self.step = 0  # MD step of the next evaluation (for born_refresh_interval > 1)
        self.born_step = -1  # step at which cached_born (or cached_rows) was computed
        self.cached_born: np.ndarray | None = None  # (N, 3, 3) e, ASR-corrected
        self.cached_born_var: np.ndarray | None = None
        # models with a cheaper path for the rows Zᵀ·E (the polar model) give the field forces
        # without Z where nothing asks for Z: (N, 3) eV/Å, ASR-corrected, valid for cached_rows_field
        self.rows_path = field_rows_cheaper(self.born)
        self.cached_rows: np.ndarray | None = None
        self.cached_rows_field: np.ndarray | None = None

    def _check_field(self, field) -> np.ndarray:
        field = np.asarray(field, dtype=float).reshape(-1)
        if field.shape != (3,) or not np.all(np.isfinite(field)):
            raise ConfigError(f"field must be three finite numbers (V/Å), got {field!r}")
        if np.any(field != 0) and self.born is None:
            raise ConfigError("a non-zero field needs a Born-charge model (born=...)")
        return field

    def set_field(self, field, keep_results: bool = False) -> None:
        """Change the field (V/Å).

        ``keep_results=False`` discards the cached results (the next property is
        recomputed with the new field); ``True`` keeps them, so the new field acts
        from the next evaluation (new positions) on — what an MD step needs.
        """
        self.field = self._check_field(field)
        if not keep_results:
            self.reset()

    def rebuild_neighbour_list(self, atoms) -> None:
        """Build the kept neighbour list anew at the positions of ``atoms`` (results are kept).

        An MD checkpoint calls it, and so does the restart from it: both runs then
        continue with a list built at the same positions, bit for bit alike.
        """
        if self.graphs is not None:
            self.graphs.reset()
            self.graphs.graph(*self._structure(atoms))

    @staticmethod
    def _structure(atoms) -> tuple:
        """(positions wrapped into the cell (N, 3) Å, numbers, cell (3, 3) Å, pbc) as the models get them."""
        return atoms.get_positions(wrap=True), atoms.numbers, np.asarray(atoms.cell), np.asarray(atoms.pbc)

    @property
    def receptive_field(self) -> float:
        return max(m.receptive_field for m in (self.potential, self.born) if m is not None)

    def _rows_scale(self) -> float | None:
        """λ with ``field = λ · cached_rows_field`` (the cached rows times λ are the field forces), or
        None if the cached rows cannot give them (none cached, or the field turned or switched on)."""
        return None if self.cached_rows is None else held_rows_scale(self.field, self.cached_rows_field)

    def _born_due(self, need_z: bool) -> bool:
        usable = self.cached_born is not None or (not need_z and self._rows_scale() is not None)
        n = self.born_refresh_interval
        return not usable or n == 1 or (self.step % n == 0 and self.born_step != self.step)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        structure = self._structure(atoms)
        periodic = bool(np.all(atoms.pbc))
        statistics = self.potential is None or not _STATISTICS.isdisjoint(properties)
        need_z = statistics or not self.rows_path or not {"born_charges", "born_effective_charges"}.isdisjoint(
            properties)
        refresh = self.born is not None and (statistics or self._born_due(need_z))
        rows_field = None if (need_z or not refresh) else self.field.copy()
        if statistics:
            results, born, born_var = self._evaluate_members(structure, refresh, periodic)
        else:
            results, born = self._evaluate_shared(structure, refresh, "stress" in properties and periodic, rows_field)
            born_var = None
        if refresh and rows_field is None:
            self.cached_born, self.cached_born_var, self.cached_rows = born, born_var, None
        elif refresh:
            self.cached_born, self.cached_born_var, self.cached_rows = None, None, born
            self.cached_rows_field = rows_field
        if refresh:
            self.born_step = self.step
        forces = results.get("forces")
        if self.born is not None:
            z = self.cached_born
            ffield = self.cached_rows * self._rows_scale() if z is None else field_forces(z, self.field)
            results["field_forces"] = ffield
            if z is not None:
                results.update(born_charges=z, born_effective_charges=z)
            if statistics:
                results["born_charges_var"] = self.cached_born_var
                results["born_charges_uncertainty"] = per_atom_uncertainty(self.cached_born_var)
            forces = ffield if forces is None else forces + ffield
        if self.potential is not None:
            check_finite("energy or forces from the models", results["energy"], forces)
        if self.born is not None:
            check_finite("Born charges from the model" if z is not None else "field forces from the Born model",
                         ffield if z is None else z)
            if refresh and z is not None:
                self.safety.check_born_charges(z)
            elif refresh:
                self.safety.check_born_field_rows(ffield, self.field)
            self.safety.check_asr(ffield.sum(axis=0))
        if self.potential is not None or np.any(self.field != 0):
            results["forces"] = forces
        else:
            results.pop("forces", None)
        self.results = results

    def _evaluate_shared(self, structure, refresh: bool, stress: bool,
                         rows_field: np.ndarray | None = None) -> tuple[dict, np.ndarray | None]:
        """Committee means of both models from one neighbour list, and Z ASR-corrected (or None);
        with ``rows_field`` (V/Å) the ASR-corrected rows Zᵀ·E (N, 3) eV/Å in place of Z
        (zeros without evaluating the Born model if the field is zero)."""
        evaluate = evaluate_periodic if self.evaluator is None else self.evaluator.evaluate
        rows = rows_field is not None  # given only on refresh steps
        with_born = refresh and not (rows and not np.any(rows_field))
        step = evaluate(self.potential, self.born, *structure, with_born=with_born, stress=stress, graphs=self.graphs,
                        born_field=rows_field if rows else None)
        results = {"energy": float(step.energy), "free_energy": float(step.energy), "forces": step.forces}
        if step.stress is not None:
            results["stress"] = full_3x3_to_voigt_6_stress(step.stress)
        if rows:
            return results, np.zeros((len(structure[1]), 3)) if not with_born else asr_correct(step.field_rows_raw)
        return results, None if step.born_raw is None else asr_correct(step.born_raw)

    def born_charges_for_output(self) -> np.ndarray:
        """ASR-corrected Z (N, 3, 3) e of the last evaluation: the tensors that gave its field
        forces, or, where those came from the rows Zᵀ·E alone, the tensors at the current
        positions (evaluated and safety-checked here; the field forces are not changed)."""
        if self.cached_born is not None:
            return self.cached_born
        z = asr_correct(np.asarray(self.born.born_charges(*self._structure(self.atoms)), dtype=float))
        check_finite("Born charges from the model", z)
        self.safety.check_born_charges(z)
        return z

    def _evaluate_members(self, structure, refresh: bool, periodic: bool):
        """Means and variances over the committee members; Z mean and variance of ASR-corrected members."""
        potential, born = self.potential, self.born
        graph = None
        if self.graphs is not None:  # both models are bornfield's (or one is absent): the shared list
            graph = self.graphs.graph(*structure)
        elif (isinstance(potential, PotentialCommittee) and isinstance(born, BornCommittee)
                and potential.species == born.species):
            graph = build_graph([structure], potential.species, max(potential.cutoff, born.cutoff), potential.dtype)
        results: dict[str, np.ndarray | float] = {}
        if isinstance(potential, PotentialCommittee):
            out = potential.evaluate_graph(graph if graph is not None else potential.make_graph(*structure),
                                           stress=periodic)
            results.update(energies=out["energies"], energies_var=out["energies_var"])
        elif potential is not None:  # another PotentialModel: one member
            energy, forces, stress = potential.energy_forces_stress(*structure)
            forces = np.asarray(forces, dtype=float)
            out = {"energy": float(energy), "energy_var": 0.0, "forces": forces, "forces_var": np.zeros_like(forces),
                   "stress": np.asarray(stress, dtype=float), "stress_var": np.zeros((3, 3))}
        if potential is not None:
            results.update(energy=float(out["energy"]), free_energy=float(out["energy"]),
                           energy_var=float(out["energy_var"]), forces=out["forces"], forces_var=out["forces_var"],
                           forces_uncertainty=per_atom_uncertainty(out["forces_var"]))
            if periodic:
                results["stress"] = full_3x3_to_voigt_6_stress(out["stress"])
                results["stress_var"] = full_3x3_to_voigt_6_stress(out["stress_var"])
        if not refresh:
            return results, None, None
        if isinstance(born, BornCommittee):
            born_graph = graph if graph is not None else born.make_graph(*structure)
            raw = born.member_charges(born_graph.to(born.dtype), asr=False)
        else:  # another BornChargeModel: one member
            raw = np.asarray(born.born_charges(*structure), dtype=float)[None]
        members = np.stack([asr_correct(z) for z in raw])
        return results, members.mean(axis=0), members.var(axis=0)
