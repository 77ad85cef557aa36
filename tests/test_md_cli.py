"""`bornfield md` with real bornfield model files (random init): CLI, ASE and LAMMPS on 2 ranks."""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """results_dir with gen0 models (2 potentials, 1 Born model) and md_cells/fcc.extxyz."""
    root = tmp_path_factory.mktemp("md_cli")
    models = root / "models" / "gen0"
    for i in range(2):
        create_random_model_file("potential", ["Li", "O"], 3.5, models / f"potential_{i}.pt", seed=i,
                                 channels=4, hidden=16, radial_hidden=16)
    create_random_model_file("born", ["Li", "O"], 3.5, models / "born_0.pt", seed=7,
                             channels=4, hidden=16, radial_hidden=16)
    cells = root / "structures" / "md_cells"
    cells.mkdir(parents=True)
    write(cells / "fcc.extxyz", [fcc_cell(3, a=4.4, seed=0), fcc_cell(3, a=4.4, seed=1)])
    return root


def settings(backend: str, **extra) -> str:
    data = {
        "backend": backend, "ensemble": "nve", "equilibration_steps": 0, "production_steps": 30,
        "committee_size": 2, "model_generation": 0,
        "output": {"trajectory_stride": 5, "thermo_stride": 5, "checkpoint_interval": 10, "born_charges": True},
        "safety": {"max_temperature_factor": 50.0, "max_force_uncertainty_eV_per_A": 1e3,
                   "uncertainty_check_interval": 10, "min_distance_A": 0.5},
        "sweep": {"phases": ["fcc"], "temperatures_K": [300.0], "field_strengths_V_per_A": [0.1],
                  "field_directions": [[0.0, 1.0, 1.0]], "replicas": 2},
        **extra,
    }
    return json.dumps({"md": data})


def bornfield(*args, ranks=1):
    command = [str(BIN / "bornfield"), *args]
    if ranks > 1:
        command = [str(BIN / "mpiexec"), "-n", str(ranks), *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_list_prints_condition_names():
    out = bornfield("md", "list", "--settings", settings("ase")).stdout.split()
    assert out == ["fcc_T300K_E0.1_u0_0.7071_0.7071"]


def test_list_pending_in_names_missing_and_stale_analysis_records(campaign, tmp_path):
    from bornfield.models.io import file_sha256

    two = json.loads(settings("ase", sweep={"phases": ["fcc"], "temperatures_K": [300.0], "field_strengths_V_per_A": [0.0, 0.1],
                                            "field_directions": ["x"], "replicas": 1}))
    two = json.dumps({**two, "results_dir": str(campaign)})
    names = bornfield("md", "list", "--settings", two).stdout.split()
    assert names == ["fcc_T300K_E0_none", "fcc_T300K_E0.1_x"]
    models = campaign / "models" / "gen0"
    current = {"potentials": [{"file": "p", "sha256": file_sha256(models / f"potential_{i}.pt")} for i in range(2)],
               "born": {"file": "b", "sha256": file_sha256(models / "born_0.pt")}}
    analysis = tmp_path / "analysis"
    analysis.mkdir()
    (analysis / f"{names[0]}.json").write_text(json.dumps({"md_run": {"models": current}}))
    pending = bornfield("md", "list", "--settings", two, "--pending-in", str(analysis))
    assert pending.stdout.split() == [names[1]]
    # a record made with a retrained Born model is listed again, with the reason on stderr
    retrained = {**current, "born": {"file": "b", "sha256": "0" * 64}}
    (analysis / f"{names[1]}.json").write_text(json.dumps({"md_run": {"models": retrained}}))
    (analysis / f"{names[0]}.json").write_text(json.dumps({"md_run": {"models": retrained}}))
    pending = bornfield("md", "list", "--settings", two, "--pending-in", str(analysis))
    assert pending.stdout.split() == names and "made with other model files (born_0.pt sha256 000000000000" in pending.stderr
    # the reason names the file that changed, here a retrained potential
    potential_retrained = {**current, "potentials": [current["potentials"][0], {"file": "p", "sha256": "1" * 64}]}
    (analysis / f"{names[0]}.json").write_text(json.dumps({"md_run": {"models": potential_retrained}}))
    (analysis / f"{names[1]}.json").write_text(json.dumps({"md_run": {"models": current}}))
    pending = bornfield("md", "list", "--settings", two, "--pending-in", str(analysis))
    assert pending.stdout.split() == [names[0]]
    assert "(potential_1.pt sha256 111111111111, now " in pending.stderr and "born_0.pt" not in pending.stderr


@pytest.mark.slow
@pytest.mark.mpi
def test_run_with_model_files_ase_then_lammps_two_ranks(campaign, tmp_path):
    name = "fcc_T300K_E0.1_u0_0.7071_0.7071"
    bornfield("md", "run", "--settings", settings("ase"), "--results-dir", str(campaign),
              "--condition", name, "--output-dir", str(tmp_path / "ase"), "--no-progress")
    summary = json.loads((tmp_path / "ase" / "summary.json").read_text())
    assert summary["replicas_completed"] == 2, summary["replicas"]
    # LAMMPS: one replica group of 2 ranks per replica would need 4 ranks; 2 ranks = 2 groups
    bornfield("md", "run", "--settings", settings("lammps", sweep={
        "phases": ["fcc"], "temperatures_K": [300.0], "field_strengths_V_per_A": [0.1],
        "field_directions": [[0.0, 1.0, 1.0]], "replicas": 1}),
        "--results-dir", str(campaign), "--condition", name, "--output-dir", str(tmp_path / "lammps"),
        "--no-progress", ranks=2)
    summary = json.loads((tmp_path / "lammps" / "summary.json").read_text())
    assert summary["replicas_completed"] == 1 and summary["ranks_per_replica"] == 2
    # float32 models: periodic (ASE) and cluster (LAMMPS, 2 domains) evaluations agree closely
    with h5py.File(tmp_path / "ase" / "replica_0" / "traj.h5") as a, \
            h5py.File(tmp_path / "lammps" / "replica_0" / "traj.h5") as b:
        assert np.array_equal(a["step"][:], b["step"][:])
        assert np.abs(a["positions"][:] - b["positions"][:]).max() < 1e-3
        assert np.abs(a["born_charges"][:] - b["born_charges"][:]).max() < 1e-3
        assert np.abs(b["born_charges"][:].sum(axis=1)).max() < 1e-4


def test_missing_models_is_a_clear_error(tmp_path):
    result = subprocess.run([str(BIN / "bornfield"), "md", "run", "--settings", settings("ase"),
                             "--results-dir", str(tmp_path), "--condition", "fcc_T300K_E0.1_u0_0.7071_0.7071"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "MD models not found" in result.stderr and "potential_0.pt" in result.stderr


def test_committee_mean_forces_drive_the_md_and_give_the_uncertainty(campaign, tmp_path):
    """``md.committee_mean_forces``: the first NVE step follows the mean of the members' forces plus the
    field force (velocity Verlet with FixCom, checked against the members evaluated at the written
    positions), member 0's without it; the replica identity says which (a member-0 run is not resumed
    as a mean run), and the members' spread is checked as the uncertainty."""
    from ase import units
    from ase.io import read

    from bornfield.calculators import FieldCalculator

    name = "fcc_T300K_E0.1_u0_0.7071_0.7071"
    one_step = {"production_steps": 1, "output": {"trajectory_stride": 1, "thermo_stride": 1, "velocities": True,
                                                  "checkpoint_interval": 10, "born_charges": True}}
    atoms = read(campaign / "structures" / "md_cells" / "fcc.extxyz", 0)
    masses = atoms.get_masses()[:, None]
    members = [FieldCalculator(campaign / "models" / "gen0" / f"potential_{i}.pt") for i in range(2)]

    def potential_forces(positions, which):
        frame = atoms.copy()
        frame.positions = positions
        forces = [calc.get_forces(frame) for calc in members]
        return np.mean(forces, axis=0) if which == "mean" else forces[0]

    for which in ("member 0", "mean"):
        out = tmp_path / which.replace(" ", "")
        bornfield("md", "run", "--settings", settings("ase", committee_mean_forces=which == "mean", **one_step),
                  "--results-dir", str(campaign), "--condition", name, "--output-dir", str(out), "--no-progress")
        with h5py.File(out / "replica_0" / "traj.h5") as traj:
            positions, velocities = traj["positions"][:], traj["velocities"][:].astype(float)
            field = traj["field_forces"][:].astype(float)
        dt_fs = 1.0
        implied = (velocities[1] - velocities[0]) * 2 * masses / (dt_fs * units.fs**2)  # F(0) + F(dt), eV/Å
        total = [potential_forces(positions[k], which) + field[k] for k in (0, 1)]
        fixcom = [f - masses * f.sum(axis=0) / masses.sum() for f in total]
        # float32 velocities resolve the one-step change to about 3e-6 eV/Å here
        np.testing.assert_allclose(implied, fixcom[0] + fixcom[1], rtol=0, atol=1e-5)
        identity = json.loads((out / "replica_0" / "identity.json").read_text())
        assert identity.get("forces") == ("committee mean" if which == "mean" else None)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["replicas"][0]["force_uncertainty_eV_per_A"]["checks"] >= 1
    difference = potential_forces(positions[0], "mean") - potential_forces(positions[0], "member 0")
    assert np.abs(difference).max() > 1e-4  # 10x the tolerance: the check tells the two apart
