"""Physics and contracts of the NN potential and the equivariant Born-charge model (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.spacegroup import crystal
from scipy.spatial.transform import Rotation

from bornfield.errors import InputFileError
from bornfield.models import (
    BornChargeModel,
    BornCommittee,
    PotentialCommittee,
    PotentialModel,
    create_model,
    create_random_model_file,
    load_born,
    load_model,
    load_potential,
    save_model,
)

SPECIES = ["Li", "P", "O"]
SMALL = {"channels": 4, "hidden": 16, "radial_hidden": 16}
MEAN_CHARGES = {"Li": 1.0, "P": 3.2, "O": -1.55}


def beta_li3po4() -> Atoms:
    """beta-Li3PO4 (Pmn2_1), Keffer et al. 1967 (see LI3PO4_FACTS.md)."""
    return crystal(
        ["Li", "Li", "P", "O", "O", "O"],
        basis=[
            (0.24810, 0.32770, 0.98600),
            (0.5, 0.84280, 0.98930),
            (0, 0.82430, 0),
            (0.20777, 0.68676, 0.89610),
            (0, 0.10520, 0.90040),
            (0.5, 0.18140, 0.81720),
        ],
        spacegroup=31,
        cellpar=[6.1150, 5.2394, 4.8554, 90, 90, 90],
    )


def randomise(model, seed=0, scale=0.3):
    """Give every parameter a non-trivial random value (so symmetry tests are not vacuous)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def make(kind, seed=0, cutoff=4.5, **extra):
    hyper = dict(SMALL, **extra)
    if kind == "born":
        hyper.setdefault("mean_charges", MEAN_CHARGES)
    return randomise(create_model(kind, SPECIES, cutoff, seed=seed, **hyper).double(), seed)


@pytest.fixture(scope="module")
def structure():
    atoms = beta_li3po4()
    atoms.set_cell(np.array(atoms.cell) @ (np.eye(3) + 0.02 * np.random.default_rng(0).normal(size=(3, 3))), scale_atoms=True)
    atoms.rattle(0.1, seed=1)
    return atoms


def potential_variant(variant):
    """Constructor settings of a potential variant: 1 or 2 interactions, or the edge or message architecture."""
    if variant == "edge":
        return {"architecture": "edge", "edge_layers": 2}
    if variant == "message":
        return {"architecture": "message", "interactions": 2}
    return {"interactions": variant}


@pytest.fixture(scope="module", params=[1, 2, "edge", "message"],
                ids=["potential-one-interaction", "potential-two-interactions", "potential-edge", "potential-message"])
def potential(request):
    """The potential with one density, with the second local interaction, the edge and the message model (float64)."""
    return make("potential", 1, **potential_variant(request.param))


def born_variant(variant):
    """Constructor settings of a Born-model variant: 1 or 2 interactions (``"squash"``: 2 with
    ``feature_squash``), or the edge or polar architecture."""
    if variant in ("edge", "polar"):
        return {"architecture": variant, "edge_layers": 2}
    if variant == "squash":
        return {"interactions": 2, "feature_squash": True}
    return {"interactions": variant}


@pytest.fixture(scope="module", params=[1, 2, "squash", "edge", "polar"],
                ids=["one-interaction", "two-interactions", "two-interactions-squash", "edge", "polar"])
def born(request):
    """The Born model with one density, with the second local interaction, the edge and the polar model (float64)."""
    return make("born", 2, **born_variant(request.param), charge_scales={"Li": 0.3, "P": 0.5, "O": 0.4})


def args(atoms):
    return atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc


def test_protocols_and_receptive_field(potential, born):
    assert isinstance(potential, PotentialModel)
    assert isinstance(born, BornChargeModel)
    assert potential.cutoff == 4.5
    assert potential.receptive_field == (9.0 if potential.hyperparameters.get("architecture") == "message" else 4.5)
    assert born.species == tuple(SPECIES)


@pytest.mark.parametrize("reflect", [False, True])
def test_born_equivariance_and_energy_invariance(structure, potential, born, reflect):
    rotation = Rotation.random(random_state=7).as_matrix()
    if reflect:
        rotation = rotation @ np.diag([1.0, 1.0, -1.0])  # improper: rotation times mirror
        assert np.linalg.det(rotation) < 0
    rotated = structure.copy()
    rotated.set_cell(np.asarray(structure.cell) @ rotation.T, scale_atoms=True)
    z = born.born_charges(*args(structure))
    z_rot = born.born_charges(*args(rotated))
    assert np.abs(z).max() > 0.5 and np.abs(z - z.mean(0)).max() > 1e-3  # non-trivial tensors
    offdiag = z[:, ~np.eye(3, dtype=bool)]
    assert np.abs(offdiag).max() > 1e-3
    np.testing.assert_allclose(z_rot, np.einsum("ab,kbc,dc->kad", rotation, z, rotation), atol=1e-10)
    e, f, s = potential.energy_forces_stress(*args(structure))
    e_rot, f_rot, s_rot = potential.energy_forces_stress(*args(rotated))
    assert e_rot == pytest.approx(e, abs=1e-9)
    np.testing.assert_allclose(f_rot, f @ rotation.T, atol=1e-10)
    np.testing.assert_allclose(s_rot, rotation @ s @ rotation.T, atol=1e-10)


def test_born_is_not_symmetric_in_general(structure, born):
    """The 1e (antisymmetric) channel is live: Z - Zᵀ ≠ 0, as in DFPT for low-symmetry sites."""
    z = born.born_charges(*args(structure))
    assert np.abs(z - z.transpose(0, 2, 1)).max() > 1e-4


def test_asr_exact(structure, born):
    z = born.born_charges(*args(structure))
    assert np.abs(z.sum(axis=0)).max() < 1e-12
    raw = born.cluster_born_charges_raw(structure.positions, structure.numbers)
    assert np.abs(raw.sum(axis=0)).max() > 1e-3  # the correction is doing something


def test_permutation_and_translation_invariance(structure, potential, born):
    perm = np.random.default_rng(3).permutation(len(structure))
    permuted = structure[perm]
    e, f, _ = potential.energy_forces_stress(*args(structure))
    e_p, f_p, _ = potential.energy_forces_stress(*args(permuted))
    assert e_p == pytest.approx(e, abs=1e-10)
    np.testing.assert_allclose(f_p, f[perm], atol=1e-10)
    np.testing.assert_allclose(born.born_charges(*args(permuted)), born.born_charges(*args(structure))[perm], atol=1e-10)
    shifted = structure.copy()
    shifted.positions += np.array([0.37, -1.3, 2.9])
    shifted.wrap()
    e_t, f_t, _ = potential.energy_forces_stress(*args(shifted))
    assert e_t == pytest.approx(e, abs=1e-9)
    np.testing.assert_allclose(f_t, f, atol=1e-10)
    np.testing.assert_allclose(born.born_charges(*args(shifted)), born.born_charges(*args(structure)), atol=1e-10)


def test_supercell_consistency(structure, potential, born):
    supercell = structure.repeat((2, 1, 2))
    z = born.born_charges(*args(structure))
    z_super = born.born_charges(*args(supercell))
    np.testing.assert_allclose(z_super, np.tile(z, (4, 1, 1)), atol=1e-10)
    e, f, s = potential.energy_forces_stress(*args(structure))
    e_s, f_s, s_s = potential.energy_forces_stress(*args(supercell))
    assert e_s == pytest.approx(4 * e, abs=1e-8)
    np.testing.assert_allclose(f_s, np.tile(f, (4, 1)), atol=1e-10)
    np.testing.assert_allclose(s_s, s, atol=1e-12)


def test_forces_are_minus_energy_gradient(structure, potential):
    _, forces, _ = potential.energy_forces_stress(*args(structure))
    assert np.abs(forces).max() > 1e-3
    delta = 1e-5
    for atom, axis in [(0, 0), (5, 1), (9, 2), (15, 0)]:
        plus, minus = structure.copy(), structure.copy()
        plus.positions[atom, axis] += delta
        minus.positions[atom, axis] -= delta
        e_plus = potential.energy_forces_stress(*args(plus))[0]
        e_minus = potential.energy_forces_stress(*args(minus))[0]
        assert forces[atom, axis] == pytest.approx(-(e_plus - e_minus) / (2 * delta), rel=1e-5, abs=1e-8)


def strain_derivative(potential, atoms, a: int, b: int, delta: float) -> float:
    """Central difference dE/dε_ab (eV) under the symmetric strain ε_ab = ε_ba = ±delta."""
    energies = []
    for sign in (1, -1):
        strain = np.eye(3)
        strain[a, b] += sign * delta
        if a != b:
            strain[b, a] += sign * delta
        strained = atoms.copy()
        strained.set_cell(np.asarray(atoms.cell) @ strain, scale_atoms=True)
        energies.append(potential.energy_forces_stress(*args(strained))[0])
    return (energies[0] - energies[1]) / (2 * delta)


def test_stress_is_strain_derivative(structure, potential):
    _, _, stress = potential.energy_forces_stress(*args(structure))
    volume = structure.get_volume()
    delta = 1e-5
    for a, b in [(0, 0), (1, 2), (2, 2), (0, 1)]:
        derivative = strain_derivative(potential, structure, a, b, delta) / volume
        expected = stress[a, b] * (2 if a != b else 1)
        assert expected == pytest.approx(derivative, rel=1e-5, abs=1e-9)


def test_smooth_at_cutoff(potential, born):
    """Energy, forces and Born charges reach their isolated-atom values continuously at r_c."""
    rc = potential.cutoff
    numbers, mask = np.array([3, 8]), np.array([True, True])

    def evaluate(r):
        positions = np.array([[0.0, 0.0, 0.0], [r, 0.0, 0.0]])
        sites, forces = potential.cluster_site_energies_forces(positions, numbers, mask)
        return sites.sum(), forces, born.cluster_born_charges_raw(positions, numbers)

    e_far, f_far, z_far = evaluate(rc + 1e-6)
    assert np.abs(f_far).max() == 0.0
    e_mid, f_mid, z_mid = evaluate(rc - 1.5)
    assert abs(e_mid - e_far) > 1e-5 and np.abs(f_mid).max() > 1e-5  # the pair does interact inside r_c
    assert np.abs(z_mid - z_far).max() > 1e-5
    e_near, f_near, z_near = evaluate(rc - 1e-4)
    assert abs(e_near - e_far) < 1e-8
    assert np.abs(f_near).max() < 1e-6
    assert np.abs(z_near - z_far).max() < 1e-8


@pytest.mark.parametrize("variant", [1, 2, "squash", "edge", "polar", "message"])
def test_cluster_evaluation_reproduces_periodic(structure, variant):
    """Owned atoms + ghosts (open boundaries) give the periodic site energies, forces and raw Z."""
    potential = make("potential", 4, cutoff=4.0, **potential_variant(variant if variant in (2, "edge", "message") else 1))
    born = make("born", 5, cutoff=4.0, **born_variant(variant if variant != "message" else 2))
    cell = np.asarray(structure.cell)
    n = len(structure)
    receptive_field = max(born.receptive_field, potential.receptive_field)
    reach = int(np.ceil(receptive_field / min(np.linalg.norm(cell, axis=1))))  # image shells the ghosts need
    shells = range(-reach, reach + 1)
    images = [(i, j, k) for i in shells for j in shells for k in shells]
    positions = np.concatenate([structure.positions + np.array(s) @ cell for s in images])
    numbers = np.tile(structure.numbers, len(images))
    owned = np.zeros(len(positions), dtype=bool)
    centre = images.index((0, 0, 0))
    owned[centre * n : (centre + 1) * n] = True
    sites, forces = potential.cluster_site_energies_forces(positions, numbers, owned)
    graph = potential.make_graph(*args(structure))
    periodic = potential.forward(graph)
    np.testing.assert_allclose(sites[owned], periodic["site_energies"].detach().numpy(), atol=1e-10)
    # the periodic force on atom k is the sum over its images (LAMMPS reverse communication)
    np.testing.assert_allclose(forces.reshape(len(images), n, 3).sum(0), periodic["forces"].detach().numpy(), atol=1e-10)
    raw = born.cluster_born_charges_raw(positions, numbers)[owned]
    np.testing.assert_allclose(raw - raw.mean(0), born.born_charges(*args(structure)), atol=1e-10)


def test_save_load_round_trip(tmp_path, structure, potential, born):
    for model, name in ((potential, "potential_0.pt"), (born, "born_0.pt")):
        path = save_model(model, tmp_path / name, {"training_data_hash": "abc"})
        loaded = load_model(path, dtype=torch.float64)
        assert loaded.kind == model.kind and loaded.species == model.species and loaded.cutoff == model.cutoff
        assert loaded.metadata["training_data_hash"] == "abc"
        assert loaded.metadata["bornfield_version"] and loaded.metadata["e3nn_version"]
    p = load_potential(tmp_path / "potential_0.pt", dtype=torch.float64)
    assert p.energy_forces_stress(*args(structure))[0] == pytest.approx(potential.energy_forces_stress(*args(structure))[0], abs=1e-12)
    b = load_born(tmp_path / "born_0.pt", dtype=torch.float64)
    np.testing.assert_allclose(b.born_charges(*args(structure)), born.born_charges(*args(structure)), atol=1e-12)


def test_corrupted_or_wrong_model_file_is_a_clear_error(tmp_path, potential):
    path = save_model(potential, tmp_path / "potential_0.pt")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match="truncated.pt"):
        load_potential(truncated)
    payload = torch.load(path, weights_only=True)
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = payload["state_dict"][name] + 1.0
    tampered = tmp_path / "tampered.pt"
    torch.save(payload, tampered)
    with pytest.raises(InputFileError, match="checksum"):
        load_potential(tampered)
    with pytest.raises(InputFileError, match="expected born"):
        load_born(path)
    with pytest.raises(InputFileError, match="not found"):
        load_potential(tmp_path / "missing.pt")
    text = tmp_path / "text.pt"
    text.write_text("not a model")
    with pytest.raises(InputFileError):
        load_potential(text)


def test_random_model_files_and_committees(tmp_path, structure):
    paths_p = [create_random_model_file("potential", SPECIES, 4.5, tmp_path / f"potential_{i}.pt", seed=i, **SMALL) for i in range(2)]
    paths_b = [
        create_random_model_file("born", SPECIES, 4.5, tmp_path / f"born_{i}.pt", seed=i, mean_charges=MEAN_CHARGES, **SMALL)
        for i in range(2)
    ]
    committee_p = load_potential(paths_p, dtype=torch.float64)
    committee_b = load_born(paths_b, dtype=torch.float64)
    assert isinstance(committee_p, PotentialCommittee) and isinstance(committee_b, BornCommittee)
    assert isinstance(committee_p, PotentialModel) and isinstance(committee_b, BornChargeModel)
    members = [load_born(p, dtype=torch.float64) for p in paths_b]
    z = committee_b.born_charges(*args(structure))
    np.testing.assert_allclose(z, np.mean([m.born_charges(*args(structure)) for m in members], axis=0), atol=1e-12)
    assert np.abs(z.sum(0)).max() < 1e-12
    out = committee_p.evaluate_graph(committee_p.make_graph(*args(structure)))
    assert out["forces_var"].shape == (len(structure), 3) and out["forces_var"].max() > 0
    assert load_model(paths_p[0]).metadata["trained"] is False


def test_edge_model_is_strictly_local(structure):
    """The edge model's raw Z of an atom ignores atoms beyond the cutoff (receptive field = cutoff)."""
    born = make("born", 6, cutoff=4.0, architecture="edge", edge_layers=3)
    assert born.receptive_field == born.cutoff == 4.0
    positions, numbers = structure.positions, structure.numbers
    distances = np.linalg.norm(positions - positions[0], axis=1)
    far = np.flatnonzero(distances > 4.0)
    assert far.size
    moved = positions.copy()
    moved[far] += np.random.default_rng(2).normal(scale=0.2, size=(far.size, 3))
    keep = np.linalg.norm(moved[far] - positions[0], axis=1) > 4.0
    moved[far[~keep]] = positions[far[~keep]]
    mask = np.zeros(len(numbers), dtype=bool)
    mask[0] = True
    z = born.cluster_born_charges_raw(positions, numbers, mask)
    z_moved = born.cluster_born_charges_raw(moved, numbers, mask)
    np.testing.assert_allclose(z_moved, z, atol=1e-12)
    near = np.flatnonzero((distances > 0.1) & (distances < 3.0))[0]
    moved = positions.copy()
    moved[near] += 0.05
    assert np.abs(born.cluster_born_charges_raw(moved, numbers, mask) - z).max() > 1e-6


def test_message_potential_sees_two_cutoffs(structure):
    """The message potential's site energy of an atom depends on atoms between one and two cutoffs
    (through its neighbours' latents) and on nothing beyond two cutoffs."""
    potential = make("potential", 8, cutoff=3.0, architecture="message", interactions=2)
    assert potential.receptive_field == 6.0
    big = structure.repeat((3, 3, 3))
    positions, numbers = big.positions, big.numbers
    centre = np.argmin(np.linalg.norm(positions - positions.mean(0), axis=1))
    distances = np.linalg.norm(positions - positions[centre], axis=1)
    mask = np.zeros(len(numbers), dtype=bool)
    mask[centre] = True

    def site_energy(moved):
        return potential.cluster_site_energies_forces(moved, numbers, mask)[0][centre]

    e = site_energy(positions)
    rng = np.random.default_rng(3)
    for lower, upper, changes in ((3.3, 5.7, True), (6.3, np.inf, False)):
        shell = np.flatnonzero((distances > lower) & (distances < upper))
        assert shell.size
        moved = positions.copy()
        moved[shell] += rng.normal(scale=0.1, size=(shell.size, 3))
        moved[shell] = np.where((np.linalg.norm(moved[shell] - positions[centre], axis=1)[:, None] - lower)
                                * (np.linalg.norm(moved[shell] - positions[centre], axis=1)[:, None] - upper) < 0,
                                moved[shell], positions[shell])  # stay in the shell
        assert (abs(site_energy(moved) - e) > 1e-6) == changes


def test_polar_model_is_the_derivative_of_one_polarization(structure):
    """Z of the polar model is dP/dr: its mixed derivatives commute (dZ[j,a,b]/dr_kc = dZ[k,a,c]/dr_jb,
    which a direct tensor model does not obey), and an atom's Z sees the atoms within twice the
    cutoff (the dipoles of its neighbours), not beyond."""
    born = make("born", 8, cutoff=4.0, architecture="polar", edge_layers=2, charge_scales={"Li": 0.3, "P": 0.5, "O": 0.4})
    assert born.receptive_field == 8.0 and born.shares_blocks is False
    positions, numbers, cell, pbc = args(structure)
    distances = np.linalg.norm(positions - positions[0], axis=1)
    j, k, h = 0, int(np.flatnonzero((distances > 1.0) & (distances < 3.0))[0]), 1e-5

    def dz(model, atom, moved):  # dZ[atom, a, b] / dr_moved,c  -> (a, b, c)
        out = np.zeros((3, 3, 3))
        for c in range(3):
            step = np.zeros_like(positions)
            step[moved, c] = h
            out[..., c] = (model.born_charges(positions + step, numbers, cell, pbc)[atom]
                           - model.born_charges(positions - step, numbers, cell, pbc)[atom]) / (2 * h)
        return out

    d_jk, d_kj = dz(born, j, k), dz(born, k, j)
    assert np.abs(d_jk).max() > 1e-3
    np.testing.assert_allclose(d_jk, d_kj.transpose(0, 2, 1), atol=1e-7)
    edge = make("born", 8, cutoff=4.0, architecture="edge", edge_layers=2, charge_scales={"Li": 0.3, "P": 0.5, "O": 0.4})
    assert np.abs(dz(edge, j, k) - dz(edge, k, j).transpose(0, 2, 1)).max() > 1e-4  # a direct model is not curl-free
    # receptive field: open cluster around atom 0 from a 5x5x5 block of images
    shells = range(-2, 3)
    images = np.array([(a, b, c) for a in shells for b in shells for c in shells], dtype=float)
    block = (positions[None] + (images @ cell)[:, None]).reshape(-1, 3)
    block_numbers = np.tile(numbers, len(images))
    r = np.linalg.norm(block - positions[0], axis=1)
    mask = r < 1e-9
    z = born.cluster_born_charges_raw(block, block_numbers, mask)
    rng = np.random.default_rng(3)
    beyond = r > 8.5
    moved = block.copy()
    moved[beyond] += rng.normal(scale=0.1, size=(int(beyond.sum()), 3))
    np.testing.assert_allclose(born.cluster_born_charges_raw(moved, block_numbers, mask), z, atol=1e-12)
    between = np.flatnonzero((r > 4.5) & (r < 7.0))
    moved = block.copy()
    moved[between] += rng.normal(scale=0.1, size=(between.size, 3))
    assert np.abs(born.cluster_born_charges_raw(moved, block_numbers, mask) - z).max() > 1e-6


def test_edge_model_file_names_its_architecture(tmp_path, structure):
    """A saved edge model (Born or potential) reloads as the edge model; files without ``architecture`` load
    the density model."""
    from bornfield.models.born import EquivariantBornModel
    from bornfield.models.born_edge import EdgeBornModel
    from bornfield.models.born_polar import PolarizationBornModel
    from bornfield.models.potential import NNPotential
    from bornfield.models.potential_edge import EdgePotential

    edge = make("born", 7, architecture="edge", edge_layers=1)
    path = save_model(edge, tmp_path / "edge.pt")
    assert load_model(path).hyperparameters["architecture"] == "edge"
    assert type(load_model(path, kind="born")) is EdgeBornModel
    density = make("born", 7, interactions=2)
    assert "architecture" not in density.hyperparameters
    assert type(load_model(save_model(density, tmp_path / "density.pt"))) is EquivariantBornModel
    polar = make("born", 7, architecture="polar", edge_layers=1)
    assert type(load_model(save_model(polar, tmp_path / "polar.pt"), kind="born")) is PolarizationBornModel
    edge_potential = make("potential", 7, architecture="edge", edge_layers=1)
    assert type(load_model(save_model(edge_potential, tmp_path / "edge_potential.pt"), kind="potential")) is EdgePotential
    assert type(load_model(save_model(make("potential", 7), tmp_path / "potential.pt"))) is NNPotential


def test_feature_squash_keeps_far_out_of_range_features_from_blowing_up_z(structure):
    """Standardisation fitted on a narrow training set puts a new environment's invariants at
    hundreds of standard deviations; products of MLP outputs and densities then grow Z
    polynomially (|Z| of 10^3 e seen in amorphous MD). With ``feature_squash`` the MLPs see
    asinh of the features: the same weights give a bounded Z, and the file keeps the setting."""
    plain = make("born", 3, interactions=2)
    squash = make("born", 3, interactions=2, feature_squash=True)
    squash.load_state_dict(plain.state_dict())
    for model in (plain, squash):
        with torch.no_grad():  # a training set whose features barely varied
            model.density.feature_scale.mul_(1e-3)
            model.interaction.edge_scale.mul_(1e-3)
            model.interaction.feature_scale.mul_(1e-3)
    z_plain = np.abs(plain.born_charges(*args(structure))).max()
    z_squash = np.abs(squash.born_charges(*args(structure))).max()
    assert z_plain > 100 * z_squash, (z_plain, z_squash)
    assert squash.hyperparameters["feature_squash"] is True and "feature_squash" not in plain.hyperparameters
