"""Dataset assembly: DFT job labels -> one extxyz per campaign generation + report.

extxyz keys (DESIGN.md, binding): ``info["energy"]`` (eV), ``info["stress"]`` (ASE
Voigt, eV/Å³), ``info["epsilon_inf"]`` (9 floats, row-major), ``info["config_type"]``,
``info["dft_id"]``; ``arrays["forces"]`` (eV/Å), ``arrays["born_charges"]`` (9 floats
per atom, row-major, α (field) major, ASR-corrected, e). A structure whose DFPT failed
or was rejected keeps its SCF labels and has *no* ``born_charges`` key — never zeros.
Provenance per structure: ``info["qe_version"]``, ``info["settings_hash"]``,
``info["pseudo_md5"]`` (``El:md5`` joined by ``;``), ``info["asr_residual_max_e"]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress
from ase.io import read, write
from ase.stress import full_3x3_to_voigt_6_stress

from bornfield.atomic import atomic_path
from bornfield.errors import InputFileError

LOG = logging.getLogger(__name__)


def settings_hash(settings: dict) -> str:
    """12-hex hash of a job's numerical settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class AssemblyReport:
    """What went into a dataset and what did not."""

    n_structures: int = 0
    n_with_born_charges: int = 0
    per_config_type: dict = field(default_factory=dict)
    failed: list = field(default_factory=list)  # no labels at all: {dft_id, stage, class, reason}
    rejected_bec: list = field(default_factory=list)  # SCF kept, BEC dropped: {dft_id, reasons}
    failure_counts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {
            "n_structures": self.n_structures,
            "n_with_born_charges": self.n_with_born_charges,
            "per_config_type": self.per_config_type,
            "failure_counts": self.failure_counts,
            "failed": self.failed,
            "rejected_bec": self.rejected_bec,
        }


def labelled_atoms(structure: Atoms, labels: dict) -> Atoms | None:
    """Atoms with the DESIGN.md label keys from one job's ``labels.json``; None without SCF labels."""
    if "energy" not in labels or "forces" not in labels:
        return None
    atoms = Atoms(numbers=structure.numbers, positions=structure.positions, cell=structure.cell, pbc=structure.pbc)
    n = len(atoms)
    forces = np.asarray(labels["forces"], dtype=float)
    if forces.shape != (n, 3):
        raise InputFileError(f"labels of {labels.get('dft_id')}: forces shape {forces.shape}, expected ({n}, 3)")
    for key in ("config_type", "structure_id", "seed", "source", "charge", "dft_generation"):
        if key in structure.info:
            atoms.info[key] = structure.info[key]
    atoms.info.setdefault("config_type", "unknown")
    atoms.info["dft_id"] = labels["dft_id"]
    atoms.info["energy"] = float(labels["energy"])
    if labels.get("stress") is not None:
        # ASE's extxyz reads info["stress"] only as a full 3x3 (9 numbers): store it so
        stress = np.asarray(labels["stress"], dtype=float)
        atoms.info["stress"] = voigt_6_to_full_3x3_stress(stress) if stress.shape == (6,) else stress.reshape(3, 3)
    atoms.arrays["forces"] = forces
    if "born_charges" in labels:
        z = np.asarray(labels["born_charges"], dtype=float)
        if z.shape != (n, 3, 3):
            raise InputFileError(f"labels of {labels['dft_id']}: born_charges shape {z.shape}, expected ({n}, 3, 3)")
        atoms.arrays["born_charges"] = z.reshape(n, 9)
        atoms.info["epsilon_inf"] = np.asarray(labels["epsilon_inf"], dtype=float).reshape(9)
        atoms.info["asr_residual_max_e"] = float(np.abs(np.asarray(labels["asr_residual"])).max())
    atoms.info["qe_version"] = str(labels.get("qe_version"))
    atoms.info["settings_hash"] = settings_hash(labels.get("settings", {}))
    atoms.info["pseudo_md5"] = ";".join(f"{el}:{rec['md5']}" for el, rec in sorted(labels.get("pseudopotentials", {}).items()))
    return atoms


def assemble(job_dirs: list[Path]) -> tuple[list[Atoms], AssemblyReport]:
    """Read ``structure.extxyz`` + ``labels.json`` of each job directory (in order)."""
    def jobs():
        for job_dir in job_dirs:
            labels_path = job_dir / "labels.json"
            if not labels_path.exists():
                raise InputFileError(f"{labels_path} missing: the DFT job has not finished")
            labels = json.loads(labels_path.read_text(encoding="utf-8"))
            yield read(job_dir / "structure.extxyz", format="extxyz"), labels

    return assemble_labels(jobs())


def assemble_labels(jobs: Iterable[tuple[Atoms, dict]]) -> tuple[list[Atoms], AssemblyReport]:
    """Labelled frames and the report from (job structure, ``labels.json`` content) pairs, in order."""
    frames: list[Atoms] = []
    report = AssemblyReport()
    counts: dict[str, Counter] = defaultdict(Counter)
    failure_classes: Counter = Counter()
    seen: set[str] = set()
    for structure, labels in jobs:
        if labels["dft_id"] in seen:
            continue
        seen.add(labels["dft_id"])
        config_type = structure.info.get("config_type", "unknown")
        atoms = labelled_atoms(structure, labels)
        if atoms is None:
            failure = labels.get("failure") or {}
            report.failed.append({"dft_id": labels["dft_id"], "config_type": config_type, **failure, "qc": labels.get("qc")})
            failure_classes[failure.get("class", "qc_rejected_scf")] += 1
            counts[config_type]["failed"] += 1
            continue
        frames.append(atoms)
        counts[config_type]["structures"] += 1
        if "born_charges" in atoms.arrays:
            counts[config_type]["born_charges"] += 1
        elif labels.get("settings", {}).get("born_charges", True) or "born_charges_raw" in labels:
            reasons = list(labels.get("qc", {}).get("reasons", []))
            if labels.get("failure"):
                reasons.insert(0, labels["failure"].get("reason"))
                failure_classes[labels["failure"].get("class", "ph_failed")] += 1
            else:
                failure_classes["bec_rejected_by_qc"] += 1
            report.rejected_bec.append({"dft_id": labels["dft_id"], "config_type": config_type, "reasons": reasons})
    report.n_structures = len(frames)
    report.n_with_born_charges = sum("born_charges" in a.arrays for a in frames)
    report.per_config_type = {k: dict(v) for k, v in sorted(counts.items())}
    report.failure_counts = dict(failure_classes)
    return frames, report


def label_statistics(frames: list[Atoms]) -> dict:
    """Distributions for the report: energies/atom, |F|, and Born-charge diagonals per species."""
    stats: dict = {}
    if not frames:
        return stats
    e_per_atom = np.array([a.info["energy"] / len(a) for a in frames])
    forces = np.concatenate([a.arrays["forces"].ravel() for a in frames])
    stats["energy_per_atom_eV"] = {"min": float(e_per_atom.min()), "max": float(e_per_atom.max()), "mean": float(e_per_atom.mean())}
    stats["force_component_eV_per_A"] = {"rms": float(np.sqrt(np.mean(forces**2))), "max_abs": float(np.abs(forces).max())}
    per_species: dict[str, list] = defaultdict(list)
    for atoms in frames:
        if "born_charges" not in atoms.arrays:
            continue
        z = atoms.arrays["born_charges"].reshape(-1, 3, 3)
        for symbol, tensor in zip(atoms.get_chemical_symbols(), z, strict=True):
            per_species[symbol].append(tensor)
    stats["born_charges"] = {}
    for symbol, tensors in sorted(per_species.items()):
        arr = np.array(tensors)
        diag = np.einsum("kii->ki", arr)
        off = arr[:, ~np.eye(3, dtype=bool)]
        stats["born_charges"][symbol] = {
            "n_atoms": len(arr),
            "trace_over_3_mean": float(diag.mean()),
            "diag_min": float(diag.min()),
            "diag_max": float(diag.max()),
            "offdiag_max_abs": float(np.abs(off).max()),
        }
    eps = [np.asarray(a.info["epsilon_inf"]).reshape(3, 3) for a in frames if "epsilon_inf" in a.info]
    if eps:
        diag = np.array([np.diag(e) for e in eps])
        stats["epsilon_inf_diag"] = {"min": float(diag.min()), "max": float(diag.max()), "mean": float(diag.mean())}
    return stats


def write_dataset(frames: list[Atoms], path: str | Path) -> None:
    """Write frames to extxyz atomically (temp file, then rename)."""
    with atomic_path(path) as tmp:
        write(tmp, frames, format="extxyz", write_results=False)


def read_dataset(path: str | Path) -> list[Atoms]:
    """Read a dataset extxyz with the design keys in place.

    ``info["energy"]`` (eV), ``arrays["forces"]`` (eV/Å), ``info["stress"]`` (ASE Voigt,
    eV/Å³), Born charges as (N, 9) in ``arrays`` — use
    ``atoms.arrays["born_charges"].reshape(-1, 3, 3)`` for ``Z[atom, α, β]``.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"dataset not found: {path}")
    frames = read(path, index=":", format="extxyz")
    for atoms in frames:
        # ASE's extxyz reader moves energy/forces/stress into a SinglePointCalculator;
        # put them back where the design keys say they live
        if atoms.calc is not None:
            results = atoms.calc.results
            if "energy" in results:
                atoms.info["energy"] = float(results["energy"])
            if "forces" in results:
                atoms.arrays["forces"] = np.asarray(results["forces"], dtype=float)
            if "stress" in results:
                atoms.info["stress"] = np.asarray(results["stress"], dtype=float)
            atoms.calc = None
        stress = atoms.info.get("stress")
        if stress is not None and np.shape(stress) in ((3, 3), (9,)):
            atoms.info["stress"] = full_3x3_to_voigt_6_stress(np.reshape(stress, (3, 3)))
    return frames


def plot_report(frames: list[Atoms], report: AssemblyReport, path: str | Path) -> None:
    """Figure: structures per config_type, energy/atom, |F| and BEC diagonal histograms per species."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bornfield.plots.style import save_figure

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    types = sorted(report.per_config_type)
    n_struct = [report.per_config_type[t].get("structures", 0) for t in types]
    n_bec = [report.per_config_type[t].get("born_charges", 0) for t in types]
    n_fail = [report.per_config_type[t].get("failed", 0) for t in types]
    x = np.arange(len(types))
    axes[0].bar(x - 0.25, n_struct, 0.25, label="SCF labels")
    axes[0].bar(x, n_bec, 0.25, label="+ Born charges")
    axes[0].bar(x + 0.25, n_fail, 0.25, label="failed")
    axes[0].set_xticks(x, types, rotation=30, ha="right")
    axes[0].set_ylabel("structures")
    axes[0].legend(fontsize=7)
    if frames:
        axes[1].hist([a.info["energy"] / len(a) for a in frames], bins=20)
        axes[1].set_xlabel("energy per atom (eV)")
        axes[2].hist(np.concatenate([np.linalg.norm(a.arrays["forces"], axis=1) for a in frames]), bins=30)
        axes[2].set_xlabel("|F| (eV/Å)")
        by_species: dict[str, list] = defaultdict(list)
        for atoms in frames:
            if "born_charges" in atoms.arrays:
                z = atoms.arrays["born_charges"].reshape(-1, 3, 3)
                for symbol, tensor in zip(atoms.get_chemical_symbols(), z, strict=True):
                    by_species[symbol].extend(np.diag(tensor))
        for symbol, values in sorted(by_species.items()):
            axes[3].hist(values, bins=30, alpha=0.6, label=symbol)
        axes[3].set_xlabel("Born charge diagonal Z_αα (e)")
        if by_species:
            axes[3].legend()
    fig.suptitle(f"dataset: {report.n_structures} structures, {report.n_with_born_charges} with Born charges, {len(report.failed)} failed")
    fig.tight_layout()
    save_figure(fig, Path(path).with_suffix(""), formats=("png",), dpi=110)
