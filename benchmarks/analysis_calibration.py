"""Are the analysis error bars honest? Coverage and bias on synthetic campaigns.

Many independent synthetic conditions (biased Gaussian random walks of Li with
known D and drift v relative to the framework, in a Li3PO4-composition cell whose
framework vibrates and recoils so that the centre of mass stays fixed, written in
the exact ``traj.h5`` format) are analysed with the production code
(``bornfield.analysis.condition.analyze_condition``). For

* ``D`` (tr/3 of the drift-free diffusion tensor), ``D_par`` (along E) and ``D_111``
  (the tensor projected on [1,1,1] as the sweep's Nernst–Einstein check does,
  ``bornfield.analysis.sweep.projected_diffusion``), true value D;
* ``v_par`` (drift along E relative to the host framework, which the mobility uses),
  true value v (relative to the cell's centre of mass it is exactly (1 - f) v, f the Li
  mass fraction, so its coverage is the same),

we record the mean relative bias (estimate/true - 1) with its standard error, the
coverage of ±1 standard error (Student t with n-1 dof expects 0.61 for 4 replicas,
0.68 for many) and of the 95 % Student-t interval (expects 0.95), and the error
ratio: the rms reported standard error over the rms actual error (expects 1; it
tells an error bar that is too small but steady, which coverage at few dof hides). A second set of
campaigns with a small cell (6 Li) checks D for a species with few atoms. The
baseline record shows what adding the tensor-component errors of D_111 in
quadrature (the former sweep) gives.

Usage::

    .venv/bin/python benchmarks/analysis_calibration.py [--campaigns 40] [--replicas 4]

Writes ``benchmarks/results/analysis_calibration.json`` (DESIGN.md records) and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
from scipy import stats

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NAME = "analysis_calibration"
DIFFUSION, DRIFT = 1.0e-3, 1.0e-3  # Å²/fs per direction, Å/fs relative to the framework
AXIS_111 = np.ones(3) / math.sqrt(3.0)


def run(campaigns: int, replicas: int, frames: int, formula_units: int, seed0: int) -> dict:
    """Estimates and standard errors of every metric over independent synthetic campaigns."""
    from bornfield.analysis.condition import analyze_condition
    from bornfield.analysis.sweep import projected_diffusion
    from bornfield.analysis.synthetic import write_synthetic_condition
    from bornfield.config import validate_section

    settings = {**validate_section({}, "analysis"), "species": ["Li"]}
    samples: dict[str, list] = {key: [] for key in ("D", "D_par", "D_111", "D_111_quadrature", "v_par")}
    truth: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for campaign in range(campaigns):
            directory = Path(tmp) / f"c{campaign}"
            write_synthetic_condition(
                directory, n_replicas=replicas, n_frames=frames, frame_interval_fs=10.0, field_V_per_A=(0.1, 0.0, 0.0),
                diffusion_A2_per_fs={"Li": DIFFUSION}, drift_A_per_fs={"Li": DRIFT},
                n_formula_units=formula_units, seed=seed0 + campaign,
            )
            record = analyze_condition(directory, settings)
            li = record["species"]["Li"]
            truth = {"D": DIFFUSION, "D_par": DIFFUSION, "D_111": DIFFUSION, "D_111_quadrature": DIFFUSION,
                     "v_par": DRIFT}
            pair = lambda entry: (entry["value"], entry["sem"])  # noqa: E731
            samples["D"].append(pair(li["diffusion"]["total"]))
            samples["D_par"].append(pair(li["diffusion"]["parallel"]))
            samples["D_111"].append(projected_diffusion(record, "Li", AXIS_111))
            component_sem = np.asarray(li["diffusion"]["tensor"]["sem"]) * np.outer(AXIS_111, AXIS_111)
            samples["D_111_quadrature"].append((samples["D_111"][-1][0], float(np.sqrt((component_sem**2).sum()))))
            samples["v_par"].append(pair(li["drift_velocity_relative_to_host_A_per_fs"]["parallel"]))
    t95 = stats.t.ppf(0.975, replicas - 1)
    summary = {}
    for key, pairs in samples.items():
        values, sems = np.array(pairs).T
        relative = values / truth[key] - 1.0
        z = (values - truth[key]) / sems
        summary[key] = {
            "bias": float(relative.mean()),
            "bias_sem": float(relative.std(ddof=1) / np.sqrt(len(relative))),
            "coverage_1se": float(np.mean(np.abs(z) <= 1.0)),
            "coverage_t95": float(np.mean(np.abs(z) <= t95)),
            "error_ratio": float(np.sqrt(np.mean(sems**2) / np.mean((values - truth[key]) ** 2))),
            "z": z.tolist(),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaigns", type=int, default=40)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--formula-units", type=int, default=16)
    parser.add_argument("--few-formula-units", type=int, default=2, help="small cell for the few-atom D check (3 Li each)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    cells = {
        "large": (args.formula_units, run(args.campaigns, args.replicas, args.frames, args.formula_units, 1000)),
        "few": (args.few_formula_units, run(args.campaigns, args.replicas, args.frames, args.few_formula_units, 5000)),
    }
    expected_1se = float(2 * stats.t.cdf(1.0, args.replicas - 1) - 1)
    records = []
    for cell, (formula_units, summary) in cells.items():
        common = {
            "system": "bornfield-analysis", "n_atoms": 8 * formula_units, "ranks": 1, "threads": 1, "baseline": False,
            "date": datetime.date.today().isoformat(), "machine": "2 cores, no GPU", "split": "synthetic",
            "li_atoms": 3 * formula_units,
        }
        notes = (f"{args.campaigns} synthetic conditions x {args.replicas} replicas, {args.frames} frames of 10 fs, "
                 f"{3 * formula_units} Li, true D = {DIFFUSION:g} A2/fs, v = {DRIFT:g} A/fs relative to the framework "
                 f"along E = 0.1 V/A, centre of mass fixed; "
                 f"Student-t expectation for +-1 s.e. coverage {expected_1se:.3f}, for the t95 interval 0.95; "
                 f"load average {load:.1f}")
        keys = summary if cell == "large" else ("D", "D_par")
        for key in keys:
            result = summary[key]
            extra = {}
            if key == "D_111_quadrature":
                extra = {"system": "D_111 error: tensor-component errors in quadrature (former sweep)", "baseline": True}
            metric = key.replace("_quadrature", "")
            records.append({"metric": f"{metric}_relative_bias", "value": round(result["bias"], 5), "unit": "1",
                            **common, **extra, "notes": f"standard error of the bias {result['bias_sem']:.4f}; " + notes})
            records.append({"metric": f"{metric}_coverage_1se", "value": round(result["coverage_1se"], 3), "unit": "fraction",
                            **common, **extra, "notes": notes})
            records.append({"metric": f"{metric}_coverage_t95", "value": round(result["coverage_t95"], 3), "unit": "fraction",
                            **common, **extra, "notes": notes})
            records.append({"metric": f"{metric}_error_ratio", "value": round(result["error_ratio"], 3), "unit": "1",
                            **common, **extra, "notes": "rms reported standard error / rms actual error (expects 1); " + notes})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(records, indent=1) + "\n")

    from bornfield.plots import style

    import matplotlib.pyplot as plt

    with style.style():
        fig, ax = plt.subplots(figsize=(style.SINGLE_COLUMN_IN + 0.9, 3.0))
        grid = np.linspace(-5, 5, 200)
        bins = np.linspace(-5, 5, 21)
        curves = [(f"{key} ({3 * cells['large'][0]} Li)", cells["large"][1][key]) for key in ("D", "D_par", "D_111", "v_par")]
        curves.append((f"D ({3 * cells['few'][0]} Li)", cells["few"][1]["D"]))
        for (label, result), color in zip(curves, style.OKABE_ITO):
            ax.hist(np.clip(result["z"], -5, 5), bins=bins, density=True, histtype="step", color=color,
                    label=f"{label}: bias {100 * result['bias']:+.1f} %, t95 cover {result['coverage_t95']:.2f}, "
                          f"s.e./error {result['error_ratio']:.2f}")
        ax.plot(grid, stats.t.pdf(grid, args.replicas - 1), color="0.3", linestyle=":", label=f"Student t, {args.replicas - 1} dof")
        ax.set_xlabel("(estimate − true) / standard error")
        ax.set_ylabel(style.LABELS["density"])
        ax.set_title(f"error-bar calibration, {args.campaigns} campaigns × {args.replicas} replicas", fontsize=8)
        ax.set_ylim(0, 0.7)
        ax.legend(fontsize=5.5, loc="upper left")
        style.save_figure(fig, RESULTS / NAME, formats=("png",))
    for record in records:
        flag = " (baseline)" if record["baseline"] else ""
        print(f"{record['li_atoms']:3d} Li {record['metric']:>24s} {record['value']}{flag}")


if __name__ == "__main__":
    main()
