"""The labelling queue: structures still to label, ordered by value, each with its kind and cost.

``queue.extxyz`` in a ledger directory holds every planned structure in label order. Per
structure, ``info``: ``queue_index`` (position), ``label_kind`` (``dfpt``: SCF + Born charges;
``scf``: energy, forces, stress only), ``family`` (the design family it came from),
``config_type``, ``structure_id``, ``seed``, ``source``, ``charge`` (e), ``est_core_s`` (core-
seconds from :func:`bornfield.estimate.dft_job_core_seconds`), ``split`` (``test``: the fixed
held-out set, never trained on; ``train``) and what made it (``thermal_K``, ``strain``,
``melt_seed``...). A structure is done when the ledger holds its
job (or, for an SCF request, the DFPT job of the same structure).

The base set (:func:`base_set`) follows the cost laws: Born-charge labels in 15-32-atom cells
(the 16-atom beta cell with its 2x2x3 mesh gives the most atom environments per core-hour),
SCF-only labels in 32-64-atom amorphous, defect and high-temperature cells for the potential.
Thermal displacements are snapshots of classical NVT MD with the Pedone potential at the
stated temperature (correlated displacements, not independent Gaussian noise).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.geometry import find_mic

from bornfield.errors import ConfigError, InputFileError
from bornfield.structures.crystals import build_crystal
from bornfield.structures.defects import make_li_frenkel, make_li_interstitial, make_li_vacancy
from bornfield.structures.identity import annotate, derive_seed
from bornfield.structures.io import read_structures, write_extxyz_atomic
from bornfield.structures.perturb import random_strain_tensor

LOG = logging.getLogger(__name__)

KINDS = ("dfpt", "scf")
#: two positions in a position-to-label sequence, the DFPT:SCF ratio of the interleaved order
DFPT_PER_SCF = 2
NEAR_DUPLICATE_A = 0.01
#: share of each family's structures held out as the fixed test set
TEST_FRACTION = 0.15


@dataclass(frozen=True)
class Family:
    """A designed group of structures: a name, the label kind and a builder ``(seed) -> list[Atoms]``."""

    name: str
    kind: str
    build: Callable[[int], list[Atoms]]


def _engine():
    from bornfield.structures.meltquench import PedoneLammpsEngine

    return PedoneLammpsEngine.defaults(progress=False)


def _thermal(host: Atoms, temperatures: tuple[float, ...], per_temperature: int, seed: int, tag: str) -> list[Atoms]:
    out = []
    for temperature in temperatures:
        snaps = _engine().thermal_snapshots(host, temperature, per_temperature, derive_seed(seed, tag, temperature),
                                            equilibration_ps=2.0, interval_ps=1.0)
        for snap in snaps:
            snap.info.update({k: v for k, v in host.info.items() if k in ("charge", "defect")})
            snap.info["thermal_K"] = float(temperature)
            out.append(snap)
    return out


def _melt_quenched(n_atoms: int, seeds: int, melt_snapshots: int, thermal: tuple[float, ...], seed: int, tag: str) -> list[Atoms]:
    """Pedone melt-quench cells of ``n_atoms`` (3000 K melt, 100 K/ps quench, relaxed) + melt and thermal snapshots."""
    from bornfield.structures.meltquench import MeltQuenchProtocol, random_start

    protocol = MeltQuenchProtocol.defaults(melt_temperature_K=3000.0, melt_time_ps=10.0, quench_rate_K_per_ps=100.0,
                                           final_temperature_K=300.0, anneal_time_ps=5.0, timestep_fs=1.0)
    out = []
    for index in range(seeds):
        cell_seed = derive_seed(seed, tag, n_atoms, index)
        start = random_start(n_atoms, 2.47, cell_seed)
        result = _engine().melt_quench(start, protocol, cell_seed, melt_snapshots)
        final = result.final
        final.info.update(config_type="amorphous", melt_seed=cell_seed, charge=0)
        out.append(final)
        for snap in result.melt_snapshots:
            snap.info.update(config_type="melt", melt_seed=cell_seed, charge=0, thermal_K=3000.0)
            out.append(snap)
        for snap in _thermal(final, thermal, 1, cell_seed, "quenched"):
            snap.info.update(config_type="amorphous", melt_seed=cell_seed)
            out.append(snap)
    return out


def _defects(host: Atoms, seed: int, temperatures: tuple[float, ...], per_temperature: int) -> list[Atoms]:
    out = []
    makers = {
        "beta_vacancy": lambda s: make_li_vacancy(host, s),
        "beta_interstitial": lambda s: make_li_interstitial(host, s),
        "beta_frenkel": lambda s: make_li_frenkel(host, s, min_separation=2.5),
    }
    for name, make in makers.items():
        defect, _ = make(derive_seed(seed, name, len(host)))
        for snap in _thermal(defect, temperatures, per_temperature, seed, name):
            snap.info["config_type"] = name
            out.append(snap)
    return out


def _with_type(frames: list[Atoms], config_type: str) -> list[Atoms]:
    for atoms in frames:
        atoms.info.setdefault("config_type", config_type)
    return frames


def _strained(seed: int) -> list[Atoms]:
    """300 K beta snapshots under random symmetric strains scaled to a largest component of 2 %,
    alternately expanding and compressing the cell."""
    out = []
    for k, snap in enumerate(_thermal(build_crystal("beta"), (300.0,), 4, seed, "strain")):
        epsilon = random_strain_tensor(0.02, derive_seed(seed, "strain", k))
        epsilon *= 0.02 / np.abs(epsilon).max()
        if np.sign(np.trace(epsilon)) != (1, -1)[k % 2]:
            epsilon = -epsilon
        strained = snap.copy()
        strained.set_cell(snap.cell[:] @ (np.eye(3) + epsilon), scale_atoms=True)
        strained.info.update(config_type="beta", strain=epsilon.round(6).reshape(9).tolist(), perturbation="strain")
        out.append(strained)
    return out


def base_families() -> list[Family]:
    """The designed base set, in order of value within each label kind."""
    beta = build_crystal("beta")
    gamma = build_crystal("gamma")
    beta_32 = beta.repeat((1, 1, 2))
    return [
        Family("beta_ideal", "dfpt", lambda s: _with_type([beta.copy()], "beta")),
        Family("beta_thermal", "dfpt", lambda s: _with_type(_thermal(beta, (300.0, 600.0, 900.0, 1200.0), 3, s, "beta"), "beta")),
        Family("amorphous_16", "dfpt", lambda s: _melt_quenched(16, 4, 1, (), s, "amorphous16")),
        Family("beta_defects_16", "dfpt", lambda s: _defects(beta, s, (600.0,), 2)),
        Family("beta_strained", "dfpt", _strained),
        Family("gamma", "dfpt", lambda s: _with_type([gamma.copy(), *_thermal(gamma, (600.0,), 1, s, "gamma")], "gamma")),
        Family("amorphous_64", "scf", lambda s: _melt_quenched(64, 8, 3, (600.0, 900.0), s, "amorphous64")),
        Family("amorphous_32", "scf", lambda s: _melt_quenched(32, 6, 2, (900.0,), s, "amorphous32")),
        Family("beta_defects_32", "scf", lambda s: _defects(beta_32, s, (600.0, 900.0), 2)),
        Family("beta_hot_32", "scf", lambda s: _with_type(_thermal(beta_32, (600.0, 900.0, 1200.0, 1500.0), 2, s, "beta32"), "beta")),
        Family("gamma_thermal", "scf", lambda s: _with_type(_thermal(gamma, (300.0, 900.0, 1200.0), 1, s, "gamma_hot"), "gamma")),
    ]


def interleave(families: list[tuple[Family, list[Atoms]]]) -> list[Atoms]:
    """Label order: round robin over the families of a kind, ``DFPT_PER_SCF`` DFPT jobs per SCF job."""
    def round_robin(kind: str) -> Iterator[Atoms]:
        lists = [list(frames) for fam, frames in families if fam.kind == kind]
        while any(lists):
            for frames in lists:
                if frames:
                    yield frames.pop(0)

    dfpt, scf = round_robin("dfpt"), round_robin("scf")
    ordered: list[Atoms] = []
    exhausted = {"dfpt": False, "scf": False}
    while not all(exhausted.values()):
        for kind, source, count in (("dfpt", dfpt, DFPT_PER_SCF), ("scf", scf, 1)):
            for _ in range(count):
                item = next(source, None)
                if item is None:
                    exhausted[kind] = True
                    break
                ordered.append(item)
    return ordered


def near_duplicate(a: Atoms, b: Atoms, tolerance_A: float = NEAR_DUPLICATE_A) -> bool:
    """Same species in the same order, cells within ``tolerance_A`` and every atom within it (minimum image)."""
    if len(a) != len(b) or (a.numbers != b.numbers).any():
        return False
    if np.abs(a.cell[:] - b.cell[:]).max() > tolerance_A:
        return False
    delta, _ = find_mic(a.positions - b.positions, a.cell, pbc=True)
    return float(np.linalg.norm(delta, axis=1).max()) <= tolerance_A


def deduplicate(frames: list[Atoms], existing: list[Atoms] = ()) -> list[Atoms]:
    """``frames`` without near-duplicates of each other or of ``existing`` (first occurrence kept)."""
    kept: list[Atoms] = []
    for atoms in frames:
        if any(near_duplicate(atoms, other) for other in (*existing, *kept)):
            LOG.info("queue: %s is a near-duplicate, dropped", atoms.info.get("structure_id"))
            continue
        kept.append(atoms)
    return kept


def label_kind_for(atoms: Atoms) -> str:
    """The kind a structure is labelled with: DFPT only in neutral cells, SCF otherwise.

    The Born charges of a charged cell sum to its charge, not to zero, so no sum-rule
    correction applies and they cannot train the Born model; such a cell gets forces only.
    """
    kind = atoms.info["label_kind"]
    if kind == "dfpt" and int(atoms.info.get("charge", 0) or 0) != 0:
        LOG.info("queue: %s has charge %s, labelled SCF only (Born charges need a neutral cell)",
                 atoms.info.get("structure_id"), atoms.info["charge"])
        return "scf"
    return kind


def revise_pending(queue: list[Atoms], is_pending: Callable[[Atoms], bool], settings) -> list[Atoms]:
    """The queue with every pending entry re-annotated by the current rules (kind, cost); labelled entries and the order stay."""
    revised = []
    for atoms in queue:
        if is_pending(atoms):
            atoms = finalise([atoms], settings, int(atoms.info["queue_index"]))[0]
        revised.append(atoms)
    return revised


def finalise(frames: list[Atoms], settings, start_index: int = 0) -> list[Atoms]:
    """Annotate queue entries: ids, kind, cost (``settings``: the ledger's DFTSettings)."""
    from bornfield.estimate import dft_job_core_seconds
    from bornfield.ledger.store import settings_for_kind

    out = []
    for offset, atoms in enumerate(frames):
        kind = atoms.info["label_kind"]
        if kind not in KINDS:
            raise ConfigError(f"queue entry {offset}: label_kind {kind!r}, expected one of {KINDS}")
        kind = atoms.info["label_kind"] = label_kind_for(atoms)
        scf_s, ph_s = dft_job_core_seconds(len(atoms), atoms.cell[:], settings_for_kind(settings, kind))
        seed = atoms.info.get("seed", -1)
        source = atoms.info.get("source", f"bornfield.ledger.queue family {atoms.info['family']}")
        annotate(atoms, config_type=atoms.info["config_type"], seed=None if seed == -1 else seed, source=source,
                 queue_index=start_index + offset, est_core_s=round(scf_s + ph_s, 1),
                 charge=int(atoms.info.get("charge", 0) or 0))
        out.append(atoms)
    return out


def assign_test_split(frames: list[Atoms], seed: int, fraction: float = TEST_FRACTION) -> None:
    """Mark a fixed held-out set: ``info["split"]`` = ``test`` or ``train`` (train includes validation).

    Correlated structures are held out together: the cells and snapshots of one melt-quench
    (``melt_seed``) form one group, every other structure is its own group. Per family, groups
    are drawn in a seeded order while that brings the held-out share nearer to ``fraction``;
    families of fewer than 4 structures stay in training.
    """
    by_family: dict[str, dict[str, list[Atoms]]] = {}
    for atoms in frames:
        group = str(atoms.info["melt_seed"] if "melt_seed" in atoms.info else atoms.info["structure_id"])
        by_family.setdefault(atoms.info["family"], {}).setdefault(group, []).append(atoms)
        atoms.info["split"] = "train"
    for family, groups in by_family.items():
        total = sum(len(g) for g in groups.values())
        if total < 4:
            continue
        held = 0
        for group in sorted(groups, key=lambda g: derive_seed(seed, "test_split", family, g)):
            if held + len(groups[group]) / 2 >= fraction * total:  # nearest to the target share
                break
            for atoms in groups[group]:
                atoms.info["split"] = "test"
            held += len(groups[group])


def _build_family(family: Family, family_seed: int) -> list[Atoms]:
    frames = family.build(family_seed)
    for atoms in frames:
        atoms.wrap()
        atoms.info["family"] = family.name
        atoms.info["label_kind"] = family.kind
        atoms.info.setdefault("seed", family_seed)
    LOG.info("queue family %s (%s): %d structures", family.name, family.kind, len(frames))
    return frames


def build_base_queue(settings, seed: int, families: list[Family] | None = None) -> list[Atoms]:
    """Every base-set structure, de-duplicated, with its fixed test/train split, in label order."""
    built = [(family, _build_family(family, derive_seed(seed, "ledger", family.name)))
             for family in families or base_families()]
    frames = deduplicate(interleave(built))
    assign_test_split(frames, seed)
    return finalise(frames, settings)


def build_family_batch(name: str, seed: int, batch: int, families: list[Family] | None = None) -> list[Atoms]:
    """More structures of base family ``name``, built as the base set's with fresh seeds.

    ``batch`` (>= 1) numbers the extensions: the same (seed, name, batch) gives the same
    structures, so an extension is reproducible and two batches never repeat each other.
    The batch's own held-out share is drawn as in the base set (:func:`assign_test_split`).
    Not yet de-duplicated or annotated: :func:`append_to_queue` does both.
    """
    by_name = {family.name: family for family in families or base_families()}
    if name not in by_name:
        raise ConfigError(f"ledger family {name!r}: expected one of {sorted(by_name)}")
    if batch < 1:
        raise ConfigError(f"ledger family batch {batch}: expected >= 1 (batch 0 is the base queue)")
    batch_seed = derive_seed(seed, "ledger", name, "batch", batch)
    frames = _build_family(by_name[name], batch_seed)
    for atoms in frames:
        atoms.info["family_batch"] = batch
    assign_test_split(frames, batch_seed)
    return frames


def has_rare_oxygen(atoms: Atoms, p_o_cutoff: float = 2.0) -> bool:
    """True if the structure holds a bridging P–O–P oxygen or an oxygen bonded to no P
    (P–O within ``p_o_cutoff`` Å): environments the ideal orthophosphate lacks."""
    from bornfield.structures.analysis import phosphate_units

    units = phosphate_units(atoms, p_o_cutoff)
    return units["bridging_O"] > 0 or units["free_O"] > 0


def promote(queue: list[Atoms], chosen: Callable[[Atoms], bool], is_pending: Callable[[Atoms], bool]) -> int:
    """Move the chosen pending entries ahead of the other pending entries (in place, each group
    keeps its order; labelled entries keep their positions). Returns how many were chosen."""
    pending = sorted((a for a in queue if is_pending(a)), key=lambda a: int(a.info["queue_index"]))
    flags = [bool(chosen(a)) for a in pending]
    first = [a for a, flag in zip(pending, flags) if flag]
    rest = [a for a, flag in zip(pending, flags) if not flag]
    slots = [int(a.info["queue_index"]) for a in pending]
    for atoms, index in zip(first + rest, slots):
        atoms.info["queue_index"] = index
    return len(first)


def read_queue(path: str | Path) -> list[Atoms]:
    """Queue entries sorted by ``queue_index`` (empty list if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    frames = read_structures(path, require_info=False)
    for index, atoms in enumerate(frames):
        missing = [k for k in ("queue_index", "label_kind", "est_core_s", "config_type") if k not in atoms.info]
        if missing:
            raise InputFileError(f"{path}: frame {index} lacks queue keys {missing}")
    return sorted(frames, key=lambda a: int(a.info["queue_index"]))


def write_queue(path: str | Path, frames: list[Atoms]) -> None:
    """Write the whole queue atomically."""
    write_extxyz_atomic(path, sorted(frames, key=lambda a: int(a.info["queue_index"])))


def append_to_queue(path: str | Path, new: list[Atoms], settings,
                    is_pending: Callable[[Atoms], bool] | None = None) -> list[Atoms]:
    """Add structures (e.g. active-learning picks, ``info["label_kind"]`` set) after de-duplication.

    By default they go to the end of the queue. With ``is_pending`` they go ahead of every
    pending entry: the pending entries and the new ones share the pending entries' positions
    plus new ones at the end, new first; labelled entries keep their positions.
    """
    queue = read_queue(path)
    start = 1 + max((int(a.info["queue_index"]) for a in queue), default=-1)
    for atoms in new:
        atoms.info.setdefault("family", "active_learning")
    added = finalise(deduplicate(new, queue), settings, start)
    if is_pending is not None:
        pending = [a for a in queue if is_pending(a)]
        slots = sorted(int(a.info["queue_index"]) for a in pending + added)
        for atoms, index in zip(added + pending, slots):
            atoms.info["queue_index"] = index
    write_queue(path, queue + added)
    return added
