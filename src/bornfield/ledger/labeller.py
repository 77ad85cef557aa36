"""``bornfield label``: run queue entries into the ledger until a wall-time budget is spent.

A job starts only if its estimated wall time fits what is left of the budget: the cost
model's core-seconds (``est_core_s`` of the queue entry) times a correction measured on the
ledger's own entries of the same kind (median of measured core-seconds / estimate), divided
by the ranks. QE gets the rest of the budget as ``max_seconds``, so a wrong estimate ends in
QE's clean stop (resumable next time) rather than in a kill. Jobs run in a work directory
(not committed) with the DFT runner's rules for resuming; a finished job (completed or
failed) enters the ledger atomically and its work directory is removed. The queue is re-read
after every job, so entries appended meanwhile (``ledger append --first``) are run in order. Several labellers
may share a ledger and work directory: a job is claimed with a lock that dies with its process.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from bornfield.dft.inputs import compute_dft_id
from bornfield.dft.pseudopotentials import PseudoRecord, provision_pseudopotentials
from bornfield.dft.runner import DFTJob, JobInterrupted, RunnerOptions, launch_prefix
from bornfield.errors import ConfigError
from bornfield.ledger.queue import read_queue
from bornfield.ledger.store import Ledger, settings_for_kind
from bornfield.provenance import cpu_model

LOG = logging.getLogger(__name__)

#: estimates are multiplied by this before they are compared with the budget left
SAFETY = 1.15
#: no job starts with less than this left (s): QE's own start-up and the final packing
MIN_START_S = 120.0


@dataclass(frozen=True)
class PlannedJob:
    """One queue entry with the job id it gets at the ledger's settings."""

    atoms: Atoms
    kind: str
    dft_id: str
    est_core_s: float


def job_id(ledger: Ledger, atoms: Atoms, kind: str) -> str:
    """The ``dft_id`` of a queue entry's job at the ledger's settings."""
    names = {el: rec.filename for el, rec in ledger.spec.pseudopotentials.items()}
    return compute_dft_id(atoms, settings_for_kind(ledger.spec.settings, kind), names)


def is_labelled(ledger: Ledger, atoms: Atoms, kind: str) -> bool:
    """True if the ledger holds this structure's job of ``kind`` (an SCF request is met by its DFPT job)."""
    if job_id(ledger, atoms, kind) in ledger:
        return True
    return kind == "scf" and job_id(ledger, atoms, "dfpt") in ledger


def pending_jobs(ledger: Ledger) -> list[PlannedJob]:
    """Queue entries not yet in the ledger, in queue order."""
    out = []
    for atoms in read_queue(ledger.root / "queue.extxyz"):
        kind = atoms.info["label_kind"]
        if not is_labelled(ledger, atoms, kind):
            out.append(PlannedJob(atoms, kind, job_id(ledger, atoms, kind), float(atoms.info["est_core_s"])))
    return out


def cost_correction(ledger: Ledger, machine: str | None = None) -> dict[str, float]:
    """Median (measured core-seconds / estimate) per kind over the ledger's entries (1.0 without data).

    With ``machine`` (:func:`bornfield.provenance.cpu_model`), a kind with entries made on that
    machine takes their median, and a kind without takes the ledger-wide median scaled by how much
    slower or faster this machine was on the kinds it has run: machines differ by 2x in QE speed.
    """
    ratios: dict[str, list[float]] = {"scf": [], "dfpt": []}
    local: dict[str, list[float]] = {"scf": [], "dfpt": []}
    for dft_id in ledger.dft_ids():
        status = ledger.status(dft_id)
        estimate = status.get("est_core_s")
        ranks = status.get("ranks")
        if not estimate or not ranks or status.get("state") != "completed":
            continue
        kind = "dfpt" if status["settings"].get("born_charges") else "scf"
        ratio = status["wall_time_s"] * ranks / estimate
        ratios[kind].append(ratio)
        if machine is not None and status.get("machine") == machine:
            local[kind].append(ratio)
    overall = {kind: float(np.median(values)) if values else 1.0 for kind, values in ratios.items()}
    here = {kind: float(np.median(values)) for kind, values in local.items() if values}
    if not here:
        return overall
    speed = float(np.median([here[kind] / overall[kind] for kind in here]))
    return {kind: here.get(kind, overall[kind] * speed) for kind in overall}


def pending_core_hours(ledger: Ledger, pending: list[PlannedJob] | None = None) -> float:
    """Core-hours the pending queue needs: estimates times the measured correction of their kind."""
    correction = cost_correction(ledger)
    jobs = pending_jobs(ledger) if pending is None else pending
    return sum(job.est_core_s * correction[job.kind] for job in jobs) / 3600


def provision_checked(ledger: Ledger, pseudo_dir: Path) -> dict[str, PseudoRecord]:
    """Provision the ledger's pseudopotential set in ``pseudo_dir`` and return the files' records.

    Each file's md5 must be the ledger's or one admitted as equivalent (``bornfield ledger admit-pseudo``).
    """
    records = provision_pseudopotentials(pseudo_dir, ledger.spec.settings.pseudo_set)
    for element, expected in ledger.spec.pseudopotentials.items():
        got = records.get(element)
        if got is None or not ledger.spec.accepts(element, got.md5):
            raise ConfigError(
                f"pseudopotential {element}: provisioned {got.filename if got else 'nothing'} md5 "
                f"{got.md5 if got else None} in {pseudo_dir}, ledger {ledger.root} was made with "
                f"{expected.filename} md5 {expected.md5}; labels would not be comparable (other QE/ld1.x build?); "
                f"if the file is the same pseudopotential rebuilt elsewhere, 'bornfield ledger admit-pseudo' "
                f"recomputes entries with it and admits it if the labels agree")
    return records


def equivalent_files_used(ledger: Ledger, records: dict[str, PseudoRecord]) -> dict:
    """Status annotation naming the admitted equivalent files a job ran with (empty if all are the ledger's own)."""
    other = {el: asdict(rec) for el, rec in sorted(records.items()) if rec.md5 != ledger.spec.pseudopotentials[el].md5}
    return {"pseudopotential_files_used": other} if other else {}


class JobClaim:
    """An exclusive, process-lifetime lock on one job in the work directory."""

    def __init__(self, lock_dir: Path, dft_id: str):
        lock_dir.mkdir(parents=True, exist_ok=True)
        self.handle = open(lock_dir / f"{dft_id}.lock", "w")  # noqa: SIM115 - held while the job runs
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.held = True
        except BlockingIOError:
            self.held = False

    def release(self) -> None:
        self.handle.close()


def label(ledger_dir: str | Path, hours: float, ranks: int, work_dir: str | Path, launcher: str = "/usr/bin/mpirun",
          max_jobs: int | None = None, kinds: tuple[str, ...] = ("dfpt", "scf"), clock=time.monotonic,
          worker: int | None = None) -> dict:
    """Label queue entries into the ledger within ``hours`` of wall time; return a summary dict.

    ``worker``: this labeller's index when several run side by side (``bornfield label --workers``):
    it names the progress bar and log lines."""
    if hours <= 0 or ranks < 1:
        raise ConfigError(f"label needs --hours > 0 and --ranks >= 1 (got {hours}, {ranks})")
    from tqdm import tqdm

    start = clock()
    deadline = start + hours * 3600.0
    ledger = Ledger(ledger_dir)
    work = Path(work_dir)
    pseudo_dir = work / "pseudo"
    machine = cpu_model()
    provenance = {**equivalent_files_used(ledger, provision_checked(ledger, pseudo_dir)), "machine": machine}
    options = RunnerOptions.defaults(launcher=launch_prefix(launcher, ranks))
    pending = [job for job in pending_jobs(ledger) if job.kind in kinds]
    correction = cost_correction(ledger, machine)
    LOG.info("ledger %s: %d entries; %d queue jobs pending of the kinds run (%s); cost correction %s",
             ledger.root, len(ledger.dft_ids()), len(pending), ", ".join(kinds),
             {k: round(v, 2) for k, v in correction.items()})
    done: list[dict] = []
    who = "" if worker is None else f"worker {worker}: "
    bar = tqdm(total=len(pending), unit="job", desc=f"{who}labelling", mininterval=10.0,
               position=worker or 0)
    try:
        while max_jobs is None or len(done) < max_jobs:
            left = deadline - clock()
            job, claim = None, None
            for candidate in pending:
                wall = SAFETY * candidate.est_core_s * correction[candidate.kind] / ranks
                if wall > left or left < MIN_START_S or candidate.dft_id in ledger:
                    continue
                claim = JobClaim(work / "locks", candidate.dft_id)
                if claim.held and candidate.dft_id not in ledger:  # another labeller may have just finished it
                    job = candidate
                    break
                claim.release()
            if job is None:
                break
            pending.remove(job)
            wall = SAFETY * job.est_core_s * correction[job.kind] / ranks
            LOG.info("%slabel %s: %s %s, %d atoms (%s), estimated %.0f min, %.0f min of budget left",
                     who, job.dft_id, job.kind, job.atoms.info.get("family"), len(job.atoms), job.atoms.info["config_type"],
                     wall / 60, left / 60)
            try:
                record = _run_one(ledger, job, ranks, work, pseudo_dir, options, max_seconds=max(60.0, left - 60.0),
                                  provenance=provenance)
            except JobInterrupted as exc:
                LOG.warning("%s; it resumes in the next labelling run", exc)
                break
            finally:
                claim.release()
            done.append(record if worker is None else {**record, "worker": worker})
            correction = cost_correction(ledger, machine)  # every finished job sharpens the next estimates
            pending = [c for c in pending_jobs(ledger) if c.kind in kinds]  # picks appended meanwhile count
            bar.total = len(done) + len(pending)
            bar.update(1)
            remaining = sum(SAFETY * c.est_core_s * correction[c.kind] / ranks for c in pending)
            bar.set_postfix_str(f"last {record['wall_time_s'] / 60:.0f} min; queue left ~{remaining / 3600:.1f} h at {ranks} rank(s)")
    finally:
        bar.close()
    # not yet in the ledger: the ones that did not fit the budget and an interrupted one
    still_pending = sum(1 for c in pending_jobs(ledger) if c.kind in kinds)
    summary = {
        "jobs_finished": len(done), "jobs": done, "pending_not_started": still_pending,
        "wall_time_s": round(clock() - start, 1), "ledger_entries": len(ledger.dft_ids()),
    }
    LOG.info("%slabelled %d job(s) in %.1f min; %d queue job(s) still pending; ledger holds %d entries",
             who, len(done), summary["wall_time_s"] / 60, still_pending, summary["ledger_entries"])
    return summary


def merge_summaries(ledger_dir: str | Path, kinds: tuple[str, ...], summaries: list[dict]) -> dict:
    """One summary of labellers that ran side by side: their jobs, the longest wall time, and the
    pending count and ledger size after all of them."""
    ledger = Ledger(ledger_dir)
    jobs = [job for summary in summaries for job in summary["jobs"]]
    return {"jobs_finished": len(jobs), "jobs": jobs, "workers": len(summaries),
            "pending_not_started": sum(1 for c in pending_jobs(ledger) if c.kind in kinds),
            "wall_time_s": max(summary["wall_time_s"] for summary in summaries),
            "ledger_entries": len(ledger.dft_ids())}


def _run_one(ledger: Ledger, job: PlannedJob, ranks: int, work: Path, pseudo_dir: Path, options: RunnerOptions,
             max_seconds: float, provenance: dict | None = None) -> dict:
    settings = settings_for_kind(ledger.spec.settings, job.kind)
    run_options = RunnerOptions(**{**options.__dict__, "max_seconds": max_seconds})
    dft_job = DFTJob(job.atoms, settings, ledger.spec.pseudopotentials, pseudo_dir, work / "jobs", run_options, ledger.spec.qc)
    if dft_job.dft_id != job.dft_id:
        raise ConfigError(f"queue entry {job.atoms.info.get('queue_index')}: job id {dft_job.dft_id} != planned {job.dft_id}")
    labels = dft_job.run()
    status = dft_job.status()
    # what the cost correction needs: the estimate and the ranks of this run
    ledger.add_job(dft_job.dir, {"est_core_s": job.est_core_s, "ranks": ranks, "queue_index": int(job.atoms.info["queue_index"]),
                                 **(provenance or {})})
    shutil.rmtree(dft_job.dir, ignore_errors=True)
    return {"dft_id": job.dft_id, "kind": job.kind, "state": labels["state"], "n_atoms": len(job.atoms),
            "wall_time_s": status["wall_time_s"], "est_core_s": job.est_core_s,
            "bec": "born_charges" in labels, "qc": labels["qc"].get("reasons", [])}
