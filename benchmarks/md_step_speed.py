"""Field-MD step time with the shipped model set: neighbour list kept between steps vs rebuilt every step.

What ``bornfield md run`` (ASE backend, one torch thread) does per replica, with the shipped
model set ``models/li3po4``: member 0 of the potential committee (NN on top of the Pedone
2006 + DSF Coulomb baseline, 5 Å network / 10 Å baseline cutoff) drives every step, the
equivariant Born model ``born_0`` is evaluated every step (``md.born_refresh_interval: 1``),
F = F_NNP + Zᵀ·E with E = 0.1 V/Å along x, Bussi NVT at 900 K, dt 1 fs; members 1-3 join
member 0 for the committee force uncertainty every ``md.safety.uncertainty_check_interval``
steps (the demo's ``md.committee_size: 4``; timed separately, ``committee_check_ms``). Cells: the demo's MD phases at their
sizes, beta_vacancy (2x2x2 beta-Li3PO4 minus one Li, 127 atoms) and a 192-atom amorphous
cell (the ledger's 64-atom amorphous entry 48d518e0baf26846 tiled 3x1x1, same density as the
demo's melt-quenched cell), and 1,024-atom beta (4x4x4) for the issue's throughput target.

Systems, measured side by side and interleaved point by point in one run, each point in a
fresh process (timed after 5 warm-up steps):

* ``bornfield-skin<s>``: ``md.neighbour_skin_A = s`` (a Verlet list with cutoff + s, rebuilt
  when an atom moved more than s/2); ``bornfield-skin0`` is the fresh list of every step;
* ``bornfield-before`` (``--before-src DIR``): an older ``src/`` tree (``git archive <commit>
  src``), the code before the neighbour-list and baseline work.

Records (DESIGN.md format): ``md_step_ms`` (wall clock) and ``md_step_cpu_ms`` (CPU time of
the process: robust to other jobs on a shared machine) per step, ``committee_check_ms``,
``atom_steps_per_s``; notes give the list builds during the timed steps and the load average.

    .venv/bin/python benchmarks/md_step_speed.py --before-src /tmp/before/src --repeats 3

Writes ``benchmarks/results/md_step_speed.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from md_throughput import run_worker  # same directory

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
NAME = "md_step_speed"
MACHINE = "2 cores, no GPU (shared with other jobs)"
AMORPHOUS_ENTRY = REPO / "data" / "ledger" / "entries" / "48d518e0baf26846" / "entry.extxyz"
CELLS = {"beta_vacancy": 127, "amorphous": 192, "beta": 1024}
STEPS = {"beta_vacancy": 150, "amorphous": 150, "beta": 30}
CHECK_INTERVAL = 100  # md.safety.uncertainty_check_interval of config/config.yaml
COMMITTEE_SIZE = 4  # md.committee_size of config/config.yaml


def build_cell(name: str):
    """The MD start cell ``name`` (see the module docstring)."""
    from ase.io import read

    from bornfield.structures.crystals import build_crystal
    from bornfield.structures.defects import make_li_vacancy

    if name == "beta_vacancy":
        return make_li_vacancy(build_crystal("beta").repeat((2, 2, 2)), seed=0)[0]
    if name == "amorphous":
        return read(AMORPHOUS_ENTRY).repeat((3, 1, 1))
    if name == "beta":
        atoms = build_crystal("beta").repeat((4, 4, 4))
        atoms.rattle(0.02, seed=1)
        return atoms
    raise ValueError(f"unknown cell {name!r} (known: {sorted(CELLS)})")


def worker(args) -> None:
    """One measurement; prints a RESULT JSON line."""
    import torch

    torch.set_num_threads(1)
    from bornfield.config import validate_section
    from bornfield.md.ase_backend import ASEBackend
    from bornfield.md.fields import FieldSchedule
    from bornfield.models import load_born, load_potential

    models = Path(args.models)
    md = {"backend": "ase", "ensemble": "bussi", "timestep_fs": 1.0, "equilibration_steps": 0,
          "production_steps": 10**6, "born_refresh_interval": 1}
    if args.skin is not None:  # an older tree has no such key
        md["neighbour_skin_A"] = args.skin
    settings = validate_section(md, "md")
    potential = load_potential(models / "potential_0.pt")
    committee = [load_potential(models / f"potential_{i}.pt") for i in range(1, COMMITTEE_SIZE)]
    born = load_born(models / "born_0.pt")
    atoms = build_cell(args.cell)
    schedule = FieldSchedule((0.1, 0.0, 0.0), field_on_step=0, timestep_fs=1.0)
    backend = ASEBackend(atoms, potential, born, settings, schedule, 900.0, seed=7, committee=committee)
    backend.advance(5)
    graphs = getattr(backend.calc, "graphs", None)
    builds = graphs.builds if graphs is not None else None
    wall, cpu = time.perf_counter(), time.process_time()
    backend.advance(args.steps)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    builds = graphs.builds - builds if graphs is not None else args.steps
    check_wall = time.perf_counter()
    backend.committee_force_std()
    check_wall = time.perf_counter() - check_wall
    print("RESULT " + json.dumps({"step_ms": 1e3 * wall / args.steps, "step_cpu_ms": 1e3 * cpu / args.steps,
                                  "check_ms": 1e3 * check_wall, "builds": builds, "n_atoms": len(atoms)}))


def measure(cell: str, steps: int, skin: float | None, models: Path, src: str | None) -> dict:
    command = [sys.executable, __file__, "--worker", "--cell", cell, "--steps", str(steps), "--models", str(models)]
    if skin is not None:
        command += ["--skin", repr(skin)]
    return run_worker(command, src, timeout=3600)


def record(metric, value, unit, system, n_atoms, notes) -> dict:
    return {"metric": metric, "value": float(value), "unit": unit, "system": system, "n_atoms": int(n_atoms),
            "ranks": 1, "threads": 1, "baseline": False, "date": datetime.date.today().isoformat(),
            "machine": MACHINE, "notes": notes}


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = sorted({r["system"] for r in records}, key=lambda s: (s != "bornfield-before", s))
    sizes = sorted({r["n_atoms"] for r in records})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / max(len(systems), 1)
    for panel, label in enumerate(["CPU ms per MD step (median over repeats)",
                                   "atom-steps per CPU-second (1 thread, median)"]):
        ax = axes[panel]
        for index, system in enumerate(systems):
            values = []
            for n in sizes:
                points = [r["value"] for r in records if r["metric"] == "md_step_cpu_ms" and r["system"] == system
                          and r["n_atoms"] == n]
                median = float(np.median(points)) if points else np.nan
                values.append(median if panel == 0 else 1e3 * n / median)
            x = np.arange(len(sizes)) + (index - (len(systems) - 1) / 2) * width
            bars = ax.bar(x, values, width, label=system.replace("bornfield-", ""))
            ax.bar_label(bars, fmt="%.0f", fontsize=6)
        ax.set_xticks(np.arange(len(sizes)), [f"{n} atoms" for n in sizes])
        ax.set_ylabel(label)
        if panel == 1:
            ax.axhline(10_000, color="grey", ls="--", lw=1, label="target 10,000 (1,024 atoms)")
        ax.legend(fontsize=8)
    fig.suptitle("field-MD step, shipped models/li3po4 (potential_0 + born_0, Born every step), ASE, 1 thread",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cell", default="amorphous")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--skin", type=float, default=None)
    parser.add_argument("--models", default=str(REPO / "models" / "li3po4"), help="model set directory")
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--skins", type=float, nargs="+", default=[0.0, 1.0], help="md.neighbour_skin_A values (Å)")
    parser.add_argument("--before-src", default=None, help="an older bornfield src/ tree to measure side by side")
    parser.add_argument("--repeats", type=int, default=3, help="measure every point this many times (interleaved)")
    parser.add_argument("--note", default="", help="text put at the start of every record's notes")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON")
    args = parser.parse_args()
    out = RESULTS / f"{NAME}.json"
    if args.replot:
        plot(json.loads(out.read_text()), out.with_suffix(".png"))
        return
    if args.worker:
        worker(args)
        return
    systems = [(f"bornfield-skin{skin:g}", skin, None) for skin in args.skins]
    if args.before_src:
        systems.insert(0, ("bornfield-before", None, args.before_src))
    records = []
    for repeat in range(args.repeats):
        for cell in args.cells:
            for system, skin, src in systems:
                load = os.getloadavg()[0]
                result = measure(cell, STEPS[cell], skin, Path(args.models), src)
                n = result["n_atoms"]
                notes = (f"{args.note}{cell} cell, {STEPS[cell]} timed steps, Bussi 900 K, E = 0.1 V/Å, "
                         f"{result['builds']} neighbour-list builds; 1-min load average {load:.1f} before the run"
                         + (f"; repeat {repeat + 1} of {args.repeats}" if args.repeats > 1 else ""))
                records += [
                    record("md_step_ms", result["step_ms"], "ms", system, n, notes + "; wall clock"),
                    record("md_step_cpu_ms", result["step_cpu_ms"], "ms", system, n, notes + "; CPU time"),
                    record("atom_steps_per_s", 1e3 * n / result["step_ms"], "atom-steps/s", system, n,
                           notes + "; wall clock"),
                    record("committee_check_ms", result["check_ms"], "ms", system, n,
                           notes + f"; members 0-{COMMITTEE_SIZE - 1}, every {CHECK_INTERVAL} steps in the demo; wall clock"),
                ]
                print(f"{system:18s} {cell:13s} {n:5d} atoms  {result['step_ms']:7.1f} ms/step wall "
                      f"{result['step_cpu_ms']:7.1f} CPU  check {result['check_ms']:6.1f} ms  "
                      f"builds {result['builds']}  load {load:.1f}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(records, indent=1) + "\n")
    plot(records, out.with_suffix(".png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
