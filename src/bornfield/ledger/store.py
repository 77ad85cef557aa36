"""The label ledger: finished DFT jobs kept for ever under one settings identity.

Layout of a ledger directory (committed, e.g. ``data/ledger``)::

    ledger.json                  format, identity, DFT settings, pseudopotential md5s, QC thresholds
    queue.extxyz                 structures planned for labelling (see bornfield.ledger.queue)
    entries/<dft_id>/entry.extxyz   the labelled structure (DESIGN.md keys + born_charges_raw)
    entries/<dft_id>/status.json    the runner's status (attempts, wall times, QE version, failure)
    entries/<dft_id>/qe.tar.xz      QE inputs and text outputs, structure.extxyz, labels.json

The **identity** is a hash of every setting that changes a label: the numerical DFT
settings (cutoffs, k rule, thresholds; not the SCF-only/DFPT choice, which is per entry)
and the md5 of each pseudopotential file. An entry made at another identity is refused.
A pseudopotential file with other bytes (a generated one rebuilt on other hardware) counts
as the ledger's own only once ``bornfield ledger admit-pseudo`` has recomputed entries with
it within the label tolerances; ``ledger.json`` keeps that evidence under
``equivalent_pseudopotentials``.
Entries are written under a temporary name and renamed, so a killed writer leaves no
half entry; an entry, once written, is never changed or recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read, write

from bornfield import atomic
from bornfield.data.dataset import labelled_atoms, read_dataset
from bornfield.dft.inputs import DFTSettings
from bornfield.dft.pseudopotentials import PseudoRecord
from bornfield.dft.qc import QCThresholds
from bornfield.errors import ConfigError, InputFileError

LOG = logging.getLogger(__name__)

LEDGER_FORMAT = 1
#: job files archived in an entry (those present); never wavefunctions or scratch
ARCHIVED_FILES = ("structure.extxyz", "labels.json", "pw.in", "pw.out", "ph.in", "ph.out", "tensors.xml")
ARCHIVED_GLOBS = ("pw.attempt*.out", "ph.attempt*.out")


def identity_of(settings: DFTSettings, pseudos: dict[str, PseudoRecord]) -> str:
    """16-hex identity of (numerical settings without the DFPT switch, pseudopotential md5s)."""
    numerical = settings.to_dict()
    numerical.pop("born_charges")
    payload = {"settings": numerical, "pseudopotentials": {el: rec.md5 for el, rec in sorted(pseudos.items())}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def settings_for_kind(settings: DFTSettings, kind: str) -> DFTSettings:
    """The job settings of a queue ``kind`` (``scf`` or ``dfpt``) at the ledger's numerical settings."""
    if kind not in ("scf", "dfpt"):
        raise ConfigError(f"label kind must be 'scf' or 'dfpt', got {kind!r}")
    values = settings.to_dict()
    values["born_charges"] = kind == "dfpt"
    return DFTSettings(**values)


@dataclass(frozen=True)
class LedgerSpec:
    """What ``ledger.json`` fixes: the settings every entry was computed with."""

    identity: str
    settings: DFTSettings
    pseudopotentials: dict[str, PseudoRecord]
    qc: QCThresholds
    #: element -> {md5 of an admitted equivalent file: the evidence that admitted it}
    equivalents: dict[str, dict[str, dict]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON form stored in ``ledger.json``."""
        numerical = self.settings.to_dict()
        numerical.pop("born_charges")
        data = {
            "format": LEDGER_FORMAT,
            "identity": self.identity,
            "settings": numerical,
            "pseudopotentials": {el: asdict(rec) for el, rec in sorted(self.pseudopotentials.items())},
            "qc": asdict(self.qc),
        }
        if self.equivalents:
            data["equivalent_pseudopotentials"] = {el: dict(sorted(v.items())) for el, v in sorted(self.equivalents.items())}
        return data

    def accepts(self, element: str, md5: str) -> bool:
        """True if a file of ``md5`` is the ledger's pseudopotential of ``element`` or an admitted equivalent."""
        own = self.pseudopotentials.get(element)
        return own is not None and (md5 == own.md5 or md5 in self.equivalents.get(element, {}))

    def canonical(self, pseudos: dict[str, PseudoRecord]) -> dict[str, PseudoRecord]:
        """``pseudos`` with each admitted equivalent file replaced by the ledger's own record."""
        return {el: self.pseudopotentials[el] if self.accepts(el, rec.md5) else rec for el, rec in pseudos.items()}

    @classmethod
    def from_dict(cls, data: dict, source: str) -> LedgerSpec:
        """Parse ``ledger.json`` content; the stored identity must match the stored settings."""
        if data.get("format") != LEDGER_FORMAT:
            raise InputFileError(f"{source}: ledger format {data.get('format')!r}, this bornfield reads {LEDGER_FORMAT}")
        try:
            settings = DFTSettings(**data["settings"], born_charges=True)
            pseudos = {el: PseudoRecord(**rec) for el, rec in data["pseudopotentials"].items()}
            qc = QCThresholds(**data["qc"])
            equivalents = {el: dict(v) for el, v in data.get("equivalent_pseudopotentials", {}).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise InputFileError(f"{source}: malformed ledger description ({exc})") from exc
        unknown = sorted(set(equivalents) - set(pseudos))
        if unknown:
            raise InputFileError(f"{source}: equivalent_pseudopotentials for {unknown}, which the ledger has no pseudopotential for")
        identity = identity_of(settings, pseudos)
        if identity != data.get("identity"):
            raise InputFileError(f"{source}: identity {data.get('identity')} does not match its settings ({identity})")
        return cls(identity, settings, pseudos, qc, equivalents)


QUEUE_KEYS = ("label_kind", "queue_index", "family", "split", "melt_seed", "thermal_K", "perturbation", "strain", "defect")
"""Queue-row keys an entry carries (structure family, held-out split, how the structure was made)."""


class Ledger:
    """A ledger directory (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / "ledger.json"
        if not path.exists():
            raise InputFileError(f"{path} missing: not a label ledger (create one with 'bornfield ledger init')")
        self.spec = LedgerSpec.from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))

    @classmethod
    def create(cls, root: str | Path, spec: LedgerSpec) -> Ledger:
        """Write ``ledger.json`` for a new, empty ledger (refused if one exists)."""
        root = Path(root)
        path = root / "ledger.json"
        if path.exists():
            raise InputFileError(f"{path} exists: a ledger's settings are fixed once created")
        (root / "entries").mkdir(parents=True, exist_ok=True)
        _write_spec(path, spec)
        return cls(root)

    @property
    def identity(self) -> str:
        return self.spec.identity

    def identity_of_job(self, settings: DFTSettings, pseudos: dict[str, PseudoRecord]) -> str:
        """The identity of a job's settings and files, admitted equivalent files counted as the ledger's own."""
        return identity_of(settings, self.spec.canonical(pseudos))

    def admit_equivalent(self, element: str, md5: str, evidence: dict) -> None:
        """Record a pseudopotential file of ``md5`` as equivalent to the ledger's ``element`` file (rewrites ledger.json)."""
        if element not in self.spec.pseudopotentials:
            raise ConfigError(f"ledger {self.root} has no pseudopotential for {element}")
        equivalents = {el: dict(v) for el, v in self.spec.equivalents.items()}
        equivalents.setdefault(element, {})[md5] = evidence
        spec = LedgerSpec(self.spec.identity, self.spec.settings, self.spec.pseudopotentials, self.spec.qc, equivalents)
        _write_spec(self.root / "ledger.json", spec)
        self.spec = spec

    @property
    def entries_dir(self) -> Path:
        return self.root / "entries"

    def dft_ids(self) -> list[str]:
        """Ids of the finished entries, sorted."""
        if not self.entries_dir.exists():
            return []
        return sorted(p.name for p in self.entries_dir.iterdir() if (p / "status.json").exists() and not p.name.startswith("."))

    def __contains__(self, dft_id: str) -> bool:
        return (self.entries_dir / dft_id / "status.json").exists()

    def status(self, dft_id: str) -> dict:
        return json.loads((self.entries_dir / dft_id / "status.json").read_text(encoding="utf-8"))

    def labels(self, dft_id: str) -> dict:
        """The entry's ``labels.json`` (from its archive)."""
        return json.loads(self.archived_text(dft_id, "labels.json"))

    def archived_text(self, dft_id: str, name: str) -> str:
        """The text of one file of the entry's archive (``pw.out``, ``structure.extxyz``, ...)."""
        path = self.entries_dir / dft_id / "qe.tar.xz"
        if not path.exists():
            raise InputFileError(f"{path} missing: no entry {dft_id} in ledger {self.root}")
        with tarfile.open(path, "r:xz") as tar:
            try:
                member = tar.extractfile(name)
            except KeyError:
                member = None
            if member is None:
                raise InputFileError(f"{path}: archive has no {name}")
            return member.read().decode("utf-8", errors="replace")

    def check_job(self, job_dir: Path) -> dict:
        """The status of a finished job or entry directory, after checking it was made at this identity."""
        status_path = job_dir / "status.json"
        if not status_path.exists() or not ((job_dir / "labels.json").exists() or is_entry(job_dir)):
            raise InputFileError(f"{job_dir}: not a finished DFT job (status.json and labels.json expected) "
                                 "nor a ledger entry (status.json and qe.tar.xz)")
        status = json.loads(status_path.read_text(encoding="utf-8"))
        if status.get("state") not in ("completed", "failed"):
            raise InputFileError(f"{job_dir}: job state {status.get('state')!r}; only finished jobs enter a ledger")
        try:
            settings = DFTSettings(**status["settings"])
            pseudos = {el: PseudoRecord(el, rec["file"], rec["md5"], rec.get("source", ""))
                       for el, rec in status["pseudopotentials"].items()}
        except (KeyError, TypeError) as exc:
            raise InputFileError(f"{status_path}: no settings/pseudopotentials record ({exc})") from exc
        identity = self.identity_of_job(settings, pseudos)
        if identity != self.identity:
            raise ConfigError(
                f"{job_dir}: made at settings identity {identity}, ledger {self.root} holds {self.identity} "
                f"(settings {_differences(settings, pseudos, self.spec)}); refused, labels of different "
                "settings are never mixed")
        return status

    def add_job(self, job_dir: str | Path, annotations: dict | None = None) -> bool:
        """Copy a finished job into the ledger as an entry; False if it is already there.

        ``annotations`` are added to the entry's ``status.json`` (e.g. the labeller's cost
        estimate and rank count).
        """
        job_dir = Path(job_dir)
        status = {**self.check_job(job_dir), **(annotations or {})}
        dft_id = status["dft_id"]
        if dft_id in self:
            return False
        if is_entry(job_dir):
            partial = self.entries_dir / f".{dft_id}.{os.getpid()}.part"
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(job_dir, partial)
            partial.replace(self.entries_dir / dft_id)
        else:
            pack_entry(job_dir, status, self.entries_dir)
        LOG.info("ledger %s: added %s (%s)", self.root, dft_id, status["state"])
        return True

    def jobs(self):
        """(job structure, labels.json content, status) of every entry, sorted by dft_id."""
        for dft_id in self.dft_ids():
            with tarfile.open(self.entries_dir / dft_id / "qe.tar.xz", "r:xz") as tar:
                files = {name: tar.extractfile(name) for name in ("structure.extxyz", "labels.json")}
                if any(handle is None for handle in files.values()):
                    raise InputFileError(f"{self.entries_dir / dft_id}: archive lacks structure.extxyz or labels.json")
                structure = read(io.StringIO(files["structure.extxyz"].read().decode("utf-8")), format="extxyz")
                labels = json.loads(files["labels.json"].read().decode("utf-8"))
            yield structure, labels, self.status(dft_id)

    def frames(self) -> list[Atoms]:
        """Every entry with SCF labels as labelled Atoms (DESIGN.md keys), sorted by dft_id.

        Queue keys an entry lacks (``family``, ``split``, ...: entries packed before the key existed)
        are taken from the queue row of the same ``structure_id``; the queue is their source.
        """
        from bornfield.ledger.queue import read_queue

        queued = {str(a.info.get("structure_id")): a.info for a in read_queue(self.root / "queue.extxyz")}
        frames = []
        for dft_id in self.dft_ids():
            path = self.entries_dir / dft_id / "entry.extxyz"
            if path.exists():
                for atoms in read_dataset(path):
                    row = queued.get(str(atoms.info.get("structure_id")), {})
                    for key in QUEUE_KEYS:
                        if key not in atoms.info and key in row:
                            atoms.info[key] = row[key]
                    frames.append(atoms)
        return frames

    def materialise(self, dft_id: str, jobs_dir: str | Path) -> Path:
        """Unpack an entry as a finished job directory ``jobs_dir/<dft_id>`` (what the runner would leave)."""
        target = Path(jobs_dir) / dft_id
        partial = Path(jobs_dir) / f".{dft_id}.{os.getpid()}.part"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        with tarfile.open(self.entries_dir / dft_id / "qe.tar.xz", "r:xz") as tar:
            tar.extractall(partial, filter="data")
        shutil.copyfile(self.entries_dir / dft_id / "status.json", partial / "status.json")
        if target.exists():
            shutil.rmtree(target)
        partial.replace(target)
        return target


def _write_spec(path: Path, spec: LedgerSpec) -> None:
    """Write ``ledger.json`` atomically."""
    atomic.write_text(path, json.dumps(spec.to_dict(), indent=1) + "\n")


def is_entry(path: Path) -> bool:
    """True for a directory in the ledger's entry format (status.json + qe.tar.xz)."""
    return (path / "status.json").exists() and (path / "qe.tar.xz").exists()


def pack_entry(job_dir: Path, status: dict, entries_dir: Path) -> Path:
    """Write ``entries_dir/<dft_id>/`` from a finished job directory, atomically (kept if it exists)."""
    dft_id = status["dft_id"]
    target = entries_dir / dft_id
    if is_entry(target):
        return target
    structure = read(job_dir / "structure.extxyz", format="extxyz")
    labels = json.loads((job_dir / "labels.json").read_text(encoding="utf-8"))
    partial = entries_dir / f".{dft_id}.{os.getpid()}.part"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    atoms = labelled_atoms(structure, labels)
    if atoms is not None:
        for key in QUEUE_KEYS:
            if key in structure.info:
                atoms.info[key] = structure.info[key]
        if "born_charges_raw" in labels:
            atoms.arrays["born_charges_raw"] = np.asarray(labels["born_charges_raw"], dtype=float).reshape(len(atoms), 9)
        atoms.info["wall_time_s"] = float(status.get("wall_time_s", 0.0))
        write(partial / "entry.extxyz", atoms, format="extxyz")
    files = [name for name in ARCHIVED_FILES if (job_dir / name).exists()]
    for pattern in ARCHIVED_GLOBS:
        files += sorted(p.name for p in job_dir.glob(pattern))
    with tarfile.open(partial / "qe.tar.xz", "w:xz", preset=9) as tar:
        for name in files:
            data = (job_dir / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0  # reproducible archives
            tar.addfile(info, io.BytesIO(data))
    (partial / "status.json").write_text(json.dumps(status, indent=1) + "\n", encoding="utf-8")
    if target.exists():  # an unfinished copy (no status.json or archive): replaced
        shutil.rmtree(target)
    partial.replace(target)
    return target


def _differences(settings: DFTSettings, pseudos: dict[str, PseudoRecord], spec: LedgerSpec) -> str:
    mine, theirs = settings.to_dict(), spec.settings.to_dict()
    diffs = [f"{k} {mine[k]!r} vs {theirs[k]!r}" for k in mine if k != "born_charges" and mine[k] != theirs[k]]
    for el in sorted(set(pseudos) | set(spec.pseudopotentials)):
        a = pseudos.get(el)
        b = spec.pseudopotentials.get(el)
        if a is None or b is None or not spec.accepts(el, a.md5):
            diffs.append(f"{el} pseudopotential md5 {a.md5 if a else None} vs {b.md5 if b else None}")
    return "; ".join(diffs) or "same values, other identity"
