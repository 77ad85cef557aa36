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

With trained models (``--models SET [SET ...]``) the question is how stale Born charges compare
with the Born model's own error. One Bussi NVT run (``--temperature``, ``--timestep`` fs,
``--equilibration-steps`` then ``--steps`` at E = 0.1 V/Å along x) is driven by the first set's
``potential_0.pt`` + ``born_0.pt`` on ``--structure`` (an extxyz cell, e.g. the demo's
melt-quenched ``results/structures/md_cells/amorphous.extxyz``; default a rattled 128-atom beta
cell), Born charges refreshed every step and positions kept every step. Each set's ``born_0.pt``
then gives Z(x_t) (ASR exact) on every production frame of that one trajectory, and for each
interval n the charges a run refreshing every n steps would hold, Z(x_{n⌊t/n⌋}), are compared with
them (the trajectory's change by stale forces is second order and left out):

* ``bec_staleness_rmse_e``: RMS(Z_held − Z_fresh) over atoms, frames and all nine components (e);
* ``bec_staleness_row_x_rmse_e``: the same over the field row (α = x), whose error is the field
  force's error divided by e|E|;
* beside them, per set, ``bec_rmse_e`` of ``born_0`` on the set's held-out cells (its
  ``metrics.json``, member 0 when listed), the model error the staleness adds to.

    .venv/bin/python benchmarks/md_born_refresh.py --models models/li3po4 models/li3po4-polar \
        --structure results/structures/md_cells/amorphous.extxyz --temperature 900

writes ``benchmarks/results/md_born_refresh_trained.json`` and ``.png`` (``--output`` another name).
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


def staleness_rmse(z: np.ndarray, interval: int) -> tuple[float, float]:
    """RMSE (e) of Born charges held for ``interval`` steps against fresh ones.

    ``z`` (T, N, 3, 3): Z[atom, field index, force index] at T consecutive steps; step t holds
    ``z[interval * (t // interval)]``. Returns the RMSE over all nine components and over the field
    row x (α = 0).
    """
    held = z[(np.arange(len(z)) // interval) * interval]
    diff = held - z
    return float(np.sqrt(np.mean(diff**2))), float(np.sqrt(np.mean(diff[:, :, 0, :] ** 2)))


def held_out_born_rmse(models: Path) -> tuple[float, str]:
    """``bec_rmse_e`` of the set's member 0 on its held-out cells (metrics.json) and the system it came from."""
    import json

    records = [r for r in json.loads((models / "metrics.json").read_text())
               if r["metric"] == "bec_rmse_e" and r.get("config_type", "all") == "all"]
    for system in ("bornfield-born-member-0", "bornfield-born"):
        found = [r for r in records if r["system"] == system]
        if found:
            return float(found[0]["value"]), system
    raise SystemExit(f"{models / 'metrics.json'}: no bec_rmse_e record of bornfield-born(-member-0)")


def trained(args) -> None:
    """Staleness of trained Born models along one trajectory (see the module docstring)."""
    import h5py
    import torch
    from ase.io import read

    torch.set_num_threads(1)
    from md_throughput import beta_supercell

    from bornfield.config import validate_section
    from bornfield.md.conditions import MDCondition
    from bornfield.md.runner import run_condition
    from bornfield.models import load_born, load_potential

    sets = [Path(m) for m in args.models]
    for models in sets:
        for name in ("potential_0.pt", "born_0.pt", "metrics.json"):
            if not (models / name).is_file():
                raise SystemExit(f"--models {models}: no {name}")
    atoms = read(args.structure, 0) if args.structure else beta_supercell(128)
    where = f"{args.structure} ({len(atoms)} atoms)" if args.structure else "rattled 128-atom beta-Li3PO4"
    condition = MDCondition(name="staleness", phase="beta", temperature_K=args.temperature,
                            field_strength_V_per_A=0.1, field_direction=(1.0, 0.0, 0.0),
                            direction_label="x", replicas=1, seeds=(11,))
    settings = validate_section({
        "ensemble": "bussi", "timestep_fs": args.timestep, "equilibration_steps": args.equilibration_steps,
        "production_steps": args.steps, "born_refresh_interval": 1,
        "output": {"trajectory_stride": 1, "thermo_stride": 10, "field_forces": False, "born_charges": False,
                   "checkpoint_interval": 10**6},
    }, "md")
    driver = load_potential(sets[0] / "potential_0.pt")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = run_condition(settings, condition, Path(tmp), driver, load_born(sets[0] / "born_0.pt"),
                                [atoms], progress=False)
        md_wall = time.perf_counter() - start
        if summary["replicas_completed"] != 1:
            raise SystemExit(f"the MD run did not complete: {summary['replicas']}")
        with h5py.File(Path(tmp) / "replica_0" / "traj.h5") as traj:
            steps = traj["step"][:]
            positions = traj["positions"][:][steps >= args.equilibration_steps]
            cell, numbers = traj["cell"][:], traj["numbers"][:]
    today = datetime.date.today().isoformat()
    records = []
    notes = (f"one Bussi NVT trajectory at {args.temperature:g} K, {args.timestep:g} fs steps, "
             f"{len(positions)} production frames after {args.equilibration_steps} equilibration steps, "
             f"E = 0.1 V/Å along x, {where}, driven by {sets[0]}/potential_0.pt + born_0.pt refreshed every "
             f"step ({md_wall:.0f} s wall); Z of each set's born_0 on every frame, held for n steps "
             "against fresh (ASR exact)")
    for models in sets:
        born = load_born(models / "born_0.pt")
        z = np.array([born.born_charges(x, numbers, cell, np.ones(3, dtype=bool)) for x in positions])
        model_rmse, model_system = held_out_born_rmse(models)
        system = f"{models}/born_0.pt"
        base = {"system": system, "n_atoms": len(numbers), "ranks": 1, "threads": 1, "baseline": False,
                "date": today, "machine": args.machine, "dataset": "li3po4-ledger"}
        records.append({**base, "metric": "bec_rmse_e", "value": model_rmse, "unit": "e", "split": "test",
                        "notes": f"held-out cells of {models} ({model_system} in its metrics.json)"})
        for interval in args.intervals:
            rmse, row_x = staleness_rmse(z, interval)
            for metric, value in (("bec_staleness_rmse_e", rmse), ("bec_staleness_row_x_rmse_e", row_x)):
                records.append({**base, "metric": metric, "value": value, "unit": "e",
                                "born_refresh_interval": interval, "notes": notes})
            print(f"{system} n={interval}: staleness {rmse:.4f} e (row x {row_x:.4f}); "
                  f"held-out model error {model_rmse:.4f} e", flush=True)
    path = Path(args.output) if args.output else RESULTS / f"{NAME}_trained.json"
    write_json(path, records)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for k, models in enumerate(sets):
        system = f"{models}/born_0.pt"
        rows = [(r["born_refresh_interval"], r["value"]) for r in records
                if r["system"] == system and r["metric"] == "bec_staleness_rmse_e"]
        x, y = zip(*rows)
        ax.plot(x, y, "o-", color=f"C{k}", label=f"{models}: staleness")
        model = next(r["value"] for r in records if r["system"] == system and r["metric"] == "bec_rmse_e")
        ax.axhline(model, color=f"C{k}", ls="--", lw=1, label=f"{models}: held-out error")
    ax.set(xscale="log", xlabel="Born refresh interval (steps)", ylabel="Born-charge RMSE (e)",
           title=f"stale vs model error, {args.temperature:g} K, {args.timestep:g} fs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=120)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--intervals", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    parser.add_argument("--models", nargs="+", default=None,
                        help="trained model sets: the staleness of their born_0 along one trajectory")
    parser.add_argument("--structure", default=None, help="with --models: extxyz start cell")
    parser.add_argument("--temperature", type=float, default=900.0, help="with --models: K")
    parser.add_argument("--timestep", type=float, default=2.0, help="with --models: fs")
    parser.add_argument("--equilibration-steps", type=int, default=250, help="with --models")
    parser.add_argument("--machine", default=MACHINE, help="with --models: the records' machine field")
    parser.add_argument("--output", default=None, help="with --models: JSON file")
    args = parser.parse_args()
    if args.models:
        trained(args)
        return

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
