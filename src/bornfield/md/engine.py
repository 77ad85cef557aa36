"""The backend-independent MD driver of one replica.

A backend (:mod:`bornfield.md.ase_backend`, :mod:`bornfield.md.lammps_backend`)
integrates the equations of motion with F = F_NNP + e Zᵀ E(step) and performs
the per-step checks (finite forces, acoustic sum rule). :class:`ReplicaRunner`
advances it from event to event (thermo rows, trajectory frames, safety checks,
checkpoints), writes the files and turns a blow-up into ``status.json``
``{"state": "failed", "reason": …}`` while keeping the last good checkpoint.

Step bookkeeping: MD step 0 is the start configuration, steps
``0 … equilibration_steps − 1`` run at zero field, the field acts on the
configurations of steps ``≥ equilibration_steps`` (= ``field_on_step``), the
run ends at ``equilibration_steps + production_steps``. ``traj.h5`` holds the
production frames (``step ≥ field_on_step``, every ``trajectory_stride``);
``thermo.csv`` holds every ``thermo_stride``-th step from 0. Both use the same
clock: ``time_fs = (step − field_on_step) · dt`` (negative during equilibration).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import units

from bornfield.fieldphysics import SafetyLimits, UnsafeState, check_finite
from bornfield.md.output import (
    ThermoWriter,
    TrajectoryWriter,
    load_checkpoint,
    save_checkpoint,
    write_json,
)

LOG = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.npz"
#: checkpoint array holding the committee force spread (eV/Å) of every check up to the checkpoint
UNCERTAINTY_CHECKS_KEY = "force_uncertainty_checks"


BlowUp = UnsafeState
"""A replica became unphysical (NaN, atoms overlapping, temperature runaway,
committee uncertainty too large, ASR violated). The message says which."""


@dataclass
class Snapshot:
    """State of a replica at one MD step (arrays only on the writer rank).

    Units: positions Å (unwrapped), velocities Å/fs, forces eV/Å, Born
    charges e, energies eV, temperature K, field V/Å.
    """

    step: int
    epot: float
    ekin: float
    temperature_K: float
    field_work: float
    thermostat_energy: float
    field: np.ndarray
    positions: np.ndarray | None = None
    velocities: np.ndarray | None = None
    field_forces: np.ndarray | None = None
    born_charges: np.ndarray | None = None

    @property
    def econs(self) -> float:
        """epot + ekin − field work − heat added by the thermostat (NaN if untracked)."""
        return self.epot + self.ekin - self.field_work - self.thermostat_energy


class Backend:
    """What :class:`ReplicaRunner` needs from an integrator backend.

    Every method is called collectively on all ranks of the replica group;
    arrays are returned on the writer rank (group rank 0) only.
    """

    step: int
    is_writer: bool
    numbers: np.ndarray
    masses: np.ndarray
    cell: np.ndarray

    def advance(self, n_steps: int) -> None:
        """Integrate ``n_steps`` steps; raise :class:`BlowUp` on all ranks on failure."""
        raise NotImplementedError

    def snapshot(self, with_arrays: bool) -> Snapshot:
        raise NotImplementedError

    def min_distance(self) -> float:
        """Smallest interatomic distance (Å, minimum image), reduced over the group."""
        raise NotImplementedError

    def committee_force_std(self) -> float | None:
        """Max over atoms of the committee force standard deviation (eV/Å), or None."""
        raise NotImplementedError

    def checkpoint_state(self) -> tuple[dict[str, np.ndarray], dict]:
        raise NotImplementedError

    def restore(self, arrays: dict[str, np.ndarray], metadata: dict) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _next_multiple(step: int, stride: int, offset: int = 0) -> int:
    """Smallest s > step with (s − offset) % stride == 0 and s ≥ offset."""
    if step < offset:
        return offset
    return offset + ((step - offset) // stride + 1) * stride


class ReplicaRunner:
    """Runs one replica to completion (or failure), resuming from its checkpoint.

    Args:
        backend: an initialised backend at step 0 (or to be restored).
        settings: validated ``md`` settings.
        outdir: ``{results_dir}/md/<condition>/replica_<r>``.
        attributes: root attributes of traj.h5 (condition, replica, seed, …).
        target_temperature_K: condition temperature (for the runaway check).
        group_comm: communicator of the replica's ranks (None = serial).
        progress: show a tqdm bar on the writer rank.
    """

    def __init__(self, backend: Backend, settings: dict, outdir: Path, attributes: dict,
                 target_temperature_K: float, group_comm=None, progress: bool = True,
                 progress_position: int = 0):
        self.backend = backend
        self.settings = settings
        self.outdir = Path(outdir)
        self.attributes = dict(attributes)
        self.target_temperature_K = float(target_temperature_K)
        self.comm = group_comm
        self.progress = progress
        self.progress_position = progress_position
        self.field_on_step = int(settings["equilibration_steps"])
        self.total_steps = self.field_on_step + int(settings["production_steps"])
        self.dt_fs = float(settings["timestep_fs"])
        out = settings["output"]
        self.thermo_stride = int(out["thermo_stride"])
        self.traj_stride = int(out["trajectory_stride"])
        self.checkpoint_interval = int(out["checkpoint_interval"])
        safety = settings["safety"]
        self.distance_interval = int(safety["distance_check_interval"])
        self.uncertainty_interval = int(safety["uncertainty_check_interval"])
        self.limits = SafetyLimits.from_md_settings(settings)
        self.uncertainties: list[float] = []  # committee force std (eV/Å) of every check of the run

    # -- helpers --------------------------------------------------------
    def _bcast(self, value):
        if self.comm is None or self.comm.Get_size() == 1:
            return value
        return self.comm.bcast(value, root=0)

    def _status(self, state: str, reason: str, step: int, wall_s: float) -> dict:
        status = {
            "state": state,
            "reason": reason,
            "steps": int(step),
            "total_steps": int(self.total_steps),
            "field_on_step": int(self.field_on_step),
            "wall_time_s": round(wall_s, 3),
            "replica": self.attributes.get("replica"),
            "seed": self.attributes.get("seed"),
            "backend": self.attributes.get("backend"),
        }
        if self.uncertainties:  # every check of the run (a resumed run restores the earlier ones from its checkpoint)
            values = np.asarray(self.uncertainties)
            limit = self.limits.max_force_uncertainty_eV_per_A
            status["force_uncertainty_eV_per_A"] = {
                "checks": int(values.size), "median": float(np.median(values)), "max": float(values.max()),
                "fraction_below_limit": float(np.mean(values <= limit)) if limit is not None else None,
            }
        return status

    def _write_outputs(self, snap: Snapshot, traj: TrajectoryWriter | None, thermo: ThermoWriter | None):
        step = snap.step
        if thermo is not None and step % self.thermo_stride == 0:
            thermo.append({
                "step": step,
                "time_fs": (step - self.field_on_step) * self.dt_fs,  # same clock as traj.h5
                "temperature_K": snap.temperature_K,
                "epot_eV": snap.epot,
                "ekin_eV": snap.ekin,
                "econs_eV": snap.econs,
                "field_work_eV": snap.field_work,
                "field_x_V_per_A": snap.field[0],
                "field_y_V_per_A": snap.field[1],
                "field_z_V_per_A": snap.field[2],
            })
        if (traj is not None and step >= self.field_on_step
                and (step - self.field_on_step) % self.traj_stride == 0):
            traj.append(
                step=step,
                time_fs=(step - self.field_on_step) * self.dt_fs,
                field=snap.field,
                positions=snap.positions,
                velocities_A_per_fs=snap.velocities,
                field_forces=snap.field_forces,
                born_charges=snap.born_charges,
            )

    def _needs_frame(self, step: int) -> bool:
        return step >= self.field_on_step and (step - self.field_on_step) % self.traj_stride == 0

    def _check(self, snap: Snapshot) -> None:
        """Safety checks at an event step (raise BlowUp with a clear reason)."""
        safety = self.settings["safety"]
        check_finite(f"energy or temperature at step {snap.step}: "
                     f"epot={snap.epot}, ekin={snap.ekin}, T={snap.temperature_K}",
                     snap.epot, snap.ekin, snap.temperature_K)
        limit = float(safety["max_temperature_factor"]) * self.target_temperature_K
        if snap.temperature_K > limit:
            raise BlowUp(f"temperature runaway at step {snap.step}: T = {snap.temperature_K:.1f} K "
                         f"> {safety['max_temperature_factor']} x {self.target_temperature_K:g} K")
        step = snap.step
        if step % self.distance_interval == 0:
            self.limits.check_min_distance(self.backend.min_distance(), f" at step {step}")
        if step % self.uncertainty_interval == 0:
            std = self.backend.committee_force_std()
            if std is not None:
                self.uncertainties.append(float(std))
            self.limits.check_force_uncertainty(std, f" at step {step}")

    # -- main loop ------------------------------------------------------
    def run(self) -> dict:
        """Run (or resume) the replica; returns the status dict (also in status.json)."""
        start = time.perf_counter()
        backend = self.backend
        writer = backend.is_writer
        if writer:
            self.outdir.mkdir(parents=True, exist_ok=True)
        checkpoint_path = self.outdir / CHECKPOINT_NAME
        resumed = self._bcast(checkpoint_path.exists() if writer else None)
        keep = None
        if resumed:
            if writer:
                arrays, metadata = load_checkpoint(checkpoint_path)
                # absent in checkpoints written before the history was kept: the summary then counts
                # the checks since this resume only
                self.uncertainties = arrays.pop(UNCERTAINTY_CHECKS_KEY, np.zeros(0)).astype(float).tolist()
            else:
                arrays, metadata = None, None
            backend.restore(arrays, metadata)
            keep = backend.step
            LOG.info("%s: resuming from checkpoint at step %d", self.outdir, keep)
        traj = thermo = None
        if writer:
            attrs = dict(self.attributes)
            attrs.update({"timestep_fs": self.dt_fs, "stride": self.traj_stride,
                          "field_on_step": self.field_on_step})
            traj = TrajectoryWriter(self.outdir / "traj.h5", attrs, backend.numbers, backend.masses,
                                    backend.cell, velocities=self.settings["output"]["velocities"],
                                    field_forces=self.settings["output"]["field_forces"],
                                    born_charges=self.settings["output"]["born_charges"],
                                    keep_until_step=keep)
            thermo = ThermoWriter(self.outdir / "thermo.csv", keep_until_step=keep)
        bar = None
        if writer and self.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=backend.step, unit="step",
                       desc=f"{self.attributes.get('condition', 'md')} r{self.attributes.get('replica', 0)}",
                       position=self.progress_position, leave=True, mininterval=2.0)
        last_checkpoint_step = backend.step if resumed else None
        status: dict
        try:
            if not resumed:
                snap = backend.snapshot(with_arrays=writer and self._needs_frame(0))
                self._check(snap)
                if writer:
                    self._write_outputs(snap, traj, thermo)
                self._checkpoint(traj, thermo)
                last_checkpoint_step = 0
            while backend.step < self.total_steps:
                step = backend.step
                target = min(
                    _next_multiple(step, self.thermo_stride),
                    _next_multiple(step, self.traj_stride, self.field_on_step),
                    _next_multiple(step, self.checkpoint_interval),
                    _next_multiple(step, self.distance_interval),
                    _next_multiple(step, self.uncertainty_interval),
                    self.total_steps,
                )
                backend.advance(target - step)
                snap = backend.snapshot(with_arrays=writer and self._needs_frame(backend.step))
                self._check(snap)
                if writer:
                    self._write_outputs(snap, traj, thermo)
                if backend.step % self.checkpoint_interval == 0 or backend.step == self.total_steps:
                    self._checkpoint(traj, thermo)
                    last_checkpoint_step = backend.step
                if bar is not None:
                    bar.update(backend.step - step)
                    bar.set_postfix(T=f"{snap.temperature_K:.0f}K", refresh=False)
            status = self._status("completed", "", backend.step, time.perf_counter() - start)
        except BlowUp as exc:
            LOG.error("%s: replica failed: %s", self.outdir, exc)
            status = self._status("failed", str(exc), backend.step, time.perf_counter() - start)
            status["last_checkpoint_step"] = last_checkpoint_step
            if writer:
                # the files keep what was written at the last good checkpoint
                traj.discard()
                thermo.discard()
        finally:
            if bar is not None:
                bar.close()
            if traj is not None:
                traj.close()
            if thermo is not None:
                thermo.close()
        if writer:
            write_json(self.outdir / "status.json", status)
        return status

    def _checkpoint(self, traj, thermo) -> None:
        arrays, metadata = self.backend.checkpoint_state()
        if self.backend.is_writer:
            traj.flush()
            thermo.flush()
            arrays = {**arrays, UNCERTAINTY_CHECKS_KEY: np.asarray(self.uncertainties, dtype=float)}
            save_checkpoint(self.outdir / CHECKPOINT_NAME, arrays, metadata)


def kinetic_temperature(ekin_eV: float, n_dof: int) -> float:
    """T = 2 E_kin / (n_dof k_B) in K."""
    return 2.0 * ekin_eV / (n_dof * units.kB) if n_dof > 0 else 0.0
