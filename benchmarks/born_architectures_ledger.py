"""Born-model architectures on the Li3PO4 ledger: held-out accuracy against inference speed.

Trains one member of each named variant (``train.born`` settings merged over the schema
defaults, one schedule for all) on the ledger export with the shipped model set's split
(its held-out cells are never trained on), evaluates every variant and the shipped Born
committee on those held-out cells (``bornfield train evaluate``), and times each model's
``born_charges`` on a rattled 1,024-atom beta supercell in the same run (one torch thread,
best of the repeats, CPU time). Writes records to ``benchmarks/results/born_architectures_ledger.json``
and the error-vs-speed plot ``born_architectures_ledger.png``.

    .venv/bin/python benchmarks/born_architectures_ledger.py --dataset results-models/dataset/gen0.extxyz \\
        --split results-models/models/gen0/split.json [--variant density edge polar] [--max-epochs 200]

``results-models/`` is what ``make models`` writes (the ledger export and the split of models/li3po4).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sio2_allegro_pol import evaluate as evaluate_test_rows
from sio2_allegro_pol import merge_records

from bornfield.cli import main as bornfield

DATASET = "li3po4-ledger"
SCHEDULE = {"committee": 1, "batch_size": 1, "learning_rate": 0.005, "lr_schedule": "cosine", "patience": 1000}
VARIANTS: dict[str, dict] = {
    "density": {"architecture": "density", "interactions": 2, "channels": 16},
    "edge": {"architecture": "edge", "edge_layers": 2},
    "polar": {"architecture": "polar", "edge_layers": 2},
    "polar1": {"architecture": "polar", "edge_layers": 1},
}


def beta_supercell() -> tuple:
    """Rattled (0.05 Å) 1,024-atom beta-Li3PO4 (as benchmarks/models_speed.py): the arguments of ``born_charges``."""
    from models_speed import beta_supercell as rattled_beta

    atoms = rattled_beta((4, 4, 4))
    return atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc


def born_speed(files: list[str], structure: tuple, repeats: int) -> float:
    """Atom-evaluations per CPU-second of the committee of ``files`` (best of ``repeats``, 1 thread)."""
    import torch

    from bornfield.models import load_born

    torch.set_num_threads(1)
    model = load_born(files if len(files) > 1 else files[0])
    model.born_charges(*structure)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        model.born_charges(*structure)
        best = min(best, time.process_time() - start)
    return len(structure[1]) / best


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rmse = {r["system"]: r["value"] for r in records if r["metric"] == "bec_rmse_e"}
    speed = {r["system"]: r["value"] for r in records if r["metric"] == "born_atom_evals_per_cpu_s"}
    fig, ax = plt.subplots(figsize=(6, 4))
    for system, error in rmse.items():
        if system in speed:
            ax.scatter(speed[system], error)
            ax.annotate(system.removeprefix("bornfield-born[").rstrip("]"), (speed[system], error),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("Born model atom-evaluations per CPU-second (1,024 atoms, 1 thread)")
    ax.set_ylabel("held-out Born RMSE (e)")
    ax.set_title("Li3PO4 ledger: Born-model accuracy vs speed")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="ledger export (make models: results-models/dataset/gen0.extxyz)")
    parser.add_argument("--split", required=True, help="split file of the shipped set (results-models/models/gen0/split.json)")
    parser.add_argument("--variant", nargs="*", default=list(VARIANTS), choices=sorted(VARIANTS))
    parser.add_argument("--shipped", default="models/li3po4", help="model set whose Born committee is evaluated too")
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=20231)
    parser.add_argument("--repeats", type=int, default=3, help="timed Born evaluations per model")
    parser.add_argument("--workdir", default=str(HERE / "work" / "born_architectures"))
    parser.add_argument("--output", default=str(HERE / "results" / "born_architectures_ledger.json"))
    args = parser.parse_args()
    command = "python benchmarks/born_architectures_ledger.py " + shlex.join(sys.argv[1:])
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    structure = beta_supercell()
    date = dt.date.today().isoformat()
    records: list[dict] = []

    def speed_record(system: str, files: list[str]) -> dict:
        return {"metric": "born_atom_evals_per_cpu_s", "value": born_speed(files, structure, args.repeats),
                "unit": "atom-evaluations/CPU-s", "system": system, "n_atoms": len(structure[1]), "n_structures": 1,
                "split": "none", "baseline": False, "date": date, "machine": "2 cores, no GPU", "dataset": DATASET,
                "notes": f"born_charges of a rattled 1,024-atom beta supercell, 1 torch thread, best of "
                         f"{args.repeats}; command: {command}"}

    shipped = sorted(str(p) for p in Path(args.shipped).glob("born_[0-9]*.pt"))
    system = "bornfield-born[shipped]"
    split = ("--split", args.split)
    records += evaluate_test_rows(work, args.dataset, {"born": shipped}, system, False, command,
                                  f"the Born committee of {args.shipped} ({len(shipped)} members, trained by make models)",
                                  split=split, dataset=DATASET)
    records.append(speed_record(system, shipped))
    for name in args.variant:
        born = {**SCHEDULE, "max_epochs": args.max_epochs, **VARIANTS[name]}
        settings = json.dumps({"seed": args.seed, "train": {"born": born, "cutoff": 5.0, "dtype": "float32"}})
        outdir = work / name
        if bornfield(["train", "born", "--settings", settings, "--dataset", args.dataset, "--split-file", args.split,
                      "--output-dir", str(outdir), "--no-progress", "--no-resume"]) != 0:
            return 1
        system = f"bornfield-born[{name}]"
        files = [str(outdir / "born_0.pt")]
        records += evaluate_test_rows(work, args.dataset, {"born": files}, system, False, command,
                                      f"one member, train.born {json.dumps(born)}", split=split, dataset=DATASET)
        records.append(speed_record(system, files))
        print(f"{name}: " + ", ".join(f"{r['metric']} {r['value']:.4g}" for r in records
                                      if r["system"] == system and r["metric"] in ("bec_rmse_e", "born_atom_evals_per_cpu_s")))
    out = Path(args.output)
    merge_records(out, records, {r["system"] for r in records})
    plot(json.loads(out.read_text()), out.with_suffix(".png"))
    print(f"records -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
