"""The inference fast paths of the models give the numbers of the plain autograd evaluation.

* :class:`bornfield.models.layers.DensityTape` (hand-written backward over the edges,
  used by ``NNPotential.forward(create_graph=False)`` and ``models.combined``) equals
  autograd through the edges, float64, periodic and open-boundary (centres/ghosts,
  energy mask), committees included;
* a saved model file written before the speed work (tests/data/models, see
  make_reference.py there) still loads and gives its recorded outputs to float32
  round-off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from e3nn import o3

from bornfield.models import PotentialCommittee, BornCommittee, load_born, load_potential
from bornfield.models.combined import evaluate_cluster, evaluate_periodic
from bornfield.models.graph import build_cluster_graph, build_graph
from bornfield.models.layers import (_HARMONIC_POLYNOMIALS, AtomicDensity, EdgeGeometry, EdgeInteraction,
                                     edge_vector_gradient, polynomial_envelope, polynomial_envelope_derivative,
                                     squashed)

from test_models import SPECIES, beta_li3po4, make

DATA = Path(__file__).resolve().parent / "data" / "models"


def rattled(repeat=(1, 1, 1), seed=0, amplitude=0.15):
    atoms = beta_li3po4().repeat(repeat)
    strain = np.eye(3) + 0.03 * np.random.default_rng(seed).normal(size=(3, 3))
    atoms.set_cell(np.asarray(atoms.cell) @ strain, scale_atoms=True)
    atoms.rattle(amplitude, seed=seed + 1)
    return atoms


def autograd_reference(model, graph, energy_mask=None):
    """Energy, forces, stress by autograd through the edge vectors (the training path)."""
    out = model.forward(graph, forces=True, stress=True, create_graph=True, energy_mask=energy_mask)
    return {k: v.detach() for k, v in out.items()}


def test_harmonic_polynomials_reproduce_e3nn():
    u = torch.nn.functional.normalize(torch.randn(200, 3, dtype=torch.float64), dim=-1)
    sh = o3.spherical_harmonics([1, 2], u, normalize=True, normalization="component")
    linear = _HARMONIC_POLYNOMIALS.get("linear", torch.float64)
    quadratic = _HARMONIC_POLYNOMIALS.get("quadratic", torch.float64)
    torch.testing.assert_close(u @ linear.T, sh[:, :3], rtol=0, atol=1e-13)
    torch.testing.assert_close(torch.einsum("na,mab,nb->nm", u, quadratic, u), sh[:, 3:], rtol=0, atol=1e-13)


def test_inference_squash_is_asinh_and_training_squash_has_asinh_derivative():
    """Without autograd ``squashed`` uses the log/hypot form: torch.asinh's values to round-off
    (float64, |x| from 0 to 1e300, no overflow); with autograd it is torch.asinh, slope 1 at 0."""
    magnitudes = torch.cat([torch.zeros(1), torch.logspace(-12, 300, 2000, dtype=torch.float64)])
    x = torch.cat([magnitudes, -magnitudes])
    with torch.no_grad():
        fast = squashed(x, True)
    exact = torch.asinh(x)
    assert torch.equal(fast[x == 0], exact[x == 0])
    assert torch.all(torch.sign(fast) == torch.sign(exact))
    assert torch.allclose(fast, exact, rtol=1e-12, atol=1e-15)
    single = x[x.abs() < 1e30].float()
    with torch.no_grad():
        assert torch.allclose(squashed(single, True), torch.asinh(single), rtol=1e-6, atol=1e-7)
    leaf = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(squashed(leaf, True).sum(), leaf)
    assert torch.equal(slope, torch.ones(3, dtype=torch.float64))
    assert squashed(x, False) is x


def test_envelope_derivative_is_the_gradient():
    r = torch.linspace(0.3, 5.5, 400, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(polynomial_envelope(r, 5.0).sum(), r)
    torch.testing.assert_close(polynomial_envelope_derivative(r.detach(), 5.0), grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("repeat,interactions", [((1, 1, 1), 1), ((2, 2, 1), 1), ((1, 1, 1), 2), ((2, 2, 1), 2)])
def test_tape_equals_autograd_periodic(repeat, interactions):
    potential = make("potential", 3, cutoff=5.0, channels=6, radial_hidden=24, interactions=interactions)
    atoms = rattled(repeat, seed=sum(repeat))
    graph = build_graph([(atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)], SPECIES, 5.0)
    reference = autograd_reference(potential, graph)
    fast = potential.forward(graph, forces=True, stress=True)
    assert not fast["forces"].requires_grad
    assert float(reference["forces"].abs().max()) > 1e-2  # not a vacuous comparison
    for key in ("site_energies", "energy", "forces", "stress"):
        torch.testing.assert_close(fast[key], reference[key], rtol=1e-10, atol=1e-12, msg=key)


@pytest.mark.parametrize("interactions", [1, 2])
def test_tape_equals_autograd_batched_structures_and_energy_mask(interactions):
    """The inference forces (hand-written tapes) equal the training path's (autograd with
    create_graph) for two structures and an energy mask."""
    potential = make("potential", 4, cutoff=4.5, interactions=interactions)
    structures = [rattled(seed=s) for s in (1, 2)]
    graph = build_graph([(a.positions, a.numbers, np.asarray(a.cell), a.pbc) for a in structures], SPECIES, 4.5)
    mask = torch.from_numpy(np.random.default_rng(5).random(graph.n_atoms) < 0.4)
    reference = autograd_reference(potential, graph, energy_mask=mask)
    fast = potential.forward(graph, forces=True, stress=True, energy_mask=mask)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(fast[key], reference[key], rtol=1e-10, atol=1e-12, msg=key)


@pytest.mark.parametrize("interactions", [1, 2])
def test_tape_equals_autograd_cluster_with_ghosts(interactions):
    potential = make("potential", 5, cutoff=4.5, interactions=interactions)
    atoms = rattled(seed=9)
    atoms.pbc = False
    centres = np.random.default_rng(2).random(len(atoms)) < 0.5
    graph = build_cluster_graph(atoms.positions, atoms.numbers, centres, SPECIES, 4.5)
    reference = autograd_reference(potential, graph)
    fast = potential.forward(graph, forces=True, stress=False)
    torch.testing.assert_close(fast["site_energies"], reference["site_energies"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast["forces"], reference["forces"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("squash", [False, True])
def test_interaction_tape_equals_autograd(squash):
    """:class:`InteractionTape` gives autograd's gradients of a scalar of the second density B
    with respect to the edge vectors, A1, A2 and the latent (float64, fitted-like standardisation)."""
    torch.manual_seed(3)
    density = AtomicDensity(3, 4.5, channels=5, n_basis=6, radial_hidden=16).double()
    density.EDGES_PER_BLOCK = 300  # several blocks of centres
    interaction = EdgeInteraction(3, 6, 5, 16, 7, squash=squash).double()
    interaction.edge_shift.normal_()
    interaction.edge_scale.uniform_(0.05, 0.5)
    atoms = rattled((1, 2, 1), seed=6)
    graph = build_graph([(atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)], SPECIES, 4.5)
    vectors = graph.edge_vectors().detach().double()
    n, c = vectors.shape[0], 5
    a1, a2, latent = (torch.randn(n, c, 3, dtype=torch.float64), torch.randn(n, c, 5, dtype=torch.float64),
                      torch.randn(n, 7, dtype=torch.float64))
    probes = [torch.randn(n, c, dtype=torch.float64), torch.randn(n, c, 3, dtype=torch.float64),
              torch.randn(n, c, 5, dtype=torch.float64)]
    leaves = [t.clone().requires_grad_(True) for t in (vectors, a1, a2, latent)]
    geometry = EdgeGeometry(leaves[0], graph.centre_species, graph.species[graph.neighbours])
    b = interaction.densities(geometry, density, *leaves[1:])
    target = sum((x * p).sum() for x, p in zip(b, probes))
    expected = torch.autograd.grad(target, leaves)
    with torch.no_grad():
        geometry = EdgeGeometry(vectors, graph.centre_species, graph.species[graph.neighbours])
        b_tape, tape = interaction.densities_with_tape(geometry, density, a1, a2, latent)
        blocks, g_a1, g_a2, g_latent = tape.backward(*probes)
        rows = density.rows_per_block(vectors.shape[1])
        assert rows < n
        got = (edge_vector_gradient(density, geometry, rows, blocks), g_a1, g_a2, g_latent)
    for x, y in zip(b_tape, b):
        torch.testing.assert_close(x, y.detach(), rtol=1e-12, atol=1e-12)
    assert float(expected[0].abs().max()) > 1e-3 and float(expected[1].abs().max()) > 1e-3  # not vacuous
    for name, x, y in zip(("edge_vec", "a1", "a2", "latent"), got, expected):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12, msg=name)


def test_combined_step_equals_separate_autograd_evaluations():
    potentials = [make("potential", s, cutoff=c, interactions=i) for s, c, i in ((6, 4.5, 1), (7, 5.0, 2))]
    borns = [make("born", s, cutoff=4.5) for s in (8, 9)]
    atoms = rattled((1, 2, 1), seed=4)
    args = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
    step = evaluate_periodic(PotentialCommittee(potentials), BornCommittee(borns), *args, stress=True)
    graph = build_graph([args], SPECIES, 5.0)
    references = [autograd_reference(p, graph) for p in potentials]
    np.testing.assert_allclose(step.energy, np.mean([float(r["energy"][0]) for r in references]), rtol=1e-12)
    np.testing.assert_allclose(step.forces, np.mean([r["forces"].numpy() for r in references], 0),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(step.stress, np.mean([r["stress"][0].numpy() for r in references], 0),
                               rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        z_raw = np.mean([b.forward(graph, asr=False).numpy() for b in borns], 0)
    np.testing.assert_allclose(step.born_raw, z_raw, rtol=1e-10, atol=1e-12)

    centres = np.arange(len(atoms)) % 3 != 0
    atoms.pbc = False
    cluster = evaluate_cluster(PotentialCommittee(potentials), BornCommittee(borns), atoms.positions,
                               atoms.numbers, centres)
    cluster_graph = build_cluster_graph(atoms.positions, atoms.numbers, centres, SPECIES, 5.0)
    references = [autograd_reference(p, cluster_graph) for p in potentials]
    np.testing.assert_allclose(cluster.forces, np.mean([r["forces"].numpy() for r in references], 0),
                               rtol=1e-10, atol=1e-12)


def test_polar_born_model_is_evaluated_beside_the_shared_potential_pass():
    """A polar Born committee (not evaluable block by block) leaves the potential its shared pass and
    neighbour lists; its Z comes from its own periodic / cluster evaluation, identical to the direct calls;
    replica batches keep batching it."""
    from bornfield.models.combined import evaluate_periodic_batch, evaluated_separately, verlet_graphs

    potentials = PotentialCommittee([make("potential", s, cutoff=4.5) for s in (6, 7)])
    polar = BornCommittee([make("born", s, cutoff=4.0, architecture="polar", edge_layers=1) for s in (8, 9)])
    assert evaluated_separately(polar) and not evaluated_separately(BornCommittee([make("born", 8, cutoff=4.5)]))
    atoms = rattled((1, 2, 1), seed=5)
    args = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
    graphs = verlet_graphs(potentials, polar, 0.5)
    assert graphs is not None  # the potential keeps its Verlet lists
    step = evaluate_periodic(potentials, polar, *args, stress=True, graphs=graphs)
    alone = evaluate_periodic(potentials, None, *args, stress=True)
    np.testing.assert_allclose(step.forces, alone.forces, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(step.stress, alone.stress, rtol=1e-10, atol=1e-12)
    z = polar.born_charges(*args)
    np.testing.assert_allclose(step.born_raw - step.born_raw.mean(0), z, atol=1e-12)
    assert np.abs(z - z.mean(0)).max() > 1e-3
    batch = evaluate_periodic_batch(potentials, polar, [args, args], with_born=[True, False])
    np.testing.assert_allclose(batch[0].born_raw, step.born_raw, atol=1e-12)
    assert batch[1].born_raw is None
    np.testing.assert_allclose(batch[1].forces, alone.forces, rtol=1e-10, atol=1e-12)
    # cluster: owned cell + images to twice the cutoff
    positions, numbers, owned, _ = periodic_images(atoms, polar.receptive_field)
    cluster = evaluate_cluster(potentials, polar, positions, numbers, owned)
    np.testing.assert_allclose(cluster.born_raw - cluster.born_raw.mean(0), z, atol=1e-10)


def test_message_potential_is_evaluated_whole_in_steps_and_clusters():
    """A message-passing potential committee (not evaluable block by block, here beside a block-wise
    member) joins the shared step pass on the same periodic graph (Verlet lists kept) and gives the MD
    step evaluations (periodic, replica batch, cluster with ghosts to twice the cutoff, with or without
    the baseline) its own numbers."""
    from bornfield.models.baseline import pedone_baseline
    from bornfield.models.combined import evaluate_periodic_batch, verlet_graphs

    baseline = pedone_baseline(6.0, 0.22)
    potentials = PotentialCommittee(
        [make("potential", s, cutoff=3.5, architecture="message", interactions=2, baseline=baseline) for s in (6, 7)]
        + [make("potential", 9, cutoff=3.5, baseline=baseline)])
    born = BornCommittee([make("born", 8, cutoff=3.5)])
    graphs = verlet_graphs(potentials, born, 0.5)
    assert graphs is not None
    atoms = rattled((1, 2, 1), seed=5)
    args = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
    energy, forces, stress = potentials.energy_forces_stress(*args)
    assert np.abs(forces).max() > 1e-3
    step = evaluate_periodic(potentials, born, *args, stress=True, graphs=graphs)
    assert step.energy == pytest.approx(energy, rel=1e-12)
    np.testing.assert_allclose(step.forces, forces, atol=1e-12)
    np.testing.assert_allclose(step.stress, stress, atol=1e-12)
    z = born.born_charges(*args)
    np.testing.assert_allclose(step.born_raw - step.born_raw.mean(0), z, atol=1e-12)
    batch = evaluate_periodic_batch(potentials, born, [args, args], with_born=[True, False])
    np.testing.assert_allclose(batch[1].forces, forces, atol=1e-12)
    positions, numbers, owned, n_images = periodic_images(atoms, potentials.receptive_field)
    cluster = evaluate_cluster(potentials, born, positions, numbers, owned)
    assert cluster.energy == pytest.approx(energy, rel=1e-10)
    np.testing.assert_allclose(cluster.forces.reshape(n_images, len(atoms), 3).sum(0), forces, atol=1e-10)
    np.testing.assert_allclose(cluster.born_raw - cluster.born_raw.mean(0), z, atol=1e-10)
    # the networks alone (the baseline left to LAMMPS pair styles): ghosts to twice the network cutoff suffice
    assert potentials.network_receptive_field == 7.0 and potentials.receptive_field == 7.0
    networks = evaluate_periodic(potentials, born, *args, with_baseline=False)
    pair_energy = sum(b.site_energies_and_edge_gradient(potentials.members[0].make_graph(*args))[0].sum().item()
                      for b in [potentials.members[0].baseline])
    assert networks.energy == pytest.approx(energy - pair_energy, rel=1e-10)
    near = np.linalg.norm(positions[:, None] - atoms.positions[None], axis=-1).min(1) <= 7.0
    alone = evaluate_cluster(potentials, born, positions[near], numbers[near], owned[near], with_baseline=False)
    assert alone.energy == pytest.approx(networks.energy, rel=1e-10)
    np.testing.assert_allclose(_fold(alone.forces, np.flatnonzero(near) % len(atoms), len(atoms)),
                               networks.forces, atol=1e-10)


@pytest.mark.parametrize("with_baseline", [False, True])
@pytest.mark.parametrize("committee", [False, True])
def test_message_potential_exchanges_latents_between_domains(with_baseline, committee):
    """A domain-decomposed message step (:class:`OwnedSiteStep`), emulated serially with three
    "ranks" owning slabs of the cell and ghosts only to one cutoff (two with the baseline), the
    latents and their gradients exchanged by atom tag, gives the periodic energy and forces
    (float64); a rank that owns nothing takes part with empty arrays. A committee of two message
    potentials (network cutoffs 3.5 and 3.0 Å) exchanges both members' latents side by side
    (:class:`CommitteeOwnedStep`) and gives the committee mean."""
    from bornfield.models.baseline import pedone_baseline

    baseline = pedone_baseline(6.0, 0.22) if with_baseline else None
    model = make("potential", 6, cutoff=3.5, architecture="message", interactions=2, baseline=baseline)
    if committee:
        other = make("potential", 7, cutoff=3.0, architecture="message", interactions=2, baseline=baseline,
                     channels=3)
        model = PotentialCommittee([model, other])
        assert model.exchanges_latents and model.latent_width == model.members[0].latent_width + other.latent_width
    atoms = rattled((1, 2, 1), seed=5)
    n = len(atoms)
    energy, forces, _ = model.energy_forces_stress(atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
    assert np.abs(forces).max() > 1e-3
    reach = model.cutoff if with_baseline else model.local_cutoff
    positions, numbers, _, n_images = periodic_images(atoms, reach + 1.0)
    tags = np.tile(np.arange(n), n_images)
    fractional = atoms.get_scaled_positions()[:, 1]
    owners = [fractional < 0.4, fractional >= 0.4, np.zeros(n, dtype=bool)]
    steps, clusters = [], []
    for owner in owners:
        owned_rows = np.flatnonzero(owner)
        others = np.setdiff1d(np.arange(len(positions)), owned_rows)
        distance = np.full(len(others), np.inf)
        if len(owned_rows):
            distance = np.linalg.norm(positions[others, None] - positions[owned_rows][None], axis=-1).min(1)
        rows = np.concatenate([owned_rows, others[distance < reach]])
        clusters.append(rows)
        graph = build_cluster_graph(positions[rows], numbers[rows], np.arange(len(rows)) < len(owned_rows),
                                    SPECIES, reach, model.dtype)
        steps.append(model.owned_step(graph, with_baseline=with_baseline))
    hidden = steps[0].latents.shape[1]
    table = np.zeros((n, hidden))
    for owner, step in zip(owners, steps):
        table[np.flatnonzero(owner)] = step.latents
    gradient = np.zeros((n, hidden))
    for rows, step in zip(clusters, steps):
        np.add.at(gradient, tags[rows], step.latent_gradient(table[tags[rows]]))
    total = np.zeros((n, 3))
    for owner, rows, step in zip(owners, clusters, steps):
        np.add.at(total, tags[rows], step.forces(gradient[np.flatnonzero(owner)]))
    assert sum(float(step.site_energies.sum()) for step in steps) == pytest.approx(energy, rel=1e-10)
    np.testing.assert_allclose(total, forces, atol=1e-10)
    assert len(steps[2].site_energies) == 0


def periodic_images(atoms, reach_A):
    """Open-boundary copy of a periodic cell: the cell first (owned), then its images out to ``reach_A``.

    Returns positions (M, 3), numbers (M,), the owned mask (M,) and the number of images (cell included).
    """
    cell = np.asarray(atoms.cell)
    reach = int(np.ceil(reach_A / min(np.linalg.norm(cell, axis=1))))
    shells = range(-reach, reach + 1)
    images = [(0, 0, 0)] + [(i, j, k) for i in shells for j in shells for k in shells if (i, j, k) != (0, 0, 0)]
    positions = np.concatenate([atoms.positions + np.array(v) @ cell for v in images])
    owned = np.arange(len(positions)) < len(atoms)
    return positions, np.tile(atoms.numbers, len(images)), owned, len(images)


def _fold(forces, atom_of_row, n_atoms):
    """Forces on images summed onto their atoms."""
    out = np.zeros((n_atoms, 3))
    np.add.at(out, atom_of_row, forces)
    return out


def test_saved_model_gives_its_recorded_outputs():
    """Model files written by the code before the speed work: same numbers to float32 round-off."""
    potential = load_potential(DATA / "potential_ref.pt")
    born = load_born(DATA / "born_ref.pt")
    assert potential.dtype == torch.float32 and born.dtype == torch.float32
    ref = np.load(DATA / "reference_outputs.npz")
    args = (ref["positions"], ref["numbers"], ref["cell"], np.array([True, True, True]))
    energy, forces, stress = potential.energy_forces_stress(*args)
    force_scale = float(np.abs(ref["forces"]).max())
    assert force_scale > 0.1
    np.testing.assert_allclose(energy, ref["energy"], rtol=2e-6)
    np.testing.assert_allclose(forces, ref["forces"], rtol=0, atol=2e-5 * force_scale)
    np.testing.assert_allclose(stress, ref["stress"], rtol=0, atol=2e-5 * float(np.abs(ref["stress"]).max()))
    np.testing.assert_allclose(born.born_charges(*args), ref["born_charges"], rtol=0, atol=2e-6)
    step = evaluate_periodic(potential, born, *args, stress=True)
    np.testing.assert_allclose(step.energy, ref["step_energy"], rtol=2e-6)
    np.testing.assert_allclose(step.forces, ref["step_forces"], rtol=0, atol=2e-5 * force_scale)
    np.testing.assert_allclose(step.stress, ref["step_stress"], rtol=0,
                               atol=2e-5 * float(np.abs(ref["step_stress"]).max()))
    np.testing.assert_allclose(step.born_raw, ref["step_born_raw"], rtol=0, atol=2e-6)


@pytest.fixture
def two_torch_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_centre_blocks_cover_every_row_once():
    from bornfield.models.threads import centre_blocks

    for n_rows, k, edges, workers in [(1, 40, 65536, 2), (7, 40, 100, 2), (1024, 53, 65536, 2), (8192, 53, 65536, 1),
                                      (1000, 60, 5000, 3)]:
        blocks = centre_blocks(n_rows, k, edges, workers)
        rows = np.concatenate([np.arange(n_rows)[b] for b in blocks])
        np.testing.assert_array_equal(rows, np.arange(n_rows))
        if workers > 1 and n_rows >= workers:
            assert len(blocks) % workers == 0 or len(blocks) == n_rows
        assert max(b.stop - b.start for b in blocks) * k <= max(edges, k) * 2


@pytest.mark.parametrize("mode", ["blocks", "intraop"])
def test_parallel_blocks_give_the_serial_numbers(monkeypatch, two_torch_threads, mode):
    """Two threads (blocks of centres in parallel, or torch's intra-op threads): the 1-thread numbers."""
    from bornfield.models import threads

    potential = make("potential", 10, cutoff=4.5)
    born = make("born", 11, cutoff=4.5)
    atoms = rattled((2, 1, 1), seed=12)
    args = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
    graph = build_graph([args], SPECIES, 4.5)
    monkeypatch.setenv("BORNFIELD_MODEL_THREADS", "intraop")
    torch.set_num_threads(1)
    serial = potential.forward(graph, forces=True, stress=True)
    with torch.no_grad():
        z_serial = born.forward(graph)
    step_serial = evaluate_periodic(potential, born, *args, stress=True)
    torch.set_num_threads(2)
    monkeypatch.setenv("BORNFIELD_MODEL_THREADS", mode)
    # small tasks so that even this cell is split into several parallel blocks
    monkeypatch.setattr(threads, "EDGES_PER_TASK", 300)
    monkeypatch.setattr(threads, "_POOLS", {})
    monkeypatch.setattr(threads.map_geometry_blocks, "__defaults__", (300,))
    assert threads.parallel_workers() == (2 if mode == "blocks" else 1)
    parallel = potential.forward(graph, forces=True, stress=True)
    with torch.no_grad():
        z_parallel = born.forward(graph)
    step = evaluate_periodic(potential, born, *args, stress=True)
    assert torch.get_num_threads() == 2  # restored after the parallel section
    assert bool(threads._POOLS) == (mode == "blocks")  # the blocks did run in the thread pool
    for key in ("site_energies", "forces", "stress"):
        torch.testing.assert_close(parallel[key], serial[key], rtol=1e-12, atol=1e-13, msg=key)
    torch.testing.assert_close(z_parallel, z_serial, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(step.forces, step_serial.forces, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(step.born_raw, step_serial.born_raw, rtol=1e-12, atol=1e-13)


def test_unknown_threading_mode_is_a_config_error(monkeypatch):
    from bornfield.errors import ConfigError
    from bornfield.models.threads import parallel_workers

    monkeypatch.setenv("BORNFIELD_MODEL_THREADS", "gpu")
    with pytest.raises(ConfigError, match="BORNFIELD_MODEL_THREADS"):
        parallel_workers()


def test_graph_cache_is_shared_and_follows_position_changes():
    """Potential and Born model share the cached edge geometry of a graph; moved atoms invalidate it."""
    potential = make("potential", 13, cutoff=4.5)
    born = make("born", 14, cutoff=4.5)
    atoms = rattled(seed=15)
    args = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
    graph = build_graph([args], SPECIES, 4.5)
    forces = potential.forward(graph)["forces"]
    geometries = [v for k, v in graph._cache.items() if k[0] == "edge_geometry"]
    assert geometries
    with torch.no_grad():
        z = born.forward(graph)
    assert [v for k, v in graph._cache.items() if k[0] == "edge_geometry"] == geometries  # reused, not rebuilt

    def fresh(positions):
        g = build_graph([(positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)], SPECIES, 4.5)
        with torch.no_grad():
            return potential.forward(g)["forces"], born.forward(g)

    with torch.no_grad():
        graph.positions[3] += torch.tensor([0.05, -0.02, 0.03], dtype=graph.positions.dtype)  # in place
        moved = potential.forward(graph)["forces"], born.forward(graph)
    reference = fresh(graph.positions.numpy())
    assert not torch.allclose(moved[0], forces) and not torch.allclose(moved[1], z)
    torch.testing.assert_close(moved[0], reference[0], rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(moved[1], reference[1], rtol=1e-12, atol=1e-13)
    graph.positions = torch.from_numpy(atoms.positions.copy())  # a new tensor: back to the first positions
    torch.testing.assert_close(potential.forward(graph)["forces"], forces, rtol=1e-12, atol=1e-13)


def test_parallel_blocks_run_in_the_callers_autograd_mode(two_torch_threads, monkeypatch):
    from bornfield.models import threads

    monkeypatch.setenv("BORNFIELD_MODEL_THREADS", "blocks")
    blocks = [slice(0, 1), slice(1, 2), slice(2, 3), slice(3, 4)]
    with torch.no_grad():
        assert threads.map_blocks(lambda b: torch.is_grad_enabled(), blocks) == [False] * 4
    assert threads.map_blocks(lambda b: torch.is_grad_enabled(), blocks) == [True] * 4
    names = threads.map_blocks(lambda b: __import__("threading").current_thread().name, blocks)
    assert all(name.startswith("bornfield-model") for name in names)


def test_parallel_section_runs_torch_single_threaded_and_restores(two_torch_threads, monkeypatch):
    from bornfield.models import threads

    monkeypatch.setenv("BORNFIELD_MODEL_THREADS", "blocks")
    with threads.parallel_section():
        assert torch.get_num_threads() == 1
        assert threads.parallel_workers() == 2
        with threads.parallel_section():  # re-entrant
            assert torch.get_num_threads() == 1
        names = threads.map_blocks(lambda b: __import__("threading").current_thread().name, [slice(0, 1), slice(1, 2)])
        assert all(name.startswith("bornfield-model") for name in names)
    assert torch.get_num_threads() == 2 and threads.parallel_workers() == 2
    # training keeps torch's threads: forces with create_graph=True are not a parallel section
    potential = make("potential", 16, cutoff=4.5)
    atoms = rattled(seed=17)
    graph = build_graph([(atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)], SPECIES, 4.5)
    seen = []
    original = potential.site_energies

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(potential, "site_energies", spy)
    potential.forward(graph, forces=True, create_graph=True)
    assert seen == [2]


def test_polar_field_rows_are_z_transpose_e_in_every_evaluation_path():
    """The polar model's rows Zᵀ·E by one backward pass equal the contraction of its full Z (float64):
    Protocol call, periodic step (the potential's forces unchanged, no Z computed), replica batch with
    rows for one structure and Z for the other, open-boundary cluster; ASR exact; a model without the
    cheaper path gives the same rows contracted from its Z."""
    from bornfield.fieldphysics import asr_correct, field_forces
    from bornfield.models.combined import evaluate_periodic_batch, field_rows_cheaper

    potentials = PotentialCommittee([make("potential", 6, cutoff=4.5)])
    polar = BornCommittee([make("born", s, cutoff=4.0, architecture="polar", edge_layers=1) for s in (8, 9)])
    density = BornCommittee([make("born", 8, cutoff=4.5)])
    assert field_rows_cheaper(polar) and not field_rows_cheaper(density) and not field_rows_cheaper(None)
    atoms = rattled((1, 2, 1), seed=7)
    args = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
    field = np.array([0.03, -0.11, 0.07])
    for born in (polar, density):
        expected = field_forces(born.born_charges(*args), field)
        assert np.abs(expected).max() > 1e-3
        rows = born.born_field_forces(*args, field) if born is polar else None
        if rows is not None:
            np.testing.assert_allclose(rows, expected, rtol=0, atol=1e-12)
            assert np.abs(rows.sum(axis=0)).max() < 1e-12
        step = evaluate_periodic(potentials, born, *args, born_field=field)
        assert step.born_raw is None
        np.testing.assert_allclose(asr_correct(step.field_rows_raw), expected, rtol=0, atol=1e-12)
        np.testing.assert_allclose(step.forces, evaluate_periodic(potentials, None, *args).forces, atol=1e-12)
        batch = evaluate_periodic_batch(potentials, born, [args, args], born_fields=[field, None])
        np.testing.assert_allclose(asr_correct(batch[0].field_rows_raw), expected, rtol=0, atol=1e-12)
        assert batch[0].born_raw is None and batch[1].field_rows_raw is None
        np.testing.assert_allclose(asr_correct(batch[1].born_raw), born.born_charges(*args), atol=1e-12)
    positions, numbers, owned, _ = periodic_images(atoms, polar.receptive_field)
    rows = polar.cluster_field_rows_raw(positions, numbers, field, owned)
    z = polar.cluster_born_charges_raw(positions, numbers, owned)
    np.testing.assert_allclose(rows, field_forces(z, field), rtol=0, atol=1e-12)
    np.testing.assert_allclose(asr_correct(rows), field_forces(polar.born_charges(*args), field), atol=1e-10)
    positions, numbers, owned, _ = periodic_images(atoms, density.receptive_field)
    rows = density.cluster_field_rows_raw(positions, numbers, field, owned)  # contracted from its raw Z
    np.testing.assert_allclose(asr_correct(rows), field_forces(density.born_charges(*args), field), atol=1e-10)


@pytest.mark.parametrize("committee", [False, True])
def test_polar_born_values_sum_over_the_domains_owned_dipoles(committee):
    """A polar Born model on a domain decomposition, emulated serially with three "ranks" owning slabs
    of the cell (one owning nothing) and ghosts to one cutoff only: each rank's share
    (``cluster_owned_partial``: the derivatives of its owned dipoles, the charge offsets of its owned
    atoms) summed by atom tag gives the periodic raw Z and raw rows Z̃ᵀ·E (float64), for one model and
    for the mean of a committee."""
    model = make("born", 11, cutoff=3.5, architecture="polar", edge_layers=1)
    if committee:
        model = BornCommittee([model, make("born", 12, cutoff=3.0, architecture="polar", edge_layers=1)])
    assert model.sums_owned_dipoles and not getattr(make("born", 11, cutoff=3.5), "sums_owned_dipoles", False)
    atoms = rattled((1, 2, 1), seed=6)
    n, field = len(atoms), np.array([0.3, -0.2, 0.5])
    graph = build_graph([(atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)], SPECIES,
                        model.cutoff, torch.float64)
    members = model.members if committee else [model]
    with torch.no_grad():
        z = np.mean([m.raw_charges(graph).numpy() for m in members], axis=0)
        rows = np.mean([m.raw_field_rows(graph, torch.as_tensor(field.reshape(1, 3))).numpy() for m in members], axis=0)
    np.testing.assert_allclose(rows, np.einsum("nab,a->nb", z, field), atol=1e-12)
    positions, numbers, _, n_images = periodic_images(atoms, model.cutoff + 1.0)
    tags = np.tile(np.arange(n), n_images)
    fractional = atoms.get_scaled_positions()[:, 1]
    summed_z, summed_rows = np.zeros((n, 3, 3)), np.zeros((n, 3))
    for owner in (fractional < 0.4, fractional >= 0.4, np.zeros(n, dtype=bool)):
        owned_rows = np.flatnonzero(owner)
        others = np.setdiff1d(np.arange(len(positions)), owned_rows)
        distance = np.full(len(others), np.inf)
        if len(owned_rows):
            distance = np.linalg.norm(positions[others, None] - positions[owned_rows][None], axis=-1).min(1)
        cluster = np.concatenate([owned_rows, others[distance < model.cutoff]])
        owned = np.arange(len(cluster)) < len(owned_rows)
        np.add.at(summed_z, tags[cluster], model.cluster_owned_partial(positions[cluster], numbers[cluster], owned))
        np.add.at(summed_rows, tags[cluster],
                  model.cluster_owned_partial(positions[cluster], numbers[cluster], owned, field))
    assert np.abs(z).max() > 0.5 and np.abs(z - z.mean(axis=0)).max() > 1e-3
    np.testing.assert_allclose(summed_z, z, atol=1e-10)
    np.testing.assert_allclose(summed_rows, rows, atol=1e-10)
