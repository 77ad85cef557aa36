"""Speed of the NN potential and the Born-charge model on CPU (atom-evaluations per second).

One evaluation = neighbour list (vesin) + what the MD step needs:
potential energy, forces and stress (forward + backward), Born charges
(forward, ASR), or both with one shared neighbour list (as FieldCalculator
does). Sizes: beta-Li3PO4 supercells of 128, 1,024 and 8,192 atoms (rattled
0.05 Å). Every size runs in its own process so the peak RSS is that of the
size. Models are randomly initialised with the demo hyperparameters: timing
depends on the architecture, not on the weights.

    .venv/bin/python benchmarks/models_speed.py            # writes benchmarks/results/models_speed.json/.png

``md-step`` is what one field-MD step evaluates since the speed work
(:func:`bornfield.models.combined.evaluate_periodic`): one neighbour list and
one set of edge quantities for both models, energy + forces (no stress) and
raw Born charges. ``--before-src DIR`` also measures an older checkout of
``src/`` (e.g. ``git archive 5d3b398 src | tar -x -C DIR/..``) in the same run,
recorded as ``bornfield-before-<system>`` (same models, same clock); ``--intraop``
also measures the current tree with torch's intra-op threading instead of
parallel blocks of centres (``BORNFIELD_MODEL_THREADS=intraop``,
:mod:`bornfield.models.threads`) as ``bornfield-intraop-<system>``. ``--parts``,
``--wall-threads``, ``--sizes`` and ``--append`` split a campaign into parts
(e.g. 1-thread parts while other jobs load the machine, 2-thread wall clock in
a quiet window) merged into one JSON.

Also records an architecture sweep (channels, radial MLP width, cutoff) at
1,024 atoms in CPU time of one thread, the measurement used to pick defaults.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SPECIES = ["Li", "P", "O"]
SIZES = {128: (2, 2, 2), 1024: (4, 4, 4), 8192: (8, 8, 8)}


def beta_supercell(repeat):
    from ase.spacegroup import crystal

    atoms = crystal(
        ["Li", "Li", "P", "O", "O", "O"],
        basis=[(0.24810, 0.32770, 0.98600), (0.5, 0.84280, 0.98930), (0, 0.82430, 0),
               (0.20777, 0.68676, 0.89610), (0, 0.10520, 0.90040), (0.5, 0.18140, 0.81720)],
        spacegroup=31, cellpar=[6.1150, 5.2394, 4.8554, 90, 90, 90],
    ).repeat(repeat)
    atoms.rattle(0.05, seed=1)
    return atoms


def timed(function, repeats, clock):
    function()  # warm-up
    values = []
    for _ in range(repeats):
        start = clock()
        function()
        values.append(clock() - start)
    return float(np.min(values)), float(np.median(values))


def measure(n_atoms, threads, channels, radial_hidden, cutoff, dtype_name, repeats, clock_name, born_interactions=None):
    import torch

    from bornfield.models import create_model
    from bornfield.models.graph import build_graph

    torch.set_num_threads(threads)
    dtype = {"float32": torch.float32, "float64": torch.float64}[dtype_name]
    clock = {"wall": time.perf_counter, "cpu": time.process_time}[clock_name]
    hyper = {"channels": channels, "radial_hidden": radial_hidden}
    potential = create_model("potential", SPECIES, cutoff, seed=0, **hyper).to(dtype)
    born_hyper = dict(hyper, **born_settings(born_interactions))
    born = create_model("born", SPECIES, cutoff, seed=1, **born_hyper).to(dtype)
    atoms = beta_supercell(SIZES[n_atoms])
    args = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)

    def run_potential():
        graph = build_graph([args], SPECIES, cutoff, dtype)
        potential.forward(graph, forces=True, stress=True)

    def run_born():
        graph = build_graph([args], SPECIES, cutoff, dtype)
        with torch.no_grad():
            born.forward(graph)

    def run_both():
        graph = build_graph([args], SPECIES, cutoff, dtype)
        potential.forward(graph, forces=True, stress=True)
        with torch.no_grad():
            born.forward(graph)

    functions = [("potential", run_potential), ("born", run_born), ("potential+born", run_both)]
    try:
        from bornfield.models.combined import evaluate_periodic
    except ImportError:  # code from before the speed work
        pass
    else:
        functions.append(("md-step", lambda: evaluate_periodic(potential, born, *args, stress=False)))
    out = {}
    for name, function in functions:
        best, median = timed(function, repeats, clock)
        out[name] = {"best_s": best, "median_s": median}
    out["peak_rss_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def born_settings(variant) -> dict:
    """Born constructor settings of a --born-variants token: "1"/"2" (interactions) or "edge<L>[c<C>]" /
    "polar<L>[c<C>]" (edge or polar architecture, L layers, C channels)."""
    if not variant:
        return {}
    match = re.fullmatch(r"(edge|polar)(\d*)(?:c(\d+))?", str(variant))
    if match is None:
        return {"interactions": int(variant)}
    settings = {"architecture": match.group(1), "edge_layers": int(match.group(2) or 2)}
    if match.group(3):
        settings["channels"] = int(match.group(3))
    return settings


def child(args):
    result = measure(args.n_atoms, args.threads, args.channels, args.radial_hidden, args.cutoff, args.dtype,
                     args.repeats, args.clock, args.born_interactions)
    print(json.dumps(result))
    return 0


def run_child(n_atoms, threads, channels, radial_hidden, cutoff, dtype, repeats, clock, src=None, extra_env=None,
              born_interactions=None):
    cmd = [sys.executable, __file__, "--child", "--n-atoms", str(n_atoms), "--threads", str(threads),
           "--channels", str(channels), "--radial-hidden", str(radial_hidden), "--cutoff", str(cutoff),
           "--dtype", dtype, "--repeats", str(repeats), "--clock", clock]
    if born_interactions:
        cmd += ["--born-interactions", str(born_interactions)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **(extra_env or {}))
    if src is not None:  # an older bornfield source tree shadows the installed (editable) one
        env["PYTHONPATH"] = str(Path(src).resolve())
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _split_variant(extra_env):
    """(environment without the internal "_born_interactions" entry, that entry or None)."""
    env = dict(extra_env or {})
    return env, env.pop("_born_interactions", None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n-atoms", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--radial-hidden", type=int, default=32)
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--born-interactions", default=None,
                        help=argparse.SUPPRESS)
    parser.add_argument("--born-variants", default="",
                        help="comma list of Born-model variants measured side by side: interactions 1, 2 as "
                             "bornfield-i<k>-<system>, edge architecture edge<L>[c<C>] (L layers, C channels) as "
                             "bornfield-<token>-<system> (default: the model constructor's default, as bornfield-<system>)")
    parser.add_argument("--parts", default="wall,cpu,sweep",
                        help="comma list of wall (wall clock at 1 and --threads threads), cpu (1-thread CPU time), sweep")
    parser.add_argument("--wall-threads", default=None,
                        help="comma list of thread counts of the wall-clock part (default: 1 and --threads)")
    parser.add_argument("--sizes", default=",".join(str(n) for n in SIZES), help="comma list of atom counts")
    parser.add_argument("--intraop", action="store_true",
                        help="also measure the current tree with BORNFIELD_MODEL_THREADS=intraop (torch's own "
                             "intra-op threads instead of parallel blocks of centres) at more than one thread")
    parser.add_argument("--machine", default="2 cores, no GPU", help="the record's machine field (note other load)")
    parser.add_argument("--append", action="store_true",
                        help="merge into the existing --output JSON (records with the same metric/system/size/threads/kind "
                             "are replaced)")
    parser.add_argument("--before-src", default=None, help="an older bornfield src/ tree to measure side by side")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON")
    parser.add_argument("--output", default=str(RESULTS / "models_speed.json"))
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.replot:
        plot(json.loads(Path(args.output).read_text()), Path(args.output).with_suffix(".png"))
        return 0

    today = dt.date.today().isoformat()
    records = []

    def record(metric, value, unit, system, n_atoms, threads, notes):
        records.append({"metric": metric, "value": float(value), "unit": unit, "system": system,
                        "n_atoms": n_atoms, "ranks": 1, "threads": threads, "baseline": False, "date": today,
                        "machine": args.machine, "notes": notes})

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if args.no_sweep:
        parts.discard("sweep")
    sizes = [int(n) for n in args.sizes.split(",")]
    wall_threads = (sorted({int(t) for t in args.wall_threads.split(",")}) if args.wall_threads
                    else sorted({1, args.threads}))

    base = f"channels {args.channels}, radial_hidden {args.radial_hidden}, hidden 64, cutoff {args.cutoff} Å, {args.dtype}"
    variants = [v.strip() for v in args.born_variants.split(",") if v.strip()]
    trees = ([(f"bornfield-{k}" if k.startswith("edge") else f"bornfield-i{k}", None, {"_born_interactions": k})
              for k in variants] or [("bornfield", None, None)])
    trees += [("bornfield-before", args.before_src, None)] if args.before_src else []
    intraop = ("bornfield-intraop", None, {"BORNFIELD_MODEL_THREADS": "intraop"})
    wall_runs = [(n, t) for n in sizes for t in wall_threads] if "wall" in parts else []
    for n_atoms, threads in wall_runs:
        repeats = args.repeats if n_atoms <= 1024 else max(2, args.repeats // 2)
        for prefix, src, extra_env in trees + ([intraop] if args.intraop and threads > 1 else []):
            # interleaved: all trees see the same machine load
            load = os.getloadavg()[0]
            env, born_k = _split_variant(extra_env)
            result = run_child(n_atoms, threads, args.channels, args.radial_hidden, args.cutoff, args.dtype,
                               repeats, "wall", src, env, born_k)
            notes = (f"{base}; wall clock, best of {repeats} (median in notes); includes vesin neighbour list; "
                     f"potential = energy+forces+stress, md-step = energy+forces+raw Z on one shared graph; "
                     f"1-min load average {load:.1f} on the shared 2-core machine")
            if env:
                notes += f"; environment {env}"
            if born_k:
                notes += f"; Born model {born_settings(born_k)}"
            systems = [k for k, v in result.items() if isinstance(v, dict)]
            for system in systems:
                best = result[system]["best_s"]
                median = result[system]["median_s"]
                record("atom_evals_per_s", n_atoms / best, "atom-evals/s", f"{prefix}-{system}", n_atoms, threads,
                       notes + f"; median {n_atoms / median:.0f} atom-evals/s")
            record("peak_rss_MiB", result["peak_rss_MiB"], "MiB", f"{prefix}-potential+born", n_atoms, threads,
                   base + "; peak resident set of the whole benchmark process (python + torch + both models)")
            print(prefix, n_atoms, f"threads {threads}", {k: round(n_atoms / result[k]["best_s"]) for k in systems},
                  f"peak RSS {result['peak_rss_MiB']:.0f} MiB, load {load:.1f}", flush=True)

    # the same evaluations in CPU time of one thread: insensitive to other jobs on a shared machine
    for n_atoms in (sizes if "cpu" in parts else []):
        repeats = args.repeats if n_atoms <= 1024 else max(2, args.repeats // 2)
        for prefix, src, extra_env in trees:
            env, born_k = _split_variant(extra_env)
            result = run_child(n_atoms, 1, args.channels, args.radial_hidden, args.cutoff, args.dtype, repeats,
                               "cpu", src, env, born_k)
            systems = [k for k, v in result.items() if isinstance(v, dict)]
            for system in systems:
                record("atom_evals_per_cpu_s", n_atoms / result[system]["best_s"], "atom-evals/CPU-s",
                       f"{prefix}-{system}", n_atoms, 1,
                       f"{base}; CPU time (process_time) of one thread, best of {repeats}; includes vesin neighbour list"
                       + (f"; Born model {born_settings(born_k)}" if born_k else ""))
            print(prefix, n_atoms, "cpu", {k: round(n_atoms / result[k]["best_s"]) for k in systems}, flush=True)

    if "sweep" in parts:
        # design sweep in single-thread CPU time (robust to other jobs on the shared machine)
        for channels, radial_hidden, cutoff, dtype in [
            (8, 16, 5.0, "float32"), (8, 32, 5.0, "float32"), (12, 32, 5.0, "float32"), (16, 32, 5.0, "float32"),
            (8, 32, 4.5, "float32"), (8, 32, 5.0, "float64"),
        ]:
            result = run_child(1024, 1, channels, radial_hidden, cutoff, dtype, args.repeats, "cpu")
            notes = (f"design sweep: channels {channels}, radial_hidden {radial_hidden}, cutoff {cutoff} Å, {dtype}; "
                     "CPU time of one thread, best of repeats; potential energy+forces+stress plus Born charges, shared neighbour list")
            record("atom_evals_per_cpu_s", 1024 / result["potential+born"]["best_s"], "atom-evals/CPU-s",
                   "bornfield-potential+born", 1024, 1, notes)
            print("sweep", channels, radial_hidden, cutoff, dtype, round(1024 / result["potential+born"]["best_s"]), flush=True)

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and out.is_file():
        def key(r):
            return (r["metric"], r["system"], r["n_atoms"], r["threads"], "design sweep" in r["notes"],
                    r["notes"].split(";")[0] if "design sweep" in r["notes"] else "")
        new_keys = {key(r) for r in records}
        records = [r for r in json.loads(out.read_text()) if key(r) not in new_keys] + records
    tmp = out.with_suffix(".json.part")
    tmp.write_text(json.dumps(records, indent=1))
    tmp.replace(out)
    plot(records, out.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


def plot(records, path):
    """Three panels: wall clock at 1 thread, at the largest thread count, CPU time of one thread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"potential": ("tab:blue", "o"), "born": ("tab:green", "s"), "potential+born": ("tab:red", "D"),
              "md-step": ("tab:purple", "^")}
    trees = {"bornfield": "-", "bornfield-before": ":", "bornfield-intraop": "--"}
    rows = [r for r in records if "design sweep" not in r["notes"]]
    wall_threads = sorted({r["threads"] for r in rows if r["metric"] == "atom_evals_per_s"})
    panels = [("atom_evals_per_s", t, f"wall clock, {t} thread{'s' * (t > 1)}") for t in wall_threads]
    panels.append(("atom_evals_per_cpu_s", 1, "CPU time of one thread"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), sharey=True, squeeze=False)
    for ax, (metric, threads, title) in zip(axes[0], panels):
        for tree, line in trees.items():
            for system, (colour, marker) in styles.items():
                data = sorted((r["n_atoms"], r["value"]) for r in rows if r["metric"] == metric
                              and r["threads"] == threads and r["system"] == f"{tree}-{system}")
                if data:
                    ax.loglog(*zip(*data), line, marker=marker, color=colour, ms=4,
                              label=f"{tree.removeprefix('bornfield').lstrip('-') or 'now'}: {system}")
        ax.axhline(1e4, color="k", ls="--", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("atoms")
    axes[0][0].set_ylabel("atom-evaluations / s")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    for ax in axes[0][:-1]:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    fig.legend(handles, labels, fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, -0.12))
    fig.suptitle("NN potential / Born model throughput (dashed black: 10,000 target for potential+born; "
                 "now = solid, before = dotted, intra-op threads = dashed)", fontsize=8)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
