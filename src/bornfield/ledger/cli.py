"""``bornfield label`` (budgeted labelling) and ``bornfield ledger …`` (create, plan, inspect, merge).

* ``label --hours H``: run queue entries into the ledger within H hours of wall time
  (``--workers N``: N labellers side by side on one ledger).
* ``ledger init``: fix a new ledger's settings from a config's ``dft`` section.
* ``ledger plan``: write the designed base queue (once).
* ``ledger append``: append structures (active-learning picks) to the queue.
* ``ledger status``: entries, pending queue and cost per kind and family.
* ``ledger add``: add finished job directories (e.g. a cluster campaign's ``dft/jobs/*``).
* ``ledger export``: every labelled entry as one extxyz dataset.
* ``ledger admit-pseudo``: recompute entries with this machine's pseudopotential files and admit
  files of other bytes (a generated one rebuilt elsewhere) if the labels agree.
* ``ledger efield``: finite-field pw.x at 0, ±E beside a DFPT entry (stored under ``<ledger>/efield``).
* ``ledger efield-report``: those forces against the entries' DFPT Born charges (benchmark records).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from bornfield import atomic
from bornfield.config import load_config, schema_default
from bornfield.errors import BornfieldError, ConfigError, InputFileError

LOG = logging.getLogger(__name__)

DEFAULT_WORK = ".label-work"


def register(subparsers) -> None:
    """Add the ``label`` and ``ledger`` commands.

    The ledger directory, MPI launcher and rank count default to the schema defaults of
    ``dft.ledger``, ``dft.run.launcher`` and ``dft.run.ranks`` (what a campaign uses).
    """
    ledger_dir = schema_default("dft.ledger")
    ledger_help = "ledger directory (the schema default of dft.ledger)"
    launcher, ranks = schema_default("dft.run.launcher"), schema_default("dft.run.ranks")
    lab = subparsers.add_parser("label", help="label queue entries into the ledger within a wall-time budget")
    lab.add_argument("--hours", type=float, required=True, help="wall-time budget (h); no job starts that would not fit")
    lab.add_argument("--ranks", type=int, default=ranks,
                     help="MPI ranks per QE job (the schema default of dft.run.ranks; 1 leaves a core free)")
    lab.add_argument("--ledger", default=ledger_dir, help=ledger_help)
    lab.add_argument("--work-dir", default=DEFAULT_WORK, help="job directory, not committed")
    lab.add_argument("--launcher", default=launcher,
                     help="MPI launcher of QE without the rank count (the schema default of dft.run.launcher)")
    lab.add_argument("--max-jobs", type=int, default=None, help="stop after this many finished jobs (default: no limit)")
    lab.add_argument("--kind", choices=["dfpt", "scf"], action="append", help="label only this kind, repeatable (default: both)")
    lab.add_argument("--report-json", type=Path, default=None, help="also write the run's summary as JSON here (default: not written)")
    lab.add_argument("--workers", type=int, default=1,
                     help="labellers run side by side, each on its own job with --ranks ranks (cores used: "
                          "workers x ranks; --max-jobs counts per worker)")
    lab.add_argument("--worker-index", type=int, default=None,
                     help="this labeller's index among side-by-side workers, in its log lines and progress bar "
                          "(set by --workers for the ones it starts) (default: none, or 0 with --workers > 1)")
    lab.set_defaults(func=run_label, exit_on_sigterm=True)

    parser = subparsers.add_parser("ledger", help="the committed DFT label ledger: init, plan, status, add, export")
    sub = parser.add_subparsers(dest="ledger_command", metavar="SUBCOMMAND", required=True)

    init = sub.add_parser("init", help="create a ledger with the dft settings of a config")
    init.add_argument("--config", required=True, help="campaign config whose dft section fixes the ledger's settings")
    init.add_argument("--ledger", default=ledger_dir, help=ledger_help)
    init.set_defaults(func=run_init)

    plan = sub.add_parser("plan", help="write the designed base queue (queue.extxyz) of a ledger")
    plan.add_argument("--ledger", default=ledger_dir, help=ledger_help)
    plan.add_argument("--seed", type=int, default=20231, help="master seed of the base set")
    plan.set_defaults(func=run_plan)

    status = sub.add_parser("status", help="entries, pending queue and cost per kind and family")
    status.add_argument("--ledger", default=ledger_dir, help=ledger_help)
    status.add_argument("--report-json", type=Path, default=None, help="also write the status as JSON here (default: not written)")
    status.set_defaults(func=run_status)

    append = sub.add_parser("append", help="append structures (e.g. active-learning picks) to the queue, near-duplicates dropped")
    append.add_argument("--structures", type=Path, required=True, help="extxyz of structures to label (config_type in info)")
    append.add_argument("--kind", choices=["dfpt", "scf"], required=True, help="label kind of these structures")
    append.add_argument("--ledger", default=ledger_dir, help=ledger_help)
    append.add_argument("--first", action="store_true",
                        help="put them ahead of every pending entry, so the next labelling run starts with them "
                        "(default: at the end of the queue)")
    append.set_defaults(func=run_append)

    extend = sub.add_parser("extend", help="add more structures of a base-set family (fresh seeds) to the queue")
    extend.add_argument("--family", required=True, help="base family name, e.g. amorphous_32 (see queue.base_families)")
    extend.add_argument("--batch", type=int, required=True, help="extension number >= 1; each gives other structures")
    extend.add_argument("--seed", type=int, default=20231, help="master seed of the base set")
    extend.add_argument("--ledger", default=ledger_dir, help=ledger_help)
    extend.add_argument("--first", action="store_true", help="put them ahead of every pending entry (default: at the end)")
    extend.set_defaults(func=run_extend)

    promote = sub.add_parser("promote", help="label the chosen pending queue entries before the other pending ones")
    promote.add_argument("--ledger", default=ledger_dir, help=ledger_help)
    choice = promote.add_mutually_exclusive_group(required=True)
    choice.add_argument("--structure-ids", nargs="+", metavar="ID", help="info['structure_id'] of the entries")
    choice.add_argument("--rare-oxygen", action="store_true",
                        help="entries with a bridging P-O-P oxygen or an oxygen bonded to no P (P-O within 2.0 A)")
    promote.set_defaults(func=run_promote)

    revise = sub.add_parser("revise", help="re-apply the queue rules (label kind, cost) to pending entries; labelled ones stay")
    revise.add_argument("--ledger", default=ledger_dir, help=ledger_help)
    revise.set_defaults(func=run_revise)

    add = sub.add_parser("add", help="add finished DFT job directories (refused at other settings)")
    add.add_argument("job_dirs", nargs="+", type=Path, help="job directories <jobs>/<dft_id> with status.json + labels.json")
    add.add_argument("--ledger", default=ledger_dir, help=ledger_help)
    add.set_defaults(func=run_add)

    admit = sub.add_parser("admit-pseudo", help="recompute entries with this machine's pseudopotential files; "
                           "admit files of other bytes if the labels agree within tolerance")
    admit.add_argument("--ledger", default=ledger_dir, help=ledger_help)
    admit.add_argument("--entries", nargs="+", required=True, metavar="DFT_ID",
                       help="ledger entries to recompute (at least one DFPT entry; a disordered one is advisable)")
    admit.add_argument("--work-dir", default=f"{DEFAULT_WORK}/admit", help="job directory, not committed")
    admit.add_argument("--ranks", type=int, default=ranks, help="MPI ranks per QE job (the schema default of dft.run.ranks)")
    admit.add_argument("--launcher", default=launcher,
                       help="MPI launcher of QE without the rank count (the schema default of dft.run.launcher)")
    admit.add_argument("--report-json", type=Path, default=None, help="also write the comparison as JSON here (default: not written)")
    admit.set_defaults(func=run_admit_pseudo, exit_on_sigterm=True)

    export = sub.add_parser("export", help="every labelled entry as one extxyz file")
    export.add_argument("--ledger", default=ledger_dir, help=ledger_help)
    export.add_argument("--output", type=Path, required=True, help="extxyz file to write")
    export.set_defaults(func=run_export)

    field = max(schema_default("md.sweep.field_strengths_V_per_A"))
    efield = sub.add_parser("efield", help="finite-field pw.x (Berry phase) at E = 0, +E, -E on a DFPT entry's structure")
    efield.add_argument("--dft-id", required=True, help="the DFPT entry (16 hex digits) whose structure and Born charges are checked")
    efield.add_argument("--axis", choices=["x", "y", "z"], default="z", help="Cartesian field axis")
    efield.add_argument("--field-V-per-A", type=float, default=field,
                        help="field strength in V/Å (the largest schema default of md.sweep.field_strengths_V_per_A)")
    efield.add_argument("--field-k-factor", type=int, default=1,
                        help="multiply the k mesh along the field's reciprocal vector (denser Berry-phase strings)")
    efield.add_argument("--ranks", type=int, default=ranks, help="MPI ranks per pw.x run (the schema default of dft.run.ranks)")
    efield.add_argument("--launcher", default=launcher,
                        help="MPI launcher of QE without the rank count (the schema default of dft.run.launcher)")
    efield.add_argument("--ledger", default=ledger_dir, help=ledger_help)
    efield.add_argument("--work-dir", default=DEFAULT_WORK, help="job directory, not committed")
    efield.add_argument("--max-seconds", type=float, default=None,
                        help="QE's soft walltime per pw.x run (s); a stopped run resumes on the next call (default: none)")
    efield.add_argument("--estimate-only", action="store_true", help="print the estimate and stop")
    efield.set_defaults(func=run_efield, exit_on_sigterm=True)

    efield_report = sub.add_parser("efield-report", help="finite-field forces vs DFPT Born charges: linear and non-linear parts")
    efield_report.add_argument("--ledger", default=ledger_dir, help=ledger_help)
    efield_report.add_argument("--report-json", type=Path, default=None,
                               help="also write the benchmark records (DESIGN.md format) here (default: not written)")
    efield_report.set_defaults(func=run_efield_report)


def run_label(args: argparse.Namespace) -> int:
    """One labeller, or with ``--workers N`` this one plus N - 1 labeller processes on the same ledger
    and work directory (jobs are claimed by lock, so no two run the same job). SIGTERM or an error
    here stops the others (each leaves its job resumable); otherwise it waits for them to finish."""
    from bornfield.ledger.labeller import label, merge_summaries

    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1 (got {args.workers})")
    kinds = tuple(args.kind or ("dfpt", "scf"))
    scratch = Path(args.work_dir) / "worker-reports"
    others = [_start_worker(args, k, scratch / f"worker-{k}.json") for k in range(1, args.workers)]
    try:
        summary = label(args.ledger, args.hours, args.ranks, args.work_dir, args.launcher, args.max_jobs, kinds,
                        worker=args.worker_index if args.worker_index is not None else (0 if others else None))
    except BaseException:
        for process, _ in others:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _ in others:
            process.wait()
        raise
    codes = [process.wait() for process, _ in others]
    failed = [f"worker {k} (exit {code})" for k, code in enumerate(codes, start=1) if code != 0]
    if others:
        reports = [json.loads(path.read_text()) for (_, path), code in zip(others, codes) if code == 0]
        summary = merge_summaries(args.ledger, kinds, [summary, *reports])
    if args.report_json:
        atomic.write_text(args.report_json, json.dumps(summary, indent=1) + "\n")
    if failed:
        raise BornfieldError(f"label: {', '.join(failed)} failed; see the log above (their finished jobs are in "
                             f"the ledger)")
    return 0


def _start_worker(args: argparse.Namespace, index: int, report: Path):
    """Start labeller ``index`` of ``--workers`` as a process with the same options; (process, report path)."""
    report.parent.mkdir(parents=True, exist_ok=True)
    report.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "bornfield.cli", "label", "--hours", repr(args.hours), "--ranks", str(args.ranks),
            "--ledger", str(args.ledger), "--work-dir", str(args.work_dir), "--launcher", args.launcher,
            "--worker-index", str(index), "--report-json", str(report)]
    argv += ["--max-jobs", str(args.max_jobs)] if args.max_jobs is not None else []
    for kind in args.kind or ():
        argv += ["--kind", kind]
    return subprocess.Popen(argv), report


def run_admit_pseudo(args: argparse.Namespace) -> int:
    from bornfield.ledger.equivalence import admit_pseudopotentials

    summary = admit_pseudopotentials(args.ledger, args.entries, args.work_dir, args.ranks, args.launcher)
    if args.report_json:
        atomic.write_text(args.report_json, json.dumps(summary, indent=1) + "\n")
    return 0


def run_init(args: argparse.Namespace) -> int:
    from bornfield.dft.inputs import DFTSettings
    from bornfield.dft.pseudopotentials import provision_pseudopotentials
    from bornfield.dft.qc import QCThresholds
    from bornfield.ledger.store import Ledger, LedgerSpec, identity_of

    section = load_config(args.config)["dft"]
    settings = DFTSettings.from_section(section)
    pp = section["pseudopotentials"]
    with tempfile.TemporaryDirectory(prefix="bornfield-ledger-pseudo-") as scratch:
        pseudos = provision_pseudopotentials(scratch, pp["set"], search_dirs=tuple(pp["search_dirs"]), ld1_command=pp["ld1_command"])
    spec = LedgerSpec(identity_of(settings, pseudos), settings, pseudos, QCThresholds.from_section(section))
    ledger = Ledger.create(args.ledger, spec)
    LOG.info("created ledger %s, identity %s", ledger.root, ledger.identity)
    return 0


def run_plan(args: argparse.Namespace) -> int:
    from bornfield.ledger.queue import build_base_queue, write_queue
    from bornfield.ledger.store import Ledger

    ledger = Ledger(args.ledger)
    path = ledger.root / "queue.extxyz"
    if path.exists():
        raise InputFileError(f"{path} exists: the base queue is written once; append active-learning picks instead")
    frames = build_base_queue(ledger.spec.settings, args.seed)
    write_queue(path, frames)
    kinds = Counter(a.info["label_kind"] for a in frames)
    hours = sum(a.info["est_core_s"] for a in frames) / 3600
    LOG.info("queue %s: %d structures (%s), estimated %.1f core-hours", path, len(frames), dict(kinds), hours)
    return 0


def ledger_status(ledger_dir: str | Path) -> dict:
    """Counts and costs of a ledger: entries and pending queue per kind and family."""
    from bornfield.ledger.labeller import pending_core_hours, pending_jobs
    from bornfield.ledger.store import Ledger

    ledger = Ledger(ledger_dir)
    entries: dict = defaultdict(Counter)
    spent = 0.0
    for dft_id in ledger.dft_ids():
        status = ledger.status(dft_id)
        kind = "dfpt" if status["settings"].get("born_charges") else "scf"
        entries[kind][status["state"]] += 1
        spent += status.get("wall_time_s", 0.0) * status.get("ranks", 1)
    from bornfield.ledger.efield import result_statuses

    efield = list(result_statuses(ledger))
    pending = pending_jobs(ledger)
    by_family: dict = defaultdict(Counter)
    for job in pending:
        by_family[job.kind][job.atoms.info.get("family", "?")] += 1
    return {
        "ledger": str(ledger.root), "identity": ledger.identity,
        "entries": {k: dict(v) for k, v in entries.items()},
        "core_hours_spent": round(spent / 3600, 2),
        "pending": {k: dict(v) for k, v in by_family.items()},
        "pending_core_hours_estimate": round(pending_core_hours(ledger, pending), 1),
        "efield": {"results": [item["name"] for item in efield],
                   "core_hours_spent": round(sum(item["core_time_s"] for item in efield) / 3600, 2)},
    }


def run_status(args: argparse.Namespace) -> int:
    status = ledger_status(args.ledger)
    print(json.dumps(status, indent=1))
    if args.report_json:
        atomic.write_text(args.report_json, json.dumps(status, indent=1) + "\n")
    return 0


def run_append(args: argparse.Namespace) -> int:
    from bornfield.ledger.queue import append_to_queue
    from bornfield.ledger.store import Ledger
    from bornfield.structures.io import read_structures

    ledger = Ledger(args.ledger)
    frames = read_structures(args.structures, require_info=False)
    for index, atoms in enumerate(frames):
        if "config_type" not in atoms.info:
            raise InputFileError(f"{args.structures}: frame {index} has no info['config_type']")
        atoms.info["label_kind"] = args.kind
        atoms.info.setdefault("split", "train")
    added = append_to_queue(ledger.root / "queue.extxyz", frames, ledger.spec.settings,
                            _pending_rule(ledger, args.first))
    LOG.info("added %d of %d structures to %s %s (near-duplicates dropped)", len(added), len(frames),
             ledger.root / "queue.extxyz", "ahead of the pending entries" if args.first else "at the end")
    return 0


def _pending_rule(ledger, first: bool):
    """``is_pending`` for :func:`~bornfield.ledger.queue.append_to_queue`: None (append at the end) unless ``first``."""
    if not first:
        return None
    from bornfield.ledger.labeller import is_labelled

    def is_pending(atoms):
        return not is_labelled(ledger, atoms, atoms.info["label_kind"])

    return is_pending


def run_extend(args: argparse.Namespace) -> int:
    from bornfield.ledger.queue import append_to_queue, build_family_batch
    from bornfield.ledger.store import Ledger

    ledger = Ledger(args.ledger)
    frames = build_family_batch(args.family, args.seed, args.batch)
    added = append_to_queue(ledger.root / "queue.extxyz", frames, ledger.spec.settings,
                            _pending_rule(ledger, args.first))
    hours = sum(a.info["est_core_s"] for a in added) / 3600
    LOG.info("family %s batch %d: added %d of %d structures (%d held out, estimated %.1f core-hours) to %s %s",
             args.family, args.batch, len(added), len(frames), sum(a.info["split"] == "test" for a in added), hours,
             ledger.root / "queue.extxyz", "ahead of the pending entries" if args.first else "at the end")
    return 0


def run_promote(args: argparse.Namespace) -> int:
    from bornfield.ledger.queue import has_rare_oxygen, promote, read_queue, write_queue
    from bornfield.ledger.store import Ledger

    ledger = Ledger(args.ledger)
    path = ledger.root / "queue.extxyz"
    queue = read_queue(path)
    is_pending = _pending_rule(ledger, True)
    if args.structure_ids:
        wanted = set(args.structure_ids)
        known = {str(a.info.get("structure_id")) for a in queue if is_pending(a)}
        if wanted - known:
            raise InputFileError(f"{path}: no pending entry with structure_id {sorted(wanted - known)}")

        def chosen(atoms):
            return str(atoms.info.get("structure_id")) in wanted
    else:
        chosen = has_rare_oxygen
    count = promote(queue, chosen, is_pending)
    write_queue(path, queue)
    LOG.info("queue %s: %d pending entries moved ahead of the other pending entries", path, count)
    return 0


def run_revise(args: argparse.Namespace) -> int:
    from bornfield.ledger.labeller import is_labelled
    from bornfield.ledger.queue import read_queue, revise_pending, write_queue
    from bornfield.ledger.store import Ledger

    ledger = Ledger(args.ledger)
    path = ledger.root / "queue.extxyz"
    queue = read_queue(path)
    before = {int(a.info["queue_index"]): a.info["label_kind"] for a in queue}
    revised = revise_pending(queue, lambda a: not is_labelled(ledger, a, a.info["label_kind"]), ledger.spec.settings)
    changed = [i for i, a in ((int(a.info["queue_index"]), a) for a in revised) if a.info["label_kind"] != before[i]]
    write_queue(path, revised)
    LOG.info("queue %s: %d pending entries changed kind (queue indices %s)", path, len(changed), changed)
    return 0


def run_add(args: argparse.Namespace) -> int:
    from bornfield.ledger.store import Ledger

    ledger = Ledger(args.ledger)
    added = sum(ledger.add_job(job_dir) for job_dir in args.job_dirs)
    LOG.info("added %d of %d job(s) to %s (%d already there)", added, len(args.job_dirs), ledger.root,
             len(args.job_dirs) - added)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from bornfield.ledger.store import Ledger
    from bornfield.structures.io import write_extxyz_atomic

    frames = Ledger(args.ledger).frames()
    write_extxyz_atomic(args.output, frames)
    LOG.info("wrote %d labelled structures to %s", len(frames), args.output)
    return 0


def run_efield(args: argparse.Namespace) -> int:
    from bornfield.ledger.efield import EfieldRequest, estimate, run_efield as run
    from bornfield.ledger.store import Ledger

    request = EfieldRequest(args.dft_id, args.axis, args.field_V_per_A, args.field_k_factor)
    if args.estimate_only:
        print(json.dumps(estimate(Ledger(args.ledger), request, args.ranks), indent=1))
        return 0
    run(args.ledger, request, args.ranks, args.launcher, args.work_dir, args.max_seconds)
    return 0


def run_efield_report(args: argparse.Namespace) -> int:
    from bornfield.ledger.efield import efield_report

    records, summaries = efield_report(args.ledger)
    if not summaries:
        raise InputFileError(f"{args.ledger}: no finite-field results under efield/ (run 'bornfield ledger efield' first)")
    for item in summaries:
        m = item["metrics"]
        print(f"{item['name']} ({item['config_type']}, {item['n_atoms']} atoms, k {'x'.join(map(str, item['kpoints']))}): "
              f"|ZᵀE| RMS {m['field_force_rms_meV_per_A']:.3g} meV/Å (transverse {m['transverse_force_rms_meV_per_A']:.3g})")
        for label, sm in [("all", m), *item["species"].items()]:
            print(f"  {label:3s} ({sm['n_atoms']:3d}): |F_odd − ZᵀE| RMS {sm['linear_force_error_rms_meV_per_A']:.3g} meV/Å "
                  f"(max {sm['linear_force_error_max_meV_per_A']:.3g}, {100 * sm['linear_force_error_rel']:.3g} %, "
                  f"transverse {sm['transverse_force_error_rms_meV_per_A']:.3g}); |F_even| RMS "
                  f"{sm['nonlinear_force_rms_meV_per_A']:.3g} meV/Å (max {sm['nonlinear_force_max_meV_per_A']:.3g}, "
                  f"{100 * sm['nonlinear_force_rel']:.3g} %); Born row RMSE {sm['bec_row_rmse_e']:.3g} e")
    if args.report_json:
        atomic.write_text(args.report_json, json.dumps(records, indent=1) + "\n")
        LOG.info("wrote %d records of %d result(s) to %s", len(records), len(summaries), args.report_json)
    return 0
