"""``bornfield plot``: figures from stored analysis results (never from trajectories).

Examples::

    bornfield plot condition results/analysis/amorphous_T600K_E0.1_x.json \\
        --output results/figures/condition_amorphous_T600K_E0.1_x
    bornfield plot sweep results/analysis/*_E*.json \\
        --linear-response results/analysis/sweep_linear_response.csv \\
        --arrhenius results/analysis/arrhenius.json --output-dir results/figures
    bornfield plot all --analysis-dir results/analysis --output-dir results/figures
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bornfield.analysis.cli import analysis_settings
from bornfield.config import add_settings_arguments
from bornfield.errors import InputFileError

LOG = logging.getLogger(__name__)

SWEEP_FIGURES = ("sweep_msd_vs_field", "mobility_vs_field", "transverse_forces", "arrhenius")
"""Stems of the campaign-level figures written by ``bornfield plot sweep``."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="figures (PNG + PDF) from stored analysis results",
        description="Draw the bornfield figures from analysis JSON/CSV files.",
    )
    commands = parser.add_subparsers(dest="plot_command", metavar="SUBCOMMAND", required=True)

    condition = commands.add_parser("condition", help="MSD, drift and transverse-force figure of one condition")
    condition.add_argument("record", help="analysis/<condition>.json")
    condition.add_argument("--output", required=True, metavar="STEM",
                           help="figure path without extension: one file per analysis.figures.formats")
    add_settings_arguments(condition)
    condition.set_defaults(func=run_condition)

    sweep = commands.add_parser("sweep", help="campaign figures: MSD vs field, mobility, transverse forces, Arrhenius")
    sweep.add_argument("records", nargs="+", help="per-condition analysis JSON files")
    sweep.add_argument("--linear-response", required=True, help="analysis/sweep_linear_response.csv")
    sweep.add_argument("--arrhenius", required=True, help="analysis/arrhenius.json")
    sweep.add_argument("--output-dir", required=True, help="figure directory")
    add_settings_arguments(sweep)
    sweep.set_defaults(func=run_sweep)

    everything = commands.add_parser("all", help="every figure from an analysis directory (what 'snakemake figures' does)")
    everything.add_argument(
        "--analysis-dir", required=True,
        help="directory with sweep_linear_response.csv, arrhenius.json and the per-condition records",
    )
    everything.add_argument(
        "--records", nargs="+",
        help="per-condition records to draw (default: every <condition>.json in --analysis-dir)",
    )
    everything.add_argument("--output-dir", required=True, help="figure directory")
    add_settings_arguments(everything)
    everything.set_defaults(func=run_all)


def _figure_options(settings: dict) -> dict:
    return {"formats": tuple(settings["figures"]["formats"]), "dpi": settings["figures"]["dpi"]}


def run_condition(args: argparse.Namespace) -> int:
    from bornfield.analysis.sweep import load_records
    from bornfield.plots import figures

    settings = analysis_settings(args, "plot")
    if Path(args.record).is_dir():
        raise InputFileError(f"{args.record}: a directory; give one per-condition analysis record (JSON file)")
    (record,) = load_records([args.record])
    paths = figures.plot_condition(record, args.output, **_figure_options(settings))
    LOG.info("wrote %s", ", ".join(map(str, paths)))
    return 0


def draw_sweep(records, linear_response_csv, arrhenius_json, output_dir, settings) -> list[Path]:
    """The four campaign-level figures (see ``SWEEP_FIGURES``); returns the written paths."""
    import json

    from bornfield.plots import figures

    options = _figure_options(settings)
    species = settings["mobile_species"]
    output_dir = Path(output_dir)
    try:
        arrhenius = json.loads(Path(arrhenius_json).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{arrhenius_json}: cannot read the Arrhenius record ({exc})") from exc
    if not Path(linear_response_csv).is_file():
        raise InputFileError(f"{linear_response_csv}: linear-response table not found")
    rows = figures.read_csv(linear_response_csv)
    paths = []
    paths += figures.plot_sweep_msd(records, species, output_dir / "sweep_msd_vs_field", **options)
    paths += figures.plot_mobility(rows, species, output_dir / "mobility_vs_field", **options)
    paths += figures.plot_transverse(records, output_dir / "transverse_forces", **options)
    paths += figures.plot_arrhenius(arrhenius, output_dir / "arrhenius", **options)
    return paths


def run_sweep(args: argparse.Namespace) -> int:
    from bornfield.analysis.sweep import load_records

    settings = analysis_settings(args, "plot")
    records = load_records(args.records)
    paths = draw_sweep(records, args.linear_response, args.arrhenius, args.output_dir, settings)
    LOG.info("wrote %d files in %s", len(paths), args.output_dir)
    return 0


def run_all(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bornfield.analysis.sweep import load_records
    from bornfield.plots import figures

    settings = analysis_settings(args, "plot")
    analysis_dir = Path(args.analysis_dir)
    records = load_records(args.records or [analysis_dir])
    figures_dir = Path(args.output_dir)
    options = _figure_options(settings)
    for record in tqdm(records, desc="condition figures", unit="fig", disable=None):
        figures.plot_condition(record, figures_dir / f"condition_{record['condition']['name']}", **options)
    draw_sweep(records, analysis_dir / "sweep_linear_response.csv", analysis_dir / "arrhenius.json", figures_dir, settings)
    LOG.info("wrote figures of %d conditions and %d sweep figures in %s", len(records), len(SWEEP_FIGURES), figures_dir)
    return 0
