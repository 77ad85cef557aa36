"""The analysis reads what the MD stage really writes (traj.h5, status.json, summary.json)."""

from __future__ import annotations

import numpy as np
import pytest
from md_testmodels import DEFAULT_Z, ConstantBorn, MorsePotential, fcc_cell

from bornfield.analysis.condition import analyze_condition
from bornfield.config import validate_section
from bornfield.md.conditions import expand_conditions
from bornfield.md.runner import run_condition


def test_analysis_of_real_md_output_with_known_born_charges(tmp_path):
    md_settings = validate_section(
        {
            "sweep": {"phases": ["fcc"], "temperatures_K": [300.0], "field_strengths_V_per_A": [0.2],
                      "field_directions": ["x"], "replicas": 2},
            "equilibration_steps": 10, "production_steps": 120, "timestep_fs": 1.0,
            "output": {"trajectory_stride": 4, "born_charges": True},
        },
        "md",
    )
    (condition,) = expand_conditions(md_settings)
    outdir = tmp_path / "md" / condition.name
    cells = [fcc_cell(2, seed=s) for s in range(2)]  # 16 Li + 16 O
    summary = run_condition(md_settings, condition, outdir, MorsePotential(), ConstantBorn(), cells, progress=False)
    assert summary["replicas_completed"] == 2

    record = analyze_condition(outdir, validate_section({}, "analysis"))
    assert record["state"] == "analysed"
    assert record["condition"]["name"] == condition.name and record["condition"]["phase"] == "fcc"
    assert record["replicas"]["n_used"] == 2 and record["replicas"]["n_failed"] == 0
    np.testing.assert_allclose(record["parallel_axis"], [1.0, 0.0, 0.0])
    assert record["condition"]["field_strength_V_per_A"] == pytest.approx(0.2)

    # ConstantBorn: Z = table - cell mean; equal Li/O counts give Z_Li = (Z_Li0 - Z_O0)/2 = -Z_O
    z_li = 0.5 * (DEFAULT_Z[3] - DEFAULT_Z[8])
    force = 0.2 * z_li[0]  # F = Zᵀ E with E along x: E_x Z[x, :]
    for symbol, sign in (("Li", 1.0), ("O", -1.0)):
        stats = record["species"][symbol]["transverse_forces"]
        assert stats["mean_par_charge_e"] == pytest.approx(sign * z_li[0, 0], rel=1e-5)
        assert stats["mean_abs_perp_eV_per_A"] == pytest.approx(np.linalg.norm(force[1:]), rel=1e-4)
        assert stats["median_ratio"] == pytest.approx(np.linalg.norm(force[1:]) / abs(force[0]), rel=1e-4)
    # a vibrating crystal: bounded MSD, not diffusive
    li = record["species"]["Li"]
    assert li["regime"] == "subdiffusive"
    assert max(li["msd"]["total"]["value"]) < 1.0
