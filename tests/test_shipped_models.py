"""The committed model sets (models/li3po4 and its polar-Born setting) keep their promises: their files
are the ones shipped, every member satisfies the contracts in float64 on real held-out Li3PO4 cells,
and their recorded held-out metrics are reproduced by the evaluation path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import read
from scipy.spatial.transform import Rotation

from bornfield.cli import main
from bornfield.models import load_model
from bornfield.train.shipped import read_model_set

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "li3po4"
# the shipped set and its accuracy setting of the Born model (`make models-polar`): same potentials
SETTINGS_SHIPPED = ("li3po4", "li3po4-polar")


@pytest.fixture(scope="module", params=SETTINGS_SHIPPED)
def model_set(request):
    return read_model_set(SHIPPED.parent / request.param)


@pytest.fixture(scope="module")
def held_out(model_set):
    frames = read(model_set.test_set, index=":", format="extxyz")
    assert frames and all(a.info["split"] == "test" for a in frames)
    return frames


def _args(atoms):
    return atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc


@pytest.mark.parametrize("root", sorted(p.parent for p in SHIPPED.parent.glob("*/manifest.json")), ids=lambda p: p.name)
def test_model_set_is_complete_and_comes_from_the_ledger(root):
    """Every committed set (the shipped one and those kept for the results made with them)."""
    model_set = read_model_set(root)  # checks every file against the manifest's sha256
    assert len(model_set.potential) >= 2 and len(model_set.born) >= 2  # committees, for the uncertainty
    source = model_set.manifest["source"]
    ledger = json.loads((SHIPPED.parents[1] / "data" / "ledger" / "ledger.json").read_text())
    assert source["ledger_identity"] == ledger["identity"]
    assert source["n_test"] >= 1 and not set(source["dft_ids"]["test"]) & set(source["dft_ids"]["train"])


def test_members_obey_rotation_asr_and_permutation_in_float64(model_set, held_out):
    atoms = max(held_out, key=len)
    rotation = Rotation.random(random_state=11).as_matrix() @ np.diag([1.0, 1.0, -1.0])
    rotated = atoms.copy()
    rotated.set_cell(np.asarray(atoms.cell) @ rotation.T, scale_atoms=True)
    perm = np.random.default_rng(5).permutation(len(atoms))
    for path in model_set.born:
        born = load_model(path, kind="born", dtype=torch.float64)
        z = born.born_charges(*_args(atoms))
        assert np.abs(z.sum(axis=0)).max() < 1e-10
        np.testing.assert_allclose(born.born_charges(*_args(rotated)), np.einsum("ab,kbc,dc->kad", rotation, z, rotation),
                                   atol=1e-9)
        np.testing.assert_allclose(born.born_charges(*_args(atoms[perm])), z[perm], atol=1e-9)
    for path in model_set.potential:
        potential = load_model(path, kind="potential", dtype=torch.float64)
        e, f, s = potential.energy_forces_stress(*_args(atoms))
        e_rot, f_rot, s_rot = potential.energy_forces_stress(*_args(rotated))
        assert e_rot == pytest.approx(e, abs=1e-8)
        np.testing.assert_allclose(f_rot, f @ rotation.T, atol=1e-8)
        np.testing.assert_allclose(s_rot, rotation @ s @ rotation.T, atol=1e-8)
        assert np.abs(f.sum(axis=0)).max() < 1e-8  # no net force on the cell


def test_recorded_held_out_metrics_are_reproduced(model_set, tmp_path):
    out = tmp_path / "evaluation.json"
    argv = ["train", "evaluate", "--dataset", str(model_set.test_set), "--split-key", "--subset", "test", "--output", str(out)]
    for kind in ("potential", "born", "baseline"):
        members = getattr(model_set, kind)
        if members:
            argv += [f"--{kind}", *map(str, members)]
    assert main(argv) == 0
    fresh = {(r["system"], r["metric"]): r["value"] for r in json.loads(out.read_text())}
    recorded = {(r["system"], r["metric"]): r["value"] for r in model_set.records}
    assert recorded and set(recorded) == set(fresh)
    for key, value in recorded.items():
        assert fresh[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key



def test_readme_accuracy_table_is_the_model_sets():
    from bornfield.train.shipped import accuracy_table

    model_set = read_model_set(SHIPPED)
    readme = (SHIPPED.parents[1] / "README.md").read_text(encoding="utf-8")
    begin, end = "<!-- model-set-table:begin -->\n", "\n<!-- model-set-table:end -->"
    shown = readme[readme.index(begin) + len(begin):readme.index(end)]
    expected = accuracy_table(model_set).replace(str(model_set.root), "models/li3po4")
    assert shown.strip() == expected.strip(), "regenerate with: bornfield train table --models models/li3po4"


def test_the_polar_setting_has_the_shipped_potentials_and_split_and_polar_born_models():
    """`make models-polar` changes only the Born committee of the shipped set."""
    from bornfield.models.io import file_sha256, read_model_file

    shipped, polar = read_model_set(SHIPPED), read_model_set(SHIPPED.parent / "li3po4-polar")
    assert [file_sha256(p) for p in polar.potential] == [file_sha256(p) for p in shipped.potential]
    assert [file_sha256(p) for p in polar.baseline] == [file_sha256(p) for p in shipped.baseline]
    assert polar.manifest["source"]["dft_ids"] == shipped.manifest["source"]["dft_ids"]
    assert polar.manifest["source"]["dataset_sha256"] == shipped.manifest["source"]["dataset_sha256"]
    assert {read_model_file(p)["hyperparameters"]["architecture"] for p in polar.born} == {"polar"}
    assert {read_model_file(p)["hyperparameters"].get("architecture", "density") for p in shipped.born} == {"density"}
