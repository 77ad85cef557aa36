"""Are the analysis error bars honest? Coverage and bias on synthetic campaigns.

Many independent synthetic conditions (biased Gaussian random walks of Li with
known D and drift v in a Li3PO4-composition cell whose framework vibrates and
counter-drifts, written in the exact ``traj.h5`` format) are analysed with the
production code (``bornfield.analysis.condition.analyze_condition``). For D
(tr/3 of the drift-free diffusion tensor), D∥ and v∥ we record

* the mean relative bias (estimate/true - 1) with its standard error,
* the coverage of ±1 standard error (Student t with n-1 dof expects 0.61 for
  4 replicas, 0.68 for many), and of the 95 % Student-t interval (expects 0.95).

Usage::

    .venv/bin/python benchmarks/analysis_calibration.py [--campaigns 40] [--replicas 4]

Writes ``benchmarks/results/analysis_calibration.json`` (DESIGN.md records) and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from scipy import stats

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NAME = "analysis_calibration"


def run(campaigns: int, replicas: int, frames: int, formula_units: int) -> dict:
    from bornfield.analysis.condition import analyze_condition
    from bornfield.analysis.synthetic import write_synthetic_condition
    from bornfield.config import validate_section

    settings = validate_section({}, "analysis")
    true = {"D": 1.0e-3, "D_par": 1.0e-3, "v_par": 1.0e-3}
    samples = {key: [] for key in true}
    with tempfile.TemporaryDirectory() as tmp:
        for campaign in range(campaigns):
            directory = Path(tmp) / f"c{campaign}"
            write_synthetic_condition(
                directory, n_replicas=replicas, n_frames=frames, frame_interval_fs=10.0, field_V_per_A=(0.1, 0.0, 0.0),
                diffusion_A2_per_fs={"Li": true["D"]}, drift_A_per_fs={"Li": true["v_par"]},
                n_formula_units=formula_units, seed=1000 + campaign,
            )
            li = analyze_condition(directory, settings)["species"]["Li"]
            samples["D"].append((li["diffusion"]["total"]["value"], li["diffusion"]["total"]["sem"]))
            samples["D_par"].append((li["diffusion"]["parallel"]["value"], li["diffusion"]["parallel"]["sem"]))
            samples["v_par"].append((li["drift_velocity_A_per_fs"]["parallel"]["value"], li["drift_velocity_A_per_fs"]["parallel"]["sem"]))
    t95 = stats.t.ppf(0.975, replicas - 1)
    summary = {}
    for key, pairs in samples.items():
        values, sems = np.array(pairs).T
        relative = values / true[key] - 1.0
        z = (values - true[key]) / sems
        summary[key] = {
            "bias": float(relative.mean()),
            "bias_sem": float(relative.std(ddof=1) / np.sqrt(len(relative))),
            "coverage_1se": float(np.mean(np.abs(z) <= 1.0)),
            "coverage_t95": float(np.mean(np.abs(z) <= t95)),
            "z": z.tolist(),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaigns", type=int, default=40)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--formula-units", type=int, default=16)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    summary = run(args.campaigns, args.replicas, args.frames, args.formula_units)
    expected_1se = float(2 * stats.t.cdf(1.0, args.replicas - 1) - 1)
    n_atoms = 8 * args.formula_units
    common = {
        "system": "bornfield-analysis", "n_atoms": n_atoms, "ranks": 1, "threads": 1, "baseline": False,
        "date": datetime.date.today().isoformat(), "machine": "2 cores, no GPU", "split": "synthetic",
    }
    notes = (f"{args.campaigns} synthetic conditions x {args.replicas} replicas, {args.frames} frames of 10 fs, "
             f"{3 * args.formula_units} Li, true D = 1e-3 A2/fs, v = 1e-3 A/fs along E = 0.1 V/A; "
             f"Student-t expectation for +-1 s.e. coverage {expected_1se:.3f}, for the t95 interval 0.95; "
             f"load average {load:.1f}")
    records = []
    for key, result in summary.items():
        records.append({"metric": f"{key}_relative_bias", "value": round(result["bias"], 5), "unit": "1",
                        **common, "notes": f"standard error of the bias {result['bias_sem']:.4f}; " + notes})
        records.append({"metric": f"{key}_coverage_1se", "value": round(result["coverage_1se"], 3), "unit": "fraction", **common, "notes": notes})
        records.append({"metric": f"{key}_coverage_t95", "value": round(result["coverage_t95"], 3), "unit": "fraction", **common, "notes": notes})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(records, indent=1) + "\n")

    from bornfield.plots import style

    import matplotlib.pyplot as plt

    with style.style():
        fig, ax = plt.subplots(figsize=(style.SINGLE_COLUMN_IN + 0.6, 2.8))
        grid = np.linspace(-5, 5, 200)
        bins = np.linspace(-5, 5, 21)
        for key, color in zip(summary, style.OKABE_ITO):
            ax.hist(np.clip(summary[key]["z"], -5, 5), bins=bins, density=True, histtype="step", color=color,
                    label=f"{key}: bias {100 * summary[key]['bias']:+.1f} %, t95 cover {summary[key]['coverage_t95']:.2f}")
        ax.plot(grid, stats.t.pdf(grid, args.replicas - 1), color="0.3", linestyle=":", label=f"Student t, {args.replicas - 1} dof")
        ax.set_xlabel("(estimate − true) / standard error")
        ax.set_ylabel(style.LABELS["density"])
        ax.set_title(f"error-bar calibration, {args.campaigns} campaigns × {args.replicas} replicas", fontsize=8)
        ax.set_ylim(0, 0.62)
        ax.legend(fontsize=6.5, loc="upper left")
        style.save_figure(fig, RESULTS / NAME, formats=("png",))
    for record in records:
        print(f"{record['metric']:>24s} {record['value']}")


if __name__ == "__main__":
    main()
