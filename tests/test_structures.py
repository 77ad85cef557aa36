"""STRUCTURES stage: crystals, supercells, defects, perturbations, ids, schema, CLI, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.io import read

from bornfield.cli import main
from bornfield.config import validate_section
from bornfield.errors import ConfigError, InputFileError
from bornfield.structures.analysis import analyse_structure
from bornfield.structures.builder import build_crystal_dft_candidates, perturbed_copies, phase_cell
from bornfield.structures.crystals import PHASES, build_crystal, density_g_cm3, spacegroup_of
from bornfield.structures.defects import find_voids, make_li_frenkel, make_li_vacancy, nominal_charge
from bornfield.structures.identity import REQUIRED_INFO_KEYS, derive_seed, structure_id
from bornfield.structures.io import read_structures, write_extxyz_atomic
from bornfield.structures.perturb import random_strain_tensor, rattle, strain
from bornfield.structures.supercells import build_supercell, choose_repetition


@pytest.fixture(scope="module")
def settings():
    return validate_section({}, "structures")


# ----------------------------------------------------------------- crystals
@pytest.mark.parametrize(
    ("phase", "symbol", "number", "n_atoms", "abc", "rho"),
    [
        ("beta", "Pmn2_1", 31, 16, (6.1150, 5.2394, 4.8554), 2.472),
        ("gamma", "Pnma", 62, 32, (10.4612, 6.1113, 4.9208), 2.445),
    ],
)
def test_crystal_spacegroup_atoms_lattice(phase, symbol, number, n_atoms, abc, rho):
    atoms = build_crystal(phase)
    assert spacegroup_of(atoms) == (symbol, number)
    assert len(atoms) == n_atoms
    counts = atoms.symbols.formula.count()
    assert counts["Li"] == 3 * counts["P"] and counts["O"] == 4 * counts["P"]
    np.testing.assert_allclose(atoms.cell.cellpar(), [*abc, 90, 90, 90], atol=1e-8)
    assert density_g_cm3(atoms) == pytest.approx(rho, abs=2e-3)
    # published geometry: PO4 tetrahedra with P–O 1.53–1.55 Å, four-fold Li (LI3PO4_FACTS.md)
    metrics = analyse_structure(atoms)
    assert metrics["P-O_coordination"] == 4.0
    assert metrics["Li-O_coordination"] == 4.0
    assert 1.53 < metrics["P-O_min_bond_A"] <= metrics["P-O_max_bond_A"] < 1.55
    assert metrics["P_fourfold_fraction"] == 1.0 and metrics["P2O7_count"] == 0
    # first RDF peaks are the nearest-neighbour shells: P–O bond, Li–O bond, O–O edge of the PO4
    assert metrics["P-O_first_peak_A"] == pytest.approx(metrics["P-O_mean_bond_A"], abs=0.01)
    assert metrics["Li-O_first_peak_A"] == pytest.approx(metrics["Li-O_mean_bond_A"], abs=0.05)
    assert metrics["O-O_first_peak_A"] == pytest.approx(np.sqrt(8 / 3) * metrics["P-O_mean_bond_A"], abs=0.03)


def test_unknown_phase_is_a_config_error():
    with pytest.raises(ConfigError, match="delta"):
        build_crystal("delta")


# --------------------------------------------------------------- supercells
def test_supercell_reaches_target_and_prefers_cubic():
    beta = build_crystal("beta")
    reps = choose_repetition(beta, 128)
    assert reps == (2, 2, 2)
    reps = choose_repetition(beta, 64)
    assert len(beta) * np.prod(reps) >= 64
    assert reps == (1, 2, 2)  # 6.1 x 10.5 x 9.7 Å beats 12.2 x 10.5 x 4.9 Å
    gamma = build_crystal("gamma")
    for target in (33, 100, 500):
        reps = choose_repetition(gamma, target)
        assert len(gamma) * np.prod(reps) >= target
    cell = build_supercell(beta, (2, 1, 3))
    assert len(cell) == 96 and spacegroup_of(cell) == ("Pmn2_1", 31)
    with pytest.raises(ConfigError):
        choose_repetition(beta, 0)
    with pytest.raises(ConfigError):
        build_supercell(beta, (1, 0, 1))


# ------------------------------------------------------------------ defects
def _host():
    return build_supercell(build_crystal("beta"), (1, 2, 2))


def test_vacancy_is_charged_and_consistent():
    host = _host()
    defect, detail = make_li_vacancy(host, seed=5)
    assert len(defect) == len(host) - 1
    symbols = defect.get_chemical_symbols()
    assert symbols.count("Li") == 23 and symbols.count("P") == 8 and symbols.count("O") == 32
    # V_Li': nominal oxidation states sum to the cell charge handed to pw.x (tot_charge)
    assert defect.info["charge"] == -1 == nominal_charge(defect)
    assert nominal_charge(host) == 0
    np.testing.assert_allclose(defect.info["vacancy_site"], host.positions[detail["removed_index"]], atol=1e-5)


def test_frenkel_keeps_composition_and_neutrality():
    host = _host()
    defect, detail = make_li_frenkel(host, seed=3, min_separation=3.0)
    assert defect.get_chemical_formula() == host.get_chemical_formula()
    assert defect.info["charge"] == 0 == nominal_charge(defect)
    moved = detail["moved_index"]
    assert detail["separation_A"] >= 3.0
    distances = defect.get_distances(moved, [i for i in range(len(defect)) if i != moved], mic=True)
    # the interstitial sits in an open void, not on top of another ion
    assert distances.min() == pytest.approx(detail["void_radius_A"], abs=1e-3)
    assert distances.min() > 1.7
    with pytest.raises(ConfigError, match="void"):
        make_li_frenkel(build_crystal("beta"), seed=3, min_separation=19.0)


def test_void_search_finds_largest_empty_sphere():
    beta = build_crystal("beta")
    voids = find_voids(beta, n_voids=5)
    radii = [r for _, r in voids]
    assert radii == sorted(radii, reverse=True)
    # every returned centre is exactly its radius away from the nearest atom
    for position, radius in voids:
        probe = beta.copy()
        probe.append("H")
        probe.positions[-1] = position
        d = probe.get_distances(len(probe) - 1, list(range(len(beta))), mic=True)
        assert d.min() == pytest.approx(radius, abs=1e-6)
    assert 1.7 < radii[0] < 2.5


@pytest.mark.parametrize("name", ["beta_vacancy", "gamma_vacancy", "beta_frenkel", "gamma_frenkel"])
def test_defect_cells_charge_neutral_with_info_charge(name):
    cell = phase_cell(name, 32, 0.5, master_seed=11, purpose="dft", frenkel_min_separation=3.0)
    assert nominal_charge(cell) == cell.info["charge"]
    assert cell.info["config_type"] == name
    assert all(key in cell.info for key in REQUIRED_INFO_KEYS)


# ------------------------------------------------------------ perturbations
def test_rattle_and_strain_reproducible_from_seed():
    beta = build_crystal("beta")
    a, b, c = rattle(beta, 0.05, 7), rattle(beta, 0.05, 7), rattle(beta, 0.05, 8)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert not np.allclose(a.positions, c.positions)
    displacement = a.positions - beta.positions
    assert displacement.std() == pytest.approx(0.05, rel=0.3)
    s1, e1 = strain(beta, 0.02, 9)
    s2, e2 = strain(beta, 0.02, 9)
    np.testing.assert_array_equal(s1.cell[:], s2.cell[:])
    np.testing.assert_allclose(e1, e1.T)
    assert np.abs(e1).max() <= 0.02
    np.testing.assert_allclose(s1.cell[:], beta.cell[:] @ (np.eye(3) + e1))
    np.testing.assert_allclose(s1.get_scaled_positions(), beta.get_scaled_positions(), atol=1e-12)
    assert not np.allclose(random_strain_tensor(0.02, 1), random_strain_tensor(0.02, 2))


def test_perturbed_copies_keep_type_record_seed(settings):
    parent = phase_cell("beta", 16, 0.5, 1, "dft", 3.0)
    copies = perturbed_copies(parent, settings["perturbations"], master_seed=1)
    again = perturbed_copies(parent, settings["perturbations"], master_seed=1)
    assert len(copies) == settings["perturbations"]["rattle_copies"] + settings["perturbations"]["strain_copies"]
    for copy, twin in zip(copies, again):
        assert copy.info["config_type"] == "beta"
        assert copy.info["parent_id"] == parent.info["structure_id"]
        assert "perturbation" in copy.info
        assert copy.info["structure_id"] == twin.info["structure_id"] == structure_id(copy)
        assert copy.info["seed"] == twin.info["seed"] >= 0


# -------------------------------------------------------------- identities
def test_structure_id_stable_through_extxyz(tmp_path):
    beta = build_crystal("beta")
    sid = structure_id(beta)
    path = write_extxyz_atomic(tmp_path / "b.extxyz", [beta])
    assert structure_id(read(path)) == sid
    moved = beta.copy()
    moved.positions[0, 0] += 1e-3
    assert structure_id(moved) != sid
    assert derive_seed(1, "a", 0) == derive_seed(1, "a", 0) != derive_seed(1, "a", 1)
    assert derive_seed(1, "a") != derive_seed(2, "a")


def test_dft_candidates_unique_and_annotated(settings):
    candidates = build_crystal_dft_candidates(settings, master_seed=20231)
    ids = [a.info["structure_id"] for a in candidates]
    assert len(ids) == len(set(ids))
    types = {a.info["config_type"] for a in candidates}
    assert types == {"beta", "gamma", "beta_vacancy", "beta_frenkel"}
    for atoms in candidates:
        assert all(key in atoms.info for key in REQUIRED_INFO_KEYS)
        assert nominal_charge(atoms) == atoms.info["charge"]


# ------------------------------------------------------------------ schema
@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"phases": ["beta", "delta"]}, "phases"),
        ({"md_supercell": {"target_atoms": 0}}, "md_supercell.target_atoms"),
        ({"amorphous": {"quench_rate_K_per_ps": -10}}, "amorphous.quench_rate_K_per_ps"),
        ({"amorphous": {"melt_time_ps": "long"}}, "amorphous.melt_time_ps"),
        ({"amorphous": {"dft_cells": {"n_atoms": 30}}}, "amorphous.dft_cells.n_atoms"),
        ({"amorphous": {"engine": "mace"}}, "amorphous.engine"),
        ({"perturbations": {"rattle_amplitude_A": -0.1}}, "perturbations.rattle_amplitude_A"),
        ({"frenkel_min_separation_A": 0}, "frenkel_min_separation_A"),
        ({"supercell_size": 3}, "supercell_size"),
        ({"amorphous": {"lammps": {"ranks": 0}}}, "amorphous.lammps.ranks"),
    ],
)
def test_schema_rejects_bad_input_naming_the_key(section, key):
    with pytest.raises(ConfigError) as error:
        validate_section(section, "structures")
    assert key.split(".")[-1] in str(error.value)
    assert key.split(".")[0] in str(error.value)


def test_schema_defaults_are_complete(settings):
    assert settings["amorphous"]["lammps"]["ranks"] == 1
    assert settings["amorphous"]["melt_temperature_K"] == 3000
    assert settings["report"]["p_o_cutoff_A"] == 2.0


# ------------------------------------------------------------- CLI + files
def test_cli_crystals_writes_md_cells_and_candidates(tmp_path):
    section = {"phases": ["beta", "beta_vacancy", "gamma_frenkel"], "md_supercell": {"target_atoms": 64},
               "perturbations": {"rattle_copies": 1, "strain_copies": 0}}
    code = main(["structures", "crystals", "--settings", json.dumps({"structures": section}), "--seed", "3",
                 "--output-dir", str(tmp_path)])
    assert code == 0
    for phase in section["phases"]:
        images = read_structures(tmp_path / "md_cells" / f"{phase}.extxyz")
        assert len(images) == 1 and images[0].info["config_type"] == phase
        assert len(images[0]) >= 63
    assert read_structures(tmp_path / "md_cells" / "beta_vacancy.extxyz")[0].info["charge"] == -1
    candidates = read_structures(tmp_path / "intermediate" / "crystals_dft.extxyz")
    assert len({a.info["structure_id"] for a in candidates}) == len(candidates) == 8
    assert not list(tmp_path.rglob("*.tmp")), "no temporary files left behind"


def test_cli_rejects_bad_settings_with_exit_code_2(tmp_path, capsys):
    code = main(["structures", "crystals", "--settings", '{"structures": {"phases": ["beta"], "bogus": 1}}', "--seed", "1",
                 "--output-dir", str(tmp_path)])
    assert code == 2
    assert "bogus" in capsys.readouterr().err
    assert not (tmp_path / "md_cells").exists()


@pytest.mark.parametrize(
    "content",
    ["", "16\nnot an extxyz comment line\nLi 0 0\n", "3\nLattice=\"1 0 0 0 1 0 0 0 1\" Properties=species:S:1:pos:R:3\nLi 0 0 0\n"],
)
def test_malformed_structure_file_names_the_file(tmp_path, content, capsys):
    path = tmp_path / "broken.extxyz"
    path.write_text(content)
    with pytest.raises(InputFileError, match="broken.extxyz"):
        read_structures(path)
    code = main(["structures", "report", "--settings", "{}", "--structures", str(path), "--set-name", "x",
                 "--report-json", str(tmp_path / "x.json"), "--report-png", str(tmp_path / "x.png")])
    assert code == 2 and "broken.extxyz" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_structure_file_without_stage_info_is_rejected(tmp_path):
    path = tmp_path / "plain.extxyz"
    from ase.io import write

    write(path, build_crystal("beta"), format="extxyz")
    # build_crystal has config_type and source but no structure_id / seed
    with pytest.raises(InputFileError, match="plain.extxyz.*structure_id|plain.extxyz.*seed"):
        read_structures(path)
