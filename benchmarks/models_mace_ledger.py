"""Potential accuracy on the Li3PO4 DFT ledger: a shipped bornfield committee vs MACE converged on its split.

Issue 17 asks for a potential "force RMSE within 1.2x of converged MACE on the same split". The split is
the one a shipped model set was trained on: ``<models>/manifest.json`` -> ``source.dft_ids`` lists the
ledger entries (``dft_id``) of its train, val and test sets. This harness takes exactly those ledger
rows (``bornfield.train.shipped.model_set_rows``; entries added to the ledger later are ignored) and

* evaluates the SHIPPED potential committee on the test rows: every member and the committee mean
  (energies and forces averaged over the members, as MD and ``bornfield train evaluate`` use it);
* trains MACE (``mace-torch`` 0.3.16 in ``benchmarks/.venv-mace``, see ``models_mace.py``) from
  scratch on the train rows, validated on the val rows, in two sizes (hidden irreps
  32x0e+32x1o = ``models_mace.py``'s small model, and 64x0e+64x1o), one torch thread, batch size 2;
* computes every error with one function (``models_mace.error_table``): energy and force RMSE/MAE,
  stress RMSE, overall and per config_type. Charged cells (vacancy/interstitial, ``info["charge"]``)
  enter force errors only, and MACE is given their forces only, as bornfield's
  ``charged_cells: forces_only``; MACE's E0s are the least-squares fit on the neutral train cells.

Convergence rule. MACE's own recipe: stage one (loss weights energy 1, forces 100, stress 10; Adam
lr 0.01 falling by 0.8 after ``--scheduler-patience`` epochs without validation improvement; EMA
0.99), then "stage two" (``--swa``) for the last quarter of the budget (energy weight 1000, lr 1e-3);
the final model is the EMA weights of stage two's last epoch (with a checkpoint every epoch, MACE's
``load_latest`` picks the last one). mace-torch 0.3.16's ``--patience``
only logs and does not stop a single-process run, so training runs a fixed budget (``--epochs``).
The validation set is a few cells (the split's validation rows), a noisy stopping signal, so the rule is
judged on the recorded curves, not one number: the run counts as converged when, in each stage, the best
validation loss of the stage's last quarter improves on the best before it by less than
``PLATEAU_TOLERANCE`` (``stage_*_val_gain_last_quarter``). Best epoch, best and final validation loss
per stage and wall time are recorded; the curves are plotted.

    .venv/bin/python benchmarks/models_mace_ledger.py --models models/li3po4 --ledger data/ledger \
        [--epochs 100] [--sizes small,large]

Writes ``benchmarks/results/models_mace_ledger.json`` (design-note records, ``dataset``
"li3po4-ledger", MACE ``baseline: true``, plus a ``force_rmse_ratio`` record per MACE size),
``models_mace_ledger_parity.png`` and ``models_mace_ledger_curves.png``. Trained MACE models and
logs stay in ``benchmarks/work/models_mace_ledger/<split key>`` (one directory per split: the sha256
prefix of the manifest's ``source.dft_ids``) and are reused if present. Training can be interrupted
and resumed: MACE writes a checkpoint every epoch, and a rerun continues from the latest one
(``--restart_latest``; the epochs after the latest checkpoint are repeated; wall and CPU time add up,
and the records give both, since the machine is shared).
A run longer than one session is split by ``--max-hours``: training stops after that wall time (MACE is
killed; its newest checkpoint, possibly half-written, is dropped, so one more epoch repeats). What a
rerun needs (per run and stage the latest checkpoint, 4.9 MB for the small model; the curves, about
5 kB per epoch; final models, test predictions and ``timings.json``) is copied after every training
call to ``--state`` (``benchmarks/state/models_mace_ledger/<split key>``, committed), and a work
directory without such files is filled from there: a fresh clone resumes where the last committed
state stopped.
A finished run that the rule does not call converged is continued with a larger budget by
``--extend``: stage one resumes from its last checkpoint and runs on to the new stage-two start; the
old stage two (its checkpoints, models and curve rows) is moved to ``mace/budget-<old epochs>/``.
``--kept-budget N`` evaluates that kept N-epoch run (its stage-two model, curve and test predictions)
without training, e.g. to compare a new model set on the same split while the extension is unfinished.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from models_mace import (  # same directory
    MACE_ARCH,
    MACE_OPTIM,
    count_parameters_bornfield,
    count_parameters_mace,
    ensure_mace_venv,
    error_table,
    mace_predict,
    mace_train_command,
    parity_plot,
    print_tables,
    to_records,
    write_mace_split,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKDIR = HERE / "work" / "models_mace_ledger"
STATE = HERE / "state" / "models_mace_ledger"
DATASET = "li3po4-ledger"
MACE_SYSTEM = "mace-0.3.16"
# model sizes: overrides of models_mace.MACE_ARCH
MACE_SIZES = {"small": {}, "large": {"hidden_irreps": "64x0e+64x1o", "MLP_irreps": "16x0e"}}
# small-data training: bornfield's ledger batch size; validation every epoch
LEDGER_OPTIM = {"batch_size": 2, "valid_batch_size": 2}
PLATEAU_TOLERANCE = 0.02


# ============================================================================ data
def ledger_samples(ledger: Path, models_dir: Path):
    """The model set's ledger rows as samples (train, then val, then test rows) and the split as indices into them."""
    from bornfield.errors import InputFileError
    from bornfield.train.data import SPLIT_NAMES, samples_of
    from bornfield.train.shipped import model_set_rows

    try:
        rows = model_set_rows(ledger, models_dir)
    except InputFileError as exc:
        raise SystemExit(str(exc)) from exc
    empty = [name for name in SPLIT_NAMES if not rows[name]]
    if empty:
        raise SystemExit(f"{models_dir / 'manifest.json'}: source.dft_ids lists no {' and no '.join(empty)} rows")
    frames = [atoms for name in SPLIT_NAMES for atoms in rows[name]]
    samples = samples_of(frames, f"ledger {ledger}")
    split, start = {}, 0
    for name in SPLIT_NAMES:
        split[name] = list(range(start, start + len(rows[name])))
        start += len(rows[name])
    return samples, split


def check_test_file(models_dir: Path, test_ids: list[str]) -> None:
    """The model set's own ``test.extxyz`` must hold the manifest's test dft_ids (same rows)."""
    from ase.io import read

    path = models_dir / "test.extxyz"
    if path.is_file():
        held = sorted(str(a.info.get("dft_id")) for a in read(path, index=":"))
        if held != sorted(test_ids):
            raise SystemExit(f"{path}: dft_ids {held} differ from manifest source.dft_ids.test {sorted(test_ids)}")


def neutral_e0s(samples, indices: list[int]) -> dict[int, float]:
    """Least-squares energy per element (eV) over the neutral cells of ``indices``.

    MACE's ``E0s: average`` without the charged cells (their energies are not given to MACE).
    """
    import numpy as np

    rows = [samples[k] for k in indices if samples[k].charge == 0 and samples[k].energy is not None]
    zs = sorted({int(z) for s in rows for z in s.atoms.numbers})
    every = sorted({int(z) for k in indices for z in samples[k].atoms.numbers})
    if every != zs:
        raise SystemExit(f"atomic numbers {sorted(set(every) - set(zs))} occur only in charged train cells: "
                         "no E0 for them")
    a = np.array([[np.count_nonzero(s.atoms.numbers == z) for z in zs] for s in rows], dtype=float)
    e0 = np.linalg.lstsq(a, np.array([s.energy for s in rows]), rcond=None)[0]
    return {z: float(v) for z, v in zip(zs, e0)}


# ============================================================================ MACE training curve
def read_curve(results_txt: Path) -> dict:
    """MACE's ``results/*_train.txt`` -> per-epoch validation loss / force RMSE and mean training loss."""
    val, train = {}, {}
    lines = results_txt.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the line a killed run was writing
                continue
            raise SystemExit(f"{results_txt}: line {number} is not JSON: {line[:80]!r}") from None
        if row.get("mode") == "eval" and row.get("epoch") is not None:
            val[int(row["epoch"])] = (float(row["loss"]), float(row.get("rmse_f", float("nan"))) * 1000.0)
        elif row.get("mode") == "opt":
            train.setdefault(int(row["epoch"]), []).append(float(row["loss"]))
    epochs = sorted(val)
    return {"epoch": epochs, "val_loss": [val[e][0] for e in epochs],
            "val_force_rmse_meV_per_A": [val[e][1] for e in epochs],
            "train_epoch": sorted(train), "train_loss": [sum(train[e]) / len(train[e]) for e in sorted(train)]}


def stage_two_start(epochs: int) -> int:
    """First epoch of stage two in a budget of ``epochs`` (MACE's own default start)."""
    return epochs // 4 * 3


def extend_budget(mace_dir: Path, name: str, seed: int, old_epochs: int) -> None:
    """Move a finished run's stage two aside (``mace_dir/budget-<old_epochs>``) so stage one resumes.

    MACE's ``--restart_latest`` loads the latest stage-two (``_swa``) checkpoint when there is one;
    without them it loads the latest stage-one checkpoint. The curve file keeps its stage-one rows.
    """
    import shutil

    aside = mace_dir / f"budget-{old_epochs}"
    aside.mkdir(exist_ok=True)
    old_stage_two = stage_two_start(old_epochs)
    moved = sorted((mace_dir / "checkpoints").glob(f"{name}_run-{seed}_epoch-*_swa.pt"))
    moved += [p for p in (mace_dir / f"{name}.model", mace_dir / f"{name}_compiled.model",
                          mace_dir / f"{name}_stagetwo.model", mace_dir / f"{name}_stagetwo_compiled.model",
                          mace_dir / f"{name}_test_pred.npz", mace_dir / "checkpoints" / f"{name}_run-{seed}.model")
              if p.is_file()]
    for path in moved:
        shutil.move(path, aside / path.name)
    curve = mace_dir / "results" / f"{name}_run-{seed}_train.txt"
    shutil.copy2(curve, aside / curve.name)
    epochs = [(line, json.loads(line).get("epoch")) for line in curve.read_text().splitlines()]
    rows = [line for line, epoch in epochs if epoch is None or int(epoch) < old_stage_two]
    curve.write_text("".join(line + "\n" for line in rows))
    print(f"extending {name} beyond {old_epochs} epochs: {len(moved)} stage-two files moved to {aside}", flush=True)


def children_cpu_s() -> float:
    """User + system CPU seconds of this process's finished children (MACE's training runs)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def latest_checkpoints(checkpoints: Path) -> list[Path]:
    """Per run tag and stage (``_swa`` or not) the checkpoint of the highest epoch in ``checkpoints``."""
    import re

    latest: dict[tuple[str, bool], tuple[int, Path]] = {}
    for path in checkpoints.glob("*.pt"):
        match = re.fullmatch(r"(?P<tag>.+)_epoch-(?P<epoch>\d+)(?P<swa>_swa)?\.pt", path.name)
        if match:
            key = (match["tag"], bool(match["swa"]))
            if key not in latest or int(match["epoch"]) > latest[key][0]:
                latest[key] = (int(match["epoch"]), path)
    return sorted(path for _, path in latest.values())


def drop_newest_checkpoint(checkpoints: Path) -> None:
    """After a killed run: delete the most recently written checkpoint (it may be half-written)."""
    paths = list(checkpoints.glob("*.pt"))
    if paths:
        newest = max(paths, key=lambda p: p.stat().st_mtime)
        newest.unlink()
        print(f"dropped the newest checkpoint {newest.name} of the interrupted run", flush=True)


def state_files(work: Path) -> list[Path]:
    """Files of ``work`` (one split's directory) that resume or re-evaluate its MACE runs, relative to it."""
    mace = work / "mace"
    keep = [work / "timings.json", *latest_checkpoints(mace / "checkpoints")]
    for directory in (mace, mace / "results", *sorted(mace.glob("budget-*"))):
        keep += [p for p in directory.glob("*") if p.is_file() and not p.name.endswith("_compiled.model")
                 and (p.suffix in (".model", ".npz") or p.name.endswith("_train.txt"))]
    return sorted(p.relative_to(work) for p in keep if p.is_file())


def save_state(work: Path, state: Path) -> None:
    """Replace ``state`` by a copy of :func:`state_files` of ``work`` (written aside, then swapped in)."""
    import shutil

    fresh = state.with_name(f".{state.name}.new")
    shutil.rmtree(fresh, ignore_errors=True)
    for rel in state_files(work):
        (fresh / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(work / rel, fresh / rel)
    old = state.with_name(f".{state.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if state.exists():
        state.rename(old)
    fresh.rename(state)
    shutil.rmtree(old, ignore_errors=True)
    size = sum(p.stat().st_size for p in state.rglob("*") if p.is_file())
    print(f"MACE state saved to {shown(state)} ({size / 1e6:.1f} MB): commit it to resume elsewhere", flush=True)


def restore_state(state: Path, work: Path) -> None:
    """Fill a work directory that holds no MACE run (none of :func:`state_files`; split files alone do
    not count) from a saved ``state`` (nothing if there is none)."""
    import shutil

    if state_files(work) or not state.is_dir():
        return
    shutil.copytree(state, work, dirs_exist_ok=True)
    print(f"MACE work restored from {shown(state)}", flush=True)


def convergence(curve: dict, stage_two: int) -> dict:
    """Best epoch and the plateau figures of the docstring's rule, per stage (stage two from epoch ``stage_two``)."""
    import numpy as np

    epochs = np.array(curve["epoch"])
    val = np.array(curve["val_loss"])
    force = np.array(curve["val_force_rmse_meV_per_A"])
    out = {"epochs_run": int(len(epochs)), "stage_two_epoch": int(stage_two)}
    for stage, mask in (("stage_one", epochs < stage_two), ("stage_two", epochs >= stage_two)):
        v, e, f = val[mask], epochs[mask], force[mask]
        if len(v) < 4:
            raise SystemExit(f"MACE curve has {len(v)} validation points in {stage}: raise --epochs")
        q = max(1, len(v) // 4)
        before, last = v[:-q].min(), v[-q:].min()
        best = int(np.argmin(v))
        out.update({f"{stage}_best_epoch": int(e[best]), f"{stage}_best_val_loss": float(v[best]),
                    f"{stage}_final_val_loss": float(v[-1]), f"{stage}_best_val_force_rmse_meV_per_A": float(f[best]),
                    f"{stage}_val_gain_last_quarter": float((before - last) / before)})
    out["converged"] = bool(out["stage_one_val_gain_last_quarter"] < PLATEAU_TOLERANCE
                            and out["stage_two_val_gain_last_quarter"] < PLATEAU_TOLERANCE)
    return out


def curves_plot(curves: dict[str, dict], stage_two: int, n_val: int, path: Path) -> None:
    """Validation loss, mean training loss and validation force RMSE per epoch; dashed: start of stage two."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax in axes:
        ax.axvline(stage_two, color="grey", lw=0.8, ls="--")
    for name, c in curves.items():
        axes[0].semilogy(c["epoch"], c["val_loss"], label=f"{name} validation")
        axes[0].semilogy(c["train_epoch"], c["train_loss"], lw=0.7, alpha=0.7, label=f"{name} train (epoch mean)")
        axes[1].plot(c["epoch"], c["val_force_rmse_meV_per_A"], label=name)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("MACE loss (EMA weights on validation)")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("validation force RMSE (meV/Å)")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"MACE on the Li3PO4 ledger split ({n_val} validation cells)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def shown(path: str | Path) -> str:
    """``path`` relative to the repository if inside it (records carry no machine paths)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def split_key(models: Path) -> str:
    """sha256 prefix of a model set's ``source.dft_ids``: MACE work of one split never serves another."""
    import hashlib

    dft_ids = json.loads((models / "manifest.json").read_text())["source"]["dft_ids"]
    return hashlib.sha256(json.dumps(dft_ids, sort_keys=True).encode()).hexdigest()[:12]


def force_ratio(tables: dict[str, dict], system: str) -> float:
    """Test force RMSE of the shipped committee over that of ``system`` (all cells)."""
    return tables["bornfield-potential"]["all"]["force_rmse_meV_per_A"] / tables[system]["all"]["force_rmse_meV_per_A"]


# ============================================================================ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models" / "li3po4", help="shipped model set")
    parser.add_argument("--ledger", type=Path, default=ROOT / "data" / "ledger")
    parser.add_argument("--epochs", type=int, default=100, help="MACE epoch budget (see the convergence rule)")
    parser.add_argument("--extend", action="store_true",
                        help="continue a finished run with the larger --epochs (stage one resumes; see the docstring)")
    parser.add_argument("--kept-budget", type=int, default=None,
                        help="evaluate the finished run of this budget kept in mace/budget-N by --extend; no training")
    parser.add_argument("--scheduler-patience", type=int, default=10, help="MACE ReduceLROnPlateau patience (epochs)")
    parser.add_argument("--sizes", default="small,large", help=f"MACE sizes, of {sorted(MACE_SIZES)}")
    parser.add_argument("--seed", type=int, default=20231)
    parser.add_argument("--workdir", type=Path, default=WORKDIR)
    parser.add_argument("--state", type=Path, default=STATE,
                        help="committed MACE state, one directory per split key (see the docstring)")
    parser.add_argument("--max-hours", type=float, default=None,
                        help="stop MACE training after this wall time (h); a rerun resumes")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "models_mace_ledger.json")
    args = parser.parse_args()
    sizes = [s for s in args.sizes.split(",") if s]
    if not sizes or any(s not in MACE_SIZES for s in sizes):
        raise SystemExit(f"--sizes {args.sizes!r}: expected a comma list of {sorted(MACE_SIZES)}")

    import torch

    from bornfield.models import load_potential
    from bornfield.structures.io import write_json_atomic
    from bornfield.train.metrics import predict_potential

    torch.set_num_threads(1)
    started = time.time()
    samples, split = ledger_samples(args.ledger, args.models)
    work = args.workdir / split_key(args.models)
    work.mkdir(parents=True, exist_ok=True)
    restore_state(args.state / work.name, work)
    check_test_file(args.models, [str(samples[i].atoms.info["dft_id"]) for i in split["test"]])
    test = [samples[i] for i in split["test"]]
    timings = json.loads((work / "timings.json").read_text()) if (work / "timings.json").is_file() else {}

    # --- the shipped bornfield committee: every member and the mean (as MD uses it)
    manifest = json.loads((args.models / "manifest.json").read_text())
    member_files = [args.models / m["file"] for m in manifest["members"]["potential"]]
    members = [load_potential(p) for p in member_files]
    preds = {"bornfield-potential": predict_potential(members, test)}
    for k, m in enumerate(members):
        preds[f"bornfield-potential-member-{k}"] = predict_potential([m], test)
    tables = {name: error_table(test, pred) for name, pred in preds.items()}
    recorded = {r["metric"]: r["value"] for r in json.loads((args.models / "metrics.json").read_text())
                if r.get("system") == "bornfield-potential"} if (args.models / "metrics.json").is_file() else {}
    for metric in ("force_rmse_meV_per_A", "energy_rmse_meV_per_atom"):
        if metric in recorded and abs(tables["bornfield-potential"]["all"][metric] / recorded[metric] - 1) > 1e-3:
            raise SystemExit(f"{args.models / 'metrics.json'}: {metric} {recorded[metric]} but this evaluation gives "
                             f"{tables['bornfield-potential']['all'][metric]} on the same test rows")

    # --- MACE, from scratch on the train rows, each size
    ensure_mace_venv()
    paths = write_mace_split(samples, split, work)
    e0s = neutral_e0s(samples, split["train"])
    curves, conv, mace_params = {}, {}, {}
    epochs = args.kept_budget or args.epochs
    stage_two = stage_two_start(epochs)
    run_dir = work / "mace" / (f"budget-{args.kept_budget}" if args.kept_budget else "")
    for size in sizes:
        name = f"ledger_mace_{size}"
        model = run_dir / f"{name}_stagetwo.model"  # with --swa, <name>.model is stage one's best
        if args.kept_budget and not model.is_file():
            raise SystemExit(f"--kept-budget {args.kept_budget}: no {model} (kept runs: "
                             f"{sorted(p.name for p in (work / 'mace').glob('budget-*'))})")
        options = {**LEDGER_OPTIM, **MACE_SIZES[size], "scheduler_patience": args.scheduler_patience,
                   "swa": True, "start_swa": stage_two,
                   "E0s": json.dumps({str(z): v for z, v in e0s.items()}).replace('"', "")}
        if args.kept_budget:
            pass
        elif args.extend and timings.get(f"mace_{size}_epochs", args.epochs) < args.epochs:
            extend_budget(work / "mace", name, args.seed, timings[f"mace_{size}_epochs"])
            timings[f"mace_{size}_extended_from_epochs"] = timings[f"mace_{size}_epochs"]
            timings[f"mace_{size}_epochs"] = args.epochs
            write_json_atomic(work / "timings.json", timings)
        if not model.is_file():
            if timings.get(f"mace_{size}_epochs", args.epochs) != args.epochs:
                raise SystemExit(f"{work}: MACE {size} was started with --epochs {timings[f'mace_{size}_epochs']}; "
                                 f"resume with that budget or remove {work / 'mace'}")
            resume = any((work / "mace" / "checkpoints").glob(f"{name}_run-{args.seed}_epoch-*.pt"))
            options = {**options, "save_all_checkpoints": True, **({"restart_latest": True} if resume else {})}
            t0, cpu0 = time.perf_counter(), children_cpu_s()
            left = None if args.max_hours is None else args.max_hours * 3600.0 - (time.time() - started)
            if left is not None and left <= 0:
                raise SystemExit(f"--max-hours {args.max_hours} used up before MACE {size}: rerun to go on")
            stopped = False
            with open(work / "mace" / f"{name}.log", "a") as log:
                command = mace_train_command(paths, work, args.epochs, args.seed, name=name, options=options)
                try:
                    subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, timeout=left,
                                   env=dict(os.environ, OMP_NUM_THREADS="1"))
                except subprocess.TimeoutExpired:
                    stopped = True
                    drop_newest_checkpoint(work / "mace" / "checkpoints")
                finally:  # an interrupted run's time counts when it is resumed
                    timings[f"mace_{size}_train_s"] = timings.get(f"mace_{size}_train_s", 0.0) + time.perf_counter() - t0
                    timings[f"mace_{size}_train_cpu_s"] = (timings.get(f"mace_{size}_train_cpu_s", 0.0)
                                                           + children_cpu_s() - cpu0)
                    timings[f"mace_{size}_epochs"] = args.epochs
                    timings[f"mace_{size}_sessions"] = timings.get(f"mace_{size}_sessions", 0) + 1
                    write_json_atomic(work / "timings.json", timings)
                    save_state(work, args.state / work.name)
            if stopped:
                done = read_curve(work / "mace" / "results" / f"{name}_run-{args.seed}_train.txt")["epoch"]
                raise SystemExit(f"MACE {size} stopped after --max-hours {args.max_hours} at epoch "
                                 f"{max(done, default=-1) + 1} of {args.epochs}: commit {shown(args.state)} "
                                 "and rerun the same command to resume")
        if not model.is_file():
            raise SystemExit(f"MACE training finished without {model}: see {work / 'mace' / (name + '.log')}")
        system = f"{MACE_SYSTEM}-{size}"
        curve_dir = run_dir if args.kept_budget else work / "mace" / "results"
        curves[system] = read_curve(curve_dir / f"{name}_run-{args.seed}_train.txt")
        conv[system] = convergence(curves[system], stage_two)
        mace_params[system] = count_parameters_mace(model)
        preds[system] = mace_predict(model, paths["test"], run_dir / f"{name}_test_pred.npz")
        tables[system] = error_table(test, preds[system])

    # --- records
    n_sub = {k: len(v) for k, v in split.items()}
    common = (f"{DATASET}: {shown(args.ledger)} rows named by {shown(args.models)}/manifest.json source.dft_ids "
              f"({n_sub['train']}/{n_sub['val']}/{n_sub['test']} train/val/test); energy and stress errors on "
              "neutral cells only, charged cells enter forces only")
    extra = {"dataset": DATASET, "models": shown(args.models)}
    bf = manifest["members"]["potential"][0]["training"]["train_settings"]
    recipe = (f"architecture {members[0].hyperparameters.get('architecture', 'density')}, "
              + ("pre-trained on other labels, then trained" if "initial_model" in members[0].metadata
                 else "trained from scratch") + " on the train rows")
    records = to_records(tables["bornfield-potential"], "bornfield-potential", False,
                         f"{common}; shipped committee of {len(members)} (mean of energies and forces, as MD); "
                         f"{recipe} (channels {bf['channels']}, best epochs of the last stage "
                         f"{[m['training']['best_epoch'] for m in manifest['members']['potential']]})",
                         {**extra, "committee": len(members),
                          "n_parameters": count_parameters_bornfield(member_files[0])})
    for k in range(len(members)):
        records += to_records(tables[f"bornfield-potential-member-{k}"], f"bornfield-potential-member-{k}", False,
                              f"{common}; member {k} ({member_files[k].name}) alone", {**extra, "committee": 1})
    for size in sizes:
        system = f"{MACE_SYSTEM}-{size}"
        c = conv[system]
        arch = {**MACE_ARCH, **MACE_SIZES[size]}
        records += to_records(
            tables[system], system, True,
            f"{common}; MACE from scratch on the train rows, {epochs}-epoch budget, EMA weights of "
            f"the last epoch (stage two from epoch {stage_two}, its best validation epoch "
            f"{c['stage_two_best_epoch']}), "
            f"converged={c['converged']} by the rule of models_mace_ledger.py; "
            f"MACE {arch}, {MACE_OPTIM} with {LEDGER_OPTIM}, scheduler_patience {args.scheduler_patience}, "
            f"E0s least squares on neutral train cells {e0s}",
            {**extra, **c, "epochs": epochs,
             # a kept run's own wall time is not separated from the extension's in timings.json
             "train_wall_s": None if args.kept_budget else round(timings.get(f"mace_{size}_train_s", float("nan")), 1),
             "train_cpu_s": None if args.kept_budget else round(timings.get(f"mace_{size}_train_cpu_s", float("nan")), 1),
             "n_parameters": mace_params[system]})
        ratio = force_ratio(tables, system)
        records.append({"metric": "force_rmse_ratio", "value": ratio, "unit": "1",
                        "system": f"bornfield-potential / {system}", "n_atoms": tables[system]["all"]["n_atoms"],
                        "ranks": 1, "threads": 1, "baseline": False, "date": dt.date.today().isoformat(),
                        "machine": records[0]["machine"], "split": "test", "config_type": "all",
                        "n_structures": len(test), **extra,
                        "notes": f"{common}; force RMSE of the shipped committee over MACE's (issue 17: <= 1.2)"})
    write_json_atomic(args.output, records)
    parity_plot(test, {k: preds[k] for k in ("bornfield-potential", *[f"{MACE_SYSTEM}-{s}" for s in sizes])}, tables,
                args.output.with_name(f"{args.output.stem}_parity.png"), reference="DFT",
                title=f"Li3PO4 ledger test rows of {args.models.name} ({len(test)} cells; DFT labels)")
    curves_plot(curves, stage_two, len(split["val"]), args.output.with_name(f"{args.output.stem}_curves.png"))
    write_json_atomic(work / "curves.json", curves)

    print_tables(tables)
    for system, c in conv.items():
        ratio = force_ratio(tables, system)
        print(f"{system}: {json.dumps(c)}; force RMSE ratio bornfield/MACE {ratio:.2f}")
    print(json.dumps(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
