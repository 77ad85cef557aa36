"""Exploration MD for active learning: where does the current committee disagree?

Generation k+1 needs new structures that the generation-k models do not
describe well. This module runs short Langevin MD with the generation-k
committees (:class:`~bornfield.calculators.FieldCalculator`: NN forces plus
the Born-charge field force ``Zᵀ·E``; the MD backend's Langevin integrator,
:func:`bornfield.md.ase_backend.ase_integrator`) from small DFT-sized cells at
several temperatures and fields, and returns snapshots for
:mod:`bornfield.train.select`. A trajectory that goes unphysical (the safety
checks of :mod:`bornfield.fieldphysics`: non-finite or huge forces, atoms
closer than ``min_distance_A``) is stopped, and its frames up to that point are
kept: such regions are exactly where new labels help most.

Unlike a production replica (:class:`bornfield.md.ase_backend.ASEBackend`), a
trajectory starts from Maxwell–Boltzmann velocities without rescaling to the
exact temperature, and one random stream serves all trajectories in turn
(velocities and Langevin noise), so the sampled starts stay what they were.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.constraints import FixCom
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from tqdm import tqdm

from bornfield.calculators import FieldCalculator
from bornfield.errors import ConfigError
from bornfield.fieldphysics import SafetyLimits, UnsafeState, min_distance
from bornfield.md.ase_backend import ase_integrator

log = logging.getLogger(__name__)


@dataclass
class ExplorationSettings:
    """Settings of the exploration MD (config ``train.active_learning.exploration``)."""

    temperatures_K: Sequence[float]
    fields_V_per_A: Sequence[float]  # magnitudes along field_axis
    field_axis: int
    steps: int
    sample_interval: int
    timestep_fs: float
    friction_per_fs: float
    max_structures: int
    max_force_eV_per_A: float
    min_distance_A: float
    max_atoms: int | None = None  # only cells with at most this many atoms start an exploration

    @classmethod
    def from_config(cls, section: dict) -> ExplorationSettings:
        settings = cls(**section)
        if settings.sample_interval > settings.steps:
            raise ConfigError(
                f"train.active_learning.exploration: sample_interval {settings.sample_interval} exceeds steps {settings.steps}"
            )
        return settings


def explore(
    structures: Sequence[Atoms],
    calculator: FieldCalculator,
    settings: ExplorationSettings,
    seed: int,
    progress: bool = True,
) -> tuple[list[Atoms], list[dict]]:
    """Run the exploration MD; return (snapshots, one record per trajectory).

    Snapshots carry ``info`` keys ``trajectory`` (name), ``frame``, ``step``,
    ``temperature_K``, ``field_V_per_A`` (3 floats) and the parent's
    ``config_type``/``structure_id``.
    """
    rng = np.random.default_rng(seed)
    limits = SafetyLimits(min_distance_A=settings.min_distance_A, max_force_eV_per_A=settings.max_force_eV_per_A,
                          key_prefix="train.active_learning.exploration.")
    chosen = [k for k, atoms in enumerate(structures) if settings.max_atoms is None or len(atoms) <= settings.max_atoms]
    if not chosen:
        raise ConfigError(
            f"train.active_learning.exploration.max_atoms = {settings.max_atoms}: none of the "
            f"{len(structures)} DFT candidates is that small (smallest has {min(len(a) for a in structures)} atoms)"
        )
    if len(chosen) > settings.max_structures:
        chosen = sorted(rng.choice(chosen, settings.max_structures, replace=False).tolist())
    snapshots: list[Atoms] = []
    records: list[dict] = []
    jobs = [(k, t, e) for k in chosen for t in settings.temperatures_K for e in settings.fields_V_per_A]
    for k, temperature, magnitude in tqdm(jobs, desc="exploration MD", disable=not progress):
        parent = structures[k]
        field = np.zeros(3)
        field[settings.field_axis] = magnitude
        atoms = Atoms(numbers=parent.numbers, positions=parent.positions, cell=parent.cell, pbc=parent.pbc)
        calculator.set_field(field)
        atoms.calc = calculator
        thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
        Stationary(atoms)
        atoms.set_constraint(FixCom())
        dynamics = ase_integrator("langevin", atoms, settings.timestep_fs, temperature,
                                  tau_fs=1.0 / settings.friction_per_fs, rng=rng)
        name = f"{parent.info.get('structure_id', k)}_T{temperature:g}_E{magnitude:g}"
        record = {"trajectory": name, "structure_index": k, "temperature_K": temperature,
                  "field_V_per_A": field.tolist(), "steps_done": 0, "stopped": None}
        frame = 0
        for step in range(settings.sample_interval, settings.steps + 1, settings.sample_interval):
            try:
                dynamics.run(settings.sample_interval)
                record["steps_done"] = step
                where = f" at step {step}"
                limits.check_forces(atoms.get_forces(), where)
                limits.check_min_distance(min_distance(atoms.get_positions(wrap=True), settings.min_distance_A,
                                                       cell=atoms.cell.array, pbc=atoms.pbc), where)
            except UnsafeState as exc:
                record["stopped"] = str(exc) if record["steps_done"] == step else f"{exc} before step {step}"
                break
            snap = Atoms(numbers=atoms.numbers, positions=atoms.get_positions(), cell=atoms.cell, pbc=atoms.pbc)
            parent_id = str(parent.info.get("structure_id", k))
            snap.info.update(trajectory=name, frame=frame, step=step, temperature_K=float(temperature),
                             field_V_per_A=field.copy(), config_type=f"al_{parent.info.get('config_type', 'md')}",
                             parent_structure_id=parent_id, structure_id=f"{name}_f{frame}",
                             charge=float(parent.info.get("charge", 0.0) or 0.0), source="exploration MD")
            snapshots.append(snap)
            frame += 1
        if record["stopped"]:
            log.warning("exploration %s stopped: %s", name, record["stopped"])
        records.append(record)
    return snapshots, records
