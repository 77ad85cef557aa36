"""Held-out error against speed for the model settings a user can pick, and MACE (a Pareto plot).

A setting is a (potential, Born model) file pair as field MD runs it (member 0 of a model set, or the
mean of several potential files, ``md.committee_mean_forces``) and the Born refresh interval n
(``md.born_refresh_interval``). One run measures, for every setting:

* held-out errors: ``bornfield train evaluate`` on the held-out cells of ``--models`` (its
  ``test.extxyz``: cells never trained on, 5 of the 21 with DFPT labels): force RMSE (meV/Å),
  energy RMSE (meV/atom), Born-charge RMSE over all nine components (e); with n > 1 the Born
  error is that RMSE and the staleness of charges held n steps added in quadrature (both RMS over
  components; the staleness from ``results/md_born_refresh_trained.json``, made by
  ``md_born_refresh.py --models`` along a 900 K amorphous trajectory);
* field-MD speed at 1,024 atoms (``md_throughput.measure``: rattled beta-Li3PO4 supercell, Bussi 600 K,
  E = 0.1 V/Å, potential and Born charges every step): ASE backend on 1 rank and LAMMPS on 2 ranks,
  wall clock and CPU time, the settings interleaved over ``--repeats`` rounds;
* potential-only speed (neighbour list + energy + forces at 1,024 atoms, one torch thread, the
  children of ``models_mace_speed.py``) of every distinct potential (recorded under the first setting
  that uses it, ``same_potential`` naming them all) and, side by side in the same
  rounds, of the MACE baseline (``--mace-model``; default: the stage-two model that
  ``models_mace_ledger.py`` trained on the split of ``--models``, if present). MACE's held-out errors
  are its records in ``results/models_mace_ledger.json`` for the same model set (same cells).

Default settings: the shipped set ``models/li3po4`` (message-passing potential, density Born model:
what every config uses), the polar set ``models/li3po4-polar`` (same potential, Born charges as the
derivative of a learned polarization) refreshed every 1, 2 and 3 steps, and the strictly local
potential shipped before message passing (``git:5de3295:models/li3po4/potential_0.pt``, same rows and
split) with the shipped Born model, and the shipped set with the mean forces of its four potentials.
``--setting NAME POTENTIAL BORN N`` replaces them (repeatable; ``git:REV:PATH`` reads a file from the
repository's history; POTENTIAL may list several files separated by commas: their committee mean).

    .venv/bin/python benchmarks/models_pareto.py [--repeats 2] [--steps 10] [--mace-model FILE]

Writes ``results/models_pareto.json`` (design-note records; MACE ``baseline: true``) and
``results/models_pareto.png`` (Born RMSE against field-MD atom-steps/s, force RMSE against potential
atom-evaluations/s; the settings no other setting beats on both axes are joined).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from md_throughput import measure  # noqa: E402  (same directory)
from models_mace_ledger import shown, split_key  # noqa: E402
from models_mace_speed import MACE_PYTHON, run_child  # noqa: E402

from bornfield.atomic import write_json  # noqa: E402

MACHINE = "2 cores, no GPU"
N_ATOMS = 1024
MACE_SYSTEM = "mace-0.3.16-small"
DEFAULT_SETTINGS = [
    ("message+density", "models/li3po4/potential_0.pt", "models/li3po4/born_0.pt", "1"),
    ("message+polar", "models/li3po4-polar/potential_0.pt", "models/li3po4-polar/born_0.pt", "1"),
    ("message+polar-every2", "models/li3po4-polar/potential_0.pt", "models/li3po4-polar/born_0.pt", "2"),
    ("message+polar-every3", "models/li3po4-polar/potential_0.pt", "models/li3po4-polar/born_0.pt", "3"),
    ("local+density", "git:5de3295:models/li3po4/potential_0.pt", "models/li3po4/born_0.pt", "1"),
    ("message-mean4+density", ",".join(f"models/li3po4/potential_{i}.pt" for i in range(4)),
     "models/li3po4/born_0.pt", "1"),
]
STALENESS = HERE / "results" / "md_born_refresh_trained.json"
ERROR_UNITS = {"force_rmse_meV_per_A": "meV/Å", "energy_rmse_meV_per_atom": "meV/atom", "bec_rmse_e": "e"}
ERROR_METRICS = {"force_rmse_meV_per_A": "bornfield-potential", "energy_rmse_meV_per_atom": "bornfield-potential",
                 "bec_rmse_e": "bornfield-born"}


def resolve_file(spec: str, scratch: Path) -> Path:
    """A model file: a path, or ``git:REV:PATH`` written from the repository's history into ``scratch``."""
    if not spec.startswith("git:"):
        path = Path(spec)
        if not path.is_file():
            raise SystemExit(f"model file {spec}: not found")
        return path
    _, rev, inner = spec.split(":", 2)
    out = scratch / f"{rev}-{inner.replace('/', '_')}"
    done = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{inner}"], capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"model file {spec}: git show failed: {done.stderr.decode().strip()}")
    out.write_bytes(done.stdout)
    return out


def held_out_errors(test: Path, potentials: list[Path], born: Path, output: Path) -> dict[str, float]:
    """Force, energy and Born RMSE (all cells) of one setting on ``test``, from ``bornfield train evaluate``
    (several potentials: their committee mean; its records go to ``output``, its parity plots beside it)."""
    command = [str(Path(sys.executable).parent / "bornfield"), "train", "evaluate", "--dataset", str(test),
               "--potential", *map(str, potentials), "--born", str(born), "--output", str(output),
               "--figures-dir", str(output.parent)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    records = json.loads(output.read_text())
    out = {}
    for metric, system in ERROR_METRICS.items():
        rows = [r for r in records if r["metric"] == metric and r["system"] == system
                and r.get("config_type", "all") == "all"]
        if len(rows) != 1:
            raise SystemExit(f"{output}: expected one {system} {metric} record over all cells, found {len(rows)}")
        out[metric] = rows[0]["value"]
    return out


def mace_errors(results: Path, models: str) -> tuple[dict[str, float], dict]:
    """MACE's held-out errors on the split of ``models`` (records of models_mace_ledger.py) and its run's facts."""
    if not results.is_file():
        raise SystemExit(f"{results}: missing (run models_mace_ledger.py first, or leave out --mace-model)")
    rows = [r for r in json.loads(results.read_text()) if r.get("system") == MACE_SYSTEM
            and r.get("models") == models and r.get("config_type") == "all" and r.get("split") == "test"]
    errors = {r["metric"]: r["value"] for r in rows if r["metric"] in ERROR_METRICS}
    if "force_rmse_meV_per_A" not in errors:
        raise SystemExit(f"{results}: no {MACE_SYSTEM} test force record for model set {models}")
    facts = {k: rows[0][k] for k in ("epochs", "epochs_run", "converged", "n_parameters") if k in rows[0]}
    return errors, facts


def staleness(results: Path, born_spec: str, interval: int) -> float:
    """RMSE (e) of ``born_spec``'s charges held ``interval`` steps (md_born_refresh.py --models records)."""
    if interval == 1:
        return 0.0
    if not results.is_file():
        raise SystemExit(f"{results}: missing; run md_born_refresh.py --models first (Born refresh {interval})")
    found = [r["value"] for r in json.loads(results.read_text()) if r["metric"] == "bec_staleness_rmse_e"
             and r["system"] == born_spec and r.get("born_refresh_interval") == interval]
    if len(found) != 1:
        raise SystemExit(f"{results}: expected one bec_staleness_rmse_e of {born_spec} at interval {interval}, "
                         f"found {len(found)}")
    return float(found[0])


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (higher speed x, lower error y), by speed."""
    front = [i for i, (x, y) in enumerate(points)
             if not any(x2 >= x and y2 <= y and (x2, y2) != (x, y) for x2, y2 in points)]
    return sorted(front, key=lambda i: points[i][0])


def record(metric: str, value: float, unit: str, system: str, ranks: int, notes: str, **extra) -> dict:
    return {"metric": metric, "value": float(value), "unit": unit, "system": system, "n_atoms": N_ATOMS,
            "ranks": ranks, "threads": 1, "baseline": system == MACE_SYSTEM, "date": dt.date.today().isoformat(),
            "machine": MACHINE, "notes": notes, **extra}


def plot(records: list[dict], path: Path) -> None:
    """Born RMSE vs field-MD atom-steps/s (per backend) and force RMSE vs potential atom-evals/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def best(metric, system, ranks=None):
        values = [r["value"] for r in records if r["metric"] == metric and r["system"] == system
                  and (ranks is None or r["ranks"] == ranks)]
        return max(values) if values else None

    def error(metric, system):
        return next(r["value"] for r in records if r["metric"] == metric and r["system"] == system)

    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    settings = list(dict.fromkeys(r["system"] for r in records if r["metric"] == "bec_rmse_e"))
    colour = {s: f"C{k}" for k, s in enumerate(settings)}
    fig, (born_ax, force_ax) = plt.subplots(1, 2, figsize=(13, 5.6), layout="constrained")
    backends = (("ase", 1, "o", "ASE, 1 rank"), ("lammps", 2, "s", "LAMMPS, 2 ranks"))
    for backend, ranks, marker, _ in backends:
        points = [(best(f"field_md_{backend}_atom_steps_per_s", s, ranks), error("bec_rmse_e", s)) for s in settings]
        for (x, y), s in zip(points, settings):
            born_ax.scatter(x, y, marker=marker, s=50, color=colour[s])
        front = pareto_front(points)
        born_ax.plot([points[i][0] for i in front], [points[i][1] for i in front], ls="--", color="grey", lw=0.8)
    handles = [Line2D([], [], color=colour[s], marker="o", ls="", label=s) for s in settings]
    handles += [Line2D([], [], color="k", marker=m, ls="", mfc="none", label=label) for _, _, m, label in backends]
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncols=4)
    born_ax.set(xscale="log", xlabel=f"field-MD atom-steps/s\n({N_ATOMS} atoms, best of repeats)",
                ylabel="held-out Born RMSE, as field MD runs it (e)", title="Born model: accuracy vs field-MD speed")
    potentials = [s for s in dict.fromkeys(r["system"] for r in records if r["metric"] == "potential_atom_evals_per_s")]
    points = [(best("potential_atom_evals_per_s", s), error("force_rmse_meV_per_A", s)) for s in potentials]
    for (x, y), s in zip(points, potentials):
        mace = s == MACE_SYSTEM
        force_ax.scatter(x, y, marker="*" if mace else "o", s=90 if mace else 50, color="k" if mace else colour[s])
        shared = next(r.get("same_potential", [s]) for r in records
                      if r["metric"] == "potential_atom_evals_per_s" and r["system"] == s)
        label = s if len(shared) == 1 else f"{s}\n(= {len(shared) - 1} other settings)"
        force_ax.annotate(label, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    front = pareto_front(points)
    force_ax.plot([points[i][0] for i in front], [points[i][1] for i in front], ls="--", color="grey", lw=0.8)
    force_ax.margins(x=0.25)
    force_ax.set(xscale="log", xlabel=f"potential atom-evals/s\n({N_ATOMS} atoms, 1 thread, best of repeats)",
                 ylabel="held-out force RMSE, as field MD runs it (meV/Å)", title="Potential: accuracy vs speed")
    for ax in (born_ax, force_ax):
        ax.xaxis.set_minor_formatter(NullFormatter())
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="models/li3po4", help="model set whose test.extxyz holds the held-out cells")
    parser.add_argument("--setting", nargs=4, action="append", metavar=("NAME", "POTENTIAL", "BORN", "N"),
                        help="a setting (repeatable; replaces the defaults): files (may be git:REV:PATH) and the "
                             "Born refresh interval")
    parser.add_argument("--mace-model", type=Path, default=None,
                        help="MACE model to time (default: models_mace_ledger.py's stage-two model of the split)")
    parser.add_argument("--staleness", type=Path, default=STALENESS,
                        help="records of md_born_refresh.py --models (Born staleness per refresh interval)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds of every speed point")
    parser.add_argument("--steps", type=int, default=10, help="timed field-MD steps per point")
    parser.add_argument("--eval-repeats", type=int, default=3, help="timed potential evaluations per point")
    parser.add_argument("--machine", default=MACHINE, help="the records' machine field (say what else ran)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "models_pareto.json")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(args.output.read_text()), args.output.with_suffix(".png"))
        return 0
    os.chdir(ROOT)
    models = Path(args.models)
    test = models / "test.extxyz"
    if not test.is_file():
        raise SystemExit(f"--models {models}: no test.extxyz (held-out cells) in it")
    mace_model = args.mace_model or (HERE / "work" / "models_mace_ledger" / split_key(models) / "mace"
                                     / "ledger_mace_small_stagetwo.model")
    with_mace = mace_model.is_file() and MACE_PYTHON.is_file()
    if args.mace_model and not with_mace:
        raise SystemExit(f"--mace-model {args.mace_model}: not found, or no {MACE_PYTHON}")
    if not with_mace:
        print(f"no MACE model at {mace_model}: MACE is left out", flush=True)
    records: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        settings, evaluated = {}, {}
        for name, potential, born, interval in args.setting or DEFAULT_SETTINGS:
            if not interval.isdigit() or int(interval) < 1:
                raise SystemExit(f"--setting {name}: Born refresh interval {interval!r}, expected an integer >= 1")
            settings[name] = ([resolve_file(part, scratch) for part in potential.split(",")],
                              resolve_file(born, scratch), potential, born, int(interval))
        where = f"held-out cells of {models} (test.extxyz)"
        for name, (potential, born, potential_spec, born_spec, interval) in settings.items():
            if (potential_spec, born_spec) not in evaluated:
                directory = scratch / f"evaluation-{len(evaluated)}"
                directory.mkdir()
                evaluated[potential_spec, born_spec] = held_out_errors(test, potential, born,
                                                                       directory / "evaluation.json")
            errors = dict(evaluated[potential_spec, born_spec])
            stale = staleness(args.staleness, born_spec, interval)
            model_bec = errors["bec_rmse_e"]
            errors["bec_rmse_e"] = float((model_bec**2 + stale**2) ** 0.5)
            print(name, {k: round(v, 4) for k, v in errors.items()}, f"staleness {stale:.4f} e", flush=True)
            files = f"potential {potential_spec}, Born model {born_spec}, Born charges refreshed every {interval} step(s)"
            what = ("one model (member 0, what field MD integrates)" if len(potential) == 1 else
                    f"the mean of {len(potential)} potentials (md.committee_mean_forces)")
            for metric, value in errors.items():
                how = (f"bornfield train evaluate, {what}"
                       if metric != "bec_rmse_e" or interval == 1 else
                       f"held-out RMSE {model_bec:.4f} e (bornfield train evaluate, member 0) and the staleness "
                       f"{stale:.4f} e of charges held {interval} steps ({shown(args.staleness)}) in quadrature")
                records.append(record(metric, value, ERROR_UNITS[metric], name, 1, f"{where}; {files}; {how}",
                                      dataset="li3po4-ledger", split="test", born_refresh_interval=interval))
        if with_mace:
            errors, facts = mace_errors(HERE / "results" / "models_mace_ledger.json", str(models))
            for metric, value in errors.items():
                records.append(record(metric, value, ERROR_UNITS[metric], MACE_SYSTEM, 1,
                                      f"{where}; from results/models_mace_ledger.json ({facts})",
                                      dataset="li3po4-ledger", split="test"))
        potentials = {}  # distinct potential files, timed once each
        for name, (potential, *_) in settings.items():
            key = tuple(part.read_bytes() for part in potential)
            potentials.setdefault(key, (potential, []))[1].append(name)
        for repeat in range(args.repeats):
            suffix = f"; repeat {repeat + 1} of {args.repeats}"
            for name, (potential, born, _, _, interval) in settings.items():
                for backend, ranks in (("ase", 1), ("lammps", 2)):
                    load = os.getloadavg()[0]
                    result = measure(potential, born, backend, N_ATOMS, ranks, args.steps,
                                     born_refresh_interval=interval)
                    forces = "potential_0" if len(potential) == 1 else f"mean of {len(potential)} potentials"
                    notes = (f"field MD, {forces} every step + born_0 every {interval} step(s), beta-Li3PO4 "
                             "supercell, Bussi 600 K, "
                             f"E = 0.1 V/Å, {args.steps} timed steps, 1 torch thread per rank; "
                             f"1-min load average {load:.1f} before{suffix}")
                    records.append(record(f"field_md_{backend}_atom_steps_per_s", result["atom_steps_per_s"],
                                          "atom-steps/s", name, ranks, f"wall clock; {notes}"))
                    records.append(record(f"field_md_{backend}_atom_steps_per_cpu_s", result["atom_steps_per_cpu_s"],
                                          "atom-steps/CPU-s", name, ranks, f"CPU time summed over ranks; {notes}"))
                    print(name, backend, ranks, f"{result['atom_steps_per_s']:.0f} atom-steps/s", flush=True)
            timed = [(names, "bornfield", ",".join(map(str, potential))) for potential, names in potentials.values()]
            timed += [([MACE_SYSTEM], "mace", mace_model)] if with_mace else []
            for names, child, model in timed:
                load = os.getloadavg()[0]
                result = run_child(child, N_ATOMS, 1, args.eval_repeats, model)
                key = "bornfield-potential" if child == "bornfield" else MACE_SYSTEM
                rate = N_ATOMS / result[key][0]
                records.append(record("potential_atom_evals_per_s", rate, "atom-evals/s", names[0], 1,
                                      f"neighbour list + energy + forces (no stress), {N_ATOMS} atoms, "
                                      f"1 thread, best of {args.eval_repeats} (median {N_ATOMS / result[key][1]:.0f}); "
                                      f"1-min load average {load:.1f} before{suffix}", same_potential=names))
                print(names, f"{rate:.0f} atom-evals/s", flush=True)
    for r in records:
        r["machine"] = args.machine
    write_json(args.output, records)
    plot(records, args.output.with_suffix(".png"))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
