"""Throughput of the all-origins MSD tensor (FFT) against a direct loop over lags.

``bornfield.analysis.msd.displacement_moments`` (6 FFT autocorrelations per
atom: the full 3×3 displacement tensor plus the mean displacement, centre of
mass removed) versus the textbook direct evaluation of the same quantities
with numpy (a loop over lags, all origins vectorised), which is O(T²·N).
Both are run on the same random-walk trajectory; the results agree to
round-off (checked here), so only speed differs.

Usage::

    .venv/bin/python benchmarks/analysis_msd_speed.py [--frames 500 2000 8000] [--atoms 200]

Writes ``benchmarks/results/analysis_msd_speed.json`` and ``.png``. The metric
is atom-frames per second (atoms × frames of the analysed trajectory / wall time)
for all lags up to half the trajectory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NAME = "analysis_msd_speed"


def direct_moments(positions, masses, atoms, max_lag):
    """Reference: the same tensor/mean by an explicit loop over lags."""
    com = np.einsum("tnc,n->tc", positions, masses) / masses.sum()
    relative = positions[:, atoms] - com[:, None]
    tensor = np.zeros((max_lag + 1, 3, 3))
    mean = np.zeros((max_lag + 1, 3))
    for lag in range(1, max_lag + 1):
        delta = relative[lag:] - relative[:-lag]
        tensor[lag] = np.einsum("tia,tib->ab", delta, delta) / (delta.shape[0] * delta.shape[1])
        mean[lag] = delta.mean(axis=(0, 1))
    return tensor, mean


def timed(function, *args, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    from bornfield.analysis.msd import displacement_moments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[500, 2000, 8000])
    parser.add_argument("--atoms", type=int, default=200)
    parser.add_argument("--direct-max-frames", type=int, default=2000, help="skip the O(T²) loop above this length")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    load = os.getloadavg()[0]
    common = {"unit": "atom-frames/s", "n_atoms": args.atoms, "ranks": 1, "threads": 1,
              "date": datetime.date.today().isoformat(), "machine": "2 cores, no GPU"}
    records = []
    for frames in args.frames:
        positions = np.cumsum(rng.normal(scale=0.1, size=(frames, args.atoms, 3)), axis=0)
        masses = rng.uniform(6.9, 31.0, args.atoms)
        atoms = np.arange(args.atoms)
        max_lag = frames // 2
        fft_time, (tensor, mean) = timed(displacement_moments, positions, masses, atoms, max_lag)
        notes = (f"{frames} frames, all lags up to {max_lag}, full 3x3 tensor + mean displacement, COM removed; "
                 f"best of 3; load average {load:.1f} (shared machine)")
        records.append({"metric": "msd_atom_frames_per_s", "value": round(args.atoms * frames / fft_time, 1),
                        "system": "bornfield-msd-fft", "baseline": False, **common, "notes": notes})
        if frames <= args.direct_max_frames:
            direct_time, (tensor_ref, mean_ref) = timed(direct_moments, positions, masses, atoms, max_lag, repeats=1)
            deviation = float(np.abs(tensor - tensor_ref).max() / np.abs(tensor_ref).max())
            assert deviation < 1e-9, deviation
            records.append({"metric": "msd_atom_frames_per_s", "value": round(args.atoms * frames / direct_time, 1),
                            "system": "numpy-direct-loop", "baseline": True, **common,
                            "notes": notes + f"; max relative deviation from FFT {deviation:.1e}"})
        print(records[-1]["system"], frames, records[-1]["value"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(records, indent=1) + "\n")

    import matplotlib.pyplot as plt

    from bornfield.plots import style

    with style.style():
        fig, ax = plt.subplots(figsize=(style.SINGLE_COLUMN_IN, 2.6))
        for system, color in (("bornfield-msd-fft", style.OKABE_ITO[0]), ("numpy-direct-loop", style.OKABE_ITO[1])):
            rows = [r for r in records if r["system"] == system]
            frames = [int(r["notes"].split()[0]) for r in rows]
            ax.plot(frames, [r["value"] for r in rows], marker="o", color=color, label=system)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("trajectory length (frames)")
        ax.set_ylabel("throughput (atom-frames/s)")
        ax.set_title(f"MSD tensor, all origins, {args.atoms} atoms", fontsize=8)
        ax.legend()
        style.save_figure(fig, RESULTS / NAME, formats=("png",))


if __name__ == "__main__":
    main()
