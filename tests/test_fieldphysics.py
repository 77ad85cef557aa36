"""The field-physics core (bornfield.fieldphysics) and that every path goes through it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.neighborlist import neighbor_list
from md_testmodels import EnvironmentBorn, MorsePotential, fcc_cell

from bornfield.calculators import FieldCalculator
from bornfield.fieldphysics import (
    SafetyLimits,
    UnsafeState,
    asr_correct,
    asr_correct_batched,
    check_finite,
    committee_force_uncertainty,
    field_forces,
    field_forces_batched,
    held_rows_scale,
    min_distance,
)

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src" / "bornfield"
DRIVER = HERE / "fieldphysics_mpi_driver.py"
MPIEXEC = Path(sys.executable).parent / "mpiexec"


def drive(mode: str, ranks: int) -> dict:
    command = [sys.executable, str(DRIVER), mode]
    if ranks > 1:
        command = [str(MPIEXEC), "-n", str(ranks), *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    for line in result.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(f"{command} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")


# --- field force and ASR ------------------------------------------------------------

def test_field_force_is_born_transpose_times_field_float64():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(9, 3, 3))
    e = rng.normal(size=3)
    expected = np.stack([z[k].T @ e for k in range(9)])  # Z[κ, α field, β force]
    np.testing.assert_allclose(field_forces(z, e), expected, rtol=0, atol=1e-14)
    # a time series of tensors and fields (analysis), and one field for all frames
    zt, et = rng.normal(size=(4, 9, 3, 3)), rng.normal(size=(4, 3))
    series = field_forces(zt, et)
    for t in range(4):
        np.testing.assert_allclose(series[t], field_forces(zt[t], et[t]), rtol=0, atol=1e-14)
    np.testing.assert_allclose(field_forces(zt, e)[2], field_forces(zt[2], e), rtol=0, atol=1e-14)


def test_asr_correction_is_exact_and_minimal():
    rng = np.random.default_rng(2)
    raw = rng.normal(size=(50, 3, 3)) + 0.3
    z = asr_correct(raw)
    assert np.abs(z.sum(axis=0)).max() < 1e-12
    assert np.abs(asr_correct(z) - z).max() < 1e-15  # idempotent
    np.testing.assert_allclose(raw - z, np.broadcast_to(raw.mean(axis=0), raw.shape), atol=1e-15)  # one shift
    assert np.abs(field_forces(z, [0.1, -0.3, 0.2]).sum(axis=0)).max() < 1e-12  # no net field force
    # ghosts are corrected with the owned atoms' mean
    mask = np.arange(50) < 30
    masked = asr_correct(raw, owned_mask=mask)
    assert np.abs(masked[mask].sum(axis=0)).max() < 1e-12
    np.testing.assert_allclose(masked[~mask], raw[~mask] - raw[mask].mean(axis=0), atol=1e-15)


def test_batched_torch_asr_equals_numpy_per_structure():
    rng = np.random.default_rng(3)
    sizes = [5, 8, 3]
    raw = rng.normal(size=(sum(sizes), 3, 3))
    batch = torch.tensor(np.repeat(np.arange(3), sizes))
    corrected = asr_correct_batched(torch.tensor(raw), batch, 3).numpy()
    start = 0
    for n in sizes:
        np.testing.assert_allclose(corrected[start:start + n], asr_correct(raw[start:start + n]), atol=1e-14)
        start += n


@pytest.mark.mpi
@pytest.mark.skipif(not MPIEXEC.exists(), reason="needs the venv's MPICH mpiexec")
def test_asr_distance_and_uncertainty_split_over_two_ranks_equal_serial():
    result = drive("core", 2)
    assert result["ranks"] == 2
    assert result["asr_sum"] < 1e-12, result
    assert result["asr_vs_serial"] < 1e-14 and result["masked_vs_serial"] < 1e-14, result
    assert result["min_distance_vs_serial"] == 0.0 and result["uncertainty_vs_serial"] == 0.0, result


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_tag_halo_moves_only_shared_rows_and_equals_an_allreduce_by_tag(ranks):
    """The point-to-point exchange of the LAMMPS backend (bornfield.md.halo): forward rows to the
    atoms a rank reads and reverse sums onto their owners equal an Allreduce over all N tags; a rank
    receives exactly the remote tags it reads; the pattern is rebuilt on every rank when one rank's
    layout changes, and kept otherwise."""
    result = drive("halo", ranks)
    assert result["ranks"] == ranks
    assert result["gather"] == 0.0 and result["scatter_add"] < 1e-14, result
    assert result["kept"] and result["rebuilt"] and result["builds"] == [2] * ranks, result
    assert result["received_equals_remote_read"], result


# --- safety checks ------------------------------------------------------------------------

def test_min_distance_matches_ase_neighbour_list():
    atoms = fcc_cell(2, rattle=0.3, seed=5)
    atoms.set_cell(atoms.cell.array + [[0.0, 0.0, 0.0], [0.9, 0.0, 0.0], [0.4, 0.3, 0.0]], scale_atoms=False)
    expected = neighbor_list("d", atoms, 3.0).min()
    found = min_distance(atoms.get_positions(wrap=True), 3.0, cell=atoms.cell.array, pbc=atoms.pbc)
    assert found == pytest.approx(expected, abs=1e-12)
    assert min_distance(atoms.positions, 0.1, cell=atoms.cell.array, pbc=atoms.pbc) == np.inf
    # open boundaries: pairs between two ghosts do not count
    positions = np.array([[0.0, 0, 0], [5.0, 0, 0], [5.5, 0, 0]])
    assert min_distance(positions, 2.0, n_owned=1) == np.inf
    assert min_distance(positions, 2.0, n_owned=2) == pytest.approx(0.5)


def test_committee_uncertainty_is_the_largest_per_atom_std():
    rng = np.random.default_rng(4)
    members = rng.normal(size=(3, 10, 3))
    expected = np.linalg.norm(np.std(members, axis=0), axis=1).max()
    assert committee_force_uncertainty(members) == pytest.approx(expected, rel=1e-14)


def test_safety_limits_name_the_setting_and_none_switches_off():
    limits = SafetyLimits(asr_tolerance_eV_per_A=1e-6, min_distance_A=0.7, max_force_uncertainty_eV_per_A=1.0,
                          max_force_eV_per_A=20.0, key_prefix="safety.")
    limits.check_asr(np.array([1e-7, 0.0, -1e-7]))
    with pytest.raises(UnsafeState, match=r"acoustic sum rule violated at step 3: .* safety.asr_tolerance_eV_per_A"):
        limits.check_asr(np.array([0.0, 2e-6, 0.0]), " at step 3")
    with pytest.raises(UnsafeState, match=r"too close at step 4: minimum distance 0.500 Å < safety.min_distance_A"):
        limits.check_min_distance(0.5, " at step 4")
    with pytest.raises(UnsafeState, match="committee force uncertainty 1.500 eV/Å at step 5 exceeds"):
        limits.check_force_uncertainty(1.5, " at step 5")
    limits.check_force_uncertainty(None)  # no committee
    with pytest.raises(UnsafeState, match="above safety.max_force_eV_per_A = 20"):
        limits.check_forces(np.array([[0.0, 25.0, 0.0]]))
    with pytest.raises(UnsafeState, match="non-finite forces at step 6"):
        limits.check_forces(np.array([[0.0, np.nan, 0.0]]), " at step 6")
    with pytest.raises(UnsafeState, match="non-finite energy"):
        check_finite("energy", np.inf)
    off = SafetyLimits()
    off.check_asr(np.ones(3))
    off.check_min_distance(0.0)
    off.check_force_uncertainty(1e9)
    off.check_forces(np.full((2, 3), 1e9))


def test_held_rows_scale_and_batched_field_forces():
    """Held field forces serve a later field only along the held one (scaled); the torch field force of
    several structures in their own fields is the numpy one of each."""
    held = np.array([0.1, -0.2, 0.05])
    assert held_rows_scale(held, held) == 1.0
    assert held_rows_scale(0.37 * held, held) == pytest.approx(0.37, rel=1e-14)
    assert held_rows_scale(np.zeros(3), held) == 0.0 and held_rows_scale(np.zeros(3), np.zeros(3)) == 0.0
    assert held_rows_scale(held + [0.0, 0.0, 1e-6], held) is None  # turned
    assert held_rows_scale(held, np.zeros(3)) is None  # switched on
    rng = np.random.default_rng(4)
    z, fields = rng.normal(size=(7, 3, 3)), rng.normal(size=(2, 3))
    batch = np.array([0, 0, 0, 1, 1, 1, 1])
    rows = field_forces_batched(torch.from_numpy(z), torch.from_numpy(fields), torch.from_numpy(batch)).numpy()
    for b in (0, 1):
        np.testing.assert_allclose(rows[batch == b], field_forces(z[batch == b], fields[b]), rtol=0, atol=1e-14)


def test_born_field_rows_check_raises_only_where_the_full_check_would():
    """The check on the rows Zᵀ·E: exact for a field along an axis, never stricter than the check on Z."""
    limits = SafetyLimits(max_born_charge_e=10.0, key_prefix="safety.")
    z = np.random.default_rng(5).uniform(-3.0, 3.0, size=(20, 3, 3))
    z[4, 0, 1] = 12.0  # seen by a field along x only
    with pytest.raises(UnsafeState, match=r"Born charge along the field 12.0 e on atom 4 at step 7 above safety"):
        limits.check_born_field_rows(field_forces(z, [0.2, 0.0, 0.0]), [0.2, 0.0, 0.0], " at step 7")
    limits.check_born_field_rows(field_forces(z, [0.0, 0.0, 0.2]), [0.0, 0.0, 0.2])
    limits.check_born_field_rows(np.zeros((20, 3)), np.zeros(3))
    rng = np.random.default_rng(6)
    for _ in range(200):
        z = rng.uniform(-10.0, 10.0, size=(5, 3, 3))
        field = rng.normal(size=3)
        limits.check_born_field_rows(field_forces(z, field), field)  # |Z_ab| <= 10 everywhere


# --- every path goes through the core --------------------------------------------------

def test_no_field_force_or_asr_written_outside_the_core():
    """The field force and the ASR correction are spelled out only in fieldphysics.py."""
    patterns = [r"einsum\(\s*[\"'][.t]*kab,[.t]*a->", r"\.mean\(axis=0[^)]*\)\s*$", r"Z\.T\s*@|z\.T\s*@",
                r"class \w*Calculator\(Calculator\)"]
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "fieldphysics.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if "``" in code:  # a formula in a docstring
                continue
            if any(re.search(p, code) for p in patterns[:1] + patterns[2:]) or (
                    "born" in code.lower() and re.search(patterns[1], code)):
                offenders.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    offenders = [o for o in offenders if not o.startswith("calculators.py") or "class FieldCalculator" not in o]
    assert not offenders, "\n".join(offenders)


def test_calculator_forces_are_potential_plus_core_field_force():
    """Analytic models in float64: F = F_pot + Zᵀ·E with Z = asr_correct(model Z), per evaluation."""
    atoms = fcc_cell(3, rattle=0.1, seed=1)
    potential, born = MorsePotential(cutoff=4.0), EnvironmentBorn(cutoff=3.5)
    field = np.array([0.1, -0.2, 0.3])
    atoms.calc = FieldCalculator(potential, born, field=field)
    forces = atoms.get_forces(apply_constraint=False)
    positions = atoms.get_positions(wrap=True)
    _, expected_pot, _ = potential.energy_forces_stress(positions, atoms.numbers, atoms.cell.array, atoms.pbc)
    z = asr_correct(born.born_charges(positions, atoms.numbers, atoms.cell.array, atoms.pbc))
    np.testing.assert_allclose(forces, expected_pot + field_forces(z, field), rtol=0, atol=1e-12)
    assert np.abs(atoms.calc.results["field_forces"].sum(axis=0)).max() < 1e-12
    # the committee statistics path gives the same means
    stats = atoms.calc.get_property("born_charges_var", atoms)
    assert stats.shape == (len(atoms), 3, 3) and stats.max() == 0.0
    np.testing.assert_allclose(atoms.calc.results["forces"], forces, rtol=0, atol=1e-12)


def test_calculator_refresh_interval_and_md_field_change():
    atoms = fcc_cell(2, rattle=0.1, seed=2)
    calc = FieldCalculator(MorsePotential(cutoff=4.0), EnvironmentBorn(cutoff=3.5), field=(0.1, 0, 0),
                           born_refresh_interval=3)
    atoms.calc = calc
    atoms.get_forces()
    z0 = calc.cached_born.copy()
    calc.step = 1
    atoms.positions[0] += 0.05
    atoms.get_forces()
    np.testing.assert_array_equal(calc.results["born_charges"], z0)  # reused until step 3
    calc.step = 3
    atoms.positions[0] += 0.05
    atoms.get_forces()
    assert np.abs(calc.results["born_charges"] - z0).max() > 1e-6
    before = calc.results["forces"].copy()
    calc.set_field((0.0, 0.3, 0.0), keep_results=True)  # the next evaluation's field
    np.testing.assert_array_equal(atoms.get_forces(apply_constraint=False), before)
    calc.set_field((0.0, 0.3, 0.0))
    assert np.abs(atoms.get_forces(apply_constraint=False) - before).max() > 1e-3


def test_calculator_stops_on_non_finite_model_output():
    class NaNBorn(EnvironmentBorn):
        def born_charges(self, positions, numbers, cell, pbc):
            return np.full((len(numbers), 3, 3), np.nan)

    atoms = fcc_cell(2)
    atoms.calc = FieldCalculator(MorsePotential(cutoff=4.0), NaNBorn(), field=(0.1, 0, 0))
    with pytest.raises(UnsafeState, match="non-finite energy or forces from the models"):
        atoms.get_forces()


@pytest.mark.skipif(not MPIEXEC.exists(), reason="needs the venv's MPICH mpiexec")
@pytest.mark.parametrize("ranks", [1, pytest.param(2, marks=pytest.mark.mpi)])
def test_lammps_and_ase_backends_give_the_same_forces_for_one_state(ranks):
    """Same triclinic state, field on at step 0: LAMMPS (rotated frame, domains) equals the ASE calculator."""
    result = drive("backends", ranks)
    assert result["ranks"] == ranks
    assert result["field_force_scale"] > 0.05, result
    assert result["field_forces"] < 1e-12 and result["born_charges"] < 1e-12, result
    assert result["forces"] < 1e-10 and result["asr_sum_lammps"] < 1e-12, result


def test_exploration_at_zero_field_is_plain_langevin_md(tmp_path):
    """E = 0: the exploration trajectory equals ASE Langevin on the potential alone (same random stream)."""
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    from bornfield.train.explore import ExplorationSettings, explore

    parent = fcc_cell(2, rattle=0.05, seed=4)
    settings = ExplorationSettings(temperatures_K=[300.0], fields_V_per_A=[0.0], field_axis=0, steps=20,
                                   sample_interval=5, timestep_fs=1.0, friction_per_fs=0.02, max_structures=1,
                                   max_force_eV_per_A=50.0, min_distance_A=0.5)
    calc = FieldCalculator(MorsePotential(cutoff=4.0), EnvironmentBorn(cutoff=3.5))
    snapshots, records = explore([parent], calc, settings, seed=3, progress=False)
    assert records[0]["stopped"] is None and len(snapshots) == 4

    rng = np.random.default_rng(3)
    atoms = parent.copy()
    atoms.calc = FieldCalculator(MorsePotential(cutoff=4.0))
    thermalize_momenta(atoms, temperature_K=300.0, rng=rng)
    Stationary(atoms)
    atoms.set_constraint(FixCom())
    dynamics = Langevin(atoms, timestep=1.0 * units.fs, temperature_K=300.0, friction=0.02 / units.fs, rng=rng,
                        fixcm=False)
    for snapshot in snapshots:
        dynamics.run(5)
        assert np.abs(snapshot.positions - atoms.positions).max() < 1e-9
