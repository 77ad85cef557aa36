"""Training cost of the NN potential and the equivariant Born model: CPU-seconds per atom-epoch.

The cost model of ``bornfield estimate`` (``benchmarks/cost_model.py``) charges a
training run ``epochs x atoms of the training + validation structures x this cost``.
Here the architecture and optimisation blocks of ``config/paper.yaml``
(``train.potential`` / ``train.born``, float32, one torch thread) are trained on the
first ``--structures`` cells of the CHGNet proxy set (``data/chgnet_proxy``; Li3PO4
crystals, defects and amorphous cells of 16-192 atoms). The proxy set has no Born
charges: the Born model gets random ASR-obeying tensors (the cost does not depend on
the label values). One warm-up epoch, then ``--epochs`` timed epochs; every structure
is in the training set and is evaluated once more per epoch as the validation set,
as in a real run with a validation split.

    .venv/bin/python benchmarks/train_speed.py [--structures 40] [--epochs 4]

Writes ``benchmarks/results/train_speed.json`` (records in the DESIGN.md format,
metric ``train_cpu_s_per_atom_epoch``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import lzma
import os
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ARCHIVE = ROOT / "data" / "chgnet_proxy" / "li3po4_chgnet_proxy.extxyz.xz"
OUT = HERE / "results" / "train_speed.json"
MACHINE = "2 cores, no GPU (shared with a QE labelling run)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=int, default=40, help="proxy cells trained on")
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs (after one warm-up epoch)")
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args()

    import torch
    from ase.io import read, write

    from bornfield import atomic
    from bornfield.config import load_config
    from bornfield.train.data import dataset_species, read_samples
    from bornfield.train.trainer import train_model

    torch.set_num_threads(1)
    train = load_config(ROOT / "config" / "paper.yaml").train
    with lzma.open(ARCHIVE, "rt") as handle:
        frames = read(handle, index=f":{args.structures}", format="extxyz")
    rng = np.random.default_rng(0)
    for atoms in frames:
        z = rng.normal(size=(len(atoms), 3, 3)) + np.eye(3)
        atoms.arrays["born_charges"] = (z - z.mean(axis=0)).reshape(len(atoms), 9)
    n_atoms = sum(len(a) for a in frames)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.extxyz"
        write(data, frames, format="extxyz")
        samples = read_samples(data)
        species = dataset_species(samples)
        for kind in ("potential", "born"):
            block = dict(train[kind], cutoff=train.cutoff, dtype=train.dtype,
                         max_epochs=1 + args.epochs, patience=10**6, min_lr=1e-30)
            load = os.getloadavg()[0]
            cpu0, wall0 = time.process_time(), time.perf_counter()
            _, history = train_model(kind, samples, samples, block, Path(tmp) / f"{kind}.pt", seed=0,
                                     species=species, resume=False, progress=False)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            timed = [row["seconds"] for row in history[1:]]
            per_epoch_wall = float(np.mean(timed))
            # CPU share of the timed epochs: the run's CPU time scaled by their wall-time share
            per_epoch_cpu = cpu * sum(timed) / wall / len(timed)
            interactions = f"interactions {block['interactions']}, " if kind == "born" else ""
            notes = (f"config/paper.yaml train.{kind} architecture (channels {block['channels']}, hidden "
                     f"{block['hidden']}, radial_hidden {block['radial_hidden']}, {interactions}batch "
                     f"{block['batch_size']}; gradient clipping {block['grad_clip']}, weight average "
                     f"{block['ema_decay']}, weight decay {block['weight_decay']}), "
                     f"cutoff {block['cutoff']} Å, {block['dtype']}, 1 thread; {len(frames)} CHGNet-proxy cells "
                     f"({n_atoms} atoms) trained and validated each epoch; mean of {len(timed)} epochs after one "
                     f"warm-up ({per_epoch_wall:.2f} s wall per epoch); 1-min load average {load:.1f} before")
            value = per_epoch_cpu / n_atoms
            print(f"{kind}: {value:.3e} CPU-s per atom-epoch ({per_epoch_wall:.2f} s wall per epoch)", flush=True)
            records.append({
                "metric": "train_cpu_s_per_atom_epoch", "value": value, "unit": "CPU-s/(atom epoch)",
                "system": f"bornfield-{kind}", "n_atoms": n_atoms, "ranks": 1, "threads": 1, "baseline": False,
                "date": dt.date.today().isoformat(), "machine": MACHINE, "notes": notes,
            })
    atomic.write_text(args.output, json.dumps(records, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
