"""Cost per label before and after a cheaper DFT setting, and whether the labels stay.

Runs the first DFPT queue entry of each of three families (a thermal beta cell, a
melt-quenched 16-atom cell, a defect cell) at the reference settings of the ledger config
and at a candidate setting, one MPI rank per job; two workers share the jobs, one per core. ``--analyse`` compares them:
max |ΔZ| (e, raw tensors), max |ΔF| (meV/Å), |Δε∞|, CPU time per program, and labels per
core-hour. The issue's rule for adopting a candidate: Born charges within 0.01 e and forces
within 10 meV/Å of the reference on every structure.

Usage::

    .venv/bin/python benchmarks/label_cost.py --queue data/ledger/queue.extxyz --worker &
    .venv/bin/python benchmarks/label_cost.py --queue data/ledger/queue.extxyz --worker &
    .venv/bin/python benchmarks/label_cost.py --queue data/ledger/queue.extxyz --analyse

writes ``benchmarks/results/label_cost.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from bornfield.config import load_config  # noqa: E402
from bornfield.dft import DFTJob, DFTSettings, RunnerOptions, provision_pseudopotentials  # noqa: E402
from bornfield.dft.parsers import read_ph_output, read_pw_output  # noqa: E402
from bornfield.dft.qc import QCThresholds  # noqa: E402
from bornfield.ledger.queue import read_queue  # noqa: E402
from dft_timing import qe_times  # noqa: E402  (same directory)

WORK = HERE / "work" / "label_cost"
RESULTS = HERE / "results"
FAMILIES = ("beta_thermal", "amorphous_16", "beta_defects_16")
BEC_TOLERANCE_E, FORCE_TOLERANCE_MEV = 0.01, 10.0


def variants(config: Path) -> dict[str, DFTSettings]:
    """Reference = the config's dft settings with Born charges; candidates derived from it."""
    section = load_config(config)["dft"]
    reference = replace(DFTSettings.from_section(section), born_charges=True)
    return {
        "reference": reference,
        # pslibrary's suggested minimum charge-density cutoff of the Li file is 355 Ry
        "ecutrho360": replace(reference, ecutrho_Ry=360.0),
    }


def structures(queue: Path) -> list:
    """The first DFPT queue entry of each family in FAMILIES."""
    chosen = {}
    for atoms in read_queue(queue):
        family = atoms.info.get("family")
        if atoms.info["label_kind"] == "dfpt" and family in FAMILIES and family not in chosen:
            chosen[family] = atoms
    missing = [f for f in FAMILIES if f not in chosen]
    if missing:
        raise SystemExit(f"{queue}: no DFPT entry of families {missing}")
    return [chosen[f] for f in FAMILIES]


def run_worker(queue: Path, config: Path) -> None:
    """Run every (variant, structure) job not yet done or claimed; start two workers on two cores."""
    import fcntl

    section = load_config(config)["dft"]
    pseudo_dir = WORK / "pseudo"
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "pseudo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pseudos = provision_pseudopotentials(pseudo_dir, "pbesol_paw")
    for atoms in structures(queue):
        for name, settings in variants(config).items():
            job = DFTJob(atoms, settings, pseudos, pseudo_dir, WORK / name / "jobs", RunnerOptions.defaults(launcher=""),
                         QCThresholds.from_section(section))
            job.dir.parent.mkdir(parents=True, exist_ok=True)
            with open(job.dir.parent / f"{job.dft_id}.lock", "w") as claim:
                try:
                    fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # the other worker runs it
                labels = job.run()
            logging.info("%s %s (%s): %s", name, job.dft_id, atoms.info["family"], labels["state"])
            with open(WORK / "index.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                index_path = WORK / name / "index.json"
                index = json.loads(index_path.read_text()) if index_path.exists() else {}
                index[atoms.info["family"]] = job.dft_id
                index_path.write_text(json.dumps(index, indent=1))


def analyse(config: Path, output: Path) -> list[dict]:
    today = dt.date.today().isoformat()
    records = []
    names = list(variants(config))
    reference = names[0]
    index = {name: json.loads((WORK / name / "index.json").read_text()) for name in names if (WORK / name / "index.json").exists()}

    def rec(metric, value, unit, system, n_atoms, notes, **extra):
        records.append({"metric": metric, "value": float(value), "unit": unit, "system": system, "n_atoms": n_atoms,
                        "ranks": 1, "threads": 1, "baseline": system.startswith(reference), "date": today,
                        "machine": "2 cores, no GPU (the two variants side by side, one rank each)",
                        "notes": notes, **extra})

    cpu = {name: [] for name in names}
    measured = [f for f in FAMILIES if all(f in index.get(name, {}) for name in names)]
    for family in measured:
        ref_dir = WORK / reference / "jobs" / index[reference][family]
        ref_pw, ref_ph = read_pw_output(ref_dir / "pw.out"), read_ph_output(ref_dir / "ph.out")
        n = len(ref_pw.forces)
        for name in names:
            job_dir = WORK / name / "jobs" / index[name][family]
            pw, ph = read_pw_output(job_dir / "pw.out"), read_ph_output(job_dir / "ph.out")
            seconds = qe_times(job_dir / "pw.out", "PWSCF")[0] + qe_times(job_dir / "ph.out", "PHONON")[0]
            cpu[name].append(seconds)
            notes = f"family {family}; dft_id {index[name][family]}"
            rec("label_cpu_time_s", seconds, "s", f"{name} pw.x+ph.x", n, notes)
            if name == reference:
                continue
            rec("bec_max_dev_e", np.abs(ph.born_charges_raw - ref_ph.born_charges_raw).max(), "e", f"{name} vs {reference}", n, notes,
                tolerance=BEC_TOLERANCE_E)
            rec("force_max_dev_meV_per_A", 1000 * np.abs(pw.forces - ref_pw.forces).max(), "meV/Å", f"{name} vs {reference}", n, notes,
                tolerance=FORCE_TOLERANCE_MEV)
            rec("eps_inf_max_dev", np.abs(ph.epsilon_inf - ref_ph.epsilon_inf).max(), "", f"{name} vs {reference}", n, notes)
    for name in names:
        if cpu[name]:
            rec("labels_per_core_hour", 3600 * len(cpu[name]) / sum(cpu[name]), "DFPT labels/core-h", name, 16,
                f"CPU time summed over the structures of families {', '.join(measured)}")
    output.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    plot(records, output.with_suffix(".png"))
    return records


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, (metric, tol, label) in zip(axes[:2], (("bec_max_dev_e", BEC_TOLERANCE_E, "max |ΔZ| (e)"),
                                                   ("force_max_dev_meV_per_A", FORCE_TOLERANCE_MEV, "max |ΔF| (meV/Å)"))):
        rows = [r for r in records if r["metric"] == metric]
        ax.bar([r["notes"].split(";")[0].replace("family ", "") for r in rows], [r["value"] for r in rows])
        ax.axhline(tol, color="k", ls="--", lw=1, label="adoption bound")
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=20)
        ax.legend(fontsize=8)
    rows = [r for r in records if r["metric"] == "labels_per_core_hour"]
    axes[2].bar([r["system"] for r in rows], [r["value"] for r in rows])
    axes[2].set_ylabel("DFPT labels per core-hour")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=Path, required=True, help="ledger queue (queue.extxyz)")
    parser.add_argument("--config", type=Path, default=HERE.parent / "config" / "paper.yaml", help="config of the reference settings")
    parser.add_argument("--worker", action="store_true", help="run jobs not yet done (1 rank each); start two")
    parser.add_argument("--analyse", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS / "label_cost.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.worker:
        run_worker(args.queue, args.config)
    if args.analyse:
        for r in analyse(args.config, args.output):
            print(r["metric"], r["system"], round(r["value"], 4), r["notes"])


if __name__ == "__main__":
    main()
