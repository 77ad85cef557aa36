"""``bornfield estimate``: core-hours per stage of a campaign config, from measured costs.

A dry-run helper for sizing a campaign before submitting it (locally or to SLURM). It
counts the work a config asks for -- melt-quench atom-steps, DFT jobs (with their
sizes and k meshes), training atom-epochs, exploration and production MD atom-steps --
and multiplies by per-unit costs measured on this project's benchmark machine
(2 cores, no GPU; ``benchmarks/results/*.json``, see :class:`CostModel`). The numbers
are upper bounds where the config gives maxima (early stopping usually ends training
sooner) and scale with the machine: pass ``--speed`` (< 1 on slower cores).

Cost laws (N atoms, cutoff E_cut in Ry, n_k irreducible k-points with time reversal):

* SCF: ``c_scf · f(N) · (E_cut/30)^p_cut · n_k`` core-seconds with the size factor
  ``f(N) = (N/16)^p`` up to 32 atoms and ``(32/16)^p · (N/32)^p_large`` beyond (the measured
  exponent steepens: dense linear algebra takes over);
* DFPT (E-field response + effective charges): the same form with its own exponents;
* MD: atom-steps / (atom-steps per CPU-second of the backend at that size);
* training: members × epochs × atoms of the training + validation set × cost per atom-epoch.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from bornfield.config import load_config
from bornfield.errors import ConfigError


@dataclass(frozen=True)
class CostModel:
    """Per-unit costs in core-seconds (1 MPI rank = 1 core), measured on 2-core benchmark machines.

    Sources (``benchmarks/results``): ``dft_convergence.json`` "ph_default" (the production
    settings: 16-atom beta rattled, 70/560 Ry, k 2x2x3 = 8 irreducible k-points, tr2_ph 1e-16,
    1 rank, serial OpenBLAS: SCF 148 s, DFPT 2,021 s CPU, divided by 8 k-points and by
    (70/30)^1.8 to give the per-k-point cost at the 30 Ry reference; the default tr2_ph 1e-14
    needs ~17 % less); size exponents from ``dft_scaling_openblas.json`` (25/200 Ry, Γ,
    OpenBLAS like the calibration job, 1 rank; local exponents between neighbouring sizes, the
    16- and 32-atom jobs measured twice): SCF 1.20 for 16 -> 32 atoms and 1.61 for 32 -> 64;
    DFPT 2.25 and 2.89 (the 64-atom ph.x: 4,800 s CPU, of which 2,441 s set-up, 888 s E-field
    response and 1,471 s effective charges; with the reference BLAS, ``dft_scaling.json``, the
    exponents are steeper: 1.8/2.5 and 2.67/>=3.2); cutoff exponent 1.8 fitted to the pw.x CPU
    times at 30-100 Ry, ecutrho = 8 ecutwfc, in ``dft_convergence.json``), ``melt_quench_throughput.json`` (LAMMPS Pedone
    ~45,000 atom-steps/s on 1 rank), ``md_throughput.json`` (field MD, potential + Born model every step, atom-steps per
    CPU-second: 7,500 at 128 atoms, 11,000 at >= 1,024), a 6-epoch timing of the potential and
    Born trainers (channels 16, hidden 64, float32, 1 thread: 1.4e-3 s per atom-epoch).
    """

    scf_core_s_per_kpoint: float = 4.03
    scf_size_exponent: float = 1.20
    scf_size_exponent_large: float = 1.61  # above 32 atoms
    dfpt_core_s_per_kpoint: float = 55.0
    dfpt_size_exponent: float = 2.25  # per k-point, 16 -> 32 atoms at Γ (dft_scaling_openblas.json)
    dfpt_size_exponent_large: float = 2.89  # 32 -> 64 atoms
    cutoff_exponent: float = 1.8
    melt_quench_atom_steps_per_core_s: float = 45_000.0
    md_atom_steps_per_core_s_small: float = 7_500.0  # 128 atoms
    md_atom_steps_per_core_s_large: float = 11_000.0  # >= 1,024 atoms
    train_core_s_per_atom_epoch: float = 1.4e-3

    @staticmethod
    def size_factor(n_atoms: int, exponent: float, exponent_large: float) -> float:
        """Cost at ``n_atoms`` relative to 16 atoms: one power law to 32 atoms, a steeper one beyond."""
        if n_atoms <= 32:
            return (n_atoms / 16) ** exponent
        return 2.0**exponent * (n_atoms / 32) ** exponent_large

    def md_rate(self, n_atoms: int) -> float:
        """Field-MD atom-steps per core-second at ``n_atoms`` (log-linear between 128 and 1,024)."""
        x = min(max((math.log(n_atoms) - math.log(128)) / (math.log(1024) - math.log(128)), 0.0), 1.0)
        return self.md_atom_steps_per_core_s_small + x * (self.md_atom_steps_per_core_s_large - self.md_atom_steps_per_core_s_small)


def irreducible_kpoints(mesh: tuple[int, int, int]) -> int:
    """Monkhorst-Pack (unshifted) points of a cell without symmetry, k and -k merged."""
    total = int(np.prod(mesh))
    self_inverse = int(np.prod([2 if n % 2 == 0 else 1 for n in mesh]))
    return (total + self_inverse) // 2


def dft_job_core_seconds(n_atoms: int, cell: np.ndarray, settings, cost: CostModel | None = None) -> tuple[float, float]:
    """(SCF, DFPT) core-seconds of one DFT job of ``n_atoms`` in ``cell`` (3, 3) Å at ``settings``.

    ``settings`` is a :class:`bornfield.dft.inputs.DFTSettings`; DFPT is 0 when it asks for no
    Born charges. The k mesh is the one the runner's input writer will use.
    """
    from bornfield.dft.inputs import kpoint_mesh

    cost = cost or CostModel()
    scale = (settings.ecutwfc_Ry / 30.0) ** cost.cutoff_exponent
    n_k = irreducible_kpoints(kpoint_mesh(Atoms(cell=cell, pbc=True), settings.kpoint_density_per_inv_A))
    scf = cost.scf_core_s_per_kpoint * cost.size_factor(n_atoms, cost.scf_size_exponent, cost.scf_size_exponent_large) * scale * n_k
    ph = 0.0
    if settings.born_charges:
        ph = cost.dfpt_core_s_per_kpoint * cost.size_factor(n_atoms, cost.dfpt_size_exponent, cost.dfpt_size_exponent_large) * scale * n_k
    return scf, ph


def _amorphous_length(n_atoms: int, density_g_cm3: float) -> float:
    """Edge (Å) of a cubic Li3PO4 cell of ``n_atoms`` at ``density_g_cm3``."""
    mass_per_atom_g = (3 * 6.94 + 30.974 + 4 * 15.999) / 8 / 6.02214076e23
    return (n_atoms * mass_per_atom_g / density_g_cm3 * 1e24) ** (1.0 / 3.0)


def dft_candidate_cells(config: dict) -> list[tuple[str, int, np.ndarray]]:
    """(config_type, atoms, cell (3, 3) in Å) of every DFT candidate the structures stage makes."""
    from bornfield.structures.builder import build_crystal_dft_candidates

    structures = config["structures"]
    out = [(a.info.get("config_type", "crystal"), len(a), a.cell[:])
           for a in build_crystal_dft_candidates(structures, int(config["seed"]))]
    amorphous = structures["amorphous"]
    if "amorphous" in structures["phases"] or amorphous["dft_cells"]["seeds"] > 0:
        spec = amorphous["dft_cells"]
        perturb = structures["perturbations"]
        per_seed = 1 + perturb["rattle_copies"] + perturb["strain_copies"] + spec["melt_snapshots"]
        length = _amorphous_length(spec["n_atoms"], amorphous["initial_density_g_cm3"])
        out += [("amorphous", spec["n_atoms"], length * np.eye(3))] * (spec["seeds"] * per_seed)
    return out


def estimate(config: dict, cost: CostModel | None = None) -> list[dict]:
    """One row per stage: ``stage``, ``units`` (what was counted), ``core_hours``."""
    from bornfield.dft.inputs import DFTSettings
    from bornfield.md.conditions import expand_conditions

    cost = cost or CostModel()
    rows = []
    structures = config["structures"]
    amorphous = structures["amorphous"]
    steps = (amorphous["melt_time_ps"] + (amorphous["melt_temperature_K"] - amorphous["final_temperature_K"])
             / amorphous["quench_rate_K_per_ps"] + amorphous["anneal_time_ps"]) * 1000.0 / amorphous["timestep_fs"]
    cells = [(amorphous["dft_cells"]["n_atoms"], amorphous["dft_cells"]["seeds"])]
    if "amorphous" in structures["phases"]:
        cells.append((amorphous["md_cells"]["n_atoms"], amorphous["md_cells"]["seeds"]))
    atom_steps = sum(n * seeds * steps for n, seeds in cells)
    rows.append({"stage": "structures (melt-quench)", "units": f"{atom_steps:.3g} atom-steps",
                 "core_hours": atom_steps / cost.melt_quench_atom_steps_per_core_s / 3600})

    dft = config["dft"]
    settings = DFTSettings.from_section(dft)
    all_candidates = dft_candidate_cells(config)
    candidates = all_candidates
    if dft["max_structures"] is not None:
        candidates = candidates[: dft["max_structures"]]
    al = config["train"]["active_learning"]
    n_selected = max(al["generations"] - 1, 0) * al["select_per_generation"]
    max_atoms = al["exploration"]["max_atoms"]
    explorable = [c for c in all_candidates if max_atoms is None or c[1] <= max_atoms]
    if n_selected and not explorable:
        raise ConfigError(f"train.active_learning.exploration.max_atoms = {max_atoms}: no DFT candidate is that small")
    # selected snapshots: as large on average as the cells exploration starts from
    jobs = candidates + [explorable[k % len(explorable)] for k in range(n_selected)]
    scf_s = ph_s = 0.0
    for _, n_atoms, cell in jobs:
        job_scf, job_ph = dft_job_core_seconds(n_atoms, cell, settings, cost)
        scf_s += job_scf
        ph_s += job_ph
    n_atoms_total = sum(j[1] for j in jobs)
    rows.append({"stage": "dft (pw.x SCF)", "units": f"{len(jobs)} jobs, {n_atoms_total} atoms",
                 "core_hours": scf_s / 3600})
    rows.append({"stage": "dft (ph.x DFPT Born charges)", "units": f"{len(jobs) if settings.born_charges else 0} jobs",
                 "core_hours": ph_s / 3600})

    train = config["train"]
    generations = max(al["generations"], 1)
    train_s = 0.0
    for g in range(generations):
        labelled_atoms = sum(j[1] for j in jobs[: len(candidates) + g * al["select_per_generation"]])
        for block in ("potential", "born"):
            train_s += train[block]["committee"] * train[block]["max_epochs"] * labelled_atoms * cost.train_core_s_per_atom_epoch
        if train["baseline"]["enabled"]:
            train_s += train["baseline"]["committee"] * train["baseline"]["max_epochs"] * labelled_atoms * cost.train_core_s_per_atom_epoch
    rows.append({"stage": "train (committees, upper bound: max_epochs)", "units": f"{generations} generation(s)",
                 "core_hours": train_s / 3600})

    exploration = al["exploration"]
    n_traj = min(len(explorable), exploration["max_structures"]) * len(exploration["temperatures_K"]) * len(exploration["fields_V_per_A"])
    mean_atoms = float(np.mean([c[1] for c in explorable])) if explorable else 0.0
    explore_steps = max(al["generations"] - 1, 0) * n_traj * exploration["steps"] * mean_atoms
    explore_s = explore_steps / cost.md_rate(max(int(mean_atoms), 1)) * train["potential"]["committee"] if explorable else 0.0
    rows.append({"stage": "active-learning exploration MD", "units": f"{explore_steps:.3g} atom-steps x committee",
                 "core_hours": explore_s / 3600})

    md = config["md"]
    conditions = expand_conditions(md)
    md_atoms = {}
    for phase in {c.phase for c in conditions}:
        if phase == "amorphous":
            md_atoms[phase] = amorphous["md_cells"]["n_atoms"]
        else:
            from bornfield.structures.builder import phase_cell

            target = structures["md_supercell"]
            md_atoms[phase] = len(phase_cell(phase, target["target_atoms"], target["max_excess_fraction"], int(config["seed"]),
                                             "md", structures["frenkel_min_separation_A"]))
    steps_md = md["equilibration_steps"] + md["production_steps"]
    md_s = sum(c.replicas * steps_md * md_atoms[c.phase] / cost.md_rate(md_atoms[c.phase]) for c in conditions)
    rows.append({"stage": "field MD (all conditions x replicas)",
                 "units": f"{len(conditions)} conditions, {sum(c.replicas for c in conditions)} replicas, {steps_md} steps",
                 "core_hours": md_s / 3600})
    return rows


def format_table(rows: list[dict], cores: int) -> str:
    total = sum(r["core_hours"] for r in rows)
    lines = [f"{'stage':46s} {'core-hours':>11s} {'wall h on ' + str(cores) + ' cores':>16s}  counted", "-" * 110]
    for r in rows:
        lines.append(f"{r['stage']:46s} {r['core_hours']:11.2f} {r['core_hours'] / cores:16.2f}  {r['units']}")
    lines += ["-" * 110, f"{'total':46s} {total:11.2f} {total / cores:16.2f}"]
    return "\n".join(lines)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "estimate", help="core-hours per stage of a campaign config (dry-run sizing from measured costs)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--config", required=True, help="campaign config (YAML)")
    parser.add_argument("--cores", type=int, default=2, help="cores of the machine for the wall-time column")
    parser.add_argument("--speed", type=float, default=1.0, help="relative core speed (2 = twice as fast as the benchmark machine)")
    parser.add_argument("--json", type=Path, help="also write the rows (+ cost model) as JSON here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.speed <= 0 or args.cores < 1:
        raise ConfigError(f"--speed must be > 0 and --cores >= 1 (got {args.speed}, {args.cores})")
    config = load_config(args.config)
    rows = estimate(config)
    for row in rows:
        row["core_hours"] /= args.speed
    print(format_table(rows, args.cores))
    if args.json:
        args.json.write_text(json.dumps({"config": str(args.config), "rows": rows, "cost_model": asdict(CostModel()),
                                         "speed": args.speed}, indent=1))
    return 0
