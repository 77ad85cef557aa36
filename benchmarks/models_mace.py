"""Accuracy of the bornfield NN potential vs a small MACE on the CHGNet proxy data (labels are CHGNet, NOT DFT).

The outside baseline of issue 5: `mace-torch` 0.3.16 (small model:
hidden irreps 32x0e+32x1o, r_max 5 Å, 2 interactions, max_ell 3,
correlation 3) and bornfield's potential (the architecture of
``config/paper.yaml``'s ``train.potential`` block) are trained on the SAME
split of ``data/chgnet_proxy`` (by structure, stratified by config_type,
``bornfield train split`` with the master seed) with the SAME WALL-CLOCK
BUDGET, one torch thread each, one after the other: neither trainer has a
wall-time stop, so the epoch counts (``--bornfield-epochs``,
``--mace-epochs``; an epoch is one pass over the training structures) are
chosen from epoch times measured on this machine to fill the budget (run of
2026-11-27, 1-min load average ~7 from other jobs: bornfield ~5 s/epoch, this
MACE ~180 s/epoch, so 180 vs 5 epochs for ~15 min each). Each model keeps its
best-validation weights; the measured wall times are recorded. Secondary
view: bornfield also trained for MACE's epoch count (``same_epochs/``). Test-set errors are computed by one function for
both models: energy RMSE/MAE (meV/atom), force RMSE/MAE (meV/Å), stress RMSE
(GPa), overall and per config_type.

MACE lives in its own virtualenv ``benchmarks/.venv-mace`` (git-ignored;
mace-torch pins e3nn 0.4.4, bornfield uses 0.6.0), created here if missing:
``python3 -m venv``, then ``pip install torch==2.13.0`` (pip takes the CPU
wheel, as the Makefile does for the main venv) and
``pip install -c benchmarks/constraints-mace.txt mace-torch==0.3.16``. MACE
training and prediction run as subprocesses of that interpreter (prediction:
this file with ``--mace-worker``).

    .venv/bin/python benchmarks/models_mace.py [--bornfield-epochs 180] [--mace-epochs 5]

Writes ``benchmarks/results/models_mace.json`` (design-note records, split
"test") and ``models_mace_parity.png``; the trained models stay in the work
directory (``potential_0.pt`` + ``split.json`` are reused by
``chgnet_proxy_calibration.py`` and ``models_mace_speed.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import lzma
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MACE_VENV = HERE / ".venv-mace"
MACE_PYTHON = MACE_VENV / "bin" / "python"
MACE_CONSTRAINTS = HERE / "constraints-mace.txt"
ARCHIVE = ROOT / "data" / "chgnet_proxy" / "li3po4_chgnet_proxy.extxyz.xz"
WORKDIR = HERE / "work" / "models_mace"
MACHINE = "2 cores, no GPU (shared with other jobs)"
LABELS = "CHGNet 0.4.2 proxy labels (not DFT)"

# Small MACE (the "small model"); everything else is mace-torch's default
MACE_ARCH = {"model": "MACE", "hidden_irreps": "32x0e+32x1o", "r_max": 5.0, "num_interactions": 2,
             "max_ell": 3, "correlation": 3, "num_radial_basis": 8, "MLP_irreps": "16x0e"}
MACE_OPTIM = {"loss": "stress", "energy_weight": 1.0, "forces_weight": 100.0, "stress_weight": 10.0,
              "batch_size": 4, "valid_batch_size": 8, "lr": 0.01, "scheduler_patience": 5, "ema": True,
              "ema_decay": 0.99, "default_dtype": "float32", "E0s": "average"}
SPLIT = {"val_fraction": 0.1, "test_fraction": 0.2}


# ============================================================================ helpers
from chgnet_proxy import sha256_of  # noqa: E402  (same directory, stdlib-only at import)


def unpack_dataset(workdir: Path) -> Path:
    """The proxy archive decompressed into ``workdir/proxy.extxyz`` (re-done if the archive changed)."""
    if not ARCHIVE.is_file():
        raise SystemExit(f"{ARCHIVE} missing: run benchmarks/chgnet_proxy.py first")
    out = workdir / "proxy.extxyz"
    stamp = workdir / "proxy.sha256"
    digest = sha256_of(ARCHIVE)
    if out.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return out
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(".proxy.extxyz.tmp")
    with lzma.open(ARCHIVE, "rb") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.replace(tmp, out)
    stamp.write_text(digest + "\n")
    return out


def train_settings(epochs: int) -> dict:
    """The ``train`` section: config/paper.yaml's potential block, epochs and split of this benchmark."""
    from bornfield.config import load_config

    train = load_config(ROOT / "config" / "paper.yaml").train.to_dict()
    train["split"] = dict(SPLIT)
    train["threads"] = 1
    potential = dict(train["potential"])
    # fixed epoch budget: early stopping off (patience = epochs), the best-validation weights are kept
    potential.update({"max_epochs": int(epochs), "patience": int(epochs), "min_lr": 1e-7})
    train["potential"] = potential
    return train


def ensure_mace_venv() -> None:
    """Create ``benchmarks/.venv-mace`` with the pinned MACE stack if it does not exist."""
    if MACE_PYTHON.exists():
        return
    subprocess.run([sys.executable, "-m", "venv", str(MACE_VENV)], check=True)
    pip = [str(MACE_PYTHON), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # pinned first: the CPU wheel, never CUDA
    subprocess.run([*pip, "-c", str(MACE_CONSTRAINTS), "mace-torch==0.3.16"], check=True)


def write_mace_split(samples, split: dict, workdir: Path) -> dict[str, Path]:
    """train/val/test extxyz with MACE's REF_* keys (ASE would hide plain ``energy`` in a calculator).

    A charged cell (``Sample.charge != 0``) gets forces only: its DFT energy and stress carry the
    compensating-background terms, so, as bornfield's ``charged_cells: forces_only``, they are left
    out (MACE then weights that cell's energy and stress loss by 0).
    """
    from ase.io import write

    paths = {}
    for name in ("train", "val", "test"):
        frames = []
        for index in split[name]:
            s = samples[index]
            atoms = s.atoms.copy()
            atoms.calc = None
            atoms.info = {"config_type": s.config_type, "structure_index": int(index)}
            if s.charge == 0:
                atoms.info["REF_energy"] = s.energy
                if s.stress is not None:
                    atoms.info["REF_stress"] = s.stress.ravel().tolist()
            for key in list(atoms.arrays):
                if key not in ("numbers", "positions"):
                    del atoms.arrays[key]
            atoms.arrays["REF_forces"] = s.forces
            frames.append(atoms)
        paths[name] = workdir / "mace" / f"{name}.extxyz"
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        tmp = paths[name].with_name(f".{paths[name].name}.tmp")
        write(tmp, frames, format="extxyz")
        os.replace(tmp, paths[name])
    return paths


def mace_train_command(paths: dict[str, Path], workdir: Path, epochs: int, seed: int, name: str = "proxy_mace",
                       options: dict | None = None) -> list[str]:
    """``mace_run_train`` arguments: MACE_ARCH and MACE_OPTIM, then ``options`` (overrides, same keys as the CLI).

    Writes into ``workdir/mace`` (model ``<name>.model``, log, ``results/<name>_run-<seed>_train.txt``).
    """
    args = [str(MACE_VENV / "bin" / "mace_run_train"), f"--name={name}", f"--seed={seed}", "--device=cpu",
            f"--train_file={paths['train']}", f"--valid_file={paths['val']}", f"--test_file={paths['test']}",
            "--energy_key=REF_energy", "--forces_key=REF_forces", "--stress_key=REF_stress",
            "--compute_stress=True", "--error_table=PerAtomRMSEstressvirials", f"--max_num_epochs={epochs}",
            f"--patience={epochs}", "--eval_interval=1", "--num_workers=0",
            f"--work_dir={workdir / 'mace'}"]
    for key, value in {**MACE_ARCH, **MACE_OPTIM, **(options or {})}.items():
        if value is True:
            args.append(f"--{key}")
        else:
            args.append(f"--{key}={value}")
    return args


# ============================================================================ MACE worker (runs in .venv-mace)
def mace_worker(model_path: str, structures: str, out: str, threads: int) -> None:
    """Energy (eV), forces (eV/Å) and stress (eV/Å³, 3x3) of every frame with MACECalculator -> npz."""
    import numpy as np
    import torch
    from ase.io import read
    from mace.calculators import MACECalculator

    torch.set_num_threads(threads)
    calc = MACECalculator(model_paths=model_path, device="cpu", default_dtype="float32")
    energies, forces, stresses = [], [], []
    for atoms in read(structures, index=":", format="extxyz"):
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
        stresses.append(atoms.get_stress(voigt=False))
    tmp = f"{out}.tmp.npz"
    np.savez(tmp, energy=np.array(energies), forces=np.concatenate(forces), stress=np.array(stresses))
    os.replace(tmp, out)


def mace_predict(model_path: Path, structures: Path, out: Path) -> dict:
    import numpy as np

    subprocess.run([str(MACE_PYTHON), str(Path(__file__).resolve()), "--mace-worker", str(model_path),
                    str(structures), str(out)], check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


# ============================================================================ metrics (both models)
def error_table(samples, pred: dict) -> dict[str, dict[str, float]]:
    """Errors overall ("all") and per config_type.

    ``pred``: ``energy`` (S,) eV, ``forces`` (sum n, 3) eV/Å, ``stress`` (S, 3, 3) eV/Å³. Energy and
    stress errors use neutral cells with those labels only (as ``bornfield train evaluate``: a charged
    cell's DFT energy holds background terms); a group without any is NaN. Force errors use every cell.
    """
    import numpy as np
    from ase.units import GPa

    n_atoms = np.array([s.n_atoms for s in samples])
    offsets = np.concatenate([[0], np.cumsum(n_atoms)])
    neutral = np.array([s.charge == 0 for s in samples])
    e_ref = np.array([s.energy if s.energy is not None else np.nan for s in samples])
    de = np.where(neutral, (np.asarray(pred["energy"]) - e_ref) / n_atoms * 1000.0, np.nan)
    f_ref = np.concatenate([s.forces for s in samples])
    df = (np.asarray(pred["forces"]) - f_ref) * 1000.0
    s_ref = np.stack([s.stress if s.stress is not None and s.charge == 0 else np.full((3, 3), np.nan)
                      for s in samples])
    ds = (np.asarray(pred["stress"]) - s_ref) / GPa

    def rms(x):
        x = x[np.isfinite(x)]
        return float(np.sqrt(np.mean(x**2))) if x.size else float("nan")

    def mae(x):
        x = x[np.isfinite(x)]
        return float(np.mean(np.abs(x))) if x.size else float("nan")

    groups = {"all": list(range(len(samples)))}
    for k, s in enumerate(samples):
        groups.setdefault(s.config_type, []).append(k)
    table = {}
    for name, members in groups.items():
        atoms_idx = np.concatenate([np.arange(offsets[k], offsets[k + 1]) for k in members])
        e, f, st = de[members], df[atoms_idx], ds[members]
        table[name] = {
            "n_structures": len(members), "n_atoms": int(n_atoms[members].sum()),
            "n_energy_structures": int(np.isfinite(e).sum()),
            "energy_rmse_meV_per_atom": rms(e), "energy_mae_meV_per_atom": mae(e),
            "force_rmse_meV_per_A": rms(f), "force_mae_meV_per_A": mae(f),
            "stress_rmse_GPa": rms(st),
            "force_ref_rms_meV_per_A": rms(f_ref[atoms_idx] * 1000.0),
        }
    return table


UNITS = {"energy_rmse_meV_per_atom": "meV/atom", "energy_mae_meV_per_atom": "meV/atom",
         "force_rmse_meV_per_A": "meV/Å", "force_mae_meV_per_A": "meV/Å", "stress_rmse_GPa": "GPa"}


def to_records(table: dict, system: str, baseline: bool, notes: str, extra: dict) -> list[dict]:
    date = dt.date.today().isoformat()
    out = []
    for config_type, row in table.items():
        for metric, unit in UNITS.items():
            if row[metric] != row[metric]:  # NaN: no labels of that kind in the group (charged cells only)
                continue
            out.append({"metric": metric, "value": row[metric], "unit": unit, "system": system,
                        "n_atoms": row["n_atoms"], "ranks": 1, "threads": 1, "baseline": baseline, "date": date,
                        "machine": MACHINE, "split": "test", "config_type": config_type,
                        "n_structures": row["n_structures"], **extra, "notes": notes})
    return out


def parity_plot(samples, preds: dict[str, dict], tables: dict[str, dict], path: Path, reference: str = "CHGNet",
                title: str | None = None) -> None:
    """Energy/force/stress parity, one row per model; energy and stress of neutral cells only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from ase.units import GPa

    n_atoms = np.array([s.n_atoms for s in samples])
    neutral = [k for k, s in enumerate(samples) if s.charge == 0 and s.energy is not None]
    stressed = [k for k in neutral if samples[k].stress is not None]
    refs = {"energy": np.array([samples[k].energy for k in neutral]) / n_atoms[neutral],
            "forces": np.concatenate([s.forces for s in samples]).ravel(),
            "stress": np.stack([samples[k].stress for k in stressed]).ravel() / GPa if stressed else np.zeros(0)}
    fig, axes = plt.subplots(len(preds), 3, figsize=(12, 4 * len(preds)), squeeze=False)
    for row, (name, pred) in enumerate(preds.items()):
        values = {"energy": np.asarray(pred["energy"])[neutral] / n_atoms[neutral],
                  "forces": np.asarray(pred["forces"]).ravel(),
                  "stress": np.asarray(pred["stress"])[stressed].ravel() / GPa}
        t = tables[name]["all"]
        titles = {"energy": f"energy RMSE {t['energy_rmse_meV_per_atom']:.2f} meV/atom",
                  "forces": f"force RMSE {t['force_rmse_meV_per_A']:.0f} meV/Å",
                  "stress": f"stress RMSE {t['stress_rmse_GPa']:.3f} GPa"}
        units = {"energy": "eV/atom", "forces": "eV/Å", "stress": "GPa"}
        for col, key in enumerate(("energy", "forces", "stress")):
            ax = axes[row, col]
            if not refs[key].size:
                ax.set_axis_off()
                continue
            ax.scatter(refs[key], values[key], s=3, alpha=0.4)
            lo, hi = float(min(refs[key].min(), values[key].min())), float(max(refs[key].max(), values[key].max()))
            ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
            ax.set_xlabel(f"{reference} {key} ({units[key]})")
            ax.set_ylabel(f"{name} ({units[key]})")
            ax.set_title(f"{name}: {titles[key]}", fontsize=9)
    fig.suptitle(title or f"Held-out test set of the CHGNet proxy ({len(samples)} structures; labels CHGNet, not DFT)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def print_tables(tables: dict[str, dict]) -> None:
    """One line per model and config_type of :func:`error_table` results."""
    for name, table in tables.items():
        print(f"\n{name}")
        for config_type, row in table.items():
            print(f"  {config_type:18s} n={row['n_structures']:3d}  E {row['energy_rmse_meV_per_atom']:7.2f} meV/atom  "
                  f"F {row['force_rmse_meV_per_A']:7.1f} (MAE {row['force_mae_meV_per_A']:6.1f}) meV/A  "
                  f"S {row['stress_rmse_GPa']:.3f} GPa")


def count_parameters_bornfield(path: Path) -> int:
    from bornfield.models import load_potential

    return int(sum(p.numel() for p in load_potential(path).parameters()))


def count_parameters_mace(model_path: Path) -> int:
    """Parameters of a saved MACE model (loaded in ``.venv-mace``)."""
    out = subprocess.run(
        [str(MACE_PYTHON), "-c", "import sys,torch; m=torch.load(sys.argv[1], weights_only=False); "
         "print(sum(p.numel() for p in m.parameters()))", str(model_path)],
        check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]  # mace prints notices first
    return int(out)


# ============================================================================ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bornfield-epochs", type=int, default=180, help="epochs of the bornfield potential")
    parser.add_argument("--mace-epochs", type=int, default=5, help="epochs of MACE (same wall budget, see above)")
    parser.add_argument("--seed", type=int, default=20231, help="master seed (split, bornfield init)")
    parser.add_argument("--workdir", type=Path, default=WORKDIR)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "models_mace.json")
    parser.add_argument("--mace-worker", nargs=3, metavar=("MODEL", "IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mace_worker:
        mace_worker(*args.mace_worker, threads=1)
        return 0

    import torch

    from bornfield.cli import main as bornfield
    from bornfield.models import load_potential
    from bornfield.structures.io import write_json_atomic
    from bornfield.train.data import read_samples
    from bornfield.train.metrics import predict_potential

    torch.set_num_threads(1)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    dataset = unpack_dataset(work)
    settings = train_settings(args.bornfield_epochs)
    common = ["--settings", json.dumps({"train": settings}), "--seed", str(args.seed), "--dataset", str(dataset)]
    if bornfield(["train", "split", *common, "--output", str(work / "split.json")]) != 0:
        return 1
    split = json.loads((work / "split.json").read_text())
    samples = read_samples(dataset)
    test = [samples[i] for i in split["test"]]
    timings = json.loads((work / "timings.json").read_text()) if (work / "timings.json").is_file() else {}

    # --- bornfield potential (member 0), one thread
    potential_path = work / "potential_0.pt"
    if not potential_path.is_file():
        t0 = time.perf_counter()
        if bornfield(["train", "potential", *common, "--output-dir", str(work), "--member", "0"]) != 0:
            return 1
        timings["bornfield_potential_train_s"] = time.perf_counter() - t0
        write_json_atomic(work / "timings.json", timings)

    # --- MACE, one thread, same split and epochs
    ensure_mace_venv()
    paths = write_mace_split(samples, split, work)
    mace_model = work / "mace" / "proxy_mace.model"
    if not mace_model.is_file():
        t0 = time.perf_counter()
        with open(work / "mace" / "train.log", "w") as log:
            subprocess.run(mace_train_command(paths, work, args.mace_epochs, args.seed), check=True, stdout=log,
                           stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
        timings["mace_train_s"] = time.perf_counter() - t0
        write_json_atomic(work / "timings.json", timings)
    if not mace_model.is_file():
        raise SystemExit(f"MACE training finished without {mace_model}: see {work / 'mace' / 'train.log'}")

    # --- secondary view: bornfield with MACE's epoch count (same split, same member seed)
    same_epochs_dir = work / "same_epochs"
    same_epochs_path = same_epochs_dir / "potential_0.pt"
    if not same_epochs_path.is_file():
        same_epochs_dir.mkdir(exist_ok=True)
        shutil.copy(work / "split.json", same_epochs_dir / "split.json")
        short = ["--settings", json.dumps({"train": train_settings(args.mace_epochs)}), *common[2:]]
        t0 = time.perf_counter()
        if bornfield(["train", "potential", *short, "--output-dir", str(same_epochs_dir), "--member", "0"]) != 0:
            return 1
        timings["bornfield_potential_same_epochs_train_s"] = time.perf_counter() - t0
        write_json_atomic(work / "timings.json", timings)

    # --- predictions on the test structures and one error function for all
    model = load_potential(potential_path)
    preds = {"bornfield-potential": predict_potential([model], test),
             "mace-0.3.16-small": mace_predict(mace_model, paths["test"], work / "mace" / "test_pred.npz"),
             "bornfield-potential-same-epochs": predict_potential([load_potential(same_epochs_path)], test)}
    tables = {name: error_table(test, pred) for name, pred in preds.items()}
    mace_params = count_parameters_mace(mace_model)
    notes_common = (f"{LABELS}; {len(split['train'])}/{len(split['val'])}/{len(split['test'])} train/val/test "
                    f"structures (split by structure, stratified by config_type, seed {args.seed}); same wall-clock "
                    f"budget, 1 thread: bornfield {args.bornfield_epochs} epochs in "
                    f"{timings.get('bornfield_potential_train_s', float('nan')) / 60:.1f} min, MACE {args.mace_epochs} "
                    f"epochs in {timings.get('mace_train_s', float('nan')) / 60:.1f} min (incl. its final evaluation); "
                    "best-validation weights")
    bf_hyper = {k: settings["potential"][k] for k in ("channels", "hidden", "batch_size", "learning_rate",
                                                       "energy_weight", "force_weight", "stress_weight")}
    records = to_records(tables["bornfield-potential"], "bornfield-potential", False,
                         f"{notes_common}; bornfield potential {bf_hyper}, cutoff {settings['cutoff']} A, float32",
                         {"epochs": args.bornfield_epochs, "train_wall_s": round(timings.get("bornfield_potential_train_s", float('nan')), 1),
                          "n_parameters": count_parameters_bornfield(potential_path)})
    records += to_records(tables["mace-0.3.16-small"], "mace-0.3.16-small", True,
                          f"{notes_common}; MACE {MACE_ARCH}, {MACE_OPTIM}",
                          {"epochs": args.mace_epochs, "train_wall_s": round(timings.get("mace_train_s", float('nan')), 1),
                           "n_parameters": int(mace_params)})
    records += to_records(tables["bornfield-potential-same-epochs"], "bornfield-potential-same-epochs", False,
                          f"{notes_common}; secondary view: bornfield trained for MACE's {args.mace_epochs} epochs "
                          "(same split and seed), i.e. the same number of passes over the data",
                          {"epochs": args.mace_epochs,
                           "train_wall_s": round(timings.get("bornfield_potential_same_epochs_train_s", float('nan')), 1),
                           "n_parameters": count_parameters_bornfield(same_epochs_path)})
    write_json_atomic(args.output, records)
    parity_plot(test, {k: preds[k] for k in ("bornfield-potential", "mace-0.3.16-small")}, tables,
                args.output.with_name("models_mace_parity.png"))
    print_tables(tables)
    print(json.dumps(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
