"""Baseline: MD speed of an offline pretrained universal potential (CHGNet 0.4.2) driven by ASE.

Side by side with ``md_throughput.json``: the same rattled beta-Li3PO4
supercells, ASE Bussi NVT at 600 K, dt = 1 fs, one torch thread. CHGNet has no
Born charges, so this is potential-only MD (bornfield's numbers include the
Born model every step and the field force).

CHGNet lives in its own virtualenv (its pinned dependencies clash with
bornfield's): ``benchmarks/.venv-uip`` (git-ignored)::

    python3 -m venv benchmarks/.venv-uip
    benchmarks/.venv-uip/bin/pip install torch==2.13.0 chgnet==0.4.2

Usage (from the repository root, bornfield's venv)::

    .venv/bin/python benchmarks/md_uip_baseline.py [--sizes 128 1024] [--steps 10]

Appends its records to ``benchmarks/results/md_uip_baseline.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bornfield.atomic import write_json

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NAME = "md_uip_baseline"
UIP_PYTHON = HERE / ".venv-uip" / "bin" / "python"
MACHINE = "2 cores, no GPU (shared with other jobs)"


def measure_in_uip_venv(path: str, steps: int) -> None:
    """Runs inside benchmarks/.venv-uip: CHGNet + ASE Bussi MD; prints a JSON line."""
    import numpy as np
    import torch
    from ase import units
    from ase.io import read
    from ase.md.bussi import Bussi
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    torch.set_num_threads(1)
    atoms = read(path)
    model = CHGNet.load(verbose=False)
    atoms.calc = CHGNetCalculator(model=model, use_device="cpu")
    MaxwellBoltzmannDistribution(atoms, temperature_K=600.0, rng=np.random.default_rng(1))
    dyn = Bussi(atoms, 1.0 * units.fs, temperature_K=600.0, taut=100.0 * units.fs,
                rng=np.random.default_rng(2))
    dyn.run(2)
    start = time.perf_counter()
    dyn.run(steps)
    elapsed = time.perf_counter() - start
    print("RESULT " + json.dumps({"n_atoms": len(atoms), "atom_steps_per_s": len(atoms) * steps / elapsed}))


def measure_chgnet(n_atoms: int, steps: int) -> float:
    """CHGNet ASE-MD atom-steps/s on the rattled beta supercell of ``n_atoms`` (own venv, one thread)."""
    sys.path.insert(0, str(HERE))
    from ase.io import write
    from md_throughput import beta_supercell

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"beta_{n_atoms}.extxyz"
        write(path, beta_supercell(n_atoms))
        result = subprocess.run([str(UIP_PYTHON), __file__, "--measure", str(path), "--steps", str(steps)],
                                capture_output=True, text=True, env=env, timeout=3600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"CHGNet measurement failed:\n{result.stderr[-3000:]}")
    return float(json.loads(lines[0][7:])["atom_steps_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 1024])
    args = parser.parse_args()
    if args.measure:
        measure_in_uip_venv(args.measure, args.steps)
        return
    if not UIP_PYTHON.exists():
        sys.exit(f"{UIP_PYTHON} not found; create the baseline venv first (see the module docstring)")
    records = []
    today = datetime.date.today().isoformat()
    for n_atoms in args.sizes:
        steps = max(3, args.steps * 128 // n_atoms)
        value = measure_chgnet(n_atoms, steps)
        print(f"CHGNet 0.4.2, {n_atoms} atoms: {value:.1f} atom-steps/s", flush=True)
        records.append({"metric": "atom_steps_per_s", "value": value, "unit": "atom-steps/s",
                        "system": "chgnet-0.4.2-ase", "n_atoms": n_atoms, "ranks": 1, "threads": 1,
                        "baseline": True, "date": today, "machine": MACHINE,
                        "notes": f"pretrained CHGNet, ASE Bussi 600 K, {steps} timed steps, potential only "
                                 "(no Born charges / field)"})
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{NAME}.json"
    write_json(out, records)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
