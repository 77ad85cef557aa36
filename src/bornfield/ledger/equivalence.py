"""Admit a pseudopotential file with other bytes as a ledger's own, by recomputing entries with it.

A generated pseudopotential (``ld1.x``) is not byte-reproducible across machines: the same
input and QE build give files that differ in the last digits on other CPUs (BLAS kernels).
Labels made with such a file join a ledger only after ledger entries recomputed with it agree
with their stored labels within :data:`TOLERANCES` (at least one DFPT entry among them); the
comparison is kept in ``ledger.json`` as the evidence.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import shutil
from pathlib import Path

import numpy as np
from ase.io import read
from ase.units import GPa

from bornfield.dft.inputs import DFTSettings
from bornfield.dft.pseudopotentials import provision_pseudopotentials
from bornfield.dft.runner import DFTJob, RunnerOptions, launch_prefix
from bornfield.errors import BornfieldError, ConfigError
from bornfield.provenance import cpu_model
from bornfield.ledger.store import Ledger

LOG = logging.getLogger(__name__)

#: largest difference from the stored labels that still admits a file (Born and force limits
#: are the ones a cheaper DFT setting had to meet, issue "Label ledger" item 5)
TOLERANCES = {"energy_meV_per_atom": 0.5, "force_meV_per_A": 10.0, "stress_GPa": 0.1,
              "born_charge_e": 0.01, "epsilon_inf": 0.01}


def label_differences(stored: dict, recomputed: dict, n_atoms: int) -> dict[str, float]:
    """Largest absolute differences between two labels.json contents, in the units of :data:`TOLERANCES`."""
    diffs = {
        "energy_meV_per_atom": 1000.0 * abs(recomputed["energy"] - stored["energy"]) / n_atoms,
        "force_meV_per_A": 1000.0 * float(np.max(np.abs(np.subtract(recomputed["forces"], stored["forces"])))),
        "stress_GPa": float(np.max(np.abs(np.subtract(recomputed["stress"], stored["stress"])))) / GPa,
    }
    if "born_charges" in stored:
        if "born_charges" not in recomputed:
            raise BornfieldError("the recomputed job has no Born charges but the stored entry has")
        diffs["born_charge_e"] = float(np.max(np.abs(np.subtract(recomputed["born_charges"], stored["born_charges"]))))
        diffs["epsilon_inf"] = float(np.max(np.abs(np.subtract(recomputed["epsilon_inf"], stored["epsilon_inf"]))))
    return diffs


def _same_input(archived: str, written: str) -> bool:
    """True if two pw.x inputs differ at most in directories and wall-time limit (the run being a pure file swap)."""
    def strip(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.strip().startswith(("pseudo_dir", "outdir", "max_seconds"))]
    return strip(archived) == strip(written)


def _planned_input(job: DFTJob, status: dict, directory: Path) -> str:
    """The pw.in ``job`` writes for the SCF attempt that made the archived entry's pw.in (its last pw.x attempt)."""
    last = [a for a in status.get("attempts", []) if a.get("program") == "pw.x"][-1]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{job.dft_id}.pw.in"
    job.write_scf_input(path, int(last["attempt"]), bool(last.get("restart")))
    return path.read_text(encoding="utf-8")


def admit_pseudopotentials(ledger_dir: str | Path, dft_ids: list[str], work_dir: str | Path, ranks: int,
                           launcher: str) -> dict:
    """Recompute ``dft_ids`` with the pseudopotential files provisioned here; admit the new files if all agree.

    Returns ``{"admitted": {element: md5}, "entries": {dft_id: differences}, "tolerances": ...}``.
    Raises ``ConfigError`` if nothing differs from the ledger's files, if no DFPT entry is among
    ``dft_ids``, or if any difference exceeds its tolerance (then nothing is admitted).
    """
    ledger = Ledger(ledger_dir)
    work = Path(work_dir)
    pseudo_dir = work / "pseudo"
    records = provision_pseudopotentials(pseudo_dir, ledger.spec.settings.pseudo_set)
    new = {el: rec for el, rec in records.items() if not ledger.spec.accepts(el, rec.md5)}
    if not new:
        raise ConfigError(f"the pseudopotentials provisioned in {pseudo_dir} are already the ledger's own or admitted")
    unknown = sorted(set(dft_ids) - set(ledger.dft_ids()))
    if unknown:
        raise ConfigError(f"ledger {ledger.root} has no entries {unknown}")
    if not any(ledger.status(i)["settings"].get("born_charges") for i in dft_ids):
        raise ConfigError("admit-pseudo needs at least one DFPT entry among --entries (Born charges are compared)")
    options = RunnerOptions.defaults(launcher=launch_prefix(launcher, ranks))
    compared: dict[str, dict] = {}
    qe_versions = set()
    for dft_id in dft_ids:
        status = ledger.status(dft_id)
        structure = read(io.StringIO(ledger.archived_text(dft_id, "structure.extxyz")), format="extxyz")
        job = DFTJob(structure, DFTSettings(**status["settings"]), records, pseudo_dir, work / "jobs", options, ledger.spec.qc)
        if job.dft_id != dft_id:
            raise ConfigError(f"entry {dft_id}: the recomputed job has id {job.dft_id} (structure or settings differ)")
        if not _same_input(ledger.archived_text(dft_id, "pw.in"), _planned_input(job, status, work / "planned")):
            raise ConfigError(f"entry {dft_id}: the pw.in this machine would write differs from the archived one "
                              "beyond its directories (nothing was run)")
        LOG.info("admit-pseudo: recomputing %s (%d atoms, %s)", dft_id, len(structure),
                 "DFPT" if status["settings"].get("born_charges") else "SCF")
        labels = job.run()
        if labels["state"] != "completed":
            raise ConfigError(f"entry {dft_id}: the recomputed job {job.dir} ended {labels['state']}: {labels.get('failure')}")
        if not _same_input(ledger.archived_text(dft_id, "pw.in"), (job.dir / "pw.in").read_text(encoding="utf-8")):
            raise ConfigError(f"entry {dft_id}: the recomputed pw.in differs from the archived one beyond its directories")
        qe_versions.add(job.status().get("qe_version"))
        compared[dft_id] = {k: float(f"{v:.3g}") for k, v in label_differences(ledger.labels(dft_id), labels, len(structure)).items()}
        LOG.info("admit-pseudo: %s differences %s", dft_id, compared[dft_id])
    failed = {i: {k: v for k, v in d.items() if v > TOLERANCES[k]} for i, d in compared.items()}
    failed = {i: d for i, d in failed.items() if d}
    if failed:
        raise ConfigError(f"not admitted: labels recomputed with {sorted(r.filename for r in new.values())} differ "
                          f"beyond {TOLERANCES}: {failed}")
    evidence = {"admitted": dt.date.today().isoformat(), "machine": cpu_model(), "qe_version": sorted(qe_versions, key=str),
                "entries": compared, "tolerances": TOLERANCES}
    for element, rec in new.items():
        ledger.admit_equivalent(element, rec.md5, {**evidence, "file": rec.filename, "source": rec.source})
        LOG.info("admitted %s md5 %s as ledger %s's %s pseudopotential", rec.filename, rec.md5, ledger.root, element)
    shutil.rmtree(work / "jobs", ignore_errors=True)
    shutil.rmtree(work / "planned", ignore_errors=True)
    return {"admitted": {el: rec.md5 for el, rec in new.items()}, "entries": compared, "tolerances": TOLERANCES}
