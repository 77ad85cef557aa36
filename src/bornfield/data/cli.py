"""``bornfield dataset …``: gather DFT job labels into ``dataset/gen<k>.extxyz`` + report."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from bornfield.config import add_settings_arguments, schema_default, settings_from_args
from bornfield.data.dataset import assemble, label_statistics, plot_report, write_dataset
from bornfield.errors import InputFileError
from bornfield.structures.io import write_json_atomic

LOG = logging.getLogger(__name__)


def register(subparsers) -> None:
    """Add the ``dataset`` command."""
    parser = subparsers.add_parser("dataset", help="assemble labelled extxyz datasets from DFT jobs")
    sub = parser.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND", required=True)
    asm = sub.add_parser("assemble", help="gather the jobs of one or more plans into one extxyz + report")
    add_settings_arguments(asm)
    asm.add_argument("--plans", nargs="+", required=True, help="plan.json files (generations 0..k)")
    asm.add_argument("--jobs-dir", required=True, help="parent of the <dft_id> job directories")
    asm.add_argument("--output", required=True, help="dataset extxyz to write")
    asm.add_argument("--report-json", required=True, help="JSON report to write (counts, label statistics, failures)")
    asm.add_argument("--report-png", required=True, help="figure of the report to write")
    asm.set_defaults(func=run_assemble)
    rep = sub.add_parser("report", help="report of a label ledger: counts, label distributions, residuals, cost; one figure")
    ledger = schema_default("dft.ledger")
    rep.add_argument("--ledger", default=ledger, help="ledger directory (the schema default of dft.ledger)")
    rep.add_argument("--report-json", required=True, help="JSON report to write")
    rep.add_argument("--report-png", required=True, help="figure to write")
    rep.set_defaults(func=run_report)


def run_assemble(args: argparse.Namespace) -> int:
    """Assemble, check the configured minimum, write extxyz, JSON report and figure."""
    settings = settings_from_args(args, "dataset assemble").dataset
    job_dirs = []
    for plan_path in args.plans:
        path = Path(plan_path)
        if not path.exists():
            raise InputFileError(f"plan not found: {path}")
        plan = json.loads(path.read_text(encoding="utf-8"))
        job_dirs += [Path(args.jobs_dir) / entry["dft_id"] for entry in plan["jobs"]]
    frames, report = assemble(job_dirs)
    total = report.n_structures + len(report.failed)
    if report.n_structures < settings["min_labelled_structures"]:
        raise InputFileError(
            f"only {report.n_structures} labelled structures (dataset.min_labelled_structures = "
            f"{settings['min_labelled_structures']}); failures: {report.failure_counts}"
        )
    if total and len(report.failed) / total > settings["max_failed_fraction"]:
        raise InputFileError(
            f"{len(report.failed)} of {total} DFT jobs failed (> dataset.max_failed_fraction = "
            f"{settings['max_failed_fraction']}): {report.failure_counts}"
        )
    write_dataset(frames, args.output)
    data = {"dataset": str(args.output), **report.to_dict(), "statistics": label_statistics(frames)}
    write_json_atomic(args.report_json, data)
    plot_report(frames, report, args.report_png)
    LOG.info(
        "dataset %s: %d structures (%d with Born charges), %d failed, BEC rejected %d; failures %s",
        args.output, report.n_structures, report.n_with_born_charges, len(report.failed),
        len(report.rejected_bec), report.failure_counts,
    )
    return 0


def run_report(args: argparse.Namespace) -> int:
    """The ledger report (JSON + figure)."""
    from bornfield.ledger.report import ledger_report, plot_ledger_report
    from bornfield.ledger.store import Ledger

    frames, report = ledger_report(Ledger(args.ledger))
    Path(args.report_json).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.report_json, report)
    plot_ledger_report(frames, report, args.report_png)
    LOG.info("ledger %s: %d structures, %d with Born charges, %d failed; core-hours %s",
             args.ledger, report["n_structures"], report["n_with_born_charges"], len(report["failed"]), report["core_hours_spent"])
    return 0
