"""NN re-equilibration of amorphous cells (`bornfield structures nn-equilibrate`): a short real
run with the shipped committee, the output contract, safety stops, config and the Snakemake DAG."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bornfield.cli import main
from bornfield.config import command_keys, validate_section
from bornfield.errors import ConfigError
from bornfield.structures.analysis import RDF_PAIRS, first_peak
from bornfield.structures.crystals import build_crystal, density_g_cm3
from bornfield.structures.io import read_structures, write_extxyz_atomic
from bornfield.structures.nn_equilibration import EquilibrationUnsafe, NNEquilibrationProtocol, nn_equilibrate
from bornfield.structures.report import build_report, plot_report

REPO = Path(__file__).resolve().parents[1]
MODELS = [REPO / "models" / "li3po4" / f"potential_{i}.pt" for i in range(4)]
#: a 64-atom classical cell, melt-quenched fast (LAMMPS, a few seconds)
CLASSICAL = {
    "amorphous": {
        "md_cells": {"n_atoms": 64, "seeds": 1},
        "melt_time_ps": 1.0, "quench_rate_K_per_ps": 3000, "anneal_time_ps": 1.0,
        "lammps": {"cutoff_A": 7.0, "kspace_accuracy": 1e-4, "thermo_every": 500},
    },
}


@pytest.fixture(scope="module")
def classical_file(tmp_path_factory) -> Path:
    from bornfield.structures.amorphous import make_amorphous_cell

    settings = validate_section(CLASSICAL, "structures")["amorphous"]
    final, _, _ = make_amorphous_cell(settings, master_seed=7, kind="md", index=0)
    path = tmp_path_factory.mktemp("classical") / "amorphous_classical.extxyz"
    write_extxyz_atomic(path, [final])
    return path


@pytest.fixture(scope="module")
def committee():
    from bornfield.models import load_potential

    return load_potential([str(p) for p in MODELS])


def _settings(**nn) -> str:
    return json.dumps({"structures": {"amorphous": {"nn_equilibration": nn}}})


def test_short_run_moves_the_density_and_writes_the_contract(classical_file, tmp_path):
    """300 steps with the shipped committee: the density moves, the output cell is the last frame
    at the mean density of the final stage's second half, with the documented info keys."""
    out, trace = tmp_path / "amorphous.extxyz", tmp_path / "trace.json"
    code = main(["structures", "nn-equilibrate", "--no-progress",
                 "--settings", _settings(anneal_time_ps=0.1, final_time_ps=0.2, trace_interval_steps=20),
                 "--structures", str(classical_file), "--potential", *map(str, MODELS),
                 "--output", str(out), "--report-json", str(trace)])
    assert code == 0
    (classical,) = read_structures(classical_file)
    (cell,) = read_structures(out)
    info = cell.info
    assert info["config_type"] == "amorphous" and info["nn_equilibrated"]
    assert info["classical_structure_id"] == classical.info["structure_id"] != info["structure_id"]
    assert info["seed"] == classical.info["seed"] and info["amorphous_kind"] == "md"
    assert info["classical_density_g_cm3"] == pytest.approx(density_g_cm3(classical), abs=1e-4)
    assert density_g_cm3(cell) == pytest.approx(info["nn_density_g_cm3"], abs=1e-4)
    assert abs(info["nn_density_g_cm3"] - info["classical_density_g_cm3"]) > 1e-3
    assert 0 < info["nn_force_uncertainty_max_eV_per_A"] < 2.0
    assert info["nn_committee_members"] == 4 and len(info["nn_models"]) == 12
    assert info["nn_settings_final_time_ps"] == 0.2 and info["nn_settings_anneal_temperature_K"] == 700
    assert info["nn_min_distance_seen_A"] > 1.0
    assert "classical_anneal_density_g_cm3" in info and "anneal_density_g_cm3" not in info
    assert sorted(cell.get_chemical_symbols()) == sorted(classical.get_chemical_symbols())
    record = json.loads(trace.read_text())
    (entry,) = record["cells"]
    rows = entry["trace"]
    assert [r["stage"] for r in rows].count("anneal") == 5 and rows[-1]["stage"] == "final"
    assert rows[-1]["step"] == entry["summary"]["steps"] == 300
    anneal_t = np.mean([r["temperature_K"] for r in rows if r["stage"] == "anneal"])
    assert 300 < anneal_t < 1100
    assert entry["structure_id"] == info["structure_id"]


def test_a_failing_cell_writes_nothing(classical_file, tmp_path, caplog):
    """Two cells, the second with two atoms 0.6 Å apart: the run stops with the check named and
    neither the output nor the report exists (no partial file, no temporary left)."""
    (good,) = read_structures(classical_file)
    bad = good.copy()
    bad.positions[1] = bad.positions[0] + [0.6, 0.0, 0.0]
    cells = tmp_path / "cells.extxyz"
    write_extxyz_atomic(cells, [good, bad])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = main(["structures", "nn-equilibrate", "--no-progress",
                 "--settings", _settings(anneal_time_ps=0, final_time_ps=0.01, check_interval_steps=1),
                 "--structures", str(cells), "--potential", *map(str, MODELS[:2]),
                 "--output", str(out_dir / "amorphous.extxyz"), "--report-json", str(out_dir / "trace.json")])
    assert code == 1
    assert list(out_dir.iterdir()) == []
    assert "cell 1" in caplog.text and "nothing written" in caplog.text


@pytest.mark.parametrize("limits, check", [
    ({"max_force_uncertainty_eV_per_A": 1e-4}, "max_force_uncertainty_eV_per_A"),
    ({"min_distance_A": 2.9}, "min_distance_A"),
    ({"max_temperature_factor": 1.001}, "max_temperature_factor"),
    ({"max_density_change_fraction": 1e-6}, "max_density_change_fraction"),
])
def test_each_safety_check_stops_the_run(classical_file, committee, limits, check):
    (cell,) = read_structures(classical_file)
    settings = validate_section({"amorphous": {"nn_equilibration": {
        "anneal_time_ps": 0.01, "final_time_ps": 0.01, "check_interval_steps": 2, **limits}}}, "structures")
    protocol = NNEquilibrationProtocol.from_settings(settings["amorphous"]["nn_equilibration"])
    if check == "max_temperature_factor":
        # velocities drawn at 2000 K, limit 2002 K: the instantaneous temperature of 64 atoms
        # scatters by ~10 %, so the first check of some seed is above it
        protocol = NNEquilibrationProtocol(**{**protocol.__dict__, "anneal_temperature_K": 2000.0,
                                              "anneal_time_ps": 0.002, "final_temperature_K": 10.0,
                                              "final_time_ps": 0.002, "check_interval_steps": 1})
    with pytest.raises(EquilibrationUnsafe, match=check):
        for seed in range(8):
            nn_equilibrate(cell, committee, protocol, seed=seed)


def test_schema_defaults_and_rejections():
    nn = validate_section({}, "structures")["amorphous"]["nn_equilibration"]
    assert nn["enabled"] is False and nn["final_time_ps"] > 0 and nn["pressure_bar"] == 0
    assert NNEquilibrationProtocol.from_settings(nn) == NNEquilibrationProtocol()
    for bad in ({"final_time_ps": 0}, {"enabled": "yes"}, {"timestep_fs": -1}, {"max_temperature_factor": 1},
                {"anneal_temperatur_K": 700}):
        with pytest.raises(ConfigError):
            validate_section({"amorphous": {"nn_equilibration": bad}}, "structures")
    keys = command_keys("structures nn-equilibrate")
    assert "structures.amorphous.nn_equilibration.enabled" not in keys
    assert set(keys) == {f"structures.amorphous.nn_equilibration.{k}" for k in nn if k != "enabled"}


def test_first_peak_is_nan_safe_and_the_report_has_four_rdfs(tmp_path):
    r = np.arange(0.01, 6.0, 0.02)
    assert np.isnan(first_peak(r, np.full_like(r, np.nan), (1.2, 2.0)))
    assert np.isnan(first_peak(r, np.zeros_like(r), (1.2, 2.0)))
    assert np.isnan(first_peak(r, r.copy(), (2.0, 3.8)))  # rising through the window: no peak there
    g = np.exp(-0.5 * ((r - 1.55) / 0.05) ** 2)
    assert first_peak(r, g, (1.2, 2.0)) == pytest.approx(1.55, abs=0.01)
    assert ("Li", "Li") in RDF_PAIRS and len(RDF_PAIRS) == 4
    report = build_report([build_crystal("beta")], "beta", validate_section({}, "structures")["report"])
    assert 2.4 < report["metrics"]["Li-Li_first_peak_A"]["mean"] < 3.4
    assert len(report["rdf"]["Li-Li"]) == len(report["rdf"]["r_A"])
    plot_report(report, tmp_path / "beta.png")
    assert (tmp_path / "beta.png").stat().st_size > 10000


def _dry_run(tmp_path: Path, *configs: str) -> str:
    snakemake = Path(sys.executable).with_name("snakemake")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    result = subprocess.run([str(snakemake), "-n", "-p", "--configfile", *configs, "--config",
                             f"results_dir={tmp_path}/results"], cwd=REPO, capture_output=True, text=True,
                            timeout=600, check=False, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout


def test_snakemake_dag_switches_when_enabled(tmp_path):
    overlay = tmp_path / "nn.yaml"
    overlay.write_text("structures:\n  amorphous:\n    nn_equilibration: {enabled: true}\n")
    off = _dry_run(tmp_path, "config/config.yaml")
    on = _dry_run(tmp_path, "config/config.yaml", str(overlay))
    assert "structures_nn_equilibrate" not in off and "--md-cells-extxyz" not in off
    assert "rule structures_nn_equilibrate:" in on
    assert f"--md-cells-extxyz {tmp_path}/results/structures/intermediate/amorphous_classical.extxyz" in on
    command = next(line for line in on.splitlines() if "bornfield structures nn-equilibrate" in line)
    assert "models/li3po4/potential_3.pt" in command
    assert f"--output {tmp_path}/results/structures/md_cells/amorphous.extxyz" in command
    assert "report/amorphous_classical.json" in on
