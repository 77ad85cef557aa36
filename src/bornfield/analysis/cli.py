"""``bornfield analyze``: per-condition analysis and sweep aggregation.

Examples::

    bornfield analyze condition results/md/amorphous_T600K_E0.1_x \\
        --output results/analysis/amorphous_T600K_E0.1_x.json --config config/config.yaml
    bornfield analyze condition my_run/traj.h5 --output my_run.json      # any trajectory
    bornfield analyze sweep results/analysis/*_E*.json --output-dir results/analysis
    bornfield analyze sweep results-reference/analysis --output-dir results-reference/analysis  # a directory: its records
    bornfield analyze results --config config/reference.yaml --output RESULTS.md
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bornfield.config import add_settings_arguments, settings_from_args
from bornfield.errors import InputFileError

LOG = logging.getLogger(__name__)


def analysis_settings(args: argparse.Namespace, command: str):
    """The ``analysis`` settings ``bornfield <command>`` reads (resolved: every default filled)."""
    return settings_from_args(args, command).analysis


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="MSD, drift, mobility, transverse forces, Arrhenius and sweep tables",
        description="Analyse field-MD trajectories (traj.h5) and aggregate conditions.",
    )
    commands = parser.add_subparsers(dest="analyze_command", metavar="SUBCOMMAND", required=True)

    condition = commands.add_parser(
        "condition",
        help="analyse one condition directory (md/<condition>/) or explicit traj.h5 files",
    )
    condition.add_argument(
        "inputs",
        nargs="+",
        help="a condition directory with replica_<r>/{traj.h5,status.json}, or one or more traj.h5 files "
        "(treated as completed replicas of one condition)",
    )
    condition.add_argument("--output", required=True, help="analysis record (JSON) to write")
    condition.add_argument("--msd-csv", help="long-format MSD table (CSV) (default: <output stem>_msd.csv)")
    condition.add_argument(
        "--unwrap", action="store_true",
        help="the trajectories hold wrapped positions (not the bornfield format): unwrap them first",
    )
    add_settings_arguments(condition)
    condition.set_defaults(func=run_condition)

    sweep = commands.add_parser("sweep", help="aggregate per-condition JSON records into CSV tables + Arrhenius fit")
    sweep.add_argument("records", nargs="+", help="per-condition analysis JSON files, or directories: every "
                       "per-condition record in them (their other JSON files are skipped)")
    sweep.add_argument("--output-dir", required=True, help="directory for sweep_*.csv, arrhenius.json/.csv, claims.json/.md")
    add_settings_arguments(sweep)
    sweep.set_defaults(func=run_sweep)

    results = commands.add_parser(
        "results", help="RESULTS.md of a campaign from its stored analysis (records, claims, figures) and "
        "the ledger's finite-field results")
    results.add_argument("--results-dir", help="campaign results with the stored analysis/ and figures/ "
                         "(default: results_dir of the config)")
    results.add_argument("--ledger", default="data/ledger", help="ledger with finite-field results")
    results.add_argument("--output", default="RESULTS.md", help="page to write")
    add_settings_arguments(results)
    results.set_defaults(func=run_results)

    stability = commands.add_parser(
        "stability", help="stability page of a campaign's stored analysis: every replica complete, committee "
        "spread below the safety limit in enough checks")
    stability.add_argument("--results-dir", help="campaign results with the stored analysis/ (default: results_dir of the config)")
    stability.add_argument("--min-fraction", type=float, default=0.95,
                           help="fraction of committee checks that must lie below the safety limit")
    stability.add_argument("--output", help="page to write (default: <results-dir>/STABILITY.md)")
    add_settings_arguments(stability)
    stability.set_defaults(func=run_stability)


def run_condition(args: argparse.Namespace) -> int:
    from bornfield.analysis.condition import (
        analyze_condition,
        analyze_replicas,
        replicas_from_files,
        write_json,
        write_msd_csv,
    )

    settings = analysis_settings(args, "analyze condition")
    if args.unwrap:
        settings = settings.replaced(unwrap=True)
    inputs = [Path(p) for p in args.inputs]
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise InputFileError(f"analyze condition: {missing} not found")
    if len(inputs) == 1 and inputs[0].is_dir():
        record = analyze_condition(inputs[0], settings)
    elif all(p.suffix in (".h5", ".hdf5") for p in inputs):
        record = analyze_replicas(replicas_from_files(inputs), settings)
    else:
        raise InputFileError(
            f"analyze condition: {args.inputs} is neither one condition directory nor a list of .h5 trajectories"
        )
    output = Path(args.output)
    csv_path = Path(args.msd_csv) if args.msd_csv else output.with_name(output.stem + "_msd.csv")
    write_msd_csv(csv_path, record)
    write_json(output, record)
    used = record["replicas"]
    LOG.info(
        "%s: %s; replicas used %d, failed %d, incomplete %d -> %s, %s",
        record["condition"].get("name"), record["state"], used["n_used"], used["n_failed"], used["n_incomplete"], output, csv_path,
    )
    for note in record["notes"]:
        LOG.warning("%s", note)
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bornfield.analysis.sweep import load_records, write_sweep

    settings = analysis_settings(args, "analyze sweep")
    records = load_records(tqdm(args.records, desc="records", unit="path", disable=None))
    paths = write_sweep(records, settings, args.output_dir)
    for name, path in paths.items():
        LOG.info("%s -> %s", name, path)
    return 0


def run_results(args: argparse.Namespace) -> int:
    from bornfield.analysis.results import (claims_markdown_of, relative_figures, results_markdown,
                                            stored_records, write_results)
    from bornfield.ledger.efield import efield_report
    from bornfield.md.conditions import expand_conditions

    full = settings_from_args(args, "analyze results")
    results_dir = Path(args.results_dir or full.results_dir)
    analysis_dir, figures_dir = results_dir / "analysis", results_dir / "figures"
    if not analysis_dir.is_dir():
        raise InputFileError(f"{analysis_dir}: no stored analysis directory")
    records = stored_records(analysis_dir)
    conditions = [c.to_dict() for c in expand_conditions(full.md)]
    _, efield = efield_report(args.ledger)
    text = results_markdown(args.config or "(schema defaults)", str(analysis_dir), conditions, records,
                            claims_markdown_of(analysis_dir), efield,
                            relative_figures(figures_dir, args.output) if figures_dir.is_dir() else [])
    LOG.info("wrote %s (%d of %d conditions stored)", write_results(args.output, text), len(records), len(conditions))
    return 0


def run_stability(args: argparse.Namespace) -> int:
    from bornfield.analysis.results import stability_markdown, stored_records, write_results
    from bornfield.md.conditions import expand_conditions

    full = settings_from_args(args, "analyze stability")
    results_dir = Path(args.results_dir or full.results_dir)
    analysis_dir = results_dir / "analysis"
    if not 0 < args.min_fraction <= 1:
        raise InputFileError(f"--min-fraction {args.min_fraction}: expected a fraction in (0, 1]")
    records = stored_records(analysis_dir) if analysis_dir.is_dir() else []
    conditions = [c.to_dict() for c in expand_conditions(full.md)]
    production_ps = [(c["production_steps"] or full.md["production_steps"]) * full.md["timestep_fs"] / 1000.0
                     for c in conditions]
    output = Path(args.output or results_dir / "STABILITY.md")
    text = stability_markdown(args.config or "(schema defaults)", str(analysis_dir), conditions, records,
                              production_ps, args.min_fraction)
    LOG.info("wrote %s (%d of %d conditions stored)", write_results(output, text), len(records), len(conditions))
    return 0
