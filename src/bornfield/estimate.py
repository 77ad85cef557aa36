"""``bornfield estimate``: core-hours per stage of a campaign config, from measured costs.

A dry-run helper for sizing a campaign before submitting it (locally or to SLURM). It
counts the work a config asks for -- melt-quench atom-steps, DFT jobs (with their
sizes and k meshes), training atom-epochs, exploration and production MD atom-steps --
and multiplies by per-unit costs measured on this project's benchmark machine
(2 cores, no GPU). The costs are derived from the benchmark records
(``benchmarks/results/*.json``) by :func:`cost_model_from_records` and shipped as
``bornfield/cost_model.json``; regenerate that file after re-running a benchmark with
``python benchmarks/cost_model.py`` (a test fails while it is stale). The numbers are
upper bounds where the config gives maxima (early stopping usually ends training
sooner) and scale with the machine: pass ``--speed`` (< 1 on slower cores).

Cost laws (N atoms, cutoff E_cut in Ry, n_k irreducible k-points with time reversal):

* SCF: ``c_scf · f(N) · (E_cut/30)^p_cut · n_k`` core-seconds with the size factor
  ``f(N) = (N/16)^p`` up to 32 atoms and ``(32/16)^p · (N/32)^p_large`` beyond (the measured
  exponent steepens: dense linear algebra takes over);
* DFPT (E-field response + effective charges): the same form with its own exponents;
* melt-quench and MD: atom-steps / (atom-steps per CPU-second, interpolated in log N
  between the measured sizes, constant beyond them);
* training: members × epochs × atoms of the labelled structures × CPU-s per atom-epoch.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from bornfield import atomic
from bornfield.config import load_config
from bornfield.errors import ConfigError, InputFileError

COST_FILE = Path(__file__).with_name("cost_model.json")
"""The cost model shipped with the package (written by ``benchmarks/cost_model.py``)."""

REFERENCE_DFT_JOB = {"system": "ph_default", "ecutwfc_Ry": 70.0, "kpoint_mesh": (2, 2, 3), "n_atoms": 16}
"""The calibration job of ``benchmarks/dft_convergence_campaign.py``: the schema's production
settings (70/560 Ry, k 2x2x3 on the rattled 16-atom beta cell), tr2_ph 1e-16, 1 rank."""

CUTOFF_REFERENCE_RY = 30.0
"""Cutoff at which the per-k-point DFT costs are quoted."""


@dataclass(frozen=True)
class CostModel:
    """Per-unit costs in core-seconds (1 MPI rank = 1 core), derived from the benchmark records.

    ``*_atom_steps_per_core_s`` map a cell size (atoms) to the measured rate; MD rates per
    backend (``ase``, ``lammps``); training costs per model kind (``potential``, ``born``).
    ``sources`` names the record files and entries each field comes from.
    """

    scf_core_s_per_kpoint: float
    scf_size_exponent: float
    scf_size_exponent_large: float  # above 32 atoms
    dfpt_core_s_per_kpoint: float
    dfpt_size_exponent: float
    dfpt_size_exponent_large: float
    cutoff_exponent: float
    melt_quench_atom_steps_per_core_s: dict[int, float]
    md_atom_steps_per_core_s: dict[str, dict[int, float]]
    md_baseline_slowdown: dict[str, float]  # MD time with the potential's Pedone baseline / without, per backend
    md_model_set_slowdown: dict[str, float]  # generic MD rate (md_throughput.json) / the shipped set's, same size, per backend
    train_core_s_per_atom_epoch: dict[str, float]
    sources: dict[str, str]

    @classmethod
    def load(cls, path: str | Path = COST_FILE) -> CostModel:
        """Read a cost-model JSON file (the shipped one by default)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            data["melt_quench_atom_steps_per_core_s"] = _sizes(data["melt_quench_atom_steps_per_core_s"])
            data["md_atom_steps_per_core_s"] = {k: _sizes(v) for k, v in data["md_atom_steps_per_core_s"].items()}
            return cls(**data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputFileError(f"{path}: not a readable cost model ({exc}); regenerate it with "
                                 "python benchmarks/cost_model.py") from exc

    def to_dict(self) -> dict:
        """JSON form (size keys as strings)."""
        return json.loads(json.dumps(asdict(self)))

    @staticmethod
    def size_factor(n_atoms: int, exponent: float, exponent_large: float) -> float:
        """Cost at ``n_atoms`` relative to 16 atoms: one power law to 32 atoms, a steeper one beyond."""
        if n_atoms <= 32:
            return (n_atoms / 16) ** exponent
        return 2.0**exponent * (n_atoms / 32) ** exponent_large

    def md_rate(self, n_atoms: int, backend: str, baseline: str = "none", model_set: bool = False) -> float:
        """Field-MD atom-steps per core-second of ``backend`` at ``n_atoms``, for a potential with
        the physical ``baseline`` (``none`` or ``pedone``, train.potential.baseline), or with
        ``model_set`` for the shipped model set (``md.models``; its baseline included)."""
        if backend not in self.md_atom_steps_per_core_s:
            raise ConfigError(f"cost model has no MD rate for backend {backend!r} "
                              f"(measured: {sorted(self.md_atom_steps_per_core_s)})")
        rate = _log_interpolate(self.md_atom_steps_per_core_s[backend], n_atoms)
        if model_set:
            return rate / self.md_model_set_slowdown[backend]
        if baseline == "none":
            return rate
        if baseline != "pedone":
            raise ConfigError(f"cost model has no MD rate for a potential baseline {baseline!r} (known: none, pedone)")
        return rate / self.md_baseline_slowdown[backend]

    def melt_quench_rate(self, n_atoms: int) -> float:
        """LAMMPS melt-quench atom-steps per core-second at ``n_atoms``."""
        return _log_interpolate(self.melt_quench_atom_steps_per_core_s, n_atoms)


def _sizes(table: dict) -> dict[int, float]:
    return {int(n): float(v) for n, v in table.items()}


def _log_interpolate(table: dict[int, float], n_atoms: int) -> float:
    """Linear in log(N) between the measured sizes, constant outside them."""
    sizes = sorted(table)
    return float(np.interp(math.log(max(n_atoms, 1)), np.log(sizes), [table[n] for n in sizes]))


def _records(results_dir: Path, name: str) -> list[dict]:
    path = results_dir / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{path}: benchmark records needed by the cost model are unreadable ({exc})") from exc


def _one(records: list[dict], where: str, **match) -> dict:
    found = [r for r in records if all(r.get(k) == v for k, v in match.items())]
    if len(found) != 1:
        raise InputFileError(f"{where}: expected one record with {match}, found {len(found)}")
    return found[0]


def cost_model_from_records(results_dir: str | Path) -> CostModel:
    """The cost model of the benchmark records in ``results_dir`` (``benchmarks/results``).

    * DFT per-k-point costs: CPU time of the calibration job :data:`REFERENCE_DFT_JOB` in
      ``dft_convergence.json`` (pw.x and ph.x, 1 rank) over its irreducible k-points, scaled
      to :data:`CUTOFF_REFERENCE_RY` with the cutoff exponent;
    * cutoff exponent: least-squares slope of log CPU time vs log cutoff of the pw.x SCF
      series ``scf_ec<E>_k223`` (1 rank) in ``dft_convergence.json``;
    * size exponents: the local exponents 16-32 and 32-64 atoms (1 rank) of
      ``dft_scaling_openblas.json`` (OpenBLAS, like the calibration job);
    * melt-quench: ``melt_quench_throughput.json``, atom-steps/s on 1 rank per cell size;
    * MD: ``md_throughput.json``, atom-steps per CPU-s of ``bornfield-ase`` / ``bornfield-lammps``
      on 1 rank, mean of the repeated runs per cell size;
    * MD with the potential's Pedone baseline: the slowdown per backend in
      ``md_throughput_baseline.json`` (``bornfield-<backend>`` over ``bornfield-pedone10-<backend>``,
      1 rank, the same run);
    * training: ``train_speed.json``, CPU-s per atom-epoch of the potential and the Born model.
    """
    results_dir = Path(results_dir)
    convergence = _records(results_dir, "dft_convergence.json")
    where = "dft_convergence.json"
    series = []
    for r in convergence:
        m = re.fullmatch(r"pw\.x scf_ec(\d+)_k223", r["system"])
        if m and r["metric"] == "qe_cpu_time_s" and r["ranks"] == 1:
            series.append((float(m.group(1)), float(r["value"])))
    if len(series) < 3:
        raise InputFileError(f"{where}: fewer than 3 pw.x scf_ec<E>_k223 CPU times for the cutoff exponent")
    cutoffs, times = np.array(sorted(series)).T
    cutoff_exponent = float(np.polyfit(np.log(cutoffs), np.log(times), 1)[0])
    job = REFERENCE_DFT_JOB
    n_k = irreducible_kpoints(job["kpoint_mesh"])
    to_reference = (job["ecutwfc_Ry"] / CUTOFF_REFERENCE_RY) ** cutoff_exponent
    per_kpoint = {
        program: float(_one(convergence, where, metric="qe_cpu_time_s", ranks=1,
                            system=f"{program} {job['system']}")["value"]) / n_k / to_reference
        for program in ("pw.x", "ph.x")
    }

    scaling = _records(results_dir, "dft_scaling_openblas.json")

    def exponent(program: str, size_range: str) -> float:
        found = [r for r in scaling if r["metric"] == "scaling_exponent" and r["ranks"] == 1
                 and r["size_range"] == size_range and f" {program} " in r["system"]]
        if len(found) != 1:
            raise InputFileError(f"dft_scaling_openblas.json: expected one {program} exponent {size_range} "
                                 f"on 1 rank, found {len(found)}")
        return float(found[0]["value"])

    melt = _records(results_dir, "melt_quench_throughput.json")
    melt_rates = {int(r["n_atoms"]): float(r["value"]) for r in melt
                  if r["metric"] == "atom_steps_per_s" and r["ranks"] == 1}
    md = _records(results_dir, "md_throughput.json")
    md_rates: dict[str, dict[int, float]] = {}
    for backend in ("ase", "lammps"):
        by_size: dict[int, list[float]] = {}
        for r in md:
            if r["metric"] == "atom_steps_per_cpu_s" and r["ranks"] == 1 and r["system"] == f"bornfield-{backend}":
                by_size.setdefault(int(r["n_atoms"]), []).append(float(r["value"]))
        md_rates[backend] = {n: float(np.mean(v)) for n, v in sorted(by_size.items())}
    with_baseline = _records(results_dir, "md_throughput_baseline.json")
    slowdown = {}
    for backend in ("ase", "lammps"):
        def rates(system: str, b=backend) -> list[float]:
            return [float(r["value"]) for r in with_baseline if r["metric"] == "atom_steps_per_cpu_s"
                    and r["ranks"] == 1 and r["system"] == system.format(b)]
        plain, pedone = rates("bornfield-{}"), rates("bornfield-pedone10-{}")
        if not plain or not pedone:
            raise InputFileError(f"md_throughput_baseline.json: no 1-rank bornfield-{backend} and "
                                 f"bornfield-pedone10-{backend} records for the cost model")
        slowdown[backend] = float(np.mean(plain) / np.mean(pedone))
    shipped = _records(results_dir, "md_throughput_model_set.json")
    model_set_slowdown = {}
    for backend in ("ase", "lammps"):
        found = [r for r in shipped if r["metric"] == "atom_steps_per_cpu_s" and r["system"] == f"bornfield-shipped-{backend}"]
        if not found or not md_rates[backend]:
            raise InputFileError(f"md_throughput_model_set.json: no bornfield-shipped-{backend} atom_steps_per_cpu_s "
                                 "record for the cost model")
        model_set_slowdown[backend] = float(np.mean([_log_interpolate(md_rates[backend], int(r["n_atoms"])) / float(r["value"])
                                                     for r in found]))
    train = _records(results_dir, "train_speed.json")
    train_costs = {kind: float(_one(train, "train_speed.json", metric="train_cpu_s_per_atom_epoch",
                                    system=f"bornfield-{kind}")["value"]) for kind in ("potential", "born")}
    for name, table in [("melt_quench_throughput.json", melt_rates), *md_rates.items()]:
        if not table:
            raise InputFileError(f"{name}: no 1-rank throughput records for the cost model")
    return CostModel(
        scf_core_s_per_kpoint=per_kpoint["pw.x"],
        scf_size_exponent=exponent("pw.x", "16-32"),
        scf_size_exponent_large=exponent("pw.x", "32-64"),
        dfpt_core_s_per_kpoint=per_kpoint["ph.x"],
        dfpt_size_exponent=exponent("ph.x", "16-32"),
        dfpt_size_exponent_large=exponent("ph.x", "32-64"),
        cutoff_exponent=cutoff_exponent,
        melt_quench_atom_steps_per_core_s=melt_rates,
        md_atom_steps_per_core_s=md_rates,
        md_baseline_slowdown=slowdown,
        md_model_set_slowdown=model_set_slowdown,
        train_core_s_per_atom_epoch=train_costs,
        sources={
            "dft": f"dft_convergence.json ({job['system']}, scf_ec<E>_k223), dft_scaling_openblas.json",
            "melt_quench": "melt_quench_throughput.json", "md": "md_throughput.json",
            "md_baseline": "md_throughput_baseline.json (bornfield-<backend> vs bornfield-pedone10-<backend>: "
                           "Pedone baseline at its default 10 Å cutoff)",
            "md_model_set": "md_throughput_model_set.json (bornfield-shipped-<backend>: the shipped model set, as the "
                            "MD runs it, against md_throughput.json's bornfield-<backend> at the same size)",
            "train": "train_speed.json",
        },
    )


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

    cost = cost or CostModel.load()
    scale = (settings.ecutwfc_Ry / CUTOFF_REFERENCE_RY) ** cost.cutoff_exponent
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

    cost = cost or CostModel.load()
    rows = []
    structures = config["structures"]
    amorphous = structures["amorphous"]
    steps = (amorphous["melt_time_ps"] + (amorphous["melt_temperature_K"] - amorphous["final_temperature_K"])
             / amorphous["quench_rate_K_per_ps"] + amorphous["anneal_time_ps"]) * 1000.0 / amorphous["timestep_fs"]
    cells = [(amorphous["dft_cells"]["n_atoms"], amorphous["dft_cells"]["seeds"])]
    if "amorphous" in structures["phases"]:
        cells.append((amorphous["md_cells"]["n_atoms"], amorphous["md_cells"]["seeds"]))
    atom_steps = sum(n * seeds * steps for n, seeds in cells)
    melt_s = sum(n * seeds * steps / cost.melt_quench_rate(n) for n, seeds in cells)
    rows.append({"stage": "structures (melt-quench)", "units": f"{atom_steps:.3g} atom-steps",
                 "core_hours": melt_s / 3600})

    if config["md"]["models"]:  # a model set drives the MD: nothing is labelled or trained
        return rows + _md_rows(config, cost)

    dft = config["dft"]
    settings = DFTSettings.from_section(dft)
    all_candidates = dft_candidate_cells(config)
    candidates = all_candidates
    if dft["max_structures"] is not None:
        candidates = candidates[: dft["max_structures"]]
    al = config["train"]["active_learning"]
    from_ledger = config["dataset"]["source"] == "ledger"  # labels come from the ledger: no DFT in the campaign
    if from_ledger:
        from bornfield.ledger.store import Ledger
        from bornfield.structures.io import read_structures

        ledger = Ledger(dft["ledger"])
        candidates = all_candidates = [(None, len(read_structures(ledger.entries_dir / i / "entry.extxyz",
                                                                  require_info=False)[0]), None)
                                       for i in ledger.dft_ids()]
    n_selected = max(al["generations"] - 1, 0) * al["select_per_generation"]
    max_atoms = al["exploration"]["max_atoms"]
    explorable = [c for c in all_candidates if max_atoms is None or c[1] <= max_atoms]
    if n_selected and not explorable:
        raise ConfigError(f"train.active_learning.exploration.max_atoms = {max_atoms}: no DFT candidate is that small")
    # selected snapshots: as large on average as the cells exploration starts from
    jobs = candidates + [explorable[k % len(explorable)] for k in range(n_selected)]
    scf_s = ph_s = 0.0
    for _, n_atoms, cell in ([] if from_ledger else jobs):
        job_scf, job_ph = dft_job_core_seconds(n_atoms, cell, settings, cost)
        scf_s += job_scf
        ph_s += job_ph
    n_atoms_total = sum(j[1] for j in jobs)
    if from_ledger:
        what = f"none: {len(jobs)} ledger entries ({n_atoms_total} atoms) at {dft['ledger']}"
        rows.append({"stage": "dft (pw.x SCF)", "units": what, "core_hours": 0.0})
        rows.append({"stage": "dft (ph.x DFPT Born charges)", "units": what, "core_hours": 0.0})
    else:
        rows.append({"stage": "dft (pw.x SCF)", "units": f"{len(jobs)} jobs, {n_atoms_total} atoms",
                     "core_hours": scf_s / 3600})
        rows.append({"stage": "dft (ph.x DFPT Born charges)", "units": f"{len(jobs) if settings.born_charges else 0} jobs",
                     "core_hours": ph_s / 3600})

    train = config["train"]
    generations = max(al["generations"], 1)
    train_s = 0.0
    for g in range(generations):
        labelled_atoms = sum(j[1] for j in jobs[: len(candidates) + g * al["select_per_generation"]])
        # the baseline (invariant features, one row of Z) is charged at the Born model's cost: an upper bound
        blocks = [("potential", "potential"), ("born", "born")] + ([("baseline", "born")] if train["baseline"]["enabled"] else [])
        for block, measured in blocks:
            epochs = train[block]["max_epochs"] + (train[block]["stage_two"]["epochs"] if block == "potential" else 0)
            train_s += (train[block]["committee"] * epochs * labelled_atoms
                        * cost.train_core_s_per_atom_epoch[measured])
    rows.append({"stage": "train (committees, upper bound: max_epochs)", "units": f"{generations} generation(s)",
                 "core_hours": train_s / 3600})
    pretrain = train["potential"]["pretrain"]
    if pretrain["dataset"]:
        from bornfield.structures.io import read_structures

        pretrain_atoms = sum(len(a) for a in read_structures(pretrain["dataset"], require_info=False))
        rows.append({"stage": "pre-train potentials (upper bound: max_epochs)",
                     "units": f"{pretrain_atoms} atoms x {pretrain['max_epochs']} epochs x {train['potential']['committee']}",
                     "core_hours": train["potential"]["committee"] * pretrain["max_epochs"] * pretrain_atoms
                     * cost.train_core_s_per_atom_epoch["potential"] / 3600})

    exploration = al["exploration"]
    n_traj = min(len(explorable), exploration["max_structures"]) * len(exploration["temperatures_K"]) * len(exploration["fields_V_per_A"])
    mean_atoms = float(np.mean([c[1] for c in explorable])) if explorable else 0.0
    explore_steps = max(al["generations"] - 1, 0) * n_traj * exploration["steps"] * mean_atoms
    explore_s = (explore_steps / cost.md_rate(max(int(mean_atoms), 1), "ase") * train["potential"]["committee"]
                 if explorable else 0.0)
    rows.append({"stage": "active-learning exploration MD", "units": f"{explore_steps:.3g} atom-steps x committee",
                 "core_hours": explore_s / 3600})

    return rows + _md_rows(config, cost)


def _potential_baseline(config: dict) -> str:
    """The physical baseline of the potentials the MD uses: the model set's, else train.potential.baseline."""
    models = config["md"]["models"]
    if not models:  # a fitted Pedone baseline costs what the published one does (same form and cutoff)
        return {"pedone_fitted": "pedone"}.get(config["train"]["potential"]["baseline"],
                                                config["train"]["potential"]["baseline"])
    from bornfield.models.baseline import NAME as PEDONE

    manifest = json.loads((Path(models) / "manifest.json").read_text(encoding="utf-8"))
    first = manifest["members"]["potential"][0]["hyperparameters"].get("baseline")
    if first is None:
        return "none"
    if first["name"] != PEDONE:
        raise ConfigError(f"md.models = {models}: potential baseline {first['name']!r} has no measured MD cost")
    return "pedone"


def _md_rows(config: dict, cost: CostModel) -> list[dict]:
    """Exploration-free field MD of every condition and replica."""
    from bornfield.md.conditions import condition_production_steps, condition_work, expand_conditions

    structures, amorphous = config["structures"], config["structures"]["amorphous"]
    md = config["md"]
    baseline = _potential_baseline(config)
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
    steps = {c.name: md["equilibration_steps"] + condition_production_steps(md, c) for c in conditions}
    model_set = bool(md["models"])
    md_s = sum(condition_work(md, c, md_atoms[c.phase])
               / cost.md_rate(md_atoms[c.phase], md["backend"], baseline, model_set) for c in conditions)
    lengths = sorted(set(steps.values()))
    length_text = f"{lengths[0]} steps" if len(lengths) == 1 else f"{lengths[0]}-{lengths[-1]} steps"
    return [{"stage": "field MD (all conditions x replicas)",
             "units": f"{len(conditions)} conditions, {sum(c.replicas for c in conditions)} replicas, {length_text}, "
                      f"potential baseline {baseline}" + (f", model set {md['models']}" if model_set else ""),
             "core_hours": md_s / 3600}]


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
        description="Core-hours per stage of a campaign config, from the costs measured on this project's "
        "benchmark machine (2 cores, no GPU); a dry-run sizing before submitting a campaign.",
    )
    parser.add_argument("--config", required=True, help="campaign config (YAML)")
    parser.add_argument("--cores", type=int, default=2, help="cores of the machine for the wall-time column")
    parser.add_argument("--speed", type=float, default=1.0, help="relative core speed (2 = twice as fast as the benchmark machine)")
    parser.add_argument("--report-json", type=Path, help="also write the rows (+ cost model) as JSON here (default: not written)")
    parser.add_argument("--cost-model", type=Path,
                        help="cost-model JSON (default: the shipped one, derived from this project's benchmark records)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.speed <= 0 or args.cores < 1:
        raise ConfigError(f"--speed must be > 0 and --cores >= 1 (got {args.speed}, {args.cores})")
    config = load_config(args.config)
    cost = CostModel.load(args.cost_model or COST_FILE)
    rows = estimate(config, cost)
    for row in rows:
        row["core_hours"] /= args.speed
    print(format_table(rows, args.cores))
    if args.report_json:
        atomic.write_json(args.report_json, {"config": str(args.config), "rows": rows, "cost_model": cost.to_dict(),
                                      "speed": args.speed})
    return 0
