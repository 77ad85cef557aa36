"""Structures and training data are checked at the door: file, frame, atom and key named, nothing written.

Every entry point that reads structures (``dft plan``/``run``, ``predict``,
``train explore``/``select``, ``md run``, ``structures report``, ``ledger append``) refuses NaN or
coincident positions and unknown elements before any work; a dataset with a
non-finite label is refused before the split or a model file is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.io import read, write

from bornfield.cli import main
from bornfield.errors import InputFileError
from bornfield.models import create_random_model_file
from bornfield.structures.crystals import build_crystal
from bornfield.structures.io import check_structure

REPO = Path(__file__).resolve().parents[1]
SMALL = {"channels": 2, "hidden": 4, "radial_hidden": 4}


def _beta():
    atoms = build_crystal("beta")
    atoms.info.update(config_type="beta", structure_id="0" * 12, seed=-1, source="test", charge=0)
    return atoms


def _broken(kind: str):
    atoms = _beta()
    if kind == "nan":
        atoms.positions[5] = [np.nan, 0.0, 0.0]
    elif kind == "coincident":
        atoms.positions[7] = atoms.positions[3]
    elif kind == "species":
        atoms.symbols[2] = "Na"
    return atoms


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("check_models")
    return {
        "potential": create_random_model_file("potential", ["Li", "P", "O"], 4.0, root / "potential_0.pt", 0, **SMALL),
        "born": create_random_model_file("born", ["Li", "P", "O"], 4.0, root / "born_0.pt", 1, **SMALL),
    }


@pytest.mark.parametrize(("kind", "text"), [
    ("nan", "atom 5 (Li) has position [nan, 0.0, 0.0]"),
    ("coincident", "atoms 3 (Li) and 7 (P) are 0.000 Å apart"),
    ("species", "element(s) ['Na'] not known here; allowed: ['Li', 'P', 'O']"),
])
def test_check_structure_names_the_frame_and_the_atom(kind, text):
    atoms = _broken(kind)
    with pytest.raises(InputFileError) as raised:
        check_structure(atoms, "cells.extxyz frame 4")
    message = str(raised.value)
    assert message.startswith("cells.extxyz frame 4: ") and text in message, message
    check_structure(_beta(), "fine")


@pytest.mark.parametrize("kind", ["nan", "coincident", "species"])
def test_dft_plan_refuses_a_broken_candidate_and_writes_nothing(tmp_path, capsys, kind):
    candidates = tmp_path / "candidates.extxyz"
    write(candidates, [_beta(), _broken(kind)], format="extxyz")
    code = main(["dft", "plan", "--structures", str(candidates), "--inputs-dir", str(tmp_path / "inputs"),
                 "--output", str(tmp_path / "gen0" / "plan.json")])
    assert code == 2
    assert f"{candidates} frame 1: " in capsys.readouterr().err
    assert not (tmp_path / "gen0").exists() and not (tmp_path / "inputs").exists()


@pytest.mark.parametrize(("kind", "text"), [("coincident", "atoms 3 (Li) and 7 (P)"), ("nan", "atom 5 (Li)")])
def test_predict_refuses_a_broken_structure_instead_of_writing_nan(tmp_path, capsys, models, kind, text):
    structures = tmp_path / "in.extxyz"
    write(structures, [_beta(), _broken(kind)], format="extxyz")
    out = tmp_path / "out.extxyz"
    code = main(["predict", "--structures", str(structures), "--potential", str(models["potential"]),
                 "--born", str(models["born"]), "--output", str(out), "--no-progress"])
    assert code == 2
    assert f"{structures} frame 1: {text}" in capsys.readouterr().err
    assert not out.exists()
    write(structures, [_beta()], format="extxyz")
    assert main(["predict", "--structures", str(structures), "--potential", str(models["potential"]),
                 "--output", str(out), "--no-progress"]) == 0
    assert np.isfinite(read(out).get_forces()).all()


def test_dft_run_refuses_a_broken_structure_before_its_job_directory(tmp_path, capsys):
    structure = tmp_path / "one.extxyz"
    write(structure, _broken("nan"), format="extxyz")
    jobs = tmp_path / "jobs"
    code = main(["dft", "run", "--settings", json.dumps({"dft": {"run": {"pw_command": "/bin/false"}}}),
                 "--structure", str(structure), "--pseudo-dir", str(tmp_path / "pseudo"), "--jobs-dir", str(jobs),
                 "--launcher", "", "--ranks", "1", "--ledger", ""])
    assert code == 2 and f"{structure} frame 0: atom 5 (Li)" in capsys.readouterr().err
    assert not jobs.exists()


def test_ledger_append_refuses_a_broken_structure_and_leaves_the_queue(tmp_path, capsys):
    ledger = tmp_path / "ledger"
    shutil.copytree(REPO / "data" / "ledger", ledger)
    before = (ledger / "queue.extxyz").read_bytes()
    picks = tmp_path / "picks.extxyz"
    write(picks, [_beta(), _broken("coincident")], format="extxyz")
    code = main(["ledger", "append", "--ledger", str(ledger), "--structures", str(picks), "--kind", "scf"])
    assert code == 2 and f"{picks} frame 1: atoms 3 (Li) and 7 (P)" in capsys.readouterr().err
    assert (ledger / "queue.extxyz").read_bytes() == before


def test_explore_and_select_refuse_broken_structures(tmp_path, capsys, models):
    structures = tmp_path / "start.extxyz"
    write(structures, [_broken("nan")], format="extxyz")
    code = main(["train", "explore", "--structures", str(structures), "--potential", str(models["potential"]),
                 "--born", str(models["born"]), "--generation", "1", "--output", str(tmp_path / "s.extxyz"),
                 "--no-progress"])
    assert code == 2 and f"{structures} frame 0: atom 5 (Li)" in capsys.readouterr().err
    write(structures, [_beta(), _broken("species")], format="extxyz")
    code = main(["train", "select", "--candidates", str(structures), "--potential", str(models["potential"]),
                 "--output", str(tmp_path / "c.extxyz")])
    assert code == 2 and f"{structures} frame 1: element(s) ['Na']" in capsys.readouterr().err
    assert not list(tmp_path.glob("[sc].extxyz"))


def test_md_run_refuses_a_broken_start_cell_before_any_step(tmp_path, capsys, models):
    cells = tmp_path / "cells.extxyz"
    write(cells, [_beta(), _broken("coincident")], format="extxyz")
    settings = {"md": {"sweep": {"phases": ["beta"], "temperatures_K": [300], "field_strengths_V_per_A": [0.1],
                                 "replicas": 1}, "equilibration_steps": 0, "production_steps": 10}}
    outdir = tmp_path / "md"
    code = main(["md", "run", "--settings", json.dumps(settings), "--condition", "beta_T300K_E0.1_x",
                 "--structures", str(cells), "--potential", str(models["potential"]), "--born", str(models["born"]),
                 "--output-dir", str(outdir), "--no-progress"])
    assert code == 2 and f"{cells} frame 1: atoms 3 (Li) and 7 (P)" in capsys.readouterr().err
    assert not outdir.exists()


def test_a_nan_force_in_the_dataset_names_file_frame_atom_and_key(tmp_path, capsys, data_dir):
    frames = read(data_dir / "qe" / "labelled_small.extxyz", index=":")
    frames[1].calc.results["forces"][3, 1] = np.nan
    dataset = tmp_path / "gen0.extxyz"
    write(dataset, frames, format="extxyz")
    outdir = tmp_path / "models" / "gen0"
    code = main(["train", "potential", "--dataset", str(dataset), "--output-dir", str(outdir), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{dataset} frame 1, atom 3 (" in err and "label 'forces'" in err and "diverged" not in err, err
    assert not outdir.exists()  # no split.json, no model, no checkpoint


def test_structures_report_names_the_broken_frame(tmp_path, capsys):
    path = tmp_path / "set.extxyz"
    write(path, [_beta(), _broken("nan")], format="extxyz")
    code = main(["structures", "report", "--structures", str(path), "--set-name", "x",
                 "--report-json", str(tmp_path / "x.json"), "--report-png", str(tmp_path / "x.png")])
    assert code == 2 and f"{path} frame 1: atom 5 (Li)" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
