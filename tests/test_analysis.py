"""Analysis on synthetic trajectories with known transport (biased random walks)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import constants

from bornfield.analysis import transport
from bornfield.analysis.condition import analyze_condition, fit_window_indices, write_json, write_msd_csv
from bornfield.analysis.msd import displacement_moments
from bornfield.analysis.synthetic import li3po4_like_cell, write_synthetic_condition, write_trajectory
from bornfield.analysis.sweep import _verdict, arrhenius, critical_value, write_sweep
from bornfield.analysis.trajectory import read_trajectory, unwrap
from bornfield.config import validate_section
from bornfield.errors import ConfigError, InputFileError


@pytest.fixture
def settings():
    return validate_section({}, "analysis")


def test_fft_moments_equal_direct_all_origin_average():
    rng = np.random.default_rng(3)
    positions = np.cumsum(rng.normal(size=(60, 9, 3)), axis=0)
    masses = rng.uniform(1.0, 30.0, 9)
    atoms = np.array([0, 2, 5, 7])
    tensor, mean = displacement_moments(positions, masses, atoms, 25, chunk_atoms=3)
    com = np.einsum("tnc,n->tc", positions, masses) / masses.sum()
    relative = positions[:, atoms] - com[:, None]
    for lag in (1, 7, 25):
        delta = relative[lag:] - relative[:-lag]
        direct = np.einsum("tia,tib->ab", delta, delta) / (delta.shape[0] * delta.shape[1])
        np.testing.assert_allclose(tensor[lag], direct, atol=1e-10)
        np.testing.assert_allclose(mean[lag], delta.mean(axis=(0, 1)), atol=1e-12)


def test_recovers_known_diffusion_and_drift_along_an_oblique_field(tmp_path, settings):
    diffusion, drift = 2.0e-3, 1.5e-3  # Å²/fs per direction, Å/fs
    field = np.array([0.06, 0.08, 0.0])  # |E| = 0.1 V/Å, not along an axis
    write_synthetic_condition(
        tmp_path / "cond", n_replicas=6, n_frames=400, frame_interval_fs=10.0, field_V_per_A=field,
        diffusion_A2_per_fs={"Li": diffusion}, drift_A_per_fs={"Li": drift}, n_formula_units=48, seed=11,
    )
    record = analyze_condition(tmp_path / "cond", settings)
    li = record["species"]["Li"]
    np.testing.assert_allclose(record["parallel_axis"], field / 0.1)
    d_total = li["diffusion"]["total"]
    assert abs(d_total["value"] - diffusion) < 4 * d_total["sem"]
    assert d_total["sem"] < 0.05 * diffusion
    d_par = li["diffusion"]["parallel"]  # drift removed: no v² τ² contamination
    assert abs(d_par["value"] - diffusion) < 4 * d_par["sem"]
    # the drift is given relative to the framework; with the centre of mass fixed the framework
    # recoils, so relative to the centre of mass Li moves at (1 - f) v, f = Li mass fraction
    host = record["host_frame"]
    assert host["host_species"] == ["P", "O"]
    f = host["mobile_mass_fraction"]
    assert f == pytest.approx(3 * 6.94 / (3 * 6.94 + 30.974 + 4 * 15.999), rel=1e-3)
    relative = li["drift_velocity_relative_to_host_A_per_fs"]["parallel"]
    assert abs(relative["value"] - drift) < 4 * relative["sem"]
    velocity = li["drift_velocity_A_per_fs"]["parallel"]
    assert abs(velocity["value"] - (1 - f) * drift) < 4 * velocity["sem"]
    assert abs(velocity["value"] - drift) > 4 * velocity["sem"]
    mobility = li["mobility"]
    assert mobility["A2_per_V_fs"]["value"] == pytest.approx(relative["value"] / 0.1)
    assert mobility["cm2_per_V_s"]["value"] == pytest.approx(0.1 * mobility["A2_per_V_fs"]["value"])
    assert li["regime"] == "diffusive"
    # raw MSD_par = 2Dτ + (vτ)² carries the drift; the drift-corrected curve is 2Dτ
    msd = li["msd"]
    lag = np.asarray(record["lag_fs"])[1:]
    corrected = np.asarray(msd["parallel_drift_corrected"]["value"])[1:]
    raw = np.asarray(msd["parallel"]["value"])[1:]
    np.testing.assert_allclose(corrected / (2 * diffusion * lag), 1.0, atol=0.08)
    np.testing.assert_allclose(raw / (2 * diffusion * lag + ((1 - f) * drift * lag) ** 2), 1.0, atol=0.08)
    assert raw[-1] > 1.5 * corrected[-1]
    # the framework drifts opposite so that the centre of mass is at rest, and not relative to itself
    p_velocity = record["species"]["P"]["drift_velocity_A_per_fs"]["parallel"]["value"]
    assert p_velocity == pytest.approx(-f / (1 - f) * velocity["value"], rel=0.02)
    assert abs(record["species"]["P"]["mobility"]["A2_per_V_fs"]["value"]) < 1e-3 * mobility["A2_per_V_fs"]["value"]
    assert record["species"]["P"]["regime"] == "subdiffusive"
    # Nernst–Einstein mobility of the drift-corrected D
    assert li["nernst_einstein_mobility"]["A2_per_V_fs"]["value"] == pytest.approx(
        d_par["value"] / (transport.kB * 600.0)
    )


def test_unwrap_restores_displacements_and_wrapped_input_is_refused(tmp_path, settings):
    common = dict(n_replicas=1, n_frames=200, frame_interval_fs=10.0, diffusion_A2_per_fs={"Li": 2.0e-2},
                  n_formula_units=8, seed=4)
    write_synthetic_condition(tmp_path / "plain", **common)
    write_synthetic_condition(tmp_path / "wrapped", wrap=True, **common)
    plain = read_trajectory(tmp_path / "plain/replica_0/traj.h5")
    with pytest.raises(InputFileError, match="wrapped"):
        read_trajectory(tmp_path / "wrapped/replica_0/traj.h5")
    restored = read_trajectory(tmp_path / "wrapped/replica_0/traj.h5", unwrap_positions=True)
    # atoms do cross the boundaries (Li moves ~ sqrt(6 D t) = 11 Å in a ~10 Å cell)
    lengths = np.diag(plain.cell)
    assert np.any(np.abs(plain.positions[-1] - plain.positions[0]) > lengths / 2)
    np.testing.assert_allclose(restored.positions - restored.positions[0], plain.positions - plain.positions[0], atol=1e-9)
    direct = unwrap(plain.positions % lengths, plain.cell)
    np.testing.assert_allclose(direct - direct[0], plain.positions - plain.positions[0], atol=1e-9)
    record_plain = analyze_condition(tmp_path / "plain", settings)
    record_wrapped = analyze_condition(tmp_path / "wrapped", {**settings, "unwrap": True})
    assert record_wrapped["species"]["Li"]["diffusion"]["total"]["value"] == pytest.approx(
        record_plain["species"]["Li"]["diffusion"]["total"]["value"], rel=1e-9
    )


def _write_static(path, positions, field=(0.0, 0.0, 0.0)):
    numbers, masses, cell, _ = li3po4_like_cell(4, seed=0)
    n_frames = positions.shape[0]
    write_trajectory(
        path / "replica_0/traj.h5", numbers=numbers, masses=masses, cell=cell, time_fs=np.arange(n_frames) * 5.0,
        field=np.repeat(np.asarray(field, float)[None], n_frames, axis=0), positions=positions, timestep_fs=1.0,
        stride=5, temperature_K=300.0, condition=path.name, replica=0, seed=0,
    )
    (path / "replica_0/status.json").write_text(json.dumps({"state": "completed"}))
    return numbers


def test_msd_of_a_trajectory_at_rest_is_zero(tmp_path, settings):
    _, _, _, start = li3po4_like_cell(4, seed=0)
    _write_static(tmp_path / "rest", np.repeat(start[None], 50, axis=0))
    record = analyze_condition(tmp_path / "rest", settings)
    for data in record["species"].values():
        for key in ("parallel", "perpendicular", "total"):
            assert np.max(np.abs(data["msd"][key]["value"])) == 0.0
        assert abs(data["diffusion"]["total"]["value"]) < 1e-20
        assert abs(data["drift_velocity_A_per_fs"]["parallel"]["value"]) < 1e-20
        assert abs(data["drift_velocity_relative_to_host_A_per_fs"]["parallel"]["value"]) < 1e-20


def test_uniform_translation_of_all_atoms_gives_zero_msd(tmp_path, settings):
    _, _, _, start = li3po4_like_cell(4, seed=0)
    rng = np.random.default_rng(1)
    shift = np.cumsum(rng.normal(scale=0.5, size=(80, 3)), axis=0)  # the whole cell wanders ~4 Å
    _write_static(tmp_path / "shift", start[None] + shift[:, None, :], field=(0.0, 0.0, 0.05))
    record = analyze_condition(tmp_path / "shift", settings)
    for data in record["species"].values():
        # exact up to round-off of the centre-of-mass subtraction (positions ~10 Å)
        assert np.max(np.abs(data["msd"]["total"]["value"])) < 1e-20
        assert np.max(np.abs(data["msd"]["drift_parallel"]["value"])) < 1e-12
        assert np.max(np.abs(data["drift_velocity_relative_to_host_A_per_fs"]["vector"]["value"])) < 1e-12
        assert np.max(np.abs(data["diffusion"]["tensor"]["value"])) < 1e-12


def test_error_bars_shrink_with_more_replicas(tmp_path, settings):
    # standard errors from few replicas scatter a lot: average them over independent campaigns
    sems = {3: [], 12: []}
    for seed in range(1, 5):
        for n in (3, 12):
            directory = tmp_path / f"n{n}_s{seed}"
            write_synthetic_condition(directory, n_replicas=n, n_frames=150, frame_interval_fs=10.0,
                                      field_V_per_A=(0.1, 0, 0), drift_A_per_fs={"Li": 1e-3}, n_formula_units=8, seed=seed)
            li = analyze_condition(directory, settings)["species"]["Li"]
            sems[n].append((li["diffusion"]["total"]["sem"], li["drift_velocity_A_per_fs"]["parallel"]["sem"],
                            np.mean(li["msd"]["parallel"]["sem"][1:])))
    few, many = np.mean(sems[3], axis=0), np.mean(sems[12], axis=0)
    # expected ratio sqrt(12/3) = 2
    assert np.all(many < 0.75 * few), (few, many)
    one = write_synthetic_condition(tmp_path / "n1", n_replicas=1, n_frames=200, n_formula_units=8, seed=7)
    assert one["replicas_completed"] == 1
    record = analyze_condition(tmp_path / "n1", settings)
    assert record["species"]["Li"]["diffusion"]["total"]["sem"] is None
    assert "single replica" in record["error_estimate"]


def test_transverse_forces_of_hand_built_born_charges(tmp_path, settings):
    field = np.array([0.0, 0.2, 0.0])  # along y
    numbers, masses, cell, start = li3po4_like_cell(2, seed=0)  # 6 Li, 2 P, 8 O
    n_frames = 20
    z = np.zeros((len(numbers), 3, 3))
    li = np.flatnonzero(numbers == 3)
    z[numbers == 15] = 3.2 * np.eye(3)  # isotropic: no transverse force
    z[numbers == 8] = -1.5 * np.eye(3)
    z[li] = np.eye(3)
    # half of the Li carry off-diagonal Z[y, x] = 0.3, Z[y, z] = 0.4 -> F = 0.2 (0.3, 1, 0.4)
    z[li[:3], 1, 0] = 0.3
    z[li[:3], 1, 2] = 0.4
    charges = np.repeat(z[None], n_frames, axis=0)
    forces = np.einsum("tkab,a->tkb", charges, field)
    for store in ("field_forces", "born_charges"):
        path = tmp_path / store
        write_trajectory(
            path / "replica_0/traj.h5", numbers=numbers, masses=masses, cell=cell, time_fs=np.arange(n_frames) * 5.0,
            field=np.repeat(field[None], n_frames, axis=0), positions=np.repeat(start[None], n_frames, axis=0),
            timestep_fs=1.0, stride=5, temperature_K=300.0, condition=store, replica=0, seed=0,
            field_forces=forces if store == "field_forces" else None,
            born_charges=charges if store == "born_charges" else None,
        )
        (path / "replica_0/status.json").write_text(json.dumps({"state": "completed"}))
        species = analyze_condition(path, settings)["species"]
        stats = species["Li"]["transverse_forces"]
        assert stats["available"] and not stats["hypothetical_unit_field"]
        assert stats["fraction_above_threshold"] == pytest.approx(0.5)
        assert stats["mean_abs_perp_eV_per_A"] == pytest.approx(0.5 * 0.2 * 0.5, rel=1e-6)  # |(0.3, 0.4)| = 0.5
        assert stats["max_abs_perp_eV_per_A"] == pytest.approx(0.1, rel=1e-6)
        assert stats["mean_par_charge_e"] == pytest.approx(1.0, rel=1e-6)
        assert stats["median_ratio"] == pytest.approx(0.25, rel=1e-5)  # midpoint of 0 and 0.5
        assert stats["time_average"]["per_atom_time_averaged_abs_perp_max_eV_per_A"] == pytest.approx(0.1, rel=1e-6)
        assert stats["time_average"]["fraction_above_threshold_std"] == pytest.approx(0.0, abs=1e-12)
        assert species["P"]["transverse_forces"]["fraction_above_threshold"] == 0.0
        assert species["O"]["transverse_forces"]["mean_par_charge_e"] == pytest.approx(-1.5, rel=1e-6)
        assert species["O"]["transverse_forces"]["mean_abs_perp_eV_per_A"] == pytest.approx(0.0, abs=1e-7)
        histogram = stats["histograms"]["ratio"]
        width = histogram["edges"][1] - histogram["edges"][0]
        assert sum(histogram["density"]) * width + histogram["overflow_fraction"] == pytest.approx(1.0)


def test_zero_field_uses_reference_axis_and_hypothetical_unit_field(tmp_path, settings):
    z_li = [[1.0, 0.0, 0.3], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    write_synthetic_condition(tmp_path / "zero", n_replicas=2, n_frames=100, born_charges={"Li": z_li, "P": np.eye(3), "O": np.eye(3)},
                              store="born_charges", n_formula_units=4)
    record = analyze_condition(tmp_path / "zero", {**settings, "reference_axis": "x"})
    assert record["parallel_axis"] == [1.0, 0.0, 0.0]
    assert "reference axis" in record["parallel_axis_source"]
    li = record["species"]["Li"]
    assert li["mobility"] is None
    stats = li["transverse_forces"]
    assert stats["hypothetical_unit_field"]
    assert stats["median_ratio"] == pytest.approx(0.3, rel=1e-6)  # Zᵀx̂ = (1, 0, 0.3)
    total = np.asarray(li["msd"]["total"]["value"])
    np.testing.assert_allclose(li["msd"]["total_per_direction"]["value"], total / 3)


def test_replicas_may_start_from_different_cells_of_the_same_atoms(tmp_path, settings):
    import h5py

    write_synthetic_condition(tmp_path / "c", n_replicas=3, n_frames=100, n_formula_units=4)
    with h5py.File(tmp_path / "c/replica_0/traj.h5") as traj:
        volume = abs(np.linalg.det(traj["cell"][:]))
    with h5py.File(tmp_path / "c/replica_2/traj.h5", "r+") as traj:  # an independently quenched, denser cell
        traj["cell"][...] = traj["cell"][:] * 0.97
    record = analyze_condition(tmp_path / "c", settings)
    volumes = record["system"]["volume_per_replica_A3"]
    assert volumes[:2] == pytest.approx([volume, volume]) and volumes[2] == pytest.approx(0.97**3 * volume)
    assert record["system"]["volume_A3"] == pytest.approx(np.mean(volumes))
    assert any("different cells" in note for note in record["notes"])
    with h5py.File(tmp_path / "c/replica_2/traj.h5", "r+") as traj:  # other atoms: not one system
        numbers = traj["numbers"][:]
        traj["numbers"][...] = numbers[::-1]
    with pytest.raises(InputFileError, match="replica_2.*atoms or masses differ"):
        analyze_condition(tmp_path / "c", settings)


def test_failed_and_incomplete_replicas_are_not_used(tmp_path, settings):
    write_synthetic_condition(tmp_path / "c", n_replicas=4, n_frames=100, failed_replicas=[1], n_formula_units=4)
    (tmp_path / "c/replica_3/status.json").unlink()  # still running / killed
    record = analyze_condition(tmp_path / "c", settings)
    replicas = record["replicas"]
    assert (replicas["n_used"], replicas["n_failed"], replicas["n_incomplete"]) == (2, 1, 1)
    assert replicas["failed"][0]["reason"] == "synthetic failure"
    assert all("replica_1" not in path for path in replicas["used"])
    # the failed replica's garbage (kÅ jumps) never reached the statistics
    assert record["species"]["Li"]["diffusion"]["total"]["value"] < 0.01
    for replica in (0, 2):
        (tmp_path / f"c/replica_{replica}/status.json").write_text(json.dumps({"state": "failed", "reason": "x"}))
    empty = analyze_condition(tmp_path / "c", settings)
    assert empty["state"] == "no_completed_replicas" and empty["replicas"]["n_failed"] == 3
    write_json(tmp_path / "empty.json", empty)
    write_msd_csv(tmp_path / "empty.csv", empty)
    (tmp_path / "c/replica_0/status.json").write_text(json.dumps({"state": "exploded"}))
    with pytest.raises(InputFileError, match="exploded"):
        analyze_condition(tmp_path / "c", settings)


def test_bad_inputs_raise_clear_errors(tmp_path, settings):
    with pytest.raises(InputFileError, match="not found"):
        analyze_condition(tmp_path / "missing", settings)
    bad = tmp_path / "bad/replica_0"
    bad.mkdir(parents=True)
    (bad / "traj.h5").write_bytes(b"not hdf5")
    (bad / "status.json").write_text(json.dumps({"state": "completed"}))
    with pytest.raises(InputFileError, match="HDF5"):
        analyze_condition(tmp_path / "bad", settings)
    with pytest.raises(ConfigError, match="fit window"):
        fit_window_indices({**settings, "fit_window_fs": [100.0, 110.0]}, 1000.0, 10.0, 50)
    write_synthetic_condition(tmp_path / "ok", n_replicas=1, n_frames=60, n_formula_units=4)
    with pytest.raises(ConfigError, match="species"):
        analyze_condition(tmp_path / "ok", {**settings, "species": ["Na"]})


def _fake_record(phase, temperature, diffusion, sem, n_li=96, volume=2560.0, n_used=4):
    return {
        "format": "bornfield-analysis", "state": "analysed",
        "condition": {"name": f"{phase}_T{temperature}", "phase": phase, "temperature_K": temperature,
                      "field_strength_V_per_A": 0.0},
        "replicas": {"n_used": n_used, "n_failed": 0, "n_incomplete": 0},
        "system": {"volume_A3": volume},
        "species": {"Li": {"n_atoms": n_li, "regime": "diffusive", "msd_exponent_in_fit_window": 1.0,
                           "diffusion": {"total": {"value": diffusion, "sem": sem}}}},
    }


def test_arrhenius_activation_energy_and_nernst_einstein_conductivity(settings):
    ea, d0 = 0.55, 0.2  # eV, Å²/fs
    temperatures = [600.0, 800.0, 1000.0, 1200.0]
    records = [_fake_record("amorphous", t, d0 * math.exp(-ea / (transport.kB * t)), 0.02 * d0 * math.exp(-ea / (transport.kB * t)))
               for t in temperatures]
    result = arrhenius(records, settings)
    fit = result["phases"]["amorphous"]["fit"]
    assert fit["activation_energy_eV"] == pytest.approx(ea, rel=1e-9)
    assert fit["D0_A2_per_fs"] == pytest.approx(d0, rel=1e-9)
    assert 0 < fit["activation_energy_sem_eV"] < fit["activation_energy_ci95_halfwidth_eV"]
    # σ = n e² D / (k_B T) in SI, independently of bornfield's unit handling
    point = result["phases"]["amorphous"]["points"][0]
    n_si = 96 / 2560.0 * 1e30
    d_si = point["D_A2_per_fs"] * 1e-20 / 1e-15
    sigma = n_si * constants.e**2 * d_si / (constants.k * 600.0) / 100.0
    assert point["conductivity_S_per_cm"] == pytest.approx(sigma, rel=1e-4)
    assert "Haven ratio 1" in result["haven_ratio_note"]
    single = arrhenius(records[:1], settings)
    assert single["phases"]["amorphous"]["fit"] is None


def test_unit_conversions_against_scipy_constants():
    angstrom2_per_fs = 1e-20 / 1e-15  # m²/s
    assert transport.A2_PER_FS_IN_CM2_PER_S == pytest.approx(angstrom2_per_fs * 1e4)
    assert transport.MOBILITY_A2_PER_V_FS_IN_CM2_PER_V_S == pytest.approx(angstrom2_per_fs * 1e4)
    assert transport.nernst_einstein_mobility(1.0, 300.0) == pytest.approx(
        1.0 / (constants.k * 300.0 / constants.e), rel=1e-6
    )


def test_linear_response_verdicts():
    assert _verdict(1.05, 0.02, 1.0, 0.02, 0.1, 2.0, 10) == "linear"
    assert _verdict(1.5, 0.02, 1.0, 0.02, 0.1, 2.0, 10) == "nonlinear"
    assert _verdict(1.2, 0.1, 1.0, 0.1, 0.1, 2.0, 10) == "linear (within error)"
    assert _verdict(3.0, 0.9, 1.0, 0.9, 0.1, 2.0, 10).startswith("undetermined")
    assert _verdict(1.5, float("nan"), 1.0, float("nan"), 0.1, 2.0).startswith("undetermined")
    # few replicas: the same deviation is significant with 10 but not with 2 degrees of freedom
    assert critical_value(2.0, 2) > 4.0 > critical_value(2.0, 10) > 2.0
    assert _verdict(1.35, 0.1, 1.0, 0.0, 0.1, 2.0, 10) == "nonlinear"
    assert _verdict(1.35, 0.1, 1.0, 0.0, 0.1, 2.0, 2) == "linear (within error)"
    weak = transport.hopping_nonlinearity(0.001, 600.0, 2.5)
    strong = transport.hopping_nonlinearity(0.1, 600.0, 2.5)
    assert weak["relative_excess"] < 1e-3 < 1.0 < strong["relative_excess"]


def test_sweep_tables_from_analysed_conditions(tmp_path, settings):
    common = dict(n_replicas=3, n_frames=150, frame_interval_fs=10.0, n_formula_units=8, phase="amorphous",
                  born_charges={"Li": [[1.0, 0.2, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], "P": np.eye(3), "O": -np.eye(3)})
    paths = []
    for name, field, drift in (("E0", (0, 0, 0), 0.0), ("E1", (0.05, 0, 0), 5e-4), ("E2", (0.1, 0, 0), 1e-3)):
        write_synthetic_condition(tmp_path / name, field_V_per_A=field, drift_A_per_fs={"Li": drift}, **common)
        paths.append(write_json(tmp_path / f"{name}.json", analyze_condition(tmp_path / name, settings)))
    from bornfield.analysis.sweep import load_records

    outputs = write_sweep(load_records(paths), settings, tmp_path / "out")
    import csv

    rows = list(csv.DictReader(open(outputs["linear_response"])))
    assert [float(r["field_V_per_A"]) for r in rows] == [0.05, 0.1]
    assert rows[0]["verdict_vs_lowest_field"] == "reference"
    assert rows[1]["zero_field_condition"] == "E0"
    assert float(rows[1]["mu_over_mu_lowest_field"]) == pytest.approx(1.0, abs=0.3)
    transport_rows = list(csv.DictReader(open(outputs["transport"])))
    assert len(transport_rows) == 9 and {r["species"] for r in transport_rows} == {"Li", "P", "O"}
    # MSD along E against the zero-field run of the same phase and temperature
    by_key = {(r["condition"], r["species"]): r for r in transport_rows}
    li_field, li_zero = by_key[("E2", "Li")], by_key[("E0", "Li")]
    assert li_zero["msd_field_effect"] == "" and li_field["msd_field_effect"] in {"enhanced", "not resolved"}
    assert float(li_field["msd_parallel_excess_at_ref_A2"]) == pytest.approx(
        float(li_field["msd_parallel_at_ref_A2"]) - float(li_zero["msd_parallel_at_ref_A2"]), rel=1e-4)
    assert float(li_field["msd_parallel_excess_at_ref_A2"]) > 0 < float(li_field["msd_parallel_excess_at_ref_sem_A2"])
    # the growth over the fit window: the record's MSD at the window start is the curve's value there
    record = json.loads(paths[2].read_text())["species"]["Li"]
    start = record["msd_at_window_start"]
    assert start["time_fs"] == float(li_field["fit_window_start_fs"])
    assert np.einsum("rab,a,b->r", np.asarray(start["tensor_per_replica_A2"]), [1, 0, 0], [1, 0, 0]).mean() == (
        pytest.approx(start["parallel"]["value"]))
    assert float(li_field["msd_parallel_growth_A2"]) == pytest.approx(
        record["msd_at_reference"]["parallel"]["value"] - start["parallel"]["value"], rel=1e-5)
    assert float(li_field["msd_parallel_growth_A2"]) > 0
    transverse_rows = list(csv.DictReader(open(outputs["transverse"])))
    li = [r for r in transverse_rows if r["species"] == "Li" and r["condition"] == "E2"][0]
    assert float(li["median_ratio"]) == pytest.approx(0.2, rel=1e-5)


def _msd_record(field, at_reference, at_start, axis=(1.0, 0.0, 0.0), time_fs=800.0, start_fs=200.0, n_used=4):
    """A minimal analysed record: per-replica MSD tensors (R, 3, 3) at the reference time and the window start."""
    axis = np.asarray(axis, dtype=float)
    projections = np.einsum("rab,a,b->r", at_reference, axis, axis)
    sem = projections.std(ddof=1) / np.sqrt(len(projections)) if len(projections) > 1 else float("nan")
    parallel = {"value": projections.mean(), "sem": sem}
    return {"condition": {"field_strength_V_per_A": field}, "parallel_axis": axis.tolist(),
            "replicas": {"n_used": n_used},
            "species": {"Li": {"msd_at_reference": {"time_fs": time_fs, "parallel": parallel,
                                                    "tensor_per_replica_A2": np.asarray(at_reference).tolist()},
                               "msd_at_window_start": {"time_fs": start_fs,
                                                       "tensor_per_replica_A2": np.asarray(at_start).tolist()}}}}


def _tensors(xx, yy, zz=0.8, xy=0.2):
    tensors = np.zeros((len(xx), 3, 3))
    tensors[:, 0, 0], tensors[:, 1, 1], tensors[:, 2, 2] = xx, yy, zz
    tensors[:, 0, 1] = tensors[:, 1, 0] = xy
    return tensors


def test_msd_field_effect_reads_the_growth_of_the_field_run_against_its_zero_field_run():
    from bornfield.analysis.sweep import msd_field_effect

    # zero-field replicas of an anisotropic crystal: MSD_xx around 0.6, MSD_yy around 1.0, MSD_xy 0.2
    xx = np.array([0.50, 0.55, 0.65, 0.70])
    yy = np.array([0.90, 1.10, 0.95, 1.05])
    zero_ref, zero_start = _tensors(xx, yy), _tensors(xx / 2, yy / 2, 0.4, 0.1)
    zero = _msd_record(0.0, zero_ref, zero_start)
    noise = np.array([0.01, -0.02, 0.015, -0.005])

    # a field that only raises the plateau along E (larger vibration or a static shift): the excess at
    # the reference time is resolved, the excess growth is not, and the verdict says so
    offset = _tensors(xx + 0.3 + noise, yy)
    plateau = msd_field_effect(_msd_record(0.1, offset, _tensors(xx / 2 + 0.3, yy / 2, 0.4, 0.1)), zero, "Li", 2.0)
    assert plateau["msd_parallel_excess_at_ref_A2"] == pytest.approx(0.3 + noise.mean())
    assert plateau["msd_parallel_zero_field_at_ref_A2"] == pytest.approx(xx.mean())
    assert plateau["msd_parallel_excess_growth_A2"] == pytest.approx(noise.mean(), abs=1e-12)
    assert plateau["msd_field_effect"].startswith("not resolved (a plateau offset")

    # migration: the MSD along E grows faster than at E = 0 (error of the per-replica growth differences)
    faster = msd_field_effect(_msd_record(0.1, _tensors(xx + 0.6 + noise, yy), zero_start), zero, "Li", 2.0)
    growth_field = xx + 0.6 + noise - xx / 2
    assert faster["msd_parallel_growth_A2"] == pytest.approx(growth_field.mean())
    assert faster["msd_parallel_growth_sem_A2"] == pytest.approx(growth_field.std(ddof=1) / 2.0)
    assert faster["msd_parallel_zero_field_growth_A2"] == pytest.approx((xx / 2).mean())
    assert faster["msd_parallel_excess_growth_sem_A2"] == pytest.approx(
        np.hypot(growth_field.std(ddof=1), (xx / 2).std(ddof=1)) / 2.0)
    assert faster["msd_field_effect"] == "enhanced"
    slower = msd_field_effect(_msd_record(0.1, _tensors(xx - 0.2 + noise, yy), zero_start), zero, "Li", 2.0)
    assert slower["msd_field_effect"] == "reduced"
    # within the replica scatter: 3 degrees of freedom, Student-t 3.2 sigma
    small = msd_field_effect(_msd_record(0.1, _tensors(xx + 0.02 + noise, yy), zero_start), zero, "Li", 2.0)
    assert small["msd_field_effect"] == "not resolved"

    # a field along y is read against the zero-field MSD along y, not along the zero-field run's own axis
    along_y = msd_field_effect(_msd_record(0.1, _tensors(xx, yy + 0.6 + noise), zero_start, axis=(0, 1, 0)),
                               zero, "Li", 2.0)
    assert along_y["msd_parallel_zero_field_at_ref_A2"] == pytest.approx(yy.mean())
    assert along_y["msd_parallel_zero_field_at_ref_sem_A2"] == pytest.approx(yy.std(ddof=1) / 2.0)
    assert along_y["msd_parallel_zero_field_growth_A2"] == pytest.approx((yy / 2).mean())
    assert along_y["msd_field_effect"] == "enhanced"
    # along [1,1,0]: the projection carries the off-diagonal part, its error is that of the projections
    u = np.array([1.0, 1.0, 0.0]) / np.sqrt(2.0)
    diagonal = msd_field_effect(_msd_record(0.1, zero_ref, zero_start, axis=u), zero, "Li", 2.0)
    projections = (xx + yy) / 2.0 + 0.2
    assert diagonal["msd_parallel_zero_field_at_ref_A2"] == pytest.approx(projections.mean())
    assert diagonal["msd_parallel_zero_field_at_ref_sem_A2"] == pytest.approx(projections.std(ddof=1) / 2.0)
    assert diagonal["msd_parallel_excess_growth_A2"] == pytest.approx(0.0, abs=1e-12)

    same = (offset, zero_start)
    assert msd_field_effect(_msd_record(0.1, *same, time_fs=600.0), zero, "Li", 2.0)["msd_field_effect"].startswith(
        "undetermined")
    assert msd_field_effect(_msd_record(0.1, *same, start_fs=400.0), zero, "Li", 2.0)["msd_field_effect"].startswith(
        "undetermined")
    assert msd_field_effect(_msd_record(0.1, *same), None, "Li", 2.0)["msd_field_effect"].startswith("undetermined")
    assert msd_field_effect(zero, zero, "Li", 2.0)["msd_field_effect"] == ""
    one = msd_field_effect(_msd_record(0.1, offset[:1], zero_start[:1], n_used=1), _msd_record(
        0.0, zero_ref[:1], zero_start[:1], n_used=1), "Li", 2.0)
    assert one["msd_field_effect"].startswith("undetermined (no error estimate")
    # records from before the growth test name what is missing and how to get it
    old = _msd_record(0.0, zero_ref, zero_start)
    del old["species"]["Li"]["msd_at_window_start"]
    with pytest.raises(InputFileError, match="msd_at_window_start"):
        msd_field_effect(_msd_record(0.1, *same), old, "Li", 2.0)
    old = _msd_record(0.0, zero_ref, zero_start)
    del old["species"]["Li"]["msd_at_reference"]["tensor_per_replica_A2"]
    with pytest.raises(InputFileError, match="tensor_per_replica_A2"):
        msd_field_effect(_msd_record(0.1, *same), old, "Li", 2.0)


def test_msd_growth_verdict_keeps_its_false_alarm_rate_under_a_plateau_offset():
    """Replica scatter drawn from known distributions: a field that only lifts the MSD plateau is
    called enhanced at about the one-sided rate of a 2-sigma test, the old test at one time calls it
    enhanced almost always, and a real excess growth of 4 standard errors is found."""
    from bornfield.analysis.sweep import msd_field_effect

    rng = np.random.default_rng(12)
    n_replicas, trials, scatter = 8, 600, 0.05

    def campaign(offset: float, extra_growth: float) -> tuple[dict, dict]:
        def replicas(lift: float, growth: float) -> tuple[np.ndarray, np.ndarray]:
            start = 1.0 + lift + scatter * rng.standard_normal(n_replicas)
            end = start + 0.5 + growth + scatter * rng.standard_normal(n_replicas)
            return _tensors(end, end), _tensors(start, start)

        return _msd_record(0.1, *replicas(offset, extra_growth), n_used=n_replicas), _msd_record(
            0.0, *replicas(0.0, 0.0), n_used=n_replicas)

    def enhanced_rate(offset: float, extra_growth: float) -> float:
        verdicts = [msd_field_effect(*campaign(offset, extra_growth), "Li", 2.0)["msd_field_effect"] for _ in range(trials)]
        return float(np.mean([v == "enhanced" for v in verdicts]))

    excess_growth_sem = scatter * np.sqrt(2.0 / n_replicas)  # per replica the growth scatters by `scatter`
    assert enhanced_rate(offset=10 * scatter, extra_growth=0.0) < 0.05
    assert enhanced_rate(offset=0.0, extra_growth=4.0 * excess_growth_sem) > 0.8
    # the excess at the reference time alone (the former verdict) is resolved in nearly every offset trial
    field, zero = campaign(10 * scatter, 0.0)
    result = msd_field_effect(field, zero, "Li", 2.0)
    assert result["msd_parallel_excess_at_ref_A2"] > 4 * result["msd_parallel_excess_at_ref_sem_A2"]


def test_correlated_li_reads_as_a_haven_ratio_not_as_nonlinear_response(tmp_path, settings):
    """Li whose drift is twice the tracer Nernst–Einstein value at every field (charge diffusion twice
    the tracer one, H_R = 0.5): the field sweep calls the response linear, the Nernst–Einstein
    comparison with H_R = 1 does not, and the implied Haven ratio is 0.5."""
    diffusion, temperature = 1.0e-3, 600.0
    common = dict(n_replicas=8, n_frames=400, frame_interval_fs=10.0, temperature_K=temperature, n_formula_units=32,
                  diffusion_A2_per_fs={"Li": diffusion}, phase="amorphous",
                  born_charges={"Li": np.eye(3), "P": 5.0 * np.eye(3), "O": -2.0 * np.eye(3)})
    write_synthetic_condition(tmp_path / "E0", seed=31, **common)
    for name, strength, seed in (("E1", 0.05, 32), ("E2", 0.1, 33)):
        drift = 2.0 * diffusion * strength / (transport.kB * temperature)
        write_synthetic_condition(tmp_path / name, field_V_per_A=(strength, 0, 0), drift_A_per_fs={"Li": drift},
                                  seed=seed, **common)
    rows, _ = _linear_response_rows(tmp_path, settings, ["E0", "E1", "E2"])
    low, high = sorted(rows, key=lambda r: float(r["field_V_per_A"]))
    assert low["linear_response"] == "reference (lowest field of the sweep)"
    assert high["verdict_vs_lowest_field"].startswith("linear") and high["linear_response"] == "linear"
    for row in (low, high):
        assert row["verdict_vs_nernst_einstein"] == "nonlinear"
        haven, haven_sem = float(row["implied_haven_ratio"]), float(row["implied_haven_ratio_sem"])
        assert 0 < haven_sem < 0.05 and abs(haven - 0.5) < 3 * haven_sem, (haven, haven_sem)


def test_transverse_percentiles_stay_accurate_when_samples_are_thinned():
    from bornfield.analysis.forces import TransverseAccumulator

    rng = np.random.default_rng(2)
    accumulator = TransverseAccumulator(0.1, 5.0, 3.0, 100, 50, max_stored_samples=4000)
    field = np.tile([0.0, 0.0, 0.2], (20, 1))
    all_perp = []
    for chunk in range(30):
        forces = rng.normal(size=(20, 50, 3)) * [0.05, 0.05, 0.2]
        accumulator.add(np.arange(20) + 20.0 * chunk, field, forces)
        all_perp.append(np.linalg.norm(forces[..., :2], axis=-1).ravel())
    result = accumulator.result(50)
    exact = np.concatenate(all_perp)
    assert result["n_samples"] == exact.size and result["n_samples_for_percentiles"] <= 4000
    assert result["mean_abs_perp_eV_per_A"] == pytest.approx(exact.mean(), rel=1e-9)  # means are exact
    assert result["median_abs_perp_eV_per_A"] == pytest.approx(np.median(exact), rel=0.05)
    assert result["p90_abs_perp_eV_per_A"] == pytest.approx(np.percentile(exact, 90), rel=0.05)


def _linear_response_rows(tmp_path, settings, conditions):
    from bornfield.analysis.sweep import load_records

    paths = [write_json(tmp_path / f"{name}.json", analyze_condition(tmp_path / name, settings)) for name in conditions]
    import csv

    outputs = write_sweep(load_records(paths), settings, tmp_path / "out")
    return list(csv.DictReader(open(outputs["linear_response"]))), [json.loads(p.read_text()) for p in paths]


def test_li_that_obeys_nernst_einstein_gives_mobility_ratio_one_and_linear_verdict(tmp_path, settings):
    # Li drifts relative to the framework at v = Z e D E / (k_B T) exactly, Z_par = 1; the centre
    # of mass is fixed, so the framework recoils and Li moves at (1 - f) v relative to it
    diffusion, temperature, strength = 1.0e-3, 600.0, 0.1
    drift = diffusion * strength / (transport.kB * temperature)
    common = dict(n_replicas=8, n_frames=400, frame_interval_fs=10.0, temperature_K=temperature, n_formula_units=32,
                  diffusion_A2_per_fs={"Li": diffusion}, phase="amorphous",
                  born_charges={"Li": np.eye(3), "P": 5.0 * np.eye(3), "O": -2.0 * np.eye(3)})  # ASR: 3 + 5 - 8 = 0
    write_synthetic_condition(tmp_path / "E0", seed=21, **common)
    write_synthetic_condition(tmp_path / "E1", field_V_per_A=(strength, 0, 0), drift_A_per_fs={"Li": drift}, seed=22, **common)
    (row,), (zero, field) = _linear_response_rows(tmp_path, settings, ["E0", "E1"])
    assert float(row["mean_par_charge_e"]) == pytest.approx(1.0, rel=1e-6)
    ratio, sem = float(row["mu_over_ne"]), float(row["mu_over_ne_sem"])
    assert 0 < sem < 0.05
    assert abs(ratio - 1.0) < 2.5 * sem, (ratio, sem)
    assert row["verdict_vs_nernst_einstein"].startswith("linear")
    assert row["linear_response"] == "linear (Nernst–Einstein with H_R = 1)"  # one field: no sweep to test
    assert abs(float(row["implied_haven_ratio"]) - 1.0) < 2.5 * float(row["implied_haven_ratio_sem"])
    # the same data measured relative to the centre of mass would fail: μ_com/μ_NE = 1 - f
    f = field["host_frame"]["mobile_mass_fraction"]
    mu_com = field["species"]["Li"]["drift_velocity_A_per_fs"]["parallel"]["value"] / strength
    ratio_com = mu_com / float(row["ne_mobility_A2_per_V_fs"])
    assert abs(ratio_com - (1 - f)) < 2.5 * sem and abs(ratio_com - 1.0) > 3 * sem


def test_projected_diffusion_error_is_the_spread_of_per_replica_projections(tmp_path, settings):
    # anisotropic Li diffusion mostly along [1,1,1]: the tensor components of a replica move together
    axis = np.ones(3) / math.sqrt(3.0)
    tensor = 2.0e-4 * np.eye(3) + 2.0e-3 * np.outer(axis, axis)
    common = dict(n_replicas=6, n_frames=200, frame_interval_fs=10.0, n_formula_units=8, phase="amorphous",
                  diffusion_A2_per_fs={"Li": tensor})
    write_synthetic_condition(tmp_path / "E0", seed=31, **common)
    write_synthetic_condition(tmp_path / "E1", field_V_per_A=0.1 * axis, drift_A_per_fs={"Li": 1e-3}, seed=32, **common)
    (row,), (zero, _) = _linear_response_rows(tmp_path, settings, ["E0", "E1"])
    from bornfield.analysis.condition import analyze_replicas, replicas_from_files

    # each replica analysed on its own, then projected on the field axis
    projections = []
    for replica in range(6):
        alone = analyze_replicas(replicas_from_files([tmp_path / f"E0/replica_{replica}/traj.h5"]), settings)
        projections.append(axis @ np.asarray(alone["species"]["Li"]["diffusion"]["tensor"]["value"]) @ axis)
    assert float(row["D_zero_field_along_E_A2_per_fs"]) == pytest.approx(np.mean(projections), rel=1e-5)
    assert float(row["D_zero_field_along_E_sem_A2_per_fs"]) == pytest.approx(np.std(projections, ddof=1) / math.sqrt(6), rel=1e-5)
    # component errors added in quadrature as if independent would understate it about threefold
    component_sem = np.asarray(zero["species"]["Li"]["diffusion"]["tensor"]["sem"])
    quadrature = math.sqrt(((component_sem * np.outer(axis, axis)) ** 2).sum())
    assert quadrature < 0.6 * float(row["D_zero_field_along_E_sem_A2_per_fs"])


def test_diffusion_of_a_species_with_few_atoms_is_unbiased():
    # 6 Li per cell, many replicas: the per-origin species mean with N/(N-1) is unbiased, whereas
    # subtracting the time-averaged drift and then applying N/(N-1) gives +4.7 ± 1.1 % on these data
    from bornfield.analysis.condition import diffusion_tensors
    from bornfield.analysis.msd import species_moments
    from bornfield.analysis.synthetic import biased_random_walk

    numbers, masses, _, start = li3po4_like_cell(2, seed=0)
    li, host = np.flatnonzero(numbers == 3), np.flatnonzero(numbers != 3)
    assert li.size == 6
    diffusion, n_frames, interval = 1.0e-3, 300, 10.0
    max_lag = 150
    first, last, _ = fit_window_indices({"fit_window_fs": None, "fit_window_fraction": [0.1, 0.4]},
                                        (n_frames - 1) * interval, interval, max_lag)
    rng = np.random.default_rng(41)
    moments = [
        species_moments(
            biased_random_walk(numbers=numbers, masses=masses, start=start, n_frames=n_frames, frame_interval_fs=interval,
                               diffusion_A2_per_fs={3: diffusion}, drift_A_per_fs={}, vibration_A=0.05, rng=rng),
            masses, li, host, max_lag,
        )
        for _ in range(600)
    ]
    _, tensors, _ = diffusion_tensors(moments, li.size, np.arange(max_lag + 1) * interval, first, last)
    mean, sem = transport.mean_and_sem(np.trace(tensors, axis1=1, axis2=2) / 3.0)
    assert sem < 0.015 * diffusion
    assert abs(mean - diffusion) < 2.5 * sem, (mean, sem)
    # and D∥ of a cell with a drift: the drift is removed exactly, per origin
    drifting = species_moments(
        biased_random_walk(numbers=numbers, masses=masses, start=start, n_frames=n_frames, frame_interval_fs=interval,
                           diffusion_A2_per_fs={3: 0.0}, drift_A_per_fs={3: np.array([0.01, 0.0, 0.0])}, vibration_A=0.05, rng=rng),
        masses, li, host, max_lag,
    )
    _, still, _ = diffusion_tensors([drifting], li.size, np.arange(max_lag + 1) * interval, first, last)
    np.testing.assert_allclose(still, 0.0, atol=1e-12)


def test_claims_state_the_seed_study_claims_with_verdicts(tmp_path, settings):
    from bornfield.analysis.claims import signed_verdict
    from bornfield.analysis.sweep import load_records

    # Student-t at 2 sigma with 3 degrees of freedom: 3.3 standard errors
    assert signed_verdict(3.0, 1.0, 4, 2.0, "up", "down") == "not resolved"
    assert signed_verdict(3.5, 1.0, 4, 2.0, "up", "down") == "up"
    assert signed_verdict(-3.5, 1.0, 4, 2.0, "up", "down") == "down"
    assert signed_verdict(10.0, float("nan"), 1, 2.0, "up", "down").startswith("undetermined")

    common = dict(n_replicas=3, n_frames=150, frame_interval_fs=10.0, n_formula_units=8,
                  born_charges={"Li": [[1.0, 0.2, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], "P": np.eye(3), "O": -np.eye(3)})
    paths = []
    # amorphous: Li drifts along +E (expected); defect-free beta: Li drifts too (against the expectation);
    # beta with a vacancy: no expectation
    for name, phase, field, drift in (("amorphous_E0", "amorphous", (0, 0, 0), 0.0),
                                      ("amorphous_E1", "amorphous", (0.1, 0, 0), 1e-3),
                                      ("beta_E1", "beta", (0.1, 0, 0), 1e-3),
                                      ("beta_vacancy_E1", "beta_vacancy", (0.1, 0, 0), 0.0)):
        write_synthetic_condition(tmp_path / name, field_V_per_A=field, drift_A_per_fs={"Li": drift}, phase=phase, **common)
        paths.append(write_json(tmp_path / f"{name}.json", analyze_condition(tmp_path / name, settings)))
    outputs = write_sweep(load_records(paths), settings, tmp_path / "out")
    claims = json.loads(outputs["claims_json"].read_text())
    migration = {r["condition"]: r for r in claims["migration"]}
    assert migration["amorphous_E1"]["drift"] == "along +E" and migration["amorphous_E1"]["agrees_with_seed_study"]
    assert migration["amorphous_E1"]["drift_velocity_A_per_ps"] == pytest.approx(1.0, rel=0.3)
    assert migration["beta_E1"]["expected"] == "no drift resolved" and migration["beta_E1"]["agrees_with_seed_study"] is False
    assert migration["beta_vacancy_E1"]["agrees_with_seed_study"] is None
    assert migration["beta_vacancy_E1"]["drift"] == "no drift resolved"
    msd = {r["condition"]: r for r in claims["msd_along_field"]}
    assert set(msd) == {"amorphous_E1", "beta_E1", "beta_vacancy_E1"}
    assert msd["amorphous_E1"]["excess_over_zero_field_A2"] > 0
    # the paired per-replica difference has the difference of the means as its mean
    row = msd["amorphous_E1"]
    assert row["parallel_minus_perpendicular_A2"] == pytest.approx(row["msd_parallel_A2"] - row["msd_perpendicular_A2"], rel=1e-4)
    assert 0 < row["parallel_minus_perpendicular_sem_A2"] != pytest.approx(
        math.hypot(row["msd_parallel_sem_A2"], row["msd_perpendicular_sem_A2"]), rel=1e-6)
    assert msd["beta_E1"]["field_effect"].startswith("undetermined")  # no zero-field beta run
    assert {r["species"] for r in claims["transverse_forces"]} == {"Li", "P", "O"}
    assert [r["reference_eV"] for r in claims["arrhenius"] if r["phase"] == "amorphous"] == [0.55, 0.58]
    # every Markdown table row has as many cells as its header
    text = outputs["claims_md"].read_text()
    tables = [block for block in text.split("\n\n") if block.startswith("|")]
    assert len(tables) == 6
    for block in tables:
        lines = block.strip().splitlines()
        assert len({line.count("|") for line in lines}) == 1, block
    assert "amorphous_E1 | 3 |" in text


def test_nernst_einstein_comparison_uses_the_zero_field_runs_measured_temperature_and_refuses_a_heated_field_run(
        tmp_path, settings):
    """k_B T of μ_NE is the zero-field run's measured temperature (where D was measured); a field run
    the field heated beyond max_temperature_mismatch is not compared (no implied Haven ratio)."""
    from bornfield.analysis.sweep import load_records

    diffusion, temperature, strength = 1.0e-3, 600.0, 0.1
    common = dict(n_replicas=4, n_frames=200, frame_interval_fs=10.0, temperature_K=temperature, n_formula_units=16,
                  diffusion_A2_per_fs={"Li": diffusion}, phase="amorphous",
                  born_charges={"Li": np.eye(3), "P": 5.0 * np.eye(3), "O": -2.0 * np.eye(3)})
    write_synthetic_condition(tmp_path / "E0", seed=41, **common)
    write_synthetic_condition(tmp_path / "E1", field_V_per_A=(strength, 0, 0),
                              drift_A_per_fs={"Li": diffusion * strength / (transport.kB * temperature)}, seed=42, **common)
    paths = [write_json(tmp_path / f"{n}.json", analyze_condition(tmp_path / n, settings)) for n in ("E0", "E1")]

    def row_with(t_zero: float, t_field: float) -> dict:
        import csv

        for path, value in zip(paths, (t_zero, t_field)):
            record = json.loads(path.read_text())
            record["system"]["temperature_measured_K"] = {"mean": value, "replica_means": [value] * 4}
            path.write_text(json.dumps(record))
        outputs = write_sweep(load_records(paths), settings, tmp_path / f"out_{t_zero:g}_{t_field:g}")
        (row,) = list(csv.DictReader(open(outputs["linear_response"])))
        return row

    nominal, warm = row_with(600.0, 610.0), row_with(660.0, 665.0)
    assert float(warm["zero_field_temperature_measured_K"]) == 660.0
    assert float(warm["ne_mobility_A2_per_V_fs"]) == pytest.approx(float(nominal["ne_mobility_A2_per_V_fs"]) * 600 / 660, rel=1e-4)
    assert not warm["verdict_vs_nernst_einstein"].startswith("undetermined")
    heated = row_with(600.0, 700.0)  # 17 % hotter than its zero-field run
    assert heated["verdict_vs_nernst_einstein"].startswith("undetermined (field run at 700 K, its zero-field run at 600 K")
    assert heated["implied_haven_ratio"] in ("", "nan")
    assert float(heated["mu_over_ne"]) == pytest.approx(float(nominal["mu_over_ne"]), rel=1e-4)  # the ratio is still shown
