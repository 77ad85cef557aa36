"""CHGNet-labelled PROXY dataset of Li3PO4 structures (labels are CHGNet, NOT DFT).

Real DFT/DFPT labels cost ~25 min per 16-atom cell on this machine, too few to
compare potential architectures. This harness builds ~500 structures of 16-64
atoms with bornfield's own structure builders and labels them with an offline
pretrained universal potential (CHGNet 0.4.2, weights shipped in the wheel):
energy (eV), forces (eV/Å) and stress (ASE convention, eV/Å³). It is an honest
*proxy* task for comparing potential architectures on the same data; it says
nothing about agreement with DFT.

Recipe (``--seed`` is the master seed; every random choice derives from it
through :func:`bornfield.structures.identity.derive_seed`):

* crystals (config_type ``beta`` / ``gamma``): ideal beta (16, 32 atoms) and
  gamma (32, 64 atoms) supercells + rattled copies (σ = 0.05 and 0.10 Å; 0.15 Å gave P-O contacts of 1.0 Å and forces > 100 eV/Å) +
  strained copies (|ε| ≤ 0.04, rattle 0.05 Å) (:func:`perturbed_copies`);
* ``defect``: Li vacancy and Li Frenkel pair in 32-atom beta/gamma cells
  (:func:`phase_cell`) + perturbed copies;
* ``amorphous``: 2 melt-quenched 64-atom cells (Pedone 2006 / LAMMPS,
  :func:`make_amorphous_cell`, shortened protocol) + perturbed copies;
  ``melt``: snapshots of their 3000 K melts;
* ``crystal_md`` / ``defect_md`` / ``amorphous_md``: snapshots (every ~100 fs,
  second half of the run) of Pedone NVT MD at 600-1500 K started from those
  cells, run through the melt-quench engine with a melt temperature equal to
  the target temperature and no quench/anneal/relax.

Charges: CHGNet has no charge input, so a Li-vacancy cell is labelled as the
neutral composition Li(3n-1)P(n)O(4n) (one hole). Every proxy structure
therefore has ``info["charge"] = 0`` (energies are consistent with the other
cells, so both potentials train on them) and ``info["nominal_defect_charge"]``
keeps the DFT stage's convention (-1 for a vacancy).

CHGNet runs in its own virtualenv ``benchmarks/.venv-uip`` (git-ignored; its
pinned dependencies clash with bornfield's), created here if missing with
``pip install torch==2.13.0 chgnet==0.4.2``. The labelling worker is this file
run with ``--label-worker IN OUT`` by that interpreter.

    .venv/bin/python benchmarks/chgnet_proxy.py [--seed 20231] [--workdir benchmarks/work/chgnet_proxy]

Writes ``data/chgnet_proxy/li3po4_chgnet_proxy.extxyz.xz`` (design-note keys
``energy``, ``forces``, ``stress``, ``config_type`` plus
``label_source = chgnet-<version>``), ``data/chgnet_proxy/PROVENANCE.md`` and
``benchmarks/results/chgnet_proxy.json`` (dataset statistics, labelling speed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
UIP_VENV = HERE / ".venv-uip"
UIP_PYTHON = UIP_VENV / "bin" / "python"
CHGNET_REQUIREMENTS = ["torch==2.13.0", "chgnet==0.4.2"]
DATA_DIR = ROOT / "data" / "chgnet_proxy"
ARCHIVE_NAME = "li3po4_chgnet_proxy.extxyz.xz"
MACHINE = "2 cores, no GPU (shared with other jobs)"

# --- recipe (kept here so PROVENANCE.md can print it verbatim) -------------------------------
CRYSTAL_CELLS = [("beta", 16), ("beta", 32), ("gamma", 32), ("gamma", 64)]
DEFECT_CELLS = ["beta_vacancy", "beta_frenkel", "gamma_vacancy", "gamma_frenkel"]
DEFECT_TARGET_ATOMS = 32
PERTURB_SMALL = {"rattle_copies": 6, "rattle_amplitude_A": 0.05, "strain_copies": 6, "max_strain": 0.04,
                 "strain_rattle_amplitude_A": 0.05}
PERTURB_LARGE = {"rattle_copies": 4, "rattle_amplitude_A": 0.10, "strain_copies": 0, "max_strain": 0.0,
                 "strain_rattle_amplitude_A": 0.0}
AMORPHOUS_PROTOCOL = {"melt_temperature_K": 3000.0, "melt_time_ps": 6.0, "quench_rate_K_per_ps": 300.0,
                      "final_temperature_K": 300.0, "anneal_time_ps": 4.0, "anneal_pressure_bar": 0.0,
                      "npt_quench_below_K": 0.0, "relax": True, "timestep_fs": 1.0}
AMORPHOUS_CELLS = {"n_atoms": 64, "seeds": 2, "melt_snapshots": 8}
# (start cell key, temperatures K, snapshots per run); snapshot spacing 100 fs
MD_RUNS = [
    ("beta_32", (600.0, 900.0, 1200.0, 1500.0), 18),
    ("gamma_32", (600.0, 900.0, 1200.0, 1500.0), 18),
    ("beta_16", (900.0, 1500.0), 10),
    ("beta_vacancy", (900.0, 1200.0), 8),
    ("beta_frenkel", (900.0, 1200.0), 8),
    ("gamma_vacancy", (900.0, 1200.0), 8),
    ("gamma_frenkel", (900.0, 1200.0), 8),
    ("amorphous_0", (600.0, 1000.0, 1500.0), 12),
    ("amorphous_1", (600.0, 1000.0, 1500.0), 12),
]
MD_SNAPSHOT_SPACING_FS = 100.0


# ============================================================================ structures
def _md_snapshots(engine, start, temperature_K: float, n_snapshots: int, seed: int):
    """NVT Pedone MD at ``temperature_K`` through the melt-quench engine; ``n_snapshots`` frames.

    The engine's protocol with melt temperature = final temperature = T, no
    quench, anneal or relax is a plain NVT run (after a short overlap-removing
    minimisation); its snapshots lie evenly over the second half of the run.
    """
    from bornfield.structures.meltquench import MeltQuenchProtocol

    run_ps = 2.0 * n_snapshots * MD_SNAPSHOT_SPACING_FS / 1000.0
    protocol = MeltQuenchProtocol.defaults(melt_temperature_K=temperature_K, melt_time_ps=run_ps,
                                           final_temperature_K=temperature_K, anneal_time_ps=0.0, relax=False,
                                           timestep_fs=1.0, thermostat_damping_fs=100.0)
    result = engine.melt_quench(start, protocol, seed, n_snapshots)
    if len(result.melt_snapshots) != n_snapshots:
        raise RuntimeError(f"MD at {temperature_K} K gave {len(result.melt_snapshots)} snapshots, "
                           f"expected {n_snapshots}")
    return result.melt_snapshots


def build_structures(master_seed: int, workdir: Path) -> list:
    """All proxy structures (unlabelled), annotated with config_type, seed, source, phase."""
    from tqdm import tqdm

    from bornfield.config import load_config
    from bornfield.structures.amorphous import make_amorphous_cell
    from bornfield.structures.builder import crystal_cell, perturbed_copies, phase_cell
    from bornfield.structures.identity import annotate, derive_seed
    from bornfield.structures.meltquench import PedoneLammpsEngine

    images = []
    starts = {}

    def add(atoms, config_type, phase):
        atoms.info["config_type"] = config_type
        atoms.info["phase"] = phase
        atoms.info["nominal_defect_charge"] = int(atoms.info.get("charge", 0))
        atoms.info["charge"] = 0
        images.append(atoms)

    def perturbed(parent, config_type, phase):
        for settings, seed in ((PERTURB_SMALL, master_seed), (PERTURB_LARGE, derive_seed(master_seed, "large"))):
            for copy in perturbed_copies(parent, settings, seed):
                add(copy, config_type, phase)

    for phase, n in CRYSTAL_CELLS:
        cell = crystal_cell(phase, n, 0.0)
        cell.info["phase"] = phase
        starts[f"{phase}_{len(cell)}"] = cell
        add(cell.copy(), phase, phase)
        perturbed(cell, phase, phase)
    for name in DEFECT_CELLS:
        cell = phase_cell(name, DEFECT_TARGET_ATOMS, 0.0, master_seed, "proxy", 3.0)
        cell.info["phase"] = name
        starts[name] = cell
        add(cell.copy(), "defect", name)
        perturbed(cell, "defect", name)

    config = load_config(ROOT / "config" / "config.yaml")
    amorphous = dict(config["structures"]["amorphous"])
    amorphous.update(AMORPHOUS_PROTOCOL)
    amorphous["dft_cells"] = dict(AMORPHOUS_CELLS)
    lammps = amorphous["lammps"]
    engine = PedoneLammpsEngine(cutoff=lammps["cutoff_A"], kspace_accuracy=lammps["kspace_accuracy"],
                                thermo_every=100, logfile=None, progress=False)
    for index in range(AMORPHOUS_CELLS["seeds"]):
        final, melt, result = make_amorphous_cell(amorphous, master_seed, "dft", index, engine=engine)
        print(f"amorphous cell {index}: {len(final)} atoms, density {final.get_masses().sum() / final.get_volume() * 1.66054:.3f} g/cm3",
              flush=True)
        final.info["phase"] = "amorphous"
        starts[f"amorphous_{index}"] = final
        add(final.copy(), "amorphous", "amorphous")
        perturbed(final, "amorphous", "amorphous")
        for snap in melt:
            add(snap, "melt", "amorphous")

    runs = [(key, t, n) for key, temps, n in MD_RUNS for t in temps]
    for key, temperature, n in tqdm(runs, desc="Pedone NVT snapshots", mininterval=5.0):
        start = starts[key]
        seed = derive_seed(master_seed, "proxy-md", key, temperature)
        config_type = ("amorphous_md" if key.startswith("amorphous")
                       else "defect_md" if key in DEFECT_CELLS else "crystal_md")
        for k, snap in enumerate(_md_snapshots(engine, start, temperature, n, seed)):
            source = (f"Pedone NVT {temperature:g} K from {key} ({start.info['structure_id']}), "
                      f"{snap.info['melt_time_ps']:g} ps")
            snap.info.pop("melt_temperature_K", None)
            snap.info["md_time_ps"] = snap.info.pop("melt_time_ps")
            snap.info["charge"] = start.info.get("charge", 0)
            annotate(snap, config_type=config_type, seed=seed, source=source, md_temperature_K=temperature,
                     parent_id=start.info["structure_id"])
            add(snap, config_type, start.info["phase"])
    return images


# ============================================================================ labelling (CHGNet venv)
def ensure_uip_venv() -> None:
    """Create ``benchmarks/.venv-uip`` with the pinned CHGNet stack if it does not exist."""
    if UIP_PYTHON.exists():
        return
    subprocess.run([sys.executable, "-m", "venv", str(UIP_VENV)], check=True)
    # torch first and pinned: pip then takes the CPU wheel (an unpinned torch pulls CUDA)
    subprocess.run([str(UIP_PYTHON), "-m", "pip", "install", "-q", CHGNET_REQUIREMENTS[0]], check=True)
    subprocess.run([str(UIP_PYTHON), "-m", "pip", "install", "-q", *CHGNET_REQUIREMENTS], check=True)


def label_worker(inp: str, out: str, threads: int) -> None:
    """Runs inside benchmarks/.venv-uip: CHGNet energy/forces/stress for every frame of ``inp``.

    Writes ``out`` (extxyz, atomically) and prints one JSON line with the
    versions, the timing and a finite-difference check of the stress
    convention on the first frame.
    """
    import numpy as np
    import torch
    from ase.io import read, write
    from chgnet import __version__ as chgnet_version
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator
    from tqdm import tqdm

    torch.set_num_threads(threads)
    model = CHGNet.load(verbose=False)
    calc = CHGNetCalculator(model=model, use_device="cpu")
    frames = read(inp, index=":", format="extxyz")
    source = f"chgnet-{chgnet_version}"
    start = time.perf_counter()
    n_atoms = 0
    for atoms in tqdm(frames, desc="CHGNet labels", mininterval=5.0):
        atoms.calc = calc
        energy = float(atoms.get_potential_energy())
        forces = np.array(atoms.get_forces(), dtype=float)
        stress = np.array(atoms.get_stress(voigt=False), dtype=float)
        atoms.calc = None
        if not (np.isfinite(energy) and np.all(np.isfinite(forces)) and np.all(np.isfinite(stress))):
            raise RuntimeError(f"CHGNet gave non-finite labels for {atoms.info.get('structure_id')}")
        atoms.info["energy"] = energy
        atoms.info["stress"] = stress.ravel()
        atoms.arrays["forces"] = forces
        atoms.info["label_source"] = source
        atoms.info["label_model"] = f"CHGNet pretrained weights {model.version} (MPtrj, PBE/PBE+U)"
        n_atoms += len(atoms)
    seconds = time.perf_counter() - start
    # stress convention check: sigma_xx = (1/V) dE/d(eps_xx) (ASE sign), central difference
    probe = frames[0].copy()
    probe.calc = calc
    sigma = probe.get_stress(voigt=False)[0, 0]
    energies = []
    for eps in (-1e-3, 1e-3):
        strained = frames[0].copy()
        strained.set_cell(frames[0].cell[:] @ np.diag([1 + eps, 1, 1]), scale_atoms=True)
        strained.calc = calc
        energies.append(strained.get_potential_energy())
    fd = (energies[1] - energies[0]) / 2e-3 / frames[0].get_volume()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    write(tmp, frames, format="extxyz")
    os.replace(tmp, out)
    print(json.dumps({"chgnet_version": chgnet_version, "model_version": str(model.version),
                      "torch_version": torch.__version__, "seconds": seconds, "n_atoms": n_atoms,
                      "n_structures": len(frames), "stress_xx_eV_A3": float(sigma),
                      "stress_xx_finite_difference_eV_A3": float(fd)}))


def label(images: list, workdir: Path, threads: int) -> tuple[list, dict]:
    """Label ``images`` with CHGNet in the UIP venv; returns the labelled frames and the worker's report."""
    from ase.io import read

    from bornfield.structures.io import write_extxyz_atomic

    ensure_uip_venv()
    unlabelled = workdir / "unlabelled.extxyz"
    labelled = workdir / "labelled.extxyz"
    write_extxyz_atomic(unlabelled, images)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    done = subprocess.run([str(UIP_PYTHON), str(Path(__file__).resolve()), "--label-worker", str(unlabelled),
                           str(labelled), "--threads", str(threads)], check=True, env=env,
                          stdout=subprocess.PIPE, text=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    frames = read(labelled, index=":", format="extxyz")
    if len(frames) != len(images):
        raise RuntimeError(f"{labelled}: {len(frames)} frames, expected {len(images)}")
    return frames, report


# ============================================================================ archive
def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_archive(frames: list, path: Path) -> None:
    """xz-compressed extxyz, written via a temporary file and a rename."""
    from ase.io import write

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmpdir:
        plain = Path(tmpdir) / "proxy.extxyz"
        write(plain, frames, format="extxyz")
        packed = Path(tmpdir) / path.name
        with open(plain, "rb") as src, lzma.open(packed, "wb", preset=9) as dst:
            shutil.copyfileobj(src, dst)
        os.replace(packed, path)


def statistics(frames: list) -> dict:
    import numpy as np

    groups: dict[str, list] = {}
    for atoms in frames:
        groups.setdefault(atoms.info["config_type"], []).append(atoms)
    out = {}
    for name, members in sorted(groups.items()):
        forces = np.concatenate([a.get_forces() for a in members])
        e_per_atom = np.array([a.get_potential_energy() / len(a) for a in members])
        out[name] = {"n_structures": len(members), "n_atoms": sorted({len(a) for a in members}),
                     "force_rms_eV_A": float(np.sqrt(np.mean(forces**2))),
                     "force_max_eV_A": float(np.abs(forces).max()),
                     "energy_per_atom_eV_mean": float(e_per_atom.mean()),
                     "energy_per_atom_eV_std": float(e_per_atom.std())}
    return out


def write_provenance(path: Path, archive: Path, frames: list, report: dict, master_seed: int, stats: dict,
                     build_seconds: float) -> None:
    import ase
    import numpy as np

    from bornfield import __version__ as bornfield_version

    rows = "\n".join(f"| {k} | {v['n_structures']} | {', '.join(map(str, v['n_atoms']))} | "
                     f"{v['force_rms_eV_A']:.3f} | {v['force_max_eV_A']:.2f} |" for k, v in stats.items())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    text = f"""# CHGNet-labelled proxy dataset of Li3PO4 (labels are CHGNet, NOT DFT)

`{archive.name}`: {len(frames)} structures, {sum(len(a) for a in frames)} atoms, xz-compressed extxyz.
sha256 `{sha256_of(archive)}`.

**What the labels are.** Energy (eV, `info["energy"]`), forces (eV/Å,
`arrays["forces"]`) and stress (ASE sign convention, eV/Å³, 9 values row-major,
`info["stress"]`) from the pretrained universal potential CHGNet
{report['chgnet_version']} (weights {report['model_version']}, trained on the Materials Project
trajectory set, PBE/PBE+U), `info["label_source"] = "chgnet-{report['chgnet_version']}"`.
They are a *proxy* for comparing potential architectures on the same data; they
are not PBEsol, not DFT of this project, and carry no Born charges.
Stress sign checked on the first frame: σ_xx = {report['stress_xx_eV_A3']:.6f} eV/Å³ vs
(1/V) dE/dε_xx = {report['stress_xx_finite_difference_eV_A3']:.6f} eV/Å³ (central difference, ε = ±1e-3).

**Charges.** CHGNet takes no total charge: a Li-vacancy cell is labelled as the
neutral composition (one hole). All structures have `charge = 0`;
`nominal_defect_charge` keeps the DFT-stage convention (-1 for a vacancy).

## Recipe (`benchmarks/chgnet_proxy.py`, master seed {master_seed})

Built with bornfield {bornfield_version} (git {commit}) builders, ASE {ase.__version__}, numpy {np.__version__};
labelled with CHGNet {report['chgnet_version']} / torch {report['torch_version']} on 1 CPU thread
({report['seconds']:.0f} s for {report['n_atoms']} atoms). Build time {build_seconds:.0f} s.

* crystals `{CRYSTAL_CELLS}` (bornfield.structures.builder.crystal_cell) and
  defects `{DEFECT_CELLS}` at {DEFECT_TARGET_ATOMS} atoms (phase_cell, purpose "proxy");
  perturbed copies (perturbed_copies) with `{PERTURB_SMALL}` (master seed) and
  `{PERTURB_LARGE}` (seed derive_seed(master, "large"));
* amorphous: make_amorphous_cell(kind "dft") with `{AMORPHOUS_CELLS}` and the protocol
  `{AMORPHOUS_PROTOCOL}` (Pedone 2006, LAMMPS), plus the perturbed copies above;
  `melt` = snapshots of the 3000 K melt;
* MD snapshots: Pedone NVT (Nosé-Hoover, 100 fs damping, 1 fs step) through
  PedoneLammpsEngine.melt_quench with melt T = final T, no quench/anneal/relax;
  runs `{MD_RUNS}` (start cell, temperatures K, snapshots), snapshots every
  {MD_SNAPSHOT_SPACING_FS:g} fs over the second half; seed derive_seed(master, "proxy-md", cell, T).

## Content

| config_type | structures | atoms per cell | force RMS (eV/Å) | max abs force (eV/Å) |
|---|---|---|---|---|
{rows}

Snapshots of one MD run are correlated (100 fs apart); a split by structure
puts neighbours of one trajectory in train and test alike, for every model.

Regenerate: `.venv/bin/python benchmarks/chgnet_proxy.py --seed {master_seed}` (creates
`benchmarks/.venv-uip` with `{' '.join(CHGNET_REQUIREMENTS)}` if missing).
"""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def records(stats: dict, frames: list, report: dict, master_seed: int) -> list[dict]:
    date = dt.date.today().isoformat()
    base = {"ranks": 1, "threads": 1, "baseline": True, "date": date, "machine": MACHINE}
    notes = f"CHGNet {report['chgnet_version']} labels (proxy, not DFT); seed {master_seed}"
    out = [dict(base, metric="labelling_atoms_per_s", value=report["n_atoms"] / report["seconds"],
                unit="atoms/s", system=f"chgnet-{report['chgnet_version']}-ase",
                n_atoms=report["n_atoms"], notes=notes + "; energy+forces+stress, one structure per call")]
    out.append(dict(base, metric="n_structures", value=float(len(frames)), unit="structures",
                    system="chgnet_proxy_dataset", n_atoms=sum(len(a) for a in frames), baseline=False,
                    notes=notes))
    for name, s in stats.items():
        out.append(dict(base, metric="force_rms_eV_per_A", value=s["force_rms_eV_A"], unit="eV/Å",
                        system="chgnet_proxy_dataset", n_atoms=max(s["n_atoms"]), baseline=False,
                        config_type=name, n_structures=s["n_structures"], notes=notes))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=20231, help="master seed (config/config.yaml 'seed')")
    parser.add_argument("--workdir", type=Path, default=HERE / "work" / "chgnet_proxy")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label-worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.label_worker:
        label_worker(*args.label_worker, threads=args.threads)
        return 0

    from bornfield.structures.builder import check_unique_ids
    from bornfield.structures.io import write_json_atomic

    args.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    images = build_structures(args.seed, args.workdir)
    check_unique_ids(images, "chgnet proxy")
    build_seconds = time.perf_counter() - t0
    print(f"built {len(images)} structures in {build_seconds:.0f} s", flush=True)
    frames, report = label(images, args.workdir, args.threads)
    stats = statistics(frames)
    archive = DATA_DIR / ARCHIVE_NAME
    write_archive(frames, archive)
    write_provenance(DATA_DIR / "PROVENANCE.md", archive, frames, report, args.seed, stats, build_seconds)
    write_json_atomic(HERE / "results" / "chgnet_proxy.json", records(stats, frames, report, args.seed))
    print(json.dumps(stats, indent=1))
    print(f"wrote {archive} ({archive.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
