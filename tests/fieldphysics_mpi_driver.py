"""Checks of the field-physics core on a cell split over MPI ranks (run by tests/test_fieldphysics.py).

    mpiexec -n R python tests/fieldphysics_mpi_driver.py core      # ASR, distance, uncertainty split by atoms
    mpiexec -n R python tests/fieldphysics_mpi_driver.py backends  # LAMMPS vs ASE forces at one state
    mpiexec -n R python tests/fieldphysics_mpi_driver.py halo      # TagHalo vs an Allreduce by tag

Rank 0 prints one line ``RESULT {json}`` with the largest differences from the serial values.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mpi4py import MPI  # noqa: F401  (MPI before lammps)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from ase.build import bulk  # noqa: E402
from md_testmodels import EnvironmentBorn, MorsePotential  # noqa: E402

from bornfield.fieldphysics import asr_correct, committee_force_uncertainty, min_distance  # noqa: E402


def core(comm) -> dict:
    """Each rank owns a contiguous block of atoms (and sees the others as ghosts)."""
    rank, size = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(7)
    n = 101  # not divisible by the ranks
    raw = rng.normal(size=(n, 3, 3))
    positions = rng.uniform(0.0, 12.0, size=(n, 3))
    members = rng.normal(size=(4, n, 3))
    blocks = np.array_split(np.arange(n), size)
    owned = blocks[rank]
    ghosts = np.setdiff1d(np.arange(n), owned)
    local = asr_correct(raw[owned], comm=comm)
    # the same correction on owned + ghost entries with an owned mask
    order = np.concatenate([owned, ghosts])
    mask = np.zeros(n, dtype=bool)
    mask[: len(owned)] = True
    masked = asr_correct(raw[order], owned_mask=mask, comm=comm)
    gathered = comm.gather((owned, local), root=0)
    dmin = min_distance(positions[order], 3.0, n_owned=len(owned), comm=comm)
    std = committee_force_uncertainty(members[:, owned], comm=comm)
    if rank != 0:
        return {}
    corrected = np.zeros_like(raw)
    for idx, values in gathered:
        corrected[idx] = values
    serial = asr_correct(raw)
    return {
        "ranks": size,
        "asr_sum": float(np.abs(corrected.sum(axis=0)).max()),
        "asr_vs_serial": float(np.abs(corrected - serial).max()),
        "masked_vs_serial": float(np.abs(masked - serial[order]).max()),
        "min_distance_vs_serial": abs(dmin - min_distance(positions, 3.0)),
        "uncertainty_vs_serial": abs(std - committee_force_uncertainty(members)),
    }


def backends(comm) -> dict:
    """Forces, field forces and Born charges of one state from both MD backends (triclinic cell)."""
    from bornfield.config import validate_section
    from bornfield.md.ase_backend import ASEBackend
    from bornfield.md.fields import FieldSchedule
    from bornfield.md.lammps_backend import LammpsBackend

    settings = validate_section({"backend": "lammps", "ensemble": "nve", "equilibration_steps": 0,
                                 "production_steps": 10, "lammps": {"skin_A": 0.5}}, "md")
    atoms = bulk("Cu", "fcc", a=3.6).repeat(5)  # rhombohedral: the LAMMPS frame is rotated
    atoms.set_atomic_numbers(np.where(np.arange(len(atoms)) % 2 == 0, 3, 8))
    atoms.rattle(0.05, seed=2)
    schedule = FieldSchedule((0.1, -0.2, 0.05), field_on_step=0, timestep_fs=1.0)
    potential, born = MorsePotential(cutoff=3.4), EnvironmentBorn(cutoff=3.0)
    lmp = LammpsBackend(atoms, potential, born, settings, schedule, 300.0, seed=1, comm=comm)
    _, tags, total, ffield, z = lmp._cache
    q = lmp.Q
    forces_l = lmp._gather_by_tag(tags, total @ q.T)
    ffield_l = lmp._gather_by_tag(tags, ffield @ q.T)
    born_l = lmp._gather_by_tag(tags, np.einsum("ij,kjl,ml->kim", q, z, q))
    lmp.close()
    if comm.Get_rank() != 0:
        return {}
    ase = ASEBackend(atoms, potential, born, settings, schedule, 300.0, seed=1)
    results = ase.calc.results
    return {
        "ranks": comm.Get_size(),
        "forces": float(np.abs(forces_l - results["forces"]).max()),
        "field_forces": float(np.abs(ffield_l - results["field_forces"]).max()),
        "born_charges": float(np.abs(born_l - results["born_charges"]).max()),
        "field_force_scale": float(np.abs(results["field_forces"]).max()),
        "asr_sum_lammps": float(np.abs(ffield_l.sum(axis=0)).max()),
    }


def halo(comm) -> dict:
    """Random ownership of 60 tags, each rank reading some remote and some own tags (repeated): the
    halo's gather and scatter_add against a table summed over all ranks (Allreduce); one rebuild
    when a layout changes on one rank only."""
    from bornfield.md.halo import TagHaloCache

    rank, size = comm.Get_rank(), comm.Get_size()
    n = 60
    rng = np.random.default_rng(11)
    owner = rng.integers(0, size, size=n)
    rows = rng.normal(size=(n, 2, 3))  # the same on every rank: row of tag t is rows[t - 1]
    local_rng = np.random.default_rng(100 + rank)
    owned = local_rng.permutation(np.flatnonzero(owner == rank) + 1)  # tags in a rank's own order
    reads = np.concatenate([owned, local_rng.choice(np.arange(1, n + 1), size=25)])
    cache = TagHaloCache(comm, n)
    halo = cache.get(owned, reads)
    gathered = halo.gather(rows[owned - 1])
    read_rows = local_rng.normal(size=(len(reads), 2, 3))
    summed = halo.scatter_add(read_rows)
    table = np.zeros((n, 2, 3))
    np.add.at(table, reads - 1, read_rows)
    total = np.empty_like(table)
    comm.Allreduce(table, total, op=MPI.SUM)
    same = cache.get(owned, reads) is halo
    changed = cache.get(owned, reads[:-1] if rank == size - 1 else reads) is not halo
    remote = np.unique(reads[~np.isin(reads, owned)])
    out = comm.gather({"gather": float(np.abs(gathered - rows[reads - 1]).max()),
                       "scatter_add": float(np.abs(summed - total[owned - 1]).max()),
                       "kept": same, "rebuilt": changed, "builds": cache.builds,
                       "received": int(halo.receive_counts.sum()), "remote_read": len(remote)}, root=0)
    if rank != 0:
        return {}
    return {"ranks": size, "gather": max(o["gather"] for o in out), "scatter_add": max(o["scatter_add"] for o in out),
            "kept": all(o["kept"] for o in out), "rebuilt": all(o["rebuilt"] for o in out),
            "builds": [o["builds"] for o in out],
            "received_equals_remote_read": all(o["received"] == o["remote_read"] for o in out)}


if __name__ == "__main__":
    world = MPI.COMM_WORLD
    out = {"core": core, "backends": backends, "halo": halo}[sys.argv[1]](world)
    if world.Get_rank() == 0:
        print("RESULT " + json.dumps(out), flush=True)
