"""benchmarks/dft_timing.py on a real QE job directory: times, ph.x phases, per-program memory
and the size exponents (overall fit and local, between neighbouring sizes)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import dft_timing  # noqa: E402

REAL = Path(__file__).parent / "data" / "qe" / "beta_rattled16"


def _by(records, metric, **match):
    return [r for r in records if r["metric"] == metric and all(r.get(k) == v for k, v in match.items())]


def test_records_of_a_real_job(tmp_path):
    job = tmp_path / "job"
    shutil.copytree(REAL, job)
    records = dft_timing.records_for(job, "test")
    pw_cpu = _by(records, "qe_cpu_time_s", system=_by(records, "qe_cpu_time_s")[0]["system"])[0]
    assert pw_cpu["value"] == pytest.approx(27.22) and pw_cpu["n_atoms"] == 16
    phases = {r["phase"]: r["value"] for r in _by(records, "ph_phase_cpu_time_s")}
    # QE's own clock: PHONON 3m53.60s = set-up + solve_e 145.97 s + zstar_eu 57.21 s
    assert phases == pytest.approx({"setup": 233.60 - 145.97 - 57.21, "solve_e": 145.97, "zstar_eu": 57.21})
    # this job predates per-program memory: one peak for the whole job
    (whole,) = _by(records, "peak_rss_MiB")
    assert whole["system"] == "bornfield-dft pw.x+ph.x" and whole["value"] == pytest.approx(173.265625)

    # a job run by the current runner carries a peak per QE run: the converged ones are reported
    status = json.loads((job / "status.json").read_text())
    for attempt, peak in zip(status["attempts"], (120.5, 171.0), strict=True):
        attempt["peak_rss_MiB"] = peak
    (job / "status.json").write_text(json.dumps(status))
    peaks = sorted(r["value"] for r in _by(dft_timing.records_for(job, "test"), "peak_rss_MiB"))
    assert peaks == [120.5, 171.0]


def test_exponents_overall_and_local():
    def rec(n, t):
        return {"metric": "qe_cpu_time_s", "system": "ph", "ranks": 2, "n_atoms": n, "value": t}

    # t = N^2 up to 32 atoms, N^3 beyond (two repeats at 64 atoms, averaged geometrically)
    records = [rec(16, 16.0**2), rec(32, 32.0**2), rec(64, 32.0**2 * 8 * 1.1), rec(64, 32.0**2 * 8 / 1.1)]
    fits = {r["size_range"]: r["value"] for r in dft_timing.fit_exponents(records)}
    assert fits["16-32"] == pytest.approx(2.0)
    assert fits["32-64"] == pytest.approx(3.0)
    assert 2.0 < fits["16-64 (fit)"] < 3.0
    # two sizes: only the fit
    assert [r["size_range"] for r in dft_timing.fit_exponents(records[:2])] == ["16-32 (fit)"]
