"""A tiny REAL pw.x + ph.x job through the runner, and a real SCF failure with escalation.

Li2O (antifluorite, 3-atom primitive cell, Li/O from the Debian PBEsol set) at
k 3x3x3 (4 irreducible points) and 25/200 Ry: seconds of QE, but every code path of the runner is real:
input writing, Open MPI launch, parsing, ASR, QC, status.json, labels.json,
no recomputation of a finished job, and bounded escalation of a non-converging SCF.
"""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from ase.build import bulk

from bornfield.dft.inputs import DFTSettings
from bornfield.dft.pseudopotentials import provision_pseudopotentials
from bornfield.dft.runner import DFTJob, RunnerOptions

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("pw.x") is None or shutil.which("ph.x") is None, reason="QE not installed"),
    pytest.mark.timeout(400),
]

TINY = DFTSettings.defaults(ecutwfc_Ry=25, ecutrho_Ry=200, kpoint_density_per_inv_A=1.2, conv_thr_per_atom_Ry=1e-10, tr2_ph=1e-12)
LAUNCHER = "/usr/bin/mpirun -n 2"


@pytest.fixture(scope="module")
def pseudos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pseudo")
    return directory, provision_pseudopotentials(directory, "pbesol_paw", elements=("Li", "O"))


@pytest.fixture(scope="module")
def li2o():
    return bulk("OLi2", "fluorite", a=4.61)


def test_tiny_real_scf_and_dfpt_job(tmp_path, pseudos, li2o):
    pseudo_dir, records = pseudos
    job = DFTJob(li2o, TINY, records, pseudo_dir, tmp_path, RunnerOptions.defaults(launcher=LAUNCHER))
    labels = job.run()
    status = job.status()
    assert status["state"] == "completed" and labels["qc"]["bec_ok"], (status, labels["qc"])
    assert status["qe_version"] == "6.7MaX"
    assert status["pseudopotentials"]["Li"]["md5"] == records["Li"].md5
    assert [a["program"] for a in status["attempts"]] == ["pw.x", "ph.x"]
    assert status["wall_time_s"] > 0 and status["kpoints"] == [3, 3, 3]
    z = np.array(labels["born_charges"])
    assert z.shape == (3, 3, 3)
    assert np.allclose(z.sum(axis=0), 0, atol=1e-10)
    # cubic site symmetry: isotropic tensors; O carries minus twice the Li charge
    for tensor in z:
        assert np.allclose(tensor, tensor[0, 0] * np.eye(3), atol=2e-3)
    assert 0.5 < z[1, 0, 0] < 1.3
    assert z[0, 0, 0] == pytest.approx(-2 * z[1, 0, 0], abs=1e-6)
    eps = np.array(labels["epsilon_inf"])
    assert 2.0 < eps[0, 0] < 6.0
    assert np.allclose(np.array(labels["forces"]), 0, atol=1e-3)  # ideal crystal
    assert not (job.dir / "tmp").exists()  # scratch removed; tensors.xml kept
    assert (job.dir / "tensors.xml").exists() and labels["bec_precision"] == "tensors.xml"
    # finished jobs are never recomputed
    start = time.perf_counter()
    again = DFTJob(li2o, TINY, records, pseudo_dir, tmp_path, RunnerOptions.defaults(launcher=LAUNCHER)).run()
    assert time.perf_counter() - start < 2.0
    assert again == json.loads(job.labels_path.read_text())
    assert len(job.status()["attempts"]) == 2
    # Snakemake deletes a rule's output (labels.json) before re-running it, e.g. after a code
    # change: the labels are rebuilt from the finished outputs, QE does not run again
    job.labels_path.unlink()
    start = time.perf_counter()
    rebuilt = DFTJob(li2o, TINY, records, pseudo_dir, tmp_path, RunnerOptions.defaults(launcher=LAUNCHER)).run()
    assert time.perf_counter() - start < 2.0
    assert json.loads(job.labels_path.read_text()) == again and len(job.status()["attempts"]) == 2
    assert np.allclose(rebuilt["born_charges"], again["born_charges"])
    # a job killed after ph.x finished (state still 'running', pw.out lost): only pw.x runs again
    status = job.status()
    job.labels_path.unlink()
    (job.dir / "pw.out").write_text("truncated")
    job._save_status({**status, "state": "running"})
    resumed = DFTJob(li2o, TINY, records, pseudo_dir, tmp_path, RunnerOptions.defaults(launcher=LAUNCHER)).run()
    assert [a["program"] for a in job.status()["attempts"]] == ["pw.x", "ph.x", "pw.x"]
    assert np.allclose(resumed["born_charges"], again["born_charges"])


def test_real_scf_failure_escalates_then_fails_with_reason(tmp_path, pseudos, li2o):
    pseudo_dir, records = pseudos
    capped = DFTSettings.defaults(**{**TINY.to_dict(), "electron_maxstep": 2})
    job = DFTJob(li2o, capped, records, pseudo_dir, tmp_path, RunnerOptions.defaults(launcher=LAUNCHER, max_scf_attempts=2))
    labels = job.run()
    status = job.status()
    assert status["state"] == "failed" and labels["state"] == "failed"
    assert status["failure"]["class"] == "scf_not_converged"
    attempts = [a for a in status["attempts"] if a["program"] == "pw.x"]
    assert [a["outcome"] for a in attempts] == ["scf_not_converged", "scf_not_converged"]
    assert attempts[1]["overrides"]["electron_maxstep"] == 4  # escalation doubled the iterations
    assert attempts[1]["overrides"]["mixing_beta"] == pytest.approx(0.25)
    assert "energy" not in labels and "born_charges" not in labels
    assert (job.dir / "pw.attempt1.out").exists() and (job.dir / "pw.attempt2.out").exists()


def test_walltime_stop_leaves_a_resumable_job_that_restarts(tmp_path, pseudos, li2o):
    """QE stops itself at max_seconds; the rerun starts from the stopped run's charge density."""
    from bornfield.dft.runner import JobInterrupted

    pseudo_dir, records = pseudos
    rattled = li2o.copy()
    rattled.rattle(0.05, seed=3)
    scf_only = DFTSettings.defaults(**{**TINY.to_dict(), "born_charges": False})  # ph.x recover is QE's own
    stopping = RunnerOptions.defaults(launcher=LAUNCHER, max_seconds=0.5)
    job = DFTJob(rattled, scf_only, records, pseudo_dir, tmp_path, stopping)
    with pytest.raises(JobInterrupted):
        job.run()
    status = job.status()
    assert status["state"] == "interrupted" and status["interrupted_stage"] == "pw"
    assert "Maximum CPU time exceeded" in (job.dir / "pw.out").read_text()
    assert not job.is_finished() and not job.labels_path.exists()
    labels = DFTJob(rattled, scf_only, records, pseudo_dir, tmp_path, RunnerOptions.defaults(launcher=LAUNCHER)).run()
    status = job.status()
    pw_attempts = [a for a in status["attempts"] if a["program"] == "pw.x"]
    assert pw_attempts[-1]["restart"] is True and pw_attempts[-1]["outcome"] == "converged"
    assert "startingpot      = 'file'" in (job.dir / "pw.in").read_text()
    assert "The initial density is read from file" in (job.dir / "pw.out").read_text()
    assert status["state"] == "completed" and "energy" in labels and "born_charges" not in labels
