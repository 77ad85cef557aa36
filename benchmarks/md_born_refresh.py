"""What does refreshing the Born charges only every n steps cost in accuracy, and gain in speed?

NVE field MD (E = 0.1 V/Å along x, 600 K start) of a rattled 128-atom
beta-Li3PO4 cell with bornfield model files (random initialisation, demo
hyperparameters), ASE backend, one thread. The untrained potential would
collapse the cell, so its energy scale is set to 0: atoms move ballistically
with thermal velocities (plus the field force) — the motion that makes Z stale
within a few femtoseconds; a trained potential's vibrations change Z on the
same time scale. The throughput numbers therefore count the Born model only. For each refresh interval n the
stored (possibly stale) field forces of every step are compared with fresh
ones, Z(x_t)ᵀE, evaluated at the same positions:

* ``field_force_rel_rmse``: RMS(F_stale − F_fresh) / RMS(F_fresh) over atoms and steps;
* ``position_rmsd_vs_every_step_A``: RMS position difference to the n = 1 run after the last step;
* ``atom_steps_per_s``: throughput.

With a trained Born model the numbers change with how fast Z varies along the
trajectory (the random model's Z varies with the environment like a trained one
but with arbitrary magnitude); the default stays n = 1.

Usage::

    .venv/bin/python benchmarks/md_born_refresh.py [--steps 300]

Writes ``benchmarks/results/md_born_refresh.json`` (DESIGN.md records) and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import numpy as np

from bornfield.atomic import write_json

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NAME = "md_born_refresh"
MACHINE = "2 cores, no GPU (shared with other jobs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--intervals", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    args = parser.parse_args()

    import h5py
    import torch

    torch.set_num_threads(1)
    from md_throughput import beta_supercell, write_models

    from bornfield.config import validate_section
    from bornfield.md.conditions import MDCondition
    from bornfield.md.runner import run_condition
    from bornfield.models import load_born, load_potential

    records = []
    today = datetime.date.today().isoformat()
    final_positions = {}
    with tempfile.TemporaryDirectory() as tmp:
        potential_file, born_file = write_models(Path(tmp))
        potential, born = load_potential(potential_file), load_born(born_file)
        # an untrained potential collapses the cell within ~100 fs; switch it off: the atoms
        # move ballistically at 600 K (plus the field force), which is the motion that makes
        # Z stale over a few steps
        potential.set_energy_scale(0.0)
        atoms = beta_supercell(128)
        condition = MDCondition(name="beta_T600K_E0.1_x", phase="beta", temperature_K=600.0,
                                field_strength_V_per_A=0.1, field_direction=(1.0, 0.0, 0.0),
                                direction_label="x", replicas=1, seeds=(11,))
        for interval in args.intervals:
            settings = validate_section({
                "ensemble": "nve", "equilibration_steps": 0, "production_steps": args.steps,
                "born_refresh_interval": interval,
                "output": {"trajectory_stride": 1, "thermo_stride": 10, "field_forces": True,
                           "born_charges": False, "checkpoint_interval": 10**6},
                # the untrained potential lets atoms approach closely; Z staleness is what is measured
                "safety": {"max_temperature_factor": 1e3, "min_distance_A": 0.0},
            }, "md")
            out = Path(tmp) / f"n{interval}"
            start = time.perf_counter()
            summary = run_condition(settings, condition, out, potential, born, [atoms], progress=False)
            elapsed = time.perf_counter() - start
            assert summary["replicas_completed"] == 1, summary["replicas"]
            with h5py.File(out / "replica_0" / "traj.h5") as traj:
                positions = traj["positions"][:]
                stale = traj["field_forces"][:].astype(float)
                cell, numbers = traj["cell"][:], traj["numbers"][:]
            field = np.array(condition.field_V_per_A)
            fresh = []
            for x in positions:
                z = born.born_charges(x, numbers, cell, np.ones(3, dtype=bool))
                z = z - z.mean(axis=0)
                fresh.append(np.einsum("kab,a->kb", z, field))
            fresh = np.array(fresh)
            rel = float(np.sqrt(np.mean((stale - fresh) ** 2)) / np.sqrt(np.mean(fresh**2)))
            final_positions[interval] = positions[-1]
            rmsd = float(np.sqrt(np.mean((positions[-1] - final_positions[args.intervals[0]]) ** 2)))
            speed = len(numbers) * args.steps / elapsed
            notes = (f"NVE {args.steps} steps, 128-atom beta-Li3PO4, E = 0.1 V/Å, random-init Born model, "
                     "potential switched off (ballistic 600 K motion)")
            for metric, value, unit in (("field_force_rel_rmse", rel, "1"),
                                        ("position_rmsd_vs_every_step_A", rmsd, "Å"),
                                        ("atom_steps_per_s", speed, "atom-steps/s")):
                records.append({"metric": metric, "value": value, "unit": unit, "system": "bornfield-ase",
                                "n_atoms": len(numbers), "ranks": 1, "threads": 1, "baseline": False,
                                "date": today, "machine": MACHINE, "born_refresh_interval": interval,
                                "notes": notes})
            print(f"n={interval}: field-force rel. RMSE {rel:.2e}, RMSD {rmsd:.2e} Å, {speed:.0f} atom-steps/s",
                  flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{NAME}.json"
    write_json(path, records)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    by = {m: [(r["born_refresh_interval"], r["value"]) for r in records if r["metric"] == m]
          for m in ("field_force_rel_rmse", "atom_steps_per_s")}
    x, y = zip(*by["field_force_rel_rmse"])
    ax.plot(x, y, "o-", label="field-force rel. RMSE")
    ax.set(xscale="log", yscale="symlog", xlabel="Born refresh interval (steps)", ylabel="relative RMSE",
           title="stale Born charges")
    ax2 = ax.twinx()
    x, y = zip(*by["atom_steps_per_s"])
    ax2.plot(x, y, "s--", color="C1", label="atom-steps/s")
    ax2.set_ylabel("atom-steps / s")
    fig.legend(loc="upper center", fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{NAME}.png", dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
