"""``bornfield estimate``: work counting and cost laws of the campaign sizing helper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bornfield.cli import main
from bornfield.config import load_config
from bornfield.estimate import CostModel, estimate, irreducible_kpoints

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
    longer = load_config(ROOT / ".test" / "config.yaml")
    longer["md"]["production_steps"] = 2 * config["md"]["production_steps"] + config["md"]["equilibration_steps"]
    rows2 = {r["stage"]: r for r in estimate(longer)}
    assert rows2["field MD (all conditions x replicas)"]["core_hours"] == pytest.approx(
        2 * rows["field MD (all conditions x replicas)"]["core_hours"])
    assert rows2["dft (pw.x SCF)"]["core_hours"] == rows["dft (pw.x SCF)"]["core_hours"]


def test_md_rate_interpolates_between_measured_sizes():
    cost = CostModel()
    assert cost.md_rate(64) == cost.md_atom_steps_per_core_s_small
    assert cost.md_rate(8192) == cost.md_atom_steps_per_core_s_large
    assert cost.md_atom_steps_per_core_s_small < cost.md_rate(400) < cost.md_atom_steps_per_core_s_large


def test_estimate_cli_prints_table_and_json(tmp_path, capsys):
    out = tmp_path / "estimate.json"
    assert main(["estimate", "--config", str(ROOT / "config" / "paper.yaml"), "--cores", "64", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dft (ph.x DFPT Born charges)" in printed and "total" in printed
    data = json.loads(out.read_text())
    assert data["rows"] and data["cost_model"]["scf_size_exponent"] == pytest.approx(1.20)
    assert main(["estimate", "--config", str(ROOT / "config" / "paper.yaml"), "--speed", "0"]) == 2


def test_size_factor_is_continuous_and_steeper_above_32_atoms():
    from bornfield.estimate import CostModel

    cost = CostModel()
    factor = lambda n: cost.size_factor(n, cost.dfpt_size_exponent, cost.dfpt_size_exponent_large)  # noqa: E731
    small, large = cost.dfpt_size_exponent, cost.dfpt_size_exponent_large
    assert factor(16) == pytest.approx(1.0) and factor(32) == pytest.approx(2.0**small)
    assert factor(33) == pytest.approx(factor(32) * (33 / 32) ** large)  # no jump at the pivot
    assert factor(64) / factor(32) == pytest.approx(2.0**large)
    assert factor(64) / factor(32) > factor(32) / factor(16)
