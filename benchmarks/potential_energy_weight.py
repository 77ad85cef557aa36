"""Potential loss weights on the Li3PO4 ledger: held-out energy and force errors vs ``train.potential.energy_weight``.

The loss is ``energy_weight·(ΔE/N)² + force_weight·ΔF² + stress_weight·Δσ²`` (eV/atom, eV/Å, eV/Å³).
For each energy weight and repeat, member 0 of the potential is fine-tuned from a pre-trained
member (repeat r starts from ``--pretrained`` file r, as ``make models`` does) on every training
entry of a model set (its manifest's ``source.dft_ids``; validation and the fixed held-out cells as
that set had them), through the ``bornfield train`` CLI (the runs of ``learning_curve.py``). Records
per run: held-out energy and force RMSE/MAE and the mean signed energy error
(``energy_mean_error_meV_per_atom`` of ``bornfield train evaluate``, neutral cells only): a model that learns energies only through forces leaves the crystal–amorphous energy
difference free.

    .venv/bin/python benchmarks/potential_energy_weight.py \\
        --pretrained results-models/models/pretrain/potential_0.pt results-models/models/pretrain/potential_1.pt \\
        [--weights 1 10 100] [--repeats 2] [--ledger data/ledger] [--manifest models/li3po4/manifest.json] \\
        [--config config/models.yaml] [--max-epochs N] [--potential-setting KEY=VALUE ...]

``--potential-setting`` overrides a ``train.potential`` key of the config for every run (e.g.
``interactions=2``, with pre-trained files of that architecture); the overrides are stored in each record.

Writes ``benchmarks/results/potential_energy_weight.json`` (design-note records, ``dataset:
"li3po4-ledger"``, ``energy_weight`` in each) and ``potential_energy_weight.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from chgnet_proxy import sha256_of  # same directory
from learning_curve import add_ledger_run_arguments, ledger_rows, parse_ledger_run_arguments, run_one, run_records  # same directory
from models_mace_ledger import shown  # same directory

from bornfield.atomic import write_json
from bornfield.config import load_config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENERGY_TARGET_MEV = 3.0  # issue 17: energy RMSE <= 3 meV/atom


def table(records: list[dict]) -> str:
    """Markdown: per energy weight, the mean over repeats (each repeat's value in brackets)."""
    lines = ["| energy_weight | energy RMSE (meV/atom) | energy bias (meV/atom) | force RMSE (meV/Å) | epochs (best) |",
             "|---|---|---|---|---|"]

    def cell(rows, metric, digits):
        values = [r["value"] for r in sorted(rows, key=lambda r: r["repeat"]) if r["metric"] == metric]
        each = " / ".join(f"{v:.{digits}f}" for v in values)
        return f"{np.mean(values):.{digits}f} ({each})" if len(values) > 1 else each

    for weight in sorted({r["energy_weight"] for r in records}):
        rows = [r for r in records if r["energy_weight"] == weight]
        epochs = " / ".join(f"{r['epochs_run']} ({r['best_epoch']})" for r in sorted(rows, key=lambda r: r["repeat"])
                            if r["metric"] == "force_rmse_meV_per_A")
        lines.append(f"| {weight:g} | {cell(rows, 'energy_rmse_meV_per_atom', 2)} | "
                     f"{cell(rows, 'energy_mean_error_meV_per_atom', 2)} | {cell(rows, 'force_rmse_meV_per_A', 1)} | {epochs} |")
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    """Energy RMSE and bias (left) and force RMSE (right) against the energy weight, per repeat and mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = sorted({r["energy_weight"] for r in records})
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric, label in ((left, "energy_rmse_meV_per_atom", "energy RMSE"),
                                (left, "energy_mean_error_meV_per_atom", "energy bias (mean signed)"),
                                (right, "force_rmse_meV_per_A", "force RMSE")):
        rows = [r for r in records if r["metric"] == metric]
        means = [np.mean([r["value"] for r in rows if r["energy_weight"] == w]) for w in weights]
        line, = axis.plot(weights, means, "o-", label=f"{label} (mean)")
        axis.scatter([r["energy_weight"] for r in rows], [r["value"] for r in rows], s=12, alpha=0.5,
                     color=line.get_color())
    left.axhline(ENERGY_TARGET_MEV, color="k", ls="-.", lw=0.8, label=f"issue 17 target ({ENERGY_TARGET_MEV:g})")
    left.axhline(0.0, color="grey", lw=0.5)
    left.set_ylabel("held-out energy error (meV/atom)")
    right.set_ylabel("held-out force RMSE (meV/Å)")
    for axis in (left, right):
        axis.set_xscale("log")
        axis.set_xlabel("train.potential.energy_weight (force_weight 1)")
        axis.legend(fontsize=7)
    fig.suptitle("Li3PO4 ledger, potential member 0 fine-tuned from the pre-trained member; fixed held-out cells",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_ledger_run_arguments(parser, "potential_energy_weight")
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 10.0, 100.0],
                        help="train.potential.energy_weight values (force_weight as configured)")
    parser.add_argument("--potential-setting", action="append", default=[], metavar="KEY=VALUE",
                        help="override train.potential KEY of the config (value parsed as YAML), repeatable")
    args = parse_ledger_run_arguments(parser)
    overrides = {}
    for item in args.potential_setting:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--potential-setting {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    if any(w <= 0 for w in args.weights):
        raise SystemExit(f"--weights {args.weights}: energy weights must be positive")

    started = time.perf_counter()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    config = load_config(args.config)
    dataset, frames, split = ledger_rows(args.ledger, args.manifest, work)
    (work / "pretrained").mkdir(exist_ok=True)

    def pretrained(r: int) -> Path:
        """A copy of pre-trained file r, made when first used (the source may be rebuilt meanwhile)."""
        copy = work / "pretrained" / f"potential_{r}.pt"
        if not copy.exists():
            shutil.copyfile(args.pretrained[r], copy)
        return copy

    print(f"energy weights {args.weights}: {len(frames)} ledger rows (train {len(split['train'])}, val "
          f"{len(split['val'])}, test {len(split['test'])}); {len(args.weights) * args.repeats} runs in {work}", flush=True)

    records = []
    for r, weight in ((r, w) for r in range(args.repeats) for w in args.weights):  # repeat 1 needs file 1 only then
        t0 = time.perf_counter()
        train = json.loads(json.dumps(config["train"]))
        train["threads"] = 1
        train["potential"].update(overrides)
        train["potential"]["energy_weight"] = weight
        if args.max_epochs:
            train["potential"]["max_epochs"] = args.max_epochs
        spec = {"name": f"potential_ew{weight:g}_r{r}", "kind": "potential", "variant": f"energy_weight {weight:g}",
                "n": len(split["train"]), "repeat": r, "seed": int(config["seed"]) + r, "train": split["train"],
                "init": str(pretrained(r)), "init_source": shown(args.pretrained[r]),
                "init_sha256": sha256_of(pretrained(r)), "max_epochs": int(train["potential"]["max_epochs"]),
                "section": train["potential"], "dataset_sha256": sha256_of(dataset)}
        evaluation = run_one(spec, dataset, split, json.dumps({"train": train}), work)
        notes = (f"ledger {shown(args.ledger)} rows of {shown(args.manifest)} (train {len(split['train'])}, val "
                 f"{len(split['val'])}, test {len(split['test'])} fixed); train.potential of {shown(args.config)} with "
                 f"energy_weight {weight:g}{''.join(f', {k} {v}' for k, v in overrides.items())}, member 0, torch threads 1; starts from {spec['init_source']} "
                 f"(sha256 {spec['init_sha256'][:12]}, pre-trained on the CHGNet proxy set)")
        rows = [{**rec, **overrides, "energy_weight": weight} for rec in run_records(spec, evaluation, frames, notes)]
        records += rows
        shown_values = {rec["metric"]: round(rec["value"], 2) for rec in rows
                        if rec["metric"] in ("energy_rmse_meV_per_atom", "energy_mean_error_meV_per_atom", "force_rmse_meV_per_A")}
        print(f"[w {weight:g}, r {r}] {shown_values} ({time.perf_counter() - t0:.0f} s)", flush=True)
    out = Path(args.output)
    write_json(out, records)
    plot(records, out.with_suffix(".png"))
    print(table(records))
    print(f"wrote {out} ({len(records)} records) and {out.with_suffix('.png')} in {time.perf_counter() - started:.0f} s",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
