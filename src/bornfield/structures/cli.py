"""``bornfield structures …``: build crystals/defects, melt-quench, gather, report.

Sub-commands (each writes its outputs atomically):

* ``crystals``  crystal/defect MD cells ``md_cells/<phase>.extxyz`` and the
  crystal DFT candidates ``intermediate/crystals_dft.extxyz``;
* ``melt-quench``  one amorphous cell (kind ``dft`` or ``md``, index i);
* ``gather``  ``md_cells/amorphous.extxyz`` (``intermediate/amorphous_classical.extxyz``
  with ``amorphous.nn_equilibration.enabled``) and ``dft_candidates.extxyz``;
* ``nn-equilibrate``  amorphous cells re-equilibrated (NPT) with the NN potential committee;
* ``validate-potential``  Pedone potential on the crystals (box relaxation);
* ``report``  structure report (JSON + PNG) of one structure file;
* ``build``  everything above in one process (no Snakemake needed).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bornfield.cli import add_model_arguments
from bornfield.config import add_settings_arguments, settings_from_args
from bornfield.errors import ConfigError

log = logging.getLogger(__name__)


def _settings(args: argparse.Namespace, **context) -> tuple:
    """(``structures`` settings this command reads, master seed): ``--seed`` overrides the config's."""
    settings = settings_from_args(args, f"structures {args.structures_command}", **context)
    seed = args.seed if getattr(args, "seed", None) is not None else settings["seed"] if "seed" in settings else None
    return settings.structures, seed


def _common(parser: argparse.ArgumentParser, seed: bool = True) -> None:
    add_settings_arguments(parser)
    if seed:
        parser.add_argument("--seed", type=int, help="master seed of the campaign (default: the config's 'seed')")


def run_crystals(args: argparse.Namespace) -> int:
    from bornfield.structures.builder import (
        build_crystal_dft_candidates, build_crystal_md_cells, check_unique_ids)
    from bornfield.structures.io import write_extxyz_atomic

    only = getattr(args, "only", None)
    settings, seed = _settings(args, only=only)
    outdir = Path(args.output_dir)
    if only in (None, "md-cells"):
        for name, images in build_crystal_md_cells(settings, seed).items():
            path = write_extxyz_atomic(outdir / "md_cells" / f"{name}.extxyz", images)
            log.info("wrote %s (%d atoms)", path, len(images[0]))
    if only in (None, "dft"):
        candidates = build_crystal_dft_candidates(settings, seed)
        check_unique_ids(candidates, "crystal DFT candidates")
        path = write_extxyz_atomic(outdir / "intermediate" / "crystals_dft.extxyz", candidates)
        log.info("wrote %s (%d structures)", path, len(candidates))
    return 0


def _is_root() -> bool:
    """True on MPI rank 0 (or without MPI): only the root writes files."""
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_rank() == 0


def run_melt_quench(args: argparse.Namespace) -> int:
    from bornfield.structures.amorphous import make_amorphous_cell
    from bornfield.structures.io import write_extxyz_atomic, write_json_atomic

    settings, seed = _settings(args, kind=args.kind)
    output = Path(args.output)
    if output.suffix != ".extxyz":
        raise ConfigError(f"--output must end in .extxyz, got {output}")
    if args.lammps_log and _is_root():
        Path(args.lammps_log).parent.mkdir(parents=True, exist_ok=True)
    final, snapshots, result = make_amorphous_cell(
        settings["amorphous"], seed, args.kind, args.index, lammps_log=args.lammps_log)
    if _is_root():
        record = {"structure_id": final.info["structure_id"], "seed": final.info["seed"],
                  "kind": args.kind, "index": args.index, "n_atoms": len(final),
                  "summary": result.summary, "trace": result.trace}
        # the trace first: the .extxyz is the rule's completion marker
        write_json_atomic(output.with_suffix(".json"), record)
        write_extxyz_atomic(output, [final, *snapshots])
        log.info("wrote %s: 1 amorphous cell + %d melt snapshots", output, len(snapshots))
    return 0


AMORPHOUS_MD_CELLS = "md_cells/amorphous.extxyz"
AMORPHOUS_CLASSICAL = "intermediate/amorphous_classical.extxyz"


def classical_md_cells_path(settings) -> str:
    """Where the classical amorphous MD cells go (relative to the stage directory):
    :data:`AMORPHOUS_CLASSICAL` when ``amorphous.nn_equilibration.enabled`` (the NN cells then
    take :data:`AMORPHOUS_MD_CELLS`), else :data:`AMORPHOUS_MD_CELLS`."""
    return AMORPHOUS_CLASSICAL if settings["amorphous"]["nn_equilibration"]["enabled"] else AMORPHOUS_MD_CELLS


def gather(settings: dict, master_seed: int, crystals_dft: Path, amorphous_files: list[Path],
           outdir: Path, md_cells: Path | None = None) -> dict[str, Path]:
    """Combine crystal candidates and melt-quench results into the stage's final files.

    Reads ``settings["perturbations"]``. The MD cells (kind ``md``) of ``amorphous_files``
    go to ``md_cells`` (default ``outdir /`` :data:`AMORPHOUS_MD_CELLS`).
    """
    from bornfield.structures.builder import check_unique_ids, perturbed_copies
    from bornfield.structures.io import read_structures, write_extxyz_atomic

    candidates = read_structures(crystals_dft)
    md_amorphous, dft_amorphous = [], []
    for path in amorphous_files:
        images = read_structures(path)
        final = images[0]
        if final.info.get("config_type") != "amorphous":
            raise ConfigError(f"{path}: first frame is not an amorphous cell "
                              f"(config_type {final.info.get('config_type')!r})")
        if final.info.get("amorphous_kind") == "md":
            md_amorphous.append(final)
        else:
            dft_amorphous.append(final)
            candidates.append(final)
            candidates.extend(perturbed_copies(final, settings["perturbations"], master_seed))
            candidates.extend(images[1:])
    check_unique_ids(candidates, "DFT candidates")
    written = {"dft_candidates": write_extxyz_atomic(outdir / "dft_candidates.extxyz", candidates)}
    if md_amorphous:
        written["amorphous"] = write_extxyz_atomic(md_cells or outdir / AMORPHOUS_MD_CELLS, md_amorphous)
    if dft_amorphous:
        written["amorphous_dft"] = write_extxyz_atomic(outdir / "intermediate" / "amorphous_dft.extxyz",
                                                       dft_amorphous)
    log.info("DFT candidates: %d structures (%s)", len(candidates),
             ", ".join(f"{t}: {sum(a.info['config_type'] == t for a in candidates)}"
                       for t in sorted({a.info["config_type"] for a in candidates})))
    return written


def run_gather(args: argparse.Namespace) -> int:
    settings, seed = _settings(args)
    gather(settings, seed, Path(args.crystals_dft), [Path(p) for p in args.amorphous], Path(args.output_dir),
           Path(args.md_cells_extxyz) if args.md_cells_extxyz else None)
    return 0


def run_nn_equilibrate(args: argparse.Namespace) -> int:
    import torch

    from bornfield.fieldphysics import UnsafeState
    from bornfield.models import load_potential
    from bornfield.structures.io import read_structures, write_extxyz_atomic, write_json_atomic
    from bornfield.structures.nn_equilibration import NNEquilibrationProtocol, equilibrate_cells, models_digest

    settings, _ = _settings(args)
    protocol = NNEquilibrationProtocol.from_settings(settings["amorphous"]["nn_equilibration"])
    output = Path(args.output)
    if output.suffix != ".extxyz":
        raise ConfigError(f"--output must end in .extxyz, got {output}")
    torch.set_num_threads(args.threads)
    cells = read_structures(args.structures)
    potential = load_potential(list(args.potential))
    digest = models_digest(args.potential)
    try:
        outputs, records = equilibrate_cells(cells, potential, protocol, digest, progress=not args.no_progress)
    except UnsafeState as exc:
        log.error("NN equilibration stopped, nothing written: %s", exc)
        return 1
    if args.report_json:
        # the trace first: the .extxyz is the rule's completion marker
        write_json_atomic(args.report_json, {
            "input": str(args.structures), "output": str(output), "potentials": [str(p) for p in args.potential],
            "models_sha256_12": digest, "settings": protocol.__dict__, "cells": records})
    write_extxyz_atomic(output, outputs)
    for record in records:
        m = record["summary"]
        log.info("%s -> %s: density %.4f -> %.4f ± %.4f g/cm3, committee spread max %s eV/Å, %.0f CPU-s",
                 record["classical_structure_id"], record["structure_id"], m["classical_density_g_cm3"],
                 m["nn_density_g_cm3"], m["nn_density_std_g_cm3"], m["force_uncertainty_max_eV_per_A"],
                 m["cpu_time_s"])
    log.info("wrote %s (%d cells)", output, len(outputs))
    return 0


def run_validate_potential(args: argparse.Namespace) -> int:
    from bornfield.structures.io import write_json_atomic
    from bornfield.structures.validation import validate_pedone_on_crystals

    settings, _ = _settings(args)
    lmp = settings["amorphous"]["lammps"]
    result = validate_pedone_on_crystals(lmp, target_atoms=args.target_atoms)
    for phase, record in result["phases"].items():
        log.info("%s: relaxed lattice %s Å vs experiment %s Å (deviation %s); %s", phase,
                 record["lattice_relaxed_A"], record["lattice_experiment_A"], record["relative_deviation"],
                 "PASS" if record["pass"] else "FAIL")
    if _is_root():
        write_json_atomic(args.output, result)
    if not result["all_pass"] and args.strict:
        log.error("Pedone potential fails the crystal check (see %s)", args.output)
        return 1
    return 0


def run_report(args: argparse.Namespace) -> int:
    from bornfield.structures.io import read_structures, write_json_atomic
    from bornfield.structures.report import build_report, plot_report

    settings, _ = _settings(args)
    images = [atoms for path in args.structures for atoms in read_structures(path)]
    if args.config_type:
        images = [a for a in images if a.info.get("config_type") == args.config_type]
        if not images:
            raise ConfigError(f"no structure with config_type '{args.config_type}' in {args.structures}")
    report = build_report(images, args.set_name, settings["report"])
    report["inputs"] = [str(p) for p in args.structures]
    plot_report(report, args.report_png)
    write_json_atomic(args.report_json, report)
    m = report["metrics"]
    log.info("%s: density %.3f ± %.3f g/cm3, P-O peak %.3f Å, P four-fold %.3f, P2O7 %.2f",
             args.set_name, m["density_g_cm3"]["mean"], m["density_g_cm3"]["std"],
             m["P-O_first_peak_A"]["mean"], m["P_fourfold_fraction"]["mean"], m["P2O7_count"]["mean"])
    if "acceptance" in report:
        log.info("amorphous acceptance: %s", {k: v["pass"] if isinstance(v, dict) else v
                                              for k, v in report["acceptance"].items()})
    return 0


def run_build(args: argparse.Namespace) -> int:
    """Everything in one process (serial), for users without Snakemake."""
    from bornfield.structures.amorphous import make_amorphous_cell
    from bornfield.structures.io import write_extxyz_atomic, write_json_atomic

    settings, seed = _settings(args)
    outdir = Path(args.output_dir)
    run_crystals(argparse.Namespace(**{**vars(args), "only": None}))
    amorphous_files = []
    for kind in ("dft", "md"):
        for index in range(settings["amorphous"][f"{kind}_cells"]["seeds"]):
            if kind == "md" and "amorphous" not in settings["phases"]:
                continue
            path = outdir / "amorphous" / f"{kind}_{index}.extxyz"
            final, snaps, result = make_amorphous_cell(settings["amorphous"], seed, kind, index)
            write_json_atomic(path.with_suffix(".json"), {"summary": result.summary, "trace": result.trace})
            write_extxyz_atomic(path, [final, *snaps])
            amorphous_files.append(path)
    written = gather(settings, seed, outdir / "intermediate" / "crystals_dft.extxyz", amorphous_files, outdir,
                     outdir / classical_md_cells_path(settings))
    if "amorphous" in written and settings["amorphous"]["nn_equilibration"]["enabled"]:
        log.warning("amorphous.nn_equilibration is enabled: %s holds the classical cells; run "
                    "'bornfield structures nn-equilibrate --structures %s --potential ... --output %s' "
                    "to make %s", written["amorphous"], written["amorphous"], outdir / AMORPHOUS_MD_CELLS,
                    AMORPHOUS_MD_CELLS)
    return 0 if written else 1


def register(subparsers) -> None:
    parser = subparsers.add_parser("structures", help="crystals, defects, melt-quench, structure reports")
    sub = parser.add_subparsers(dest="structures_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("crystals", help="crystal/defect MD cells and crystal DFT candidates")
    _common(p)
    p.add_argument("--output-dir", required=True, help="stage directory, e.g. results/structures")
    p.add_argument("--only", choices=["md-cells", "dft"],
                   help="only md_cells/<phase>.extxyz or only intermediate/crystals_dft.extxyz (default: both)")
    p.set_defaults(func=run_crystals)

    p = sub.add_parser("melt-quench", help="one amorphous cell by melt-quench (MPI-aware)")
    _common(p)
    p.add_argument("--kind", required=True, choices=["dft", "md"], help="small DFT cell or large MD cell")
    p.add_argument("--index", required=True, type=int, help="cell number 0 .. seeds-1")
    p.add_argument("--output", required=True, help="<name>.extxyz (a <name>.json trace is written beside it)")
    p.add_argument("--lammps-log", help="LAMMPS log file (default: none written)")
    p.set_defaults(func=run_melt_quench)

    p = sub.add_parser("gather", help="md_cells/amorphous.extxyz and dft_candidates.extxyz")
    _common(p)
    p.add_argument("--crystals-dft", required=True, help="intermediate/crystals_dft.extxyz")
    p.add_argument("--amorphous", nargs="+", metavar="FILE", default=[], help="melt-quench outputs (.extxyz), one or more")
    p.add_argument("--output-dir", required=True, help="stage directory, e.g. results/structures")
    p.add_argument("--md-cells-extxyz", help="where the amorphous MD cells go, e.g. <output-dir>/"
                   f"{AMORPHOUS_CLASSICAL} before 'nn-equilibrate' (default: <output-dir>/{AMORPHOUS_MD_CELLS})")
    p.set_defaults(func=run_gather)

    p = sub.add_parser("nn-equilibrate", help="re-equilibrate amorphous cells (NPT) with the NN potential committee")
    _common(p, seed=False)
    p.add_argument("--structures", required=True, help="classical amorphous cells (extxyz), e.g. "
                   f"results/structures/{AMORPHOUS_CLASSICAL}")
    add_model_arguments(p, ("potential",), required=True,
                        note="; their mean drives the NPT, their spread is checked")
    p.add_argument("--output", required=True, help="NN-equilibrated cells (.extxyz), one per input cell")
    p.add_argument("--report-json", help="settings, summary and thermodynamic trace per cell (default: none written)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_nn_equilibrate)

    p = sub.add_parser("validate-potential", help="Pedone potential on the crystals (box relaxation)")
    _common(p, seed=False)
    p.add_argument("--output", required=True, help="JSON file")
    p.add_argument("--target-atoms", type=int, default=128, help="supercell size of the check (atoms)")
    p.add_argument("--strict", action="store_true", help="exit 1 if a lattice deviates by more than 3 %%")
    p.set_defaults(func=run_validate_potential)

    p = sub.add_parser("report", help="structure report (JSON + PNG) of one set")
    _common(p, seed=False)
    p.add_argument("--structures", required=True, nargs="+", help="extxyz file(s) of the set")
    p.add_argument("--set-name", required=True, help="label of the set, e.g. amorphous")
    p.add_argument("--config-type", help="analyse only frames with this config_type (default: every frame)")
    p.add_argument("--report-json", required=True, help="report (JSON) to write")
    p.add_argument("--report-png", required=True, help="figure of the report (PNG) to write")
    p.set_defaults(func=run_report)

    p = sub.add_parser("build", help="the whole stage in one process (no Snakemake)")
    _common(p)
    p.add_argument("--output-dir", required=True, help="stage directory, e.g. results/structures")
    p.set_defaults(func=run_build)

