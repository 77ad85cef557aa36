"""The potential's Pedone pair baseline fitted to DFT forces (`train fit-baseline`, baseline: pedone_fitted)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from ase.io import write

from bornfield.cli import main
from bornfield.errors import ConfigError
from bornfield.models.baseline import pedone_baseline
from bornfield.models.io import load_model
from bornfield.models.graph import collate
from bornfield.train.data import attach_edges, read_samples
from bornfield.train.pair_baseline import _evaluate, _with_parameters, fit_pedone_baseline
from bornfield.train.trainer import potential_baseline
from test_train import TINY, beta

SPECIES = ["Li", "O", "P"]
CUTOFF, ALPHA = 6.0, 0.3
TRUE = np.array([0.8, 2.60, 1.75, 3.50])  # charge scale, r0 of Li-O, P-O, O-O (Å)


def frames_of_a_known_baseline(n: int, tmp_path, seed: int = 0, noise: float = 0.0, truth=None,
                               amplitude: float = 0.08, references: dict[str, float] | None = None):
    """Rattled 2x1x1 beta cells whose forces (eV/Å) are a Pedone baseline (``truth``, default: scaled charges
    and shifted r0 of TRUE) plus Gaussian noise; energies random, or with ``references`` (eV per atom of each
    species) the baseline's energy plus the references. Written to ``tmp_path``/data.extxyz; returns the
    path and the true baseline."""
    rng = np.random.default_rng(seed)
    truth = truth or _with_parameters(pedone_baseline(CUTOFF, ALPHA), TRUE)
    frames = []
    for _ in range(n):
        atoms = beta().repeat((2, 1, 1))
        atoms.positions += rng.normal(0, amplitude, atoms.positions.shape)
        atoms.info.update(energy=float(rng.normal(0, 0.1)), config_type="beta")
        atoms.arrays["forces"] = np.zeros((len(atoms), 3))
        frames.append(atoms)
    path = tmp_path / "data.extxyz"
    write(path, frames, format="extxyz")
    samples = read_samples(path)
    attach_edges(samples, SPECIES, CUTOFF)
    for atoms, sample in zip(frames, samples):
        energy, forces = _evaluate(truth, SPECIES, [collate([sample.edges], torch.float64)])
        atoms.arrays["forces"] = forces + rng.normal(0, noise, forces.shape)
        if references is not None:
            atoms.info["energy"] = float(energy[0]) + sum(references[s] for s in atoms.get_chemical_symbols())
    write(path, frames, format="extxyz")
    return path, truth


def test_fit_recovers_the_charge_scale_and_bond_lengths_of_a_known_baseline(tmp_path):
    path, _ = frames_of_a_known_baseline(6, tmp_path)
    fitted = fit_pedone_baseline(read_samples(path), SPECIES, CUTOFF, ALPHA, "known baseline")
    assert fitted["fit"]["charge_scale"] == pytest.approx(TRUE[0], abs=1e-4)
    assert [v[2] for v in fitted["pairs"].values()] == pytest.approx(list(TRUE[1:]), abs=1e-4)
    published = pedone_baseline(CUTOFF, ALPHA)
    for name, values in fitted["pairs"].items():  # the short-range walls keep their published stiffness
        assert values[0] == published["pairs"][name][0] and values[1] == published["pairs"][name][1]
    assert sum(fitted["charges"][s] * n for s, n in (("Li", 3), ("P", 1), ("O", 4))) == pytest.approx(0, abs=1e-12)
    assert fitted["fit"]["force_rmse_eV_per_A_after"]["all"] < 1e-4 < fitted["fit"]["force_rmse_eV_per_A_before"]["all"]
    assert fitted["name"] == published["name"] and fitted["cutoff"] == CUTOFF


def test_fit_recovers_a_born_mayer_wall_from_forces_and_energies(tmp_path):
    """Labels made by a baseline with a Li-Li wall A exp(-r/rho), energies shifted by per-species references:
    the force-and-energy fit recovers charge scale, r0, A and rho; its energy error falls to ~0."""
    wall = (40.0, 0.45)
    truth = _with_parameters(pedone_baseline(CUTOFF, ALPHA), np.r_[TRUE, wall], ["Li-Li"])
    assert truth["pairs"]["Li-Li"] == [0.0, 1.0, 1.0, 0.0, *wall]
    references = {"Li": -190.3, "O": -420.7, "P": -180.2}  # eV per atom, as DFT totals would carry
    path, _ = frames_of_a_known_baseline(6, tmp_path, seed=5, truth=truth, amplitude=0.1, references=references)
    fitted = fit_pedone_baseline(read_samples(path), SPECIES, CUTOFF, ALPHA, "known walled baseline",
                                 energy_weight=10.0, wall_pairs=["Li-Li"])
    assert fitted["fit"]["charge_scale"] == pytest.approx(TRUE[0], abs=1e-3)
    assert [fitted["pairs"][name][2] for name in ("Li-O", "P-O", "O-O")] == pytest.approx(list(TRUE[1:]), abs=1e-3)
    assert fitted["pairs"]["Li-Li"][4:] == pytest.approx(list(wall), rel=1e-2)
    assert fitted["fit"]["wall_pairs"] == {"Li-Li": fitted["pairs"]["Li-Li"][4:]}
    fit = fitted["fit"]
    assert fit["energy_rmse_meV_per_atom_after"]["all"] < 0.01 < fit["energy_rmse_meV_per_atom_before"]["all"]
    assert fit["force_rmse_eV_per_A_after"]["all"] < 1e-3 < fit["force_rmse_eV_per_A_before"]["all"]
    assert "and energies" in fitted["source"] and "Li-Li" in fitted["source"]


@pytest.mark.parametrize("pairs, weight, message", [
    (["Li-Xe"], 0.0, "not 'A-B' of the model's species"),
    (["Li-O", "O-Li"], 0.0, "names a pair twice"),
    ([], -1.0, "must be >= 0"),
])
def test_fit_refuses_bad_wall_pairs_and_weights(tmp_path, pairs, weight, message):
    path, _ = frames_of_a_known_baseline(2, tmp_path)
    with pytest.raises(ConfigError, match=message):
        fit_pedone_baseline(read_samples(path), SPECIES, CUTOFF, ALPHA, "known baseline", energy_weight=weight,
                            wall_pairs=pairs)


def test_fit_baseline_command_feeds_pretraining_and_fine_tuning_keeps_it(tmp_path, capsys):
    path, _ = frames_of_a_known_baseline(8, tmp_path, seed=1, noise=0.01)  # "DFT": the baseline plus noise
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": list(range(6)), "val": [6], "test": [7]}))
    potential = {k: v for k, v in TINY.items() if k not in ("cutoff", "dtype", "interactions")}
    potential.update(max_epochs=1, committee=1, baseline="pedone_fitted", baseline_cutoff_A=CUTOFF,
                     baseline_dsf_alpha_per_A=ALPHA, pretrain={"dataset": str(path), "max_epochs": 1, "batch_size": 4})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"train": {"cutoff": 4.0, "potential": potential}}))
    fitted_path = tmp_path / "pair_baseline.json"
    assert main(["train", "fit-baseline", "--config", str(config), "--dataset", str(path), "--split-file", str(split),
                 "--output", str(fitted_path)]) == 0
    assert "charge scale 0.8" in capsys.readouterr().out
    fitted = json.loads(fitted_path.read_text())
    assert fitted["fit"]["n_structures"] == 6 and "train rows of" in fitted["fit"]["structures"]
    # without the fitted file a pedone_fitted model is refused, with a pointer to the command
    assert main(["train", "pretrain", "--config", str(config), "--output-dir", str(tmp_path / "pre")]) == 2
    assert "--pair-baseline FILE" in capsys.readouterr().err
    assert main(["train", "pretrain", "--config", str(config), "--output-dir", str(tmp_path / "pre"),
                 "--pair-baseline", str(fitted_path), "--no-progress"]) == 0
    pre = load_model(tmp_path / "pre" / "potential_0.pt")
    assert pre.hyperparameters["baseline"] == fitted
    assert main(["train", "potential", "--config", str(config), "--dataset", str(path), "--split-file", str(split),
                 "--output-dir", str(tmp_path / "fine"), "--init-model", str(tmp_path / "pre" / "potential_0.pt"),
                 "--pair-baseline", str(fitted_path), "--no-progress"]) == 0
    assert load_model(tmp_path / "fine" / "potential_0.pt").hyperparameters["baseline"] == fitted
    # a start model with another baseline is refused rather than silently mixed
    other = dict(fitted, charges={k: v * 1.1 for k, v in fitted["charges"].items()})
    other_path = tmp_path / "other.json"
    other_path.write_text(json.dumps(other))
    assert main(["train", "potential", "--config", str(config), "--dataset", str(path), "--split-file", str(split),
                 "--output-dir", str(tmp_path / "fine2"), "--init-model", str(tmp_path / "pre" / "potential_0.pt"),
                 "--pair-baseline", str(other_path), "--no-progress"]) == 2
    assert "carries another pair baseline" in capsys.readouterr().err


def test_pedone_fitted_settings_must_match_the_fitted_file():
    settings = {"baseline": "pedone_fitted", "baseline_cutoff_A": CUTOFF, "baseline_dsf_alpha_per_A": ALPHA}
    with pytest.raises(ConfigError, match="--pair-baseline FILE"):
        potential_baseline(settings)
    fitted = _with_parameters(pedone_baseline(8.0, ALPHA), TRUE)
    with pytest.raises(ConfigError, match="refit it"):
        potential_baseline({**settings, "baseline_parameters": fitted})
    good = _with_parameters(pedone_baseline(CUTOFF, ALPHA), TRUE)
    assert potential_baseline({**settings, "baseline_parameters": good}) == good
