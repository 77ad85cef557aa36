"""Finite-field checks of ledger entries: pw.x at E = 0, +E, −E beside a DFPT entry.

For a DFPT entry (its structure, the ledger's settings and pseudopotentials) three pw.x SCF
runs with a homogeneous Berry-phase field (bornfield.dft.efield) are run by the DFT runner
(same resume, retry and never-recompute rules as the labeller) in a work directory; when
all three converged they are stored, atomically, as::

    <ledger>/efield/<dft_id>_<axis>_<field>[_k<factor>]/
        status.json   request, k mesh, ranks, wall times, estimate, settings, runner status per run
        forces.json   field (V/Å), energy (eV) and forces (eV/Å) of the runs zero, plus, minus
        qe.tar.xz     <run>/pw.in, pw.out (+ failed attempts), status.json, labels.json

These results are never training data (``Ledger.frames`` reads ``entries/`` only), are never
recomputed (a second run is refused), and a failed or unconverged run stores nothing.
:func:`efield_report` compares them with the entries' DFPT Born charges.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import re
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read

from bornfield import atomic
from bornfield.dft.efield import (
    AXES, NBERRYCYC, RY_AU_FIELD_V_PER_A, efield_variant, field_response, field_vector, response_metrics,
    species_metrics, string_index, zener_drop_eV,
)
from bornfield.dft.inputs import kpoint_mesh
from bornfield.dft.parsers import read_berry_field, read_program_times
from bornfield.dft.runner import DFTJob, RunnerOptions, launch_prefix
from bornfield.errors import BornfieldError, ConfigError, InputFileError
from bornfield.ledger.labeller import JobClaim, provision_checked
from bornfield.ledger.store import Ledger, settings_for_kind

LOG = logging.getLogger(__name__)

EFIELD_DIR = "efield"
RESULT_FORMAT = 1
#: the three runs: name, sign of the field
RUNS = (("zero", 0.0), ("plus", 1.0), ("minus", -1.0))
#: core-seconds per k point of a lelfield pw.x run (nberrycyc 3) over those of the plain SCF
#: of the same cell, used until the ledger holds finite-field runs of its own (source:
#: tests/data/qe/efield_beta, docs/decisions.md)
LELFIELD_COST_RATIO = 2.9
#: warn when the potential drop across the k-mesh supercell exceeds this share of the gap
ZENER_WARN_FRACTION = 0.5
#: PBE gap of beta-Li3PO4 (eV, LI3PO4_FACTS.md): the scale of the Zener warning
GAP_EV = 5.9
_ARCHIVED = ("structure.extxyz", "pw.in", "pw.out", "status.json", "labels.json")


class FiniteFieldFailed(BornfieldError):
    """A finite-field pw.x run did not give converged forces: nothing enters the ledger."""


@dataclass(frozen=True)
class EfieldRequest:
    """One finite-field check: entry ``dft_id``, field ``field_V_per_A`` (> 0) along ``axis``,
    k mesh multiplied by ``k_factor`` along the reciprocal vector of that axis."""

    dft_id: str
    axis: str = "z"
    field_V_per_A: float = 0.1
    k_factor: int = 1

    def __post_init__(self) -> None:
        if self.axis not in AXES:
            raise ConfigError(f"--axis must be one of {AXES}, got {self.axis!r}")
        if not 0.0 < self.field_V_per_A <= 1.0:
            raise ConfigError(f"--field-V-per-A must be in (0, 1] V/Å (linear-response range of the MD), got {self.field_V_per_A!r}")
        if int(self.k_factor) != self.k_factor or self.k_factor < 1:
            raise ConfigError(f"--field-k-factor must be an integer >= 1, got {self.k_factor!r}")
        if not re.fullmatch(r"[0-9a-f]{16}", self.dft_id):
            raise ConfigError(f"--dft-id must be 16 hex digits (an entry of the ledger), got {self.dft_id!r}")

    @property
    def name(self) -> str:
        """Directory name under ``<ledger>/efield``."""
        suffix = f"_k{int(self.k_factor)}" if self.k_factor > 1 else ""
        return f"{self.dft_id}_{self.axis}_{self.field_V_per_A:g}{suffix}"


def dfpt_entry(ledger: Ledger, dft_id: str) -> tuple[Atoms, dict, dict]:
    """(job structure, labels, status) of a DFPT entry with accepted Born charges; refuse anything else."""
    entry = ledger.entries_dir / dft_id
    if dft_id not in ledger:
        raise InputFileError(f"{entry}: no entry {dft_id} in ledger {ledger.root} ({len(ledger.dft_ids())} entries)")
    status = ledger.check_job(entry)  # ConfigError for an entry made at other settings
    if not status["settings"].get("born_charges"):
        raise ConfigError(f"{entry}: an SCF entry (settings.born_charges false); the finite-field check "
                          "compares with DFPT Born charges, so it needs a DFPT entry")
    labels = ledger.labels(dft_id)
    if "born_charges" not in labels or "forces" not in labels:
        reasons = labels.get("qc", {}).get("reasons") or [str(labels.get("failure"))]
        raise ConfigError(f"{entry}: no accepted Born charges/forces ({'; '.join(reasons)}); nothing to check against")
    structure = read(io.StringIO(ledger.archived_text(dft_id, "structure.extxyz")), format="extxyz")
    return structure, labels, status


def results_dir(ledger: Ledger) -> Path:
    return ledger.root / EFIELD_DIR


def _pw_core_s_per_k(text: str, ranks: int, where: Path) -> float:
    """Core-seconds per k point of one pw.x output: its CPU time (not wall, which a shared machine
    inflates) times the ranks, over the k points it ran."""
    times = read_program_times(text)
    match = re.search(r"number of k points=\s*(\d+)", text)
    if times is None or match is None or times[0] <= 0:
        raise InputFileError(f"{where}: no pw.x CPU time or k-point count to scale an estimate")
    return times[0] * max(int(ranks or 1), 1) / int(match.group(1))


def _entry_pw_core_s_per_k(ledger: Ledger, dft_id: str, status: dict) -> float:
    """Core-seconds per irreducible k point of the entry's pw.x SCF."""
    return _pw_core_s_per_k(ledger.archived_text(dft_id, "pw.out"), status.get("ranks"),
                            ledger.entries_dir / dft_id / "qe.tar.xz")


def _measured_ratio(ledger: Ledger) -> float | None:
    """Median over stored finite-field runs of (core-s per k point) / (entry pw.x core-s per k point)."""
    ratios = []
    for path in _result_dirs(ledger):
        status = json.loads((path / "status.json").read_text(encoding="utf-8"))
        entry_status = json.loads((ledger.entries_dir / status["dft_id"] / "status.json").read_text(encoding="utf-8"))
        entry_per_k = _entry_pw_core_s_per_k(ledger, status["dft_id"], entry_status)
        with tarfile.open(path / "qe.tar.xz", "r:xz") as tar:
            for tag, _ in RUNS:
                text = tar.extractfile(f"{tag}/pw.out").read().decode("utf-8", errors="replace")
                ratios.append(_pw_core_s_per_k(text, status["ranks"], path / "qe.tar.xz" / tag) / entry_per_k)
    return float(np.median(ratios)) if ratios else None


def estimate(ledger: Ledger, request: EfieldRequest, ranks: int) -> dict:
    """Wall-time estimate of the three runs: the entry's pw.x CPU core-seconds per k point,
    times the finite-field mesh (full, no symmetry), times the lelfield cost ratio (measured on
    stored finite-field runs when there are some, else :data:`LELFIELD_COST_RATIO`)."""
    structure, _, status = dfpt_entry(ledger, request.dft_id)
    per_k = _entry_pw_core_s_per_k(ledger, request.dft_id, status)
    kpts = _kpoints(structure, ledger, request)
    measured = _measured_ratio(ledger)
    ratio = measured if measured is not None else LELFIELD_COST_RATIO
    per_run = per_k * int(np.prod(kpts)) * ratio
    return {
        "entry_pw_core_s_per_k": per_k, "kpoints": list(kpts), "cost_ratio": round(ratio, 3),
        "cost_ratio_source": "measured finite-field runs of this ledger" if measured is not None else "LELFIELD_COST_RATIO",
        "core_s_per_run": round(per_run, 1), "core_s": round(3 * per_run, 1), "wall_s": round(3 * per_run / ranks, 1),
        "ranks": ranks, "entry_wall_time_s": status.get("wall_time_s"),
    }


def _kpoints(structure: Atoms, ledger: Ledger, request: EfieldRequest) -> tuple[int, int, int]:
    mesh = list(kpoint_mesh(structure, ledger.spec.settings.kpoint_density_per_inv_A))
    mesh[string_index(structure, request.axis)] *= int(request.k_factor)
    return tuple(mesh)


def run_efield(ledger_dir: str | Path, request: EfieldRequest, ranks: int = 1, launcher: str = "/usr/bin/mpirun",
               work_dir: str | Path = ".label-work", max_seconds: float | None = None, clock=time.monotonic) -> dict:
    """Run (or resume) the three finite-field runs of ``request`` and store them; return the status."""
    if ranks < 1:
        raise ConfigError(f"--ranks must be >= 1, got {ranks}")
    ledger = Ledger(ledger_dir)
    target = results_dir(ledger) / request.name
    if (target / "status.json").exists():
        raise ConfigError(f"{target} exists: finite-field results are never recomputed "
                          "(remove the directory deliberately to run it again)")
    structure, _, entry_status = dfpt_entry(ledger, request.dft_id)
    plan = estimate(ledger, request, ranks)
    kpts = tuple(plan["kpoints"])
    field = field_vector(request.axis, request.field_V_per_A)
    drop = zener_drop_eV(structure, field, kpts)
    LOG.info("efield %s: %d atoms (%s), E = %g V/Å along %s (efield_cart %.8f Ry a.u.), k %s, estimated %.0f min "
             "(%.2f core-h) for 3 pw.x runs at %d rank(s); entry DFPT took %.0f min",
             request.name, len(structure), structure.info.get("config_type"), request.field_V_per_A, request.axis,
             request.field_V_per_A / RY_AU_FIELD_V_PER_A, "x".join(map(str, kpts)), plan["wall_s"] / 60,
             plan["core_s"] / 3600, ranks, entry_status.get("wall_time_s", 0.0) / 60)
    if drop > ZENER_WARN_FRACTION * GAP_EV:
        LOG.warning("efield %s: potential drop over the k-mesh supercell %.2f eV is above %.0f %% of the gap "
                    "(%.1f eV): Zener tunnelling may spoil the Berry-phase field", request.name, drop,
                    100 * ZENER_WARN_FRACTION, GAP_EV)
    work = Path(work_dir)
    pseudo_dir = work / "pseudo"
    provision_checked(ledger, pseudo_dir)
    claim = JobClaim(work / "locks", f"efield_{request.name}")
    if not claim.held:
        raise ConfigError(f"{work / 'locks'}: another process runs {request.name}")
    jobs_dir = work / EFIELD_DIR / request.name
    settings = settings_for_kind(ledger.spec.settings, "scf")
    options = RunnerOptions.defaults(launcher=launch_prefix(launcher, ranks), max_seconds=max_seconds)
    start = clock()
    jobs = {}
    try:
        for index, (tag, sign) in enumerate(RUNS, start=1):
            variant = efield_variant(structure, sign * field, request.axis, request.k_factor, NBERRYCYC)
            job = DFTJob(structure, settings, ledger.spec.pseudopotentials, pseudo_dir, jobs_dir, options, ledger.spec.qc, variant)
            LOG.info("efield %s: run %d/3 (%s, E = %+g V/Å) in %s", request.name, index, tag, sign * request.field_V_per_A, job.dir)
            labels = job.run()
            _check_run(job, labels, sign * field, tag)
            jobs[tag] = job
            LOG.info("efield %s: run %d/3 (%s) done, %.1f min of pw.x; %.1f min since start, about %.0f min to go",
                     request.name, index, tag, job.status()["wall_time_s"] / 60, (clock() - start) / 60,
                     (len(RUNS) - index) * plan["core_s_per_run"] / ranks / 60)
    finally:
        claim.release()
    status = _store(ledger, request, structure, jobs, ranks, options.launcher, plan, drop)
    shutil.rmtree(jobs_dir, ignore_errors=True)
    LOG.info("efield %s: stored in %s (%.1f min of pw.x at %d rank(s))", request.name, target,
             status["wall_time_s"] / 60, ranks)
    return status


def _check_run(job: DFTJob, labels: dict, field: np.ndarray, tag: str) -> None:
    """Refuse a run without converged forces, or whose output shows another field than asked."""
    if labels.get("state") != "completed" or "forces" not in labels:
        why = labels.get("failure") or labels.get("qc", {}).get("reasons")
        raise FiniteFieldFailed(f"{job.dir}: finite-field pw.x run '{tag}' gave no converged forces ({why}); "
                                "nothing was stored in the ledger (the job stays failed; remove its directory to retry)")
    printed = read_berry_field(job.dir / "pw.out")
    expected = field / RY_AU_FIELD_V_PER_A
    if printed is None or not np.allclose(printed, expected, rtol=1e-6, atol=1e-9):
        raise FiniteFieldFailed(f"{job.dir / 'pw.out'}: pw.x printed the Berry-phase field {printed} Ry a.u., "
                                f"the run '{tag}' asked for {expected}; nothing was stored")


def _store(ledger: Ledger, request: EfieldRequest, structure: Atoms, jobs: dict[str, DFTJob], ranks: int,
           launcher: str, plan: dict, drop: float) -> dict:
    """Write ``<ledger>/efield/<name>/`` from the finished runs, atomically; return its status."""
    statuses = {tag: job.status() for tag, job in jobs.items()}
    labels = {tag: json.loads(job.labels_path.read_text(encoding="utf-8")) for tag, job in jobs.items()}
    first = statuses["zero"]
    wall = sum(s["wall_time_s"] for s in statuses.values())
    status = {
        "format": RESULT_FORMAT, "kind": "efield", "name": request.name, "dft_id": request.dft_id,
        "axis": request.axis, "field_V_per_A": request.field_V_per_A,
        "efield_cart_Ry_au": request.field_V_per_A / RY_AU_FIELD_V_PER_A, "k_factor": int(request.k_factor),
        "kpoints": first["kpoints"], "string_index": string_index(structure, request.axis), "nberrycyc": NBERRYCYC,
        "zener_drop_eV": round(drop, 4), "ranks": ranks, "launcher": launcher,
        "wall_time_s": round(wall, 2), "core_time_s": round(wall * ranks, 2), "estimate": plan,
        "identity": ledger.identity, "settings": first["settings"], "pseudopotentials": first["pseudopotentials"],
        "qe_version": first.get("qe_version"), "date": dt.date.today().isoformat(),
        "runs": {tag: {"job_id": s["dft_id"], "wall_time_s": s["wall_time_s"], "attempts": s["attempts"],
                       "peak_rss_MiB": s.get("peak_rss_MiB"), "variant": s["variant"]} for tag, s in statuses.items()},
    }
    forces = {
        "format": RESULT_FORMAT, "dft_id": request.dft_id, "axis": request.axis,
        "field_V_per_A": field_vector(request.axis, request.field_V_per_A).tolist(),
        "species": structure.get_chemical_symbols(),
        "runs": {tag: {"field_V_per_A": (sign * field_vector(request.axis, request.field_V_per_A)).tolist(),
                       "energy_eV": labels[tag]["energy"], "forces_eV_per_A": labels[tag]["forces"]}
                 for tag, sign in RUNS},
    }
    root = results_dir(ledger)
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{request.name}.{os.getpid()}.part"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    with tarfile.open(partial / "qe.tar.xz", "w:xz", preset=9) as tar:
        for tag, job in jobs.items():
            names = [n for n in _ARCHIVED if (job.dir / n).exists()] + sorted(p.name for p in job.dir.glob("pw.attempt*.out"))
            for name in names:
                data = (job.dir / name).read_bytes()
                info = tarfile.TarInfo(f"{tag}/{name}")
                info.size = len(data)
                info.mtime = 0  # reproducible archives
                tar.addfile(info, io.BytesIO(data))
    atomic.write_json(partial / "forces.json", forces)
    atomic.write_json(partial / "status.json", status)
    target = root / request.name
    if target.exists():  # an unfinished copy (no status.json): replaced
        shutil.rmtree(target)
    partial.replace(target)
    return status


def _result_dirs(ledger: Ledger) -> list[Path]:
    root = results_dir(ledger)
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if not p.name.startswith(".") and (p / "status.json").exists())


def result_statuses(ledger: Ledger):
    """The ``status.json`` of every stored finite-field result, sorted by name."""
    for path in _result_dirs(ledger):
        yield json.loads((path / "status.json").read_text(encoding="utf-8"))


def read_result(path: Path) -> tuple[dict, dict]:
    """(status, forces) of one stored finite-field result, checked for the three runs."""
    status = json.loads((path / "status.json").read_text(encoding="utf-8"))
    forces = json.loads((path / "forces.json").read_text(encoding="utf-8"))
    if status.get("format") != RESULT_FORMAT or forces.get("format") != RESULT_FORMAT:
        raise InputFileError(f"{path}: finite-field result format {status.get('format')!r}, this bornfield reads {RESULT_FORMAT}")
    missing = [tag for tag, _ in RUNS if tag not in forces.get("runs", {})]
    if missing:
        raise InputFileError(f"{path / 'forces.json'}: runs {missing} missing")
    return status, forces


def result_metrics(ledger: Ledger, path: Path) -> dict:
    """Metrics of one stored result against its entry's ASR-corrected DFPT Born charges.

    Besides :func:`bornfield.dft.efield.response_metrics`: the Born row error against the raw
    (not ASR-corrected) tensors, and the largest difference between the E = 0 forces and the
    entry's SCF forces (same settings, full k mesh without symmetry: a consistency check).
    """
    status, forces = read_result(path)
    if status["identity"] != ledger.identity:
        raise ConfigError(f"{path}: made at settings identity {status['identity']}, ledger {ledger.root} holds {ledger.identity}")
    structure, labels, _ = dfpt_entry(ledger, status["dft_id"])
    z = np.asarray(labels["born_charges"], dtype=float)
    if forces["species"] != structure.get_chemical_symbols():
        raise InputFileError(f"{path / 'forces.json'}: species differ from entry {status['dft_id']}")
    runs = forces["runs"]
    field = np.asarray(forces["field_V_per_A"], dtype=float)
    for tag, sign in RUNS:
        if not np.allclose(runs[tag]["field_V_per_A"], sign * field):
            raise InputFileError(f"{path / 'forces.json'}: run {tag} at field {runs[tag]['field_V_per_A']}, expected {sign * field}")
    response = field_response(*(np.asarray(runs[tag]["forces_eV_per_A"]) for tag, _ in RUNS), field, z)
    zero_diff = np.abs(np.asarray(runs["zero"]["forces_eV_per_A"]) - np.asarray(labels["forces"])).max() * 1e3
    z_raw = np.asarray(labels["born_charges_raw"], dtype=float)
    raw = response_metrics(field_response(*(np.asarray(runs[tag]["forces_eV_per_A"]) for tag, _ in RUNS), field, z_raw), z_raw)
    return {
        "name": status["name"], "dft_id": status["dft_id"], "config_type": structure.info.get("config_type"),
        "family": structure.info.get("family"), "n_atoms": len(structure), "axis": status["axis"],
        "field_V_per_A": status["field_V_per_A"], "k_factor": status["k_factor"], "kpoints": status["kpoints"],
        "ranks": status["ranks"], "core_time_s": status["core_time_s"], "date": status["date"],
        "metrics": {**response_metrics(response, z), "bec_row_rmse_raw_e": raw["bec_row_rmse_e"],
                    "zero_field_vs_entry_force_max_meV_per_A": float(zero_diff)},
        "species": species_metrics(response, z, structure.get_chemical_symbols()),
    }


_UNITS = {"_meV_per_A": "meV/Å", "_e": "e", "_rel": "1"}


def _unit(metric: str) -> str:
    return next(unit for suffix, unit in _UNITS.items() if metric.endswith(suffix))


def efield_report(ledger_dir: str | Path, machine: str = "2 cores, no GPU") -> tuple[list[dict], list[dict]]:
    """(benchmark records, per-result summaries) of every stored finite-field result of a ledger.

    Records follow DESIGN.md's benchmark format, one per metric (whole cell, then per species
    with a ``species`` key); ``dataset`` is ``li3po4-ledger``.
    """
    ledger = Ledger(ledger_dir)
    summaries = [result_metrics(ledger, path) for path in _result_dirs(ledger)]
    records = []
    for item in summaries:
        s = ledger.spec.settings
        notes = (f"pw.x lelfield at 0, +E, -E (nberrycyc {NBERRYCYC}, k {'x'.join(map(str, item['kpoints']))}, "
                 f"string x{item['k_factor']} along {item['axis']}) vs ph.x Born charges (ASR-corrected) of entry "
                 f"{item['dft_id']}; {s.ecutwfc_Ry:g}/{s.ecutrho_Ry:g} Ry, ledger identity {ledger.identity}")
        base = {"system": "qe-finite-field-vs-dfpt", "n_atoms": item["n_atoms"], "ranks": item["ranks"], "threads": 1,
                "baseline": False, "date": item["date"], "machine": machine, "dataset": "li3po4-ledger",
                "dft_id": item["dft_id"], "config_type": item["config_type"], "axis": item["axis"],
                "field_V_per_A": item["field_V_per_A"], "k_factor": item["k_factor"], "notes": notes}
        for scope, metrics in [(None, item["metrics"]), *item["species"].items()]:
            for metric, value in metrics.items():
                if metric == "n_atoms":
                    continue
                record = {"metric": metric, "value": float(value), "unit": _unit(metric), **base}
                if scope is not None:
                    record.update(species=scope, n_atoms=metrics["n_atoms"])
                records.append(record)
    return records, summaries
