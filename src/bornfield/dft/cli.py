"""``bornfield dft …``: provision pseudopotentials, plan jobs, run one job, run a plan locally.

* ``provision``: find/create the pseudopotentials, write ``manifest.json`` (md5 sums).
* ``plan``: read candidate structures, assign ``dft_id``s, write one structure file per
  job (``<inputs_dir>/<dft_id>.extxyz``) and ``plan.json`` (the checkpoint output).
* ``run``: run (or resume) one job; never recomputes a finished one.
* ``run-plan``: run every job of a plan sequentially (local use, progress bar).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from pathlib import Path

from ase.io import read, write
from tqdm import tqdm

from bornfield import atomic
from bornfield.config import add_settings_arguments, settings_from_args
from bornfield.dft.inputs import DFTSettings, compute_dft_id
from bornfield.dft.pseudopotentials import PseudoRecord, provision_pseudopotentials, pseudo_elements, upf_name_for
from bornfield.dft.qc import QCThresholds
from bornfield.dft.runner import DFTJob, JobInterrupted, RunnerOptions
from bornfield.errors import InputFileError
from bornfield.structures.io import read_checked

LOG = logging.getLogger(__name__)


def register(subparsers) -> None:
    """Add the ``dft`` command and its sub-commands."""
    parser = subparsers.add_parser("dft", help="Quantum ESPRESSO SCF + DFPT Born-charge labels")
    sub = parser.add_subparsers(dest="dft_command", metavar="SUBCOMMAND", required=True)

    prov = sub.add_parser("provision", help="find or generate the pseudopotentials; write manifest.json")
    add_settings_arguments(prov)
    prov.add_argument("--pseudo-dir", required=True, help="directory to provision into")
    prov.set_defaults(func=run_provision)

    plan = sub.add_parser("plan", help="assign dft_ids to candidate structures; write plan.json")
    add_settings_arguments(plan)
    plan.add_argument("--structures", required=True, help="extxyz of candidate structures")
    plan.add_argument("--inputs-dir", required=True, help="where <dft_id>.extxyz files are written")
    plan.add_argument("--output", required=True, help="plan.json path")
    plan.add_argument("--generation", type=int, default=0, help="active-learning generation of these candidates")
    plan.set_defaults(func=run_plan)

    job = sub.add_parser("run", help="run (or resume) one job")
    add_settings_arguments(job)
    job.add_argument("--structure", required=True, help="extxyz with one structure (from plan)")
    job.add_argument("--pseudo-dir", required=True, help="provisioned pseudopotential directory (manifest.json)")
    job.add_argument("--jobs-dir", required=True, help="parent of the <dft_id> job directories")
    add_launch_arguments(job)
    job.add_argument("--retry-failed", action="store_true", help="rerun a job whose state is 'failed'")
    job.add_argument("--ledger", default=None,
                     help="label ledger to take a finished job from instead of running QE "
                     "(default: dft.ledger of the config; '' for none)")
    job.add_argument("--entries-dir", default=None, help="also write the finished job here in the ledger's entry format (default: not written)")
    job.set_defaults(func=run_job, exit_on_sigterm=True)

    many = sub.add_parser("run-plan", help="run every job of a plan sequentially (local)")
    add_settings_arguments(many)
    many.add_argument("--plan", required=True, help="plan.json from 'bornfield dft plan'")
    many.add_argument("--pseudo-dir", required=True, help="provisioned pseudopotential directory (manifest.json)")
    many.add_argument("--jobs-dir", required=True, help="parent of the <dft_id> job directories")
    add_launch_arguments(many)
    many.set_defaults(func=run_many, exit_on_sigterm=True)


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """``--launcher`` and ``--ranks``: ``dft.run.launcher`` and ``dft.run.ranks``, as for ``bornfield label``."""
    parser.add_argument("--launcher", help="MPI launcher of QE without the rank count, e.g. /usr/bin/mpirun or srun; "
                        "'' runs QE without one (default: dft.run.launcher of the config)")
    parser.add_argument("--ranks", type=int, help="MPI ranks per QE job; 1 runs QE without launcher "
                        "(default: dft.run.ranks of the config)")


def _launch_context(args: argparse.Namespace) -> dict:
    return {"launcher_given": args.launcher is not None, "ranks_given": args.ranks is not None}


def load_manifest(pseudo_dir: str | Path) -> dict[str, PseudoRecord]:
    """Pseudopotential records from ``<pseudo_dir>/manifest.json``."""
    path = Path(pseudo_dir) / "manifest.json"
    if not path.exists():
        raise InputFileError(f"{path} missing: run 'bornfield dft provision' first")
    data = json.loads(path.read_text(encoding="utf-8"))
    return {el: PseudoRecord(**rec) for el, rec in data.items()}


def run_provision(args: argparse.Namespace) -> int:
    """Provision the configured pseudopotential set."""
    settings = settings_from_args(args, "dft provision").dft
    pp = settings["pseudopotentials"]
    records = provision_pseudopotentials(
        args.pseudo_dir, pp["set"], search_dirs=tuple(pp["search_dirs"]), ld1_command=pp["ld1_command"]
    )
    for rec in records.values():
        LOG.info("%s: %s md5 %s (%s)", rec.element, rec.filename, rec.md5, rec.source)
    return 0


def run_plan(args: argparse.Namespace) -> int:
    """Write one structure file per job and the plan (list of dft_ids with metadata)."""
    section = settings_from_args(args, "dft plan").dft
    settings = DFTSettings.from_section(section)
    path = Path(args.structures)
    # every frame checked before any file is written (no NaN or coincident atoms reach pw.x)
    frames = read_checked(path, species=pseudo_elements(settings.pseudo_set))
    if section["max_structures"] is not None:
        frames = frames[: section["max_structures"]]
    inputs_dir = Path(args.inputs_dir)
    inputs_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, atoms in enumerate(frames):
        pseudos = {el: upf_name_for(el, settings.pseudo_set) for el in sorted(set(atoms.get_chemical_symbols()))}
        atoms.info["dft_generation"] = args.generation
        # hash the structure exactly as the job will read it back (extxyz text precision)
        text = io.StringIO()
        write(text, atoms, format="extxyz")
        text = text.getvalue()
        atoms = read(io.StringIO(text), format="extxyz")
        dft_id = compute_dft_id(atoms, settings, pseudos)
        target = inputs_dir / f"{dft_id}.extxyz"
        if not target.exists():
            atomic.write_text(target, text)
        entries.append({
            "dft_id": dft_id, "index": index, "n_atoms": len(atoms),
            "config_type": atoms.info.get("config_type", "unknown"),
            "structure_id": atoms.info.get("structure_id"),
        })
    ids = [e["dft_id"] for e in entries]
    if len(set(ids)) != len(ids):
        LOG.warning("duplicate structures in %s: %d unique of %d", path, len(set(ids)), len(ids))
    plan = {"generation": args.generation, "source": str(path), "inputs_dir": str(inputs_dir), "settings": settings.to_dict(), "jobs": entries}
    atomic.write_json(args.output, plan)
    LOG.info("planned %d DFT jobs (generation %d) from %s", len(entries), args.generation, path)
    return 0


def _job(atoms, section: dict, pseudo_dir: str, jobs_dir: str, launcher: str | None, ranks: int | None) -> DFTJob:
    return DFTJob(
        atoms,
        DFTSettings.from_section(section),
        load_manifest(pseudo_dir),
        pseudo_dir,
        jobs_dir,
        RunnerOptions.from_section(section, launcher, ranks),
        QCThresholds.from_section(section),
    )


def run_job(args: argparse.Namespace) -> int:
    """Run one job; exit 0 also when QE failed (the failure is recorded as data)."""
    section = settings_from_args(args, "dft run", **_launch_context(args), ledger_given=args.ledger is not None).dft
    ledger = args.ledger if args.ledger is not None else section["ledger"]
    path = Path(args.structure)
    atoms = read_checked(path, species=pseudo_elements(section["pseudopotentials"]["set"]))[-1]
    job = _job(atoms, section, args.pseudo_dir, args.jobs_dir, args.launcher, args.ranks)
    if path.stem != job.dft_id and len(path.stem) == 16:
        raise InputFileError(
            f"{path}: file name says dft_id {path.stem} but structure + settings hash to {job.dft_id} "
            "(settings changed since planning? re-run the plan)"
        )
    if ledger and not job.is_finished():
        take_from_ledger(job, ledger, args.jobs_dir)
    try:
        labels = job.run(retry_failed=args.retry_failed)
    except JobInterrupted as exc:
        LOG.warning("%s (exit 3: resubmit to resume)", exc)
        return 3
    LOG.info("%s: %s; qc %s", job.dft_id, labels["state"], labels["qc"])
    if args.entries_dir:
        from bornfield.ledger.store import pack_entry

        Path(args.entries_dir).mkdir(parents=True, exist_ok=True)
        pack_entry(job.dir, job.status(), Path(args.entries_dir))
    return 0


def take_from_ledger(job: DFTJob, ledger_dir: str, jobs_dir: str) -> bool:
    """Unpack the ledger's entry of ``job`` into ``jobs_dir`` if the ledger holds it; True if so."""
    from bornfield.ledger.store import Ledger

    if not (Path(ledger_dir) / "ledger.json").exists():
        LOG.info("no ledger at %s: %s runs QE", ledger_dir, job.dft_id)
        return False
    ledger = Ledger(ledger_dir)
    if ledger.identity_of_job(job.settings, job.pseudos) != ledger.identity:
        LOG.info("ledger %s holds other settings (identity %s): %s runs QE", ledger_dir, ledger.identity, job.dft_id)
        return False
    if job.dft_id not in ledger:
        return False
    ledger.materialise(job.dft_id, jobs_dir)
    LOG.info("%s: labels taken from ledger %s (QE not run)", job.dft_id, ledger_dir)
    return True


def run_many(args: argparse.Namespace) -> int:
    """Run all jobs of a plan, one after the other, with a progress bar."""
    section = settings_from_args(args, "dft run", **_launch_context(args)).dft
    plan = json.loads(Path(args.plan).read_text(encoding="utf-8"))
    inputs_dir = Path(plan["inputs_dir"])
    failed = 0
    for entry in tqdm(plan["jobs"], desc="DFT jobs", unit="job"):
        structure = inputs_dir / f"{entry['dft_id']}.extxyz"
        if not structure.exists():
            raise InputFileError(f"{structure}: structure of job {entry['dft_id']} (plan {args.plan}) missing")
        atoms = read_checked(structure, species=pseudo_elements(section["pseudopotentials"]["set"]))[-1]
        labels = _job(atoms, section, args.pseudo_dir, args.jobs_dir, args.launcher, args.ranks).run()
        failed += labels["state"] != "completed"
    LOG.info("%d jobs, %d failed", len(plan["jobs"]), failed)
    return 0
