"""Amorphous Li3PO4: the classical (Pedone) melt-quench cell re-equilibrated with the shipped NN committee.

Runs :func:`bornfield.structures.nn_equilibration.equilibrate_cells` (the code of
``bornfield structures nn-equilibrate``) on one classical cell and compares the
two cells with the structure report's analysis: density, P–O / Li–O / Li–Li
first RDF peaks, CN(Li–O), plus the committee force spread and the CPU time.
Writes ``benchmarks/results/nn_equilibration.json`` (DESIGN.md records) and
``nn_equilibration.png`` (the four partial RDFs of both cells and the density
trace).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/nn_equilibration.py \\
        --structures results/structures/md_cells/amorphous.extxyz --anneal-ps 2 --final-ps 4

Without ``--structures`` a 192-atom cell is melt-quenched here first with the
``structures.amorphous`` settings of ``--config`` (LAMMPS, minutes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
NAME = "nn_equilibration"
MACHINE = "2 cores, no GPU"


def classical_cell(args):
    from ase.io import read

    from bornfield.config import load_config, validate_section
    from bornfield.structures.amorphous import make_amorphous_cell

    if args.structures:
        return read(args.structures, 0), str(args.structures)
    full = load_config(args.config)
    amorphous = validate_section(full["structures"], "structures")["amorphous"]
    cell = make_amorphous_cell(amorphous, full["seed"], "md", 0)[0]
    return cell, f"melt-quenched here with {args.config}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--structures", help="classical amorphous cell (extxyz, first frame used)")
    parser.add_argument("--config", default=str(REPO / "config" / "config.yaml"),
                        help="config whose structures.amorphous settings make the cell without --structures")
    parser.add_argument("--models", default=str(REPO / "models" / "li3po4"), help="model set")
    parser.add_argument("--members", type=int, default=4, help="potentials of the set used")
    parser.add_argument("--anneal-K", type=float, default=700.0)
    parser.add_argument("--anneal-ps", type=float, default=2.0)
    parser.add_argument("--final-K", type=float, default=300.0)
    parser.add_argument("--final-ps", type=float, default=4.0)
    parser.add_argument("--notes", default="", help="appended to every record's notes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from bornfield.config import validate_section
    from bornfield.models import load_potential
    from bornfield.structures.crystals import density_g_cm3
    from bornfield.structures.nn_equilibration import NNEquilibrationProtocol, equilibrate_cells, models_digest
    from bornfield.structures.report import build_report
    from bornfield.train.shipped import read_model_set

    torch.set_num_threads(1)
    cell, origin = classical_cell(args)
    model_set = read_model_set(args.models)
    files = list(model_set.potential[: args.members])
    defaults = validate_section({}, "structures")
    protocol = NNEquilibrationProtocol.from_settings(defaults["amorphous"]["nn_equilibration"])
    protocol = NNEquilibrationProtocol(**{**protocol.__dict__, "anneal_temperature_K": args.anneal_K,
                                          "anneal_time_ps": args.anneal_ps, "final_temperature_K": args.final_K,
                                          "final_time_ps": args.final_ps, "trace_interval_steps": 20})
    (nn_cell,), (record,) = equilibrate_cells([cell], load_potential(files), protocol, models_digest(files),
                                              progress=False)
    report_settings = defaults["report"]
    classical = build_report([cell], "classical", report_settings)
    nn = build_report([nn_cell], "nn", report_settings)
    summary, trace = record["summary"], record["trace"]

    date = datetime.date.today().isoformat()
    base = {"n_atoms": len(cell), "ranks": 1, "threads": 1, "baseline": False, "date": date, "machine": MACHINE,
            "dataset": f"model set {Path(args.models).name} (ledger {model_set.manifest['source'].get('ledger_identity', '?')})"}
    protocol_text = (f"NN NPT (ASE IsotropicMTKNPT, committee mean of {len(files)} potentials): "
                     f"{args.anneal_K:g} K {args.anneal_ps:g} ps + {args.final_K:g} K {args.final_ps:g} ps at "
                     f"{protocol.pressure_bar:g} bar, dt {protocol.timestep_fs:g} fs, tdamp "
                     f"{protocol.thermostat_time_constant_fs:g} fs, pdamp {protocol.barostat_time_constant_fs:g} fs")
    cell_text = (f"classical cell {cell.info.get('structure_id')} ({origin}; "
                 f"{cell.info.get('source', '')}), box-relaxed at 0 K / 0 bar")
    notes_tail = f"{protocol_text}; {cell_text}" + (f"; {args.notes}" if args.notes else "")
    out = []

    def add(metric, value, unit, system, notes, **extra):
        out.append({"metric": metric, "value": None if value is None else round(float(value), 5), "unit": unit,
                    "system": system, **base, **extra, "notes": f"{notes}; {notes_tail}"})

    add("density_g_cm3", density_g_cm3(cell), "g/cm^3", "bornfield-lammps-pedone-melt-quench",
        "classical cell as written by the melt-quench (box-relaxed)")
    if "anneal_density_g_cm3" in cell.info:  # the melt-quench's own thermal average at 300 K, 0 bar
        add("anneal_density_g_cm3", cell.info["anneal_density_g_cm3"], "g/cm^3", "bornfield-lammps-pedone-melt-quench",
            "classical cell: mean density over the second half of its Pedone NPT anneal (info['anneal_density_g_cm3'])")
    add("density_g_cm3", summary["nn_density_g_cm3"], "g/cm^3", "bornfield-nn-npt",
        "NN: mean over the second half of the final stage; std = fluctuation of that series, drift = "
        "slope of a line through it (non-zero: not converged)",
        std=round(summary["nn_density_std_g_cm3"], 5),
        drift_g_cm3_per_ps=round(summary["nn_density_drift_g_cm3_per_ps"], 5))
    for key, unit in (("P-O_first_peak_A", "A"), ("Li-O_first_peak_A", "A"), ("Li-Li_first_peak_A", "A"),
                      ("O-O_first_peak_A", "A"), ("Li-O_coordination", ""), ("P-O_coordination", ""),
                      ("P_fourfold_fraction", ""), ("P2O7_count", "per cell")):
        for system, rep, what in (("bornfield-lammps-pedone-melt-quench", classical, "classical cell"),
                                  ("bornfield-nn-npt", nn, "NN output cell (last frame, rescaled to the mean density)")):
            add(key, rep["metrics"][key]["mean"], unit, system,
                f"{what}, one frame; Li-O cutoff {report_settings['li_o_cutoff_A']} A, P-O "
                f"{report_settings['p_o_cutoff_A']} A")
    add("force_uncertainty_max_eV_per_A", summary["force_uncertainty_max_eV_per_A"], "eV/A", "bornfield-nn-npt",
        f"largest per-atom committee force std over the checks (every {protocol.check_interval_steps} steps); "
        f"by stage {json.dumps({k: round(v, 3) for k, v in summary['force_uncertainty_max_by_stage_eV_per_A'].items()})}; "
        f"safety limit {protocol.max_force_uncertainty_eV_per_A:g}")
    add("min_distance_A", summary["min_distance_A"], "A", "bornfield-nn-npt", "shortest distance over the checks")
    add("cpu_time_s", summary["cpu_time_s"], "s", "bornfield-nn-npt",
        f"process CPU time of the {summary['steps']} NPT steps (one torch thread, machine shared with other jobs)",
        steps=summary["steps"], wall_time_s=round(summary["wall_time_s"], 1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    plot(classical, nn, trace, summary, RESULTS / f"{NAME}.png")
    for row in out:
        print(f"{row['system']:38s} {row['metric']:32s} {row['value']} {row['unit']}")
    return 0


def plot(classical: dict, nn: dict, trace: list[dict], summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bornfield.structures.analysis import RDF_PAIRS

    fig, axes = plt.subplots(1, len(RDF_PAIRS) + 1, figsize=(4 * (len(RDF_PAIRS) + 1), 3.4), constrained_layout=True)
    r = np.asarray(classical["rdf"]["r_A"])
    for ax, (a, b) in zip(axes, RDF_PAIRS):
        key = f"{a}-{b}"
        for report, label, colour in ((classical, "classical (Pedone)", "C0"), (nn, "NN NPT", "C3")):
            peak = report["metrics"][f"{key}_first_peak_A"]["mean"]
            ax.plot(r, report["rdf"][key], lw=1.1, c=colour, label=f"{label}, peak {peak:.3f} Å")
        ax.set_title(f"g$_{{{key}}}$(r)")
        ax.set_xlabel("r (Å)")
        ax.legend(fontsize=7)
    ax = axes[-1]
    t = [row["time_ps"] for row in trace]
    ax.plot(t, [row["density_g_cm3"] for row in trace], c="C3", lw=1)
    ax.axhline(summary["classical_density_g_cm3"], c="C0", ls="--", lw=1, label="classical")
    ax.axhline(summary["nn_density_g_cm3"], c="k", ls=":", lw=1, label="NN output")
    ax.set_xlabel("t (ps)")
    ax.set_ylabel("density (g/cm³)")
    ax.set_title("NN NPT density")
    ax.legend(fontsize=7)
    fig.suptitle(f"192-atom amorphous Li3PO4: density {summary['classical_density_g_cm3']:.3f} → "
                 f"{summary['nn_density_g_cm3']:.3f} ± {summary['nn_density_std_g_cm3']:.3f} g/cm³, committee "
                 f"spread max {summary['force_uncertainty_max_eV_per_A']:.2f} eV/Å", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
