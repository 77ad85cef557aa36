"""Learning curve on the Li3PO4 ledger: held-out error vs number of DFT/DFPT-labelled structures.

The rows are the ledger entries a shipped model set was trained and tested on (its manifest's
``source.dft_ids``), so the test set is that set's fixed held-out cells and is never trained on;
entries labelled after it are left out. For nested random subsets of its training entries
(``--repeats`` independent orderings, each with its own training seed):

* Born model (``train.born`` of ``--config``, member 0, from scratch) on the DFPT-labelled
  training entries: Born-charge RMSE/MAE (all, diagonal, off-diagonal) and the field-axis row x
  (the paper's 0.0376 e/atom) on the DFPT test cells;
* potential (``train.potential``, member 0) on all training entries, (a) from scratch and (b)
  fine-tuned from a pre-trained model (``train potential --init-model``, repeat r starts from
  pre-trained member r): energy and force errors on the test cells; plus the pre-trained models
  alone (no ledger data; forces only, their energy zero is CHGNet's).

Every model is trained and evaluated through the ``bornfield train`` CLI, with a split file per
run (validation: the manifest's validation entries, as ``make models`` had them), in its own
directory of ``--workdir``; finished runs are skipped, an interrupted one resumes from its
checkpoint.

    .venv/bin/python benchmarks/learning_curve.py \
        --pretrained results-models/models/pretrain/potential_0.pt results-models/models/pretrain/potential_1.pt \
        [--ledger data/ledger] [--manifest models/li3po4/manifest.json] [--config config/models.yaml] \
        [--born-sizes 1 2 4] [--potential-sizes 2 5 10] [--repeats 2] [--max-epochs N]

Writes ``benchmarks/results/learning_curve.json`` (design-note records, ``dataset:
"li3po4-ledger"``, one per metric, run and repeat) and ``learning_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from chgnet_proxy import sha256_of  # same directory
from models_mace_ledger import shown  # same directory

from bornfield.atomic import write_json
from bornfield.cli import main as bornfield
from bornfield.config import load_config
from bornfield.errors import InputFileError
from bornfield.train.cli import derived_seed
from bornfield.train.shipped import model_set_rows

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PAPER_BEC_E = 0.0376  # Shimizu et al. 2023, field-axis BEC components, e/atom
TARGET_BEC_E = 0.030  # issue 17
MACHINE = "2 cores, no GPU (shared with a QE labelling run and other jobs)"
METRICS = {
    "born": ("bec_rmse_e", "bec_mae_e", "bec_rmse_diag_e", "bec_mae_diag_e", "bec_rmse_offdiag_e",
             "bec_mae_offdiag_e", "bec_row_x_rmse_e", "bec_row_x_mae_e"),
    "potential": ("force_rmse_meV_per_A", "force_mae_meV_per_A", "energy_rmse_meV_per_atom",
                  "energy_mae_meV_per_atom", "energy_mean_error_meV_per_atom", "stress_rmse_GPa"),
}


def ledger_rows(ledger: str, manifest_path: str, work: Path) -> tuple[Path, list, dict[str, list[int]]]:
    """The model set's ledger rows (``model_set_rows``) as ``work/dataset.extxyz`` (written once, in
    ledger order), the frames of that file and the model set's split as row indices of it."""
    from ase.io import read, write

    manifest = Path(manifest_path)
    if manifest.name != "manifest.json":
        raise SystemExit(f"--manifest {manifest}: expected the manifest.json of a model set")
    try:
        rows = model_set_rows(ledger, manifest.parent)
    except InputFileError as exc:
        raise SystemExit(str(exc)) from exc
    ids = {name: [str(a.info["dft_id"]) for a in group] for name, group in rows.items()}
    dataset = work / "dataset.extxyz"
    if not dataset.exists():  # each group is in ledger order, i.e. by dft_id: so is the merge
        frames = sorted((a for group in rows.values() for a in group), key=lambda a: str(a.info["dft_id"]))
        write(work / "dataset.tmp.extxyz", frames, format="extxyz")
        (work / "dataset.tmp.extxyz").replace(dataset)
    frames = read(dataset, ":")
    row = {str(a.info.get("dft_id")): i for i, a in enumerate(frames)}
    if len(row) != len(frames) or sorted(row) != sorted(d for group in ids.values() for d in group):
        raise SystemExit(f"{dataset}: its rows are not the {sum(map(len, ids.values()))} ledger rows named by "
                         f"{manifest} (or a dft_id repeats); remove {dataset} to write it again")
    split = {name: sorted(row[i] for i in group) for name, group in ids.items()}
    info_test = sorted(i for i, a in enumerate(frames) if a.info.get("split") == "test")
    if info_test != split["test"]:
        raise SystemExit(f"{manifest}: its test entries are not the ledger's info['split'] == 'test' rows")
    return dataset, frames, split


def add_ledger_run_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The options of a benchmark that trains on a model set's ledger rows (``name``: its work and result file stem)."""
    parser.add_argument("--ledger", default=str(ROOT / "data" / "ledger"))
    parser.add_argument("--manifest", default=str(ROOT / "models" / "li3po4" / "manifest.json"),
                        help="model set whose train/val/test dft_ids fix the rows")
    parser.add_argument("--config", default=str(ROOT / "config" / "models.yaml"), help="train.born / train.potential settings")
    parser.add_argument("--pretrained", nargs="+", default=[],
                        help="pre-trained potentials (bornfield train pretrain), one per repeat (needed for potential runs)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="independent repeats (repeat r: pre-trained file r, master seed config seed + r)")
    parser.add_argument("--max-epochs", type=int, help="max_epochs of every run (default: the config's)")
    parser.add_argument("--workdir", default=str(HERE / "work" / name))
    parser.add_argument("--output", default=str(HERE / "results" / f"{name}.json"))


def parse_ledger_run_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parsed arguments, with one pre-trained file per repeat checked."""
    args = parser.parse_args()
    if "potential" in getattr(args, "kinds", ["potential"]) and len(args.pretrained) < args.repeats:
        raise SystemExit(f"--pretrained: {len(args.pretrained)} file(s) for --repeats {args.repeats}")
    return args


def run_one(spec: dict, dataset: Path, split: dict, settings: str, work: Path) -> Path:
    """Train (unless done) and evaluate (unless done) one model; returns its eval JSON.

    ``spec``: kind, variant, n, repeat, seed, train (row indices), init (model file or None).
    """
    run = work / spec["name"]
    run.mkdir(parents=True, exist_ok=True)
    stored = run / "spec.json"
    if stored.exists() and json.loads(stored.read_text()) != spec:
        raise SystemExit(f"{stored}: this run was made with other settings; remove {run} to redo it")
    write_json(stored, spec)
    kind = spec["kind"]
    model = Path(spec["init"]) if spec["variant"] == "pretrained-only" else run / f"{kind}_0.pt"
    if not model.exists():
        write_json(run / "split_in.json", {"train": spec["train"], "val": split["val"], "test": split["test"]})
        init = ["--init-model", spec["init"]] if spec["init"] else []
        code = bornfield(["train", kind, "--settings", settings, "--seed", str(spec["seed"]), "--dataset",
                          str(dataset), "--output-dir", str(run), "--member", "0", "--split-file",
                          str(run / "split_in.json"), "--no-progress", *init])
        if code != 0:
            raise SystemExit(f"training {run} failed (exit {code})")
    evaluation = run / "eval.json"
    if not evaluation.exists():
        code = bornfield(["train", "evaluate", "--dataset", str(dataset), "--split-key", "--subset", "test",
                          f"--{kind}", str(model), "--output", str(evaluation), "--figures-dir", str(run)])
        if code != 0:
            raise SystemExit(f"evaluating {run} failed (exit {code})")
    return evaluation


def run_records(spec: dict, evaluation: Path, frames: list, notes: str) -> list[dict]:
    """The design-note records of one run: its test metrics plus what it was trained on."""
    from bornfield.models import load_model

    kind = spec["kind"]
    train = [frames[i] for i in spec["train"]]
    dfpt = [a for a in train if "born_charges" in a.arrays]
    extra = {"dataset": "li3po4-ledger", "variant": spec["variant"], "repeat": spec["repeat"],
             "n_structures": len(train), "n_dfpt_structures": len(dfpt),
             "n_train_atoms": sum(len(a) for a in (dfpt if kind == "born" else train))}
    if spec["variant"] != "pretrained-only":
        model = load_model(Path(evaluation).parent / f"{kind}_0.pt", kind=kind)
        csv = (Path(evaluation).parent / f"{kind}_0.metrics.csv").read_text().splitlines()
        header = csv[0].split(",")
        seconds = sum(float(line.split(",")[header.index("seconds")]) for line in csv[1:])
        extra.update(max_epochs=spec["max_epochs"], epochs_run=int(model.metadata["epochs_run"]),
                     best_epoch=int(model.metadata["best_epoch"]), train_s=round(seconds, 1))
    wanted = METRICS[kind][:2] if spec["variant"] == "pretrained-only" else METRICS[kind]
    out = []
    for record in json.loads(evaluation.read_text()):
        if record["metric"] not in wanted:
            continue
        record = {**record, "n_test_structures": record.pop("n_structures"), "ranks": 1, "threads": 1,
                  "machine": MACHINE, "notes": notes, **extra}
        out.append(record)
    return out


def table(records: list[dict]) -> str:
    """Markdown tables of the test errors, mean over repeats (values of each repeat in brackets)."""

    def cell(rows, metric, digits):
        values = [r["value"] for r in sorted(rows, key=lambda r: r["repeat"]) if r["metric"] == metric]
        if not values:
            return "–"
        each = " / ".join(f"{v:.{digits}f}" for v in values)
        return f"{np.mean(values):.{digits}f} ({each})" if len(values) > 1 else each

    def groups(kind, variants):
        rows = [r for r in records if r["system"] == f"bornfield-{kind}" and r["variant"] in variants]
        for n in sorted({r["n_structures"] for r in rows}):
            yield n, [r for r in rows if r["n_structures"] == n]

    lines = ["| DFPT structures | training atoms | BEC RMSE all (e) | MAE all | RMSE diag | RMSE off-diag "
             "| MAE diag | MAE off-diag | row x RMSE |", "|---|---|---|---|---|---|---|---|---|"]
    for n, rows in groups("born", ("scratch",)):
        atoms = "/".join(sorted({str(r["n_train_atoms"]) for r in rows}, key=int))
        lines.append(f"| {n} | {atoms} | " + " | ".join(cell(rows, m, 4) for m in (
            "bec_rmse_e", "bec_mae_e", "bec_rmse_diag_e", "bec_rmse_offdiag_e", "bec_mae_diag_e",
            "bec_mae_offdiag_e", "bec_row_x_rmse_e")) + " |")
    lines += ["", "| structures (DFPT) | training atoms | force RMSE scratch (meV/Å) | force RMSE pre-trained "
              "| energy RMSE scratch (meV/atom) | energy RMSE pre-trained |", "|---|---|---|---|---|---|"]
    for n, rows in groups("potential", ("scratch", "pretrained", "pretrained-only")):
        by = {v: [r for r in rows if r["variant"] == v] for v in ("scratch", "pretrained", "pretrained-only")}
        pre = by["pretrained"] or by["pretrained-only"]
        dfpt = "/".join(sorted({str(r["n_dfpt_structures"]) for r in rows}, key=int))
        atoms = "/".join(sorted({str(r["n_train_atoms"]) for r in rows}, key=int))
        lines.append(f"| {n} ({dfpt}) | {atoms} | {cell(by['scratch'], 'force_rmse_meV_per_A', 1)} | "
                     f"{cell(pre, 'force_rmse_meV_per_A', 1)} | {cell(by['scratch'], 'energy_rmse_meV_per_atom', 2)} | "
                     f"{cell(by['pretrained'], 'energy_rmse_meV_per_atom', 2)} |")
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    """Two panels: Born RMSE vs DFPT structures; force RMSE vs structures, scratch vs pre-trained."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(metric, variant, x_key):
        rows = [r for r in records if r["metric"] == metric and r["variant"] == variant]
        xs = sorted({r[x_key] for r in rows})
        points = [(r[x_key], r["value"]) for r in rows]
        means = [np.mean([r["value"] for r in rows if r[x_key] == x]) for x in xs]
        return xs, means, points

    with_potential = any(r["metric"] == "force_rmse_meV_per_A" for r in records)
    fig, axes = plt.subplots(1, 2 if with_potential else 1, figsize=(10 if with_potential else 5.5, 4), squeeze=False)
    left = axes[0][0]
    for metric, label, style in (("bec_rmse_e", "all 9 components", "o-"),
                                 ("bec_row_x_rmse_e", "field-axis row x", "s--")):
        xs, means, points = series(metric, "scratch", "n_dfpt_structures")
        line, = left.plot(xs, means, style, label=f"{label} (mean)")
        left.scatter(*zip(*points), s=12, alpha=0.5, color=line.get_color())
    left.axhline(PAPER_BEC_E, color="grey", ls=":", label=f"paper, row ({PAPER_BEC_E} e)")
    left.axhline(TARGET_BEC_E, color="k", ls="-.", lw=0.8, label=f"issue 17 target ({TARGET_BEC_E} e)")
    left.set_xticks(sorted({r["n_dfpt_structures"] for r in records if r["metric"] == "bec_rmse_e"}))
    left.set_xlabel("DFPT-labelled training structures")
    left.set_ylabel("Born-charge test RMSE (e)")
    config = re.search(r"settings train\.\w+ of (\S+?),", next(r["notes"] for r in records if r["metric"] == "bec_rmse_e"))
    left.set_title("Born model (from scratch" + (f"; train.born of {config.group(1)})" if config else ")"), fontsize=10)
    left.set_ylim(bottom=0)
    left.legend(fontsize=7)
    test = {r["metric"]: f"{r['n_test_structures']} cells ({r['n_atoms']} atoms)" for r in records}
    if not with_potential:
        fig.suptitle(f"Li3PO4 ledger learning curve; fixed test set: {test['bec_rmse_e']} with DFPT labels", fontsize=10)
    else:
        right = axes[0][1]
        for variant, label in (("scratch", "from scratch"), ("pretrained", "pre-trained (CHGNet proxy) + fine-tuned")):
            xs, means, points = series("force_rmse_meV_per_A", variant, "n_structures")
            line, = right.plot(xs, means, "o-", label=f"{label} (mean)")
            right.scatter(*zip(*points), s=12, alpha=0.5, color=line.get_color())
        alone = [r["value"] for r in records if r["metric"] == "force_rmse_meV_per_A" and r["variant"] == "pretrained-only"]
        if alone:
            right.axhline(np.mean(alone), color="grey", ls=":", label="pre-trained only, no ledger data (mean)")
        right.set_xticks(sorted({r["n_structures"] for r in records
                                 if r["metric"] == "force_rmse_meV_per_A" and r["n_structures"]}))
        right.set_xlabel("training structures (DFT-labelled ledger entries)")
        right.set_ylabel("force test RMSE (meV/Å)")
        right.set_title("NN potential", fontsize=10)
        right.set_yscale("log")
        right.legend(fontsize=7)
        fig.suptitle(f"Li3PO4 ledger learning curve; fixed test set: {test['bec_rmse_e']} with DFPT labels, "
                     f"{test['force_rmse_meV_per_A']} for forces", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_ledger_run_arguments(parser, "learning_curve")
    parser.add_argument("--born-sizes", type=int, nargs="+", default=[1, 2, 4],
                        help="DFPT training structures per Born run (all of them is always added)")
    parser.add_argument("--potential-sizes", type=int, nargs="+", default=[2, 5, 10],
                        help="training structures per potential run (all of them is always added)")
    parser.add_argument("--kinds", nargs="+", default=["born", "potential"], choices=["born", "potential"],
                        help="which models get a learning curve")
    args = parse_ledger_run_arguments(parser)

    started = time.perf_counter()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    config = load_config(args.config)
    train = json.loads(json.dumps(config["train"]))
    train["threads"] = 1
    if args.max_epochs:
        for kind in ("potential", "born"):
            train[kind]["max_epochs"] = args.max_epochs
    settings = json.dumps({"train": train})
    dataset, frames, split = ledger_rows(args.ledger, args.manifest, work)
    (work / "pretrained").mkdir(exist_ok=True)
    pretrained = []
    for r, source in enumerate(args.pretrained[: args.repeats]):  # a copy: the source may be rebuilt meanwhile
        copy = work / "pretrained" / f"potential_{r}.pt"
        if not copy.exists():
            shutil.copyfile(source, copy)
        pretrained.append(copy)

    pools = {"born": [i for i in split["train"] if "born_charges" in frames[i].arrays], "potential": split["train"]}
    wanted = {"born": args.born_sizes, "potential": args.potential_sizes}
    specs = []
    for r in range(args.repeats):
        seed = int(config["seed"]) + r
        for kind in args.kinds:
            pool = pools[kind]
            order = np.random.default_rng(derived_seed(config["seed"], "learning-curve", kind, r)).permutation(pool)
            sizes = sorted({min(n, len(pool)) for n in wanted[kind]} | {len(pool)})
            variants = ("scratch", "pretrained") if kind == "potential" else ("scratch",)
            for n in sizes:
                for variant in variants:
                    init = str(pretrained[r]) if variant == "pretrained" else None
                    specs.append({"name": f"{kind}_{variant}_n{n:02d}_r{r}", "kind": kind, "variant": variant,
                                  "n": n, "repeat": r, "seed": seed, "train": sorted(int(i) for i in order[:n]),
                                  "init": init, "init_source": shown(args.pretrained[r]) if init else None,
                                  "init_sha256": sha256_of(init) if init else None,
                                  "max_epochs": int(train[kind]["max_epochs"]),
                                  "section": train[kind], "dataset_sha256": sha256_of(dataset)})
        if "potential" not in args.kinds:
            continue
        specs.append({"name": f"potential_pretrained-only_n00_r{r}", "kind": "potential",
                      "variant": "pretrained-only", "n": 0, "repeat": r, "seed": seed, "train": [],
                      "init": str(pretrained[r]), "init_source": shown(args.pretrained[r]),
                      "init_sha256": sha256_of(pretrained[r]),
                      "dataset_sha256": sha256_of(dataset)})
    print(f"learning curve: {len(frames)} ledger rows (train {len(split['train'])}, of them DFPT "
          f"{len(pools['born'])}; val {len(split['val'])}; test {len(split['test'])}); {len(specs)} runs in {work}",
          flush=True)

    notes_base = (f"ledger {shown(args.ledger)} rows of {shown(args.manifest)} (train {len(split['train'])}, val {len(split['val'])}, "
                  f"test {len(split['test'])} fixed); settings train.{{kind}} of {shown(args.config)}, member 0, torch threads 1"
                  + (f", max_epochs {args.max_epochs} for every run" if args.max_epochs else "")
                  + "; nested random subsets per repeat (repeat r: master seed config seed + r)")
    records = []
    for number, spec in enumerate(specs, 1):
        t0 = time.perf_counter()
        done = (work / spec["name"] / "eval.json").exists()
        print(f"[{number}/{len(specs)}] {spec['name']}: {'done' if done else 'running'} "
              f"({len(spec['train'])} training structures)", flush=True)
        evaluation = run_one(spec, dataset, split, settings, work)
        init = (f"; starts from {spec['init_source']} (sha256 {spec['init_sha256'][:12]}, pre-trained on the CHGNet proxy set)"
                if spec["init"] else "")
        notes = notes_base.replace("{kind}", spec["kind"]) + init
        records += run_records(spec, evaluation, frames, notes)
        main_metric = METRICS[spec["kind"]][0]
        value = next(r["value"] for r in records[::-1] if r["metric"] == main_metric)
        print(f"    {main_metric} {value:.4g}  ({time.perf_counter() - t0:.0f} s; load {os.getloadavg()[0]:.1f})",
              flush=True)
    out = Path(args.output)
    write_json(out, records)
    plot(records, out.with_suffix(".png"))
    print(table(records))
    print(f"wrote {out} ({len(records)} records) and {out.with_suffix('.png')} "
          f"in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
