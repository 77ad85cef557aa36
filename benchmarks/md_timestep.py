"""Which MD time step do the shipped models allow? NVE energy conservation at 0.5, 1, 2 (and 3) fs.

For each MD cell given (the demo's ``md_cells/*.extxyz``, written by the structures
stage), with the shipped potential (``models/li3po4``, member 0, float32 as in the
MD) and no field:

1. Bussi NVT at the cell's temperature with 1 fs for ``--equilibrate-fs``;
2. from that one state (positions and velocities), NVE with velocity Verlet for
   ``--nve-fs`` at every time step in ``--timesteps``.

Recorded per cell and time step (DESIGN.md records):

* ``nve_energy_drift_meV_per_atom_ps``: slope of the total energy (least squares);
* ``nve_energy_rms_meV_per_atom``: RMS of the total energy about that line;
* ``nve_energy_rms_over_kinetic_rms``: the same RMS over the RMS of the kinetic
  energy about its mean (the usual "fluctuation ratio"; < 0.05 is good integration);
* ``ms_per_step`` of the NVE run (one torch thread).

The field does not change the integrator's stiffness (it adds a smooth Zᵀ·E force),
so E = 0 is the test of the time step.

Usage::

    .venv/bin/python benchmarks/md_timestep.py \\
        --cell results/structures/md_cells/beta_vacancy.extxyz:1200 \\
        --cell results/structures/md_cells/amorphous.extxyz:900

Writes ``benchmarks/results/md_timestep.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import numpy as np

from bornfield.atomic import write_json

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
NAME = "md_timestep"
MACHINE = "2 cores, no GPU (shared with other jobs)"


def parse_cell(text: str) -> tuple[Path, float]:
    path, _, temperature = text.rpartition(":")
    if not path or not temperature:
        raise argparse.ArgumentTypeError(f"--cell wants PATH:TEMPERATURE_K, got {text!r}")
    return Path(path), float(temperature)


def nve_statistics(times_ps: np.ndarray, total: np.ndarray, kinetic: np.ndarray, n_atoms: int) -> dict:
    """Drift (meV/atom/ps), RMS about the fit (meV/atom) and RMS ratio to the kinetic energy's."""
    slope, intercept = np.polyfit(times_ps, total, 1)
    residual = total - (slope * times_ps + intercept)
    rms = float(np.sqrt(np.mean(residual**2)))
    kinetic_rms = float(np.std(kinetic))
    return {"drift": 1000.0 * slope / n_atoms, "rms": 1000.0 * rms / n_atoms, "ratio": rms / kinetic_rms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cell", type=parse_cell, action="append", required=True,
                        help="PATH:TEMPERATURE_K of an MD cell (first structure of the file)")
    parser.add_argument("--models", type=Path, default=ROOT / "models" / "li3po4")
    parser.add_argument("--timesteps", type=float, nargs="+", default=[0.5, 1.0, 2.0, 3.0])
    parser.add_argument("--equilibrate-fs", type=float, default=500.0)
    parser.add_argument("--nve-fs", type=float, default=2000.0)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()

    import torch
    from ase import units
    from ase.io import read
    from ase.md.bussi import Bussi
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    from bornfield.calculators import FieldCalculator
    from bornfield.models import load_potential

    torch.set_num_threads(1)
    potential = load_potential(args.models / "potential_0.pt")
    today = datetime.date.today().isoformat()
    records, curves = [], {}
    for path, temperature in args.cell:
        start = read(path, index=0)
        n_atoms = len(start)
        start.calc = FieldCalculator(potential=potential)
        MaxwellBoltzmannDistribution(start, temperature_K=temperature, rng=np.random.default_rng(args.seed))
        Stationary(start)
        Bussi(start, 1.0 * units.fs, temperature_K=temperature, taut=100.0 * units.fs,
              rng=np.random.default_rng(args.seed)).run(int(args.equilibrate_fs))
        positions, momenta = start.get_positions(), start.get_momenta()
        label = f"{path.stem} {n_atoms} atoms {temperature:.0f} K"
        for dt in args.timesteps:
            atoms = start.copy()
            atoms.set_positions(positions)
            atoms.set_momenta(momenta)
            atoms.calc = FieldCalculator(potential=potential)
            n_steps = int(round(args.nve_fs / dt))
            every = max(1, int(round(5.0 / dt)))  # a sample every ~5 fs
            times, total, kinetic = [], [], []

            def sample():
                kin = atoms.get_kinetic_energy()
                times.append(dyn.get_number_of_steps() * dt / 1000.0)
                total.append(atoms.get_potential_energy() + kin)
                kinetic.append(kin)

            dyn = VelocityVerlet(atoms, dt * units.fs)
            dyn.attach(sample, interval=every)
            began = time.perf_counter()
            dyn.run(n_steps)
            ms_per_step = 1000.0 * (time.perf_counter() - began) / n_steps
            times, total, kinetic = map(np.asarray, (times, total, kinetic))
            stats = nve_statistics(times, total, kinetic, n_atoms)
            curves[(label, dt)] = (times, 1000.0 * (total - total[0]) / n_atoms)
            notes = (f"{path.name} ({n_atoms} atoms), Bussi {args.equilibrate_fs:.0f} fs at {temperature:.0f} K "
                     f"with 1 fs, then NVE {args.nve_fs:.0f} fs; shipped potential member 0 ({args.models.name}), "
                     "float32, E = 0")
            for metric, value, unit in (("nve_energy_drift_meV_per_atom_ps", stats["drift"], "meV/atom/ps"),
                                        ("nve_energy_rms_meV_per_atom", stats["rms"], "meV/atom"),
                                        ("nve_energy_rms_over_kinetic_rms", stats["ratio"], "1"),
                                        ("ms_per_step", ms_per_step, "ms")):
                records.append({"metric": metric, "value": float(value), "unit": unit, "system": "bornfield-ase",
                                "n_atoms": n_atoms, "ranks": 1, "threads": 1, "baseline": False,
                                "date": today, "machine": MACHINE, "timestep_fs": dt,
                                "temperature_K": temperature, "dataset": "li3po4-ledger", "notes": notes})
            print(f"{label}, dt {dt} fs: drift {stats['drift']:+.3f} meV/atom/ps, RMS {stats['rms']:.3f} meV/atom, "
                  f"RMS/kinetic RMS {stats['ratio']:.3f}, {ms_per_step:.1f} ms/step", flush=True)

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{NAME}.json"
    write_json(out, records)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(label for label, _ in curves))
    fig, axes = plt.subplots(1, len(labels), figsize=(5 * len(labels), 3.5), squeeze=False)
    for ax, label in zip(axes[0], labels):
        for (name, dt), (t, e) in curves.items():
            if name == label:
                ax.plot(t, e, label=f"{dt:g} fs", lw=1)
        ax.set(xlabel="time (ps)", ylabel="E_total − E_total(0) (meV/atom)", title=label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{NAME}.png", dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
