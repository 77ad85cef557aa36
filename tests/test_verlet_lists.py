"""Neighbour lists kept between MD steps (Verlet lists with a skin), float64.

* along an MD trajectory (ASE backend, NN potential with the Pedone baseline at a longer
  cutoff + equivariant Born model, a skewed cell, atoms crossing the cell faces) energies,
  forces, field forces, Born charges, stress and the committee uncertainty equal those of a
  fresh list at every step to 1e-10, while the list is rebuilt only now and then;
* the list is rebuilt when it must be: an atom moved more than skin/2 (not when it moved
  less, or by a lattice vector), the cell, the atomic numbers or the atom count changed;
* a pair that comes within the cutoff after a move of more than skin/2 is found (the test
  fails without the rebuild criterion);
* a run resumed from a checkpoint continues bit for bit as the uninterrupted run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

from bornfield.calculators import FieldCalculator
from bornfield.config import validate_section
from bornfield.fieldphysics import committee_force_uncertainty
from bornfield.md.ase_backend import ASEBackend
from bornfield.md.fields import FieldSchedule
from bornfield.models.baseline import pedone_baseline
from bornfield.models.combined import evaluate_periodic, verlet_graphs
from bornfield.models.graph import VerletGraphs, build_graph

from test_models import SPECIES, beta_li3po4, make

LOCAL, LONG, SKIN = 4.0, 7.0, 0.6  # network cutoff, baseline cutoff (Å), skin (Å)


def potential(seed=0):
    return make("potential", seed, cutoff=LOCAL, baseline=pedone_baseline(LONG, 0.25))


def born(seed=1):
    return make("born", seed, cutoff=LOCAL, interactions=2)


def skewed_cell() -> Atoms:
    """32 atoms of beta-Li3PO4 in a sheared cell (not orthogonal), rattled."""
    atoms = beta_li3po4().repeat((2, 1, 1))
    strain = np.eye(3) + np.array([[0.0, 0.08, -0.05], [0.03, 0.0, 0.06], [0.0, -0.04, 0.02]])
    atoms.set_cell(np.asarray(atoms.cell) @ strain, scale_atoms=True)
    atoms.rattle(0.05, seed=2)
    return atoms


def md_settings(**overrides) -> dict:
    return validate_section({"ensemble": "bussi", "timestep_fs": 2.0, "equilibration_steps": 0,
                             "production_steps": 1000, "safety": {"max_temperature_factor": 100.0},
                             "neighbour_skin_A": SKIN, **overrides}, "md")


def edges(graph) -> list:
    """Sorted (centre, neighbour, shift) of every masked edge (shifts rounded to 1e-9 Å)."""
    shifts, mask, neighbours = graph.shifts.numpy(), graph.mask.numpy(), graph.neighbours.numpy()
    rows, slots = np.nonzero(mask)
    return sorted((int(i), int(neighbours[i, k]), *np.round(shifts[i, k], 9)) for i, k in zip(rows, slots))


def assert_same_graphs(graph, fresh, cutoffs):
    assert graph.cutoff == fresh.cutoff and edges(graph) == edges(fresh)
    for cutoff in cutoffs:
        assert edges(graph.within(cutoff)) == edges(fresh.within(cutoff))


def test_md_with_the_skin_list_equals_fresh_lists_every_step():
    atoms = skewed_cell()
    committee = [potential(seed=5)]
    schedule = FieldSchedule((0.2, -0.1, 0.05), field_on_step=0, timestep_fs=2.0)
    backend = ASEBackend(atoms, potential(), born(), md_settings(), schedule, 1500.0, seed=3, committee=committee)
    fresh = FieldCalculator(backend.potential, backend.calc.born, neighbour_skin=0.0)
    assert fresh.graphs is None and backend.calc.graphs is not None
    wrapped = backend.atoms.get_positions(wrap=True)
    crossings, worst = 0, 0.0
    for _ in range(60):
        backend.advance(1)
        now = backend.atoms.get_positions(wrap=True)
        crossings += int(np.sum(np.abs(now - wrapped) > 2.0))  # an atom crossed a cell face
        wrapped = now
        probe = backend.atoms.copy()
        probe.calc = fresh
        fresh.set_field(backend.calc.field)
        kept = backend.calc.results
        for key in ("forces", "field_forces", "born_charges"):
            worst = max(worst, float(np.abs(kept[key] - fresh.get_property(key, probe)).max()))
        worst = max(worst, abs(kept["energy"] - fresh.get_potential_energy(probe)))
    assert worst < 1e-10
    # the list was kept between steps, rebuilt when needed, and atoms were wrapped meanwhile
    assert 2 <= backend.calc.graphs.builds < 30 and crossings > 0
    # stress and the committee statistics from the kept list
    kept_stress = backend.calc.get_stress(backend.atoms)
    assert np.abs(kept_stress - fresh.get_stress(probe)).max() < 1e-10
    members = [backend.potential, *committee]
    reference = committee_force_uncertainty([m.energy_forces_stress(backend.atoms.get_positions(wrap=True),
                                                                   atoms.numbers, np.asarray(atoms.cell),
                                                                   atoms.pbc)[1] for m in members])
    assert backend.committee_force_std() == pytest.approx(reference, rel=1e-10, abs=1e-12)


def test_list_is_rebuilt_exactly_when_it_must_be():
    atoms = skewed_cell()
    positions, numbers, cell, pbc = atoms.get_positions(wrap=True), atoms.numbers, np.asarray(atoms.cell), atoms.pbc
    graphs = VerletGraphs(SPECIES, LONG, SKIN, torch.float64, sub_cutoffs=[LOCAL])

    def check(p, n=numbers, c=cell):
        assert_same_graphs(graphs.graph(p, n, c, pbc), build_graph([(p, n, c, pbc)], SPECIES, LONG), [LOCAL])
        return graphs.builds

    assert check(positions) == 1
    direction = np.array([0.6, -0.48, 0.64])  # unit vector
    moved = positions.copy()
    moved[5] += 0.49 * SKIN * direction
    assert check(moved) == 1  # less than skin/2: the list still holds every pair
    moved[7] -= 0.45 * SKIN * direction
    moved[9] += cell[0] - cell[2] + 0.3 * SKIN * direction  # wrapped: a lattice vector counts as no move
    assert check(moved) == 1
    moved[5] += 0.02 * SKIN * direction
    assert check(moved) == 2  # now 0.51 skin from where the list was built
    assert check(moved) == 2  # same positions: the same graph
    strained = cell @ (np.eye(3) + 1e-3 * np.diag([1.0, -1.0, 0.5]))
    assert check(moved @ np.linalg.solve(cell, strained), c=strained) == 3  # a new cell
    swapped = numbers.copy()
    other = int(np.flatnonzero(numbers != numbers[0])[0])
    swapped[[0, other]] = swapped[[other, 0]]
    assert check(moved @ np.linalg.solve(cell, strained), n=swapped, c=strained) == 4  # new atomic numbers
    assert check(positions[:-1], n=numbers[:-1]) == 5  # an atom fewer
    with pytest.raises(ValueError, match="skin"):
        VerletGraphs(SPECIES, LONG, -0.1)


@pytest.mark.parametrize(("gap", "step", "builds"), [
    (SKIN + 0.1, 0.4, 2),  # beyond the list's reach; each atom moves 0.4 > skin/2: rebuilt, now within LONG
    (SKIN - 0.05, 0.29, 1),  # in the list; moves < skin/2: kept, now within LONG
    (SKIN + 0.1, 0.29, 1),  # beyond the list's reach; moves < skin/2: kept, still beyond LONG
])
def test_pair_coming_into_range_is_found(gap, step, builds):
    """Two atoms ``LONG + gap`` apart move towards each other by ``step`` each: the pair is found
    whenever it comes within the cutoff (the first case fails without the rebuild criterion)."""
    model = potential()
    cell = np.diag([30.0, 20.0, 20.0])
    start = np.array([[5.0, 5.0, 5.0], [5.0 + LONG + gap, 5.0, 5.0], [20.0, 12.0, 12.0]])
    numbers = np.array([3, 8, 15])
    pbc = np.ones(3, dtype=bool)
    graphs = verlet_graphs(model, None, SKIN)
    evaluate_periodic(model, None, start, numbers, cell, pbc, graphs=graphs)
    moved = start + np.array([[step, 0, 0], [-step, 0, 0], [0, 0, 0]])
    kept = evaluate_periodic(model, None, moved, numbers, cell, pbc, graphs=graphs)
    fresh = evaluate_periodic(model, None, moved, numbers, cell, pbc)
    assert graphs.builds == builds
    assert kept.energy == pytest.approx(fresh.energy, abs=1e-10)
    assert np.abs(kept.forces - fresh.forces).max() < 1e-10
    inside = LONG + gap - 2 * step < LONG
    assert (np.abs(fresh.forces[0]).max() > 0.0) == inside  # the Li-O pair interacts (no other pair does)


def test_resumed_run_continues_bit_for_bit(tmp_path):
    from bornfield.md.engine import ReplicaRunner

    settings = md_settings(production_steps=40, output={"checkpoint_interval": 20, "trajectory_stride": 5,
                                                        "thermo_stride": 5})
    schedule = FieldSchedule((0.1, 0.0, 0.0), field_on_step=0, timestep_fs=2.0)

    def run(name, stop=None):
        backend = ASEBackend(skewed_cell(), potential(), born(), settings, schedule, 1200.0, seed=4)
        if stop is not None:
            original = backend.advance

            def advance(n):
                if backend.step >= stop:
                    raise KeyboardInterrupt("killed")
                original(n)

            backend.advance = advance
        runner = ReplicaRunner(backend, settings, tmp_path / name, {"replica": 0}, 1200.0, progress=False)
        try:
            runner.run()
        except KeyboardInterrupt:
            pass
        return backend

    whole = run("whole")
    run("resumed", stop=25)  # killed after the checkpoint at step 20
    resumed = run("resumed")
    assert resumed.step == whole.step == 40
    assert np.array_equal(resumed.atoms.get_positions(), whole.atoms.get_positions())
    assert np.array_equal(resumed.atoms.get_momenta(), whole.atoms.get_momenta())
