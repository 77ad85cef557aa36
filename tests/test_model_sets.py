"""Model sets (bornfield.train.shipped): ship, read back with checksums, accuracy table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.io import read, write

from bornfield.cli import main
from bornfield.errors import InputFileError
from bornfield.models import create_random_model_file
from bornfield.train.shipped import read_model_set

SPECIES = ["Li", "P", "O"]
SMALL = {"channels": 4, "hidden": 16, "radial_hidden": 16}


@pytest.fixture()
def shipped(tmp_path, data_dir):
    frames = read(data_dir / "qe" / "labelled_small.extxyz", index=":")
    for frame, split in zip(frames, ("train", "test")):
        frame.info["split"] = split
    dataset = tmp_path / "ledger.extxyz"
    write(dataset, frames, format="extxyz")
    models = tmp_path / "work"
    potentials = [create_random_model_file("potential", SPECIES, 4.5, models / f"potential_{i}.pt", seed=i, **SMALL)
                  for i in range(2)]
    borns = [create_random_model_file("born", SPECIES, 4.5, models / f"born_{i}.pt", seed=5 + i, **SMALL)
             for i in range(2)]
    metrics = tmp_path / "metrics.json"
    assert main(["train", "evaluate", "--dataset", str(dataset), "--split-key", "--subset", "test",
                 "--potential", *map(str, potentials), "--born", *map(str, borns), "--output", str(metrics)]) == 0
    outdir = tmp_path / "models" / "li3po4"
    assert main(["train", "ship", "--dataset", str(dataset), "--metrics", str(metrics), "--output-dir", str(outdir),
                 "--potential", *map(str, reversed(potentials)), "--born", *map(str, borns)]) == 0
    return outdir, frames, json.loads(metrics.read_text())


def test_model_set_round_trip_keeps_member_order_test_rows_and_metrics(shipped, capsys):
    outdir, frames, records = shipped
    model_set = read_model_set(outdir)
    assert [p.name for p in model_set.potential] == ["potential_0.pt", "potential_1.pt"]
    assert [p.name for p in model_set.born] == ["born_0.pt", "born_1.pt"] and model_set.baseline == ()
    (test_row,) = read(model_set.test_set, index=":")
    np.testing.assert_allclose(test_row.positions, frames[1].positions)
    assert list(model_set.records) == records
    source = model_set.manifest["source"]
    assert (source["n_entries"], source["n_train"], source["n_test"]) == (2, 1, 1)
    assert main(["train", "table", "--models", str(outdir)]) == 0
    table = capsys.readouterr().out
    rmse = next(r["value"] for r in records if r["metric"] == "bec_rmse_e" and r["system"] == "bornfield-born")
    assert f"| Born RMSE, all 9 components (e) | {rmse:.4g} |" in table
    assert "| Force RMSE (meV/Å) |" in table and "Born RMSE, Li (e)" in table


def test_model_set_refuses_edited_or_missing_files(shipped):
    outdir, _, _ = shipped
    with open(outdir / "born_1.pt", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(InputFileError, match="born_1.pt: checksum differs"):
        read_model_set(outdir)
    (outdir / "born_1.pt").unlink()
    with pytest.raises(InputFileError, match="born_1.pt listed in .* is missing"):
        read_model_set(outdir)
    with pytest.raises(InputFileError, match="not a model set"):
        read_model_set(outdir.parent)


def test_ship_refuses_a_model_of_the_wrong_kind(shipped, tmp_path, capsys):
    outdir, _, _ = shipped
    wrong = tmp_path / "born_0.pt"
    wrong.write_bytes((outdir / "potential_0.pt").read_bytes())
    assert main(["train", "ship", "--dataset", str(tmp_path / "ledger.extxyz"), "--output-dir", str(tmp_path / "x"),
                 "--born", str(wrong)]) != 0
    assert "born_0.pt: holds a 'potential' model, expected born" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / ".x.part").exists()  # nothing half-written
    assert read_model_set(outdir).born  # the shipped set is intact


def test_ship_evaluates_the_held_out_rows_itself(shipped, tmp_path):
    outdir, _, records = shipped
    model_set = read_model_set(outdir)
    again = tmp_path / "again"
    assert main(["train", "ship", "--dataset", str(tmp_path / "ledger.extxyz"), "--output-dir", str(again),
                 "--potential", *map(str, model_set.potential), "--born", *map(str, model_set.born)]) == 0
    rebuilt = read_model_set(again)
    value = {(r["system"], r["metric"]): r["value"] for r in records}
    assert {(r["system"], r["metric"]): r["value"] for r in rebuilt.records} == pytest.approx(value)
    assert {"evaluation_born_parity.png", "evaluation_potential_parity.png"} <= set(rebuilt.manifest["files"])


def test_campaign_on_a_model_set_labels_and_trains_nothing(shipped, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    outdir, _, _ = shipped
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"results_dir: {tmp_path / 'results'}\nmd: {{models: {outdir}}}\n")
    dry = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "-n", "--cores", "1", "--configfile",
                          str(repo / ".test" / "config.yaml"), str(overlay)], cwd=repo, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    jobs = dry.stdout
    assert "md_condition" in jobs and f"{outdir}/potential_1.pt" in jobs
    for rule in ("dft_plan", "dft_run", "dataset_assemble", "train_potential", "train_born"):
        assert f"rule {rule}:" not in jobs, rule


def test_ship_names_the_validation_rows_of_the_training_split(shipped, tmp_path, capsys):
    outdir, frames, _ = shipped
    model_set = read_model_set(outdir)
    extra = frames[0].copy()
    extra.positions[0] += 0.05
    extra.info["dft_id"] = "f" * 16
    dataset = tmp_path / "three.extxyz"
    write(dataset, [frames[0], extra, frames[1]], format="extxyz")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [0], "val": [1], "test": [2]}))
    again = tmp_path / "with_split"
    assert main(["train", "ship", "--dataset", str(dataset), "--split", str(split), "--output-dir",
                 str(again), "--potential", *map(str, model_set.potential), "--born", *map(str, model_set.born)]) == 0
    source = read_model_set(again).manifest["source"]
    assert (source["n_train"], source["n_val"], source["n_test"]) == (1, 1, 1)
    assert source["dft_ids"]["val"] == ["f" * 16]
    split.write_text(json.dumps({"train": [2], "val": [1], "test": [0]}))  # not the dataset's held-out row
    assert main(["train", "ship", "--dataset", str(dataset), "--split", str(split), "--output-dir",
                 str(tmp_path / "wrong"), "--potential", *map(str, model_set.potential)]) != 0
    assert "test rows are not the dataset's info['split'] test rows" in capsys.readouterr().err
    assert not (tmp_path / "wrong").exists()
