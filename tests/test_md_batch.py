"""Replicas of one rank in lockstep with one batched model evaluation per step (``md.batch_replicas``).

Tiny random bornfield models (NN 4 Å on a Pedone baseline at 7 Å, equivariant Born model with
two interactions; float64 unless said otherwise):

* the batch of different structures (sizes, cells, Verlet lists or fresh lists, Born charges
  wanted by some) gives each structure's energy, forces, stress and Born charges as its own
  evaluation does (float64 1e-10; float32 1e-5 relative);
* the rendezvous of replica threads: results as one by one, a closed slot no longer holds the
  others up, an exception reaches only the replica whose structure raised, abort wakes waiters;
* 3 replicas x 30 MD steps batched follow the sequential trajectories (1e-8 Å), in batches of 3;
* a replica that blows up (bad start cell; non-finite forces mid-run) is marked failed while
  the others complete;
* a batched run killed after a checkpoint and resumed continues as the uninterrupted batched run.
"""

from __future__ import annotations

import json
import logging
import threading

import h5py
import numpy as np
import pytest

from bornfield.calculators import FieldCalculator
from bornfield.config import validate_section
from bornfield.md.batching import BatchAborted, BatchEvaluator
from bornfield.md.conditions import expand_conditions
from bornfield.md.runner import run_condition
from bornfield.models.combined import evaluate_periodic, evaluate_periodic_batch, verlet_graphs

from test_models import beta_li3po4
from test_verlet_lists import SKIN, born, potential, skewed_cell


def structures():
    """Three different periodic structures (16, 31 and 32 atoms; orthorhombic and sheared cells)."""
    beta = beta_li3po4()
    beta.rattle(0.05, seed=3)
    vacancy = beta_li3po4().repeat((1, 2, 1))
    del vacancy[0]
    vacancy.rattle(0.04, seed=4)
    return [skewed_cell(), beta, vacancy]


def as_tuple(atoms):
    return atoms.get_positions(wrap=True), atoms.numbers, np.asarray(atoms.cell), np.asarray(atoms.pbc)


@pytest.fixture(scope="module")
def models():
    return potential(), born()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batch_equals_one_by_one(models, dtype):
    pot, bor = models
    if dtype == "float32":
        pot, bor = potential().float(), born().float()
    tolerance = 1e-10 if dtype == "float64" else 1e-5
    cells = [as_tuple(a) for a in structures()]
    graphs = [verlet_graphs(pot, bor, SKIN), None, verlet_graphs(pot, bor, SKIN)]  # kept lists and a fresh one
    wanted = [True, False, True]
    single = [evaluate_periodic(pot, bor, *c, with_born=w, stress=True, graphs=g)
              for c, w, g in zip(cells, wanted, graphs)]
    batch = evaluate_periodic_batch(pot, bor, cells, with_born=wanted, stress=True, graphs=graphs)
    assert len(batch) == 3
    for one, many, w in zip(single, batch, wanted):
        scale = np.abs(one.forces).max()
        assert many.forces.shape == one.forces.shape
        assert abs(many.energy - one.energy) <= tolerance * max(abs(one.energy), 1.0)
        assert np.abs(many.forces - one.forces).max() <= tolerance * scale
        assert np.abs(many.stress - one.stress).max() <= tolerance * np.abs(one.stress).max()
        assert np.allclose(many.site_energies, one.site_energies, rtol=0, atol=tolerance * 10)
        if w:
            assert np.abs(many.born_raw - one.born_raw).max() <= tolerance * np.abs(one.born_raw).max()
        else:
            assert many.born_raw is None and one.born_raw is None
    # the calculator's field forces and ASR-corrected Z through a batch slot equal the direct ones
    evaluator = BatchEvaluator()
    with evaluator.slot() as slot:
        atoms = structures()[0]
        direct = FieldCalculator(pot, bor, field=(0.1, -0.2, 0.05), neighbour_skin=SKIN)
        atoms.calc = direct
        forces, z = atoms.get_forces(), direct.results["born_charges"]
        atoms.calc = FieldCalculator(pot, bor, field=(0.1, -0.2, 0.05), neighbour_skin=SKIN, evaluator=slot)
        assert np.abs(atoms.get_forces() - forces).max() <= tolerance * np.abs(forces).max()
        assert np.abs(atoms.calc.results["born_charges"] - z).max() <= tolerance * np.abs(z).max()
        assert np.abs(atoms.calc.results["born_charges"].sum(axis=0)).max() < 1e-10


def _submit_all(evaluator, cells, pot, bor, errors, results, close_early=()):
    """Each structure's request from its own thread (one slot each)."""
    slots = [evaluator.slot() for _ in cells]

    def work(index):
        try:
            if index in close_early:
                return
            results[index] = slots[index].evaluate(pot, bor, *cells[index])
        except Exception as exc:  # noqa: BLE001
            errors[index] = exc
        finally:
            slots[index].close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cells))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a replica thread hangs"


def test_rendezvous_batches_isolates_errors_and_aborts(models):
    pot, bor = models
    cells = [as_tuple(a) for a in structures()]
    expected = [evaluate_periodic(pot, bor, *c) for c in cells]
    evaluator = BatchEvaluator()
    errors, results = {}, {}
    _submit_all(evaluator, cells, pot, bor, errors, results)
    assert not errors and evaluator.batches == 1 and evaluator.requests == 3
    for index, one in enumerate(expected):
        assert np.abs(results[index].forces - one.forces).max() < 1e-10

    # a slot closed without a request does not hold the others up
    evaluator = BatchEvaluator()
    errors, results = {}, {}
    _submit_all(evaluator, cells, pot, bor, errors, results, close_early={1})
    assert not errors and sorted(results) == [0, 2] and evaluator.requests == 2

    # a structure the models cannot evaluate raises in its own thread only
    broken = list(cells)
    positions = broken[1][0].copy()
    positions[2] = np.nan
    broken[1] = (positions, *broken[1][1:])
    evaluator = BatchEvaluator()
    errors, results = {}, {}
    _submit_all(evaluator, broken, pot, bor, errors, results)
    assert sorted(errors) == [1] and sorted(results) == [0, 2]
    assert np.abs(results[2].forces - expected[2].forces).max() < 1e-10

    # abort wakes a waiting request (its partner never submits)
    evaluator = BatchEvaluator()
    waiting, absent = evaluator.slot(), evaluator.slot()
    outcome = {}

    def wait():
        try:
            waiting.evaluate(pot, bor, *cells[0])
        except BatchAborted as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=wait)
    thread.start()
    thread.join(timeout=0.5)
    assert thread.is_alive()  # held at the rendezvous
    evaluator.abort()
    thread.join(timeout=30)
    assert not thread.is_alive() and isinstance(outcome.get("error"), BatchAborted)
    with pytest.raises(BatchAborted):
        absent.evaluate(pot, bor, *cells[0])


# --- MD ------------------------------------------------------------------------------

def md_settings(batch: bool, **overrides) -> dict:
    base = {"ensemble": "bussi", "timestep_fs": 2.0, "equilibration_steps": 0, "production_steps": 30,
            "neighbour_skin_A": SKIN, "batch_replicas": batch,
            "safety": {"max_temperature_factor": 100.0},
            "output": {"trajectory_stride": 5, "thermo_stride": 5, "velocities": True, "born_charges": True,
                       "checkpoint_interval": 10},
            "sweep": {"phases": ["beta"], "temperatures_K": [600.0], "field_strengths_V_per_A": [0.1],
                      "field_directions": [[1.0, 0.5, 0.0]], "replicas": 3}}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return validate_section(base, "md")


def run(tmp_path, settings, models, name, cells=None):
    condition = expand_conditions(settings)[0]
    pot, bor = models
    cells = cells or [beta_li3po4()]
    return run_condition(settings, condition, tmp_path / name, pot, bor, cells, progress=False), tmp_path / name


def trajectory(out, replica, key="positions"):
    with h5py.File(out / f"replica_{replica}" / "traj.h5") as traj:
        return traj[key][:]


def test_batched_replicas_follow_the_sequential_trajectories(tmp_path, models, caplog):
    sequential, out_s = run(tmp_path, md_settings(False), models, "sequential")
    with caplog.at_level(logging.INFO, logger="bornfield.md.runner"):
        batched, out_b = run(tmp_path, md_settings(True), models, "batched")
    assert sequential["replicas_completed"] == batched["replicas_completed"] == 3
    assert "3.00 replicas each" in caplog.text  # every evaluation was one batch of the three
    for replica in range(3):
        a, b = trajectory(out_s, replica), trajectory(out_b, replica)
        assert a.shape == b.shape == (7, 16, 3)
        assert np.abs(a - b).max() < 1e-8
        assert np.abs(trajectory(out_s, replica, "born_charges") - trajectory(out_b, replica, "born_charges")).max() < 1e-6
    assert np.abs(trajectory(out_b, 0) - trajectory(out_b, 1)).max() > 1e-3  # different seeds, different runs


def test_batched_replicas_with_a_polar_born_model_follow_the_sequential_trajectories(tmp_path, models, monkeypatch):
    """Replicas of a polar Born model ask the batch for the rows Zᵀ·E of their own fields: the batched
    run follows the sequential one and takes no full Z except for the written frames."""
    from test_models import make

    from bornfield.models import BornCommittee

    polar = BornCommittee([make("born", 8, cutoff=3.5, architecture="polar", edge_layers=1)])
    settings = {batch: md_settings(batch, production_steps=10, field_schedule={"kind": "ramp", "ramp_fs": 8.0})
                for batch in (False, True)}
    sequential, out_s = run(tmp_path, settings[False], (models[0], polar), "sequential")
    full_calls, full = [], BornCommittee.born_charges
    monkeypatch.setattr(BornCommittee, "born_charges", lambda self, *args: full_calls.append(1) or full(self, *args))
    batched, out_b = run(tmp_path, settings[True], (models[0], polar), "batched")
    assert sequential["replicas_completed"] == batched["replicas_completed"] == 3
    assert len(full_calls) == 3 * 3  # frames at steps 0, 5, 10 of each replica
    for replica in range(3):
        assert np.abs(trajectory(out_s, replica) - trajectory(out_b, replica)).max() < 1e-8
        assert np.abs(trajectory(out_s, replica, "field_forces") - trajectory(out_b, replica, "field_forces")).max() < 1e-6
        assert np.abs(trajectory(out_b, replica, "field_forces")).max() > 1e-3


def test_blown_up_replicas_fail_alone(tmp_path, models, monkeypatch):
    from bornfield.md import ase_backend

    settings = md_settings(True)
    condition = expand_conditions(settings)[0]
    bad = beta_li3po4()
    bad.positions[1] = bad.positions[0] + [0.3, 0.0, 0.0]  # overlapping atoms: fails the step-0 check
    original_init = ase_backend.ASEBackend.__init__
    original_evaluate = FieldCalculator._evaluate_shared

    def tagged_init(self, atoms, *args, **kwargs):
        original_init(self, atoms, *args, **kwargs)
        self.calc.doomed = kwargs.get("seed", args[5] if len(args) > 5 else None) == condition.seeds[1]

    def evaluate(self, structure, refresh, stress, rows_field=None):
        results, z = original_evaluate(self, structure, refresh, stress, rows_field)
        if getattr(self, "doomed", False) and self.step >= 13:  # replica 1: the model returns NaN at step 13
            results["forces"] = np.full_like(results["forces"], np.nan)
        return results, z

    monkeypatch.setattr(ase_backend.ASEBackend, "__init__", tagged_init)
    monkeypatch.setattr(FieldCalculator, "_evaluate_shared", evaluate)
    summary, out = run(tmp_path, settings, models, "blowup", cells=[bad, beta_li3po4(), beta_li3po4()])
    assert summary["replicas_failed"] == 2 and summary["completed_replicas"] == [2]
    first = json.loads((out / "replica_0" / "status.json").read_text())
    second = json.loads((out / "replica_1" / "status.json").read_text())
    assert first["state"] == "failed" and "too close" in first["reason"] and first["steps"] == 0
    assert second["state"] == "failed" and "non-finite" in second["reason"] and second["last_checkpoint_step"] == 10
    assert trajectory(out, 1).shape[0] == 3  # frames 0, 5, 10: what the last good checkpoint holds
    assert trajectory(out, 2).shape[0] == 7


def test_batched_run_resumes_from_its_checkpoints(tmp_path, models, kill_md_at_step):
    settings = md_settings(True, production_steps=40)
    reference, whole = run(tmp_path, settings, models, "whole")
    disarm = kill_md_at_step(25)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, settings, models, "resumed")
    assert not (tmp_path / "resumed" / "replica_0" / "status.json").exists()
    disarm()
    summary, resumed = run(tmp_path, settings, models, "resumed")
    assert summary["replicas_completed"] == reference["replicas_completed"] == 3
    # the killed invocation's wall time is kept and counted with the one that finished
    killed, finished = summary["invocations"]
    assert not killed["finished"] and finished["finished"] and killed["wall_time_s"] > 0
    assert summary["core_hours"] == pytest.approx((killed["wall_time_s"] + finished["wall_time_s"]) / 3600, abs=1e-4)
    assert len(reference["invocations"]) == 1
    for replica in range(3):
        for key in ("positions", "velocities"):
            assert np.array_equal(trajectory(whole, replica, key), trajectory(resumed, replica, key)), (replica, key)


def test_schema_default_and_lammps_ignore_batching():
    from bornfield.md.runner import batch_replicas

    assert batch_replicas(validate_section({}, "md")) is bool(validate_section({}, "md")["batch_replicas"])
    assert not batch_replicas(validate_section({"backend": "lammps", "batch_replicas": True}, "md"))


def test_invocation_clock_records_a_killed_invocation_while_it_runs(tmp_path):
    import time

    from bornfield.md.output import InvocationClock, read_json

    start = time.perf_counter()
    with InvocationClock(tmp_path, mpi_ranks=2, interval_s=0.05):
        time.sleep(0.3)
        running = read_json(tmp_path / InvocationClock.FILE)  # what a kill at this moment leaves
        elapsed = time.perf_counter() - start
    assert len(running) == 1 and not running[0]["finished"] and running[0]["mpi_ranks"] == 2
    assert 0.1 <= running[0]["wall_time_s"] <= elapsed
    with pytest.raises(RuntimeError), InvocationClock(tmp_path, mpi_ranks=1, interval_s=0.05):
        raise RuntimeError("killed")
    first, second = read_json(tmp_path / InvocationClock.FILE)
    assert first["finished"] and first["wall_time_s"] >= 0.3 and not second["finished"]
    (tmp_path / InvocationClock.FILE).write_text('{"not": "a list"}')
    with pytest.raises(Exception, match="invocations.json: expected a list"):
        InvocationClock(tmp_path, mpi_ranks=1)
