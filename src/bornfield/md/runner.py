"""Run all replicas of one condition in one (MPI) job and write ``summary.json``.

Layout: with W ranks in ``COMM_WORLD`` and R replicas, ``G = min(R, W)``
replica groups of ``W / G`` ranks each are formed by ``Comm.Split`` (W must
be divisible by G). Replica r runs on group ``r % G``; a group runs its
replicas one after the other. Within a group the LAMMPS backend decomposes the
cell over the group's ranks; the ASE backend needs groups of one rank.
A replica that blows up is marked failed and the others continue. Completed
and failed replicas are not run again, except that a completed replica is
extended from its final checkpoint when ``production_steps`` was increased.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms

from bornfield.errors import ConfigError, InputFileError
from bornfield.md.conditions import MDCondition
from bornfield.md.engine import ReplicaRunner
from bornfield.md.fields import FieldSchedule
from bornfield.md.output import md_core_hours, read_json, write_json

LOG = logging.getLogger(__name__)


def read_start_cells(path: Path) -> list[Atoms]:
    """All cells of ``{results_dir}/structures/md_cells/<phase>.extxyz``."""
    from ase.io import read

    path = Path(path)
    if not path.exists():
        raise InputFileError(f"MD start structures not found: {path} (written by the structures stage)")
    try:
        cells = read(path, index=":")
    except Exception as exc:  # ase raises many types on malformed files
        raise InputFileError(f"{path}: cannot read MD start cells ({exc})") from exc
    if not cells:
        raise InputFileError(f"{path}: contains no structures")
    for index, atoms in enumerate(cells):
        if not np.all(atoms.pbc) or atoms.cell.volume <= 0:
            raise InputFileError(f"{path}: cell {index} is not fully periodic with a positive volume")
    return cells


def replica_layout(world_size: int, n_replicas: int, backend: str) -> tuple[int, int]:
    """(number of groups, ranks per group) for ``world_size`` ranks and ``n_replicas``."""
    groups = min(n_replicas, world_size)
    if world_size % groups != 0:
        raise ConfigError(
            f"md.resources.tasks: {world_size} MPI ranks cannot be split evenly over "
            f"{groups} replica groups ({n_replicas} replicas); use a multiple of {groups}")
    size = world_size // groups
    if backend == "ase" and size > 1:
        raise ConfigError(
            f"md.backend 'ase' runs one replica per rank, but {world_size} ranks for {n_replicas} "
            "replicas leave several ranks per replica; use backend 'lammps' or fewer ranks")
    return groups, size


def run_condition(settings: dict, condition: MDCondition, outdir: Path, potential, born,
                  start_cells: Sequence[Atoms], committee: Sequence = (), comm=None,
                  progress: bool = True, model_files: dict | None = None) -> dict | None:
    """Run every replica of ``condition`` that is not finished; write summary.json.

    Args:
        settings: validated ``md`` settings.
        condition: the condition (seeds, temperature, field).
        outdir: ``{results_dir}/md/<condition.name>``.
        potential, born: models driving the MD (committee member 0).
        start_cells: start structures; replica r starts from cell r mod len.
        committee: further potentials for the uncertainty check.
        comm: MPI communicator of the whole job (default: COMM_WORLD if
            mpi4py is importable and more than one rank runs, else serial).
        model_files: identity of the model files ({"potentials": [...], "born": ...},
            each {"file", "sha256"}), written to summary.json as ``models``.

    Returns:
        The summary dict on world rank 0, None on other ranks.
    """
    outdir = Path(outdir)
    if comm is None:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    world_rank, world_size = comm.Get_rank(), comm.Get_size()
    backend_name = settings["backend"]
    n_groups, group_size = replica_layout(world_size, condition.replicas, backend_name)
    group_index = world_rank // group_size
    group_comm = comm.Split(color=group_index, key=world_rank)
    if world_rank == 0:
        outdir.mkdir(parents=True, exist_ok=True)
    comm.Barrier()
    if world_rank == 0:
        LOG.info("%s: %d replicas on %d MPI ranks (%d groups x %d ranks), backend %s, ensemble %s, "
                 "E = %s V/Å, T = %g K", condition.name, condition.replicas, world_size, n_groups,
                 group_size, backend_name, settings["ensemble"], condition.field_V_per_A.tolist(),
                 condition.temperature_K)
    schedule = FieldSchedule.from_settings(condition.field_V_per_A, settings)
    start = time.perf_counter()
    statuses: dict[int, dict] = {}
    for replica in range(condition.replicas):
        if replica % n_groups != group_index:
            continue
        replica_dir = outdir / f"replica_{replica}"
        status_path = replica_dir / "status.json"
        existing = None
        if group_comm.Get_rank() == 0 and status_path.exists():
            existing = read_json(status_path)
        existing = group_comm.bcast(existing, root=0)
        total_steps = int(settings["equilibration_steps"]) + int(settings["production_steps"])
        extend = (existing is not None and existing.get("state") == "completed"
                  and int(existing.get("total_steps", 0)) < total_steps)
        if existing is not None and existing.get("state") in ("completed", "failed") and not extend:
            LOG.info("%s: already %s, skipped", replica_dir, existing["state"])
            statuses[replica] = existing
            continue
        if extend:  # more production steps configured: continue from the final checkpoint
            LOG.info("%s: extending from %s to %d steps", replica_dir, existing["total_steps"], total_steps)
            if group_comm.Get_rank() == 0:
                status_path.unlink()
        seed = condition.seeds[replica]
        atoms = start_cells[replica % len(start_cells)]
        if group_comm.Get_rank() == 0:
            LOG.info("%s: replica %d, seed %d, start cell %d (%d atoms)", condition.name, replica, seed,
                     replica % len(start_cells), len(atoms))
        attributes = {
            "condition": condition.name,
            "replica": replica,
            "seed": seed,
            "temperature_K": condition.temperature_K,
            "ensemble": settings["ensemble"],
            "backend": backend_name,
            "start_cell_index": replica % len(start_cells),
            "field_V_per_A": condition.field_V_per_A,
            "field_schedule": settings["field_schedule"]["kind"],
        }
        if backend_name == "ase":
            from bornfield.md.ase_backend import ASEBackend

            backend = ASEBackend(atoms, potential, born, settings, schedule,
                                 condition.temperature_K, seed, committee=committee)
        else:
            from bornfield.md.lammps_backend import LammpsBackend

            backend = LammpsBackend(atoms, potential, born, settings, schedule,
                                    condition.temperature_K, seed, committee=committee,
                                    comm=group_comm)
        try:
            runner = ReplicaRunner(backend, settings, replica_dir, attributes, condition.temperature_K,
                                   group_comm=group_comm, progress=progress,
                                   progress_position=group_index)
            statuses[replica] = runner.run()
        finally:
            backend.close()
    # collect statuses from the group leaders
    local = statuses if group_comm.Get_rank() == 0 else {}
    gathered = comm.gather(local, root=0)
    group_comm.Free()
    if world_rank != 0:
        return None
    merged: dict[int, dict] = {}
    for part in gathered:
        merged.update(part)
    replicas = [merged[r] for r in sorted(merged)]
    summary = {
        "condition": condition.to_dict(),
        "replicas_total": condition.replicas,
        "replicas_completed": sum(1 for s in replicas if s["state"] == "completed"),
        "replicas_failed": sum(1 for s in replicas if s["state"] == "failed"),
        "completed_replicas": [r for r in sorted(merged) if merged[r]["state"] == "completed"],
        "replicas": replicas,
        "mpi_ranks": world_size,
        "ranks_per_replica": group_size,
        "wall_time_s": round(time.perf_counter() - start, 3),
        "core_hours": round(md_core_hours(replicas, group_size), 4),
        "models": model_files,
        "settings": settings,
    }
    write_json(outdir / "summary.json", summary)
    return summary
