"""Run all replicas of one condition in one (MPI) job and write ``summary.json``.

Layout: with W ranks in ``COMM_WORLD`` and R replicas, ``G = min(R, W)``
replica groups of ``W / G`` ranks each are formed by ``Comm.Split`` (W must
be divisible by G). Replica r runs on group ``r % G``; a group runs its
replicas one after the other, or, with the ASE backend and ``md.batch_replicas``,
all at once in lockstep: one thread per replica, their model evaluations
batched into one per MD step (:mod:`bornfield.md.batching`; each replica keeps
its own files, checkpoints, checks and status). Within a group the LAMMPS
backend decomposes the cell over the group's ranks; the ASE backend needs
groups of one rank.
A replica that blows up is marked failed and the others continue. Completed
and failed replicas are not run again, except that a completed replica is
extended from its final checkpoint when ``production_steps`` was increased.
Each replica directory records the identity of its run (``identity.json``: model
file hashes, start cell, seed, condition and the settings that shape the
trajectory); a directory made under another identity is stale and restarts from
step 0, so a retrained model or a new start cell never resumes old data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms

from bornfield.errors import ConfigError, InputFileError
from bornfield.md.conditions import MDCondition
from bornfield.md.engine import ReplicaRunner
from bornfield.md.fields import FieldSchedule
from bornfield.md.output import InvocationClock, invocations_core_hours, read_json, write_json

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


def batch_replicas(settings: dict) -> bool:
    """Whether the replicas of one rank run in lockstep with batched model evaluations (ASE backend only)."""
    return settings["backend"] == "ase" and bool(settings["batch_replicas"])


IDENTITY_NAME = "identity.json"
#: md settings that shape a replica's trajectory (production_steps may grow: the run is extended)
TRAJECTORY_SETTINGS = ("backend", "born_refresh_interval", "ensemble", "equilibration_steps", "field_schedule",
                       "lammps", "nose_hoover_chain_length", "output", "safety", "thermostat_time_constant_fs",
                       "timestep_fs")


def replica_identity(settings: dict, condition: MDCondition, replica: int, atoms: Atoms,
                     model_files: dict | None) -> dict:
    """What a replica's trajectory depends on, as a JSON-able dict with its ``digest``.

    Model files count by content (sha256), the start cell by its numbers, positions and cell.
    """
    cell = hashlib.sha256()
    for array in (atoms.numbers.astype(np.int64), atoms.positions.astype(np.float64), atoms.cell.array.astype(np.float64)):
        cell.update(np.ascontiguousarray(array).tobytes())
    models = None
    if model_files is not None:
        models = {"potentials": [m["sha256"] for m in model_files["potentials"]], "born": model_files["born"]["sha256"]}
    body = {
        "models": models,
        "start_cell_sha256": cell.hexdigest(),
        "seed": int(condition.seeds[replica]),
        "temperature_K": condition.temperature_K,
        "field_V_per_A": [float(v) for v in condition.field_V_per_A],
        "settings": {key: settings.get(key) for key in TRAJECTORY_SETTINGS},
    }
    if settings.get("committee_mean_forces"):  # absent otherwise: identities made before the key stay valid
        body["forces"] = "committee mean"
    text = json.dumps(body, sort_keys=True, default=str)
    return {"digest": hashlib.sha256(text.encode()).hexdigest()[:16], **json.loads(text)}


def _stale_reason(replica_dir: Path, identity: dict) -> str | None:
    """Why the files in ``replica_dir`` are not of this run, or None (same run, or nothing there)."""
    if not replica_dir.is_dir() or not any(replica_dir.iterdir()):
        return None
    path = replica_dir / IDENTITY_NAME
    if not path.exists():
        return f"no {IDENTITY_NAME} (made before run identities were recorded)"
    recorded = read_json(path)
    if recorded.get("digest") == identity["digest"]:
        return None
    changed = [key for key in identity if key not in ("digest", "settings") and recorded.get(key) != identity[key]]
    changed += [f"md.{key}" for key in TRAJECTORY_SETTINGS
                if recorded.get("settings", {}).get(key) != identity["settings"].get(key)]
    return f"made with other {', '.join(changed) or 'inputs'}"


@dataclass
class _Job:
    """A replica to run: its index, seed, start cell, directory and traj.h5 attributes."""

    replica: int
    seed: int
    atoms: Atoms
    directory: Path
    attributes: dict


def _prepare_replica(settings: dict, condition: MDCondition, outdir: Path, replica: int,
                     start_cells: Sequence[Atoms], group_comm, model_files: dict | None = None) -> _Job | dict:
    """The replica's :class:`_Job`, or its status if it is completed or failed and not to be extended.

    Files of another run identity (:func:`replica_identity`) are removed first: the replica restarts.
    """
    replica_dir = outdir / f"replica_{replica}"
    status_path = replica_dir / "status.json"
    atoms = start_cells[replica % len(start_cells)]
    identity = replica_identity(settings, condition, replica, atoms, model_files)
    existing = None
    if group_comm.Get_rank() == 0:
        stale = _stale_reason(replica_dir, identity)
        if stale is not None:
            LOG.warning("%s: %s; its files are removed and the replica restarts from step 0", replica_dir, stale)
            shutil.rmtree(replica_dir)
        replica_dir.mkdir(parents=True, exist_ok=True)
        write_json(replica_dir / IDENTITY_NAME, identity)
        if status_path.exists():
            existing = read_json(status_path)
    existing = group_comm.bcast(existing, root=0)
    total_steps = int(settings["equilibration_steps"]) + int(settings["production_steps"])
    extend = (existing is not None and existing.get("state") == "completed"
              and int(existing.get("total_steps", 0)) < total_steps)
    if existing is not None and existing.get("state") in ("completed", "failed") and not extend:
        LOG.info("%s: already %s, skipped", replica_dir, existing["state"])
        return existing
    if extend:  # more production steps configured: continue from the final checkpoint
        LOG.info("%s: extending from %s to %d steps", replica_dir, existing["total_steps"], total_steps)
        if group_comm.Get_rank() == 0:
            status_path.unlink()
    seed = condition.seeds[replica]
    if group_comm.Get_rank() == 0:
        LOG.info("%s: replica %d, seed %d, start cell %d (%d atoms)", condition.name, replica, seed,
                 replica % len(start_cells), len(atoms))
    attributes = {
        "condition": condition.name,
        "replica": replica,
        "seed": seed,
        "temperature_K": condition.temperature_K,
        "ensemble": settings["ensemble"],
        "backend": settings["backend"],
        "start_cell_index": replica % len(start_cells),
        "field_V_per_A": condition.field_V_per_A,
        "field_schedule": settings["field_schedule"]["kind"],
    }
    return _Job(replica, seed, atoms, replica_dir, attributes)


def _run_batched(jobs: Sequence[_Job], make_backend, make_runner, group_index: int) -> dict[int, dict]:
    """Run ``jobs`` in one thread each, their model evaluations batched (:mod:`bornfield.md.batching`).

    A replica that blows up is marked failed by its runner and its slot closed, so
    the others go on. Any other exception in a replica thread closes its slot too;
    the other replicas run to their end, then the first such exception (by replica
    index) is raised. An exception in the calling thread (e.g. KeyboardInterrupt)
    aborts the batch: every replica thread stops at its next model evaluation.

    Returns:
        {replica: status} of the replicas whose runner returned.
    """
    from bornfield.md.batching import BatchEvaluator

    evaluator = BatchEvaluator()
    slots = {job.replica: evaluator.slot() for job in jobs}  # all open before any thread submits
    statuses: dict[int, dict] = {}
    errors: dict[int, BaseException] = {}

    def work(job: _Job, position: int) -> None:
        backend = None
        try:
            backend = make_backend(job, slots[job.replica])
            statuses[job.replica] = make_runner(job, backend, position).run()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the calling thread
            errors[job.replica] = exc
        finally:
            slots[job.replica].close()
            if backend is not None:
                backend.close()

    threads = [threading.Thread(target=work, args=(job, group_index * len(jobs) + index),
                                name=f"replica-{job.replica}", daemon=True)
               for index, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:
        evaluator.abort()
        for thread in threads:
            thread.join()
        raise
    LOG.info("%d batched model evaluations, %.2f replicas each", evaluator.batches,
             evaluator.requests / max(evaluator.batches, 1))
    if errors:
        for replica in sorted(errors)[1:]:
            LOG.error("replica %d raised %r", replica, errors[replica])
        raise errors[min(errors)]
    return statuses


def run_condition(settings: dict, condition: MDCondition, outdir: Path, potential, born,
                  start_cells: Sequence[Atoms], committee: Sequence = (), comm=None,
                  progress: bool = True, model_files: dict | None = None) -> dict | None:
    """Run every replica of ``condition`` that is not finished; write summary.json.

    Args:
        settings: validated ``md`` settings.
        condition: the condition (seeds, temperature, field).
        outdir: ``{results_dir}/md/<condition.name>``.
        potential, born: models driving the MD (committee member 0, or a potential committee
            whose mean forces drive it, ``md.committee_mean_forces``).
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
    clock = InvocationClock(outdir, world_size) if world_rank == 0 else contextlib.nullcontext()
    with clock:
        statuses: dict[int, dict] = {}
        jobs: list[_Job] = []
        for replica in range(condition.replicas):
            if replica % n_groups != group_index:
                continue
            job = _prepare_replica(settings, condition, outdir, replica, start_cells, group_comm, model_files)
            if isinstance(job, dict):  # already completed or failed
                statuses[replica] = job
            else:
                jobs.append(job)

        def make_backend(job: _Job, evaluator=None):
            if backend_name == "ase":
                from bornfield.md.ase_backend import ASEBackend

                return ASEBackend(job.atoms, potential, born, settings, schedule, condition.temperature_K, job.seed,
                                  committee=committee, evaluator=evaluator)
            from bornfield.md.lammps_backend import LammpsBackend

            return LammpsBackend(job.atoms, potential, born, settings, schedule, condition.temperature_K, job.seed,
                                 committee=committee, comm=group_comm)

        def make_runner(job: _Job, backend, position: int) -> ReplicaRunner:
            return ReplicaRunner(backend, settings, job.directory, job.attributes, condition.temperature_K,
                                 group_comm=group_comm, progress=progress, progress_position=position)

        if batch_replicas(settings) and len(jobs) > 1:
            LOG.info("%s: %d replicas on this rank in lockstep, one batched model evaluation per step",
                     condition.name, len(jobs))
            statuses.update(_run_batched(jobs, make_backend, make_runner, group_index))
        else:
            for job in jobs:
                backend = make_backend(job)
                try:
                    statuses[job.replica] = make_runner(job, backend, group_index).run()
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
    invocations = clock.invocations  # as the clock's exit wrote them
    summary = {
        "condition": condition.to_dict(),
        "replicas_total": condition.replicas,
        "replicas_completed": sum(1 for s in replicas if s["state"] == "completed"),
        "replicas_failed": sum(1 for s in replicas if s["state"] == "failed"),
        "completed_replicas": [r for r in sorted(merged) if merged[r]["state"] == "completed"],
        "replicas": replicas,
        "mpi_ranks": world_size,
        "ranks_per_replica": group_size,
        "wall_time_s": invocations[-1]["wall_time_s"],
        "invocations": invocations,
        "core_hours": round(invocations_core_hours(invocations), 4),
        "models": model_files,
        "settings": settings,
    }
    write_json(outdir / "summary.json", summary)
    return summary
