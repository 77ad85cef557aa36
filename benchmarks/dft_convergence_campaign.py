"""Run the DFT convergence series for the defaults (cutoff, k mesh, tr2_ph) with bornfield's runner.

One physically sensible structure -- the 16-atom beta-Li3PO4 cell rattled by
N(0, 0.05 Å) per coordinate (the dataset's rattle amplitude, seed below) -- is
labelled by :class:`bornfield.dft.DFTJob` at every setting of a queue, so the jobs
are the workflow's own (hash-named directories, status.json, escalation, QC) and a
re-run skips finished ones. Two queues can run side by side (``--queue a`` and
``--queue b``, one MPI rank each: single-rank jobs waste no CPU spinning in MPI
waits when the machine is shared). ``--analyse`` then compares every run with the
most accurate one of its series and writes ``benchmarks/results/dft_convergence.json``
through ``dft_convergence.py``'s record format.

Usage::

    .venv/bin/python benchmarks/dft_convergence_campaign.py --queue a   # and, in parallel, --queue b
    .venv/bin/python benchmarks/dft_convergence_campaign.py --queue pools   # 2 ranks, idle machine
    # BLAS: Debian's QE links the reference BLAS; compare with OpenBLAS unpacked (not installed):
    #   apt-get download libopenblas0-serial && dpkg-deb -x libopenblas0-serial_*.deb /tmp/oblas
    #   ... --queue blas &  ... --queue blas --blas-dir /tmp/oblas/usr/lib/x86_64-linux-gnu/openblas-serial
    .venv/bin/python benchmarks/dft_convergence_campaign.py --analyse
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import functools
import logging
import os
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from ase import units

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from bornfield.dft import DFTJob, DFTSettings, RunnerOptions, provision_pseudopotentials, read_ph_output  # noqa: E402
from bornfield.dft.parsers import read_pw_output  # noqa: E402
from bornfield.dft.runner import launch_prefix  # noqa: E402
from bornfield.structures.crystals import build_crystal  # noqa: E402
from bornfield.structures.perturb import rattle  # noqa: E402
from dft_timing import qe_times  # noqa: E402  (same directory)

WORK = HERE / "work" / "dft_convergence"
RESULTS = HERE / "results"
RATTLE_A, SEED = 0.05, 20231

#: k-point densities (points per Å⁻¹, ASE rule) giving these meshes on the 16-atom beta cell
#: (a, b, c = 6.115, 5.239, 4.855 Å): 0.8 -> 1x1x2, 1.6 -> 2x2x3, 2.4 -> 3x3x4,
#: 3.2 -> 4x4x5, 4.0 -> 5x5x6. A trailing "s" (e.g. "k223s") shifts the mesh off Gamma (QE's 1 1 1).
K_DENSITY = {"k112": 0.8, "k223": 1.6, "k334": 2.4, "k445": 3.2, "k556": 4.0}


def settings(ecut: float, kmesh: str, tr2: float = 1e-14, born: bool = True, pseudo_set: str = "pbesol_paw") -> DFTSettings:
    """Settings with ecutrho = 8 ecutwfc (pslibrary PAW/US recommendation)."""
    return replace(
        DFTSettings.defaults(), pseudo_set=pseudo_set, ecutwfc_Ry=float(ecut), ecutrho_Ry=8.0 * ecut,
        kpoint_density_per_inv_A=K_DENSITY[kmesh.removesuffix("s")], kpoint_offset=kmesh.endswith("s"),
        tr2_ph=tr2, born_charges=born,
        conv_thr_per_atom_Ry=1e-11,
    )


#: label -> settings, cheapest-informative first: SCF cutoff series at k 2x2x3 (reference
#: 100 Ry); the k series comes from the SCF step of the DFPT jobs at 30 Ry (k 1x1x2, 2x2x3,
#: 3x3x4); DFPT cutoff series at k 1x1x2 (reference 80 Ry), tr2_ph and pseudopotential family.
QUEUES: dict[str, list[tuple[str, DFTSettings]]] = {
    "a": [
        ("scf_ec30_k223", settings(30, "k223", born=False)),
        ("scf_ec40_k223", settings(40, "k223", born=False)),
        ("ph_ec30_k112", settings(30, "k112")),
        ("ph_ec30_k223", settings(30, "k223")),
        ("scf_ec60_k223", settings(60, "k223", born=False)),
        ("scf_ec80_k223", settings(80, "k223", born=False)),
        ("scf_ec100_k223", settings(100, "k223", born=False)),
        ("scf_ec50_k223", settings(50, "k223", born=False)),
        ("scf_ec70_k223", settings(70, "k223", born=False)),
    ],
    # DFPT cutoff series on the cheap k mesh (cutoff and k convergence factorise; the k series
    # is at 30 Ry): Born charges and eps_inf at 30/45/60/80 Ry, k 1x1x2
    "cutoff": [
        ("ph_ec45_k112", settings(45, "k112")),
        ("ph_ec60_k112", settings(60, "k112")),
        ("ph_ec80_k112", settings(80, "k112")),
    ],
    "kmesh": [
        ("ph_ec30_k334", settings(30, "k334")),
        ("ph_ec30_k112_tr16", settings(30, "k112", tr2=1e-16)),
    ],
    "b": [
        ("ph_ec45_k223", settings(45, "k223")),
    ],
    # pseudopotential family at the production cutoff: ultrasoft Li/O (15 of 16 atoms; P stays
    # PAW, see pseudopotentials.PSEUDO_SETS) vs all-PAW, one after the other under the same load;
    # k 1x1x2 keeps the pair affordable (the family difference is local, the k error common)
    "family": [
        ("ph_ec70_k112", settings(70, "k112")),
        ("ph_us_ec70_k112", settings(70, "k112", pseudo_set="pbesol_us")),
    ],
    # the shipped defaults (70/560 Ry, k 2x2x3, conv_thr 1e-12 Ry/atom) as they were before the
    # tr2_ph series relaxed tr2_ph to 1e-14 (Z within 0.0013 e): the raw ASR residual and the
    # cost a production label actually has
    "defaults": [
        ("ph_default", replace(DFTSettings.defaults(), tr2_ph=1e-16)),
    ],
    # forces moved by 17 meV/Å from 2x2x3 to 3x3x4: one SCF further to see 3x3x4 converged
    # and odd/even meshes alternate (3x3x4 is further from 4x4x5 in energy than 2x2x3): the
    # largest mesh as reference, and shifted meshes, which converge faster in insulators
    "kmesh_scf": [
        ("scf_ec30_k445", settings(30, "k445", born=False)),
        ("scf_ec30_k223s", settings(30, "k223s", born=False)),
        ("scf_ec30_k556", settings(30, "k556", born=False)),
        ("scf_ec30_k334s", settings(30, "k334s", born=False)),
    ],
    # does the k-mesh error at 30 Ry hold at the production cutoff? (the 70 Ry 2x2x3 SCF is ph_default's)
    "kmesh_scf70": [
        ("scf_ec70_k334", settings(70, "k334", born=False)),
        ("scf_ec70_k445", settings(70, "k445", born=False)),
    ],
    # the 3x3x4 reference again, in one go: the first run was resumed twice through ph.x's
    # recover files (session ends) and a few of its Z entries jump by up to 0.25 e
    "k334_uninterrupted": [
        ("ph_ec30_k334_uninterrupted", settings(30, "k334")),
    ],
}

#: queues whose jobs live outside ``jobs/`` (same dft_id as a job there, so another directory)
JOBS_ROOT = {"k334_uninterrupted": "jobs_uninterrupted"}

#: k-point pools (QE -nk) on 2 ranks: the same SCF + DFPT job (30/240 Ry, k 1x1x2 = 2 k-points,
#: so -nk 2 gives one k-point per rank) with 1 and 2 pools, each in its own directory.
POOLS_SETTINGS = settings(30, "k112")
POOLS_JOBS = (1, 2)

#: DFPT cost vs size (issue 4 scaling benchmark): rattled beta supercells at 25/200 Ry, Gamma only,
#: on 1 and 2 ranks (16, 32, 64 atoms); read by ``dft_timing.py``. Series are kept per BLAS (``scaling_dir``).
SCALING_SETTINGS = replace(DFTSettings.defaults(), ecutwfc_Ry=25.0, ecutrho_Ry=200.0, kpoint_density_per_inv_A=0.1,
                           conv_thr_per_atom_Ry=1e-10, tr2_ph=1e-14, born_charges=True)
SCALING_JOBS = [((1, 1, 1), 1), ((1, 1, 2), 1), ((1, 1, 1), 2), ((1, 1, 2), 2), ((2, 1, 2), 1), ((2, 1, 2), 2)]


def blas_tag() -> str:
    """'openblas' when QE's libblas.so.3 resolves to OpenBLAS (Debian alternatives), else 'refblas'."""
    return "openblas" if "openblas" in os.path.realpath("/lib/x86_64-linux-gnu/libblas.so.3") else "refblas"


def scaling_dir(ranks: int, repeat: int = 0) -> Path:
    """Size-series directory: the first series (reference BLAS) keeps its name, later ones are
    tagged; ``repeat`` > 0 runs the same jobs again in their own directory (finished jobs are
    never recomputed in place)."""
    name = f"scaling_{ranks}rank" if blas_tag() == "refblas" else f"scaling_{blas_tag()}_{ranks}rank"
    return WORK / (f"{name}_repeat{repeat}" if repeat else name)


def paw_pseudos() -> tuple[dict, Path]:
    """The pbesol_paw set provisioned in the campaign's shared pseudopotential directory."""
    pseudo_dir = WORK / "pseudo"
    return provision_pseudopotentials(pseudo_dir, "pbesol_paw"), pseudo_dir


def scaling_structure(repetition: tuple[int, int, int]):
    """A beta supercell of the size series, rattled N(0, 0.05 Å) with seed 21 (deterministic)."""
    atoms = build_crystal("beta").repeat(repetition)
    atoms.rattle(0.05, seed=21)
    return atoms


def run_scaling(only_ranks: int | None = None, max_atoms: int | None = None, repeat: int = 0) -> None:
    """The size series; ``only_ranks`` runs just the jobs with that many ranks (2-rank jobs want an
    idle machine), ``max_atoms`` skips larger cells, ``repeat`` runs it again (``scaling_dir``)."""
    pseudos, pseudo_dir = paw_pseudos()
    for repetition, ranks in SCALING_JOBS:
        if only_ranks is not None and ranks != only_ranks:
            continue
        if max_atoms is not None and 16 * int(np.prod(repetition)) > max_atoms:
            continue
        atoms = scaling_structure(repetition)
        options = RunnerOptions.defaults(launcher=launch_prefix("/usr/bin/mpirun", ranks))
        job = DFTJob(atoms, SCALING_SETTINGS, pseudos, pseudo_dir, scaling_dir(ranks, repeat), options)
        labels = job.run()
        logging.info("scaling %d atoms, %d rank(s): %s (%s)", len(atoms), ranks, labels["state"], job.dir)


def run_pools() -> None:
    """The pools pair on 2 ranks (wants an otherwise idle machine: wall times are compared)."""
    pseudos, pseudo_dir = paw_pseudos()
    for pools in POOLS_JOBS:
        options = RunnerOptions.defaults(launcher="/usr/bin/mpirun -n 2", pools=pools)
        job = DFTJob(structure(), POOLS_SETTINGS, pseudos, pseudo_dir, WORK / f"pools_2rank_nk{pools}", options)
        labels = job.run()
        logging.info("pools %d on 2 ranks: %s (%s)", pools, labels["state"], job.dir)


def run_blas(blas_dir: str) -> None:
    """The 16-atom scaling job (25/200 Ry, Gamma, 1 rank) with QE linked at run time against the
    BLAS/LAPACK in ``blas_dir`` (``LD_LIBRARY_PATH``; empty: the system's). Start one process per
    library at the same time on an otherwise idle 2-core machine: the pair then shares conditions."""
    pseudos, pseudo_dir = paw_pseudos()
    if blas_dir:
        os.environ["LD_LIBRARY_PATH"] = ":".join(filter(None, [blas_dir, os.environ.get("LD_LIBRARY_PATH")]))
    name = Path(blas_dir).name if blas_dir else "system"
    job = DFTJob(scaling_structure(SCALING_JOBS[0][0]), SCALING_SETTINGS, pseudos, pseudo_dir, WORK / f"blas_{name}", RunnerOptions.defaults(launcher=""))
    labels = job.run()
    logging.info("BLAS %s: %s (%s)", name, labels["state"], job.dir)


def structure():
    """The rattled 16-atom beta cell (deterministic)."""
    atoms = rattle(build_crystal("beta"), RATTLE_A, SEED)
    atoms.info.update(config_type="crystal_rattled", seed=SEED, rattle_amplitude_A=RATTLE_A)
    return atoms


def run_queue(name: str, ranks: int) -> None:
    options = RunnerOptions.defaults(launcher=launch_prefix("/usr/bin/mpirun", ranks))
    atoms = structure()
    index_path = WORK / "index.json"
    for label, s in QUEUES[name]:
        pseudo_dir = WORK / ("pseudo" if s.pseudo_set == "pbesol_paw" else f"pseudo_{s.pseudo_set}")
        pseudos = provision_pseudopotentials(pseudo_dir, s.pseudo_set)
        job = DFTJob(atoms, s, pseudos, pseudo_dir, WORK / JOBS_ROOT.get(name, "jobs"), options)
        start = time.perf_counter()
        labels = job.run()
        with open(WORK / "index.lock", "w") as lock:  # queues run side by side: one writer at a time
            fcntl.flock(lock, fcntl.LOCK_EX)
            index = json.loads(index_path.read_text()) if index_path.exists() else {}
            index[label] = {"dft_id": job.dft_id, "settings": s.to_dict(), "ranks": ranks, "state": labels["state"],
                            "jobs_root": JOBS_ROOT.get(name, "jobs")}
            tmp = index_path.with_suffix(f".{os.getpid()}.part")
            tmp.write_text(json.dumps(index, indent=1))
            tmp.replace(index_path)
        logging.info("%s (%s): %s in %.0f s", label, job.dft_id, labels["state"], time.perf_counter() - start)


def _cpu_seconds(out_path: Path, program: str) -> float:
    """CPU seconds per rank that QE printed for a finished run (``dft_timing.qe_times``), NaN if unfinished."""
    times = qe_times(out_path, program)
    return float("nan") if times is None else times[0]


def analyse() -> list[dict]:
    index = json.loads((WORK / "index.json").read_text())
    today = dt.date.today().isoformat()
    records = []

    def rec(metric, value, unit, system, what="", **fields):
        """One record of the convergence cell (``what`` ends its notes); ``fields`` override the defaults."""
        records.append({
            "metric": metric, "value": float(value), "unit": unit, "system": system, "n_atoms": 16,
            "ranks": 1, "threads": 1, "baseline": False, "date": today,
            "machine": "2 cores, no GPU (two 1-rank QE queues side by side, shared with other jobs)",
            "notes": f"beta-Li3PO4 16 atoms rattled N(0,{RATTLE_A} Å) seed {SEED}; PAW pbesol, ecutrho=8 ecutwfc; {what}".strip("; "),
            **fields,
        })

    def job_dir(label):
        return WORK / index[label].get("jobs_root", "jobs") / index[label]["dft_id"]

    def done(label):
        return label in index and index[label]["state"] == "completed"

    @functools.cache
    def pw(label):
        return read_pw_output(job_dir(label) / "pw.out")

    @functools.cache
    def ph(label):
        return read_ph_output(job_dir(label) / "ph.out")

    def cutoff_series(pattern, what):
        """(label, reference, what) for every completed cutoff of ``pattern``, reference = highest cutoff."""
        matches = (re.fullmatch(pattern.format(r"(\d+)"), label) for label in index if done(label))
        cutoffs = sorted(int(m.group(1)) for m in matches if m)
        return [(pattern.format(c), pattern.format(cutoffs[-1]), what) for c in cutoffs[:-1]]

    def compare_scf(label, ref_label, what, same_pseudopotentials=True):
        """Force / energy / stress deviation of the SCF in job ``label`` from the one in ``ref_label``
        (no energy across pseudopotential sets: their total energies have different zeros)."""
        if not (done(label) and done(ref_label)):
            return
        run, ref = pw(label), pw(ref_label)
        sysname = f"pw.x {label.replace('ph_', 'scf_')} vs {ref_label.replace('ph_', 'scf_')}"
        rec("force_max_dev_meV_per_A", np.abs(run.forces - ref.forces).max() * 1000, "meV/Å", sysname, what)
        rec("force_rms_dev_meV_per_A", np.sqrt(((run.forces - ref.forces) ** 2).mean()) * 1000, "meV/Å", sysname, what)
        if same_pseudopotentials:
            rec("energy_dev_meV_per_atom", abs(run.energy - ref.energy) / 16 * 1000, "meV/atom", sysname, what)
        rec("stress_max_dev_kbar", np.abs(run.stress - ref.stress).max() / units.GPa * 10, "kbar", sysname, what)

    # SCF cutoff series at k 2x2x3 against 100 Ry (the 45 Ry point is the SCF of the 45 Ry DFPT job)
    for label, ref_label, what in cutoff_series("scf_ec{}_k223", "cutoff"):
        compare_scf(label, ref_label, what)
    # k series at 30 Ry: the SCF step of the DFPT jobs
    compare_scf("ph_ec30_k112", "ph_ec30_k223", "k mesh (demo 1x1x2 vs 2x2x3)")
    for label in ("ph_ec30_k112", "ph_ec30_k223"):
        compare_scf(label, "ph_ec30_k334", "k mesh")
    for label in ("ph_ec30_k223", "ph_ec30_k334", "scf_ec30_k223s", "scf_ec30_k334s", "scf_ec30_k445"):
        compare_scf(label, "scf_ec30_k556", "k mesh (s: shifted off Gamma)")
    compare_scf("ph_default", "scf_ec70_k334", "k mesh at 70 Ry (2x2x3 SCF of the production-settings job)")
    for label in ("ph_default", "scf_ec70_k334"):
        compare_scf(label, "scf_ec70_k445", "k mesh at 70 Ry")
    family = "pseudopotential family: ultrasoft Li/O vs PAW (P PAW in both), same numerics"
    compare_scf("ph_us_ec70_k112", "ph_ec70_k112", family, same_pseudopotentials=False)
    comparisons = [
        ("ph_ec30_k112", "ph_ec30_k223", "k mesh (demo 1x1x2 vs 2x2x3)"),
        ("ph_ec30_k112", "ph_ec30_k334", "k mesh"),
        ("ph_ec30_k223", "ph_ec30_k334", "k mesh"),
        ("ph_ec30_k112", "ph_ec30_k334_uninterrupted", "k mesh"),
        ("ph_ec30_k223", "ph_ec30_k334_uninterrupted", "k mesh"),
        ("ph_ec30_k334", "ph_ec30_k334_uninterrupted", "ph.x resumed twice from recover files vs one uninterrupted run"),
        *cutoff_series("ph_ec{}_k112", "cutoff (DFPT at k 1x1x2)"),
        ("ph_ec30_k223", "ph_ec45_k223", "cutoff"),
        ("ph_ec30_k112", "ph_ec30_k112_tr16", "tr2_ph 1e-14 vs 1e-16"),
        ("ph_ec30_k223", "ph_ec30_k223_tr16", "tr2_ph 1e-14 vs 1e-16"),
        ("ph_us_ec70_k112", "ph_ec70_k112", family),
    ]
    for label, ref_label, what in comparisons:
        if done(label) and done(ref_label):
            run, ref = ph(label), ph(ref_label)
            dz = np.abs(run.born_charges - ref.born_charges)
            sysname = f"ph.x {label} vs {ref_label}"
            rec("bec_max_dev_e", dz.max(), "e", sysname, f"{what}; ASR-corrected Z")
            rec("bec_rms_dev_e", np.sqrt((dz**2).mean()), "e", sysname, f"{what}; ASR-corrected Z")
            rec("eps_inf_max_dev", np.abs(run.epsilon_inf - ref.epsilon_inf).max(), "1", sysname, what)
    for label in index:
        if done(label) and label.startswith("ph_"):
            residual = ph(label).asr_residual
            rec("asr_residual_max_e", np.abs(residual).max(), "e", f"ph.x {label}", "raw sum over atoms")
            for i, axis in enumerate("xyz"):  # signed: cutoff and k-mesh errors add with opposite signs
                rec("asr_residual_diag_e", residual[i, i], "e", f"ph.x {label}", f"raw sum over atoms, {axis}{axis}",
                    component=f"{axis}{axis}")
    # finite-field pw.x (lelfield, +-E) vs DFPT for the Born charges: the index-order proof's real
    # runs (tests/data/qe/efield_beta, same cell, cutoffs and k mesh, 2 ranks): one field axis
    # needs two Berry-phase SCFs, all three axes six
    efield = HERE.parent / "tests" / "data" / "qe" / "efield_beta"
    ph_cpu = qe_times(efield / "ph.out", "PHONON")
    ff_cpu = [qe_times(efield / f"pw_efield_{sign}.out", "PWSCF") for sign in ("plus", "minus")]
    if ph_cpu and all(ff_cpu):
        note = ("beta 16 atoms rattled 0.05 Å seed 11, 30/240 Ry, k 1x1x2, 2 ranks; finite field: lelfield "
                "nberrycyc 3, ±0.0364 V/Å, nosym; its zz diagonals differ from DFPT by up to 0.17 e (two-point "
                "Berry strings along c)")
        other = {"ranks": 2, "machine": "2 cores, no GPU (shared)", "notes": note}
        rec("born_charges_cpu_time_s", 3 * (ff_cpu[0][0] + ff_cpu[1][0]), "s (per rank)",
            "pw.x finite field ±E, 3 axes (6 SCFs)", baseline=True, **other)
        rec("born_charges_cpu_time_s", ph_cpu[0], "s (per rank)", "ph.x DFPT epsil+zeu", **other)
    for label in index:
        if done(label):
            d = job_dir(label)
            ranks = index[label].get("ranks", 1)
            rec("qe_cpu_time_s", _cpu_seconds(d / "pw.out", "PWSCF"), "s (per rank)", f"pw.x {label}", "SCF", ranks=ranks)
            if label.startswith("ph_"):
                rec("qe_cpu_time_s", _cpu_seconds(d / "ph.out", "PHONON"), "s (per rank)", f"ph.x {label}", "DFPT epsil+zeu",
                    ranks=ranks)
    def side_job_times(directory: Path):
        """(program name, QE times) of the one job under a side directory (pools, BLAS), per finished program."""
        for program, name in (("PWSCF", "pw.x"), ("PHONON", "ph.x")):
            outs = sorted(directory.glob(f"*/{name.removesuffix('.x')}.out"))
            times = qe_times(outs[0], program) if outs else None
            if times:
                yield name, times

    for pools in POOLS_JOBS:
        for name, times in side_job_times(WORK / f"pools_2rank_nk{pools}"):
            rec("qe_wall_time_s", times[1], "s", f"{name} 2 ranks -nk {pools}",
                "30/240 Ry, k 1x1x2 (2 k-points); k-point pools", ranks=2, pools=pools, baseline=pools == 1,
                machine="2 cores, no GPU, otherwise idle (other QE jobs paused)")
    for blas_run in sorted(WORK.glob("blas_*")):
        library = blas_run.name.removeprefix("blas_")
        for name, times in side_job_times(blas_run):
            rec("qe_cpu_time_s", times[0], "s (per rank)", f"{name} BLAS {library}",
                "scaling job: beta 16 atoms rattled 0.05 Å seed 21, 25/200 Ry, Gamma; the two libraries run at the same time",
                baseline=library == "system", blas=library,
                machine="2 cores, no GPU, one run per core, other QE jobs paused")
    return records


def plot(records: list[dict], path: Path) -> None:
    """Bars of the max force and Born-charge deviations against the bounds of the issue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("force_max_dev_meV_per_A", "max |ΔF| (meV/Å)", 5.0), ("bec_max_dev_e", "max |ΔZ| (e)", 0.01)]  # issue 4 bounds
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (metric, label, bound) in zip(axes, panels):
        rows = [r for r in records if r["metric"] == metric]
        ax.barh([r["system"] for r in rows], [r["value"] for r in rows], color="tab:blue")
        ax.set_xscale("log")
        ax.axvline(bound, color="tab:red", ls="--", label=f"bound {bound:g}")
        ax.set(xlabel=label)
        ax.legend(fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle("DFT convergence, 16-atom beta-Li3PO4 rattled 0.05 Å (PAW PBEsol)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", choices=[*sorted(QUEUES), "scaling", "pools", "blas"])
    parser.add_argument("--max-atoms", type=int, default=None, help="with --queue scaling: skip larger cells")
    parser.add_argument("--repeat", type=int, default=0,
                        help="with --queue scaling: run the series again in its own directory (..._repeatN)")
    parser.add_argument("--blas-dir", default="",
                        help="with --queue blas: directory holding libblas.so.3/liblapack.so.3 (empty: the system's)")
    parser.add_argument("--ranks", type=int, default=None,
                        help="MPI ranks per job of a queue (default 1); with --queue scaling: run only the jobs with this many ranks")
    parser.add_argument("--analyse", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS / "dft_convergence.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.queue == "scaling":
        run_scaling(args.ranks, args.max_atoms, args.repeat)
    elif args.queue == "pools":
        run_pools()
    elif args.queue == "blas":
        run_blas(args.blas_dir)
    elif args.queue:
        run_queue(args.queue, args.ranks or 1)
    if args.analyse:
        records = analyse()
        tmp = args.output.with_suffix(".part")
        tmp.write_text(json.dumps(records, indent=1))
        tmp.replace(args.output)
        plot(records, args.output.with_suffix(".png"))
        for r in records:
            print(f"{r['system']:45s} {r['metric']:26s} {r['value']:10.4g} {r['unit']}")


if __name__ == "__main__":
    main()
