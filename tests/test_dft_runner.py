"""Runner contracts that need no QE: a launcher that never starts QE is not a failed structure."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from ase.build import bulk

from bornfield.cli import main
from bornfield.dft.inputs import DFTSettings
from bornfield.dft.pseudopotentials import PseudoRecord
from bornfield.config import validate_section
from bornfield.dft.runner import DFTJob, LaunchFailed, RunnerOptions, launch_prefix, run_measured
from bornfield.errors import ConfigError


def _job(tmp_path, launcher):
    pseudos = {el: PseudoRecord(el, f"{el}.UPF", "0" * 32, "test") for el in ("Li", "O")}
    settings = DFTSettings.defaults(ecutwfc_Ry=25, ecutrho_Ry=200, kpoint_density_per_inv_A=0.5)
    return DFTJob(bulk("OLi2", "fluorite", a=4.61), settings, pseudos, tmp_path / "pseudo", tmp_path / "jobs",
                  RunnerOptions.defaults(launcher=launcher))


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
    code = main(["dft", "run", "--settings", json.dumps({"dft": {"qe": {"ecutwfc_Ry": 25, "ecutrho_Ry": 200}}}),
                 "--structure", str(structure), "--pseudo-dir", str(pseudo_dir), "--jobs-dir", str(tmp_path / "jobs"),
                 "--launcher", "/bin/false"])
    assert code == 2
    assert "never started" in capsys.readouterr().err


def test_pools_reach_pw_and_ph_command_lines():
    options = RunnerOptions.from_section(validate_section({"run": {"launcher": "srun", "ranks": 4, "pools": 2}}, "dft"))
    assert options.command("pw.x", "pw.in") == ["srun", "-n", "4", "pw.x", "-nk", "2", "-in", "pw.in"]
    assert options.command("ph.x", "ph.in")[-4:] == ["-nk", "2", "-in", "ph.in"]
    # one pool: QE's own default, no flag
    assert "-nk" not in RunnerOptions.from_section(validate_section({"run": {"launcher": "srun", "ranks": 4}}, "dft")).command("pw.x", "pw.in")


def test_pools_must_divide_ranks():
    with pytest.raises(ConfigError, match=r"dft.run.pools = 3 must divide the 4 MPI rank"):
        RunnerOptions.from_section(validate_section({"run": {"launcher": "srun", "ranks": 4, "pools": 3}}, "dft"))
    with pytest.raises(ConfigError, match=r"dft.run.pools = 2 must divide the 3 MPI rank"):
        RunnerOptions.from_section(validate_section({"run": {"ranks": 4, "pools": 2}}, "dft"), ranks=3)


def test_launcher_and_ranks_mean_the_config_keys_everywhere():
    """--launcher/--ranks of 'dft run' and 'label' are dft.run.launcher (no rank count) and dft.run.ranks."""
    section = validate_section({"run": {"launcher": "/usr/bin/mpirun", "ranks": 2}}, "dft")
    assert RunnerOptions.from_section(section).launcher == "/usr/bin/mpirun -n 2"
    assert RunnerOptions.from_section(section, "srun --mpi=pmix", 4).launcher == "srun --mpi=pmix -n 4"
    assert RunnerOptions.from_section(section, ranks=1).launcher == ""  # one rank: QE without launcher
    assert RunnerOptions.from_section(section, "").launcher == ""
    assert launch_prefix("srun", 8) == "srun -n 8" and launch_prefix("srun", 1) == launch_prefix("", 8) == ""


REAL = Path(__file__).parent / "data" / "qe" / "beta_rattled16"


def _resume_ph(tmp_path, previous_status: dict):
    """A job whose SCF finished and whose ph.x stopped part-way, resumed with a stand-in ph.x
    that records what it was given (recover flag, scratch present) and prints a real ph.out."""
    from ase.io import read

    fake_ph = tmp_path / "ph.x"
    fake_ph.write_text(
        "#!/bin/sh\n"
        "grep -o 'recover = [.a-z]*' \"$2\" > seen_recover.txt\n"
        "if [ -d tmp/_ph0 ]; then echo kept > seen_scratch.txt; else echo removed > seen_scratch.txt; fi\n"
        f"cat {REAL / 'ph.out'}\n"
    )
    fake_ph.chmod(0o755)
    pseudos = {el: PseudoRecord(el, f"{el}.UPF", "0" * 32, "test") for el in ("Li", "P", "O")}
    job = DFTJob(read(REAL / "structure.extxyz"), DFTSettings.defaults(), pseudos, tmp_path / "pseudo", tmp_path / "jobs",
                 RunnerOptions.defaults(launcher="", ph_command=str(fake_ph)))
    (job.dir / "tmp" / "_ph0").mkdir(parents=True)
    (job.dir / "tmp" / "_ph0" / "bornfield.recover").write_text("left by the stopped ph.x")
    (job.dir / "pw.out").write_text((REAL / "pw.out").read_text())
    (job.dir / "ph.out").write_text("\n".join((REAL / "ph.out").read_text().splitlines()[:60]))  # stopped part-way
    job.status_path.write_text(json.dumps({"attempts": [], "wall_time_s": 0.0, **previous_status}))
    labels = job.run()
    return job, labels


def test_hard_killed_ph_starts_over_instead_of_trusting_recover_files(tmp_path, caplog):
    """No clean stop recorded (state still scf_done): QE's recover files are removed, recover=.false."""
    job, labels = _resume_ph(tmp_path, {"state": "scf_done"})
    assert (job.dir / "seen_recover.txt").read_text().strip() == "recover = .false."
    assert (job.dir / "seen_scratch.txt").read_text().strip() == "removed"
    assert "not trusted" in caplog.text
    ph = [a for a in job.status()["attempts"] if a["program"] == "ph.x"]
    assert ph == [{**ph[0], "recover": False, "outcome": "converged"}]
    assert job.status()["state"] == "completed" and "born_charges_raw" in labels


def test_ph_stopped_cleanly_at_max_seconds_resumes_with_recover(tmp_path):
    """QE's own max_seconds stop (state interrupted at ph): ph.x continues from its recover files."""
    job, _ = _resume_ph(tmp_path, {"state": "interrupted", "interrupted_stage": "ph"})
    assert (job.dir / "seen_recover.txt").read_text().strip() == "recover = .true."
    assert (job.dir / "seen_scratch.txt").read_text().strip() == "kept"
    assert [a["recover"] for a in job.status()["attempts"] if a["program"] == "ph.x"] == [True]


def test_peak_memory_is_measured_per_run_and_includes_the_launched_ranks(tmp_path):
    """run_measured reports each QE run's own peak, not the driver's memory (Linux hands a
    parent's high-water mark to its children across exec), and counts the processes the
    launcher starts, as mpirun starts the ranks."""
    ballast = bytearray(400 * 2**20)  # the driver (this process) is big
    ballast[::4096] = b"x" * len(ballast[::4096])
    allocate = "import time; b = bytearray({mib} * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.2)"
    via_launcher = ("import subprocess, sys; "
                    f"subprocess.run([sys.executable, '-c', {allocate.format(mib=150)!r}], check=True)")
    peaks = {}
    for name, code in (("big_via_launcher", via_launcher), ("small", allocate.format(mib=20))):
        with open(tmp_path / f"{name}.out", "w") as out:
            returncode, wall, peaks[name] = run_measured([sys.executable, "-I", "-S", "-c", code], tmp_path, out, {})
        assert returncode == 0 and wall > 0.2
    del ballast
    assert 150 < peaks["big_via_launcher"] < 250
    assert peaks["small"] < 80
    with open(tmp_path / "fail.out", "w") as out:
        assert run_measured([sys.executable, "-c", "raise SystemExit(3)"], tmp_path, out, {})[0] == 3
    with open(tmp_path / "missing.out", "w") as out:
        returncode, _, peak = run_measured([str(tmp_path / "no-such-pw.x")], tmp_path, out, {})
    assert returncode == 127 and "cannot start" in (tmp_path / "missing.out").read_text()
