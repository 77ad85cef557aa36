"""The ledger report: what the ledger holds, what it cost, and what its labels look like.

JSON: the dataset report of every entry (counts per ``config_type``, failures and Born-charge
rejections with reasons, label statistics, Born charges per species) plus entries per kind
and state, atoms labelled, raw acoustic-sum-rule residuals, core-hours spent per kind and
the pending queue (cost-model estimates times the correction measured on the entries). Figure: the dataset report's panels plus residuals and cost.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from bornfield.data.dataset import assemble_labels, label_statistics
from bornfield.ledger.labeller import pending_core_hours, pending_jobs
from bornfield.ledger.store import Ledger


def ledger_report(ledger: Ledger) -> tuple[list, dict]:
    """(labelled frames, report dict) of ``ledger``."""
    jobs = list(ledger.jobs())
    frames, assembly = assemble_labels((structure, labels) for structure, labels, _ in jobs)
    kinds: dict = defaultdict(Counter)
    core_s: Counter = Counter()
    residuals = []
    atoms_scf = atoms_bec = 0
    for structure, labels, status in jobs:
        kind = "dfpt" if status["settings"].get("born_charges") else "scf"
        kinds[kind][status["state"]] += 1
        core_s[kind] += status.get("wall_time_s", 0.0) * status.get("ranks", 1)
        if "asr_residual" in labels:
            residuals.append({"dft_id": labels["dft_id"], "n_atoms": len(structure),
                              "max_abs_e": float(np.abs(np.asarray(labels["asr_residual"])).max()),
                              "accepted": "born_charges" in labels})
        atoms_scf += len(structure) if "forces" in labels else 0
        atoms_bec += len(structure) if "born_charges" in labels else 0
    pending = pending_jobs(ledger)
    report = {
        "ledger": str(ledger.root),
        "identity": ledger.identity,
        "settings": ledger.spec.to_dict()["settings"],
        "entries": {kind: dict(counts) for kind, counts in sorted(kinds.items())},
        "atoms_labelled": {"scf": atoms_scf, "born_charges": atoms_bec},
        "core_hours_spent": {kind: round(seconds / 3600, 2) for kind, seconds in sorted(core_s.items())},
        "asr_residuals": residuals,
        "pending": dict(Counter(job.kind for job in pending)),
        "pending_core_hours_estimate": round(pending_core_hours(ledger, pending), 1),
        **assembly.to_dict(),
        "statistics": label_statistics(frames),
    }
    return frames, report


def plot_ledger_report(frames: list, report: dict, path: str | Path) -> None:
    """One figure: structures per config_type, |F|, Z diagonals per species, ASR residuals, core-hours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bornfield.plots.style import save_figure

    fig, axes = plt.subplots(1, 5, figsize=(20, 3.8))
    per_type = report["per_config_type"]
    types = sorted(per_type)
    x = np.arange(len(types))
    for offset, key, label in ((-0.25, "structures", "SCF labels"), (0.0, "born_charges", "+ Born charges"), (0.25, "failed", "failed")):
        axes[0].bar(x + offset, [per_type[t].get(key, 0) for t in types], 0.25, label=label)
    axes[0].set_xticks(x, types, rotation=30, ha="right")
    axes[0].set_ylabel("structures")
    axes[0].legend(fontsize=7)
    if frames:
        axes[1].hist(np.concatenate([np.linalg.norm(a.arrays["forces"], axis=1) for a in frames]), bins=30)
        axes[1].set_xlabel("|F| (eV/Å)")
        by_species: dict = defaultdict(list)
        for atoms in frames:
            if "born_charges" in atoms.arrays:
                for symbol, z in zip(atoms.get_chemical_symbols(), atoms.arrays["born_charges"].reshape(-1, 3, 3), strict=True):
                    by_species[symbol].extend(np.diag(z))
        for symbol, values in sorted(by_species.items()):
            axes[2].hist(values, bins=30, alpha=0.6, label=symbol)
        axes[2].set_xlabel("Born charge diagonal Z_αα (e)")
        if by_species:
            axes[2].legend(fontsize=7)
    residuals = report["asr_residuals"]
    if residuals:
        for accepted, colour, label in ((True, "tab:blue", "kept (ASR-corrected)"), (False, "tab:red", "rejected by QC")):
            chosen = [r for r in residuals if r["accepted"] is accepted]
            if chosen:
                axes[3].scatter([r["n_atoms"] for r in chosen], [r["max_abs_e"] for r in chosen], c=colour, s=14, label=label)
        axes[3].legend(fontsize=7)
    axes[3].set_xlabel("atoms")
    axes[3].set_ylabel("raw ASR residual max |Σ Z| (e)")
    spent = report["core_hours_spent"]
    axes[4].bar(list(spent), list(spent.values()), label="spent")
    axes[4].bar(["pending"], [report["pending_core_hours_estimate"]], color="0.7", label="pending (estimate)")
    axes[4].set_ylabel("core-hours")
    axes[4].legend(fontsize=7)
    entries = ", ".join(f"{sum(states.values())} {kind.upper()}" for kind, states in report["entries"].items())
    fig.suptitle(f"label ledger {report['identity']}: entries {entries}; {report['n_structures']} structures with "
                 f"SCF labels, {report['n_with_born_charges']} with Born charges, {len(report['failed'])} failed")
    fig.tight_layout()
    save_figure(fig, Path(path).with_suffix(""), formats=("png",), dpi=110)
