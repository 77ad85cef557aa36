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


def split_dataset(tmp_path, data_dir):
    """Two real labelled rows, the first for training and the second held out: (path, frames)."""
    frames = read(data_dir / "qe" / "labelled_small.extxyz", index=":")
    for frame, split in zip(frames, ("train", "test")):
        frame.info["split"] = split
    dataset = tmp_path / "ledger.extxyz"
    write(dataset, frames, format="extxyz")
    return dataset, frames


@pytest.fixture()
def shipped(tmp_path, data_dir):
    dataset, frames = split_dataset(tmp_path, data_dir)
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


# ---------------------------------------------------------------- the ledger rows of a model set
LEDGER_SPLIT = {"a0": "train", "a1": "test", "a2": "train", "a3": "val", "a4": "train"}


def _job(root, atoms, dft_id: str, split: str, born: bool, settings, pseudos):
    """A finished DFT job directory as the runner leaves it (structure, labels, status)."""
    job = root / dft_id
    job.mkdir(parents=True)
    atoms = atoms.copy()
    atoms.calc = None
    atoms.info = {"config_type": "beta", "structure_id": f"s-{dft_id}", "split": split, "label_kind": "dfpt" if born else "scf"}
    for key in [k for k in atoms.arrays if k not in ("numbers", "positions")]:
        del atoms.arrays[key]
    write(job / "structure.extxyz", atoms, format="extxyz")
    rng = np.random.default_rng(int(dft_id[1:]))
    labels = {"dft_id": dft_id, "energy": -7190.0 - rng.random(), "forces": rng.normal(size=(len(atoms), 3)).tolist(),
              "stress": rng.normal(size=6).tolist(), "qe_version": "test",
              "settings": settings.to_dict(), "pseudopotentials": {el: {"md5": r.md5} for el, r in pseudos.items()}}
    if born:
        z = rng.normal(size=(len(atoms), 3, 3))
        labels.update(born_charges=(z - z.mean(axis=0)).tolist(), epsilon_inf=np.eye(3).tolist(), asr_residual=[[0.0] * 3] * 3)
    (job / "labels.json").write_text(json.dumps(labels))
    status = {"dft_id": dft_id, "state": "completed", "settings": settings.to_dict(),
              "pseudopotentials": {el: {"file": r.filename, "md5": r.md5} for el, r in pseudos.items()}}
    (job / "status.json").write_text(json.dumps(status))
    return job


def _tiny_ledger(root, data_dir, ids, settings=None):
    """A ledger (``Ledger.create`` + ``add_job``) holding labelled rows ``ids`` of ``LEDGER_SPLIT``; no QE is run."""
    from bornfield.dft.inputs import DFTSettings
    from bornfield.dft.pseudopotentials import PseudoRecord
    from bornfield.dft.qc import QCThresholds
    from bornfield.ledger.store import Ledger, LedgerSpec, identity_of

    settings = settings or DFTSettings.defaults()
    pseudos = {el: PseudoRecord(el, f"{el}.UPF", f"{k:032x}", "test") for k, el in enumerate(SPECIES)}
    ledger = Ledger.create(root, LedgerSpec(identity_of(settings, pseudos), settings, pseudos, QCThresholds.defaults()))
    frame = read(data_dir / "qe" / "labelled_small.extxyz", index=0)
    for k, dft_id in enumerate(ids):
        assert ledger.add_job(_job(root.parent / f"{root.name}_jobs", frame, dft_id, LEDGER_SPLIT[dft_id], born=k % 2 == 0,
                                   settings=settings, pseudos=pseudos))
    return ledger


@pytest.fixture()
def ledger_set(tmp_path, data_dir):
    """A tiny ledger, a model set shipped from its export (train/val/test by info['split']), then one more entry."""
    ledger = _tiny_ledger(tmp_path / "ledger", data_dir, ["a0", "a1", "a2", "a3"])
    export = tmp_path / "export.extxyz"
    (tmp_path / "metrics.json").write_text("[]")
    assert main(["ledger", "export", "--ledger", str(ledger.root), "--output", str(export)]) == 0
    for recorded, name in ((True, "set"), (False, "set_without_identity")):
        assert main(["train", "ship", "--dataset", str(export), "--metrics", str(tmp_path / "metrics.json"),
                     "--output-dir", str(tmp_path / name), *(["--ledger", str(ledger.root)] if recorded else [])]) == 0
    assert ledger.add_job(_job(tmp_path / "later_jobs", read(export, index=0), "a4", "train", born=True,
                               settings=ledger.spec.settings, pseudos=ledger.spec.pseudopotentials))
    return ledger, tmp_path / "set", export


def test_model_set_rows_are_the_ledger_rows_of_its_split(ledger_set):
    from bornfield.train.shipped import model_set_rows

    ledger, model_set, export = ledger_set
    rows = model_set_rows(ledger.root, model_set)
    assert {k: [a.info["dft_id"] for a in v] for k, v in rows.items()} == {"train": ["a0", "a2"], "val": ["a3"], "test": ["a1"]}
    exported = {a.info["dft_id"]: a for a in read(export, index=":")}
    for atoms in (a for group in rows.values() for a in group):  # the ledger's labelled rows, labels included
        ref = exported[atoms.info["dft_id"]]
        assert atoms.info["split"] == ref.info["split"]
        np.testing.assert_array_equal(atoms.positions, ref.positions)
        np.testing.assert_allclose(atoms.arrays["forces"], ref.get_forces(), rtol=0, atol=1e-12)
        assert atoms.info["energy"] == pytest.approx(ref.get_potential_energy(), abs=1e-9)
        assert ("born_charges" in atoms.arrays) == (atoms.info["dft_id"] in ("a0", "a2"))
    assert "a4" in ledger.dft_ids()  # labelled after shipping: not a row of the set


def test_set_rows_rebuilds_the_training_data_and_split_a_new_set_can_ship_on(ledger_set, tmp_path, capsys):
    """`train set-rows` gives back the set's rows (byte-identical export) and its split, without later entries."""
    from bornfield.train.data import read_split_file

    ledger, model_set, export = ledger_set
    dataset, split = tmp_path / "rows" / "dataset.extxyz", tmp_path / "rows" / "split.json"
    assert main(["train", "set-rows", "--models", str(model_set), "--ledger", str(ledger.root),
                 "--output", str(dataset), "--split-json", str(split)]) == 0
    assert "4 ledger rows" in capsys.readouterr().out
    assert dataset.read_bytes() == export.read_bytes()  # a4, labelled after shipping, is left out
    frames = read(dataset, index=":")
    indices = read_split_file(split, len(frames))
    assert {k: [frames[i].info["dft_id"] for i in v] for k, v in indices.items()} == {
        "train": ["a0", "a2"], "val": ["a3"], "test": ["a1"]}
    assert json.loads(split.read_text())["training_data_hash"] == read_model_set(model_set).manifest["source"]["dataset_sha256"]
    # a second set shipped on those rows names the same split as the first
    assert main(["train", "ship", "--dataset", str(dataset), "--split", str(split), "--ledger", str(ledger.root),
                 "--metrics", str(tmp_path / "metrics.json"), "--output-dir", str(tmp_path / "second")]) == 0
    first, second = (read_model_set(d).manifest["source"] for d in (model_set, tmp_path / "second"))
    assert second["dft_ids"] == first["dft_ids"] and second["dataset_sha256"] == first["dataset_sha256"]


def test_model_set_rows_name_the_manifest_and_the_dft_ids_the_ledger_lacks(ledger_set, tmp_path, data_dir):
    from bornfield.train.shipped import model_set_rows

    ledger, model_set, _ = ledger_set
    smaller = _tiny_ledger(tmp_path / "smaller", data_dir, ["a0", "a2", "a4"])
    with pytest.raises(InputFileError, match=r"set/manifest.json: ledger .*smaller has no labelled row for 2 dft_id\(s\) "
                                             r"of source.dft_ids \(val: a3; test: a1\)"):
        model_set_rows(smaller.root, model_set)
    # a ledger of other DFT settings is refused by identity, rows or not
    from dataclasses import replace

    other = _tiny_ledger(tmp_path / "other", data_dir, ["a0", "a1", "a2", "a3"],
                         settings=replace(ledger.spec.settings, ecutrho_Ry=ledger.spec.settings.ecutrho_Ry + 40))
    with pytest.raises(InputFileError, match=rf"set/manifest.json: the set was made from a ledger of settings identity "
                                             rf"{ledger.identity}, ledger .*other has identity {other.identity}"):
        model_set_rows(other.root, model_set)
    # ... unless the set recorded no ledger identity
    rows = model_set_rows(other.root, tmp_path / "set_without_identity")
    assert [a.info["dft_id"] for a in rows["test"]] == ["a1"]


def test_model_set_rows_refuse_a_manifest_without_a_clean_split(ledger_set):
    from bornfield.train.shipped import model_set_rows

    ledger, model_set, _ = ledger_set
    path = model_set / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["source"]["dft_ids"]["val"].append("a0")
    path.write_text(json.dumps(manifest))
    with pytest.raises(InputFileError, match="manifest.json: dft_id a0 is listed in source.dft_ids.train and source.dft_ids.val"):
        model_set_rows(ledger.root, model_set)
    del manifest["source"]["dft_ids"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(InputFileError, match=r"manifest.json: source.dft_ids must hold lists \['train', 'val', 'test'\]"):
        model_set_rows(ledger.root, model_set)
    with pytest.raises(InputFileError, match="not a model set"):
        model_set_rows(ledger.root, model_set.parent)


def test_the_member_with_the_lowest_validation_loss_ships_as_member_0(tmp_path, data_dir):
    """MD drives with potential_0 and born_0, so the set puts the best-validated member first."""
    from bornfield.models import create_model
    from bornfield.models.io import file_sha256, save_model

    dataset, _ = split_dataset(tmp_path, data_dir)
    work = tmp_path / "work"
    losses = {"born": [3e-4, 1e-4, 2e-4], "potential": [0.02, 0.01]}
    files = {kind: [save_model(create_model(kind, SPECIES, 4.5, seed=i, **SMALL), work / f"{kind}_{i}.pt",
                               {"best_monitor_loss": loss})
                    for i, loss in enumerate(values)] for kind, values in losses.items()}
    metrics = tmp_path / "metrics.json"
    metrics.write_text("[]")
    outdir = tmp_path / "set"
    assert main(["train", "ship", "--dataset", str(dataset), "--metrics", str(metrics), "--output-dir", str(outdir),
                 "--potential", *map(str, files["potential"]), "--born", *map(str, files["born"])]) == 0
    model_set = read_model_set(outdir)
    members = model_set.manifest["members"]
    assert [m["trained_as"] for m in members["born"]] == ["born_1.pt", "born_2.pt", "born_0.pt"]
    assert [m["file"] for m in members["born"]] == ["born_0.pt", "born_1.pt", "born_2.pt"]
    assert file_sha256(outdir / "born_0.pt") == file_sha256(files["born"][1])
    assert [m["trained_as"] for m in members["potential"]] == ["potential_1.pt", "potential_0.pt"]
    assert file_sha256(outdir / "potential_0.pt") == file_sha256(files["potential"][1])
