"""``bornfield estimate``: work counting and cost laws of the campaign sizing helper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bornfield.cli import main
from bornfield.config import load_config, resolve_config
from bornfield.estimate import COST_FILE, CostModel, cost_model_from_records, estimate, irreducible_kpoints

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("mesh", "expected"), [((1, 1, 1), 1), ((1, 1, 2), 2), ((2, 2, 3), 8), ((3, 3, 4), 19), ((2, 2, 2), 8)])
def test_irreducible_kpoints_without_symmetry(mesh, expected):
    assert irreducible_kpoints(mesh) == expected


def test_estimate_counts_the_configured_work():
    config = load_config(ROOT / ".test" / "config.yaml")
    rows = {r["stage"]: r for r in estimate(config)}
    assert rows["dft (pw.x SCF)"]["units"].startswith(f"{config['dft']['max_structures']} jobs")
    assert all(r["core_hours"] >= 0 for r in rows.values())
    # doubling the production steps doubles (nearly) the MD cost; DFT is unchanged
    longer = load_config(ROOT / ".test" / "config.yaml").to_dict()
    longer["md"]["production_steps"] = 2 * config["md"]["production_steps"] + config["md"]["equilibration_steps"]
    rows2 = {r["stage"]: r for r in estimate(resolve_config(longer))}
    assert rows2["field MD (all conditions x replicas)"]["core_hours"] == pytest.approx(
        2 * rows["field MD (all conditions x replicas)"]["core_hours"])
    assert rows2["dft (pw.x SCF)"]["core_hours"] == rows["dft (pw.x SCF)"]["core_hours"]


def test_md_rate_interpolates_between_measured_sizes():
    cost = CostModel.load()
    table = cost.md_atom_steps_per_core_s["ase"]
    smallest, largest = min(table), max(table)
    assert cost.md_rate(smallest // 2, "ase") == table[smallest]
    assert cost.md_rate(largest * 2, "ase") == table[largest]
    middle = int((smallest * sorted(table)[1]) ** 0.5)
    assert min(table[smallest], table[sorted(table)[1]]) < cost.md_rate(middle, "ase") < max(
        table[smallest], table[sorted(table)[1]])


def test_shipped_cost_model_is_the_one_the_benchmark_records_give():
    """Re-running a benchmark without `python benchmarks/cost_model.py` makes this fail."""
    results = ROOT / "benchmarks" / "results"
    if not results.is_dir():
        pytest.skip("benchmarks/results not present (installed package)")
    assert json.loads(COST_FILE.read_text()) == cost_model_from_records(results).to_dict()


def test_model_set_md_rate_is_the_measured_rate_of_the_shipped_set():
    """At the size it was measured, the shipped set's MD rate is its benchmark record's, per backend."""
    cost = CostModel.load()
    records = json.loads((ROOT / "benchmarks" / "results" / "md_throughput_model_set.json").read_text())
    for backend in ("ase", "lammps"):
        found = [r for r in records if r["metric"] == "atom_steps_per_cpu_s" and r["system"] == f"bornfield-shipped-{backend}"]
        assert found
        for r in found:
            assert cost.md_rate(int(r["n_atoms"]), backend, "pedone", model_set=True) == pytest.approx(r["value"])


def test_estimate_uses_the_recorded_costs():
    """The DFT cost of one 16-atom job at the calibration settings is the calibration job's CPU time."""
    cost = CostModel.load()
    records = json.loads((ROOT / "benchmarks" / "results" / "dft_convergence.json").read_text())
    (pw,) = [r for r in records if r["system"] == "pw.x ph_default" and r["metric"] == "qe_cpu_time_s"]
    config = resolve_config({"dft": {"max_structures": 1}, "structures": {"dft_cells": {"crystals": ["beta"]}},
                             "train": {"active_learning": {"generations": 1}}})
    rows = {r["stage"]: r for r in estimate(config, cost)}
    assert rows["dft (pw.x SCF)"]["units"].startswith("1 jobs, 16 atoms")
    assert rows["dft (pw.x SCF)"]["core_hours"] * 3600 == pytest.approx(pw["value"], rel=1e-9)


def test_estimate_cli_prints_table_and_json(tmp_path, capsys):
    out = tmp_path / "estimate.json"
    assert main(["estimate", "--config", str(ROOT / "config" / "paper.yaml"), "--cores", "64", "--report-json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dft (ph.x DFPT Born charges)" in printed and "total" in printed
    data = json.loads(out.read_text())
    assert data["rows"] and data["cost_model"] == CostModel.load().to_dict()
    assert main(["estimate", "--config", str(ROOT / "config" / "paper.yaml"), "--speed", "0"]) == 2


def test_size_factor_is_continuous_and_steeper_above_32_atoms():
    cost = CostModel.load()
    factor = lambda n: cost.size_factor(n, cost.dfpt_size_exponent, cost.dfpt_size_exponent_large)  # noqa: E731
    small, large = cost.dfpt_size_exponent, cost.dfpt_size_exponent_large
    assert factor(16) == pytest.approx(1.0) and factor(32) == pytest.approx(2.0**small)
    assert factor(33) == pytest.approx(factor(32) * (33 / 32) ** large)  # no jump at the pivot
    assert factor(64) / factor(32) == pytest.approx(2.0**large)
    assert factor(64) / factor(32) > factor(32) / factor(16)


def test_model_sets_ledger_data_pretraining_and_the_md_baseline_are_costed(tmp_path):
    """A model set runs no DFT or training and its MD runs at its measured rate; ledger data run no DFT;
    a Pedone baseline slows MD by its measured factor."""
    cost = CostModel.load()
    assert cost.md_rate(128, "ase", "pedone") == pytest.approx(cost.md_rate(128, "ase") / cost.md_baseline_slowdown["ase"])
    assert 1.5 < cost.md_baseline_slowdown["ase"] < 5
    md = {"sweep": {"phases": ["beta"], "temperatures_K": [900.0], "field_strengths_V_per_A": [0.1], "replicas": 2}}
    plain = {r["stage"]: r for r in estimate(resolve_config({"md": md}))}
    with_baseline = {r["stage"]: r for r in estimate(resolve_config({"md": md, "train": {"potential": {"baseline": "pedone"}}}))}
    key = "field MD (all conditions x replicas)"
    assert with_baseline[key]["core_hours"] == pytest.approx(plain[key]["core_hours"] * cost.md_baseline_slowdown["ase"])
    model_set = {r["stage"]: r for r in estimate(resolve_config({"md": dict(md, models=str(ROOT / "models" / "li3po4"))}))}
    assert set(model_set) == {"structures (melt-quench)", key}
    assert "potential baseline pedone" in model_set[key]["units"] and "model set" in model_set[key]["units"]
    assert model_set[key]["core_hours"] == pytest.approx(plain[key]["core_hours"] * cost.md_model_set_slowdown["ase"])
    assert cost.md_rate(1024, "lammps", "pedone", model_set=True) == pytest.approx(
        cost.md_rate(1024, "lammps") / cost.md_model_set_slowdown["lammps"])
    models = {r["stage"]: r for r in estimate(load_config(ROOT / "config" / "models.yaml"))}
    assert models["dft (ph.x DFPT Born charges)"]["core_hours"] == 0.0
    assert "ledger entries" in models["dft (pw.x SCF)"]["units"]
    assert "pre-train potentials (upper bound: max_epochs)" not in models  # config/models.yaml trains from scratch
    settings = yaml.safe_load((ROOT / "config" / "models.yaml").read_text())
    settings["train"]["potential"]["pretrain"] = {
        "dataset": str(ROOT / "data" / "chgnet_proxy" / "li3po4_chgnet_proxy.extxyz.xz"), "max_epochs": 80}
    pretrained = {r["stage"]: r for r in estimate(resolve_config(settings))}
    pretrain = pretrained["pre-train potentials (upper bound: max_epochs)"]
    assert pretrain["units"].startswith("19342 atoms x 80 epochs x 4") and pretrain["core_hours"] > 0


def test_a_second_training_stage_is_charged_at_its_epochs():
    key = "train (committees, upper bound: max_epochs)"

    def train_hours(max_epochs: int, stage_two_epochs: int) -> float:
        potential = {"max_epochs": max_epochs, "stage_two": {"epochs": stage_two_epochs}}
        rows = estimate(resolve_config({"train": {"potential": potential}}))
        return next(r["core_hours"] for r in rows if r["stage"] == key)

    assert train_hours(100, 50) > train_hours(100, 0)
    assert train_hours(100, 50) == pytest.approx(train_hours(150, 0))
