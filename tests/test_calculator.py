"""FieldCalculator (ASE) and `bornfield predict`: field forces, committee statistics, units."""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.fd import calculate_numerical_stress
from ase.io import read, write

from bornfield.calculators import FieldCalculator
from bornfield.cli import main
from bornfield.errors import ConfigError
from bornfield.models import create_random_model_file
from bornfield.structures.crystals import build_crystal

SPECIES = ["Li", "P", "O"]
SMALL = {"channels": 4, "hidden": 16, "radial_hidden": 16}
MEAN_CHARGES = {"Li": 1.0, "P": 3.2, "O": -1.55}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    potentials = [create_random_model_file("potential", SPECIES, 4.5, root / f"potential_{i}.pt", seed=i, **SMALL) for i in range(2)]
    borns = [
        create_random_model_file("born", SPECIES, 4.5, root / f"born_{i}.pt", seed=10 + i, mean_charges=MEAN_CHARGES, **SMALL)
        for i in range(2)
    ]
    return potentials, borns


@pytest.fixture()
def atoms():
    a = build_crystal("beta")
    a.rattle(0.08, seed=3)
    return a


def test_field_force_is_born_transpose_times_field(model_files, atoms):
    potentials, borns = model_files
    field = np.array([0.1, -0.05, 0.02])  # V/Å
    calc = FieldCalculator(potentials, borns, field=field, dtype="float64")
    atoms.calc = calc
    forces = atoms.get_forces()
    z = calc.get_property("born_effective_charges", atoms)
    assert z.shape == (len(atoms), 3, 3)
    np.testing.assert_array_equal(calc.get_property("born_charges", atoms), z)
    assert np.abs(z.sum(axis=0)).max() < 1e-12
    calc.set_field((0.0, 0.0, 0.0))
    forces_zero = atoms.get_forces()
    np.testing.assert_allclose(forces - forces_zero, np.einsum("kab,a->kb", z, field), atol=1e-12)
    # |Z| ~ 1 e at 0.1 V/Å gives field forces of order 0.1 eV/Å
    assert 0.03 < np.abs(forces - forces_zero).max() < 1.0
    assert np.abs(forces_zero.sum(axis=0)).max() < 1e-10  # NN forces conserve momentum


def test_stress_matches_numerical_strain_derivative(model_files, atoms):
    potentials, _ = model_files
    calc = FieldCalculator(potential=potentials[0], dtype="float64")
    atoms.calc = calc
    np.testing.assert_allclose(atoms.get_stress(), calculate_numerical_stress(atoms, eps=1e-5), atol=1e-8)


def test_committee_statistics(model_files, atoms):
    potentials, borns = model_files
    calc = FieldCalculator(potentials, borns, field=(0.1, 0, 0), dtype="float64")
    atoms.calc = calc
    atoms.get_forces()
    assert calc.get_property("forces_var", atoms).shape == (len(atoms), 3)
    assert calc.get_property("born_charges_var", atoms).shape == (len(atoms), 3, 3)
    assert calc.get_property("forces_uncertainty", atoms).shape == (len(atoms),)
    assert calc.get_property("born_charges_uncertainty", atoms).max() > 0
    single = FieldCalculator(potentials[0], borns[0], dtype="float64")
    atoms.calc = single
    atoms.get_forces()
    assert single.get_property("born_charges_var", atoms).max() == 0.0


def test_bad_setups_are_config_errors(model_files):
    potentials, borns = model_files
    with pytest.raises(ConfigError, match="Born-charge model"):
        FieldCalculator(potential=potentials[0], field=(0.1, 0, 0))
    with pytest.raises(ConfigError, match="three finite"):
        FieldCalculator(potentials[0], borns[0], field=(0.1, 0))
    with pytest.raises(ConfigError):
        FieldCalculator()


def test_predict_cli_writes_born_charges(model_files, atoms, tmp_path):
    potentials, borns = model_files
    src = tmp_path / "in.extxyz"
    write(src, [atoms, atoms.copy()], format="extxyz")
    out = tmp_path / "out.extxyz"
    argv = ["predict", "--structures", str(src), "--potential", *map(str, potentials), "--born", *map(str, borns),
            "--field", "0.1", "0", "0", "--dtype", "float64", "--output", str(out), "--no-progress"]
    assert main(argv) == 0
    frames = read(out, index=":")
    assert len(frames) == 2
    calc = FieldCalculator(potentials, borns, field=(0.1, 0, 0), dtype="float64")
    z = calc.get_property("born_charges", atoms.copy())
    np.testing.assert_allclose(frames[0].arrays["born_charges"].reshape(-1, 3, 3), z, atol=1e-8)
    assert frames[0].arrays["born_charges_std"].shape == (len(atoms), 9)
    assert main(["predict", "--structures", str(tmp_path / "missing.extxyz"), "--born", str(borns[0]), "--output", str(out)]) == 2
