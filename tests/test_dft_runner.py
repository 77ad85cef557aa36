"""Runner contracts that need no QE: a launcher that never starts QE is not a failed structure."""

from __future__ import annotations

import json

import pytest
from ase.build import bulk

from bornfield.cli import main
from bornfield.dft.inputs import DFTSettings
from bornfield.dft.pseudopotentials import PseudoRecord
from bornfield.dft.runner import DFTJob, LaunchFailed, RunnerOptions
from bornfield.errors import ConfigError


def _job(tmp_path, launcher):
    pseudos = {el: PseudoRecord(el, f"{el}.UPF", "0" * 32, "test") for el in ("Li", "O")}
    settings = DFTSettings(ecutwfc_Ry=25, ecutrho_Ry=200, kpoint_density_per_inv_A=0.5)
    return DFTJob(bulk("OLi2", "fluorite", a=4.61), settings, pseudos, tmp_path / "pseudo", tmp_path / "jobs",
                  RunnerOptions(launcher=launcher))


def test_launcher_that_never_starts_qe_raises_and_leaves_no_labels(tmp_path):
    job = _job(tmp_path, "/bin/false")  # exits 1 without running pw.x, like a broken mpirun
    with pytest.raises(LaunchFailed, match="never started"):
        job.run()
    status = json.loads(job.status_path.read_text())
    assert status["state"] == "launch_failed" and status["failure"]["class"] == "not_started"
    assert not job.labels_path.exists() and not job.is_finished()
    # the next run (launcher fixed) starts over instead of reusing a 'failed' verdict
    with pytest.raises(LaunchFailed):
        _job(tmp_path, "/bin/false").run()
    assert len([a for a in json.loads(job.status_path.read_text())["attempts"] if a["program"] == "pw.x"]) == 0


def test_launch_failure_is_a_clear_cli_error(tmp_path, capsys):
    from ase.io import write

    structure = tmp_path / "s.extxyz"
    write(structure, bulk("OLi2", "fluorite", a=4.61), format="extxyz")
    pseudo_dir = tmp_path / "pseudo"
    pseudo_dir.mkdir()
    (pseudo_dir / "manifest.json").write_text(json.dumps(
        {el: {"element": el, "filename": f"{el}.UPF", "md5": "0" * 32, "source": "test"} for el in ("Li", "O")}))
    code = main(["dft", "run", "--settings", json.dumps({"qe": {"ecutwfc_Ry": 25, "ecutrho_Ry": 200}}),
                 "--structure", str(structure), "--pseudo-dir", str(pseudo_dir), "--jobs-dir", str(tmp_path / "jobs"),
                 "--launcher", "/bin/false"])
    assert code == 2
    assert "never started" in capsys.readouterr().err


def test_pools_reach_pw_and_ph_command_lines():
    options = RunnerOptions.from_section({"run": {"launcher": "srun", "ranks": 4, "pools": 2}})
    assert options.command("pw.x", "pw.in") == ["srun", "-n", "4", "pw.x", "-nk", "2", "-in", "pw.in"]
    assert options.command("ph.x", "ph.in")[-4:] == ["-nk", "2", "-in", "ph.in"]
    # one pool: QE's own default, no flag
    assert "-nk" not in RunnerOptions.from_section({"run": {"launcher": "srun", "ranks": 4}}).command("pw.x", "pw.in")


def test_pools_must_divide_ranks():
    with pytest.raises(ConfigError, match=r"dft.run.pools = 3 must divide dft.run.ranks = 4"):
        RunnerOptions.from_section({"run": {"launcher": "srun", "ranks": 4, "pools": 3}})
