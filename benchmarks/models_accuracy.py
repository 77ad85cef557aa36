"""Held-out accuracy of the NN potential, the equivariant Born model and the paper-style baseline.

Trains the committees of a config's ``train`` section on one labelled dataset
(DFT/DFPT extxyz), with one stratified split shared by every model, then
evaluates on the test structures:

* Born charges: RMSE/MAE full tensor, diagonal vs off-diagonal, per species,
  per field-axis row (the paper reports 0.0376 e/atom for its field-axis
  components), for the equivariant model and the baseline (its one row);
* potential: energy (meV/atom), force (meV/Å) and stress (GPa) errors.

    .venv/bin/python benchmarks/models_accuracy.py --dataset results/dataset/gen0.extxyz \
        [--config config/config.yaml] [--workdir benchmarks/work/accuracy]

Writes ``benchmarks/results/models_accuracy.json`` (records of the design
notes) and parity plots ``models_accuracy_*.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from bornfield.cli import main as bornfield
from bornfield.config import load_config

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--config", default=str(HERE.parent / "config" / "config.yaml"))
    parser.add_argument("--workdir", default=str(HERE / "work" / "accuracy"))
    parser.add_argument("--output", default=str(HERE / "results" / "models_accuracy.json"))
    parser.add_argument("--no-resume", action="store_true")
    args = parser.parse_args()

    config = load_config(args.config)
    train = config["train"]
    settings = json.dumps({"train": train})
    seed = str(config["seed"])
    work = Path(args.workdir)
    if args.no_resume and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    common = ["--settings", settings, "--seed", seed, "--dataset", args.dataset]
    if bornfield(["train", "split", *common, "--output", str(work / "split.json")]) != 0:
        return 1
    files = {"potential": [], "born": [], "baseline": []}
    axis = "xyz"[train["baseline"]["field_axis"]]
    for kind in ("potential", "born", "baseline"):
        if kind == "baseline" and not train["baseline"]["enabled"]:
            continue
        for member in range(train[kind]["committee"]):
            if bornfield(["train", kind, *common, "--output-dir", str(work), "--member", str(member), "--no-progress"]) != 0:
                return 1
            name = f"born_row_{axis}_{member}.pt" if kind == "baseline" else f"{kind}_{member}.pt"
            files[kind].append(str(work / name))
    out = Path(args.output)
    notes = (f"dataset {args.dataset}; config {args.config}; committees potential {len(files['potential'])}, "
             f"born {len(files['born'])}, baseline {len(files['baseline'])}; paper (Shimizu et al. 2023): "
             "0.0376 e/atom for the field-axis BEC components")
    models = [arg for kind, paths in files.items() if paths for arg in (f"--{kind}", *paths)]
    code = bornfield(["train", "evaluate", "--dataset", args.dataset, "--split", str(work / "split.json"),
                      "--subset", "test", *models, "--output", str(out), "--notes", notes])
    return code


if __name__ == "__main__":
    sys.exit(main())
