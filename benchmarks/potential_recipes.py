"""Potential committees trained by different recipes, side by side on the same held-out rows.

For each ``--set NAME=FILE[,FILE...]`` (a committee, member 0 first) the held-out force RMSE
(meV/Å) and energy RMSE (meV/atom, neutral cells) of the committee mean and of member 0 (the one
field MD integrates), over all held-out rows, the rows without 3000 K melt snapshots
(``config_type`` melt / al_melt: what the MD at 600-900 K samples) and the melt rows alone;
``--parts train test`` also records the training rows (the generalisation gap).
Records in the DESIGN.md format (dataset ``li3po4-ledger``), and a bar chart.

    .venv/bin/python benchmarks/potential_recipes.py --dataset gen0.extxyz --split split.json \\
        --set shipped=models/li3po4/potential_0.pt,... --set new=... --output benchmarks/results/X.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import numpy as np

MELT = ("melt", "al_melt")
GROUPS = {"all": lambda c: True, "no_melt": lambda c: c not in MELT, "melt": lambda c: c in MELT}


def errors(models: list, samples) -> dict[str, dict[str, float]]:
    """{member0|committee: {group_metric: value}} for the potential committee (member 0 first) on the samples."""
    from bornfield.train.metrics import predict_potential

    out = {}
    for who, chosen in (("committee", models), ("member-0", models[:1])):
        p = predict_potential(chosen, samples)
        offset, rows = 0, []
        for k, s in enumerate(samples):
            df = p["forces"][offset:offset + s.n_atoms] - s.forces
            offset += s.n_atoms
            de = (p["energy"][k] - s.energy) / s.n_atoms if s.charge == 0 else np.nan
            rows.append((s.config_type, df, de))
        values = {}
        for group, keep in GROUPS.items():
            chosen_rows = [r for r in rows if keep(r[0])]
            if not chosen_rows:
                continue
            f = np.concatenate([r[1].ravel() for r in chosen_rows])
            e = np.array([r[2] for r in chosen_rows])
            e = e[~np.isnan(e)]
            values[f"force_rmse_meV_per_A:{group}"] = 1000 * float(np.sqrt((f ** 2).mean()))
            if len(e):
                values[f"energy_rmse_meV_per_atom:{group}"] = 1000 * float(np.sqrt((e ** 2).mean()))
            values[f"n_structures:{group}"] = len(chosen_rows)
        out[who] = values
    return out


def main() -> None:
    from bornfield.models.io import load_model
    from bornfield.train.data import read_samples, read_split_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="labelled extxyz (a ledger export, or held-out rows only)")
    parser.add_argument("--split", help="split.json; its test rows are evaluated (default: every row of --dataset)")
    parser.add_argument("--set", action="append", required=True, metavar="NAME=FILE[,FILE...]",
                        help="a potential committee, member 0 first (repeat for each set)")
    parser.add_argument("--output", required=True, help="JSON records (a PNG is written beside it)")
    parser.add_argument("--notes", default="", help="what the sets are and how they were trained")
    parser.add_argument("--parts", nargs="+", default=["test"], choices=["train", "val", "test"],
                        help="rows of --split evaluated (the table and chart show the test rows)")
    args = parser.parse_args()

    samples = read_samples(args.dataset)
    split = read_split_file(args.split, len(samples)) if args.split else {"test": range(len(samples))}
    records, table = [], {}
    for item in args.set:
        name, _, files = item.partition("=")
        models = [load_model(f) for f in files.split(",")]
        for part in args.parts:
            result = errors(models, [samples[i] for i in split[part]])
            if part == "test":
                table[name] = result
            for who, values in result.items():
                for key, value in values.items():
                    metric, group = key.split(":")
                    if metric.startswith("n_"):
                        continue
                    records.append({
                        "metric": metric, "value": value, "unit": "meV/Å" if "force" in metric else "meV/atom",
                        "system": f"{name}-bornfield-potential" + ("" if who == "committee" else "-member-0"),
                        "config_type": group, "n_structures": values[f"n_structures:{group}"], "split": part,
                        "dataset": "li3po4-ledger", "baseline": False, "date": dt.date.today().isoformat(),
                        "machine": "2 cores, no GPU (shared with a labelling job)", "ranks": 1, "threads": 1,
                        "notes": f"{args.notes}; files: {files}; "
                                 + (f"{part} rows of {args.split} in {args.dataset}" if args.split
                                    else f"rows of {args.dataset}"),
                    })
    Path(args.output).write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    for name, result in table.items():
        c, m = result["committee"], result["member-0"]
        print(f"{name:24s} committee F {c['force_rmse_meV_per_A:all']:6.1f} E {c.get('energy_rmse_meV_per_atom:all', np.nan):5.2f}"
              f" | no melt F {c['force_rmse_meV_per_A:no_melt']:5.1f} E {c.get('energy_rmse_meV_per_atom:no_melt', np.nan):5.2f}"
              f" | member 0 F {m['force_rmse_meV_per_A:all']:6.1f} E {m.get('energy_rmse_meV_per_atom:all', np.nan):5.2f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    names = list(table)
    width = 0.8 / 3
    for ax, metric, label in ((axes[0], "force_rmse_meV_per_A", "force RMSE (meV/Å)"),
                              (axes[1], "energy_rmse_meV_per_atom", "energy RMSE (meV/atom)")):
        for g, group in enumerate(GROUPS):
            values = [table[n]["committee"].get(f"{metric}:{group}", np.nan) for n in names]
            ax.bar(np.arange(len(names)) + (g - 1) * width, values, width, label=group.replace("_", " "))
        ax.set_xticks(np.arange(len(names)), names, rotation=20, ha="right")
        ax.set_ylabel(label)
    axes[0].legend(title="held-out rows")
    fig.suptitle("potential committees on the same held-out ledger rows")
    fig.tight_layout()
    fig.savefig(Path(args.output).with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
