"""Field-MD replicas of one rank: one after the other vs in lockstep with one batched model evaluation per step.

What ``bornfield md run`` (ASE backend, one torch thread) does with the replicas of one rank,
with the shipped model set (``--models``, default ``models/li3po4``): member 0 of the
potential committee (NN on the Pedone baseline, 5 / 10 Å) and ``born_0`` every step
(``md.born_refresh_interval: 1``), F = F_NNP + Zᵀ·E with E = 0.1 V/Å along x, Bussi NVT,
dt 2 fs, neighbour skin 1 Å (the demo's settings), the demo's temperatures (the 63-atom
vacancy cell at 1200 K, the 192-atom amorphous cell at 900 K).

Systems, each point (cell, number of replicas R = 1, 2, 4, 8, system) in a fresh process,
measured interleaved in one run (the two systems of a point back to back, their order swapped
every repeat):

* ``bornfield-sequential``: ``md.batch_replicas: false``, R ASE backends advanced one after
  the other (what a rank does today);
* ``bornfield-batched``: ``md.batch_replicas: true``, R backends advanced at once in R threads
  whose FieldCalculators share one :class:`bornfield.md.batching.BatchEvaluator` (one merged
  batch graph and one model evaluation per step).

The replicas start from the same cell with different seeds; after 5 warm-up steps each,
``--steps`` steps are timed. Records (DESIGN.md format): ``md_replica_step_cpu_ms``, CPU time of
the whole process (``time.process_time``: robust to the other jobs of a shared machine) per
replica-step, and ``md_replica_step_ms`` (wall clock); the notes give the repeat, the neighbour-
list builds and the load average; batched records give the mean batch size. Per point, the
median over repeats (``md_replica_step_cpu_ms_median``) and the speed-up of batching
(``replica_batch_speedup``, sequential / batched median CPU time).

    .venv/bin/python benchmarks/md_replica_batch.py \\
        --cells results/structures/md_cells/beta_vacancy.extxyz results/structures/md_cells/amorphous.extxyz

Writes ``benchmarks/results/md_replica_batch.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
NAME = "md_replica_batch"
MACHINE = "2 cores, no GPU (shared with other jobs)"
SYSTEMS = ("bornfield-sequential", "bornfield-batched")
WARMUP = 5


def temperature_of(n_atoms: int) -> float:
    """The demo's temperature of a cell: amorphous (192 atoms) 900 K, the 64-atom crystal cells 1200 K."""
    return 900.0 if n_atoms >= 128 else 1200.0


def worker(args) -> None:
    """One measurement; prints a RESULT JSON line."""
    import torch

    torch.set_num_threads(1)
    from ase.io import read

    from bornfield.config import validate_section
    from bornfield.md.ase_backend import ASEBackend
    from bornfield.md.batching import BatchEvaluator
    from bornfield.md.fields import FieldSchedule
    from bornfield.models import load_born, load_potential

    models = Path(args.models)
    batched = args.system == "bornfield-batched"
    settings = validate_section({"backend": "ase", "ensemble": "bussi", "timestep_fs": 2.0, "equilibration_steps": 0,
                                 "production_steps": 10**6, "born_refresh_interval": 1, "neighbour_skin_A": 1.0,
                                 "batch_replicas": batched}, "md")
    potential = load_potential(models / "potential_0.pt")
    born = load_born(models / "born_0.pt")
    atoms = read(args.cell)
    schedule = FieldSchedule((0.1, 0.0, 0.0), field_on_step=0, timestep_fs=2.0)
    temperature = temperature_of(len(atoms))
    evaluator = BatchEvaluator() if batched else None
    slots = [evaluator.slot() if batched else None for _ in range(args.replicas)]

    backends: list = [None] * args.replicas

    def make(index: int) -> None:
        backends[index] = ASEBackend(atoms, potential, born, settings, schedule, temperature, seed=100 + index,
                                     evaluator=slots[index])

    def each(function) -> None:
        """``function(index)`` for every replica: in threads (batched) or one after the other."""
        if not batched:
            for index in range(args.replicas):
                function(index)
            return
        threads = [threading.Thread(target=function, args=(index,)) for index in range(args.replicas)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    each(make)
    each(lambda index: backends[index].advance(WARMUP))
    builds = sum(b.calc.graphs.builds for b in backends)
    batches = evaluator.batches if batched else 0
    requests = evaluator.requests if batched else 0
    wall, cpu = time.perf_counter(), time.process_time()
    each(lambda index: backends[index].advance(args.steps))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    replica_steps = args.replicas * args.steps
    result = {"step_ms": 1e3 * wall / replica_steps, "step_cpu_ms": 1e3 * cpu / replica_steps,
              "builds": sum(b.calc.graphs.builds for b in backends) - builds, "n_atoms": len(atoms),
              "temperatures_K": [round(float(b.snapshot(False).temperature_K), 1) for b in backends]}
    if batched:
        result["mean_batch"] = (evaluator.requests - requests) / max(evaluator.batches - batches, 1)
        for slot in slots:
            slot.close()
    print("RESULT " + json.dumps(result))


def measure(cell: str, system: str, replicas: int, steps: int, models: str) -> dict:
    import subprocess

    command = [sys.executable, __file__, "--worker", "--cell", cell, "--system", system,
               "--replicas", str(replicas), "--steps", str(steps), "--models", models]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{command} failed:\n{out.stderr[-3000:]}")


def record(metric, value, unit, system, n_atoms, replicas, notes) -> dict:
    return {"metric": metric, "value": float(value), "unit": unit, "system": system, "n_atoms": int(n_atoms),
            "ranks": 1, "threads": 1, "baseline": False, "date": datetime.date.today().isoformat(),
            "machine": MACHINE, "replicas": int(replicas), "notes": notes}


def medians(records: list[dict]) -> list[dict]:
    """Per point (cell, replicas, system): the median over repeats, and the batched speed-up over sequential.

    Records ``md_replica_step_cpu_ms_median`` (ms) and ``replica_batch_speedup`` (sequential median
    / batched median, CPU time); the per-repeat records stay as measured.
    """
    measured = [r for r in records if r["metric"] == "md_replica_step_cpu_ms"]
    out = []
    for n in sorted({r["n_atoms"] for r in measured}):
        for count in sorted({r["replicas"] for r in measured if r["n_atoms"] == n}):
            median = {}
            for system in SYSTEMS:
                points = [r for r in measured if r["n_atoms"] == n and r["replicas"] == count and r["system"] == system]
                if not points:
                    continue
                median[system] = float(np.median([r["value"] for r in points]))
                notes = (f"median of {len(points)} interleaved repeats of md_replica_step_cpu_ms (range "
                         f"{min(r['value'] for r in points):.2f}-{max(r['value'] for r in points):.2f} ms); "
                         + points[0]["notes"].split("; 1-min load")[0])
                out.append({**points[0], "metric": "md_replica_step_cpu_ms_median", "value": median[system],
                            "repeats": len(points), "notes": notes})
            if len(median) == 2:
                sequential, batched = (median[s] for s in SYSTEMS)
                out.append({**out[-1], "metric": "replica_batch_speedup", "value": sequential / batched, "unit": "1",
                            "system": "bornfield-batched",
                            "notes": f"median CPU ms per replica-step, sequential {sequential:.2f} / batched "
                                     f"{batched:.2f}; " + out[-1]["notes"].split("; ", 1)[1]})
    return out


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["n_atoms"] for r in records})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 4.2), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        replicas = sorted({r["replicas"] for r in records if r["n_atoms"] == n})
        width = 0.38
        for index, system in enumerate(SYSTEMS):
            values, spreads = [], []
            for count in replicas:
                points = [r["value"] for r in records if r["metric"] == "md_replica_step_cpu_ms"
                          and r["system"] == system and r["n_atoms"] == n and r["replicas"] == count]
                values.append(float(np.median(points)) if points else np.nan)
                spreads.append([values[-1] - min(points), max(points) - values[-1]] if points else [0, 0])
            x = np.arange(len(replicas)) + (index - 0.5) * width
            bars = ax.bar(x, values, width, yerr=np.array(spreads).T, capsize=3,
                          label=system.replace("bornfield-", ""))
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        ax.set_xticks(np.arange(len(replicas)), [f"{c} replica{'s' if c > 1 else ''}" for c in replicas])
        ax.set_ylabel("CPU ms per replica-step (median, min-max bars)")
        ax.set_title(f"{n} atoms, {temperature_of(n):.0f} K")
        ax.legend(fontsize=8)
    fig.suptitle("replicas of one rank: one after the other vs lockstep with batched model evaluation\n"
                 "shipped models/li3po4 (potential_0 + born_0 every step), ASE, 1 torch thread", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    parser.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--cells", nargs="+", help="MD start cells (extxyz; the first structure of each)")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4, 8], help="replicas per rank")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per replica (default: 480 replica-steps per point, at least 40)")
    parser.add_argument("--models", default=str(REPO / "models" / "li3po4"), help="model set directory")
    parser.add_argument("--repeats", type=int, default=3, help="measure every point this many times (interleaved)")
    parser.add_argument("--replot", action="store_true",
                        help="only recompute the median records and redraw the PNG from the JSON")
    args = parser.parse_args()
    out = RESULTS / f"{NAME}.json"
    if args.replot:
        records = [r for r in json.loads(out.read_text()) if r["metric"].startswith("md_replica_step")
                   and not r["metric"].endswith("_median")]
        records += medians(records)
        out.write_text(json.dumps(records, indent=1) + "\n")
        plot(records, out.with_suffix(".png"))
        return
    if args.worker:
        args.replicas = args.replicas[0]
        worker(args)
        return
    if not args.cells:
        parser.error("--cells is required")
    records = []
    for repeat in range(args.repeats):
        for cell in args.cells:
            for count in args.replicas:
                steps = args.steps or max(40, 480 // count)
                for system in (SYSTEMS if repeat % 2 == 0 else SYSTEMS[::-1]):  # neither always first
                    load = os.getloadavg()[0]
                    result = measure(cell, system, count, steps, args.models)
                    n = result["n_atoms"]
                    notes = (f"{Path(cell).stem} cell ({n} atoms), {count} replicas x {steps} timed steps after "
                             f"{WARMUP} warm-up steps, Bussi {temperature_of(n):.0f} K, dt 2 fs, E = 0.1 V/Å, skin "
                             f"1 Å, {result['builds']} neighbour-list builds in all; 1-min load average {load:.1f} "
                             f"before the run; repeat {repeat + 1} of {args.repeats}")
                    if "mean_batch" in result:
                        notes += f"; mean batch {result['mean_batch']:.2f} replicas"
                    records += [
                        record("md_replica_step_cpu_ms", result["step_cpu_ms"], "ms", system, n, count,
                               notes + "; CPU time of the process per replica-step"),
                        record("md_replica_step_ms", result["step_ms"], "ms", system, n, count,
                               notes + "; wall clock per replica-step"),
                    ]
                    print(f"{system:22s} {n:4d} atoms x {count} replicas: {result['step_cpu_ms']:6.2f} CPU ms "
                          f"{result['step_ms']:6.2f} wall ms per replica-step (load {load:.1f}, "
                          f"T {result['temperatures_K']})", flush=True)
    records += medians(records)
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(records, indent=1) + "\n")
    plot(records, out.with_suffix(".png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
