"""``bornfield md …``: list the conditions of a config, run one condition.

Run one condition with all its replicas (serial or under MPI)::

    bornfield md run --settings '{"md": {...}}' --results-dir results \\
        --condition amorphous_T600K_E0.1_x
    .venv/bin/mpiexec -n 4 bornfield md run --config config/config.yaml --condition …

Models are read from ``{results_dir}/models/gen<md.model_generation>/``
(``potential_<i>.pt`` for i < ``md.committee_size``, ``born_0.pt``), start
cells from ``{results_dir}/structures/md_cells/<phase>.extxyz`` (or ``--potential``,
``--born``, ``--structures`` and ``--output-dir``, all four given).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from bornfield.cli import add_model_arguments
from bornfield.config import add_settings_arguments, settings_from_args
from bornfield.errors import ConfigError, InputFileError
from bornfield.md.conditions import expand_conditions
from bornfield.md.output import model_files_changes, model_files_record

LOG = logging.getLogger(__name__)


def model_paths(results_dir: Path, settings: dict) -> tuple[list[Path], Path]:
    """(potential files of the committee, Born model file): the model set ``md.models`` if given,
    else the configured generation of this campaign (resolved ``md`` settings)."""
    directory = Path(settings["models"]) if settings.get("models") else (
        Path(results_dir) / "models" / f"gen{settings['model_generation']}")
    potentials = [directory / f"potential_{i}.pt" for i in range(settings["committee_size"])]
    return potentials, directory / "born_0.pt"


def stale_analysis_reason(record_path: Path, potential_files: list[Path], born_file: Path) -> str | None:
    """Why an analysis record is not of the current model files (sha256), or None if it is,
    or if the model files do not exist yet (nothing to compare with)."""
    if not all(p.exists() for p in [*potential_files, born_file]):
        return None
    record = json.loads(record_path.read_text(encoding="utf-8"))
    models = (record.get("md_run") or {}).get("models")
    if models is None:
        return "its MD run recorded no model files"
    changed = model_files_changes(models, model_files_record(potential_files, born_file))
    if changed:
        return "made with other model files (" + "; ".join(changed) + ")"
    return None


def start_cells_path(results_dir: Path, phase: str) -> Path:
    return Path(results_dir) / "structures" / "md_cells" / f"{phase}.extxyz"


def run_list(args: argparse.Namespace) -> int:
    full = settings_from_args(args, "md list")
    settings = full.md
    conditions = expand_conditions(settings)
    if args.pending_in:
        potential_files, born_file = model_paths(Path(full.results_dir), settings)
        pending = []
        for condition in conditions:
            record = Path(args.pending_in) / f"{condition.name}.json"
            if not record.exists():
                pending.append(condition)
                continue
            stale = stale_analysis_reason(record, potential_files, born_file)
            if stale is not None:
                LOG.warning("%s: %s; the condition is listed to run again", record, stale)
                pending.append(condition)
        conditions = pending
    for condition in conditions:
        if args.json:
            print(json.dumps(condition.to_dict(), sort_keys=True))
        else:
            print(condition.name)
    return 0


def run_condition_cli(args: argparse.Namespace) -> int:
    from mpi4py import MPI  # before lammps / torch threads are configured

    comm = MPI.COMM_WORLD
    if bool(args.potential) != bool(args.born):
        raise ConfigError("give both --potential and --born (or neither, to use --results-dir)")
    if args.born and len(args.born) > 1:
        raise ConfigError(f"md run drives the MD with one Born-charge model, got --born {' '.join(args.born)}: give one file")
    # the model files, start cells and output directory given: the campaign layout is not read
    inputs_given = bool(args.potential and args.structures and args.output_dir)
    full = settings_from_args(args, "md run", condition=args.condition, inputs_given=inputs_given)
    settings = full.md
    (condition,) = expand_conditions(settings)
    results_dir = None if inputs_given else Path(args.results_dir or full.results_dir)
    if args.potential:
        potential_files, born_file = [Path(p) for p in args.potential], Path(args.born[0])
    else:
        potential_files, born_file = model_paths(results_dir, settings)
    missing = [str(p) for p in [*potential_files, born_file] if not p.exists()]
    if missing:
        raise InputFileError(f"MD models not found: {missing} (written by the train stage)")
    import torch

    from bornfield.md.runner import read_start_cells, run_condition
    from bornfield.models import PotentialCommittee, load_born, load_potential
    from bornfield.structures.io import check_structure

    # one torch thread per rank by default: the ranks already fill the cores, and
    # oversubscribed intra-op threads slow the small per-step graphs down by 10x
    torch.set_num_threads(args.threads)
    potentials = [load_potential(p) for p in potential_files]
    potential, committee = potentials[0], potentials[1:]
    if settings["committee_mean_forces"]:  # the members' mean drives the MD, their spread is the uncertainty
        potential, committee = PotentialCommittee(potentials), []
    born = load_born(born_file)
    model_files = model_files_record(potential_files, born_file)
    cells_path = Path(args.structures) if args.structures else start_cells_path(results_dir, condition.phase)
    cells = read_start_cells(cells_path)
    for index, atoms in enumerate(cells):  # before any step: no NaN, coincident atoms or unknown elements
        check_structure(atoms, f"{cells_path} frame {index}", potentials[0].species)
    outdir = Path(args.output_dir) if args.output_dir else results_dir / "md" / condition.name
    try:
        summary = run_condition(settings, condition, outdir, potential, born, cells,
                                committee=committee, comm=comm, progress=not args.no_progress,
                                model_files=model_files)
    except BaseException as exc:
        if comm.Get_size() > 1:
            # the other ranks would wait forever in a collective: take the whole job down
            LOG.error("rank %d: %s: %s; aborting the MPI job", comm.Get_rank(), type(exc).__name__, exc)
            comm.Abort(2)
        raise
    if summary is not None:
        LOG.info("%s: %d/%d replicas completed", condition.name, summary["replicas_completed"],
                 summary["replicas_total"])
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("md", help="field molecular dynamics (F = F_NNP + e Z^T E)")
    sub = parser.add_subparsers(dest="md_command", metavar="SUBCOMMAND", required=True)

    listing = sub.add_parser("list", help="print the condition names of the md section")
    add_settings_arguments(listing)
    listing.add_argument("--json", action="store_true", help="print one JSON object per condition instead of its name")
    listing.add_argument("--pending-in", metavar="ANALYSIS_DIR",
                         help="list only the conditions whose analysis record in this directory is missing or was "
                              "made with other model files than the configured ones (default: every condition)")
    listing.set_defaults(func=run_list)

    run = sub.add_parser("run", help="run all replicas of one condition (MPI-aware)")
    add_settings_arguments(run)
    run.add_argument("--condition", required=True, help="condition name (see 'bornfield md list')")
    run.add_argument("--results-dir", help="campaign results directory (default: the config's results_dir)")
    run.add_argument("--output-dir", help="output directory (default: <results-dir>/md/<condition>)")
    run.add_argument("--structures", help="start cells, extxyz (default: <results-dir>/structures/md_cells/<phase>.extxyz)")
    add_model_arguments(run, ("potential",), absent="<results-dir>/models/gen<k>/potential_<i>.pt",
                        note="; member 0 drives the MD, the others give its force uncertainty")
    add_model_arguments(run, ("born",), absent="<results-dir>/models/gen<k>/born_0.pt",
                        note="; the MD takes exactly one")
    run.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=run_condition_cli)
