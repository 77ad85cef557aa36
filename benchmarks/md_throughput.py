"""Field-MD throughput: atom-steps/s vs cell size, backends, ranks; replica weak scaling.

Full field MD = NN potential forces + equivariant NN Born charges refreshed every
step + field force Zᵀ E + Bussi thermostat, for beta-Li3PO4 supercells
(128 … 8,192 atoms) with bornfield model files (random initialisation with the
demo config's hyperparameters: cutoff 5 Å, 8 channels, hidden 64; the cost of a
trained model is the same). One torch thread per rank.

Measured points (each in a fresh process, timed after 3 warm-up steps):

* ``bornfield-ase``: ASE backend, 1 rank;
* ``bornfield-lammps``: LAMMPS backend (fix external, domain decomposition), 1 and 2 ranks;
* replica weak scaling (``bornfield-ase-replicas``; ``--replica-backends ase,lammps`` adds
  ``bornfield-lammps-replicas``): R replicas on R ranks, one per rank;
* peak resident memory per rank (``max_rss_MB_per_rank``);
* CPU time summed over ranks (``atom_steps_per_cpu_s``): robust to other jobs on a shared machine.

``--before-src DIR`` also measures an older checkout of ``src/`` (``git archive <commit> src``)
side by side in the same run (systems ``bornfield-before-*``), interleaved point by point;
``--baseline-cutoffs 8 10`` also measures, interleaved, the same potential with the physical
baseline (Pedone 2006 + DSF Coulomb, ``train.potential.baseline: pedone``, alpha ``--baseline-alpha``)
at each cutoff (systems ``bornfield-pedone<rc>-*``); ``--backends ase,lammps1`` limits the backends;
``--model-set models/li3po4`` also measures the shipped model files as the MD runs them
(systems ``bornfield-shipped-*``; in LAMMPS the baseline is LAMMPS pair styles, and
with ``--before-src`` also measured with the older tree (``bornfield-shipped-before-*``);
``--compare-baseline-in-torch`` adds ``bornfield-shipped-torchbaseline-lammps``, the baseline in
torch as before ``md.lammps.baseline_in_lammps``), and ``--other-born NAME FILE`` (repeatable) the set's
potential_0 with another Born model file (systems ``bornfield-shipped-NAME-*``, e.g. a polar Born
model), ``--other-potential NAME FILE`` (repeatable) the set's born_0 with another potential file
(same system names, e.g. the potential of an earlier set); backend ``ase2t`` is the ASE backend with 2 torch
threads (system suffix ``-2threads``); ``--repeats N`` measures every point N times (interleaved rounds), ``--no-replicas`` skips the
weak scaling, ``--note TEXT`` starts every record's notes, and ``--append`` keeps the records
already in the JSON file (the new ones are added after them).

Usage::

    .venv/bin/python benchmarks/md_throughput.py [--sizes 128 1024 8192] [--steps 10]

Writes ``benchmarks/results/md_throughput.json`` (DESIGN.md records) and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bornfield.atomic import write_json

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NAME = "md_throughput"
BIN = Path(sys.executable).parent
MACHINE = "2 cores, no GPU (shared with other jobs)"


def beta_supercell(n_atoms: int):
    from bornfield.structures.crystals import build_crystal

    unit = build_crystal("beta")
    cells = n_atoms // len(unit)
    reps = {8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
            256: (4, 8, 8), 512: (8, 8, 8)}[cells]
    atoms = unit.repeat(reps)
    atoms.rattle(0.02, seed=1)
    return atoms


def write_models(directory: Path, baseline_cutoff: float | None = None, alpha: float = 0.2) -> tuple[Path, Path]:
    """Random demo-architecture model files; ``baseline_cutoff`` (Å): the potential gets the Pedone baseline."""
    from bornfield.models import create_random_model_file
    from bornfield.models.baseline import pedone_baseline

    common = {"channels": 8, "hidden": 64}
    extra = {} if baseline_cutoff is None else {"baseline": pedone_baseline(baseline_cutoff, alpha)}
    name = "potential.pt" if baseline_cutoff is None else f"potential_pedone{baseline_cutoff:g}.pt"
    potential = create_random_model_file("potential", ["Li", "P", "O"], 5.0, directory / name,
                                         seed=1, **common, **extra)
    born = create_random_model_file("born", ["Li", "P", "O"], 5.0, directory / "born.pt", seed=2, **common)
    return potential, born


def worker(args) -> None:
    """One measurement (possibly under mpiexec); rank 0 prints a JSON line."""
    import torch
    from mpi4py import MPI

    torch.set_num_threads(args.torch_threads)
    from bornfield.config import validate_section
    from bornfield.md.fields import FieldSchedule
    from bornfield.models import load_born, load_potential

    comm = MPI.COMM_WORLD
    settings = validate_section({
        "backend": args.backend, "ensemble": "bussi", "equilibration_steps": 0,
        "production_steps": 10**6, "safety": {"max_temperature_factor": 1e3},
        "born_refresh_interval": args.born_refresh_interval,
        # (only when asked: a --before-src tree may predate the key)
        **({"lammps": {"baseline_in_lammps": False}} if args.baseline_in_torch else {}),
    }, "md")
    files = args.potential.split(",")  # several: their committee mean drives the MD
    potential, born = load_potential(files if len(files) > 1 else files[0]), load_born(args.born)
    committee = [load_potential(f) for f in args.uncertainty_members.split(",")] if args.uncertainty_members else []
    atoms = beta_supercell(args.n_atoms)
    schedule = FieldSchedule((0.1, 0.0, 0.0), field_on_step=0, timestep_fs=1.0)
    if args.replicas > 1:  # weak scaling: one replica per rank
        group = comm.Split(color=comm.Get_rank(), key=0)
    else:
        group = comm
    seed = 100 + (comm.Get_rank() if args.replicas > 1 else 0)
    if args.backend == "ase":
        from bornfield.md.ase_backend import ASEBackend

        backend = ASEBackend(atoms, potential, born, settings, schedule, 600.0, seed, committee=committee)
    else:
        from bornfield.md.lammps_backend import LammpsBackend

        backend = LammpsBackend(atoms, potential, born, settings, schedule, 600.0, seed, committee=committee,
                                comm=group)
    backend.advance(3)
    comm.Barrier()
    start = time.perf_counter()
    cpu_start = time.process_time()
    backend.advance(args.steps)
    cpu = time.process_time() - cpu_start
    comm.Barrier()
    elapsed = time.perf_counter() - start
    cpu_total = comm.allreduce(cpu, op=MPI.SUM)
    check_s = None
    if committee:  # one committee force-uncertainty check (md.safety.uncertainty_check_interval), after the steps
        comm.Barrier()
        check_start = time.perf_counter()
        backend.committee_force_std()
        comm.Barrier()
        check_s = time.perf_counter() - check_start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    rss_max = comm.allreduce(rss, op=MPI.MAX)
    backend.close()
    if comm.Get_rank() == 0:
        total_atoms = args.n_atoms * max(args.replicas, 1)
        print("RESULT " + json.dumps({"elapsed_s": elapsed, "atom_steps_per_s": total_atoms * args.steps / elapsed,
                                      "cpu_s": cpu_total, "atom_steps_per_cpu_s": total_atoms * args.steps / cpu_total,
                                      "max_rss_MB_per_rank": rss_max, "uncertainty_check_s": check_s}))


def measure(potential: Path | list[Path], born: Path, backend: str, n_atoms: int, ranks: int, steps: int,
            replicas: int = 1, src: str | None = None, threads: int = 1, baseline_in_torch: bool = False,
            born_refresh_interval: int = 1, uncertainty_members: list[Path] | None = None) -> dict:
    """One fresh worker process; ``potential`` a file, or a list of files whose committee mean drives the MD;
    ``uncertainty_members``: further potentials whose force-uncertainty check is timed once after the steps."""
    potential = ",".join(map(str, potential)) if isinstance(potential, list) else str(potential)
    command = [str(sys.executable), __file__, "--worker", "--backend", backend, "--n-atoms", str(n_atoms),
               "--steps", str(steps), "--potential", potential, "--born", str(born),
               "--replicas", str(replicas), "--torch-threads", str(threads),
               "--born-refresh-interval", str(born_refresh_interval)]
    command += ["--baseline-in-torch"] if baseline_in_torch else []
    command += ["--uncertainty-members", ",".join(map(str, uncertainty_members))] if uncertainty_members else []
    if ranks > 1:
        command = [str(BIN / "mpiexec"), "-n", str(ranks), *command]
    return run_worker(command, src, timeout=7200, threads=threads)


def run_worker(command: list[str], src: str | None, timeout: float, threads: int = 1) -> dict:
    """Run a benchmark worker in a fresh process with ``threads`` OpenMP/MKL threads; the JSON of its ``RESULT`` line.

    ``src``: an older bornfield source tree put first on PYTHONPATH (it shadows the installed,
    editable one), for before/after records in one run.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if src is not None:
        env["PYTHONPATH"] = str(Path(src).resolve())
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    for line in result.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{command} failed:\n{result.stderr[-3000:]}")


def repeat_of(r: dict) -> str:
    """The ``; repeat k of N`` tail of a record's notes ('' without repeats)."""
    return "; repeat" + r["notes"].split("; repeat")[-1] if "; repeat" in r["notes"] else ""


def record(metric, value, unit, system, n_atoms, ranks, notes="", threads=1) -> dict:
    return {"metric": metric, "value": float(value), "unit": unit, "system": system, "n_atoms": n_atoms,
            "ranks": ranks, "threads": threads, "baseline": False, "date": datetime.date.today().isoformat(),
            "machine": MACHINE, "notes": notes}


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    measured = sorted({(r["system"], r["ranks"]) for r in records if r["metric"] == "atom_steps_per_s"
                       and not r.get("baseline") and not r["system"].endswith("-replicas")})
    for system, ranks in measured:
        marker = "o" if system.endswith("-ase") else ("s" if ranks == 1 else "^")
        best: dict[int, float] = {}  # other jobs only slow a run down: the best run per size
        for r in records:
            if r["metric"] == "atom_steps_per_s" and r["system"] == system and r["ranks"] == ranks:
                best[r["n_atoms"]] = max(best.get(r["n_atoms"], 0.0), r["value"])
        points = sorted(best.items())
        if points:
            x, y = zip(*points)
            ax.plot(x, y, marker=marker, label=f"{system}, {ranks} rank{'s' if ranks > 1 else ''}")
    baseline = [r for r in records if r.get("baseline")]
    baseline_file = RESULTS / "md_uip_baseline.json"
    elsewhere = ""
    if not baseline and baseline_file.exists():
        baseline = json.loads(baseline_file.read_text())
        elsewhere = f";\nseparate run: {baseline_file.name}"
    if baseline:  # side by side: pretrained universal potential, potential only
        points = sorted((r["n_atoms"], r["value"]) for r in baseline if r["metric"] == "atom_steps_per_s")
        if points:
            x, y = zip(*points)
            ax.plot(x, y, "x:", color="k", label=f"{baseline[0]['system']} (baseline,\nno Born/field{elsewhere})")
    ax.axhline(10_000, color="grey", ls="--", lw=1, label="target 10,000")
    ax.set(xscale="log", yscale="log", xlabel="atoms", ylabel="atom-steps / s (best run per point)",
           title="full field MD (NNP + NN Born charges every step)")
    ax.legend(fontsize=7, loc="center left")
    ax = axes[1]
    replicas: dict[tuple[str, int], float] = {}
    for r in records:
        if r["system"].endswith("-replicas"):
            key = (r["system"].removeprefix("bornfield-").removesuffix("-replicas"), r["ranks"])
            replicas[key] = max(replicas.get(key, 0.0), r["value"])
    points = sorted(replicas.items())
    if points:
        labels, y = zip(*((f"{name.replace('-', chr(10))}\n{ranks}" if name else str(ranks), value)
                          for (name, ranks), value in points))
        ax.bar(labels, y)
        ax.tick_params(axis="x", labelsize=7)
        ax.set(xlabel="replicas (= ranks)", ylabel="total atom-steps / s", title="replica weak scaling, one rank each")
    else:  # side by side per system and ranks: median over repeats, CPU time (robust to other jobs)
        labels, values = [], []
        for system, ranks in measured:
            per_cpu = [r["value"] for r in records if r["metric"] == "atom_steps_per_cpu_s"
                       and r["system"] == system and r["ranks"] == ranks]
            if per_cpu:
                name = system.removeprefix("bornfield-").replace("-", "\n")
                labels.append(f"{name}\n{ranks} rank{'s' if ranks > 1 else ''}")
                values.append(float(np.median(per_cpu)))
        ax.bar(range(len(values)), values)
        ax.set_xticks(range(len(values)), labels, fontsize=7)
        ax.set(ylabel="atom-steps / CPU-s (median over repeats)", title="CPU-time throughput side by side")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="ase")
    parser.add_argument("--n-atoms", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--potential")
    parser.add_argument("--born")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 1024, 8192])
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON")
    parser.add_argument("--before-src", default=None, help="an older bornfield src/ tree to measure side by side")
    parser.add_argument("--repeats", type=int, default=1, help="measure every point this many times (interleaved)")
    parser.add_argument("--no-replicas", action="store_true", help="skip the replica weak-scaling points")
    parser.add_argument("--replica-backends", default="ase",
                        help="comma list of the backends (ase, lammps: one rank each) of the replica weak scaling")
    parser.add_argument("--note", default="", help="text put at the start of every record's notes")
    parser.add_argument("--append", action="store_true", help="keep the records already in the JSON file")
    parser.add_argument("--baseline-cutoffs", type=float, nargs="*", default=[],
                        help="also measure the potential with the Pedone baseline at these cutoffs (Å)")
    parser.add_argument("--baseline-alpha", type=float, default=0.2, help="DSF damping of the baseline (1/Å)")
    parser.add_argument("--backends", default="ase,lammps1,lammps2",
                        help="comma list of ase, ase2t (2 torch threads), lammps1, lammps2 (LAMMPS with 1 or 2 ranks)")
    parser.add_argument("--torch-threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--born-refresh-interval", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--baseline-in-torch", action="store_true",
                        help="worker: md.lammps.baseline_in_lammps false")
    parser.add_argument("--compare-baseline-in-torch", action="store_true",
                        help="with --model-set: also the shipped set with its baseline in torch (LAMMPS backends)")
    parser.add_argument("--other-born", nargs=2, action="append", default=[], metavar=("NAME", "FILE"),
                        help="with --model-set: also its potential_0.pt with this Born model file "
                             "(system bornfield-shipped-NAME-*)")
    parser.add_argument("--other-potential", nargs=2, action="append", default=[], metavar=("NAME", "FILE"),
                        help="with --model-set: also its born_0.pt with this potential file, or the committee mean "
                             "of a comma list of files (system bornfield-shipped-NAME-*; with --before-src also "
                             "bornfield-shipped-NAME-before-*)")
    parser.add_argument("--uncertainty-members", default=None,
                        help="comma list of potentials: with --model-set, time one committee force-uncertainty "
                             "check (these members beside the MD's) after each measurement's steps")
    parser.add_argument("--no-random-models", action="store_true",
                        help="skip the random demo models (measure only --model-set and its variants)")
    parser.add_argument("--model-set", default=None,
                        help="also measure this model set's potential_0.pt + born_0.pt (systems bornfield-shipped-*)")
    parser.add_argument("--output", default=None, help=f"JSON file (default benchmarks/results/{NAME}.json)")
    parser.add_argument("--with-uip", action="store_true",
                        help="also measure the CHGNet baseline (benchmarks/.venv-uip) at sizes <= 1,024 in the same run")
    args = parser.parse_args()
    if args.note.strip():
        args.note = args.note.rstrip() + (" " if args.note.rstrip().endswith((";", ".")) else "; ")
    out = Path(args.output) if args.output else RESULTS / f"{NAME}.json"
    if args.replot:
        plot(json.loads(out.read_text()), out.with_suffix(".png"))
        return
    if args.worker:
        worker(args)
        return
    RESULTS.mkdir(exist_ok=True)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        potential, born = write_models(Path(tmp))
        models = {None: (potential, born)}
        for cutoff in args.baseline_cutoffs:
            models[cutoff] = (write_models(Path(tmp), cutoff, args.baseline_alpha)[0], born)
        if args.model_set:
            shipped = Path(args.model_set)
            models["shipped"] = (shipped / "potential_0.pt", shipped / "born_0.pt")
            missing = [str(f) for f in models["shipped"] if not f.exists()]
            if missing:
                raise SystemExit(f"--model-set {shipped}: missing {missing}")
        uncertainty_members = ([Path(f) for f in args.uncertainty_members.split(",")]
                               if args.uncertainty_members else None)
        others = {}  # NAME: what replaces the set's file
        for option, kind, pairs in (("--other-born", "Born model", args.other_born),
                                    ("--other-potential", "potential", args.other_potential)):
            for name, file in pairs:
                # a comma list of potentials: their committee mean drives the MD (md.committee_mean_forces)
                files = [Path(f) for f in file.split(",")] if kind == "potential" else [Path(file)]
                if not args.model_set or not all(f.is_file() for f in files) or f"shipped-{name}" in models:
                    raise SystemExit(f"{option} {name} {file}: needs --model-set, existing {kind} file(s) "
                                     "and a name of its own")
                shipped_potential, shipped_born = models["shipped"]
                models[f"shipped-{name}"] = ((shipped_potential, files[0]) if kind == "Born model"
                                             else (files if len(files) > 1 else files[0], shipped_born))
                others[name] = (f"model set {args.model_set} potential_0 with Born model {file}; " if kind == "Born model"
                                else f"model set {args.model_set} born_0 with potential {file}"
                                + (" (their committee mean drives the MD); " if len(files) > 1 else "; "))
        backends = {"ase": ("ase", 1), "ase2t": ("ase", 1), "lammps1": ("lammps", 1), "lammps2": ("lammps", 2)}
        threads_of = {"ase2t": 2}
        configurations = [(*backends[b], threads_of.get(b, 1)) for b in args.backends.split(",")]
        for n_atoms in args.sizes:
            steps = max(3, min(args.steps * 1024 // n_atoms, 50))
            trees = [] if args.no_random_models else (
                [("bornfield", None, None)] + ([("bornfield-before", args.before_src, None)] if args.before_src else []))
            trees += [(f"bornfield-pedone{cutoff:g}", None, cutoff) for cutoff in args.baseline_cutoffs]
            trees += [("bornfield-shipped", None, "shipped")] if args.model_set else []
            trees += [("bornfield-shipped-before", args.before_src, "shipped")] if args.model_set and args.before_src else []
            trees += [(f"bornfield-shipped-{name}", None, f"shipped-{name}") for name in others]
            trees += [(f"bornfield-shipped-{name}-before", args.before_src, f"shipped-{name}") for name in others
                      if args.before_src]
            if args.model_set and args.compare_baseline_in_torch:
                trees += [("bornfield-shipped-torchbaseline", None, "shipped")]
            points = [(c, t, k) for k in range(args.repeats) for c in configurations for t in trees
                      if not (t[0].endswith("torchbaseline") and c[0] == "ase")]
            for (backend, ranks, threads), (prefix, src, cutoff), repeat in points:
                load = os.getloadavg()[0]
                members = uncertainty_members if str(cutoff).startswith("shipped") else None
                result = measure(*models[cutoff], backend, n_atoms, ranks, steps, src=src, threads=threads,
                                 baseline_in_torch=prefix.endswith("torchbaseline"), uncertainty_members=members)
                system = f"{prefix}-{backend}" + (f"-{threads}threads" if threads > 1 else "")
                if cutoff is None:
                    model_note = ""
                elif str(cutoff).startswith("shipped-"):
                    model_note = others[cutoff.removeprefix("shipped-")]
                elif cutoff == "shipped":
                    where = ("baseline in torch" if prefix.endswith("torchbaseline")
                             else "baseline as LAMMPS pair styles" if backend == "lammps" else "baseline in torch")
                    model_note = f"model set {args.model_set} (potential_0 + born_0, as the MD runs it; {where}); "
                else:
                    model_note = f"potential + Pedone baseline (rc {cutoff:g} Å, DSF alpha {args.baseline_alpha:g}/Å); "
                notes = (f"{args.note}{model_note}{threads} torch thread(s) per rank; {steps} timed steps, Bussi NVT 600 K, "
                         "E = 0.1 V/Å, beta-Li3PO4; wall clock; "
                         f"1-min load average {load:.1f} before the run"
                         + (f"; repeat {repeat + 1} of {args.repeats}" if args.repeats > 1 else ""))
                records.append(record("atom_steps_per_s", result["atom_steps_per_s"], "atom-steps/s", system,
                                      n_atoms, ranks, notes, threads))
                records.append(record("atom_steps_per_cpu_s", result["atom_steps_per_cpu_s"], "atom-steps/CPU-s",
                                      system, n_atoms, ranks, notes.replace("wall clock", "CPU time summed over ranks"),
                                      threads))
                records.append(record("max_rss_MB_per_rank", result["max_rss_MB_per_rank"], "MB", system,
                                      n_atoms, ranks, notes, threads))
                check = result.get("uncertainty_check_s")
                if check is not None:
                    records.append(record("uncertainty_check_ms", 1e3 * check, "ms", system,
                                          n_atoms, ranks, f"one committee force-uncertainty check with "
                                          f"{args.uncertainty_members} beside the MD's potential; {notes}", threads))
                print(system, n_atoms, ranks, f"{result['atom_steps_per_s']:.0f} atom-steps/s",
                      "" if check is None else f"check {1e3 * check:.0f} ms",
                      f"{result['atom_steps_per_cpu_s']:.0f} atom-steps/CPU-s",
                      f"{result['max_rss_MB_per_rank']:.0f} MB/rank, load {load:.1f}", flush=True)
            if args.with_uip and n_atoms <= 1024:
                from md_uip_baseline import measure_chgnet

                load = os.getloadavg()[0]
                uip_steps = max(3, args.steps * 128 // n_atoms)
                value = measure_chgnet(n_atoms, uip_steps)
                records.append({**record("atom_steps_per_s", value, "atom-steps/s", "chgnet-0.4.2-ase (baseline)", n_atoms, 1,
                                         f"pretrained CHGNet, ASE Bussi 600 K, {uip_steps} timed steps, potential only "
                                         f"(no Born charges / field); 1-min load average {load:.1f} before the run"),
                                "baseline": True})
                print("chgnet", n_atoms, f"{value:.1f} atom-steps/s", flush=True)
        weak_size = 1024
        replica_backends = [b for b in args.replica_backends.split(",") if b]
        if any(b not in ("ase", "lammps") for b in replica_backends):
            raise SystemExit(f"--replica-backends {args.replica_backends!r}: expected a comma list of ase, lammps")
        weak_models = [] if args.no_random_models else [(f"bornfield-{b}-replicas", None, b) for b in replica_backends]
        weak_models += [(f"bornfield-shipped-{b}-replicas", "shipped", b) for b in replica_backends if args.model_set]
        for replicas in () if args.no_replicas else (1, 2):
            for system, key, backend in weak_models:
                steps = max(3, args.steps)
                load = os.getloadavg()[0]
                result = measure(*models[key], backend, weak_size, replicas, steps, replicas=replicas)
                what = f"model set {args.model_set} (potential_0 + born_0); " if key else ""
                records.append(record("atom_steps_per_s", result["atom_steps_per_s"], "atom-steps/s",
                                      system, weak_size, replicas,
                                      f"{args.note}{what}{replicas} replicas of {weak_size} atoms, one per rank; "
                                      f"total throughput; 1-min load average {load:.1f} before the run"))
                print(system, replicas, f"{result['atom_steps_per_s']:.0f} atom-steps/s", flush=True)
    for r in list(records):
        if (r["metric"] in ("atom_steps_per_s", "atom_steps_per_cpu_s")
                and r["system"] in ("bornfield-lammps", "bornfield-before-lammps") and r["ranks"] == 2
                and any(q["system"] == r["system"] and q["ranks"] == 1 for q in records)):
            one = [q for q in records if q["metric"] == r["metric"] and q["system"] == r["system"]
                   and q["ranks"] == 1 and q["n_atoms"] == r["n_atoms"] and repeat_of(q) == repeat_of(r)][0]
            if r["metric"] == "atom_steps_per_s":
                records.append(record("speedup_1_to_2_ranks", r["value"] / one["value"], "x", r["system"],
                                      r["n_atoms"], 2, f"{args.note}LAMMPS backend, wall-clock atom-steps/s ratio "
                                      f"2 ranks / 1 rank{repeat_of(r)}"))
            else:
                records.append(record("parallel_efficiency_cpu", r["value"] / one["value"], "x", r["system"],
                                      r["n_atoms"], 2, f"{args.note}LAMMPS backend, atom-steps per CPU-s, 2 ranks / "
                                      f"1 rank (1 = no parallel overhead; insensitive to machine load){repeat_of(r)}"))
    if args.append and out.exists():
        records = json.loads(out.read_text()) + records
    write_json(out, records)
    plot(records, out.with_suffix(".png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
