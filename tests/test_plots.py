"""Figures and the analyze/plot command line, on a small synthetic campaign."""

from __future__ import annotations

import json
import time

import matplotlib.image as mpimg
import numpy as np
import pytest

from bornfield.analysis.synthetic import write_synthetic_condition
from bornfield.cli import main
from bornfield.plots import figures, style

Z = {"Li": [[1.0, 0.2, 0.0], [0.1, 1.0, 0.0], [0.0, 0.0, 1.0]], "P": 3.0 * np.eye(3), "O": [[-1.5, 0.2, 0.0], [0.0, -1.5, 0.0], [0.0, 0.0, -1.5]]}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """md/<condition>/ for two phases x two temperatures x {0, 0.05, 0.1} V/Å, analysed by the CLI."""
    root = tmp_path_factory.mktemp("campaign")
    names = []
    for phase, ea in (("amorphous", 0.4), ("beta", 0.6)):
        for temperature in (700.0, 1000.0):
            diffusion = 5e-2 * np.exp(-ea / (8.617e-5 * temperature))
            for strength in (0.0, 0.1):
                name = f"{phase}_T{temperature:g}K_E{strength:g}"
                write_synthetic_condition(
                    root / "md" / name, n_replicas=3, n_frames=120, frame_interval_fs=20.0, temperature_K=temperature,
                    field_V_per_A=(strength, 0.0, 0.0), diffusion_A2_per_fs={"Li": diffusion},
                    drift_A_per_fs={"Li": diffusion / (8.617e-5 * temperature) * strength}, born_charges=Z,
                    phase=phase, n_formula_units=8, seed=len(names) + 1, failed_replicas=[2] if strength == 0.1 else [],
                )
                names.append(name)
    for name in names:
        assert main(["analyze", "condition", str(root / "md" / name), "--output", str(root / "analysis" / f"{name}.json")]) == 0
    records = [str(root / "analysis" / f"{name}.json") for name in names]
    assert main(["analyze", "sweep", *records, "--output-dir", str(root / "analysis")]) == 0
    return root, names


def test_analysis_cli_writes_records_and_tables(campaign):
    root, names = campaign
    record = json.loads((root / "analysis" / "amorphous_T1000K_E0.1.json").read_text())
    assert record["state"] == "analysed"
    assert (record["replicas"]["n_used"], record["replicas"]["n_failed"]) == (2, 1)
    assert (root / "analysis" / f"{names[0]}_msd.csv").stat().st_size > 0
    for table in ("sweep_transport.csv", "sweep_transverse.csv", "sweep_linear_response.csv", "arrhenius.csv", "arrhenius.json"):
        assert (root / "analysis" / table).stat().st_size > 0
    arrhenius = json.loads((root / "analysis" / "arrhenius.json").read_text())
    assert set(arrhenius["phases"]) == {"amorphous", "beta"}
    assert arrhenius["phases"]["amorphous"]["fit"]["activation_energy_eV"] == pytest.approx(0.4, abs=0.1)
    assert arrhenius["phases"]["beta"]["fit"]["activation_energy_eV"] == pytest.approx(0.6, abs=0.15)


def test_analyze_explicit_trajectory_files(campaign, tmp_path):
    root, names = campaign
    trajectories = sorted(str(p) for p in (root / "md" / names[0]).glob("replica_*/traj.h5"))
    output = tmp_path / "any.json"
    assert main(["analyze", "condition", *trajectories, "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    assert record["replicas"]["n_used"] == 3
    assert record["condition"]["phase"] == "amorphous"  # summary.json beside the replicas was found
    assert (tmp_path / "any_msd.csv").exists()


def test_plot_all_regenerates_every_figure_quickly(campaign):
    root, names = campaign
    figures_dir = root / "figures"
    start = time.perf_counter()
    png_only = json.dumps({"analysis": {"figures": {"formats": ["png"], "dpi": 100}}})
    assert main(["plot", "all", "--analysis-dir", str(root / "analysis"), "--output-dir", str(figures_dir),
                 "--settings", png_only]) == 0
    assert time.perf_counter() - start < 60.0
    stems = [f"condition_{name}" for name in names] + ["sweep_msd_vs_field", "mobility_vs_field", "transverse_forces", "arrhenius"]
    for stem in stems:
        png = mpimg.imread(figures_dir / f"{stem}.png")
        assert png.shape[0] > 200 and png.shape[1] > 300
        assert png.std() > 0.01  # not a blank canvas
    assert not list(figures_dir.glob(".*.tmp"))
    # default formats: PNG and PDF
    record = str(root / "analysis" / f"{names[1]}.json")
    assert main(["plot", "condition", record, "--output", str(figures_dir / "both")]) == 0
    assert (figures_dir / "both.pdf").read_bytes().startswith(b"%PDF")
    assert (figures_dir / "both.png").exists()


def test_figures_explain_missing_data_instead_of_failing(tmp_path):
    empty = {"format": "bornfield-analysis", "state": "no_completed_replicas", "condition": {"name": "c"},
             "replicas": {"n_used": 0, "n_failed": 2, "n_incomplete": 0}}
    assert figures.plot_condition(empty, tmp_path / "c", formats=("png",))[0].exists()
    assert figures.plot_sweep_msd([empty], "Li", tmp_path / "m", formats=("png",))[0].exists()
    assert figures.plot_mobility([], "Li", tmp_path / "mu", formats=("png",))[0].exists()
    assert figures.plot_transverse([empty], tmp_path / "t", formats=("png",))[0].exists()
    assert figures.plot_arrhenius({"phases": {}}, tmp_path / "a", formats=("png",))[0].exists()


def test_style_is_consistent():
    assert style.species_color("Li") == style.SPECIES_COLORS["Li"]
    assert style.phase_color("amorphous") != style.phase_color("beta")
    assert style.phase_color("some_new_phase") == style.phase_color("some_new_phase")
    for key in ("lag", "msd", "field", "mobility", "diffusion"):
        assert "(" in style.LABELS[key]  # every quantity axis carries its unit


def test_cli_reports_bad_input(tmp_path, capsys):
    assert main(["analyze", "condition", str(tmp_path / "nope"), "--output", str(tmp_path / "x.json")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["plot", "all", "--analysis-dir", str(tmp_path), "--output-dir", str(tmp_path / "f")]) == 2


def test_sweep_from_a_stored_analysis_directory_skips_its_own_outputs(campaign, tmp_path, capsys):
    root, names = campaign
    (tmp_path / "empty").mkdir()
    # the directory already holds claims.json, arrhenius.json, ...: only the condition records are read
    assert main(["analyze", "sweep", str(root / "analysis"), "--output-dir", str(tmp_path)]) == 0
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert {r["condition"] for r in claims["migration"]} == {n for n in names if not n.endswith("E0")}
    assert main(["analyze", "sweep", str(tmp_path / "empty"), "--output-dir", str(tmp_path)]) == 2
    assert "no per-condition analysis records" in capsys.readouterr().err


def test_results_page_states_done_and_pending_conditions_and_refuses_mixed_models(campaign, tmp_path):
    from bornfield.analysis.condition import md_run_facts
    from bornfield.analysis.results import model_set_identity, results_markdown, stored_records

    root, names = campaign
    records = stored_records(root / "analysis")
    assert sorted(r["condition"]["name"] for r in records) == sorted(names)
    conditions = [{"name": r["condition"]["name"], "phase": r["condition"]["phase"],
                   "temperature_K": r["condition"]["temperature_K"],
                   "field_strength_V_per_A": r["condition"]["field_strength_V_per_A"], "replicas": 3} for r in records]
    conditions.append({"name": "amorphous_T1300K_E0.2_x", "phase": "amorphous", "temperature_K": 1300.0,
                       "field_strength_V_per_A": 0.2, "replicas": 4})
    models = {"potentials": [{"file": "m/potential_0.pt", "sha256": "a" * 64}], "born": {"file": "m/born_0.pt", "sha256": "b" * 64}}
    for record in records:
        record["md_run"] = {"models": models, "core_hours": 0.25, "replicas_total": 3}
    text = results_markdown("config/x.yaml", "x/analysis", conditions, records,
                            (root / "analysis" / "claims.md").read_text(), [], ["figures/arrhenius.png"])
    assert f"{len(names)} of {len(names) + 1} conditions done, {0.25 * len(names):.2f} core-hours" in text
    assert "| amorphous_T1300K_E0.2_x | amorphous | 1300 | – | 0.2 | 0 / 0 / 4 | – | – | – | – | pending |" in text
    measured = records[[r["condition"]["name"] for r in records].index("amorphous_T1000K_E0.1")]["system"].get(
        "temperature_measured_K")
    cell = "–" if not measured else f"{measured['mean']:.0f}"
    assert f"| amorphous_T1000K_E0.1 | amorphous | 1000 | {cell} | 0.1 | 2 / 1 / 3 |" in text
    assert "### 1. Li MSD along the field" in text and "![arrhenius](figures/arrhenius.png)" in text
    assert "no finite-field result in the ledger yet" in text
    assert model_set_identity(records) == models
    records[1]["md_run"] = {"models": {**models, "born": {"file": "m/born_0.pt", "sha256": "c" * 64}}}
    with pytest.raises(Exception, match=r"other model files .*\(born_0\.pt sha256 [0-9a-f]{12}, now cccccccccccc\)"):
        model_set_identity(records)
    # MD cost from a summary.json: the job's wall time x its ranks; replicas batched on one rank ran
    # concurrently, so their own wall times are not added (a stored core_hours of the old rule is replaced)
    facts = md_run_facts({"replicas": [{"wall_time_s": 1800.0}, {"wall_time_s": 1800.0}], "ranks_per_replica": 1,
                          "mpi_ranks": 2, "wall_time_s": 1800.0, "core_hours": 4.0, "replicas_total": 4})
    assert facts["core_hours"] == pytest.approx(1.0) and facts["models"] is None
    facts = md_run_facts({"replicas": [{"wall_time_s": 900.0}] * 4, "mpi_ranks": 1, "wall_time_s": 900.0,
                          "replicas_total": 4})
    assert facts["core_hours"] == pytest.approx(0.25)
    # a condition resumed from checkpoints counts every invocation, the killed ones included
    facts = md_run_facts({"mpi_ranks": 1, "wall_time_s": 900.0, "replicas_total": 4,
                          "invocations": [{"mpi_ranks": 2, "wall_time_s": 1800.0, "finished": False},
                                          {"mpi_ranks": 1, "wall_time_s": 900.0, "finished": True}]})
    assert facts["core_hours"] == pytest.approx(1.25) and facts["force_uncertainty"] is None
    # the committee spread over the replicas: checks summed, the fraction below the limit weighted by them
    spread = {"replicas": [{"force_uncertainty_eV_per_A": {"checks": 30, "median": 0.2, "max": 0.9,
                                                           "fraction_below_limit": 1.0}},
                           {"force_uncertainty_eV_per_A": {"checks": 10, "median": 0.4, "max": 2.5,
                                                           "fraction_below_limit": 0.6}},
                           {"force_uncertainty_eV_per_A": {"checks": 20, "median": 0.3, "max": 1.1,
                                                           "fraction_below_limit": 1.0}},
                           {"state": "failed"}],
              "settings": {"safety": {"max_force_uncertainty_eV_per_A": 2.0}}}
    facts = md_run_facts(spread)["force_uncertainty"]
    assert facts == {"checks": 60, "replicas": 3, "max": 2.5, "median": 0.3, "fraction_below_limit": pytest.approx(56 / 60),
                     "limit_eV_per_A": 2.0}
    records[1]["md_run"] = {"models": models, "core_hours": 0.25, "replicas_total": 3}
    records[0]["md_run"]["force_uncertainty"] = facts
    text = results_markdown("config/x.yaml", "x/analysis", conditions, records, None, [], [])
    assert "| 0.25 | 0.30 / 2.50, 93.3% of 60 ≤ 2 | analysed |" in text


def test_stability_page_passes_only_complete_runs_with_the_spread_below_the_limit_often_enough(campaign, tmp_path):
    from ase.units import _amu

    from bornfield.analysis.results import density_g_cm3, stability_markdown, stability_verdicts, stored_records

    def row(**changes):
        base = {"name": "c", "state": "analysed", "n_used": 2, "n_failed": 0, "replicas": 2, "production_ps": 100.0,
                "spread": {"fraction_below_limit": 0.97}}
        return {**base, **changes}

    rows = [row(), row(n_used=1, n_failed=1), row(production_ps=40.0), row(spread={"fraction_below_limit": 0.94}),
            row(spread=None), row(state="pending")]
    verdicts = stability_verdicts(rows, [100.0] * len(rows), 0.95)
    assert verdicts[0] == "holds" and verdicts[-1] == "pending"
    assert verdicts[1] == "fails: 1 of 2 replicas used, 1 failed"
    assert verdicts[2] == "fails: 40 of 100 ps"
    assert verdicts[3].startswith("fails: spread below the limit in 94.0% of checks")
    assert verdicts[4].startswith("fails: spread below the limit in –")
    # density from the stored volume and counts: one Li3PO4 formula unit (115.79 u) in 78.1 Å^3 -> 2.462 g/cm3
    mass = (3 * 6.94 + 30.974 + 4 * 15.999) * _amu * 1e3
    assert density_g_cm3({"system": {"volume_A3": 78.1, "counts": {"Li": 3, "P": 1, "O": 4}}}) == pytest.approx(
        mass / 78.1e-24, rel=1e-3)
    assert density_g_cm3({"system": {}}) is None
    # the page from a stored campaign: the failed-replica conditions fail, the others hold
    root, names = campaign
    records = stored_records(root / "analysis")
    conditions = [{"name": r["condition"]["name"], "phase": r["condition"]["phase"],
                   "temperature_K": r["condition"]["temperature_K"],
                   "field_strength_V_per_A": r["condition"]["field_strength_V_per_A"], "replicas": 3} for r in records]
    planned = [r["time"]["duration_fs"] / 1000.0 for r in records]
    for record in records:
        record["md_run"] = {"force_uncertainty": {"checks": 10, "median": 0.3, "max": 1.0, "fraction_below_limit": 1.0,
                                                  "limit_eV_per_A": 2.0}}
    text = stability_markdown("config/s.yaml", "s/analysis", conditions, records, planned, 0.95)
    assert f"{sum('E0.1' not in n for n in names)} of {len(names)} conditions hold" in text
    assert text.count("| holds |") == sum("E0.1" not in n for n in names)
    assert "fails: 2 of 3 replicas used, 1 failed" in text
    assert main(["analyze", "stability", "--results-dir", str(root), "--min-fraction", "1.5"]) != 0
