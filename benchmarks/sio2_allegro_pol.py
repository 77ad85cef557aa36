"""Born-charge accuracy on outside data: finite-field QE Born charges of allegro-pol (SiO2, BaTiO3).

Data (not in this repository, not fetched at run time), from the public GitHub repository
mir-group/allegro-pol (MIT licence, commit 7748968):

* ``--system SiO2`` (default): ``scripts/2.ParseQE/SiO2/SiO2.xyz`` (3.5 MB), 201 frames of 72-atom
  alpha-quartz (300 K and 600 K MD snapshots, one orthorhombic cell); sha256
  b6ff24426d63deaf762922ebeddd3c760462f3acfd29f9a074f95e25d0972e53.
* ``--system BaTiO3``: ``scripts/2.ParseQE/BaTiO3/BaTiO3.xyz`` (2.3 MB), 73 frames of a
  135-atom (3x3x3) BaTiO3 cell.

Both hold QE PBE finite-field labels: ``born_charge`` (9 floats per atom,
``q[atom, i, j] = (F_j(E_i) - F_j(0)) / E_i``, so rows are the field index, our
``Z[atom, α, β]``), forces (eV/Å), ``total_energy`` (eV), ``polarization`` (e·Å)
and ``polarizability``. ``--predictions scripts/3.Parity/<system>/<system>-ML.xyz`` (same
repository) holds allegro-pol's own predictions on every frame (its parity-plot file); they are
scored on the same test frames as a baseline record, "allegro-pol (repository predictions)".
Which frames allegro-pol trained on is not stated there, so that row may include training frames.

Steps:

1. convert to bornfield's extxyz convention (``born_charges``, ``energy``,
   ``forces``, ``config_type``) and check the index order against the data's own
   polarization: between frames, ``ΔP_α ≈ Σ_k Z_k[α, β] Δu_kβ`` (Z averaged over the
   two frames, minimum-image displacements); the field-row reading must beat the
   transposed one, else the run stops;
2. seeded split by frame: 20 % test, 10 % validation, 70 % training, written as
   ``info["split"]`` into ``<workdir>/<system>.extxyz`` (lower case; the trainer honours it);
3. ``bornfield train born`` (each named variant) and ``bornfield train baseline``
   (paper-style rows, one per field axis), then ``bornfield train evaluate`` on the
   test frames; records (``dataset: "allegro-pol-SiO2"`` or ``"allegro-pol-BaTiO3"``, the
   command in ``notes``) go to ``benchmarks/results/sio2_allegro_pol.json`` (BaTiO3:
   ``batio3_allegro_pol.json``); each variant's per-epoch training and validation errors to
   ``<output>_curves/<variant>.metrics.csv`` (plotted in ``<output>_curves.png``).

    nice -n 10 .venv/bin/python benchmarks/sio2_allegro_pol.py --data /path/to/SiO2.xyz \
        [--system SiO2|BaTiO3] [--predictions /path/to/SiO2-ML.xyz] \
        [--variant default legacy] [--baseline | --baseline-files X Y Z] [--model NAME FILE.pt|FILE.ckpt] \
        [--max-epochs N] [--workdir benchmarks/work/<system>] [--seed 7]
    python benchmarks/sio2_allegro_pol.py --plot-curves   # redraw the training curves only

A variant is a name of :data:`VARIANTS` (train.born settings merged over the
schema defaults; a variant's own ``max_epochs`` wins over ``--max-epochs``); ``--model`` evaluates a model trained elsewhere (or the best
state of a training checkpoint) on the same test frames. Records of a system
replace that system's earlier records in the JSON.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
from ase.io import read, write

from bornfield import atomic
from bornfield.cli import main as bornfield

HERE = Path(__file__).resolve().parent
#: the outside sets: dataset name of the records, config_type of the frames, file in allegro-pol
SYSTEMS: dict[str, dict[str, str]] = {
    "SiO2": {"dataset": "allegro-pol-SiO2", "config_type": "alpha_quartz",
             "file": "scripts/2.ParseQE/SiO2/SiO2.xyz", "output": "sio2_allegro_pol.json"},
    "BaTiO3": {"dataset": "allegro-pol-BaTiO3", "config_type": "batio3",
               "file": "scripts/2.ParseQE/BaTiO3/BaTiO3.xyz", "output": "batio3_allegro_pol.json"},
}
DATASET = SYSTEMS["SiO2"]["dataset"]
PREDICTIONS_SYSTEM = "allegro-pol (repository predictions)"

#: Born-model settings compared on this set (train.born keys over the schema defaults).
#: "legacy" is the model and schedule before issue 17 (one density, Adam at 0.005, no
#: warm-up, clipping or weight averaging); "one-interaction" isolates the schedule.
#: "edge*" use the edge architecture (``edge3``: 3 edge layers), "polar*" the polar one (Z = dP/dr), ``b1`` batch size 1, ``lr5``
#: learning rate 0.005, all with the cosine schedule, ``-e<N>`` N epochs, ``-wide`` 16 channels and latent 64, ``-r6`` a
#: 6 Å cutoff (train.cutoff; 5 Å otherwise); "default-b1-lr5" is the default
#: architecture with that schedule ("-nosquash": without ``feature_squash``, the default before 2026-12-04;
#: the record "default-b1-lr5" of 2026-12-04 and earlier predates it too).
VARIANTS: dict[str, dict] = {
    "default": {},
    "legacy": {"interactions": 1, "learning_rate": 0.005, "warmup_epochs": 0, "grad_clip": 0.0, "ema_decay": 0.0},
    "one-interaction": {"interactions": 1},
    "default-b1-lr5": {"batch_size": 1, "learning_rate": 0.005, "lr_schedule": "cosine", "patience": 1000},
    "default-b1-lr5-nosquash": {"batch_size": 1, "learning_rate": 0.005, "lr_schedule": "cosine", "patience": 1000,
                                "feature_squash": False},
    "default-b1-lr5-e200": {"batch_size": 1, "learning_rate": 0.005, "lr_schedule": "cosine", "patience": 1000,
                            "max_epochs": 200},
    "edge": {"architecture": "edge", "edge_layers": 2, "lr_schedule": "cosine", "patience": 1000},
    "edge-b1": {"architecture": "edge", "edge_layers": 2, "batch_size": 1, "lr_schedule": "cosine", "patience": 1000},
    "edge-b1-lr5": {"architecture": "edge", "edge_layers": 2, "batch_size": 1, "learning_rate": 0.005,
                    "lr_schedule": "cosine", "patience": 1000},
    "edge3-b1-lr5": {"architecture": "edge", "edge_layers": 3, "batch_size": 1, "learning_rate": 0.005,
                     "lr_schedule": "cosine", "patience": 1000},
    "edge3-b1-lr5-wide": {"architecture": "edge", "edge_layers": 3, "batch_size": 1, "learning_rate": 0.005,
                          "lr_schedule": "cosine", "patience": 1000, "channels": 16, "radial_hidden": 64},
    "edge3-b1-lr5-e180": {"architecture": "edge", "edge_layers": 3, "batch_size": 1, "learning_rate": 0.005,
                          "lr_schedule": "cosine", "patience": 1000, "max_epochs": 180},
    "polar-b1-lr5": {"architecture": "polar", "edge_layers": 2, "batch_size": 1, "learning_rate": 0.005,
                     "lr_schedule": "cosine", "patience": 1000},
    "polar-b1-lr5-e100": {"architecture": "polar", "edge_layers": 2, "batch_size": 1, "learning_rate": 0.005,
                          "lr_schedule": "cosine", "patience": 1000, "max_epochs": 100},
    "polar-b1-lr5-e200": {"architecture": "polar", "edge_layers": 2, "batch_size": 1, "learning_rate": 0.005,
                          "lr_schedule": "cosine", "patience": 1000, "max_epochs": 200},
    "polar-b1-lr5-wide": {"architecture": "polar", "edge_layers": 2, "batch_size": 1, "learning_rate": 0.005,
                          "lr_schedule": "cosine", "patience": 1000, "channels": 16, "radial_hidden": 64},
    "polar-b1-lr5-r6": {"architecture": "polar", "edge_layers": 2, "batch_size": 1, "learning_rate": 0.005,
                        "lr_schedule": "cosine", "patience": 1000, "cutoff": 6.0},
}
#: variant keys that are train-level settings (train.<key>), not train.born ones
TRAIN_KEYS = ("cutoff",)
BASELINE_SETTINGS: dict = {}


def convert(path: Path, system: str = "SiO2") -> list:
    """Frames of an allegro-pol data file with bornfield's label keys (Z[atom, field α, force β] in e)."""
    frames = read(path, index=":", format="extxyz")
    out = []
    for k, atoms in enumerate(frames):
        if "born_charge" not in atoms.arrays:
            raise ValueError(f"{path} frame {k}: no 'born_charge' array (is this allegro-pol's {system}.xyz?)")
        results = atoms.calc.results if atoms.calc is not None else {}
        new = atoms.copy()
        for key in list(new.arrays):
            if key not in ("numbers", "positions"):
                del new.arrays[key]
        new.info = {
            "config_type": SYSTEMS[system]["config_type"],
            "source": f"allegro-pol {system}.xyz frame {k}",
            "original_dataset_index": int(atoms.info.get("original_dataset_index", k)),
            "energy": float(atoms.info["total_energy"]),
            "polarization_eA": [float(v) for v in results["polarization"]],
        }
        new.arrays["forces"] = np.asarray(results["forces"], dtype=float)
        new.arrays["born_charges"] = np.asarray(atoms.arrays["born_charge"], dtype=float).reshape(-1, 9)
        out.append(new)
    return out


def index_order_check(frames: list) -> dict[str, float]:
    """Median |ΔP - Σ Z Δu| (e·Å) over frame pairs (0, k) for Z read as field rows and as transposed.

    The residual is folded into the cell by the dipole quantum e·R (R a lattice vector): Berry-phase
    polarizations of two frames may sit on different branches (BaTiO3's do).
    """
    cell = frames[0].cell.array

    def fold(vectors):
        """Vectors (..., 3) reduced by lattice vectors (minimum image, and the dipole quantum in e·Å)."""
        frac = np.linalg.solve(cell.T, vectors.T).T
        return (frac - np.round(frac)) @ cell

    r0, p0 = frames[0].positions, np.asarray(frames[0].info["polarization_eA"])
    z0 = frames[0].arrays["born_charges"].reshape(-1, 3, 3)
    rows, transposed = [], []
    for atoms in frames[1:]:
        du = fold(atoms.positions - r0)
        z = 0.5 * (z0 + atoms.arrays["born_charges"].reshape(-1, 3, 3))
        dp = np.asarray(atoms.info["polarization_eA"]) - p0
        rows.append(np.linalg.norm(fold(dp - np.einsum("kab,kb->a", z, du))))
        transposed.append(np.linalg.norm(fold(dp - np.einsum("kba,kb->a", z, du))))
    return {"field_rows_eA": float(np.median(rows)), "transposed_eA": float(np.median(transposed))}


def frame_split(n: int, seed: int, test: float = 0.2, val: float = 0.1) -> list[str]:
    """Seeded split label of each frame: ``round(test n)`` test, ``round(val n)`` val, rest train."""
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = round(test * n), round(val * n)
    labels = np.full(n, "train", dtype=object)
    labels[order[:n_test]] = "test"
    labels[order[n_test : n_test + n_val]] = "val"
    return labels.tolist()


def merge_records(path: Path, new: list[dict], systems: set[str]) -> None:
    """Replace the records of ``systems`` in ``path`` by ``new`` (other systems' records kept)."""
    old = json.loads(path.read_text()) if path.exists() else []
    kept = [r for r in old if r.get("system") not in systems]
    atomic.write_text(path, json.dumps(kept + new, indent=1))


def model_from_checkpoint(checkpoint: Path, out: Path) -> tuple[Path, str]:
    """Model file of the best state of a (possibly unfinished) training checkpoint, and a note saying so."""
    import torch

    from bornfield.models.io import model_class, save_model

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = model_class(state["kind"], state["hyperparameters"])(**state["hyperparameters"])
    model.load_state_dict(state["best_model"])
    note = (f"best state (epoch {state['best_epoch']}, validation loss {state['best_loss']:.4g}) of checkpoint "
            f"{checkpoint} after {state['epoch'] + 1} epochs")
    save_model(model, out, {"trained": True, "from_checkpoint": note, "best_epoch": int(state["best_epoch"])})
    return out, note


def evaluate(work: Path, data: Path, models: dict[str, list[str]], system: str, baseline: bool,
             command: str, extra_notes: str, split: tuple[str, ...] = ("--split-key",),
             dataset: str = DATASET) -> list[dict]:
    """``bornfield train evaluate`` on the test frames (of the dataset's ``split`` key, or of the split
    options ``split`` names) -> records tagged with the dataset and command."""
    out = work / f"eval_{system}.json"
    args = ["train", "evaluate", "--dataset", str(data), *split, "--subset", "test",
            "--output", str(out), "--figures-dir", str(work)]
    for kind, files in models.items():
        args += [f"--{kind}", *files]
    if bornfield(args) != 0:
        raise RuntimeError(f"evaluation of {system} failed")
    records = json.loads(out.read_text())
    for record in records:
        record["system"] = system
        record["baseline"] = baseline
        record["dataset"] = dataset
        record["notes"] = f"{extra_notes}; command: {command}"
    return records


def score_predictions(frames: list, path: Path, system: str, notes: str) -> list[dict]:
    """Records of allegro-pol's own predicted Born charges (its parity file ``path``) on the test frames
    of ``frames`` (converted, with ``info["split"]``), scored by the function ``train evaluate`` uses."""
    from bornfield.train.cli import metric_records
    from bornfield.train.metrics import born_error_metrics

    predicted = read(path, index=":", format="extxyz")
    if len(predicted) != len(frames):
        raise SystemExit(f"{path}: {len(predicted)} frames, the data file has {len(frames)}")
    pred, ref, symbols = [], [], []
    for k, (atoms, guess) in enumerate(zip(frames, predicted)):
        if not (np.array_equal(atoms.numbers, guess.numbers)
                and np.allclose(atoms.positions, guess.positions, atol=1e-4)):
            raise SystemExit(f"{path} frame {k}: species or positions differ from frame {k} of the data file")
        if "born_charge" not in guess.arrays:
            raise SystemExit(f"{path} frame {k}: no 'born_charge' array")
        if atoms.info["split"] == "test":
            pred.append(np.asarray(guess.arrays["born_charge"], dtype=float).reshape(-1, 3, 3))
            ref.append(atoms.arrays["born_charges"].reshape(-1, 3, 3))
            symbols += atoms.get_chemical_symbols()
    metrics = {"n_structures": len(pred), "n_atoms": len(symbols),
               **born_error_metrics(np.concatenate(pred), np.concatenate(ref), np.array(symbols))}
    records = metric_records(metrics, PREDICTIONS_SYSTEM, True, "test", notes)
    for record in records:
        record["dataset"] = SYSTEMS[system]["dataset"]
    return records


def plot_curves(directory: Path, system: str = "SiO2") -> Path:
    """Training curves (RMSE = sqrt of the epoch's mean squared error, e) of every ``<variant>.metrics.csv``."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, path in enumerate(sorted(directory.glob("*.metrics.csv"))):
        rows = list(csv.DictReader(path.open()))
        epochs = [int(r["epoch"]) + 1 for r in rows]
        colour = f"C{k % 10}"
        name = path.name.removesuffix(".metrics.csv")
        ax.plot(epochs, [float(r["val_born_mse"]) ** 0.5 for r in rows], color=colour, label=f"{name} (validation)")
        ax.plot(epochs, [float(r["train_born_mse"]) ** 0.5 for r in rows], color=colour, ls=":", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="epoch", ylabel="Born-charge RMSE (e)",
           title=f"allegro-pol {system}: validation (solid) and training (dotted) RMSE")
    ax.axhline(0.012, color="k", lw=0.8, ls="--")
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = directory.with_suffix(".png")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="allegro-pol scripts/2.ParseQE/<system>/<system>.xyz (required unless --plot-curves)")
    parser.add_argument("--system", default="SiO2", choices=sorted(SYSTEMS), help="which allegro-pol set --data is")
    parser.add_argument("--predictions", help="allegro-pol scripts/3.Parity/<system>/<system>-ML.xyz: score its "
                                              "predictions on the test frames as a baseline")
    parser.add_argument("--variant", nargs="*", default=[], choices=sorted(VARIANTS),
                        help="Born-model settings to train and evaluate")
    parser.add_argument("--baseline", action="store_true", help="also the paper-style row baseline (x, y, z)")
    parser.add_argument("--workdir", help="(default: benchmarks/work/<system in lower case>)")
    parser.add_argument("--seed", type=int, default=7, help="split and training seed")
    parser.add_argument("--max-epochs", type=int, help="override train.*.max_epochs (default: the schema's)")
    parser.add_argument("--model", nargs=2, action="append", default=[], metavar=("NAME", "FILE"),
                        help="also evaluate an existing Born model file, or the best state of a training "
                             "checkpoint (.ckpt), recorded as bornfield-born[NAME]")
    parser.add_argument("--model-notes", default="", help="how the --model files were made (goes into notes)")
    parser.add_argument("--baseline-files", nargs=3, metavar=("X", "Y", "Z"),
                        help="evaluate these row-baseline files (field axes x, y, z; .pt or the best state of a "
                             ".ckpt) instead of training them")
    parser.add_argument("--output", help="(default: benchmarks/results/sio2_allegro_pol.json, "
                                         "batio3_allegro_pol.json for BaTiO3)")
    parser.add_argument("--plot-curves", action="store_true",
                        help="only redraw <output>_curves.png from the saved <output>_curves/*.metrics.csv")
    args = parser.parse_args()
    spec = SYSTEMS[args.system]
    dataset = spec["dataset"]
    out = Path(args.output or HERE / "results" / spec["output"])
    if args.plot_curves:
        print(plot_curves(out.parent / f"{out.stem}_curves", args.system))
        return 0
    if not args.data:
        parser.error("--data is required")
    command = "nice -n 10 python benchmarks/sio2_allegro_pol.py " + shlex.join(sys.argv[1:])

    work = Path(args.workdir or HERE / "work" / args.system.lower())
    work.mkdir(parents=True, exist_ok=True)
    frames = convert(Path(args.data), args.system)
    check = index_order_check(frames)
    print(f"index order: |ΔP - ZΔu| median {check['field_rows_eA']:.4f} e·Å (rows = field), "
          f"{check['transposed_eA']:.4f} e·Å (transposed)")
    if not check["field_rows_eA"] < 0.5 * check["transposed_eA"]:
        raise SystemExit("born_charge rows do not behave as the field index: refusing to benchmark")
    asr = max(float(np.abs(a.arrays["born_charges"].reshape(-1, 3, 3).sum(0)).max()) for a in frames)
    for atoms, label in zip(frames, frame_split(len(frames), args.seed)):
        atoms.info["split"] = label
    data = work / f"{args.system.lower()}.extxyz"
    write(data, frames, format="extxyz")
    counts = {s: sum(a.info["split"] == s for a in frames) for s in ("train", "val", "test")}
    print(f"{len(frames)} frames -> {counts}; raw ASR residual max {asr:.2e} e")
    data_notes = (f"{dataset}: mir-group/allegro-pol {spec['file']} (MIT), {len(frames)} frames "
                  f"x {len(frames[0])} atoms; seeded split by frame (seed {args.seed}) train {counts['train']} / val "
                  f"{counts['val']} / test {counts['test']}; index check |dP - Z du| {check['field_rows_eA']:.3f} "
                  f"(rows) vs {check['transposed_eA']:.3f} e*A (transposed)")
    if args.predictions:
        records = score_predictions(frames, Path(args.predictions), args.system,
                                    data_notes + f"; allegro-pol's predictions from {args.predictions} "
                                    "(its parity-plot file; its training frames are not stated there); "
                                    f"command: {command}")
        merge_records(out, records, {PREDICTIONS_SYSTEM})
    epochs = {} if args.max_epochs is None else {"max_epochs": args.max_epochs}
    for name, path in args.model:
        system = f"bornfield-born[{name}]"
        origin = f"model file {path}"
        if path.endswith(".ckpt"):  # the best state so far of a training run
            path, origin = model_from_checkpoint(Path(path), work / f"{name}.pt")
        records = evaluate(work, data, {"born": [str(path)]}, system, False, command,
                           data_notes + f"; {origin}: {args.model_notes}", dataset=dataset)
        merge_records(out, records, {system})
    for name in args.variant:
        born = {"committee": 1, **epochs, **VARIANTS[name]}
        train = {key: born.pop(key) for key in TRAIN_KEYS if key in born}
        settings = json.dumps({"train": {**train, "born": born}})
        outdir = work / name
        if bornfield(["train", "born", "--settings", settings, "--seed", str(args.seed), "--dataset", str(data),
                      "--output-dir", str(outdir), "--no-progress"]) != 0:
            return 1
        system = f"bornfield-born[{name}]"
        records = evaluate(work, data, {"born": [str(outdir / "born_0.pt")]}, system, False, command,
                           data_notes + f"; train {json.dumps(train)}, train.born {json.dumps(born)}",
                           dataset=dataset)
        merge_records(out, records, {system})
        curve = out.parent / f"{out.stem}_curves" / f"{name}.metrics.csv"
        curve.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(outdir / "born_0.metrics.csv", curve)
        plot_curves(curve.parent, args.system)
    if args.baseline_files:
        files, origins = [], []
        for axis, path in zip("xyz", args.baseline_files):
            origin = f"model file {path}"
            if path.endswith(".ckpt"):
                path, origin = model_from_checkpoint(Path(path), work / f"born_row_{axis}_from_checkpoint.pt")
            files.append(str(path))
            origins.append(origin)
        system = "paper-row-baseline"
        records = evaluate(work, data, {"baseline": files}, system, True, command,
                           data_notes + "; one row model per field axis (x, y, z), rows stacked into Z; "
                           + "; ".join(origins) + f"; {args.model_notes}", dataset=dataset)
        merge_records(out, records, {system})
    elif args.baseline:
        outdir = work / "baseline"
        files = []
        for axis in range(3):
            settings = json.dumps({"train": {"baseline": {"committee": 1, "field_axis": axis, **epochs, **BASELINE_SETTINGS}}})
            if bornfield(["train", "baseline", "--settings", settings, "--seed", str(args.seed), "--dataset",
                          str(data), "--output-dir", str(outdir), "--no-progress"]) != 0:
                return 1
            files.append(str(outdir / f"born_row_{'xyz'[axis]}_0.pt"))
        system = "paper-row-baseline"
        records = evaluate(work, data, {"baseline": files}, system, True, command,
                           data_notes + "; one row model per field axis (x, y, z), rows stacked into Z; "
                           f"train.baseline {json.dumps({'committee': 1, **epochs, **BASELINE_SETTINGS})}",
                           dataset=dataset)
        merge_records(out, records, {system})
    print(f"records -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
