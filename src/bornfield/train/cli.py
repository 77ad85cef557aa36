"""``bornfield train …`` and ``bornfield predict``.

Sub-commands of ``bornfield train``:

* ``split``     the train/val/test split (``split.json``) shared by all models of a generation;
* ``init``      a randomly initialised (untrained, loadable) model file;
* ``potential`` / ``born`` / ``baseline``  train committee member i on a dataset
  (writes ``potential_<i>.pt``, ``born_<i>.pt`` or ``born_row_<axis>_<i>.pt`` plus
  ``.ckpt`` and ``.metrics.csv`` beside it, and the shared ``split.json``);
* ``evaluate``  test-set metrics as benchmark records (JSON) + parity plots;
* ``learning-curve``  test error vs training-set size;
* ``explore``   active learning: short Langevin MD with the generation-k committees;
* ``select``    active learning: candidates with the largest committee disagreement.

``bornfield predict`` labels structures with a model committee (extxyz with
``energy``, ``forces``, ``stress``, ``born_charges`` and their committee spread).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import re
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch

from bornfield import atomic
from bornfield.atomic import atomic_path
from bornfield.cli import add_model_arguments
from bornfield.config import add_settings_arguments, settings_from_args
from bornfield.errors import ConfigError, InputFileError

log = logging.getLogger(__name__)

KIND_OF_COMMAND = {"potential": "potential", "born": "born", "baseline": "born_row"}
SECTION_OF_KIND = {"potential": "potential", "born": "born", "born_row": "baseline"}


def derived_seed(master: int, *tags: str | int) -> int:
    """A reproducible 31-bit seed for one task, derived from the campaign's master seed."""
    words = [int(master)] + [zlib.crc32(str(t).encode()) for t in tags]
    return int(np.random.SeedSequence(words).generate_state(1)[0] & 0x7FFFFFFF)


def model_filename(kind: str, member: int, field_axis: int = 0) -> str:
    """File name saying what a model is: potential_<i>.pt, born_<i>.pt, born_row_<axis>_<i>.pt."""
    if kind == "born_row":
        return f"born_row_{'xyz'[field_axis]}_{member}.pt"
    return f"{kind}_{member}.pt"


def _settings(args: argparse.Namespace, command: str, **context) -> tuple:
    """(the ``train`` settings ``command`` reads, master seed): ``--seed`` overrides the config's."""
    settings = settings_from_args(args, command, **context)
    seed = args.seed if getattr(args, "seed", None) is not None else settings["seed"] if "seed" in settings else None
    return settings.train, seed


def _dataset_hash(paths: list[str]) -> str:
    from bornfield.train.data import file_sha256

    if len(paths) == 1:
        return file_sha256(paths[0])
    return "+".join(file_sha256(p) for p in paths)


def _write_json(path: Path, data) -> None:
    atomic.write_text(path, json.dumps(data, indent=1, sort_keys=False, default=float))


def resolve_split(samples, settings: dict, master_seed: int, path: Path, data_hash: str,
                  split_file: str | None = None) -> dict:
    """The split, stored in ``path`` (or checked against the stored one).

    A predefined split wins: ``split_file`` (else ``train.split.file``), then the
    dataset's ``info["split"]`` keys; otherwise the seeded stratified split. A
    predefined split without validation structures (e.g. the ledger's train/test
    keys, whose "train" includes validation) takes ``val_fraction`` of its training
    structures for validation (:func:`carve_validation`); its test set is kept as given.
    """
    from bornfield.train.data import carve_validation, read_split_file, split_from_info, stratified_split

    split_settings = settings["split"]
    split_file = split_file or split_settings["file"] or None
    source = {}
    if split_file:
        split = read_split_file(split_file, len(samples))
        source = {"source": f"split file {split_file}"}
    elif (predefined := split_from_info(samples)) is not None:
        split, source = predefined, {"source": "dataset info['split']"}
    else:
        split = stratified_split(
            samples, split_settings["val_fraction"], split_settings["test_fraction"], derived_seed(master_seed, "split"),
            split_settings["val_exclude_config_types"],
        )
    if source and not split["val"] and split_settings["val_fraction"] > 0:
        excluded = split_settings["val_exclude_config_types"]
        carved = carve_validation(samples, split["train"], split_settings["val_fraction"],
                                  derived_seed(master_seed, "split"), excluded)
        split = {"train": carved["train"], "val": carved["val"], "test": split["test"]}  # dataset indices
        source["source"] += (f"; validation: val_fraction {split_settings['val_fraction']} of its training structures"
                             " with and of those without Born labels"
                             + (f", config types {sorted(excluded)} kept in training" if excluded else ""))
    if source:
        log.info("predefined split (%s): train %d, val %d, test %d", source["source"], *map(len, split.values()))
    record = {"training_data_hash": data_hash, "n_structures": len(samples), **source, **split}
    if path.exists():
        stored = json.loads(path.read_text())
        if stored != record:
            raise InputFileError(
                f"{path}: stored split differs from the one these settings/data give; "
                "it belongs to another dataset or split setting - remove it to re-split"
            )
    else:
        _write_json(path, record)
    return record


def run_split(args: argparse.Namespace) -> int:
    from bornfield.train.data import read_samples

    settings, master = _settings(args, "train split")
    samples = read_samples(args.dataset)
    out = Path(args.output)
    record = resolve_split(samples, settings, master, out, _dataset_hash(args.dataset), args.split_file)
    print(f"split of {len(samples)} structures: train {len(record['train'])}, val {len(record['val'])}, "
          f"test {len(record['test'])} -> {out}")
    return 0


def run_init(args: argparse.Namespace) -> int:
    from bornfield.models.io import create_random_model_file

    kind = KIND_OF_COMMAND[args.kind]
    hyper = {}
    for key in ("channels", "n_basis", "radial_hidden", "hidden"):
        if getattr(args, key) is not None:
            hyper[key] = getattr(args, key)
    if kind == "born_row":
        hyper["field_axis"] = args.field_axis
    if args.mean_charge:
        if args.kind != "born":
            raise ConfigError("--mean-charge applies to --kind born only")
        charges = {}
        for item in args.mean_charge:
            symbol, _, value = item.partition("=")
            try:
                charges[symbol] = float(value)
            except ValueError as exc:
                raise ConfigError(f"--mean-charge expects SYMBOL=VALUE (e), got {item!r}") from exc
        unknown = sorted(set(charges) - set(args.species))
        if unknown:
            raise ConfigError(f"--mean-charge for {unknown}, which are not in --species {args.species}")
        hyper["mean_charges"] = charges
    path = create_random_model_file(kind, args.species, args.cutoff, args.output, args.seed, **hyper)
    print(f"wrote untrained {args.kind} model {path} (species {args.species}, cutoff {args.cutoff} Å)")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from bornfield.train.data import dataset_species, file_sha256, read_samples

    kind = KIND_OF_COMMAND[args.train_command]
    settings, master = _settings(args, f"train {args.train_command}")
    section = _member_section(settings, kind, args.member)
    samples = read_samples(args.dataset)
    data_hash = _dataset_hash(args.dataset)
    outdir = Path(args.output_dir)
    split = resolve_split(samples, settings, master, outdir / "split.json", data_hash, args.split_file)
    species = args.species or dataset_species(samples)
    metadata = {}
    init_model = None
    if args.init_model is not None:
        from bornfield.models.io import load_model

        init_model = load_model(args.init_model, kind=kind, species=species)
        metadata["initial_model"] = {"file": str(args.init_model), "sha256": file_sha256(args.init_model),
                                     "training_data": init_model.metadata.get("training_data")}
    if kind == "potential":
        section = _with_pair_baseline(section, args.pair_baseline, init_model, args.init_model)
    elif args.pair_baseline is not None:
        raise ConfigError(f"--pair-baseline applies to 'train potential', not 'train {args.train_command}'")
    _train_member(args, kind, section, settings, samples, split, species, args.dataset, data_hash, outdir,
                  derived_seed(master, "train", kind, args.member), metadata, init_model)
    return 0


def run_fit_baseline(args: argparse.Namespace) -> int:
    from bornfield.train.data import dataset_species, read_samples, read_split_file
    from bornfield.train.pair_baseline import fit_pedone_baseline

    settings, _ = _settings(args, "train fit-baseline")
    potential = settings["potential"]
    samples = read_samples(args.dataset)
    split = read_split_file(args.split_file, len(samples))
    train = [samples[i] for i in split["train"]]
    species = args.species or dataset_species(samples)
    description = (f"train rows of {args.split_file} ({len(train)} structures) of "
                   f"{' '.join(map(str, args.dataset))} (sha256 {_dataset_hash(args.dataset)})")
    fitted = fit_pedone_baseline(train, species, float(potential["baseline_cutoff_A"]),
                                 float(potential["baseline_dsf_alpha_per_A"]), description,
                                 energy_weight=float(potential["baseline_energy_weight"]),
                                 wall_pairs=potential["baseline_wall_pairs"])
    _write_json(Path(args.output), fitted)
    fit = fitted["fit"]
    energy = (f", energy RMSE {fit['energy_rmse_meV_per_atom_before']['all']:.1f} -> "
              f"{fit['energy_rmse_meV_per_atom_after']['all']:.1f} meV/atom"
              if "energy_rmse_meV_per_atom_after" in fit else "")
    walls = "".join(f", {name} wall A {a:.3g} eV, rho {rho:.3f} Å" for name, (a, rho) in fit["wall_pairs"].items())
    print(f"pair baseline fitted to {fit['target']} ({fit['n_structures']} structures): force RMSE "
          f"{fit['force_rmse_eV_per_A_before']['all']:.3f} -> {fit['force_rmse_eV_per_A_after']['all']:.3f} eV/Å"
          f"{energy}, charge scale {fit['charge_scale']:.3f}{walls} -> {args.output}")
    return 0


def _with_pair_baseline(section: dict, path: Path | None, init_model=None, init_path: Path | None = None) -> dict:
    """``section`` with the fitted pair baseline of ``path`` (``baseline: pedone_fitted``); checks a start model's."""
    if path is None:
        return section
    if section["baseline"] != "pedone_fitted":
        raise ConfigError(f"--pair-baseline {path} is given but train.potential.baseline is {section['baseline']!r}, "
                          "not 'pedone_fitted'")
    try:
        fitted = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{path}: not a pair-baseline JSON file of 'bornfield train fit-baseline': {exc}") from exc
    if init_model is not None and init_model.hyperparameters.get("baseline") != fitted:
        raise ConfigError(f"--init-model {init_path} carries another pair baseline than "
                          f"--pair-baseline {path}; fine-tuning keeps the start model's baseline")
    return {**section, "baseline_parameters": fitted}


def run_pretrain(args: argparse.Namespace) -> int:
    from bornfield.train.data import dataset_species, read_samples, stratified_split

    settings, master = _settings(args, "train pretrain")
    section = _member_section(settings, "potential", args.member)
    pretrain = section["pretrain"]
    if not pretrain["dataset"]:
        raise ConfigError("train.potential.pretrain.dataset is empty: there is nothing to pre-train on")
    section.update(max_epochs=pretrain["max_epochs"], batch_size=pretrain["batch_size"])
    if pretrain.get("energy_weight") is not None:
        section["energy_weight"] = pretrain["energy_weight"]
    section.pop("stage_two", None)  # pre-training is one stage
    section = _with_pair_baseline(section, args.pair_baseline)
    dataset = [pretrain["dataset"]]
    samples = read_samples(dataset)
    outdir = Path(args.output_dir)
    split = stratified_split(samples, settings["split"]["val_fraction"], 0.0, derived_seed(master, "pretrain split"))
    _write_json(outdir / "split.json", {**split, "source": f"stratified, val_fraction {settings['split']['val_fraction']}"})
    species = args.species or dataset_species(samples)
    _train_member(args, "potential", section, settings, samples, split, species, dataset, _dataset_hash(dataset),
                  outdir, derived_seed(master, "pretrain", "potential", args.member), {"pretraining": True}, None)
    return 0


def _member_section(settings, kind: str, member: int) -> dict:
    """The model block of ``kind`` with ``cutoff`` and ``dtype``, after checking the member index."""
    section = dict(settings[SECTION_OF_KIND[kind]])
    if kind == "born_row" and not section["enabled"]:
        raise ConfigError("train.baseline.enabled is false: the paper-style baseline is switched off")
    if not 0 <= member < section["committee"]:
        raise ConfigError(
            f"--member {member} is outside the committee of train.{SECTION_OF_KIND[kind]}.committee = {section['committee']}"
        )
    return {**section, "cutoff": settings["cutoff"], "dtype": settings["dtype"]}


def _train_member(args, kind, section, settings, samples, split, species, dataset, data_hash, outdir, seed,
                  extra_metadata, init_model) -> None:
    from bornfield.train.data import file_sha256
    from bornfield.train.trainer import stage_settings, train_model

    torch.set_num_threads(int(settings["threads"]))
    train = [samples[i] for i in split["train"]]
    val = [samples[i] for i in split["val"]]
    field_axis = int(section["field_axis"]) if kind == "born_row" else 0
    out = outdir / model_filename(kind, args.member, field_axis)
    metadata = {
        "training_data_hash": data_hash,
        "training_data": [str(p) for p in dataset],
        "split_file": str(outdir / "split.json"),
        "committee_member": args.member,
        "description": {
            "potential": "NN potential: energy (eV), forces (eV/Å), stress (eV/Å^3)",
            "born": "equivariant NN Born charges Z[atom, field α, force β] (e), ASR by mean subtraction",
            "born_row": f"paper-style baseline: Z[atom, {'xyz'[field_axis]}, :] (e) from invariant features",
        }[kind],
        **extra_metadata,
    }
    first, second = stage_settings(section)
    if second is not None:
        stage_one = out.with_name(f"{out.stem}.stage_one{out.suffix}")
        model, history = train_model(
            kind, train, val, first, stage_one, seed, species, metadata,
            resume=not args.no_resume, progress=not args.no_progress, init_model=init_model,
        )
        log.info("stage one: wrote %s (best epoch %s of %d, validation loss %.4g)", stage_one,
                 model.metadata.get("best_epoch"), len(history), model.metadata.get("best_monitor_loss", float("nan")))
        metadata["stage_one"] = {"file": str(stage_one), "sha256": file_sha256(stage_one),
                                 "best_epoch": model.metadata.get("best_epoch"), "epochs_run": len(history),
                                 "best_monitor_loss": model.metadata.get("best_monitor_loss")}
        first, init_model = second, model
    model, history = train_model(
        kind, train, val, first, out, seed, species, metadata,
        resume=not args.no_resume, progress=not args.no_progress, init_model=init_model,
    )
    log.info("wrote %s (best epoch %s of %d, validation loss %.4g at the best epoch)", out,
             model.metadata.get("best_epoch"), len(history), model.metadata.get("best_monitor_loss", float("nan")))


def metric_records(metrics: dict, system: str, baseline: bool, subset: str, notes: str) -> list[dict]:
    """Design-note benchmark records, one per metric of ``metrics`` (``n_*`` counts go into each record)."""
    # the unit is the key's last part, before a species suffix (force_rmse_meV_per_A_Li, bec_rmse_e_O)
    units = {"meV_per_atom": "meV/atom", "meV_per_A": "meV/Å", "GPa": "GPa", "e": "e"}
    pattern = re.compile(r"_(meV_per_atom|meV_per_A|GPa|e)(_[A-Z][a-z]?)?$")
    records = []
    for key, value in metrics.items():
        if key.startswith("n_"):
            continue
        match = pattern.search(key)
        unit = units[match.group(1)] if match else "1"
        records.append(
            {
                "metric": key,
                "value": float(value),
                "unit": unit,
                "system": system,
                "n_atoms": int(metrics.get("n_atoms", 0)),
                "n_structures": int(metrics.get("n_structures", 0)),
                "split": subset,
                "baseline": baseline,
                "date": dt.date.today().isoformat(),
                "machine": "2 cores, no GPU",
                "notes": notes,
            }
        )
    return records


#: what ``train evaluate`` does per model option: (option, model kind, metric function of
#: bornfield.train.metrics, record system, baseline flag, parity plot of bornfield.train.plots, plot title)
EVALUATED_KINDS = (
    ("potential", "potential", "potential_metrics", "bornfield-potential", False, "potential_parity", "NN potential"),
    ("born", "born", "born_metrics", "bornfield-born", False, "born_parity", "equivariant Born model"),
    ("baseline", "born_row", "row_metrics", "paper-row-baseline", True, "row_parity", "paper-style baseline"),
)


def _has_labels(kind: str, sample) -> bool:
    """Whether ``sample`` carries the labels a model of ``kind`` is evaluated on."""
    if kind == "potential":
        return sample.energy is not None and sample.forces is not None
    return sample.born is not None


def run_evaluate(args: argparse.Namespace) -> int:
    from bornfield.models import load_model
    from bornfield.train import metrics as M
    from bornfield.train import plots
    from bornfield.train.data import read_samples

    samples = read_samples(args.dataset)
    subset = args.subset
    if args.split and args.split_key:
        raise ConfigError("give --split FILE or --split-key, not both")
    if args.split_key:
        from bornfield.train.data import split_from_info

        split = split_from_info(samples)
        if split is None:
            raise InputFileError(f"--split-key: no structure of {', '.join(args.dataset)} has info['split']")
        samples = [samples[i] for i in split[args.subset]]
    elif args.split:
        split = json.loads(Path(args.split).read_text())
        if split.get("n_structures") != len(samples):
            raise InputFileError(f"{args.split}: split is for {split.get('n_structures')} structures, dataset has {len(samples)}")
        samples = [samples[i] for i in split[args.subset]]
    else:
        subset = "all"
    if args.dft_generation is not None:
        samples = [s for s in samples if int(s.atoms.info.get("dft_generation", 0)) == args.dft_generation]
        subset = f"{subset}, dft_generation {args.dft_generation}"
    if not samples:
        raise InputFileError(f"the '{subset}' subset of {args.dataset} is empty: nothing to evaluate")
    records, summary = [], {}
    figures_dir = Path(args.figures_dir) if args.figures_dir else Path(args.output).parent
    stem = Path(args.output).stem
    notes = args.notes or f"dataset {', '.join(args.dataset)}; subset {subset}"
    for option, kind, metric_name, system, is_baseline, plot_name, title in EVALUATED_KINDS:
        paths = getattr(args, option)
        if not paths:
            continue
        if not any(_has_labels(kind, s) for s in samples):
            log.warning("no structure of the subset has the labels of the %s models: not evaluated", option)
            continue
        models = [load_model(p, kind=kind) for p in paths]
        metric_function = getattr(M, metric_name)
        metrics, arrays = metric_function(models, samples)
        records += metric_records(metrics, system, is_baseline, subset, notes + f"; committee {len(models)}")
        if not is_baseline:
            records += driving_member_records(models, samples, metric_function, system, subset, notes)
        summary[option] = metrics
        getattr(plots, plot_name)(arrays, figures_dir / f"{stem}_{option}_parity.png", f"{title} ({subset})")
    if not records:
        raise ConfigError("nothing to evaluate: give --potential, --born and/or --baseline model files")
    _write_json(Path(args.output), records)
    for name, metrics in summary.items():
        print(summary_line(name, metrics))
    return 0


def driving_member_records(models: list, samples: list, metric_function, system: str, subset: str,
                           notes: str) -> list[dict]:
    """Records of member 0 alone (system ``<system>-member-0``) when ``models`` is a committee: field MD
    integrates member 0's forces and Born charges (the others give the committee spread), so its error
    is the one the trajectories carry. Empty for a single model."""
    if len(models) < 2:
        return []
    metrics, _ = metric_function(models[:1], samples)
    return metric_records(metrics, f"{system}-member-0", False, subset,
                          notes + f"; member 0 of a committee of {len(models)} (drives field MD)")


def summary_line(name: str, metrics: dict) -> str:
    """One printed line of test metrics: RMSE and MAE (all, diagonal, off-diagonal, per species)."""
    if "energy_rmse_meV_per_atom" in metrics:
        parts = [f"energy RMSE {metrics['energy_rmse_meV_per_atom']:.4g} MAE {metrics['energy_mae_meV_per_atom']:.4g} "
                 f"mean error {metrics['energy_mean_error_meV_per_atom']:+.3g} meV/atom",
                 f"force RMSE {metrics['force_rmse_meV_per_A']:.4g} MAE {metrics['force_mae_meV_per_A']:.4g} meV/Å"]
        parts += [f"{k.rsplit('_', 1)[1]} {v:.4g}" for k, v in metrics.items() if k.startswith("force_rmse_meV_per_A_")]
        if "stress_rmse_GPa" in metrics:
            parts.append(f"stress RMSE {metrics['stress_rmse_GPa']:.4g} GPa")
        if "force_error_spread_ratio" in metrics:
            parts.append(f"committee force error / spread {metrics['force_error_spread_ratio']:.3g} "
                         f"(Spearman {metrics['force_error_spread_spearman']:.2f})")
        return f"{name}: " + "; ".join(parts)
    # full tensors if present, else the first field-axis row of a row baseline
    prefix = "bec" if "bec_rmse_e" in metrics else next(
        (k[: -len("_rmse_e")] for k in metrics if k.startswith("bec_row_") and k.endswith("_rmse_e")), "bec")

    def pair(rmse_key: str, mae_key: str) -> str:
        mae = metrics.get(mae_key)
        return f"RMSE {metrics[rmse_key]:.4g}" + (f" MAE {mae:.4g}" if mae is not None else "")

    parts = [f"{label} " + pair(f"{prefix}_rmse{suffix}_e", f"{prefix}_mae{suffix}_e")
             for label, suffix in (("all", ""), ("diagonal", "_diag"), ("off-diagonal", "_offdiag"))
             if f"{prefix}_rmse{suffix}_e" in metrics]
    species = sorted(k.rsplit("_", 1)[1] for k in metrics if k.startswith(f"{prefix}_rmse_e_"))
    parts += [f"{x} " + pair(f"{prefix}_rmse_e_{x}", f"{prefix}_mae_e_{x}") for x in species]
    label = "" if prefix == "bec" else f" row {prefix.rsplit('_', 1)[1]}"
    return f"{name}{label} (e): " + "; ".join(parts)


def run_learning_curve(args: argparse.Namespace) -> int:
    from bornfield.train import metrics as M
    from bornfield.train import plots
    from bornfield.train.data import dataset_species, file_sha256, read_samples
    from bornfield.train.trainer import train_model, usable_samples

    kind = KIND_OF_COMMAND[args.kind]
    settings, master = _settings(args, "train learning-curve", kind=args.kind)
    torch.set_num_threads(int(settings["threads"]))
    section = dict(settings[SECTION_OF_KIND[kind]])
    section.update(cutoff=settings["cutoff"], dtype=settings["dtype"])
    samples = read_samples(args.dataset)
    data_hash = _dataset_hash(args.dataset)
    outdir = Path(args.output_dir)
    split = resolve_split(samples, settings, master, outdir / "split.json", data_hash, args.split_file)
    species = dataset_species(samples)
    train_all = usable_samples(kind, [samples[i] for i in split["train"]])
    val = [samples[i] for i in split["val"]]
    test = [samples[i] for i in split["test"]]
    rng = np.random.default_rng(derived_seed(master, "learning-curve"))
    order = rng.permutation(len(train_all))
    sizes = sorted({max(1, int(round(f * len(train_all)))) for f in args.fractions})
    rows = []
    for size in sizes:
        subset = [train_all[i] for i in order[:size]]
        out = outdir / f"{kind}_n{size}.pt"
        model, _ = train_model(kind, subset, val, section, out, derived_seed(master, "lc", kind, size), species,
                               {"training_data_hash": data_hash, "learning_curve_size": size},
                               resume=not args.no_resume, progress=not args.no_progress)
        fn = {"potential": M.potential_metrics, "born": M.born_metrics, "born_row": M.row_metrics}[kind]
        metrics, _ = fn(model, test)
        rows.append({"n_train": size, **metrics})
        log.info("learning curve: %d training structures -> %s", size, {k: round(v, 4) for k, v in metrics.items() if "rmse" in k and k[-2:] not in ("Li", "_P", "_O")})
    _write_json(outdir / f"learning_curve_{kind}.json", rows)
    keys = [k for k in rows[0] if "rmse" in k and k[-2:] not in ("Li", "_P", "_O") and "row" not in k or k.endswith("rmse_e") and "row" in k]
    keys = [k for k in keys if rows[0][k] == rows[0][k]][:4]
    plots.learning_curve([r["n_train"] for r in rows], {k: [r[k] for r in rows] for k in keys},
                         "test RMSE", outdir / f"learning_curve_{kind}.png")
    return 0


def run_select(args: argparse.Namespace) -> int:
    from ase.io import write

    from bornfield.models import load_born, load_potential
    from bornfield.structures.io import check_structure
    from bornfield.train.select import (
        committee_disagreement,
        read_candidates,
        select_candidates,
        selection_scores,
    )

    settings = settings_from_args(args, "train select").train.active_learning
    n_select = args.select_per_generation if args.select_per_generation is not None else settings["select_per_generation"]
    score_name = args.score or settings["score"]
    gap = args.min_frame_gap if args.min_frame_gap is not None else settings["min_frame_gap"]
    candidates = read_candidates(args.candidates, args.stride)
    if not candidates:
        raise InputFileError(f"no candidate structures in {args.candidates}")
    potential = load_potential([Path(p) for p in args.potential]) if args.potential else None
    born = load_born([Path(p) for p in args.born]) if args.born else None
    model = potential if potential is not None else born
    species = model.species if model is not None else None
    for atoms in candidates:
        check_structure(atoms, f"{atoms.info['trajectory']} frame {atoms.info['frame']}", species)
    disagreement = committee_disagreement(candidates, potential, born)
    scores = selection_scores(disagreement, score_name)
    chosen = select_candidates(candidates, scores, n_select, gap)
    selected = []
    for k in chosen:
        atoms = candidates[k].copy()
        atoms.calc = None
        for key in ("energy", "stress", "free_energy"):
            atoms.info.pop(key, None)
        for key in ("forces", "born_charges"):
            if key in atoms.arrays:
                del atoms.arrays[key]
        atoms.info.update(al_score=float(scores[k]), al_force_std=float(disagreement["force_std"][k]),
                          al_born_std=float(disagreement["born_std"][k]), al_candidate_index=int(k))
        if args.generation is not None:
            atoms.info["al_generation"] = int(args.generation)
        selected.append(atoms)
    out = Path(args.output)
    with atomic_path(out) as tmp:
        write(tmp, selected, format="extxyz")
    if args.report_json:
        report = {
            "candidates": [str(p) for p in args.candidates], "n_candidates": len(candidates),
            "trajectory": [str(a.info.get("trajectory", "")) for a in candidates],
            "frame": [int(a.info.get("frame", -1)) for a in candidates], "n_selected": len(chosen),
            "score": score_name, "min_frame_gap": gap, "selected": chosen,
            "force_std_eV_per_A": disagreement["force_std"].tolist(),
            "born_std_e": disagreement["born_std"].tolist(), "scores": scores.tolist(),
        }
        atomic.write_text(args.report_json, json.dumps(report, indent=1, default=lambda v: None))
    print(f"selected {len(chosen)} of {len(candidates)} candidates -> {out}")
    return 0


def _model_species(calculator) -> tuple[str, ...]:
    """Elements the models of ``calculator`` know (every structure they see must hold only these)."""
    return tuple((calculator.potential if calculator.potential is not None else calculator.born).species)


def run_explore(args: argparse.Namespace) -> int:
    from ase.io import write

    from bornfield.structures.io import read_checked

    from bornfield.calculators import FieldCalculator
    from bornfield.train.explore import ExplorationSettings, explore

    settings, master = _settings(args, "train explore")
    torch.set_num_threads(int(settings["threads"]))
    exploration = ExplorationSettings.from_config(settings["active_learning"]["exploration"])
    path = Path(args.structures)
    calculator = FieldCalculator(potential=args.potential, born=args.born)
    structures = read_checked(path, species=_model_species(calculator))
    seed = derived_seed(master, "explore", args.generation)
    snapshots, records = explore(structures, calculator, exploration, seed, progress=not args.no_progress)
    if not snapshots:
        raise InputFileError(
            f"exploration MD from {path} produced no usable snapshot (every trajectory stopped at once): "
            + "; ".join(f"{r['trajectory']}: {r['stopped']}" for r in records)
        )
    for atoms in snapshots:
        atoms.info["al_generation"] = int(args.generation)
    out = Path(args.output)
    with atomic_path(out) as tmp:
        write(tmp, snapshots, format="extxyz")
    if args.report_json:
        _write_json(Path(args.report_json), {"structures": str(path), "generation": args.generation,
                                        "n_snapshots": len(snapshots), "trajectories": records})
    print(f"{len(snapshots)} snapshots from {len(records)} trajectories -> {out}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ase.io import write

    from bornfield.structures.io import read_checked

    from bornfield.calculators import FieldCalculator
    from bornfield.fieldphysics import UnsafeState

    torch.set_num_threads(args.threads)
    calc = FieldCalculator(potential=args.potential or None, born=args.born or None, field=args.field, dtype=args.dtype)
    path = Path(args.structures)
    frames = read_checked(path, species=_model_species(calc))
    out_frames = []
    from tqdm import tqdm

    for atoms in tqdm(frames, desc="predict", disable=args.no_progress):
        a = atoms.copy()
        a.calc = None
        for key in ("energy", "stress", "free_energy", "energy_std"):  # never leave input labels behind
            a.info.pop(key, None)
        for key in ("forces", "forces_std", "born_charges", "born_charges_std", "field_forces"):
            if key in a.arrays:
                del a.arrays[key]
        try:
            calc.calculate(a, ["energy", "forces", "energy_var", "forces_var", "born_charges_var"],
                           ["positions", "numbers", "cell", "pbc"])
        except UnsafeState as exc:
            raise InputFileError(f"{path} frame {len(out_frames)}: {exc}") from exc
        r = calc.results
        if calc.potential is not None:
            a.info["energy"] = float(r["energy"])
            a.info["energy_std"] = float(np.sqrt(r["energy_var"]))
            a.arrays["forces"] = np.asarray(r["forces"])
            a.arrays["forces_std"] = np.sqrt(r["forces_var"])
            if "stress" in r:
                from ase.stress import voigt_6_to_full_3x3_stress

                a.info["stress"] = voigt_6_to_full_3x3_stress(r["stress"]).reshape(9)
        if calc.born is not None:
            a.arrays["born_charges"] = np.asarray(r["born_charges"]).reshape(len(a), 9)
            a.arrays["born_charges_std"] = np.sqrt(r["born_charges_var"]).reshape(len(a), 9)
            a.arrays["field_forces"] = np.asarray(r["field_forces"])
        a.info["field_V_per_A"] = np.asarray(args.field, dtype=float)
        a.info["predicted_by"] = ";".join(str(p) for p in (args.potential or []) + (args.born or []))
        out_frames.append(a)
    out = Path(args.output)
    with atomic_path(out) as tmp:
        write(tmp, out_frames, format="extxyz")
    print(f"wrote {len(out_frames)} structures to {out}")
    return 0


def run_ship(args: argparse.Namespace) -> int:
    from ase.io import read

    from bornfield.train.shipped import accuracy_table, model_set_order, read_model_set, write_model_set

    frames = read(args.dataset, index=":", format="extxyz")
    splits = {name: [str(a.info.get("dft_id", i)) for i, a in enumerate(frames) if a.info.get("split") == name]
              for name in ("train", "val", "test")}
    if args.split:  # the training split (validation carved from the 'train' rows)
        from bornfield.train.data import read_split_file

        used = read_split_file(args.split, len(frames))
        named = {name: [str(frames[i].info.get("dft_id", i)) for i in used[name]] for name in ("train", "val", "test")}
        if sorted(named["test"]) != sorted(splits["test"]):
            raise InputFileError(f"{args.split}: its test rows are not the dataset's info['split'] test rows "
                                 f"({len(named['test'])} vs {len(splits['test'])}); was it written for {args.dataset}?")
        splits = named
    test_frames = [a for a in frames if a.info.get("split") == "test"]
    source = {"dataset": str(args.dataset), "dataset_sha256": _dataset_hash([args.dataset]), "n_entries": len(frames),
              "n_train": len(splits["train"]), "n_val": len(splits["val"]), "n_test": len(splits["test"]),
              "dft_ids": splits}
    if args.ledger:
        from bornfield.ledger.store import Ledger

        ledger = Ledger(args.ledger)
        source.update(ledger=str(args.ledger), ledger_identity=ledger.identity, ledger_entries=len(ledger.dft_ids()))
    # in the order the set stores them, so that member 0's records are those of the member that drives MD
    models = {kind: [str(p) for p in model_set_order(kind, getattr(args, kind))]
              for kind in ("potential", "born", "baseline") if getattr(args, kind)}
    figures = []
    with tempfile.TemporaryDirectory() as scratch:
        if args.metrics:
            records = json.loads(Path(args.metrics).read_text(encoding="utf-8"))
        elif test_frames:  # the held-out rows, evaluated here with the one evaluation path
            metrics = Path(scratch) / "evaluation.json"
            run_evaluate(argparse.Namespace(
                dataset=[str(args.dataset)], split=None, split_key=True, subset="test", dft_generation=None,
                potential=models.get("potential"), born=models.get("born"), baseline=models.get("baseline"),
                output=str(metrics),
                figures_dir=scratch, notes=f"held-out rows (info split=test) of {args.dataset}"))
            records = json.loads(metrics.read_text(encoding="utf-8"))
            figures = sorted(Path(scratch).glob("*.png"))
        else:
            log.warning("%s has no held-out rows (info split=test): the model set has no accuracy yet", args.dataset)
            records = []
        out = write_model_set(args.output_dir, models, test_frames, records, source, figures)
    print(accuracy_table(read_model_set(out)), end="")
    return 0


def run_set_rows(args: argparse.Namespace) -> int:
    from bornfield.structures.io import write_extxyz_atomic
    from bornfield.train.shipped import model_set_frames, read_model_set

    frames, split = model_set_frames(args.ledger, args.models)
    dataset, split_path = Path(args.output), Path(args.split_json)
    write_extxyz_atomic(dataset, frames)
    data_hash = _dataset_hash([str(dataset)])
    _write_json(split_path, {"training_data_hash": data_hash, "n_structures": len(frames),
                             "source": f"model set {args.models} (manifest source.dft_ids)", **split})
    shipped_hash = read_model_set(args.models).manifest["source"].get("dataset_sha256")
    print(f"{len(frames)} ledger rows of model set {args.models} (train {len(split['train'])}, val "
          f"{len(split['val'])}, test {len(split['test'])}) -> {dataset}, {split_path}; "
          + ("byte-identical to the dataset the set was trained on" if shipped_hash == data_hash
             else "same rows as the set's training data, not byte-identical to it (ledger rows rewritten since?)"))
    return 0


def run_table(args: argparse.Namespace) -> int:
    from bornfield.train.shipped import accuracy_table, read_model_set

    print(accuracy_table(read_model_set(args.models)), end="")
    return 0


PAIR_BASELINE_HELP = ("fitted pair baseline (JSON of 'bornfield train fit-baseline') of a new potential with "
                      "train.potential.baseline: pedone_fitted; with --init-model it must be the start model's "
                      "(default: none, for baseline none or pedone)")
SPLIT_FILE_HELP = ("predefined split: JSON lists train/val/test of structure indices (default: train.split.file, "
                   "else info['split'] of the dataset, else the stratified split)")


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train/evaluate NN potential and Born-charge models, active learning")
    sub = parser.add_subparsers(dest="train_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("split", help="train/val/test split by structure, stratified by config_type (split.json)")
    add_settings_arguments(p)
    p.add_argument("--seed", type=int, help="master seed of the campaign (default: the config's 'seed')")
    p.add_argument("--dataset", nargs="+", required=True, help="labelled extxyz file(s)")
    p.add_argument("--output", required=True, help="split.json (models of this generation go beside it)")
    p.add_argument("--split-file", help=SPLIT_FILE_HELP)
    p.set_defaults(func=run_split)

    p = sub.add_parser("init", help="write a randomly initialised (untrained) model file")
    p.add_argument("--kind", choices=["potential", "born", "baseline"], required=True, help="model kind")
    p.add_argument("--species", nargs="+", required=True, help="chemical symbols, e.g. Li P O")
    p.add_argument("--cutoff", type=float, default=5.0, help="radial cutoff (Å)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    p.add_argument("--output", required=True, help="model file (.pt)")
    p.add_argument("--field-axis", type=int, choices=[0, 1, 2], default=0, help="field axis of a baseline model (0 = x)")
    p.add_argument("--mean-charge", nargs="+", metavar="SYMBOL=VALUE",
                   help="born only: isotropic prior charge per species (e), e.g. Li=1 P=3.3 O=-1.8 "
                   "(default: the model's own prior)")
    for key in ("channels", "n_basis", "radial_hidden", "hidden"):
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int,
                       help=f"model hyperparameter '{key}' (default: the model's own default)")
    p.set_defaults(func=run_init)

    for name, help_text in (
        ("potential", "train one NN-potential committee member"),
        ("born", "train one equivariant Born-charge committee member"),
        ("baseline", "train one paper-style (field-axis row) baseline member"),
    ):
        p = sub.add_parser(name, help=help_text)
        add_settings_arguments(p)
        p.add_argument("--seed", type=int, help="master seed of the campaign (default: the config's 'seed')")
        p.add_argument("--dataset", nargs="+", required=True, help="labelled extxyz file(s)")
        p.add_argument("--output-dir", required=True, help="model directory, e.g. results/models/gen0")
        p.add_argument("--member", type=int, default=0, help="committee member index i")
        p.add_argument("--species", nargs="+", help="elements the model knows (default: those in the data)")
        p.add_argument("--split-file", help=SPLIT_FILE_HELP)
        p.add_argument("--init-model", type=Path, default=None,
                       help="fine-tune: start from this trained model file of the same kind, e.g. one pre-trained "
                       "on other labels (default: a new random model)")
        p.add_argument("--pair-baseline", type=Path, default=None, help=PAIR_BASELINE_HELP)
        p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.set_defaults(func=run_train)

    p = sub.add_parser("pretrain", help="pre-train one NN-potential committee member on train.potential.pretrain.dataset "
                       "(other labels, e.g. a universal potential's), for fine-tuning with --init-model")
    add_settings_arguments(p)
    p.add_argument("--seed", type=int, help="master seed of the campaign (default: the config's 'seed')")
    p.add_argument("--output-dir", required=True, help="e.g. results/models/pretrain")
    p.add_argument("--member", type=int, default=0, help="committee member index i")
    p.add_argument("--species", nargs="+", help="elements the model knows (default: those in the data)")
    p.add_argument("--pair-baseline", type=Path, default=None, help=PAIR_BASELINE_HELP)
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_pretrain)

    p = sub.add_parser("fit-baseline", help="fit the potential's Pedone pair baseline (charge scale, Morse r0, "
                       "optional Born-Mayer walls) to the forces (and energies) of the training rows, for "
                       "train.potential.baseline: pedone_fitted")
    add_settings_arguments(p)
    p.add_argument("--dataset", nargs="+", required=True, help="labelled extxyz file(s)")
    p.add_argument("--split-file", required=True, help="split.json of the training run (its train rows are fitted)")
    p.add_argument("--species", nargs="+", help="elements the model knows (default: those in the data)")
    p.add_argument("--output", required=True, help="pair-baseline JSON, e.g. results/models/pair_baseline.json")
    p.set_defaults(func=run_fit_baseline)

    p = sub.add_parser("evaluate", help="test-set metrics (benchmark JSON records) and parity plots")
    p.add_argument("--dataset", nargs="+", required=True, help="labelled extxyz file(s)")
    p.add_argument("--split", help="split.json written by training (default: all structures)")
    p.add_argument("--split-key", action="store_true",
                   help="take the --subset structures from the dataset's info['split'] keys")
    p.add_argument("--subset", choices=["train", "val", "test"], default="test",
                   help="subset of --split or --split-key to evaluate")
    p.add_argument("--dft-generation", type=int,
                   help="only structures labelled in this active-learning generation (info['dft_generation']) "
                   "(default: every generation)")
    add_model_arguments(p, ("potential", "born", "baseline"))
    p.add_argument("--output", required=True, help="JSON records")
    p.add_argument("--figures-dir", help="directory of the parity plots (default: beside --output)")
    p.add_argument("--notes", help="notes field of every record (default: names the dataset and subset)")
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser("learning-curve", help="test error vs training-set size")
    add_settings_arguments(p)
    p.add_argument("--seed", type=int, help="master seed of the campaign (default: the config's 'seed')")
    p.add_argument("--kind", choices=["potential", "born", "baseline"], required=True, help="model kind to train")
    p.add_argument("--dataset", nargs="+", required=True, help="labelled extxyz file(s)")
    p.add_argument("--output-dir", required=True, help="directory of the models, learning_curve_<kind>.json and .png")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0],
                   help="fractions of the training set to train on")
    p.add_argument("--split-file", help=SPLIT_FILE_HELP)
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_learning_curve)

    p = sub.add_parser("select", help="active learning: pick candidates by committee disagreement")
    add_settings_arguments(p)
    p.add_argument("--candidates", nargs="+", required=True,
                   help="extxyz files and/or MD trajectories traj.h5 (NN MD of the current generation)")
    p.add_argument("--stride", type=int, default=1, help="take every n-th frame of each candidate file")
    add_model_arguments(p, ("potential", "born"))
    p.add_argument("--select-per-generation", type=int,
                   help="number to select (default: train.active_learning.select_per_generation)")
    p.add_argument("--score", choices=["forces", "born", "combined"],
                   help="disagreement score to rank by (default: train.active_learning.score)")
    p.add_argument("--min-frame-gap", type=int,
                   help="minimum frame distance of two picks from one trajectory "
                   "(default: train.active_learning.min_frame_gap)")
    p.add_argument("--generation", type=int, help="generation the selection is for, stored in info (default: not stored)")
    p.add_argument("--output", required=True, help="selected structures (extxyz, labels removed)")
    p.add_argument("--report-json", help="JSON with every candidate's disagreement (default: not written)")
    p.set_defaults(func=run_select)

    p = sub.add_parser("explore", help="active learning: exploration MD with a committee (snapshots for select)")
    add_settings_arguments(p)
    p.add_argument("--seed", type=int, help="master seed of the campaign (default: the config's 'seed')")
    p.add_argument("--structures", required=True, help="starting cells (extxyz), e.g. the DFT candidates")
    add_model_arguments(p, ("potential", "born"), required=True)
    p.add_argument("--generation", type=int, required=True, help="generation k+1 the snapshots are for")
    p.add_argument("--output", required=True, help="snapshots (extxyz)")
    p.add_argument("--report-json", help="JSON: one record per trajectory, stops and reasons (default: not written)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_explore)

    p = sub.add_parser("ship", help="write a model set (committees + held-out set + metrics + manifest), e.g. models/li3po4")
    p.add_argument("--dataset", required=True, help="the labelled extxyz the models were trained on (info['split'] per row)")
    p.add_argument("--metrics", help="JSON records of 'train evaluate' on the dataset's test rows "
                   "(default: evaluate the test rows here)")
    p.add_argument("--ledger", help="ledger the dataset was exported from; its identity goes into the manifest (default: none recorded)")
    p.add_argument("--split", help="split.json written by training: the manifest then names the validation rows too "
                   "(default: info['split'] of the dataset, train and test only)")
    add_model_arguments(p, ("potential", "born", "baseline"))
    p.add_argument("--output-dir", required=True, help="model set directory (replaced as a whole)")
    p.set_defaults(func=run_ship)

    p = sub.add_parser("set-rows", help="write the ledger rows a model set was trained, validated and tested on, "
                       "as a dataset and its split file (to train more models on the set's split)")
    p.add_argument("--models", default="models/li3po4", help="model set directory")
    p.add_argument("--ledger", default="data/ledger", help="ledger the set was made from")
    p.add_argument("--output", required=True, help="extxyz file to write (ledger rows, info['split'] train or test)")
    p.add_argument("--split-json", required=True, help="split file to write (train/val/test indices into --output, "
                   "for --split-file of 'train potential/born' and --split of 'train ship')")
    p.set_defaults(func=run_set_rows)

    p = sub.add_parser("table", help="print the held-out accuracy table of a model set (Markdown)")
    p.add_argument("--models", default="models/li3po4", help="model set directory")
    p.set_defaults(func=run_table)

    p = subparsers.add_parser("predict", help="label structures with NN potential / Born-charge committees")
    p.add_argument("--structures", required=True, help="input extxyz")
    add_model_arguments(p, ("potential", "born"))
    p.add_argument("--field", type=float, nargs=3, default=[0.0, 0.0, 0.0], metavar=("EX", "EY", "EZ"),
                   help="electric field (V/Å)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="evaluation precision")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    p.add_argument("--output", required=True, help="output extxyz")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_predict)
