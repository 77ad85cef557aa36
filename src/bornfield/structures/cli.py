"""``bornfield structures …``: build crystals/defects, melt-quench, gather, report.

Sub-commands (each writes its outputs atomically):

* ``crystals``  crystal/defect MD cells ``md_cells/<phase>.extxyz`` and the
  crystal DFT candidates ``intermediate/crystals_dft.extxyz``;
* ``melt-quench``  one amorphous cell (kind ``dft`` or ``md``, index i);
* ``gather``  ``md_cells/amorphous.extxyz`` and ``dft_candidates.extxyz``;
* ``validate-potential``  Pedone potential on the crystals (box relaxation);
* ``report``  structure report (JSON + PNG) of one structure file;
* ``build``  everything above in one process (no Snakemake needed).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bornfield.config import add_settings_arguments, load_config, settings_from_args
from bornfield.errors import ConfigError

log = logging.getLogger(__name__)


def _master_seed(args: argparse.Namespace) -> int:
    if getattr(args, "seed", None) is not None:
        return int(args.seed)
    if getattr(args, "config", None):
        return int(load_config(args.config)["seed"])
    raise ConfigError("the master seed is needed: pass --seed INT (or --config FILE with a top-level 'seed')")


def _common(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser)
    parser.add_argument("--seed", type=int, help="master seed of the campaign (config key 'seed')")


def run_crystals(args: argparse.Namespace) -> int:
    from bornfield.structures.builder import (
        build_crystal_dft_candidates, build_crystal_md_cells, check_unique_ids)
    from bornfield.structures.io import write_extxyz_atomic

    settings = settings_from_args(args, "structures")
    seed = _master_seed(args)
    outdir = Path(args.outdir)
    md_cells = build_crystal_md_cells(settings, seed)
    candidates = build_crystal_dft_candidates(settings, seed)
    check_unique_ids(candidates, "crystal DFT candidates")
    for name, images in md_cells.items():
        path = write_extxyz_atomic(outdir / "md_cells" / f"{name}.extxyz", images)
        log.info("wrote %s (%d atoms)", path, len(images[0]))
    path = write_extxyz_atomic(outdir / "intermediate" / "crystals_dft.extxyz", candidates)
    log.info("wrote %s (%d structures)", path, len(candidates))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("structures", help="crystals, defects, melt-quench, structure reports")
    sub = parser.add_subparsers(dest="structures_command", metavar="ACTION")

    p = sub.add_parser("crystals", help="crystal/defect MD cells and crystal DFT candidates")
    _common(p)
    p.add_argument("--outdir", required=True, help="stage directory, e.g. results/structures")
    p.set_defaults(func=run_crystals)

    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
