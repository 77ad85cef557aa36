"""Speed of bornfield's potential and Born model side by side with MACE, in one interleaved run.

Atom-evaluations per second (wall clock, 2 torch threads) at 128, 1,024 and
8,192 atoms (rattled beta-Li3PO4 supercells, ``models_speed.beta_supercell``)
for

* ``bornfield-potential``: neighbour list (vesin) + energy + forces (no stress);
* ``bornfield-born``: neighbour list + Born charges (ASR-corrected);
* ``bornfield-potential+born``: one MD step's evaluation,
  :func:`bornfield.models.combined.evaluate_periodic` (shared neighbour list,
  energy + forces + raw Z, no stress);
* ``mace-0.3.16-small``: MACE graph construction (its own neighbour list) +
  energy + forces (no stress), the model trained by ``models_mace.py``.

The bornfield potential is the one trained by ``models_mace.py``
(``benchmarks/work/models_mace/potential_0.pt``, config/paper.yaml
architecture); the Born model is randomly initialised with the same
hyperparameters (no Born labels in the proxy data; timing depends on the
architecture, not on the weights). Each measurement runs in its own process
(so peak RSS is that of one system and one size), and the processes alternate
A B A B (``--rounds``) so both see the same machine load; the best time over
rounds and repeats is reported, the median in the notes, with the 1-min load
average seen. MACE runs in ``benchmarks/.venv-mace`` (see models_mace.py).

    .venv/bin/python benchmarks/models_mace_speed.py [--rounds 2] [--threads 2]

Writes ``benchmarks/results/models_mace_speed.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "models_mace"
MACE_PYTHON = HERE / ".venv-mace" / "bin" / "python"
SIZES = {128: (2, 2, 2), 1024: (4, 4, 4), 8192: (8, 8, 8)}
MACHINE = "2 cores, no GPU (shared with other jobs)"

from models_speed import beta_supercell  # noqa: E402  (same directory; numpy/ase only)


def timed(function, repeats):
    """(best, median) wall seconds of ``repeats`` calls after one warm-up call."""
    import numpy as np

    function()
    values = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        values.append(time.perf_counter() - start)
    return float(np.min(values)), float(np.median(values))


def child_bornfield(n_atoms: int, threads: int, repeats: int, potential_path: str) -> dict:
    import numpy as np
    import torch

    from bornfield.models import create_model, load_potential
    from bornfield.models.combined import evaluate_periodic

    torch.set_num_threads(threads)
    paths = potential_path.split(",")  # several files: a committee, timed as its mean
    potential = load_potential(paths if len(paths) > 1 else paths[0])
    first = potential.members[0] if len(paths) > 1 else potential
    hyper = {k: first.hyperparameters[k] for k in ("channels", "n_basis", "radial_hidden", "hidden", "avg_neighbours")
             if k in first.hyperparameters}
    born = create_model("born", list(potential.species), potential.cutoff, seed=1, **hyper).to(potential.dtype)
    atoms = beta_supercell(SIZES[n_atoms])
    args = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
    functions = {
        "bornfield-potential": lambda: evaluate_periodic(potential, None, *args, stress=False),
        "bornfield-born": lambda: born.born_charges(*args),
        "bornfield-potential+born": lambda: evaluate_periodic(potential, born, *args, stress=False),
    }
    out = {name: timed(f, repeats) for name, f in functions.items()}
    out["peak_rss_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out["hyperparameters"] = hyper
    return out


def child_mace(n_atoms: int, threads: int, repeats: int, model_path: str) -> dict:
    """Runs in benchmarks/.venv-mace: graph construction + energy + forces of the trained MACE."""
    import torch
    from mace import data as mace_data
    from mace.calculators import MACECalculator
    from mace.tools import torch_geometric

    torch.set_num_threads(threads)
    calc = MACECalculator(model_paths=model_path, device="cpu", default_dtype="float32")
    model = calc.models[0]
    atoms = beta_supercell(SIZES[n_atoms])
    keyspec = mace_data.KeySpecification(info_keys={}, arrays_keys={})

    def evaluate():
        config = mace_data.config_from_atoms(atoms, key_specification=keyspec)
        graph = mace_data.AtomicData.from_config(config, z_table=calc.z_table, cutoff=calc.r_max,
                                                 heads=calc.available_heads)
        batch = torch_geometric.Batch.from_data_list([graph])
        result = model(batch.to_dict(), compute_stress=False, training=False)
        return result["energy"].detach(), result["forces"].detach()

    out = {"mace-0.3.16-small": timed(evaluate, repeats)}
    out["peak_rss_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def run_child(which: str, n_atoms: int, threads: int, repeats: int, model: Path) -> dict:
    python = str(MACE_PYTHON) if which == "mace" else sys.executable
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [python, str(Path(__file__).resolve()), "--child", which, "--n-atoms", str(n_atoms),
           "--threads", str(threads), "--repeats", str(repeats), "--model", str(model)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    systems = sorted({r["system"] for r in records if r["metric"] == "atom_evals_per_s"})
    for system in systems:
        rows = sorted((r for r in records if r["system"] == system and r["metric"] == "atom_evals_per_s"),
                      key=lambda r: r["n_atoms"])
        ax.loglog([r["n_atoms"] for r in rows], [r["value"] for r in rows], "o--" if "mace" in system else "o-",
                  label=system)
    ax.axhline(1e4, color="k", ls=":", lw=0.8, label="target potential+born")
    ax.set_xlabel("atoms")
    ax.set_ylabel("atom-evaluations / s (wall, 2 threads)")
    ax.set_title("bornfield vs MACE (small), interleaved runs on a shared 2-core CPU", fontsize=9)
    ax.legend(fontsize=7)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["bornfield", "mace"], help=argparse.SUPPRESS)
    parser.add_argument("--n-atoms", type=int, default=1024, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="A B alternations per size")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--output", type=Path, default=HERE / "results" / "models_mace_speed.json")
    parser.add_argument("--machine", default=MACHINE, help="the records' machine field (note other load)")
    args = parser.parse_args()
    if args.child:
        child = child_mace if args.child == "mace" else child_bornfield
        print(json.dumps(child(args.n_atoms, args.threads, args.repeats, str(args.model))))
        return 0

    from bornfield.structures.io import write_json_atomic

    potential = WORK / "potential_0.pt"
    mace_model = WORK / "mace" / "proxy_mace.model"
    for path in (potential, mace_model):
        if not path.is_file():
            raise SystemExit(f"{path} missing: run benchmarks/models_mace.py first")
    today = dt.date.today().isoformat()
    records: list[dict] = []
    best: dict[tuple[str, int], list[float]] = {}
    rss: dict[tuple[str, int], float] = {}
    loads: dict[int, list[float]] = {}
    hyper = {}
    for n_atoms in args.sizes:
        repeats = args.repeats if n_atoms <= 1024 else 1  # MACE takes tens of seconds per 8,192-atom call
        for _ in range(args.rounds):
            for which, model in (("bornfield", potential), ("mace", mace_model)):  # A B A B
                loads.setdefault(n_atoms, []).append(os.getloadavg()[0])
                result = run_child(which, n_atoms, args.threads, repeats, model)
                hyper = result.pop("hyperparameters", hyper)
                rss_key = ("bornfield-potential+born" if which == "bornfield" else "mace-0.3.16-small", n_atoms)
                rss[rss_key] = max(rss.get(rss_key, 0.0), result.pop("peak_rss_MiB"))
                for system, (b, m) in result.items():
                    best.setdefault((system, n_atoms), []).extend([b, m])
                print(n_atoms, which, {k: round(n_atoms / v[0]) for k, v in result.items()},
                      f"load {loads[n_atoms][-1]:.2f}", flush=True)
    base = {"unit": "atom-evals/s", "ranks": 1, "threads": args.threads, "date": today, "machine": args.machine}
    for (system, n_atoms), values in best.items():
        b, medians = min(values[0::2]), values[1::2]
        load = loads[n_atoms]
        notes = (f"wall clock, best of {args.rounds} interleaved processes x repeats (median "
                 f"{n_atoms / sorted(medians)[len(medians) // 2]:.0f}); 1-min load average {min(load):.2f}-{max(load):.2f}; "
                 "energy+forces (no stress) incl. neighbour list/graph construction")
        if system.startswith("bornfield"):
            notes += f"; bornfield hyperparameters {hyper} (potential trained on the CHGNet proxy, Born random)"
        else:
            notes += "; MACE 32x0e+32x1o, r_max 5 A, 2 interactions, max_ell 3, correlation 3, float32"
        records.append(dict(base, metric="atom_evals_per_s", value=n_atoms / b, system=system, n_atoms=n_atoms,
                            baseline=system.startswith("mace"), notes=notes))
    for (system, n_atoms), value in rss.items():
        records.append(dict(base, metric="peak_rss_MiB", value=value, unit="MiB", system=system, n_atoms=n_atoms,
                            baseline=system.startswith("mace"),
                            notes="peak resident set of the measuring process (python + torch + models)"))
    for n_atoms in args.sizes:
        mace = next((r["value"] for r in records if r["system"] == "mace-0.3.16-small"
                     and r["metric"] == "atom_evals_per_s" and r["n_atoms"] == n_atoms), None)
        for system in ("bornfield-potential", "bornfield-potential+born"):
            ours = next((r["value"] for r in records if r["system"] == system
                         and r["metric"] == "atom_evals_per_s" and r["n_atoms"] == n_atoms), None)
            if mace and ours:
                records.append(dict(base, metric="speed_ratio_to_mace", value=ours / mace, unit="x",
                                    system=system, n_atoms=n_atoms, baseline=False,
                                    notes=f"{system} atom-evals/s divided by mace-0.3.16-small's, same run"))
    write_json_atomic(args.output, records)
    plot(records, args.output.with_suffix(".png"))
    for r in records:
        print(r["metric"], r["system"], r["n_atoms"], round(r["value"], 2), r["unit"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
