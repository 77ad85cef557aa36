"""Re-equilibrate amorphous cells with the NN potential committee (isotropic NPT).

The classical (Pedone) melt-quench sets the glass at the classical potential's
density; :func:`nn_equilibrate` relaxes it under the NN potential that drives the
field MD: ASE's isotropic Martyna-Tobias-Klein NPT
(:class:`ase.md.nose_hoover_chain.IsotropicMTKNPT`) with the committee-mean
energy, forces and stress, an anneal at ``anneal_temperature_K`` then a final
stage at ``final_temperature_K``, both at ``pressure_bar``. The result is the last
frame scaled isotropically to the mean density of the second half of the final
stage. Units: ASE (Å, eV, amu); settings in K, ps, fs, bar; densities g/cm³.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import all_changes

from bornfield.calculators import FieldCalculator
from bornfield.errors import ConfigError
from bornfield.fieldphysics import UnsafeState, min_distance
from bornfield.structures.crystals import density_g_cm3
from bornfield.structures.identity import annotate, derive_seed

log = logging.getLogger(__name__)

#: melt-quench info keys that describe the classical cell; kept on the NN cell with a ``classical_`` prefix
CLASSICAL_KEYS = ("pressure_before_anneal_bar", "anneal_density_g_cm3")


class EquilibrationUnsafe(UnsafeState):
    """A safety check of the NN equilibration failed; the message names the check, limit and time."""


@dataclass(frozen=True)
class NNEquilibrationProtocol:
    """The settings of ``structures.amorphous.nn_equilibration`` (without ``enabled``)."""

    anneal_temperature_K: float = 700.0
    anneal_time_ps: float = 5.0
    final_temperature_K: float = 300.0
    final_time_ps: float = 10.0
    pressure_bar: float = 0.0
    timestep_fs: float = 1.0
    thermostat_time_constant_fs: float = 100.0
    barostat_time_constant_fs: float = 1000.0
    min_distance_A: float = 0.7
    max_force_uncertainty_eV_per_A: float = 2.0
    max_temperature_factor: float = 2.0
    max_density_change_fraction: float = 0.25
    check_interval_steps: int = 10
    trace_interval_steps: int = 50

    @classmethod
    def from_settings(cls, settings) -> NNEquilibrationProtocol:
        """From the validated ``nn_equilibration`` settings (``enabled`` is ignored)."""
        return cls(**{key: settings[key] for key in cls.__dataclass_fields__})

    def stages(self) -> list[tuple[str, float, int]]:
        """(name, temperature K, steps) of the stages that have steps."""
        out = []
        for name, temperature, time_ps in (("anneal", self.anneal_temperature_K, self.anneal_time_ps),
                                           ("final", self.final_temperature_K, self.final_time_ps)):
            steps = int(round(time_ps * 1000.0 / self.timestep_fs))
            if steps > 0:
                out.append((name, float(temperature), steps))
        if not out or out[-1][0] != "final" or out[-1][2] < 2:
            raise ConfigError(f"nn_equilibration.final_time_ps = {self.final_time_ps} gives fewer than 2 steps of "
                             f"{self.timestep_fs} fs: no density to average")
        return out


class CommitteeNPTCalculator(FieldCalculator):
    """:class:`FieldCalculator` (no field, no Born model) that computes the stress with every force call.

    The NPT step asks for forces, then for the stress at the same positions: one
    pass of the committee mean gives both.
    """

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, (*properties, "stress"), system_changes)


def models_digest(paths) -> str:
    """12 hex digits identifying the model files (sha256 of their contents, in order)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return digest.hexdigest()[:12]


def nn_seed(atoms: Atoms, index: int) -> int:
    """Velocity seed of cell ``index``: from the cell's own ``info["seed"]`` (-1 if absent)."""
    return derive_seed(int(atoms.info.get("seed", -1)), "nn-equilibration", index)


def nn_equilibrate(atoms: Atoms, potential, protocol: NNEquilibrationProtocol, seed: int,
                   progress: bool = False, label: str = "cell") -> tuple[Atoms, dict, list[dict]]:
    """Run the anneal and final NPT stages on a copy of ``atoms``.

    Args:
        atoms: periodic cell (not modified).
        potential: a :class:`~bornfield.models.committee.PotentialCommittee` (its
            mean drives the dynamics; two or more members give the force spread).
        protocol: stages and safety limits.
        seed: seed of the Maxwell-Boltzmann velocities.
        progress: show a tqdm bar.
        label: name of the cell in messages.

    Returns:
        (output cell: last frame scaled to the mean density of the second half of the
        final stage, positions wrapped, no velocities and no calculator; summary dict;
        trace rows every ``trace_interval_steps``: step, time_ps, stage,
        temperature_K, density_g_cm3, pressure_bar, epot_eV, force_uncertainty_max_eV_per_A).

    Raises:
        EquilibrationUnsafe: atoms closer than ``min_distance_A``, committee force
            spread above its limit, temperature above ``max_temperature_factor`` x the
            higher stage temperature, density change above its fraction, or
            non-finite model output.
    """
    from ase.md.nose_hoover_chain import IsotropicMTKNPT
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    stages = protocol.stages()
    if not np.all(atoms.pbc):
        raise ValueError(f"{label}: NPT needs a periodic cell")
    work = Atoms(atoms.numbers, positions=atoms.get_positions(wrap=True), cell=atoms.cell, pbc=True)
    calc = CommitteeNPTCalculator(potential=potential)
    work.calc = calc
    n_members = len(getattr(calc.potential, "members", [None]))
    if n_members < 2:
        log.warning("%s: one potential only: the committee force spread is 0 and its check does nothing", label)
    density0 = density_g_cm3(work)
    t_max = protocol.max_temperature_factor * max(t for _, t, _ in stages)
    rng = np.random.default_rng(seed)
    thermalize_momenta(work, stages[0][1], rng=rng)
    Stationary(work)
    distance_cutoff = max(protocol.min_distance_A, 2.0)

    trace: list[dict] = []
    final_density: list[float] = []
    spread_max = {name: 0.0 for name, _, _ in stages}
    min_seen = math.inf
    cpu0, wall0 = time.process_time(), time.perf_counter()
    total = sum(steps for _, _, steps in stages)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="step", desc=f"nn-equilibrate {label}", mininterval=2.0)
    step = 0
    try:
        for name, temperature, steps in stages:
            log.info("%s: %s stage, %g K, %g bar, %d steps of %g fs", label, name, temperature,
                     protocol.pressure_bar, steps, protocol.timestep_fs)
            dyn = IsotropicMTKNPT(work, timestep=protocol.timestep_fs * units.fs, temperature_K=temperature,
                                  pressure_au=protocol.pressure_bar * units.bar,
                                  tdamp=protocol.thermostat_time_constant_fs * units.fs,
                                  pdamp=protocol.barostat_time_constant_fs * units.fs)
            spread_interval = 0.0
            for _ in range(steps):
                dyn.step()
                step += 1
                where = f"{label}, {name} stage, step {step} (t = {step * protocol.timestep_fs / 1000:.3f} ps)"
                density = density_g_cm3(work)
                if name == "final":
                    final_density.append(density)
                if step % protocol.check_interval_steps == 0 or step == total:
                    min_seen = min(min_seen, _check(work, protocol, where, density, density0, t_max,
                                                    distance_cutoff))
                    if n_members > 1:  # the members one by one: twice the cost of the mean's pass
                        spread = float(np.max(calc.get_property("forces_uncertainty", work)))
                        spread_interval = max(spread_interval, spread)
                        spread_max[name] = max(spread_max[name], spread)
                        if spread > protocol.max_force_uncertainty_eV_per_A:
                            raise EquilibrationUnsafe(
                                f"{where}: committee force uncertainty {spread:.3f} eV/Å exceeds "
                                "nn_equilibration.max_force_uncertainty_eV_per_A = "
                                f"{protocol.max_force_uncertainty_eV_per_A:g} (the potential extrapolates)")
                if step % protocol.trace_interval_steps == 0 or step == total:
                    stress = work.get_stress(voigt=False, include_ideal_gas=True)
                    trace.append({"step": step, "time_ps": round(step * protocol.timestep_fs / 1000, 6),
                                  "stage": name, "temperature_K": float(work.get_temperature()),
                                  "density_g_cm3": density, "pressure_bar": float(-np.trace(stress) / 3 / units.bar),
                                  "epot_eV": float(work.get_potential_energy()),
                                  "force_uncertainty_max_eV_per_A": spread_interval})
                    spread_interval = 0.0
                if bar is not None:
                    bar.update(1)
                    if step % 100 == 0:
                        bar.set_postfix(T=f"{work.get_temperature():.0f}K", rho=f"{density:.3f}", refresh=False)
    except UnsafeState as exc:
        if isinstance(exc, EquilibrationUnsafe):
            raise
        raise EquilibrationUnsafe(f"{label}, step {step}: {exc}") from exc
    finally:
        if bar is not None:
            bar.close()

    half = np.asarray(final_density[len(final_density) // 2:])
    times_ps = np.arange(half.size) * protocol.timestep_fs / 1000.0
    mean = float(half.mean())
    drift = float(np.polyfit(times_ps, half, 1)[0]) if half.size > 2 else float("nan")
    last_density = density_g_cm3(work)
    out = Atoms(work.numbers, positions=work.get_positions(wrap=True), cell=work.cell, pbc=True)
    out.set_cell(out.cell.array * (last_density / mean) ** (1.0 / 3.0), scale_atoms=True)
    summary = {
        "n_atoms": len(atoms),
        "seed": int(seed),
        "committee_members": n_members,
        "steps": step,
        "classical_density_g_cm3": density0,
        "nn_density_g_cm3": mean,
        "nn_density_std_g_cm3": float(half.std(ddof=1)) if half.size > 1 else 0.0,
        "nn_density_drift_g_cm3_per_ps": drift,
        "last_frame_density_g_cm3": last_density,
        "force_uncertainty_max_eV_per_A": max(spread_max.values()) if n_members > 1 else None,
        "force_uncertainty_max_by_stage_eV_per_A": spread_max if n_members > 1 else None,
        "min_distance_A": min_seen,
        "cpu_time_s": time.process_time() - cpu0,
        "wall_time_s": time.perf_counter() - wall0,
        "protocol": asdict(protocol),
    }
    log.info("%s: density %.4f -> %.4f ± %.4f g/cm3 (drift %.4f g/cm3/ps), committee spread max %s eV/Å",
             label, density0, mean, summary["nn_density_std_g_cm3"], drift,
             f"{summary['force_uncertainty_max_eV_per_A']:.3f}" if n_members > 1 else "n/a")
    return out, summary, trace


def _check(atoms: Atoms, protocol: NNEquilibrationProtocol, where: str, density: float, density0: float,
           t_max: float, distance_cutoff: float) -> float:
    """Raise EquilibrationUnsafe on a failed check; return the shortest distance (Å; inf beyond the cutoff)."""
    temperature = float(atoms.get_temperature())
    if not math.isfinite(temperature) or temperature > t_max:
        raise EquilibrationUnsafe(
            f"{where}: temperature {temperature:.0f} K above {t_max:g} K "
            f"(nn_equilibration.max_temperature_factor = {protocol.max_temperature_factor:g} x the higher stage "
            "temperature): the dynamics blew up")
    if not math.isfinite(density) or abs(density / density0 - 1.0) > protocol.max_density_change_fraction:
        raise EquilibrationUnsafe(
            f"{where}: density {density:.3f} g/cm3 departs from the input's {density0:.3f} by more than "
            f"nn_equilibration.max_density_change_fraction = {protocol.max_density_change_fraction:g}")
    shortest = min_distance(atoms.get_positions(wrap=True), distance_cutoff, atoms.cell.array, atoms.pbc)
    if shortest < protocol.min_distance_A:
        raise EquilibrationUnsafe(
            f"{where}: atoms {shortest:.3f} Å apart, closer than nn_equilibration.min_distance_A = "
            f"{protocol.min_distance_A:g} Å")
    return shortest


def equilibrate_cells(cells: list[Atoms], potential, protocol: NNEquilibrationProtocol, models: str,
                      progress: bool = False) -> tuple[list[Atoms], list[dict]]:
    """Equilibrate every cell; annotate the outputs for the MD stage.

    Args:
        cells: classical amorphous cells (info keys of the structures stage).
        potential: the committee.
        protocol: settings.
        models: identity of the model files (:func:`models_digest`), stored per cell.
        progress: tqdm bars.

    Returns:
        the NN cells (``config_type`` amorphous, the cell's ``seed`` kept; new
        ``structure_id``; keys ``nn_*`` and ``classical_*``, see docs/architecture.md)
        and one record per cell (``classical_structure_id``, ``structure_id``,
        ``summary``, ``trace``).
    """
    outputs, records = [], []
    for index, cell in enumerate(cells):
        seed = nn_seed(cell, index)
        label = f"cell {index} ({cell.info.get('structure_id', '?')})"
        out, summary, trace = nn_equilibrate(cell, potential, protocol, seed, progress=progress, label=label)
        extra = {key: value for key, value in cell.info.items()
                 if key not in ("config_type", "seed", "source", "structure_id", *CLASSICAL_KEYS)}
        extra.update({f"classical_{key}": cell.info[key] for key in CLASSICAL_KEYS if key in cell.info})
        spread = summary["force_uncertainty_max_eV_per_A"]
        extra.update(
            classical_structure_id=cell.info.get("structure_id", ""),
            classical_density_g_cm3=round(summary["classical_density_g_cm3"], 5),
            nn_equilibrated=True,
            nn_density_g_cm3=round(summary["nn_density_g_cm3"], 5),
            nn_density_std_g_cm3=round(summary["nn_density_std_g_cm3"], 5),
            nn_density_drift_g_cm3_per_ps=round(summary["nn_density_drift_g_cm3_per_ps"], 6),
            nn_min_distance_seen_A=round(summary["min_distance_A"], 4),
            nn_seed=seed,
            nn_models=models,
            nn_committee_members=summary["committee_members"],
            **{f"nn_settings_{key}": value for key, value in asdict(protocol).items()},
        )
        if spread is not None:  # absent with a one-member committee (no spread), never a placeholder
            extra["nn_force_uncertainty_max_eV_per_A"] = round(spread, 4)
        source = (f"{cell.info.get('source', 'unknown')}; NN NPT {protocol.anneal_temperature_K:g} K "
                  f"{protocol.anneal_time_ps:g} ps + {protocol.final_temperature_K:g} K {protocol.final_time_ps:g} ps "
                  f"at {protocol.pressure_bar:g} bar (models {models})")
        out = annotate(out, config_type=cell.info.get("config_type", "amorphous"), seed=cell.info.get("seed"),
                       source=source, **extra)
        outputs.append(out)
        records.append({"classical_structure_id": extra["classical_structure_id"],
                        "structure_id": out.info["structure_id"], "summary": summary, "trace": trace})
    return outputs, records
