"""Single-process field MD with ASE integrators.

Forces: ``F = F_NNP + Z.T @ E`` from :class:`bornfield.calculators.FieldCalculator`
(which imposes the ASR and checks finite values and the ASR residual of the field
forces at every evaluation). Integrators (ASE 3.29, :func:`ase_integrator`):
``VelocityVerlet`` (nve), ``Bussi`` (CSVR), ``NoseHooverChainNVT`` and
``Langevin``. The centre of mass is held fixed with ``ase.constraints.FixCom``
(3N − 3 degrees of freedom). The net NNP force and — by the acoustic sum rule —
the net field force vanish, so this only removes round-off.

Thermostats and the field-driven drift (why ``bussi`` is the default):

* ``langevin`` applies −γ m v to the *absolute* velocity of every atom, so it
  damps the drift velocity itself: the drift settles at v_d = Zᵀ E / (m (γ + γ_phys)),
  i.e. the mobility is biased low by the artificial friction γ = 1/τ.
* ``bussi`` and ``nose_hoover_chain`` rescale all velocities by one global
  factor per step. The drift is rescaled too, but the factor deviates from 1
  only by what is needed to remove the Joule heat: the effective friction is
  ⟨ξ⟩ ≈ P_Joule / (2 E_kin), tiny at fields where the response is linear, and
  independent of τ in the steady state. Bussi is canonical and ergodic
  (stochastic), so it is the default; its conserved quantity tracks the heat.
* ``nve`` keeps the dynamics untouched; the Joule heat raises the temperature
  (visible in thermo.csv: econs stays constant, T rises).
* The species drifts cancel in momentum (ASR), so removing the centre-of-mass
  velocity never removes a species' drift relative to the others.
"""

from __future__ import annotations

import json
import logging
from typing import Sequence

import numpy as np
from ase import Atoms, units
from ase.constraints import FixCom
from ase.md.bussi import Bussi
from ase.md.langevin import Langevin
from ase.md.nose_hoover_chain import NoseHooverChainNVT
from ase.parallel import DummyMPI
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from bornfield.calculators import FieldCalculator
from bornfield.fieldphysics import SafetyLimits, committee_force_uncertainty, min_distance
from bornfield.md.engine import Backend, Snapshot, kinetic_temperature
from bornfield.md.fields import FieldSchedule
from bornfield.models.combined import member_forces, model_members

LOG = logging.getLogger(__name__)


class _NoseHooverChainNVT(NoseHooverChainNVT):
    """ASE's NHC integrator keeping its internal (q, p) equal to the constrained atoms.

    ``FixCom`` adjusts positions/momenta when the integrator writes them back;
    without re-reading them the next write differs by round-off, which makes
    ASE re-evaluate the (expensive) forces up to three times per step.
    """

    def _update_atoms(self) -> None:
        super()._update_atoms()
        self._q = self.atoms.get_positions()
        self._p = self.atoms.get_momenta()


def ase_integrator(kind: str, atoms: Atoms, timestep_fs: float, temperature_K: float, tau_fs: float,
                   rng: np.random.Generator, chain_length: int = 3):
    """The ASE integrator of an ensemble, for a single process (no MPI broadcast).

    Args:
        kind: ``nve`` (VelocityVerlet), ``bussi``, ``nose_hoover_chain`` or
            ``langevin`` (friction 1/τ on the absolute velocities, ``fixcm=False``:
            the centre of mass is held by ``FixCom``).
        atoms: the atoms (with their calculator).
        timestep_fs: fs. temperature_K: K. tau_fs: thermostat time constant (fs).
        rng: the thermostat's random stream (Bussi, Langevin).
        chain_length: Nosé–Hoover chain length.
    """
    dt = float(timestep_fs) * units.fs
    tau = float(tau_fs) * units.fs
    serial = DummyMPI()  # one replica per rank: never let ASE broadcast over COMM_WORLD
    if kind == "nve":
        return VelocityVerlet(atoms, dt, comm=serial)
    if kind == "bussi":
        return Bussi(atoms, dt, temperature_K=temperature_K, taut=tau, rng=rng, comm=serial)
    if kind == "nose_hoover_chain":
        return _NoseHooverChainNVT(atoms, dt, temperature_K=temperature_K, tdamp=tau, tchain=int(chain_length),
                                   comm=serial)
    if kind == "langevin":
        return Langevin(atoms, dt, temperature_K=temperature_K, friction=1.0 / tau, fixcm=False, rng=rng,
                        comm=serial)
    raise ValueError(f"unknown ensemble {kind!r}")  # guarded by the schema


def _rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def _set_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state


class ASEBackend(Backend):
    """Serial field MD of one replica with ASE (see module docstring).

    Args:
        atoms: start cell (positions Å, periodic); copied.
        potential, born: models (see :class:`~bornfield.calculators.FieldCalculator`).
        settings: validated ``md`` settings.
        schedule: the field E(step).
        temperature_K: thermostat and initial-velocity temperature.
        seed: replica seed; velocities and thermostat noise come from
            independent streams of ``np.random.SeedSequence(seed)``.
        committee: extra potentials used only for the uncertainty check (a potential committee
            ``potential``, whose mean drives the MD, brings its own members to it).
        evaluator: evaluates the models in place of ``evaluate_periodic`` (the
            FieldCalculator's ``evaluator``, e.g. a
            :class:`~bornfield.md.batching.ReplicaSlot` shared with other replicas); None = direct.
    """

    is_writer = True

    def __init__(self, atoms: Atoms, potential, born, settings: dict, schedule: FieldSchedule,
                 temperature_K: float, seed: int, committee: Sequence = (), evaluator=None):
        self.settings = settings
        self.schedule = schedule
        self.temperature_K = float(temperature_K)
        self.potential = potential
        self.committee = list(committee)
        self.atoms = atoms.copy()
        self.atoms.set_constraint(FixCom())
        self.safety = SafetyLimits.from_md_settings(settings)
        self.calc = FieldCalculator(potential, born, born_refresh_interval=settings["born_refresh_interval"],
                                    safety=self.safety, neighbour_skin=settings["neighbour_skin_A"],
                                    evaluator=evaluator)
        self.atoms.calc = self.calc
        self.numbers = self.atoms.numbers.copy()
        self.masses = self.atoms.get_masses()
        self.cell = np.asarray(self.atoms.cell).copy()
        self.dt = float(settings["timestep_fs"]) * units.fs
        self.n_dof = self.atoms.get_number_of_degrees_of_freedom()
        velocity_seq, thermostat_seq = np.random.SeedSequence(int(seed)).spawn(2)
        self.thermostat_rng = np.random.default_rng(thermostat_seq)
        thermalize_momenta(self.atoms, self.temperature_K, rng=np.random.default_rng(velocity_seq),
                           exact_temperature=True, comm=DummyMPI())
        Stationary(self.atoms)
        self.step = 0
        self.field_work = 0.0
        self.power_prev: float | None = None
        self.thermostat_offset = 0.0  # heat removed by a thermostat no longer active (nve equilibration)
        self.dyn = None
        self.dyn_kind = None
        self._set_field_for(self.step)
        self._ensure_integrator()
        self._power_after_step()

    # -- integrators ----------------------------------------------------
    def _wanted_kind(self) -> str:
        ensemble = self.settings["ensemble"]
        if ensemble == "nve" and self.step < self.schedule.field_on_step:
            return "bussi"  # zero-field thermalisation before an NVE production run
        return ensemble

    def _ensure_integrator(self) -> None:
        kind = self._wanted_kind()
        if kind == self.dyn_kind:
            return
        if self.dyn is not None:
            self.thermostat_offset += self._thermostat_energy()
        self.dyn = ase_integrator(kind, self.atoms, float(self.settings["timestep_fs"]), self.temperature_K,
                                  float(self.settings["thermostat_time_constant_fs"]), self.thermostat_rng,
                                  int(self.settings["nose_hoover_chain_length"]))
        self.dyn_kind = kind

    def _thermostat_energy(self) -> float:
        """Energy the active thermostat has added to the system so far (eV)."""
        if self.dyn_kind == "bussi":
            return float(self.dyn.transferred_energy)
        if self.dyn_kind == "nose_hoover_chain":
            return -float(self.dyn._thermostat.get_thermostat_energy())
        if self.dyn_kind == "langevin":
            return float("nan")
        return 0.0

    # -- stepping -------------------------------------------------------
    def _set_field_for(self, step: int) -> None:
        """Field and MD step of the next force evaluation (the configuration of ``step``)."""
        self.calc.set_field(self.schedule(step), keep_results=True)
        self.calc.step = step

    def _power_after_step(self) -> float:
        """Field power Σ F_field · v (eV/fs) at the current full step."""
        self.atoms.get_forces()
        velocities = self.atoms.get_velocities() * units.fs  # Å/fs
        power = float(np.sum(self.calc.results["field_forces"] * velocities))
        self.power_prev = power
        return power

    def advance(self, n_steps: int) -> None:
        dt_fs = self.dt / units.fs
        for _ in range(int(n_steps)):
            self._ensure_integrator()
            self._set_field_for(self.step + 1)
            previous = self.power_prev
            self.dyn.step()
            self.step += 1
            power = self._power_after_step()
            # trapezoid rule for W = ∫ F_field · v dt
            self.field_work += 0.5 * dt_fs * (previous + power)
        self._ensure_integrator()

    # -- observables ----------------------------------------------------
    def snapshot(self, with_arrays: bool) -> Snapshot:
        epot = float(self.atoms.get_potential_energy())
        ekin = float(self.atoms.get_kinetic_energy())
        snap = Snapshot(
            step=self.step,
            epot=epot,
            ekin=ekin,
            temperature_K=kinetic_temperature(ekin, self.n_dof),
            field_work=self.field_work,
            thermostat_energy=self.thermostat_offset + self._thermostat_energy(),
            field=self.calc.field.copy(),
        )
        if with_arrays:
            snap.positions = self.atoms.get_positions().copy()  # never wrapped: unwrapped
            snap.velocities = (self.atoms.get_velocities() * units.fs).astype(np.float32)
            snap.field_forces = self.calc.results["field_forces"].astype(np.float32)
            if self.settings["output"]["born_charges"]:
                snap.born_charges = self.calc.born_charges_for_output().astype(np.float32)
        return snap

    def min_distance(self) -> float:
        return min_distance(self.atoms.get_positions(wrap=True), self.settings["safety"]["min_distance_A"],
                            cell=self.cell, pbc=self.atoms.pbc)

    def committee_force_std(self) -> float | None:
        members = model_members(self.potential) + self.committee
        if len(members) < 2:
            return None
        return committee_force_uncertainty(member_forces(members, self.atoms.get_positions(wrap=True), self.numbers,
                                                         self.cell, np.asarray(self.atoms.pbc), self.calc.graphs))

    # -- checkpoints ----------------------------------------------------
    def checkpoint_state(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays = {
            "positions": self.atoms.get_positions(),
            "momenta": self.atoms.get_momenta(),
            "born_cache": self.calc.cached_born if self.calc.cached_born is not None else np.zeros(0),
            "born_rows_cache": self.calc.cached_rows if self.calc.cached_rows is not None else np.zeros(0),
            "born_rows_field": (self.calc.cached_rows_field if self.calc.cached_rows is not None
                                else np.zeros(0)),
        }
        metadata = {
            "backend": "ase",
            "step": self.step,
            "field_work": self.field_work,
            "power_prev": self.power_prev,
            "thermostat_offset": self.thermostat_offset,
            "dyn_kind": self.dyn_kind,
            "thermostat_rng": json.loads(json.dumps(_rng_state(self.thermostat_rng))),
            "born_step": self.calc.born_step,
        }
        if self.dyn_kind == "bussi":
            metadata["bussi_transferred"] = float(self.dyn.transferred_energy)
        if self.dyn_kind == "nose_hoover_chain":
            metadata["nhc_eta"] = self.dyn._thermostat._eta.tolist()
            metadata["nhc_p_eta"] = self.dyn._thermostat._p_eta.tolist()
        # the next steps use a neighbour list built here and this step's forces evaluated on it, as a run
        # resumed from this checkpoint does (restore): the two continue bit for bit alike, also when the
        # forces come from a batch of replicas (whose padding follows the lists)
        self.calc.rebuild_neighbour_list(self.atoms)
        self.calc.results = {}
        self.atoms.get_forces()
        return arrays, metadata

    def restore(self, arrays: dict[str, np.ndarray], metadata: dict) -> None:
        from bornfield.errors import InputFileError

        if metadata.get("backend") != "ase" or arrays["positions"].shape != (len(self.atoms), 3):
            raise InputFileError(
                f"checkpoint does not match this replica (backend {metadata.get('backend')!r}, "
                f"{arrays['positions'].shape[0]} atoms vs {len(self.atoms)}); delete the replica directory")
        self.atoms.set_positions(arrays["positions"], apply_constraint=False)
        self.atoms.set_momenta(arrays["momenta"], apply_constraint=False)
        self.step = int(metadata["step"])
        self.field_work = float(metadata["field_work"])
        self.thermostat_offset = float(metadata["thermostat_offset"])
        _set_rng_state(self.thermostat_rng, metadata["thermostat_rng"])
        if arrays["born_cache"].size:
            self.calc.cached_born = np.array(arrays["born_cache"])
        if arrays.get("born_rows_cache", np.zeros(0)).size:
            self.calc.cached_rows = np.array(arrays["born_rows_cache"])
            self.calc.cached_rows_field = np.array(arrays["born_rows_field"])
        self.calc.born_step = int(metadata["born_step"])
        self.calc.results = {}
        self.calc.rebuild_neighbour_list(self.atoms)
        self.dyn = None
        self.dyn_kind = None
        self._set_field_for(self.step)
        self._ensure_integrator()
        if self.dyn_kind == "bussi":
            self.dyn.transferred_energy = float(metadata.get("bussi_transferred", 0.0))
        if self.dyn_kind == "nose_hoover_chain":
            self.dyn._thermostat._eta = np.array(metadata["nhc_eta"])
            self.dyn._thermostat._p_eta = np.array(metadata["nhc_p_eta"])
        self._power_after_step()
        self.power_prev = float(metadata["power_prev"])
