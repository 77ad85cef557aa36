"""Convergence of DFT labels with the plane-wave cutoff and the k mesh.

Given pw.x outputs of the SAME structure at different settings (``--scf LABEL=PATH``)
and, optionally, ph.x outputs (``--ph LABEL=PATH``), records the deviation of every
run from the reference (the last one given, the most accurate): max |ΔF| (meV/Å),
|ΔE|/atom (meV), max |Δσ| (kbar), and for Born charges max |ΔZ| (e) and max |Δε∞|.
Acceptance used for the defaults (task brief): forces to 5 meV/Å, Born charges to
0.01 e. Usage::

    .venv/bin/python benchmarks/dft_convergence.py --scf ec35=a/pw.out ec45=b/pw.out ec60=c/pw.out \
        [--ph k112=a/ph.out k223=b/ph.out] [--notes TEXT]

writes ``benchmarks/results/dft_convergence.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
from ase import units

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from bornfield.dft.parsers import read_ph_output, read_pw_output  # noqa: E402

RESULTS = HERE / "results"
MACHINE = "2 cores, no GPU (shared with other jobs)"


def _pairs(items: list[str]) -> list[tuple[str, Path]]:
    out = []
    for item in items:
        label, _, path = item.partition("=")
        out.append((label, Path(path)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scf", nargs="*", default=[], help="LABEL=pw.out, reference last")
    parser.add_argument("--ph", nargs="*", default=[], help="LABEL=ph.out, reference last")
    parser.add_argument("--notes", default="")
    parser.add_argument("--output", type=Path, default=RESULTS / "dft_convergence.json")
    args = parser.parse_args()
    today = dt.date.today().isoformat()
    records = []

    def record(metric, value, unit, system, n_atoms, notes):
        records.append({
            "metric": metric, "value": float(value), "unit": unit, "system": system, "n_atoms": n_atoms,
            "ranks": 2, "threads": 1, "baseline": False, "date": today, "machine": MACHINE,
            "notes": f"{notes}; {args.notes}".strip("; "),
        })

    scf = [(label, read_pw_output(path)) for label, path in _pairs(args.scf)]
    if scf:
        ref_label, ref = scf[-1]
        n = len(ref.forces)
        for label, run in scf[:-1]:
            df = np.abs(run.forces - ref.forces).max() * 1000
            de = abs(run.energy - ref.energy) / n * 1000
            ds = np.abs(run.stress - ref.stress).max() / units.GPa * 10
            system = f"pw.x {label} vs {ref_label}"
            record("force_max_dev_meV_per_A", df, "meV/Å", system, n, "max over atoms and components")
            record("energy_dev_meV_per_atom", de, "meV/atom", system, n, "")
            record("stress_max_dev_kbar", ds, "kbar", system, n, "")
    ph = [(label, read_ph_output(path)) for label, path in _pairs(args.ph)]
    if ph:
        ref_label, ref = ph[-1]
        n = len(ref.species)
        for label, run in ph[:-1]:
            dz = np.abs(run.born_charges - ref.born_charges)
            system = f"ph.x {label} vs {ref_label}"
            record("bec_max_dev_e", dz.max(), "e", system, n, "ASR-corrected")
            record("bec_rms_dev_e", np.sqrt(np.mean(dz**2)), "e", system, n, "ASR-corrected")
            record("epsilon_inf_max_dev", np.abs(run.epsilon_inf - ref.epsilon_inf).max(), "", system, n, "")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(records, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({r["metric"] for r in records})
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(3.2 * max(1, len(metrics)), 3.4))
    axes = np.atleast_1d(axes)
    for ax, metric in zip(axes, metrics, strict=False):
        rows = [r for r in records if r["metric"] == metric]
        ax.bar(range(len(rows)), [r["value"] for r in rows])
        ax.set_xticks(range(len(rows)), [r["system"].split(" vs ")[0] for r in rows], rotation=30, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output.with_suffix(".png"), dpi=110)
    for r in records:
        print(f"{r['system']:35s} {r['metric']:26s} {r['value']:10.4f} {r['unit']}")


if __name__ == "__main__":
    main()
