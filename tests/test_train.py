"""Training stage: labels, split, training loop (loss, checkpoint/resume), CLI, active-learning selection.

Synthetic data here are labelled honestly by ASE's Morse pair potential and an
analytic, equivariant environment-dependent Born tensor (a true 0e+1e+2e
tensor); they test the machinery. The "training lowers the loss" test on real
DFT/DFPT labels uses ``tests/data/qe/labelled_small.extxyz`` from the DFT stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.calculators.morse import MorsePotential
from ase.io import read, write
from ase.neighborlist import neighbor_list
from ase.spacegroup import crystal

from bornfield.cli import main
from bornfield.errors import InputFileError
from bornfield.train.data import carve_validation, dataset_species, read_samples, stratified_split
from bornfield.train.select import select_candidates
from bornfield.train.trainer import train_model

REAL_DATA = Path(__file__).resolve().parent / "data" / "qe" / "labelled_small.extxyz"
TINY = {"channels": 4, "n_basis": 6, "radial_hidden": 16, "hidden": 16, "learning_rate": 0.01, "lr_factor": 0.5,
        "lr_patience": 5, "patience": 50, "min_lr": 1e-6, "batch_size": 2, "cutoff": 4.0, "dtype": "float32",
        "energy_weight": 1.0, "force_weight": 1.0, "stress_weight": 0.0, "charged_cells": "forces_only",
        "baseline": "none", "interactions": 1, "warmup_epochs": 0, "grad_clip": 0.0, "ema_decay": 0.0, "weight_decay": 0.0}


def beta():
    return crystal(
        ["Li", "Li", "P", "O", "O", "O"],
        basis=[(0.24810, 0.32770, 0.98600), (0.5, 0.84280, 0.98930), (0, 0.82430, 0),
               (0.20777, 0.68676, 0.89610), (0, 0.10520, 0.90040), (0.5, 0.18140, 0.81720)],
        spacegroup=31, cellpar=[6.1150, 5.2394, 4.8554, 90, 90, 90],
    )


def synthetic_frames(n: int, seed: int = 0):
    """Rattled beta-Li3PO4 cells with Morse energies/forces/stress and an analytic equivariant Z."""
    rng = np.random.default_rng(seed)
    charges = {3: 1.0, 15: 3.3, 8: -1.8}
    frames = []
    for k in range(n):
        atoms = beta()
        atoms.positions += rng.normal(0, 0.1, atoms.positions.shape)
        atoms.calc = MorsePotential(epsilon=0.1, r0=2.6, rho0=4.0, rcut1=4.0, rcut2=5.0)
        energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)
        i, j, d = neighbor_list("ijD", atoms, 4.0)
        r = np.linalg.norm(d, axis=1)
        u = d / r[:, None]
        w = np.exp(-((r - 2.0) ** 2))
        z = np.array([charges[x] * np.eye(3) for x in atoms.numbers])
        np.add.at(z, i, 0.4 * w[:, None, None] * (u[:, :, None] * u[:, None, :] - np.eye(3) / 3))
        frame = atoms.copy()
        frame.calc = None
        frame.info.update(energy=energy, stress=stress.reshape(9), config_type="beta" if k % 3 else "rattled")
        frame.arrays["forces"] = forces
        if k % 4 != 3:  # some structures without DFPT labels, as in real datasets
            frame.arrays["born_charges"] = (z - 0.9 * z.mean(0)).reshape(-1, 9)  # leave an ASR residual
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "gen0.extxyz"
    write(path, synthetic_frames(24), format="extxyz")
    return path


def test_labels_are_read_and_asr_corrected(dataset):
    samples = read_samples(dataset)
    assert len(samples) == 24 and dataset_species(samples) == ["Li", "O", "P"]
    with_born = [s for s in samples if s.born is not None]
    assert len(with_born) == 18
    for s in with_born:
        assert np.abs(s.born.sum(axis=0)).max() < 1e-12
        assert np.abs(s.born_asr_residual).max() > 1e-3
    assert all(s.forces.shape == (16, 3) and s.stress.shape == (3, 3) for s in samples)


def test_malformed_labels_are_input_errors(tmp_path):
    frame = synthetic_frames(1)[0]
    frame.arrays["born_charges"] = frame.arrays["born_charges"][:, :8].copy()
    path = tmp_path / "bad.extxyz"
    write(path, [frame], format="extxyz")
    with pytest.raises(InputFileError, match="born_charges"):
        read_samples(path)
    with pytest.raises(InputFileError, match="not found"):
        read_samples(tmp_path / "missing.extxyz")


def test_split_is_stratified_reproducible_and_disjoint(dataset):
    samples = read_samples(dataset)
    split = stratified_split(samples, 0.2, 0.2, seed=1)
    assert split == stratified_split(samples, 0.2, 0.2, seed=1)
    assert split != stratified_split(samples, 0.2, 0.2, seed=2)
    everything = split["train"] + split["val"] + split["test"]
    assert sorted(everything) == list(range(len(samples)))
    for name in ("beta", "rattled"):
        members = [s.index for s in samples if s.config_type == name]
        assert set(members) & set(split["test"]) and set(members) & set(split["train"])


def test_split_of_singleton_config_types_still_holds_out_a_structure(dataset):
    """Two structures of two config_types (a small campaign's first generation): one is held out for test."""
    samples = read_samples(dataset)
    first = {}
    for s in samples:
        first.setdefault(s.config_type, s)
    pair = list(first.values())[:2]
    assert len({s.config_type for s in pair}) == 2
    split = stratified_split(pair, 0.1, 0.1, seed=0)
    assert len(split["test"]) == 1 and len(split["train"]) == 1 and split["val"] == []
    assert stratified_split(pair, 0.1, 0.0, seed=0)["test"] == []  # nothing asked, nothing taken
    three = list(first.values())[:2] + [s for s in samples if s.config_type == pair[0].config_type][1:2]
    split = stratified_split(three, 0.1, 0.1, seed=0)
    assert len(split["test"]) == 1 and len(split["val"]) == 1 and len(split["train"]) == 1


@pytest.mark.parametrize("kind", ["potential", "born", "born_row"])
def test_training_lowers_loss_and_resumes(dataset, tmp_path, kind):
    samples = read_samples(dataset)
    train, val = samples[:18], samples[18:]
    species = dataset_species(samples)
    settings = dict(TINY, max_epochs=4, field_axis=1)
    model, history = train_model(kind, train, val, settings, tmp_path / f"{kind}_0.pt", seed=3, species=species,
                                 metadata={"training_data_hash": "h"}, progress=False)
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert model.metadata["training_data_hash"] == "h" and model.metadata["trained"] is True
    assert (tmp_path / f"{kind}_0.ckpt").exists() and (tmp_path / f"{kind}_0.metrics.csv").exists()
    # resume continues from the checkpoint instead of starting again
    _, resumed = train_model(kind, train, val, dict(settings, max_epochs=6), tmp_path / f"{kind}_0.pt", seed=3,
                             species=species, metadata={"training_data_hash": "h"}, progress=False)
    assert [row["epoch"] for row in resumed] == list(range(6))
    assert resumed[:4] == history
    # a checkpoint of other training data (the dataset changed) is not resumed: training starts afresh
    _, fresh = train_model(kind, train, val, dict(settings, max_epochs=2), tmp_path / f"{kind}_0.pt", seed=3,
                           species=species, metadata={"training_data_hash": "other"}, progress=False)
    assert [row["epoch"] for row in fresh] == [0, 1]
    # nor is one of other settings on the same data (a loss weight, the learning rate), other rows or a start model
    variants = [{"settings": dict(settings, learning_rate=settings["learning_rate"] / 2)},
                {"train": train[1:]}, {"init_model": model}]
    if kind == "potential":
        variants.append({"settings": dict(settings, energy_weight=10.0)})
    for variant in variants:
        _, first = train_model(kind, train, val, settings, tmp_path / "same.pt", seed=3, species=species,
                               metadata={"training_data_hash": "h"}, progress=False)
        _, again = train_model(kind, train, val, dict(settings, max_epochs=5), tmp_path / "same.pt", seed=3,
                               species=species, metadata={"training_data_hash": "h"}, progress=False)
        assert len(again) == 5 and again[:4] == first  # the same run resumes
        run = {"settings": settings, "train": train, **variant}
        _, fresh = train_model(kind, run["train"], val, dict(run["settings"], max_epochs=2), tmp_path / "same.pt",
                               seed=3, species=species, metadata={"training_data_hash": "h"}, progress=False,
                               init_model=run.get("init_model"))
        assert [row["epoch"] for row in fresh] == [0, 1], variant


@pytest.mark.parametrize("architecture", ["edge", "polar"])
def test_edge_and_polar_born_models_train_with_a_cosine_schedule(dataset, tmp_path, architecture):
    """train.born.architecture edge / polar builds and saves that model (polar: the loss on Z = dP/dr reaches
    the weights by double backward); cosine decays to min_lr at max_epochs; the reloaded model keeps the sum rule."""
    from bornfield.models import load_born
    from bornfield.models.io import BORN_ARCHITECTURES

    samples = read_samples(dataset)
    settings = dict(TINY, max_epochs=4, architecture=architecture, edge_layers=2, lr_schedule="cosine", warmup_epochs=1)
    model, history = train_model("born", samples[:18], samples[18:], settings, tmp_path / "born_0.pt", seed=3,
                                 species=dataset_species(samples), progress=False)
    assert type(model) is BORN_ARCHITECTURES[architecture] and len(history) == 4
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    lrs = [row["lr"] for row in history]
    assert lrs[1] > lrs[2] > lrs[3] == pytest.approx(settings["min_lr"])
    loaded = load_born(tmp_path / "born_0.pt")
    assert type(loaded) is BORN_ARCHITECTURES[architecture] and loaded.hyperparameters["edge_layers"] == 2
    atoms = samples[18].atoms
    z = loaded.born_charges(atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
    assert np.abs(z.sum(0)).max() < 1e-5 and np.abs(z - z.mean(0)).max() > 1e-3


def test_potential_with_two_interactions_trains_and_reloads(dataset, tmp_path):
    """train.potential.interactions 2 builds the second interaction, fits its feature standardisation on
    the training cells, lowers the loss on forces, and the saved file reloads as that model with the
    same energies and forces."""
    from bornfield.models import load_potential

    samples = read_samples(dataset)
    settings = dict(TINY, max_epochs=4, interactions=2)
    model, history = train_model("potential", samples[:18], samples[18:], settings, tmp_path / "potential_0.pt",
                                 seed=3, species=dataset_species(samples), progress=False)
    assert model.interactions == 2 and len(history) == 4
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    interaction = model.interaction
    assert not torch.all(interaction.edge_scale == 1) and not torch.all(interaction.feature_shift == 0)
    loaded = load_potential(tmp_path / "potential_0.pt")
    assert loaded.interactions == 2 and loaded.hyperparameters["interactions"] == 2
    atoms = samples[18].atoms
    structure = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
    e, f, _ = loaded.energy_forces_stress(*structure)
    e_ref, f_ref, _ = model.energy_forces_stress(*structure)
    assert e == pytest.approx(e_ref, abs=1e-5) and np.abs(f - f_ref).max() < 1e-5


@pytest.mark.parametrize("architecture", ["edge", "message"])
def test_edge_and_message_potentials_train_and_reload(dataset, tmp_path, architecture):
    """train.potential.architecture edge / message builds that potential on the fitted reference energies,
    lowers the loss on forces, and the saved file reloads as that model with the same energies and forces."""
    from bornfield.models import load_potential
    from bornfield.models.potential_edge import EdgePotential
    from bornfield.models.potential_message import MessagePotential

    samples = read_samples(dataset)
    settings = dict(TINY, max_epochs=4, architecture=architecture, edge_layers=2, interactions=2)
    model, history = train_model("potential", samples[:18], samples[18:], settings, tmp_path / "potential_0.pt",
                                 seed=3, species=dataset_species(samples), progress=False)
    expected = {"edge": EdgePotential, "message": MessagePotential}[architecture]
    assert type(model) is expected and len(history) == 4
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    loaded = load_potential(tmp_path / "potential_0.pt")
    assert type(loaded) is expected and loaded.hyperparameters["architecture"] == architecture
    if architecture == "edge":
        assert loaded.hyperparameters["edge_layers"] == 2 and "interactions" not in loaded.hyperparameters
    else:
        assert loaded.hyperparameters["interactions"] == 2 and "edge_layers" not in loaded.hyperparameters
    atoms = samples[18].atoms
    structure = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
    e, f, _ = loaded.energy_forces_stress(*structure)
    e_ref, f_ref, _ = model.energy_forces_stress(*structure)
    assert e == pytest.approx(e_ref, abs=1e-5) and np.abs(f - f_ref).max() < 1e-5


@pytest.mark.skipif(not REAL_DATA.exists(), reason=f"real DFT/DFPT labels not available ({REAL_DATA})")
@pytest.mark.parametrize("kind", ["potential", "born"])
def test_training_lowers_loss_on_real_dft_data(tmp_path, kind):
    samples = read_samples(REAL_DATA)
    usable = [s for s in samples if (s.born is not None if kind == "born" else s.forces is not None)]
    assert usable, f"{REAL_DATA} has no {kind} labels"
    settings = dict(TINY, max_epochs=5, cutoff=4.5)
    if kind == "potential":
        # real DFT forces of a single cell: 1e-2 overshoots from the first Adam step (as the demo
        # config's 2e-3 suggests); 1e-3 is the stable order of magnitude
        settings["learning_rate"] = 1e-3
    else:
        # two real DFPT cells give one optimiser step per epoch: 1e-2 oscillates, 3e-3 needs ~20 steps
        settings.update(learning_rate=3e-3, max_epochs=20)
    _, history = train_model(kind, usable, usable, settings, tmp_path / f"{kind}.pt", seed=0,
                             species=dataset_species(samples), progress=False)
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]


LI2O = Path(__file__).resolve().parent / "data" / "qe" / "efield_li2o"
BETA16 = Path(__file__).resolve().parent / "data" / "qe" / "beta_rattled16_gamma"


def real_qe_frames():
    """Real QE 6.7 labels from the DFT stage's test data (see tests/data/qe/PROVENANCE.md).

    Li2O (P1, k 2x2x4): SCF + DFPT. beta-Li3PO4 16 atoms rattled (Γ only): SCF labels only —
    its DFPT breaks the sum rule by 1.9 e, a QC rejection, so it carries no born_charges.
    """
    from bornfield.dft import read_ph_output, read_pw_output

    frames = []
    for directory, with_born in ((LI2O, True), (BETA16, False)):
        if not (directory / "pw.out").exists():
            continue
        pw = read_pw_output(directory / "pw.out")
        atoms = read(directory / "structure.extxyz")
        atoms.info.update(energy=pw.energy, stress=np.asarray(pw.stress), config_type=directory.name)
        atoms.arrays["forces"] = np.asarray(pw.forces)
        if with_born:
            ph = read_ph_output(directory / "ph.out")
            atoms.arrays["born_charges"] = np.asarray(ph.born_charges_raw).reshape(len(atoms), 9)
        frames.append(atoms)
    return frames


@pytest.mark.skipif(not (LI2O / "ph.out").exists(), reason=f"real QE test output not available ({LI2O})")
@pytest.mark.parametrize("kind", ["potential", "born"])
def test_training_lowers_loss_on_real_qe_labels(tmp_path, kind):
    """Real pw.x/ph.x output (QE 6.7) of the DFT stage's tests: Li2O and, if present, beta-Li3PO4."""
    from bornfield.dft import read_ph_output

    path = tmp_path / "real.extxyz"
    write(path, real_qe_frames(), format="extxyz")
    samples = read_samples(path)
    li2o = samples[0]
    assert np.abs(li2o.born.sum(axis=0)).max() < 1e-12  # ASR-corrected target
    np.testing.assert_allclose(li2o.born, read_ph_output(LI2O / "ph.out").born_charges, atol=2e-3)
    assert all(s.born is None for s in samples[1:])
    # few structures = one optimiser step per epoch; forces up to 58 eV/Å need a gentle rate
    steps, rate, channels = {"potential": (30, 0.002, 4), "born": (60, 0.01, 8)}[kind]
    settings = dict(TINY, max_epochs=steps, cutoff=4.0, learning_rate=rate, channels=channels, stress_weight=10.0)
    _, history = train_model(kind, samples, samples, settings, tmp_path / f"{kind}.pt", seed=0,
                             species=dataset_species(samples), progress=False)
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]


def test_cli_train_evaluate_select(dataset, tmp_path):
    settings = json.dumps({"train": {
        "cutoff": 4.0,
        "split": {"val_fraction": 0.2, "test_fraction": 0.2},
        "potential": {"committee": 2, "channels": 4, "hidden": 16, "radial_hidden": 16, "max_epochs": 2, "batch_size": 4},
        "born": {"committee": 2, "channels": 4, "hidden": 16, "radial_hidden": 16, "max_epochs": 2, "batch_size": 4},
    }})
    outdir = tmp_path / "gen0"
    assert main(["train", "split", "--settings", settings, "--seed", "7", "--dataset", str(dataset), "--output", str(outdir / "split.json")]) == 0
    for kind in ("potential", "born"):
        for member in (0, 1):
            assert main(["train", kind, "--settings", settings, "--seed", "7", "--dataset", str(dataset),
                         "--output-dir", str(outdir), "--member", str(member), "--no-progress"]) == 0
    assert main(["train", "born", "--settings", settings, "--seed", "7", "--dataset", str(dataset),
                 "--output-dir", str(outdir), "--member", "2", "--no-progress"]) == 2  # outside the committee
    pots = [str(outdir / f"potential_{i}.pt") for i in (0, 1)]
    borns = [str(outdir / f"born_{i}.pt") for i in (0, 1)]
    report = tmp_path / "evaluation.json"
    assert main(["train", "evaluate", "--dataset", str(dataset), "--split", str(outdir / "split.json"),
                 "--potential", *pots, "--born", *borns, "--output", str(report)]) == 0
    all_records = json.loads(report.read_text())
    records = {r["metric"]: r for r in all_records if not r["system"].endswith("-member-0")}
    # member 0 drives field MD: its own errors are recorded beside the committee's, equal to evaluating it alone
    alone = tmp_path / "member0.json"
    assert main(["train", "evaluate", "--dataset", str(dataset), "--split", str(outdir / "split.json"),
                 "--potential", pots[0], "--born", borns[0], "--output", str(alone)]) == 0
    single = json.loads(alone.read_text())
    assert {r["system"] for r in single} == {"bornfield-potential", "bornfield-born"}  # no member rows for one model
    for system in ("bornfield-potential", "bornfield-born"):
        member = {r["metric"]: r["value"] for r in all_records if r["system"] == f"{system}-member-0"}
        expected = {r["metric"]: r["value"] for r in single if r["system"] == system}
        assert member.keys() == expected.keys() and member == pytest.approx(expected, rel=1e-12)
    assert records["force_rmse_meV_per_A"]["value"] != pytest.approx(
        next(r["value"] for r in all_records if r["system"] == "bornfield-potential-member-0"
             and r["metric"] == "force_rmse_meV_per_A"), rel=1e-9)
    for key in ("bec_rmse_e", "bec_rmse_offdiag_e", "bec_rmse_e_Li", "force_rmse_meV_per_A", "energy_rmse_meV_per_atom"):
        assert np.isfinite(records[key]["value"]) and records[key]["split"] == "test"
    assert records["bec_asr_max_abs_e"]["value"] < 1e-5
    # the signed energy error is predicted - reference: raising every reference energy by 2 meV/atom
    # lowers it by 2 and leaves the RMSE of a constant shift consistent with it
    from dataclasses import replace

    from bornfield.models import load_potential
    from bornfield.train.metrics import potential_metrics

    committee = [load_potential(p, dtype=torch.float64) for p in pots]
    samples = read_samples(dataset)
    base, _ = potential_metrics(committee, samples)
    shifted, _ = potential_metrics(committee, [replace(s, energy=s.energy + 0.002 * s.n_atoms) for s in samples])
    assert base["energy_mean_error_meV_per_atom"] - shifted["energy_mean_error_meV_per_atom"] == pytest.approx(2.0, abs=1e-9)
    assert abs(base["energy_mean_error_meV_per_atom"]) <= base["energy_mae_meV_per_atom"] + 1e-12
    assert records["energy_mean_error_meV_per_atom"]["unit"] == "meV/atom"
    assert np.isfinite(records["force_error_spread_ratio"]["value"]) and records["force_error_spread_ratio"]["unit"] == "1"
    selected = tmp_path / "selected.extxyz"
    assert main(["train", "select", "--candidates", str(dataset), "--potential", *pots, "--born", *borns,
                 "--select-per-generation", "3", "--min-frame-gap", "0", "--output", str(selected), "--report-json", str(tmp_path / "sel.json")]) == 0
    frames = read(selected, index=":")
    assert len(frames) == 3 and "born_charges" not in frames[0].arrays and "al_score" in frames[0].info
    scores = json.loads((tmp_path / "sel.json").read_text())["scores"]
    assert min(f.info["al_score"] for f in frames) >= sorted(scores)[-3] - 1e-12


def test_committee_calibration_reads_error_against_spread():
    from bornfield.train.metrics import committee_calibration

    rng = np.random.default_rng(3)
    spread = np.abs(rng.normal(size=(50, 3))) + 0.01
    calibrated = committee_calibration(2.0 * spread, spread)
    assert calibrated["force_error_spread_ratio"] == pytest.approx(2.0)
    assert calibrated["force_error_spread_spearman"] == pytest.approx(1.0)
    assert calibrated["force_spread_rms_meV_per_A"] == pytest.approx(1000.0 * np.sqrt(np.mean(spread**2)))
    unrelated = committee_calibration(rng.permutation(spread), spread)
    assert abs(unrelated["force_error_spread_spearman"]) < 0.4


def test_selection_is_greedy_and_decorrelated():
    frames = synthetic_frames(6)
    for k, atoms in enumerate(frames):
        atoms.info["trajectory"] = "a" if k < 4 else "b"
        atoms.info["frame"] = k
    scores = np.array([1.0, 5.0, 4.9, 0.5, 3.0, 0.1])
    assert select_candidates(frames, scores, 3, min_frame_gap=0) == [1, 2, 4]
    # frames 1 and 2 of trajectory "a" are too close: the next best elsewhere is taken
    assert select_candidates(frames, scores, 3, min_frame_gap=2) == [1, 3, 4]


def test_charged_cells_train_on_forces_only(dataset):
    from bornfield.train.data import attach_edges
    from bornfield.train.trainer import batch_loss, initialise_model

    samples = read_samples(dataset)[:4]
    species = dataset_species(samples)
    model = initialise_model("potential", species, 4.0, TINY, samples, seed=0)
    attach_edges(samples, species, 4.0)
    weights = {"energy": 1.0, "forces": 1.0, "stress": 0.0, "charged_energies": 0.0}
    samples[1].charge = -1.0
    reference = batch_loss(model, samples, weights, training=False)[0].detach()
    samples[1].energy += 1000.0  # a charged cell's energy label must not matter
    shifted, parts = batch_loss(model, samples, weights, training=False)
    shifted = shifted.detach()
    assert float(shifted) == pytest.approx(float(reference), rel=1e-6)
    assert "energy_mse" in parts
    with_charged_energies = batch_loss(model, samples, dict(weights, charged_energies=1.0), training=False)[0].detach()
    assert float(with_charged_energies) > float(reference) + 1.0


def test_candidates_from_md_trajectory(tmp_path):
    """traj.h5 frames (architecture doc format) become candidates with trajectory/frame info."""
    import h5py

    from bornfield.train.select import read_candidates

    atoms = beta()
    frames = 6
    path = tmp_path / "traj.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["format"] = "bornfield-traj"
        handle.attrs["version"] = 1
        handle["numbers"] = atoms.numbers.astype(np.int32)
        handle["cell"] = np.asarray(atoms.cell)
        handle["step"] = np.arange(frames, dtype=np.int64) * 10
        handle["positions"] = np.stack([atoms.positions + 0.01 * t for t in range(frames)])
    candidates = read_candidates([path], stride=2)
    assert [c.info["frame"] for c in candidates] == [0, 2, 4]
    assert candidates[1].info["step"] == 20 and candidates[1].info["trajectory"] == str(path)
    np.testing.assert_allclose(candidates[2].positions, atoms.positions + 0.04)
    bad = tmp_path / "other.h5"
    with h5py.File(bad, "w") as handle:
        handle["x"] = [1]
    with pytest.raises(InputFileError, match="not a bornfield trajectory"):
        read_candidates([bad])


def test_training_is_reproducible(dataset, tmp_path):
    samples = read_samples(dataset)
    species = dataset_species(samples)
    settings = dict(TINY, max_epochs=2)
    models = [
        train_model("born", samples[:12], samples[12:16], settings, tmp_path / f"run{k}" / "born_0.pt", seed=11,
                    species=species, progress=False)[0]
        for k in range(2)
    ]
    other = train_model("born", samples[:12], samples[12:16], settings, tmp_path / "run2" / "born_0.pt", seed=12,
                        species=species, progress=False)[0]
    first, second, third = (m.state_dict() for m in (*models, other))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], third[k]) for k in first)


def test_exploration_md_gives_labelled_free_snapshots(tmp_path):
    """Langevin MD with (untrained) committees: snapshots carry trajectory metadata and the parent's charge."""
    from bornfield.calculators import FieldCalculator
    from bornfield.models import create_random_model_file
    from bornfield.train.explore import ExplorationSettings, explore

    small = {"channels": 4, "hidden": 16, "radial_hidden": 16}
    pots = [create_random_model_file("potential", ["Li", "P", "O"], 4.0, tmp_path / f"p{i}.pt", seed=i, **small) for i in range(2)]
    borns = [create_random_model_file("born", ["Li", "P", "O"], 4.0, tmp_path / f"b{i}.pt", seed=i,
                                      mean_charges={"Li": 1.0, "P": 3.3, "O": -1.8}, **small) for i in range(2)]
    parent = beta()
    parent.info.update(structure_id="beta_0", config_type="beta", charge=-1.0)
    settings = ExplorationSettings(temperatures_K=[300.0], fields_V_per_A=[0.0, 0.1], field_axis=0, steps=6,
                                   sample_interval=2, timestep_fs=0.5, friction_per_fs=0.01, max_structures=1,
                                   max_force_eV_per_A=50.0, min_distance_A=0.5)
    snapshots, records = explore([parent], FieldCalculator(pots, borns), settings, seed=0, progress=False)
    assert len(records) == 2 and all(r["stopped"] is None for r in records)
    assert len(snapshots) == 6
    assert {s.info["trajectory"] for s in snapshots} == {"beta_0_T300_E0", "beta_0_T300_E0.1"}
    assert all(s.info["charge"] == -1.0 and s.info["config_type"] == "al_beta" for s in snapshots)
    assert not np.allclose(snapshots[0].positions, parent.positions)
    strict = ExplorationSettings(**{**settings.__dict__, "min_distance_A": 5.0})
    _, stopped = explore([parent], FieldCalculator(pots, borns), strict, seed=0, progress=False)
    assert all("too close at step 2" in r["stopped"] for r in stopped)


def test_exploration_max_atoms_keeps_small_cells_only(tmp_path):
    """``max_atoms`` bounds the size (hence the DFT cost) of the cells that start an exploration."""
    from bornfield.calculators import FieldCalculator
    from bornfield.errors import ConfigError
    from bornfield.models import create_random_model_file
    from bornfield.train.explore import ExplorationSettings, explore

    small = {"channels": 4, "hidden": 16, "radial_hidden": 16}
    pot = create_random_model_file("potential", ["Li", "P", "O"], 4.0, tmp_path / "p.pt", seed=0, **small)
    born = create_random_model_file("born", ["Li", "P", "O"], 4.0, tmp_path / "b.pt", seed=0,
                                    mean_charges={"Li": 1.0, "P": 3.3, "O": -1.8}, **small)
    cell16, cell32 = beta(), beta().repeat((2, 1, 1))
    cell16.info.update(structure_id="small", config_type="beta")
    cell32.info.update(structure_id="large", config_type="beta")
    settings = ExplorationSettings(temperatures_K=[300.0], fields_V_per_A=[0.0], field_axis=0, steps=2,
                                   sample_interval=2, timestep_fs=0.5, friction_per_fs=0.01, max_structures=2,
                                   max_force_eV_per_A=50.0, min_distance_A=0.5, max_atoms=16)
    snapshots, records = explore([cell32, cell16], FieldCalculator([pot], [born]), settings, seed=0, progress=False)
    assert len(records) == 1 and {len(s) for s in snapshots} == {16}
    with pytest.raises(ConfigError, match="max_atoms = 8"):
        explore([cell32, cell16], FieldCalculator([pot], [born]), ExplorationSettings(**{**settings.__dict__, "max_atoms": 8}),
                seed=0, progress=False)


def test_predefined_split_is_honoured(tmp_path, capsys):
    """info['split'] of the dataset, or a user split file, is the split: not recomputed, stored in split.json."""
    frames = synthetic_frames(10, seed=2)
    labels = ["train", "val", "test", "train", "train", "test", "val", "train", "train", "train"]
    for frame, label in zip(frames, labels):
        frame.info["split"] = label
    data = tmp_path / "split_key.extxyz"
    write(data, frames, format="extxyz")
    settings = json.dumps({"train": {"cutoff": 4.0, "born": dict({k: v for k, v in TINY.items() if k in (
        "channels", "n_basis", "radial_hidden", "hidden", "batch_size")}, committee=1, max_epochs=1, interactions=1)}})
    common = ["--settings", settings, "--seed", "3", "--dataset", str(data), "--no-progress"]
    assert main(["train", "born", *common, "--output-dir", str(tmp_path / "key")]) == 0
    split = json.loads((tmp_path / "key" / "split.json").read_text())
    for name in ("train", "val", "test"):
        assert split[name] == [k for k, label in enumerate(labels) if label == name]
    assert split["source"] == "dataset info['split']"
    # a split file wins over the key
    user = {"train": [0, 1, 2, 3, 4, 5], "val": [6, 7], "test": [8, 9]}
    (tmp_path / "mine.json").write_text(json.dumps(user))
    assert main(["train", "born", *common, "--output-dir", str(tmp_path / "file"),
                 "--split-file", str(tmp_path / "mine.json")]) == 0
    split = json.loads((tmp_path / "file" / "split.json").read_text())
    assert {k: split[k] for k in user} == user
    model = torch.load(tmp_path / "file" / "born_0.pt", weights_only=True)
    assert model["metadata"]["n_train_structures"] == 6 - sum(k % 4 == 3 for k in user["train"])
    # a key without validation structures (the ledger's train/test): validation comes from its train frames
    ledger_like = [f.copy() for f in frames]
    for frame, label in zip(ledger_like, labels):
        frame.info["split"] = "test" if label == "test" else "train"
    write(tmp_path / "ledger_like.extxyz", ledger_like, format="extxyz")
    ledger_settings = json.dumps({"train": {**json.loads(settings)["train"], "split": {"val_fraction": 0.25}}})
    assert main(["train", "born", "--settings", ledger_settings, "--seed", "3", "--dataset",
                 str(tmp_path / "ledger_like.extxyz"), "--no-progress", "--output-dir", str(tmp_path / "ledger")]) == 0
    split = json.loads((tmp_path / "ledger" / "split.json").read_text())
    assert split["test"] == [2, 5] and len(split["val"]) == 2
    assert sorted(split["train"] + split["val"]) == [k for k, label in enumerate(labels) if label != "test"]
    # evaluate takes the subset from the key
    assert main(["train", "evaluate", "--dataset", str(data), "--split-key", "--subset", "test",
                 "--born", str(tmp_path / "key" / "born_0.pt"), "--output", str(tmp_path / "eval.json")]) == 0
    records = json.loads((tmp_path / "eval.json").read_text())
    assert {r["n_structures"] for r in records} == {2}
    # a key on some frames only, a bad value, a bad file: clear errors
    frames[3].info.pop("split")
    write(data, frames, format="extxyz")
    assert main(["train", "born", *common, "--output-dir", str(tmp_path / "partial")]) != 0
    assert "not on structure(s) [3]" in capsys.readouterr().err
    frames[3].info["split"] = "holdout"
    write(data, frames, format="extxyz")
    assert main(["train", "born", *common, "--output-dir", str(tmp_path / "bad")]) != 0
    assert "holdout" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"train": [0, 1], "test": [1, 12]}))
    assert main(["train", "born", *common, "--output-dir", str(tmp_path / "badfile"),
                 "--split-file", str(tmp_path / "bad.json")]) != 0
    assert "outside 0..9" in capsys.readouterr().err


def test_validation_carved_from_a_ledger_split_takes_dfpt_rows_in_their_own_proportion(tmp_path):
    """The ledger's train rows: validation takes round(n f) of the rows with Born labels and of those without,
    the same rows whatever the file order; config_type groups do not each round up into the scarce DFPT rows."""
    frames = synthetic_frames(16, seed=5)
    for k, frame in enumerate(frames):
        frame.info.update(dft_id=f"entry{k:02d}", config_type=f"family{k % 4}")  # config_type groups of 4
    write(tmp_path / "a.extxyz", frames, format="extxyz")
    write(tmp_path / "b.extxyz", frames[::-1], format="extxyz")
    samples = read_samples([tmp_path / "a.extxyz"])
    with_born = [s.index for s in samples if s.born is not None]
    carved = carve_validation(samples, [s.index for s in samples], 0.15, seed=7)
    assert len(with_born) == 12 and len([i for i in carved["val"] if i in with_born]) == 2  # round(12 * 0.15)
    assert len([i for i in carved["val"] if i not in with_born]) == 1  # round(4 * 0.15)
    assert sorted(carved["train"] + carved["val"]) == list(range(16))
    by_config_type = stratified_split(samples, 0.15, 0.0, seed=7)  # the carve before: one row of each group of 4
    assert len([i for i in by_config_type["val"] if i in with_born]) > 2
    reversed_samples = read_samples([tmp_path / "b.extxyz"])
    again = carve_validation(reversed_samples, [s.index for s in reversed_samples], 0.15, seed=7)
    names = lambda rows, idx: sorted(rows[i].atoms.info["dft_id"] for i in idx)  # noqa: E731
    assert names(reversed_samples, again["val"]) == names(samples, carved["val"])
    one = carve_validation(samples, with_born[:1], 0.5, seed=7)
    assert one == {"train": with_born[:1], "val": []}  # a group keeps at least one training row
    # config types kept out of validation stay in training; the others are carved as before
    kept = carve_validation(samples, [s.index for s in samples], 0.5, seed=7, val_exclude=["family1"])
    family1 = [s.index for s in samples if s.config_type == "family1"]
    assert set(family1) <= set(kept["train"]) and not set(family1) & set(kept["val"])
    assert sorted(kept["train"] + kept["val"]) == list(range(16)) and len(kept["val"]) == 6  # round(9/2) + round(3/2)
    by_type = stratified_split(samples, 0.5, 0.0, seed=7, val_exclude=["family1"])
    assert not set(family1) & set(by_type["val"]) and len(by_type["val"]) == 6


def test_warmup_and_clipping_catch_a_diverging_run(tmp_path):
    """A hostile set (stiff forces x30, learning rate 0.05): plain Adam blows the loss up, the default schedule does not."""
    frames = synthetic_frames(10, seed=5)
    for frame in frames:
        frame.arrays["forces"] *= 30
        frame.info["energy"] *= 30
    write(tmp_path / "hostile.extxyz", frames, format="extxyz")
    samples = read_samples(tmp_path / "hostile.extxyz")
    species = dataset_species(samples)
    runs = {}
    for name, schedule in (("plain", {}), ("default", {"warmup_epochs": 5, "grad_clip": 10.0, "ema_decay": 0.99})):
        settings = dict(TINY, max_epochs=8, learning_rate=0.05, patience=100, **schedule)
        _, runs[name] = train_model("potential", samples[:8], samples[8:], settings, tmp_path / f"{name}.pt",
                                    seed=1, species=species, resume=False, progress=False)
    start = runs["default"][0]["val_loss"]  # about the untrained model's loss (tiny first warm-up steps)
    assert max(row["val_loss"] for row in runs["plain"]) > 1000 * start
    assert all(np.isfinite(row["val_loss"]) and row["val_loss"] < 10 * start for row in runs["default"])
    assert min(row["val_loss"] for row in runs["default"]) < 0.7 * start
    assert all(row["train_grad_norm"] > 10.0 for row in runs["default"])  # clipping was active


def test_log_reports_the_best_epoch(dataset, tmp_path, caplog):
    """The final log line and the model file name the best epoch and its validation loss, not the last epoch's."""
    import csv
    import logging

    settings = json.dumps({"train": {"cutoff": 4.0, "born": {
        "committee": 1, "channels": 4, "n_basis": 6, "radial_hidden": 16, "hidden": 16, "max_epochs": 12,
        "learning_rate": 0.05, "patience": 2, "warmup_epochs": 0, "ema_decay": 0, "interactions": 1}}})
    with caplog.at_level(logging.INFO, logger="bornfield.train"):
        assert main(["train", "born", "--settings", settings, "--seed", "3", "--dataset", str(dataset),
                     "--output-dir", str(tmp_path), "--no-progress"]) == 0
    rows = list(csv.DictReader((tmp_path / "born_0.metrics.csv").open()))
    losses = [float(r["val_loss"]) for r in rows]
    best = int(np.argmin(losses))
    assert len(losses) < 12 and best == len(losses) - 3  # early stop after 2 epochs without improvement
    line = next(r.getMessage() for r in caplog.records if "wrote" in r.getMessage())
    assert f"best epoch {best} of {len(losses)}" in line and f"{losses[best]:.4g}" in line
    meta = torch.load(tmp_path / "born_0.pt", weights_only=True)["metadata"]
    assert meta["best_epoch"] == best and meta["best_monitor_loss"] == pytest.approx(losses[best])


def test_fine_tuning_starts_from_the_given_model_with_refitted_reference_energies(dataset, tmp_path):
    from bornfield.models.graph import collate
    from bornfield.train.data import attach_edges
    from bornfield.errors import ConfigError
    from bornfield.train.trainer import fine_tuning_start

    samples = read_samples(dataset)
    species = dataset_species(samples)
    pretrained, _ = train_model("potential", samples[:18], samples[18:], dict(TINY, max_epochs=3), tmp_path / "pre.pt",
                                seed=3, species=species, metadata={"training_data_hash": "a"}, progress=False)
    # the same structures labelled by "another code": energies shifted by a constant per element
    shift = {"Li": -7.0, "P": 2.5, "O": 0.75}
    other = read_samples(dataset)
    for s in other:
        s.energy += sum(shift[x] for x in s.atoms.get_chemical_symbols())
    start = fine_tuning_start(pretrained, "potential", species, other[:18], torch.float32)
    attach_edges(other, species, start.cutoff)
    graph = collate([s.edges for s in other[18:]], torch.float32)
    before, after = pretrained(graph), start(graph)
    assert torch.allclose(after["forces"], before["forces"])  # weights kept
    # the reference energies absorb the shift: the starting energy error is the pre-trained one
    shifted = torch.tensor([s.energy for s in other[18:]], dtype=torch.float64)
    original = shifted - torch.tensor([sum(shift[x] for x in s.atoms.get_chemical_symbols()) for s in other[18:]])
    err_start = (after["energy"] - shifted).abs().max()
    err_pretrained = (before["energy"] - original).abs().max()
    assert float(err_start) < float(err_pretrained) + 0.05 * len(other[18].atoms)
    assert float((before["energy"] - shifted).abs().max()) > 10.0  # without the re-fit it would be far off
    # training from it continues from the pre-trained state, not from a random model
    model, history = train_model("potential", other[:18], other[18:], dict(TINY, max_epochs=1), tmp_path / "fine.pt",
                                 seed=3, species=species, metadata={"training_data_hash": "b"}, progress=False,
                                 init_model=pretrained)
    _, fresh = train_model("potential", other[:18], other[18:], dict(TINY, max_epochs=1), tmp_path / "fresh.pt",
                           seed=3, species=species, metadata={"training_data_hash": "b"}, progress=False)
    assert history[0]["val_loss"] < fresh[0]["val_loss"]
    assert model.metadata["trained"] is True
    with pytest.raises(ConfigError, match="fine-tuning a 'born' model"):
        fine_tuning_start(pretrained, "born", species, other[:18], torch.float32)


def test_pretrain_command_trains_on_the_configured_set_and_fine_tuning_records_it(dataset, tmp_path, capsys):
    import json

    import yaml

    from bornfield.models.io import load_model

    config = tmp_path / "config.yaml"
    potential = {k: v for k, v in TINY.items() if k not in ("cutoff", "dtype", "interactions")}
    potential.update(max_epochs=2, committee=2, pretrain={"dataset": str(dataset), "max_epochs": 1, "batch_size": 3})
    config.write_text(yaml.safe_dump({"train": {"cutoff": 4.0, "potential": potential}}))
    assert main(["train", "pretrain", "--config", str(config), "--output-dir", str(tmp_path / "pre"),
                 "--member", "1", "--no-progress"]) == 0
    pretrained = load_model(tmp_path / "pre" / "potential_1.pt")
    assert pretrained.metadata["pretraining"] is True
    assert pretrained.metadata["training_data"] == [str(dataset)]
    split = json.loads((tmp_path / "pre" / "split.json").read_text())
    assert split["test"] == [] and split["val"] and len(split["train"]) + len(split["val"]) == 24
    assert main(["train", "potential", "--config", str(config), "--dataset", str(dataset), "--output-dir",
                 str(tmp_path / "fine"), "--member", "1", "--init-model", str(tmp_path / "pre" / "potential_1.pt"),
                 "--no-progress"]) == 0
    fine = load_model(tmp_path / "fine" / "potential_1.pt")
    assert fine.metadata["initial_model"]["training_data"] == [str(dataset)]
    assert len(fine.metadata["initial_model"]["sha256"]) == 64
    assert main(["train", "pretrain", "--config", str(config), "--output-dir", str(tmp_path / "pre"), "--member", "2"]) == 2
    assert "--member 2 is outside the committee" in capsys.readouterr().err
    config.write_text(yaml.safe_dump({"train": {"cutoff": 4.0, "potential": dict(potential, pretrain={})}}))
    assert main(["train", "pretrain", "--config", str(config), "--output-dir", str(tmp_path / "pre2")]) == 2
    assert "train.potential.pretrain.dataset is empty" in capsys.readouterr().err


def test_stage_two_continues_from_stage_one_at_its_energy_weight_and_pretraining_stays_one_stage(dataset, tmp_path):
    import yaml

    from bornfield.models.io import load_model
    from bornfield.train.data import file_sha256
    from bornfield.train.trainer import stage_settings

    potential = {k: v for k, v in TINY.items() if k not in ("cutoff", "dtype", "interactions")}
    potential.update(max_epochs=3, committee=1, energy_weight=0.5,
                     stage_two={"epochs": 2, "energy_weight": 20.0, "learning_rate": 0.0003, "warmup_epochs": 0},
                     pretrain={"dataset": str(dataset), "max_epochs": 1, "batch_size": 3, "energy_weight": 7.0})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"train": {"cutoff": 4.0, "potential": potential}}))
    assert main(["train", "pretrain", "--config", str(config), "--output-dir", str(tmp_path / "pre"),
                 "--no-progress"]) == 0
    pre = load_model(tmp_path / "pre" / "potential_0.pt")
    assert pre.metadata["train_settings"]["energy_weight"] == 7.0 and pre.metadata["epochs_run"] == 1
    assert not (tmp_path / "pre" / "potential_0.stage_one.pt").exists()
    assert main(["train", "potential", "--config", str(config), "--dataset", str(dataset), "--output-dir",
                 str(tmp_path / "two"), "--init-model", str(tmp_path / "pre" / "potential_0.pt"), "--no-progress"]) == 0
    one = load_model(tmp_path / "two" / "potential_0.stage_one.pt")
    two = load_model(tmp_path / "two" / "potential_0.pt")
    assert one.metadata["train_settings"]["energy_weight"] == 0.5 and one.metadata["epochs_run"] <= 3
    assert two.metadata["train_settings"]["energy_weight"] == 20.0
    assert two.metadata["train_settings"]["learning_rate"] == 0.0003
    assert two.metadata["train_settings"]["lr_schedule"] == "cosine" and two.metadata["epochs_run"] == 2
    assert two.metadata["stage_one"]["best_epoch"] == one.metadata["best_epoch"]
    assert two.metadata["stage_one"]["sha256"] == file_sha256(tmp_path / "two" / "potential_0.stage_one.pt")
    assert two.metadata["initial_model"]["sha256"] == file_sha256(tmp_path / "pre" / "potential_0.pt")
    # stage two starts from stage one's best weights: its first epoch's force error is stage one's best,
    # moved by one epoch at a small learning rate
    import csv
    with open(tmp_path / "two" / "potential_0.stage_one.metrics.csv") as handle:
        rows_one = list(csv.DictReader(handle))
    with open(tmp_path / "two" / "potential_0.metrics.csv") as handle:
        rows_two = list(csv.DictReader(handle))
    assert len(rows_two) == 2
    best_one = float(rows_one[one.metadata["best_epoch"]]["val_forces_mse"])
    assert float(rows_two[0]["val_forces_mse"]) == pytest.approx(best_one, rel=0.3)
    first, second = stage_settings(dict(potential, cutoff=4.0, dtype="float32"))
    assert "stage_two" not in first and second["max_epochs"] == second["patience"] == 2
    assert stage_settings({**first, "stage_two": {"epochs": 0}})[1] is None


def test_a_run_that_stopped_early_resumes_without_training_more(dataset, tmp_path):
    samples = read_samples(dataset)
    train, val = samples[:18], samples[18:]
    species = dataset_species(samples)
    # learning rate 0: no epoch improves on the first, so patience 2 stops the run after epoch 2
    settings = dict(TINY, max_epochs=20, patience=2, learning_rate=0.0, min_lr=0.0)
    _, history = train_model("potential", train, val, settings, tmp_path / "p.pt", seed=3, species=species,
                             metadata={"training_data_hash": "h"}, progress=False)
    assert len(history) == 3
    _, again = train_model("potential", train, val, settings, tmp_path / "p.pt", seed=3, species=species,
                           metadata={"training_data_hash": "h"}, progress=False)
    assert again == history  # nothing trained again
    # a cosine run given more epochs is another run (its learning rate differs at every epoch): afresh
    cosine = dict(TINY, max_epochs=3, lr_schedule="cosine", warmup_epochs=0)
    _, short = train_model("potential", train, val, cosine, tmp_path / "c.pt", seed=3, species=species,
                           metadata={"training_data_hash": "h"}, progress=False)
    _, long = train_model("potential", train, val, dict(cosine, max_epochs=5), tmp_path / "c.pt", seed=3,
                          species=species, metadata={"training_data_hash": "h"}, progress=False)
    assert len(long) == 5 and long[1]["lr"] > short[1]["lr"]
    # a larger patience (a resumable setting) continues the stopped run
    _, longer = train_model("potential", train, val, dict(settings, patience=5), tmp_path / "p.pt", seed=3,
                            species=species, metadata={"training_data_hash": "h"}, progress=False)
    assert len(longer) == 6 and longer[:3] == history
    # a run that stopped because its plateau schedule went below min_lr does not resume either
    low = dict(TINY, max_epochs=20, learning_rate=1e-9)
    _, first = train_model("potential", train, val, low, tmp_path / "q.pt", seed=3, species=species,
                           metadata={"training_data_hash": "h"}, progress=False)
    assert len(first) == 1
    _, second = train_model("potential", train, val, low, tmp_path / "q.pt", seed=3, species=species,
                            metadata={"training_data_hash": "h"}, progress=False)
    assert second == first
