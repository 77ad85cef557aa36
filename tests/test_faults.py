"""Fault injection: what breaks is detected, stops alone and is reported; nothing is lost.

Small, CLI-level faults here (a replica that blows up, corrupted MD checkpoints
and model files); killing Snakemake in the middle of the tiny campaign is in
``tests/test_faults_campaign.py``. Already covered elsewhere and not repeated:
truncated/garbled ``ph.x`` and ``pw.x`` output (``tests/test_dft_parsers.py``),
a truncated or tampered model file read by the loaders (``tests/test_models.py``),
SCF escalation to ``failed`` in the runner (``tests/test_dft_runner_slow.py``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from ase.io import write
from md_testmodels import fcc_cell

from bornfield.models import create_random_model_file

BIN = Path(sys.executable).parent
CONDITION = "fcc_T300K_E0.1_x"
SMALL = {"channels": 4, "hidden": 16, "radial_hidden": 16}


def md_settings(**extra) -> dict:
    """A short NVT field run of the FCC Li/O test cell with random (untrained) models."""
    data = {
        "backend": "ase", "ensemble": "bussi", "timestep_fs": 1.0,
        "equilibration_steps": 0, "production_steps": 30,
        "committee_size": 2, "model_generation": 0,
        "output": {"trajectory_stride": 5, "thermo_stride": 5, "checkpoint_interval": 10},
        "safety": {"max_temperature_factor": 50.0, "max_force_uncertainty_eV_per_A": 1e3,
                   "min_distance_A": 0.8},
        "sweep": {"phases": ["fcc"], "temperatures_K": [300.0], "field_strengths_V_per_A": [0.1],
                  "field_directions": ["x"], "replicas": 3},
    }
    data.update(extra)
    return data


def bornfield(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "bornfield"), *args], capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fault_models")
    files = {
        f"potential_{i}": create_random_model_file("potential", ["Li", "O"], 3.5, root / f"potential_{i}.pt",
                                                   seed=i, **SMALL)
        for i in range(2)
    }
    files["born"] = create_random_model_file("born", ["Li", "O"], 3.5, root / "born_0.pt", seed=7, **SMALL)
    return files


def run_md(models: dict[str, Path], cells: Path, outdir: Path, settings: dict, potential: Path | None = None):
    potentials = [str(potential or models["potential_0"]), str(models["potential_1"])]
    return bornfield(
        "md", "run", "--settings", json.dumps({"md": settings}), "--condition", CONDITION,
        "--structures", str(cells), "--potential", *potentials, "--born", str(models["born"]),
        "--output-dir", str(outdir), "--no-progress",
    )


@pytest.mark.slow
def test_blown_up_replica_stops_alone_and_the_analysis_counts_the_replicas_used(models, tmp_path):
    """Replica 1 starts with two atoms 0.6 Å apart (a valid input, above the 0.5 Å of the input
    check, below md.safety.min_distance_A = 0.8): it stops with its reason, 0 and 2 finish,
    and `bornfield analyze condition` uses 2 replicas and reports the failed one."""
    bad = fcc_cell(2, a=4.4, seed=1)
    bad.positions[1] = bad.positions[0] + [0.6, 0.0, 0.0]
    cells = tmp_path / "cells.extxyz"
    write(cells, [fcc_cell(2, a=4.4, seed=0), bad, fcc_cell(2, a=4.4, seed=2)])
    outdir = tmp_path / "md" / CONDITION
    result = run_md(models, cells, outdir, md_settings())
    assert result.returncode == 0, result.stderr[-3000:]

    summary = json.loads((outdir / "summary.json").read_text())
    assert summary["replicas_total"] == 3
    assert summary["replicas_completed"] == 2 and summary["completed_replicas"] == [0, 2]
    assert summary["replicas_failed"] == 1
    failed = json.loads((outdir / "replica_1" / "status.json").read_text())
    assert failed["state"] == "failed" and "too close" in failed["reason"]
    for replica in (0, 2):
        status = json.loads((outdir / f"replica_{replica}" / "status.json").read_text())
        assert status["state"] == "completed" and status["steps"] == 30
        with h5py.File(outdir / f"replica_{replica}" / "traj.h5") as traj:
            assert list(traj["step"][:]) == list(range(0, 31, 5))
            assert np.isfinite(traj["positions"][:]).all()

    record_path = tmp_path / "analysis" / f"{CONDITION}.json"
    result = bornfield("analyze", "condition", str(outdir), "--output", str(record_path),
                       "--settings", json.dumps({"analysis": {"fit_window_fraction": [0.1, 0.5]}}))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(record_path.read_text())
    assert record["state"] == "analysed"
    assert record["replicas"]["n_used"] == 2 and record["replicas"]["n_failed"] == 1
    assert [Path(p).parent.name for p in record["replicas"]["used"]] == ["replica_0", "replica_2"]
    assert "too close" in json.dumps(record["replicas"]["failed"])
    assert "replicas used 2, failed 1" in result.stderr


ONE_REPLICA = md_settings(sweep={**md_settings()["sweep"], "replicas": 1},
                          safety={**md_settings()["safety"], "uncertainty_check_interval": 5})


@pytest.fixture(scope="module")
def interrupted(models, tmp_path_factory) -> Path:
    """A one-replica run whose status.json and summary.json are removed afterwards: to the MD
    stage it looks killed after its last checkpoint (step 30), so a re-run resumes from
    ``checkpoint.npz``. Tests copy this tree."""
    root = tmp_path_factory.mktemp("interrupted")
    write(root / "cells.extxyz", [fcc_cell(2, a=4.4, seed=0)])
    outdir = root / "md" / CONDITION
    result = run_md(models, root / "cells.extxyz", outdir, ONE_REPLICA)
    assert result.returncode == 0, result.stderr[-3000:]
    (outdir / "replica_0" / "status.json").unlink()
    (outdir / "summary.json").unlink()
    return root


@pytest.mark.slow
def test_resume_from_an_intact_checkpoint_is_logged(models, interrupted, tmp_path):
    """Guard for the corruption test below: an intact checkpoint is read and the run resumes."""
    root = tmp_path / "run"
    shutil.copytree(interrupted, root)
    outdir = root / "md" / CONDITION
    result = run_md(models, root / "cells.extxyz", outdir, {**ONE_REPLICA, "production_steps": 40})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from checkpoint at step 30" in result.stderr
    status = json.loads((outdir / "replica_0" / "status.json").read_text())
    assert status["steps"] == 40
    # the committee checks of the run before the kill come back from the checkpoint: one per
    # uncertainty_check_interval steps from step 0 to 40, not only the 10 steps since the resume
    interval = json.loads((outdir / "summary.json").read_text())["settings"]["safety"]["uncertainty_check_interval"]
    assert status["force_uncertainty_eV_per_A"]["checks"] == 40 // interval + 1
    with h5py.File(outdir / "replica_0" / "traj.h5") as traj:
        assert list(traj["step"][:]) == list(range(0, 41, 5))  # no frame lost or repeated


@pytest.mark.slow
def test_truncated_md_checkpoint_is_a_clear_error_naming_the_file(models, interrupted, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(interrupted, root)
    outdir = root / "md" / CONDITION
    checkpoint = outdir / "replica_0" / "checkpoint.npz"
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    result = run_md(models, root / "cells.extxyz", outdir, {**ONE_REPLICA, "production_steps": 40})
    # nothing was taken as a result of the damaged run
    assert not (outdir / "replica_0" / "status.json").exists()
    assert not (outdir / "summary.json").exists()
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"bornfield: error: {checkpoint}" in result.stderr
    assert "Traceback" not in result.stderr


def test_truncated_model_file_stops_md_with_a_clear_error(models, tmp_path):
    """The MD stage refuses a truncated model file before any step, naming the file."""
    broken = tmp_path / "potential_0.pt"
    data = models["potential_0"].read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    cells = tmp_path / "cells.extxyz"
    write(cells, [fcc_cell(2, a=4.4, seed=0)])
    outdir = tmp_path / "md" / CONDITION
    result = run_md(models, cells, outdir, md_settings(), potential=broken)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "bornfield: error:" in result.stderr and str(broken) in result.stderr
    assert "Traceback" not in result.stderr
    assert not outdir.exists() or not any(outdir.rglob("status.json"))
