"""Dataset assembly from REAL DFT job directories (tests/data/qe/jobs) and extxyz round trip."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from ase.io import read

from bornfield.data.dataset import assemble, label_statistics, plot_report, read_dataset, write_dataset
from bornfield.errors import InputFileError


@pytest.fixture
def job_dirs(data_dir, tmp_path):
    source = data_dir / "qe" / "jobs"
    dirs = []
    for job in sorted(source.iterdir()):
        target = tmp_path / "jobs" / job.name
        shutil.copytree(job, target)
        dirs.append(target)
    assert dirs, "no real job directories committed"
    return dirs


def test_extxyz_round_trip_keeps_every_label(job_dirs, tmp_path):
    frames, report = assemble(job_dirs)
    assert report.n_structures == len(job_dirs) == len(frames)
    path = tmp_path / "gen0.extxyz"
    write_dataset(frames, path)
    back = read_dataset(path)
    for atoms, job in zip(back, job_dirs, strict=True):
        labels = json.loads((job / "labels.json").read_text())
        structure = read(job / "structure.extxyz")
        assert np.allclose(atoms.positions, structure.positions, atol=1e-8)
        assert atoms.info["dft_id"] == labels["dft_id"] == job.name
        assert atoms.info["energy"] == pytest.approx(labels["energy"], abs=1e-8)
        assert np.allclose(atoms.arrays["forces"], labels["forces"], atol=1e-8)
        # written as the full 3x3 (the only shape ASE's extxyz reader accepts), read back as Voigt 6
        assert np.allclose(atoms.info["stress"], labels["stress"], atol=1e-10)
        assert atoms.info["config_type"] == structure.info["config_type"]
        z = atoms.arrays["born_charges"].reshape(-1, 3, 3)
        assert np.allclose(z, labels["born_charges"], atol=1e-8)  # 9 floats per atom, α-major
        assert np.allclose(z.sum(axis=0), 0, atol=1e-6)  # ASR-corrected labels
        assert np.allclose(np.reshape(atoms.info["epsilon_inf"], (3, 3)), labels["epsilon_inf"], atol=1e-8)
        assert atoms.info["qe_version"] == "6.7MaX"
        assert "P:" in atoms.info["pseudo_md5"] and len(atoms.info["settings_hash"]) == 12
        assert atoms.calc is None  # labels live in info/arrays


def test_rejected_bec_keeps_scf_labels_and_has_no_born_charges_key(job_dirs, tmp_path):
    labels_path = job_dirs[0] / "labels.json"
    labels = json.loads(labels_path.read_text())
    labels.pop("born_charges")
    labels["qc"] = {"scf_ok": True, "bec_ok": False, "reasons": ["max |ASR residual| 0.450 e above 0.3 e"]}
    labels_path.write_text(json.dumps(labels))
    frames, report = assemble(job_dirs)
    write_dataset(frames, tmp_path / "d.extxyz")
    back = read_dataset(tmp_path / "d.extxyz")
    assert "born_charges" not in back[0].arrays and "epsilon_inf" not in back[0].info
    assert "forces" in back[0].arrays and "energy" in back[0].info
    assert report.rejected_bec[0]["dft_id"] == labels["dft_id"]
    assert "ASR residual" in report.rejected_bec[0]["reasons"][0]
    assert report.failure_counts == {"bec_rejected_by_qc": 1}
    # the others still carry Born charges (never zeros for the rejected one)
    assert all("born_charges" in a.arrays for a in back[1:])


def test_scf_only_job_is_not_a_born_charge_rejection(job_dirs):
    labels_path = job_dirs[0] / "labels.json"
    labels = json.loads(labels_path.read_text())
    for key in ("born_charges", "born_charges_raw", "epsilon_inf", "asr_residual", "bec_precision"):
        labels.pop(key, None)
    labels["settings"] = {**labels["settings"], "born_charges": False}
    labels["qc"] = {"scf_ok": True, "bec_ok": False, "reasons": ["no Born charges (DFPT failed or not requested)"]}
    labels_path.write_text(json.dumps(labels))
    frames, report = assemble(job_dirs)
    assert report.n_structures == len(job_dirs) and report.n_with_born_charges == len(job_dirs) - 1
    assert report.rejected_bec == [] and report.failure_counts == {}


def test_failed_job_is_reported_not_written(job_dirs, tmp_path):
    failed = tmp_path / "jobs" / "0000000000000000"
    shutil.copytree(job_dirs[0], failed)
    labels = json.loads((failed / "labels.json").read_text())
    for key in ("energy", "forces", "stress", "born_charges", "born_charges_raw", "epsilon_inf", "asr_residual"):
        labels.pop(key, None)
    labels.update(dft_id=failed.name, state="failed", qc={"scf_ok": False, "bec_ok": False, "reasons": ["SCF failed"]},
                  failure={"stage": "pw", "class": "scf_not_converged", "reason": "SCF not converged after 3 escalating attempts"})
    (failed / "labels.json").write_text(json.dumps(labels))
    frames, report = assemble([*job_dirs, failed])
    assert len(frames) == len(job_dirs)
    assert report.failed[0]["class"] == "scf_not_converged"
    assert report.failure_counts["scf_not_converged"] == 1
    stats = label_statistics(frames)
    assert set(stats["born_charges"]) == {"Li", "O", "P"}
    assert stats["born_charges"]["Li"]["trace_over_3_mean"] > 0 > stats["born_charges"]["O"]["trace_over_3_mean"]
    plot_report(frames, report, tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_unfinished_job_is_an_error(job_dirs):
    (job_dirs[0] / "labels.json").unlink()
    with pytest.raises(InputFileError, match="has not finished"):
        assemble(job_dirs)


def test_committed_labelled_small_file_follows_the_design_keys(data_dir):
    frames = read_dataset(data_dir / "qe" / "labelled_small.extxyz")
    assert len(frames) >= 1
    for atoms in frames:
        n = len(atoms)
        assert atoms.arrays["forces"].shape == (n, 3)
        assert atoms.arrays["born_charges"].shape == (n, 9)
        assert np.asarray(atoms.info["epsilon_inf"]).shape == (9,)
        assert {"energy", "stress", "config_type", "dft_id"} <= set(atoms.info)


def test_cli_plan_and_assemble(job_dirs, tmp_path):
    """`bornfield dft plan` hashes what the job will read; `bornfield dataset assemble` writes all outputs."""
    from bornfield.cli import main

    structures = [read(job / "structure.extxyz") for job in job_dirs]
    from ase.io import write

    write(tmp_path / "candidates.extxyz", structures)
    settings = json.loads((job_dirs[0] / "labels.json").read_text())["settings"]
    section = {"qe": {"ecutwfc_Ry": settings["ecutwfc_Ry"], "ecutrho_Ry": settings["ecutrho_Ry"],
                      "kpoint_density_per_inv_A": settings["kpoint_density_per_inv_A"],
                      "conv_thr_per_atom_Ry": settings["conv_thr_per_atom_Ry"], "tr2_ph": settings["tr2_ph"]}}
    plan_path = tmp_path / "gen0" / "plan.json"
    assert main(["dft", "plan", "--settings", json.dumps({"dft": section}), "--structures", str(tmp_path / "candidates.extxyz"),
                 "--inputs-dir", str(tmp_path / "inputs"), "--output", str(plan_path)]) == 0
    plan = json.loads(plan_path.read_text())
    assert [entry["dft_id"] for entry in plan["jobs"]] == [job.name for job in job_dirs]  # same ids as the real runs
    out = tmp_path / "dataset" / "gen0.extxyz"
    assert main(["dataset", "assemble", "--plans", str(plan_path), "--jobs-dir", str(job_dirs[0].parent),
                 "--output", str(out), "--report-json", str(tmp_path / "r.json"), "--report-png", str(tmp_path / "r.png")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n_structures"] == len(job_dirs) and len(read_dataset(out)) == len(job_dirs)
    assert (tmp_path / "r.png").exists()
    assert main(["dataset", "assemble", "--settings", json.dumps({"dataset": {"min_labelled_structures": 99}}), "--plans", str(plan_path),
                 "--jobs-dir", str(job_dirs[0].parent), "--output", str(out), "--report-json", str(tmp_path / "r.json"),
                 "--report-png", str(tmp_path / "r.png")]) == 2
