"""Shipped model sets: committed committees with the data and metrics that describe them.

A model set directory (e.g. ``models/li3po4``) holds::

    potential_<i>.pt, born_<i>.pt, born_row_<axis>_<i>.pt   model files (bornfield.models.io format)
    test.extxyz      the held-out labelled structures the metrics were measured on
    metrics.json     benchmark records of ``bornfield train evaluate`` on test.extxyz
    *_parity.png     parity plots of those records
    manifest.json    what the set is: source ledger (identity, entries, dft_ids per split),
                     file checksums (sha256), training settings per member, creation time

Reading a set checks every checksum, so a model file edited after shipping is refused.
``model_set_rows`` and ``model_set_frames`` give back the ledger rows a set was trained, validated and
tested on (``bornfield train set-rows`` writes them as a dataset and split file).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ase import Atoms
from ase.io import write

from bornfield import __version__
from bornfield.errors import InputFileError
from bornfield.models.io import file_sha256, read_model_file
from bornfield.structures.io import write_json_atomic
from bornfield.train.data import SPLIT_NAMES

MANIFEST = "manifest.json"
FORMAT = "bornfield-model-set"
KINDS = {"potential": "potential", "born": "born", "baseline": "born_row"}
#: kinds whose member 0 drives field MD (md loads potential_0 + the rest as committee, born_0):
#: shipped ordered by validation loss, best first
DRIVING_KINDS = ("potential", "born")
_MEMBER = {
    "potential": re.compile(r"potential_(\d+)\.pt$"),
    "born": re.compile(r"born_(\d+)\.pt$"),
    "baseline": re.compile(r"born_row_[xyz]_(\d+)\.pt$"),
}


@dataclass(frozen=True)
class ModelSet:
    """A checked model set: member files per kind (member order), test set, metrics, manifest."""

    root: Path
    potential: tuple[Path, ...]
    born: tuple[Path, ...]
    baseline: tuple[Path, ...]
    test_set: Path | None
    records: tuple[dict, ...]
    manifest: dict


def _member_order(path: Path, kind: str) -> int:
    match = _MEMBER[kind].search(path.name)
    if match is None:
        raise InputFileError(f"{path}: a {kind} member file must be named like {_MEMBER[kind].pattern}")
    return int(match.group(1))


def _checked_members(kind: str, paths) -> list[tuple[Path, dict]]:
    """(path, payload) of each member file of ``kind`` in model-set order: by member index, and for
    the kinds that drive MD by best validation loss (member 0 drives)."""
    if kind not in KINDS:
        raise InputFileError(f"unknown model kind '{kind}' (known: {sorted(KINDS)})")
    members = []
    for path in sorted(map(Path, paths), key=lambda p: _member_order(p, kind)):
        payload = read_model_file(path)
        if payload["kind"] != KINDS[kind]:
            raise InputFileError(f"{path}: holds a '{payload['kind']}' model, expected {KINDS[kind]}")
        members.append((path, payload))
    if kind in DRIVING_KINDS:
        members.sort(key=lambda pair: pair[1]["metadata"].get("best_monitor_loss", float("inf")))
    return members


def model_set_order(kind: str, paths) -> list[Path]:
    """Member files of ``kind`` in the order :func:`write_model_set` writes them (member 0 first)."""
    return [path for path, _ in _checked_members(kind, paths)]


def write_model_set(outdir: str | Path, models: dict[str, list[str | Path]], test_frames: list,
                    records: list[dict], source: dict, figures: list[str | Path] = ()) -> Path:
    """Write a model set atomically (a complete new directory replaces the old one).

    Potential and Born members are written as ``<kind>_<i>.pt`` in order of their best
    validation loss (``trained_as`` keeps the training name): member 0 drives the MD.

    Args:
        outdir: target directory.
        models: kind (potential, born, baseline) -> member files.
        test_frames: held-out labelled Atoms the records were measured on (may be empty).
        records: benchmark records of those frames (``bornfield train evaluate`` output).
        source: provenance of the training data (ledger identity, entries, dft_ids per split, ...).
        figures: files copied into the set as they are (e.g. parity plots of the records).
    """
    outdir = Path(outdir)
    unknown = sorted(set(models) - set(KINDS))
    if unknown:
        raise InputFileError(f"unknown model kinds {unknown} (known: {sorted(KINDS)})")
    checked = {kind: _checked_members(kind, paths) for kind, paths in models.items()}
    partial = outdir.with_name(f".{outdir.name}.part")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    files, members = {}, {}
    for kind, pairs in checked.items():
        entries = []
        for rank, (path, payload) in enumerate(pairs):
            name = f"{kind}_{rank}.pt" if kind in DRIVING_KINDS else path.name
            shutil.copyfile(path, partial / name)
            files[name] = file_sha256(partial / name)
            meta = payload["metadata"]
            entries.append({
                "file": name,
                "trained_as": path.name,
                "species": list(payload["species"]),
                "cutoff_A": float(payload["cutoff"]),
                "hyperparameters": payload["hyperparameters"],
                "training": {k: meta.get(k) for k in ("seed", "best_epoch", "best_monitor_loss", "training_data_hash",
                                                       "train_settings", "split") if k in meta},
            })
        members[kind] = entries
    if test_frames:
        write(partial / "test.extxyz", test_frames, format="extxyz")
        files["test.extxyz"] = file_sha256(partial / "test.extxyz")
    for figure in map(Path, figures):
        shutil.copyfile(figure, partial / figure.name)
        files[figure.name] = file_sha256(partial / figure.name)
    write_json_atomic(partial / "metrics.json", records)
    files["metrics.json"] = file_sha256(partial / "metrics.json")
    manifest = {
        "format": FORMAT,
        "name": outdir.name,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "bornfield_version": __version__,
        "source": source,
        "members": members,
        "n_test_structures": len(test_frames),
        "files": files,
    }
    write_json_atomic(partial / MANIFEST, manifest)
    if outdir.exists():
        old = outdir.with_name(f".{outdir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        outdir.replace(old)
        partial.replace(outdir)
        shutil.rmtree(old)
    else:
        partial.replace(outdir)
    return outdir


def read_model_set(root: str | Path) -> ModelSet:
    """Open a model set, checking its manifest and every file's checksum."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise InputFileError(f"{path} missing: {root} is not a model set (make one with 'make models')")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise InputFileError(f"{path}: not a model-set manifest (format {manifest.get('format')!r}, expected {FORMAT!r})")
    for name, digest in manifest["files"].items():
        if not (root / name).is_file():
            raise InputFileError(f"{root / name} listed in {path} is missing")
        if file_sha256(root / name) != digest:
            raise InputFileError(f"{root / name}: checksum differs from {path} (edited after shipping?)")
    kinds = {kind: tuple(root / m["file"] for m in manifest["members"].get(kind, [])) for kind in KINDS}
    test_set = root / "test.extxyz" if "test.extxyz" in manifest["files"] else None
    records = tuple(json.loads((root / "metrics.json").read_text(encoding="utf-8")))
    return ModelSet(root, kinds["potential"], kinds["born"], kinds["baseline"], test_set, records, manifest)


def model_set_rows(ledger_dir: str | Path, model_set_dir: str | Path) -> dict[str, list[Atoms]]:
    """The ledger rows of a model set's split: ``{"train": [...], "val": [...], "test": [...]}``.

    Each list in ledger order (by ``dft_id``); see :func:`model_set_frames` for the rows and errors.
    """
    frames, split = model_set_frames(ledger_dir, model_set_dir)
    return {name: [frames[i] for i in indices] for name, indices in split.items()}


def model_set_frames(ledger_dir: str | Path, model_set_dir: str | Path) -> tuple[list[Atoms], dict[str, list[int]]]:
    """The ledger rows a model set was trained, validated and tested on, and its split over them.

    The split is the manifest's ``source.dft_ids``; the rows are the labelled Atoms of
    ``Ledger.frames()`` (DESIGN.md info/arrays keys, ``info["split"]`` train or test) in ledger
    order (by ``dft_id``), and the split maps "train", "val", "test" to 0-based indices into them.
    Ledger rows the manifest does not name (labelled later) are left out.

    Raises:
        InputFileError: the set is unreadable (see ``read_model_set``), its manifest lacks the
            dft_id lists or names one dft_id twice, the ledger's settings identity differs from the
            manifest's ``source.ledger_identity`` (when recorded), or the ledger lacks rows it names.
    """
    from bornfield.ledger.store import Ledger

    model_set = read_model_set(model_set_dir)
    manifest = model_set.root / MANIFEST
    source = model_set.manifest.get("source") or {}
    ids = source.get("dft_ids")
    if not isinstance(ids, dict) or not all(isinstance(ids.get(name), list) for name in SPLIT_NAMES):
        raise InputFileError(f"{manifest}: source.dft_ids must hold lists {list(SPLIT_NAMES)} of dft_ids (got {ids!r})")
    split_of: dict[str, str] = {}
    for name in SPLIT_NAMES:
        for dft_id in map(str, ids[name]):
            if dft_id in split_of:
                raise InputFileError(f"{manifest}: dft_id {dft_id} is listed in source.dft_ids.{split_of[dft_id]} "
                                     f"and source.dft_ids.{name}")
            split_of[dft_id] = name
    ledger = Ledger(ledger_dir)
    recorded = source.get("ledger_identity")
    if recorded is not None and recorded != ledger.identity:
        raise InputFileError(f"{manifest}: the set was made from a ledger of settings identity {recorded}, "
                             f"ledger {ledger.root} has identity {ledger.identity} (other DFT settings)")
    frames: list[Atoms] = []
    split: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    found: set[str] = set()
    for atoms in ledger.frames():
        dft_id = str(atoms.info.get("dft_id"))
        if dft_id in split_of:
            if dft_id in found:
                raise InputFileError(f"ledger {ledger.root}: dft_id {dft_id} (named by {manifest}) has two rows")
            found.add(dft_id)
            split[split_of[dft_id]].append(len(frames))
            frames.append(atoms)
    missing = {name: [d for d in map(str, ids[name]) if d not in found] for name in SPLIT_NAMES}
    if any(missing.values()):
        listed = "; ".join(f"{name}: {', '.join(d)}" for name, d in missing.items() if d)
        raise InputFileError(f"{manifest}: ledger {ledger.root} has no labelled row for {sum(map(len, missing.values()))} "
                             f"dft_id(s) of source.dft_ids ({listed})")
    return frames, split


def _metric(records, system: str, metric: str):
    values = [r["value"] for r in records if r["system"] == system and r["metric"] == metric]
    return values[0] if values else None


def accuracy_table(model_set: ModelSet) -> str:
    """Markdown accuracy table of a model set (held-out metrics, units in the header)."""
    src = model_set.manifest["source"]
    rec = model_set.records
    lines = [
        f"Model set `{model_set.root}`: ledger `{src.get('ledger_identity', '?')}`, "
        f"{src.get('n_entries', '?')} entries ({src.get('n_train', '?')} train, {src.get('n_val', '?')} validation, "
        f"{src.get('n_test', '?')} held out); committees: {len(model_set.potential)} potentials, "
        f"{len(model_set.born)} Born models.",
        "",
    ]
    if not rec:
        lines.append("No held-out structure is labelled yet: no accuracy to report.")
        return "\n".join(lines) + "\n"
    rows = [
        ("Born RMSE, all 9 components (e)", "bornfield-born", "bec_rmse_e"),
        ("Born MAE, all 9 components (e)", "bornfield-born", "bec_mae_e"),
        ("Born RMSE, diagonal (e)", "bornfield-born", "bec_rmse_diag_e"),
        ("Born RMSE, off-diagonal (e)", "bornfield-born", "bec_rmse_offdiag_e"),
        ("Born RMSE, field-axis row x (e; paper's row model 0.0376 on its data)", "bornfield-born", "bec_row_x_rmse_e"),
        ("Paper-style row baseline RMSE, row x (e)", "paper-row-baseline", "bec_row_x_rmse_e"),
        ("Born RMSE of member 0 alone, which field MD uses (e)", "bornfield-born-member-0", "bec_rmse_e"),
        ("Force RMSE (meV/Å)", "bornfield-potential", "force_rmse_meV_per_A"),
        ("Force RMSE of member 0 alone, which drives field MD (meV/Å)", "bornfield-potential-member-0",
         "force_rmse_meV_per_A"),
        ("Energy RMSE (meV/atom)", "bornfield-potential", "energy_rmse_meV_per_atom"),
        ("Energy mean error, predicted - DFT (meV/atom)", "bornfield-potential", "energy_mean_error_meV_per_atom"),
        ("Energy RMSE of member 0 alone (meV/atom)", "bornfield-potential-member-0", "energy_rmse_meV_per_atom"),
        ("Committee calibration: force RMS error / RMS spread (1 = calibrated)", "bornfield-potential",
         "force_error_spread_ratio"),
        ("Committee calibration: Spearman of per-atom force error and spread", "bornfield-potential",
         "force_error_spread_spearman"),
    ]
    species = sorted({r["metric"].removeprefix("bec_rmse_e_") for r in rec
                      if r["system"] == "bornfield-born" and re.fullmatch(r"bec_rmse_e_[A-Z][a-z]?", r["metric"])})
    rows += [(f"Born RMSE, {s} (e)", "bornfield-born", f"bec_rmse_e_{s}") for s in species]
    lines += ["| held-out metric | value |", "|---|---|"]
    for label, system, metric in rows:
        value = _metric(rec, system, metric)
        if value is not None:
            lines.append(f"| {label} | {value:.4g} |")
    n = {r["system"]: r["n_structures"] for r in rec if "-member-" not in r["system"]}
    lines += ["", "Held-out structures: " + ", ".join(f"{k} {v}" for k, v in sorted(n.items())) + "."]
    return "\n".join(lines) + "\n"
