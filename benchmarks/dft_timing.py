"""Cost of the DFT labels: pw.x SCF and ph.x DFPT (Born charges) per structure vs size.

Reads finished job directories (``status.json`` + QE outputs written by
``bornfield dft run``) and records, per program and job, the CPU time and the wall
time that QE itself prints (``PWSCF : … CPU … WALL``), the number of MPI ranks and
k-points, and the peak resident memory of the largest QE rank, per program where the
runner measured it (``status.json`` attempts), else one peak for the whole job.
With two or more sizes it fits ``time ∝ N^p`` (least squares in log–log) per program.

On a shared machine the wall time depends on the load; the CPU time per rank is the
number to compare. Usage::

    .venv/bin/python benchmarks/dft_timing.py JOB_DIR [JOB_DIR ...] [--notes TEXT]

writes ``benchmarks/results/dft_timing.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MACHINE = "2 cores, no GPU (shared with other jobs)"
# QE prints e.g. "27.22s", "17m36.50s", "1h 9m" (no seconds once an hour has passed)
_TIME = r"(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:([\d.]+)s)?"


def _seconds(match_groups) -> float:
    hours, minutes, seconds = match_groups
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0.0)


def qe_times(path: Path, program: str) -> tuple[float, float, int] | None:
    """(CPU s, wall s, MPI ranks) of a finished QE run, from its own summary line."""
    if not path.exists():
        return None
    text = path.read_text(errors="replace")
    match = re.findall(rf"^\s*{program}\s*:\s*{_TIME}\s*CPU\s*{_TIME}\s*WALL", text, re.M)
    if not match or "JOB DONE" not in text:
        return None
    last = match[-1]
    # QE 6.7 prints "Parallel version (MPI), running on     2 processors"; newer ones "Number of MPI processes: 2"
    ranks = re.search(r"(?:Number of MPI processes:|running on)\s*(\d+)", text)
    return _seconds(last[0:3]), _seconds(last[3:6]), int(ranks.group(1)) if ranks else 1


def program_peak_rss(status: dict, program: str) -> float | None:
    """Peak RSS (MiB) of a program's last converged run of the job, when the runner measured it."""
    runs = [a for a in status.get("attempts", []) if a.get("program") == program and a.get("outcome") == "converged"]
    return float(runs[-1]["peak_rss_MiB"]) if runs and "peak_rss_MiB" in runs[-1] else None


def records_for(job_dir: Path, notes: str) -> list[dict]:
    """Benchmark records of one finished job directory."""
    status = json.loads((job_dir / "status.json").read_text())
    from ase.io import read

    n_atoms = len(read(job_dir / "structure.extxyz"))
    out = []
    today = dt.date.today().isoformat()
    kpts = "x".join(str(k) for k in status.get("kpoints", []))
    settings = status.get("settings", {})
    for program, name, label in (("PWSCF", "pw.out", "pw.x SCF"), ("PHONON", "ph.out", "ph.x DFPT (epsil+zeu)")):
        times = qe_times(job_dir / name, program)
        if times is None:
            continue
        cpu, wall, ranks = times
        common = {
            # settings in the name: sizes are only compared (and fitted) at equal settings
            "system": f"bornfield-dft {label} [{settings.get('ecutwfc_Ry')} Ry, k {kpts}]", "n_atoms": n_atoms, "ranks": ranks, "threads": 1,
            "baseline": False, "date": today, "machine": MACHINE,
            "notes": (
                f"dft_id {status['dft_id']}, k {kpts}, ecut {settings.get('ecutwfc_Ry')}/{settings.get('ecutrho_Ry')} Ry, "
                f"tr2_ph {settings.get('tr2_ph')}; {notes}"
            ).strip("; "),
        }
        out.append({"metric": "qe_cpu_time_s", "value": cpu, "unit": "s (per rank)", **common})
        out.append({"metric": "qe_wall_time_s", "value": wall, "unit": "s", **common})
        if program == "PHONON":
            out += ph_phase_records(job_dir, cpu, common)
        peak = program_peak_rss(status, "pw.x" if program == "PWSCF" else "ph.x")
        if peak is not None:
            out.append({"metric": "peak_rss_MiB", "value": peak, "unit": "MiB (largest rank)", **common})
    if "peak_rss_MiB" in status and not any(r["metric"] == "peak_rss_MiB" for r in out):
        # jobs run before the runner measured each program: one peak for the whole job
        out.append({
            "metric": "peak_rss_MiB", "value": float(status["peak_rss_MiB"]), "unit": "MiB (largest rank)",
            "system": "bornfield-dft pw.x+ph.x", "n_atoms": n_atoms, "ranks": out[0]["ranks"] if out else None,
            "threads": 1, "baseline": False, "date": today, "machine": MACHINE, "notes": f"dft_id {status['dft_id']}",
        })
    return out


def fit_exponents(records: list[dict]) -> list[dict]:
    """time ∝ N^p per program and rank count (CPU time): one least-squares fit over all sizes,
    and with three or more sizes also the local exponent between neighbouring sizes (the
    cost law steepens with size, so the overall fit alone would hide the large-cell cost)."""
    fits = []
    for system, ranks in sorted({(r["system"], r["ranks"]) for r in records if r["metric"] == "qe_cpu_time_s"}):
        points = [
            (r["n_atoms"], r["value"]) for r in records
            if r["system"] == system and r["ranks"] == ranks and r["metric"] == "qe_cpu_time_s"
        ]
        sizes = sorted({n for n, _ in points})
        if len(sizes) < 2:
            continue
        base = {"unit": "d ln t / d ln N", "system": system, "ranks": ranks, "threads": 1, "baseline": False,
                "date": dt.date.today().isoformat(), "machine": MACHINE}
        n, t = np.log([p[0] for p in points]), np.log([p[1] for p in points])
        fits.append({"metric": "scaling_exponent", "value": float(np.polyfit(n, t, 1)[0]), "n_atoms": max(sizes),
                     "size_range": f"{sizes[0]}-{sizes[-1]} (fit)", **base, "notes": f"least-squares fit over sizes {sizes}"})
        if len(sizes) < 3:
            continue
        mean_time = {size: float(np.exp(np.mean([np.log(v) for m, v in points if m == size]))) for size in sizes}
        for small, large in zip(sizes[:-1], sizes[1:], strict=True):
            fits.append({
                "metric": "scaling_exponent", "n_atoms": large, "size_range": f"{small}-{large}",
                "value": float(np.log(mean_time[large] / mean_time[small]) / np.log(large / small)), **base,
                "notes": f"local exponent between {small} and {large} atoms",
            })
    return fits


def ph_phase_records(job_dir: Path, total_cpu: float, base: dict) -> list[dict]:
    """CPU time of ph.x's phases (QE's clock lines): set-up before the E-field response,
    the E-field response (``solve_e``) and the effective charges (``zstar_eu``);
    ``total_cpu`` is ph.x's own total (``qe_times``)."""
    text = (job_dir / "ph.out").read_text(errors="replace")
    clock = {name: float(value) for name, value in re.findall(r"^\s*(solve_e|zstar_eu)\s*:\s*([\d.]+)s CPU", text, re.M)}
    if set(clock) != {"solve_e", "zstar_eu"}:
        return []
    phases = {"setup": total_cpu - clock["solve_e"] - clock["zstar_eu"], **clock}
    return [{**base, "metric": "ph_phase_cpu_time_s", "phase": phase, "value": round(value, 2), "unit": "s (per rank)"}
            for phase, value in phases.items()]


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("qe_cpu_time_s", "qe_wall_time_s", "peak_rss_MiB")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for metric, ax in zip(metrics, axes, strict=True):
        for system, ranks in sorted({(r["system"], r["ranks"]) for r in records if r["metric"] == metric}):
            pts = sorted((r["n_atoms"], r["value"]) for r in records
                         if r["metric"] == metric and r["system"] == system and r["ranks"] == ranks)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if ranks == 1 else "s--",
                    label=f"{system.replace('bornfield-dft ', '')}, {ranks} rank{'s' if ranks > 1 else ''}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("atoms")
        ax.set_ylabel("peak RSS of the largest rank (MiB)" if metric == "peak_rss_MiB"
                      else metric.replace("qe_", "").replace("_s", " (s)"))
        ax.legend(fontsize=8)
    fig.suptitle("QE cost per structure (2-core machine: compare CPU time)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job_dirs", nargs="+", type=Path)
    parser.add_argument("--notes", default="")
    parser.add_argument("--output", type=Path, default=RESULTS / "dft_timing.json")
    args = parser.parse_args()
    records = []
    for job_dir in args.job_dirs:
        records += records_for(job_dir, args.notes)
    records += fit_exponents(records)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(records, indent=1))
    plot(records, args.output.with_suffix(".png"))
    for r in records:
        detail = r.get("phase") or r.get("size_range") or ""
        print(f"{r['system']:45s} N={r['n_atoms']:4d} ranks={r['ranks']} {r['metric']:20s} {detail:14s} {r['value']:10.2f} {r['unit']}")


if __name__ == "__main__":
    main()
