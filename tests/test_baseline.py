"""Physical baseline inside the NN potential (Pedone 2006 + DSF Coulomb), float64.

* the baseline equals LAMMPS (``pair_style hybrid/overlay pedone morse/smooth/linear coul/dsf``,
  tests/pedone_lammps_driver.py) on a rattled beta cell and an amorphous-like random cell:
  energy, forces, stress;
* forces = -dE/dr and stress = strain derivative (finite differences), invariances, smooth at
  the cutoff, energy conservation in NVE;
* the network sees only its own cutoff; cluster (owned + ghost) evaluation and the combined
  MD step reproduce the periodic one; model files store the baseline, old files load unchanged;
* training: reference energies and energy scale are fitted to the residual to the baseline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import units
from ase.io import write
from scipy.spatial.transform import Rotation

from bornfield.models import (
    BornCommittee,
    PotentialCommittee,
    create_model,
    load_model,
    load_potential,
    read_model_file,
    save_model,
)
from bornfield.models.baseline import COULOMB_CONSTANT, PairBaseline, pedone_baseline
from bornfield.models.combined import evaluate_cluster, evaluate_periodic
from bornfield.models.graph import build_graph
from bornfield.pedone import PEDONE_CHARGES

from test_models import SPECIES, beta_li3po4, make, strain_derivative

CUTOFF, ALPHA = 8.0, 0.22
DRIVER = Path(__file__).resolve().parent / "pedone_lammps_driver.py"


def baseline_model(seed=0, network=False, local=4.5, cutoff=CUTOFF, alpha=ALPHA):
    """NN potential with the Pedone baseline; ``network=False``: the network's output is zero (baseline only)."""
    model = make("potential", seed, cutoff=local, baseline=pedone_baseline(cutoff, alpha))
    if not network:
        model.set_energy_scale(0.0)
    return model


def args(atoms):
    return atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc


def rattled_beta(repeat=(2, 2, 2), amplitude=0.05, seed=1):
    atoms = beta_li3po4().repeat(repeat)
    atoms.rattle(amplitude, seed=seed)
    return atoms


def amorphous_like(n_atoms=64, seed=3):
    from bornfield.structures.meltquench import random_start

    return random_start(n_atoms, 2.3, seed, min_separation=1.5)


def lammps_reference(atoms, tmp_path, cutoff=CUTOFF, alpha=ALPHA, model_commands=False, hyperparameters=None):
    """Energy (eV), forces (eV/Å), stress (eV/Å^3, ASE sign) from LAMMPS (tests/pedone_lammps_driver.py);
    ``model_commands``: with the pair styles the MD's LAMMPS backend uses (coul/dsf + lepton), of
    ``hyperparameters`` if given (else the Pedone baseline)."""
    path = tmp_path / "structure.extxyz"
    write(path, atoms)
    flags = ["--model-commands"] if model_commands else []
    if hyperparameters is not None:
        (tmp_path / "baseline.json").write_text(json.dumps(hyperparameters))
        flags += ["--baseline-json", str(tmp_path / "baseline.json")]
    result = subprocess.run([sys.executable, str(DRIVER), str(path), repr(cutoff), repr(alpha), *flags],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"LAMMPS reference failed:\n{result.stderr[-3000:]}")
    out = json.loads(result.stdout)
    return out["energy"], np.array(out["forces"]), np.array(out["stress"])


@pytest.mark.parametrize("model_commands", [False, True], ids=["pedone-styles", "md-backend-styles"])
@pytest.mark.parametrize("name", ["beta", "amorphous"])
def test_baseline_equals_lammps(name, model_commands, tmp_path):
    """Within LAMMPS's own approximations: erfc by a 5-term polynomial (|error| < 1.5e-7, i.e.
    up to ~1e-4 eV per atom over the ~200 Coulomb pairs within 8 Å) and k = 14.399645 eV Å
    (ASE: 14.3996454784). Both LAMMPS set-ups: pedone + morse/smooth/linear + coul/dsf, and the
    coul/dsf + lepton styles of :meth:`PairBaseline.lammps_pair_commands` (field MD in LAMMPS)."""
    atoms = rattled_beta() if name == "beta" else amorphous_like()
    energy, forces, stress = baseline_model().energy_forces_stress(*args(atoms))
    ref_energy, ref_forces, ref_stress = lammps_reference(atoms, tmp_path, model_commands=model_commands)
    assert abs(energy) > 10 and np.abs(forces).max() > 1.0 and np.abs(stress).max() > 1e-3  # not vacuous
    assert energy == pytest.approx(ref_energy, abs=1e-5 * len(atoms))
    np.testing.assert_allclose(forces, ref_forces, rtol=0, atol=2e-5)
    np.testing.assert_allclose(stress, ref_stress, rtol=0, atol=1e-6)


def walled_baseline(cutoff=CUTOFF, alpha=ALPHA):
    """Pedone with Born-Mayer walls: a new Li-Li pair (Coulomb only in Pedone) and one added to O-O."""
    h = pedone_baseline(cutoff, alpha)
    h["pairs"] = {**h["pairs"], "Li-Li": [0.0, 1.0, 1.0, 0.0, 35.0, 0.55],
                  "O-O": h["pairs"]["O-O"] + [80.0, 0.3]}
    return h


def test_born_mayer_walls_equal_lammps(tmp_path):
    """The walls A exp(-r/rho) (shifted force) in the lepton styles the LAMMPS MD backend uses."""
    atoms = amorphous_like()
    model = make("potential", 0, cutoff=4.5, baseline=walled_baseline())
    model.set_energy_scale(0.0)
    energy, forces, stress = model.energy_forces_stress(*args(atoms))
    plain_energy, plain_forces, _ = baseline_model().energy_forces_stress(*args(atoms))
    assert energy - plain_energy > 0.1 and np.abs(forces - plain_forces).max() > 0.05  # the walls act
    ref_energy, ref_forces, ref_stress = lammps_reference(atoms, tmp_path, model_commands=True,
                                                          hyperparameters=walled_baseline())
    assert energy == pytest.approx(ref_energy, abs=1e-5 * len(atoms))
    np.testing.assert_allclose(forces, ref_forces, rtol=0, atol=2e-5)
    np.testing.assert_allclose(stress, ref_stress, rtol=0, atol=1e-6)


def test_born_mayer_wall_is_smooth_and_conservative():
    """A Li-Li pair with only a wall: force = -dE/dr, energy and force reach zero at the cutoff;
    a wall with A = 0 is the four-number pair; a non-positive rho or a wrong count is refused."""
    h = pedone_baseline(CUTOFF, ALPHA)
    walled = dict(h, pairs={**h["pairs"], "Li-Li": [0.0, 1.0, 1.0, 0.0, 35.0, 0.55]})
    plain, wall = PairBaseline(SPECIES, h), PairBaseline(SPECIES, walled)
    li = torch.tensor([SPECIES.index("Li")] * 5)
    r = torch.tensor([1.2, 1.8, 2.5, CUTOFF - 1e-3, CUTOFF - 1e-4], dtype=torch.float64)
    phi, dphi = wall.pair_energy_and_derivative(r, li, li)
    phi0, dphi0 = plain.pair_energy_and_derivative(r, li, li)
    extra, slope = (phi - phi0).numpy(), (dphi - dphi0).numpy()
    assert extra[0] == pytest.approx(35.0 * np.exp(-1.2 / 0.55), rel=1e-3) and extra[0] > extra[1] > extra[2] > 0
    assert abs(extra[3]) < 1e-6 and abs(slope[4]) < 1e-6
    delta = 1e-6
    up, _ = wall.pair_energy_and_derivative(r + delta, li, li)
    down, _ = wall.pair_energy_and_derivative(r - delta, li, li)
    np.testing.assert_allclose(dphi.numpy(), ((up - down) / (2 * delta)).numpy(), rtol=1e-6, atol=1e-8)
    zero_wall = dict(h, pairs={**h["pairs"], "O-O": h["pairs"]["O-O"] + [0.0, 0.4]})
    o = torch.tensor([SPECIES.index("O")] * 5)
    np.testing.assert_array_equal(PairBaseline(SPECIES, zero_wall).pair_energy_and_derivative(r, o, o)[0].numpy(),
                                  plain.pair_energy_and_derivative(r, o, o)[0].numpy())
    for values, message in (([0.0, 1.0, 1.0, 0.0, 35.0, 0.0], "rho must be positive"),
                            ([0.0, 1.0, 1.0, 0.0, 35.0], "4 numbers")):
        with pytest.raises(ValueError, match=message):
            PairBaseline(SPECIES, dict(h, pairs={**h["pairs"], "Li-Li": values}))


@pytest.fixture(scope="module")
def small_cell():
    """Rattled, strained (triclinic) 16-atom cell: the 8 Å neighbour list reaches several images."""
    atoms = beta_li3po4()
    strain = np.eye(3) + 0.02 * np.random.default_rng(0).normal(size=(3, 3))
    atoms.set_cell(np.asarray(atoms.cell) @ strain, scale_atoms=True)
    atoms.rattle(0.08, seed=2)
    return atoms


@pytest.mark.parametrize("network", [False, True])
def test_forces_and_stress_are_energy_derivatives(small_cell, network):
    model = baseline_model(5, network=network)
    energy, forces, stress = model.energy_forces_stress(*args(small_cell))
    delta = 1e-5
    for atom, axis in [(0, 0), (5, 1), (9, 2), (15, 0)]:
        energies = []
        for sign in (1, -1):
            moved = small_cell.copy()
            moved.positions[atom, axis] += sign * delta
            energies.append(model.energy_forces_stress(*args(moved))[0])
        assert forces[atom, axis] == pytest.approx(-(energies[0] - energies[1]) / (2 * delta), rel=1e-6, abs=1e-7)
    volume = small_cell.get_volume()
    for a, b in [(0, 0), (1, 2), (2, 2), (0, 1)]:
        derivative = strain_derivative(model, small_cell, a, b, delta) / volume
        assert stress[a, b] * (2 if a != b else 1) == pytest.approx(derivative, rel=1e-6, abs=1e-9)


def test_rotation_translation_permutation_invariance(small_cell):
    model = baseline_model(6, network=True)
    energy, forces, stress = model.energy_forces_stress(*args(small_cell))
    rotation = Rotation.random(random_state=3).as_matrix()
    rotated = small_cell.copy()
    rotated.set_cell(np.asarray(small_cell.cell) @ rotation.T, scale_atoms=True)
    e_r, f_r, s_r = model.energy_forces_stress(*args(rotated))
    assert e_r == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(f_r, forces @ rotation.T, atol=1e-9)
    np.testing.assert_allclose(s_r, rotation @ stress @ rotation.T, atol=1e-11)
    moved = small_cell.copy()
    moved.translate([0.37, -1.2, 2.9])
    e_t, f_t, _ = model.energy_forces_stress(*args(moved))
    assert e_t == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(f_t, forces, atol=1e-9)
    order = np.random.default_rng(4).permutation(len(small_cell))
    e_p, f_p, _ = model.energy_forces_stress(*args(small_cell[order]))
    assert e_p == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(f_p, forces[order], atol=1e-9)


@pytest.mark.parametrize("pair", [(3, 8), (15, 8), (8, 8), (3, 15)])
def test_smooth_at_the_baseline_cutoff(pair):
    """Energy and force of a pair reach zero continuously at the cutoff (shifted force)."""
    model = baseline_model()
    numbers, mask = np.array(pair), np.array([True, True])

    def evaluate(r):
        positions = np.array([[0.0, 0.0, 0.0], [r, 0.0, 0.0]])
        sites, forces = model.cluster_site_energies_forces(positions, numbers, mask)
        return sites.sum(), forces

    e_far, f_far = evaluate(CUTOFF + 1e-6)
    assert np.abs(f_far).max() == 0.0
    e_mid, f_mid = evaluate(CUTOFF - 2.0)
    assert abs(e_mid - e_far) > 1e-3 and np.abs(f_mid).max() > 1e-3  # Coulomb acts well inside r_c
    for gap in (1e-3, 1e-4):
        e_near, f_near = evaluate(CUTOFF - gap)
        assert abs(e_near - e_far) < 0.2 * gap**2 and np.abs(f_near).max() < 0.2 * gap
    # the self term is what is left of an isolated pair: -k q^2 (e_shift/2 + alpha/sqrt(pi)) per atom
    baseline = model.baseline
    q = np.array([PEDONE_CHARGES[{3: "Li", 8: "O", 15: "P"}[z]] for z in pair])
    erfc = __import__("math").erfc(ALPHA * CUTOFF)
    f_shift = -(erfc / CUTOFF**2 + 2 * ALPHA / np.sqrt(np.pi) * np.exp(-(ALPHA * CUTOFF) ** 2) / CUTOFF)
    e_shift = erfc / CUTOFF - f_shift * CUTOFF
    assert e_far == pytest.approx(-COULOMB_CONSTANT * np.sum(q**2) * (e_shift / 2 + ALPHA / np.sqrt(np.pi)), rel=1e-12)
    assert baseline.cutoff == CUTOFF


def test_nve_conserves_energy_with_the_baseline_alone():
    """Velocity Verlet: the total energy fluctuates by O(dt^2) around a constant (conservative forces)."""
    from ase.md.velocitydistribution import Stationary, thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    from bornfield.calculators import FieldCalculator

    spread = {}
    for dt in (1.0, 0.5):
        atoms = beta_li3po4().repeat((2, 1, 1))
        atoms.rattle(0.03, seed=0)
        thermalize_momenta(atoms, 600, rng=np.random.default_rng(0))
        Stationary(atoms)
        atoms.calc = FieldCalculator(potential=baseline_model(), dtype="float64")
        dyn = VelocityVerlet(atoms, timestep=dt * units.fs)
        totals, kinetic = [], []
        for _ in range(int(round(40 / dt))):
            dyn.run(2)
            totals.append(atoms.get_total_energy())
            kinetic.append(atoms.get_kinetic_energy())
        assert np.ptp(kinetic) > 0.2  # energy flows between kinetic and potential
        spread[dt] = np.ptp(totals)
        half = len(totals) // 2
        assert abs(np.mean(totals[half:]) - np.mean(totals[:half])) < 0.2 * spread[dt]  # no drift
    assert spread[0.5] < 1e-2 and 3.0 < spread[1.0] / spread[0.5] < 5.0  # Verlet error ~ dt^2


def test_network_uses_only_its_own_cutoff(small_cell):
    """With the same weights, (network + baseline) - baseline = the network without a baseline."""
    with_baseline = baseline_model(7, network=True)
    plain = make("potential", 7, cutoff=4.5)
    baseline_only = baseline_model(7, network=False)
    total = with_baseline.energy_forces_stress(*args(small_cell))
    network = plain.energy_forces_stress(*args(small_cell))
    pair = baseline_only.energy_forces_stress(*args(small_cell))
    assert with_baseline.cutoff == with_baseline.receptive_field == CUTOFF and with_baseline.local_cutoff == 4.5
    assert abs(network[0]) > 1e-3
    assert total[0] == pytest.approx(network[0] + pair[0], abs=1e-9)
    np.testing.assert_allclose(total[1], network[1] + pair[1], atol=1e-9)
    np.testing.assert_allclose(total[2], network[2] + pair[2], atol=1e-11)
    # the sub-graph of the short pairs is the neighbour list at the short cutoff
    long = build_graph([args(small_cell)], SPECIES, CUTOFF)
    short = build_graph([args(small_cell)], SPECIES, 4.5)
    sub = long.within(4.5)
    assert sub is long.within(4.5) and long.within(CUTOFF) is long
    assert int(sub.mask.sum()) == int(short.mask.sum()) < int(long.mask.sum())
    r_sub = torch.linalg.norm(sub.edge_vectors(), dim=-1)[sub.mask].sort().values
    r_short = torch.linalg.norm(short.edge_vectors(), dim=-1)[short.mask].sort().values
    torch.testing.assert_close(r_sub, r_short, rtol=0, atol=1e-12)


def test_cluster_and_combined_step_reproduce_periodic():
    """Owned atoms + ghosts (LAMMPS ranks) and the one-graph MD step give the periodic results."""
    atoms = rattled_beta(amplitude=0.08, seed=5)  # 128 atoms, cell > 8 Å
    potential = baseline_model(8, network=True)
    born = make("born", 9, cutoff=4.5)
    energy, forces, stress = potential.energy_forces_stress(*args(atoms))
    step = evaluate_periodic(potential, born, *args(atoms), stress=True)
    assert step.energy == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(step.forces, forces, atol=1e-9)
    np.testing.assert_allclose(step.stress, stress, atol=1e-11)
    np.testing.assert_allclose(step.born_raw - step.born_raw.mean(0), born.born_charges(*args(atoms)), atol=1e-10)
    committee = PotentialCommittee([potential, baseline_model(10, network=True)])
    mean = committee.evaluate_graph(committee.make_graph(*args(atoms)))
    step = evaluate_periodic(committee, BornCommittee([born]), *args(atoms))
    assert step.energy == pytest.approx(float(mean["energy"]), abs=1e-9)
    np.testing.assert_allclose(step.forces, mean["forces"], atol=1e-9)

    cell = np.asarray(atoms.cell)
    n = len(atoms)
    images = [(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)]
    positions = np.concatenate([atoms.positions + np.array(s) @ cell for s in images])
    numbers = np.tile(atoms.numbers, len(images))
    owned = np.zeros(len(positions), dtype=bool)
    centre = images.index((0, 0, 0))
    owned[centre * n : (centre + 1) * n] = True
    sites, cluster_forces = potential.cluster_site_energies_forces(positions, numbers, owned)
    assert sites[owned].sum() == pytest.approx(energy, abs=1e-8)
    np.testing.assert_allclose(cluster_forces.reshape(len(images), n, 3).sum(0), forces, atol=1e-9)
    step = evaluate_cluster(potential, born, positions, numbers, owned)
    assert step.energy == pytest.approx(energy, abs=1e-8)
    np.testing.assert_allclose(step.forces.reshape(len(images), n, 3).sum(0), forces, atol=1e-9)


def test_baseline_needs_the_long_neighbour_list(small_cell):
    model = baseline_model()
    short = build_graph([args(small_cell)], SPECIES, 4.5)
    with pytest.raises(ValueError, match="shorter than the potential baseline"):
        model.forward(short)


def test_model_file_stores_the_baseline(tmp_path, small_cell):
    model = baseline_model(11, network=True)
    path = save_model(model, tmp_path / "potential_0.pt")
    payload = read_model_file(path)
    assert payload["cutoff"] == 4.5 and payload["receptive_field"] == CUTOFF
    stored = payload["hyperparameters"]["baseline"]
    assert stored["name"] == "pedone2006-dsf" and "Pedone" in stored["source"] and "Fennell" in stored["source"]
    assert stored["cutoff"] == CUTOFF and stored["dsf_alpha"] == ALPHA and stored["charges"]["P"] == 3.0
    assert stored["pairs"]["P-O"] == [0.831326, 2.585833, 1.800790, 1.0]
    loaded = load_model(path, dtype=torch.float64)
    assert loaded.cutoff == CUTOFF and loaded.local_cutoff == 4.5
    for a, b in zip(loaded.energy_forces_stress(*args(small_cell)), model.energy_forces_stress(*args(small_cell))):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    # a float32 network keeps its baseline in float64
    single = load_potential(path)
    e32, f32, _ = single.energy_forces_stress(*args(small_cell))
    assert e32 == pytest.approx(model.energy_forces_stress(*args(small_cell))[0], rel=1e-6)
    # the file's parameters are used, not the code's constants
    changed = dict(stored, charges={"Li": 1.0, "P": 5.0, "O": -2.0})
    other = PairBaseline(SPECIES, changed)
    assert float(other.self_energies(torch.tensor([1]))) != pytest.approx(float(model.baseline.self_energies(torch.tensor([1]))))
    with pytest.raises(ValueError, match="no charge for species"):
        PairBaseline(SPECIES, dict(stored, charges={"Li": 0.6, "O": -1.2}))
    with pytest.raises(ValueError, match="unknown potential baseline"):
        PairBaseline(SPECIES, dict(stored, name="buckingham"))


def test_old_model_files_load_unchanged(data_dir):
    """A file written before the baseline existed: no baseline, same cutoffs, recorded outputs."""
    path = data_dir / "models" / "potential_ref.pt"
    payload = read_model_file(path)
    assert "baseline" not in payload["hyperparameters"]
    model = load_potential(path)
    assert model.baseline is None and model.cutoff == model.local_cutoff == model.receptive_field == 5.0
    reference = np.load(data_dir / "models" / "reference_outputs.npz")
    positions, numbers, cell = reference["positions"], reference["numbers"], reference["cell"]
    energy, forces, stress = model.energy_forces_stress(positions, numbers, cell, np.ones(3, dtype=bool))
    assert energy == pytest.approx(float(reference["energy"]), rel=2e-6)  # float32 round-off
    np.testing.assert_allclose(forces, reference["forces"], atol=2e-5 * float(np.abs(reference["forces"]).max()))
    graph = model.make_graph(positions, numbers, cell, np.ones(3, dtype=bool))
    assert graph.within(model.local_cutoff) is graph  # no sub-graph, the code path of old files


def test_reference_energies_fit_the_residual_to_the_baseline():
    """Labels = baseline + per-species constants + small force noise: the constants come back."""
    from bornfield.train.data import Sample
    from bornfield.train.trainer import baseline_labels, initialise_model

    from bornfield.config import validate_section

    settings = validate_section({"potential": {"channels": 4, "hidden": 16, "radial_hidden": 16, "baseline": "pedone",
                                               "baseline_cutoff_A": CUTOFF, "baseline_dsf_alpha_per_A": ALPHA}},
                                "train")["potential"]
    reference = {"Li": -190.5, "O": -430.25, "P": -180.0}
    pair_model = baseline_model()
    rng = np.random.default_rng(0)
    samples = []
    for k, atoms in enumerate([rattled_beta((1, 1, 1), seed=1), rattled_beta((2, 1, 1), seed=2),
                               rattled_beta((1, 1, 1), seed=3)[[i for i in range(16) if i != 0]],
                               rattled_beta((1, 1, 1), seed=4)[[i for i in range(16) if i != 12]]]):
        energy, forces, _ = pair_model.energy_forces_stress(*args(atoms))
        energy += sum(reference[s] for s in atoms.get_chemical_symbols())
        samples.append(Sample(index=k, atoms=atoms, config_type="beta", energy=energy,
                              forces=forces + 0.1 * rng.normal(size=forces.shape), stress=None, born=None))
    model = initialise_model("potential", SPECIES, 4.5, settings, samples, seed=0, dtype=torch.float64)
    assert model.baseline is not None and model.cutoff == CUTOFF
    fitted = model.hyperparameters["atomic_energies"]
    for symbol, value in reference.items():
        assert fitted[symbol] == pytest.approx(value, abs=1e-6)
    assert model.hyperparameters["energy_scale"] == pytest.approx(0.1, rel=0.1)  # RMS of the residual forces
    energies, _ = baseline_labels(model, samples)
    assert np.allclose(energies, [pair_model.energy_forces_stress(*args(s.atoms))[0] for s in samples])


def test_training_with_the_baseline_writes_a_self_describing_model(tmp_path):
    """train.potential.baseline = pedone through the trainer: the file carries the baseline, the
    loss falls, and the loaded model is the trained one (neighbour lists at the baseline cutoff)."""
    from bornfield.config import validate_section
    from bornfield.train.data import Sample
    from bornfield.train.trainer import train_model

    settings = validate_section({"potential": {"baseline": "pedone", "baseline_cutoff_A": CUTOFF,
                                               "baseline_dsf_alpha_per_A": ALPHA, "channels": 4, "hidden": 16,
                                               "radial_hidden": 16, "max_epochs": 6, "batch_size": 2}}, "train")
    section = dict(settings["potential"], cutoff=4.5, dtype="float64")
    truth = baseline_model(12, network=True)  # labels: a smooth function the model can learn
    samples = []
    for k in range(6):
        atoms = rattled_beta((1, 1, 1), amplitude=0.1, seed=20 + k)
        energy, forces, stress = truth.energy_forces_stress(*args(atoms))
        samples.append(Sample(index=k, atoms=atoms, config_type="beta", energy=energy, forces=forces,
                              stress=stress, born=None))
    model, history = train_model("potential", samples[:4], samples[4:], section, tmp_path / "potential_0.pt",
                                 seed=1, species=SPECIES, progress=False)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    payload = read_model_file(tmp_path / "potential_0.pt")
    assert payload["hyperparameters"]["baseline"]["cutoff"] == CUTOFF and payload["receptive_field"] == CUTOFF
    assert payload["metadata"]["train_settings"]["baseline"] == "pedone"
    loaded = load_model(tmp_path / "potential_0.pt", dtype=torch.float64)
    for a, b in zip(loaded.energy_forces_stress(*args(samples[5].atoms)), model.energy_forces_stress(*args(samples[5].atoms))):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


def test_trained_model_round_trip_and_its_baseline_part(tmp_path):
    """Two epochs of 'train potential' settings with baseline = pedone on four 16-atom frames, float64:
    the saved file alone (no config) rebuilds the trained model exactly, and E, F = the network
    (same file without its baseline) + the standalone PairBaseline of the configured cutoff and alpha."""
    from bornfield.config import command_settings, resolve_config
    from bornfield.models.io import MODEL_CLASSES
    from bornfield.models.potential import forces_from_edge_gradient
    from bornfield.train.data import Sample
    from bornfield.train.trainer import train_model

    config = {"train": {"cutoff": 4.5, "dtype": "float64", "potential": {
        "baseline": "pedone", "baseline_cutoff_A": CUTOFF, "baseline_dsf_alpha_per_A": ALPHA,
        "channels": 4, "hidden": 16, "radial_hidden": 16, "max_epochs": 2, "batch_size": 2, "warmup_epochs": 0}}}
    train = command_settings(resolve_config(config), "train potential").train  # what the CLI reads
    section = dict(train.potential, cutoff=train.cutoff, dtype=train.dtype)
    truth = baseline_model(13, network=True)
    samples = []
    for k in range(4):
        atoms = rattled_beta((1, 1, 1), amplitude=0.1, seed=40 + k)
        energy, forces, stress = truth.energy_forces_stress(*args(atoms))
        samples.append(Sample(index=k, atoms=atoms, config_type="beta", energy=energy, forces=forces,
                              stress=stress, born=None))
    path = tmp_path / "potential_0.pt"
    trained, history = train_model("potential", samples[:3], samples[3:], section, path, seed=2, species=SPECIES,
                                   resume=False, progress=False)
    assert len(history) == 2 and all(np.isfinite(row["train_loss"]) for row in history)
    loaded = load_model(path, dtype=torch.float64)
    assert loaded.baseline.hyperparameters == pedone_baseline(CUTOFF, ALPHA)  # the file describes its baseline
    assert (loaded.local_cutoff, loaded.cutoff, loaded.receptive_field) == (4.5, CUTOFF, CUTOFF)
    payload = read_model_file(path)
    network = MODEL_CLASSES["potential"](**{k: v for k, v in payload["hyperparameters"].items() if k != "baseline"})
    network.double().load_state_dict(payload["state_dict"])  # the baseline has no parameters
    standalone = PairBaseline(SPECIES, pedone_baseline(CUTOFF, ALPHA))
    atoms = rattled_beta((2, 1, 1), amplitude=0.1, seed=50)  # not a training frame
    energy, forces, stress = loaded.energy_forces_stress(*args(atoms))
    for a, b in zip((energy, forces, stress), trained.energy_forces_stress(*args(atoms))):
        np.testing.assert_array_equal(a, b)
    graph = build_graph([args(atoms)], SPECIES, CUTOFF, torch.float64)
    sites, grad = standalone.site_energies_and_edge_gradient(graph)
    pair_forces = forces_from_edge_gradient(graph, grad).numpy()
    net_energy, net_forces, _ = network.energy_forces_stress(*args(atoms))
    assert abs(float(sites.sum())) > 10.0 and np.abs(pair_forces).max() > 0.1  # a baseline that matters
    assert energy == pytest.approx(net_energy + float(sites.sum()), rel=0, abs=1e-9)
    np.testing.assert_allclose(forces, net_forces + pair_forces, rtol=0, atol=1e-10)
