"""Labels per core-hour: one labeller on 2 ranks against two 1-rank labellers side by side.

Issue 16 asks whether "two 1-rank jobs vs one 2-rank job" makes labels cheaper. This harness runs
both set-ups one after the other on the same machine, on real queue jobs of ``--ledger`` (the
labels enter the ledger; nothing is computed only to be thrown away):

* ``one-worker-2-ranks``: ``bornfield label --ranks 2 --workers 1 --max-jobs J --kind scf``;
* ``two-workers-1-rank``: ``bornfield label --ranks 1 --workers 2 --max-jobs J --kind scf``
  (J jobs per worker).

The next queue jobs are different structures, whose SCF needs a different number of iterations,
so the comparison is per SCF iteration: for every job its wall time x ranks / iterations
(``core_s_per_scf_iteration``; iterations from the entry's ``pw.out``), median per set-up, and the
set-up's throughput ``labels_per_core_hour`` (jobs / (phase wall time x 2 cores)). The machine should run nothing
else meanwhile.

    .venv/bin/python benchmarks/label_workers.py --jobs 2 [--ledger data/ledger]

Writes ``benchmarks/results/label_workers.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NAME = "label_workers"
CORES = 2
SETUPS = {"one-worker-2-ranks": (1, 2), "two-workers-1-rank": (2, 1)}  # name: (workers, ranks)


def scf_iterations(entry: Path, scratch: Path) -> tuple[int, int]:
    """(SCF iterations, atoms) of a ledger entry, from the pw.out in its ``qe.tar.xz`` (bornfield's parser)."""
    from bornfield.dft.parsers import read_pw_output

    with tarfile.open(entry / "qe.tar.xz") as archive:
        member = next(name for name in archive.getnames() if name.endswith("pw.out"))
        path = scratch / f"{entry.name}.pw.out"
        path.write_bytes(archive.extractfile(member).read())
    output = read_pw_output(path)
    return output.n_scf_iterations, len(output.atoms)


def run_setup(name: str, workers: int, ranks: int, jobs: int, hours: float, ledger: Path, report: Path) -> dict:
    """Run one set-up as a labelling command; its jobs with iterations and the phase wall time."""
    command = [sys.executable, "-m", "bornfield.cli", "label", "--hours", repr(hours), "--ranks", str(ranks),
               "--workers", str(workers), "--max-jobs", str(jobs), "--kind", "scf", "--ledger", str(ledger),
               "--report-json", str(report)]
    print(f"{name}: {' '.join(command[2:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    summary = json.loads(report.read_text())
    rows = []
    for job in summary["jobs"]:
        if job["state"] != "completed":
            raise SystemExit(f"{name}: job {job['dft_id']} ended {job['state']}")
        iterations, atoms = scf_iterations(ledger / "entries" / job["dft_id"], report.parent)
        rows.append({"dft_id": job["dft_id"], "n_atoms": atoms, "scf_iterations": iterations,
                     "wall_time_s": job["wall_time_s"], "core_s_per_scf_iteration": job["wall_time_s"] * ranks / iterations})
    return {"workers": workers, "ranks": ranks, "phase_wall_s": wall, "jobs": rows}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for k, (name, result) in enumerate(results.items()):
        values = [row["core_s_per_scf_iteration"] for row in result["jobs"]]
        ax.scatter([k] * len(values), values, color=f"C{k}")
        ax.hlines(np.median(values), k - 0.25, k + 0.25, color=f"C{k}")
    ax.set_xticks(range(len(results)), list(results))
    ax.set_xlim(-0.6, len(results) - 0.4)
    ax.set_ylabel("pw.x core-seconds per SCF iteration")
    ax.set_title("SCF labels of the queue, same machine, one run (line: median)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", type=Path, default=ROOT / "data" / "ledger")
    parser.add_argument("--jobs", type=int, default=2, help="jobs per worker in each set-up")
    parser.add_argument("--hours", type=float, default=1.0, help="budget of each set-up (h)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / f"{NAME}.json")
    args = parser.parse_args()

    work = HERE / "work" / NAME
    work.mkdir(parents=True, exist_ok=True)
    results = {name: run_setup(name, workers, ranks, args.jobs, args.hours, args.ledger, work / f"{name}.json")
               for name, (workers, ranks) in SETUPS.items()}
    from bornfield.provenance import cpu_model

    machine = cpu_model()
    records = []
    for name, result in results.items():
        per_iteration = [row["core_s_per_scf_iteration"] for row in result["jobs"]]
        common = {"system": name, "baseline": name == "one-worker-2-ranks", "dataset": "li3po4-ledger",
                  "date": dt.date.today().isoformat(), "machine": f"{CORES} cores ({machine}), nothing else running",
                  "ranks": result["ranks"], "threads": 1, "workers": result["workers"],
                  "n_structures": len(result["jobs"]), "n_atoms": int(max(row["n_atoms"] for row in result["jobs"])),
                  "jobs": result["jobs"],
                  "notes": f"pw.x SCF of the next --kind scf queue jobs of {args.ledger}, QE at the ledger's settings; "
                           "per job: wall time x ranks / SCF iterations"}
        records.append({**common, "metric": "core_s_per_scf_iteration", "value": float(np.median(per_iteration)),
                        "unit": "core-s"})
        records.append({**common, "metric": "labels_per_core_hour",
                        "value": len(result["jobs"]) / (result["phase_wall_s"] * CORES / 3600), "unit": "labels/core-h"})
        print(f"{name}: {len(result['jobs'])} jobs in {result['phase_wall_s'] / 60:.1f} min, "
              f"median {np.median(per_iteration):.1f} core-s per SCF iteration, "
              f"{records[-1]['value']:.2f} labels per core-hour")
    args.output.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    plot(results, args.output.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
