"""Crystal, defect and perturbed cells of the STRUCTURES stage (no MD needed).

Seeds: every random choice uses ``derive_seed(master_seed, <labels>)`` and the
seed is stored in ``info["seed"]`` of the resulting structure.
"""

from __future__ import annotations

import logging

from ase import Atoms

from bornfield.errors import ConfigError
from bornfield.structures.crystals import build_crystal
from bornfield.structures.defects import make_li_frenkel, make_li_vacancy
from bornfield.structures.identity import annotate, derive_seed
from bornfield.structures.perturb import rattle, strain
from bornfield.structures.supercells import build_supercell, choose_repetition

log = logging.getLogger(__name__)

CRYSTAL_PHASES = ("beta", "gamma")
DEFECT_KINDS = ("vacancy", "frenkel")


def split_phase(name: str) -> tuple[str, str | None]:
    """``"beta_vacancy"`` -> ``("beta", "vacancy")``; ``"gamma"`` -> ``("gamma", None)``."""
    crystal, _, kind = name.partition("_")
    if crystal not in CRYSTAL_PHASES or (kind and kind not in DEFECT_KINDS):
        raise ConfigError(f"unknown crystal/defect phase '{name}'")
    return crystal, (kind or None)


def crystal_cell(phase: str, target_atoms: int, max_excess_fraction: float) -> Atoms:
    """Ideal supercell of ``phase`` with at least ``target_atoms`` atoms, annotated."""
    unit = build_crystal(phase)
    reps = choose_repetition(unit, target_atoms, max_excess_fraction)
    cell = build_supercell(unit, reps)
    source = f"{unit.info['source']}; supercell {list(reps)}"
    return annotate(cell, config_type=phase, seed=None, source=source, charge=0)


def phase_cell(name: str, target_atoms: int, max_excess_fraction: float, master_seed: int,
               purpose: str, frenkel_min_separation: float) -> Atoms:
    """A crystal or defect cell by phase name (``beta``, ``beta_vacancy``, ``gamma_frenkel``...).

    ``purpose`` ("md" or "dft") enters the seed so MD and DFT defects are
    independent draws.
    """
    crystal, kind = split_phase(name)
    host = crystal_cell(crystal, target_atoms, max_excess_fraction)
    if kind is None:
        return host
    seed = derive_seed(master_seed, purpose, name)
    if kind == "vacancy":
        defect, detail = make_li_vacancy(host, seed)
    else:
        defect, detail = make_li_frenkel(host, seed, frenkel_min_separation)
    source = f"{host.info['source']}; {detail['defect']} defect"
    for key in ("structure_id",):
        defect.info.pop(key, None)
    return annotate(defect, config_type=name, seed=seed, source=source)


def perturbed_copies(parent: Atoms, settings: dict, master_seed: int) -> list[Atoms]:
    """Rattled and strained copies of ``parent`` (perturbations section of the config).

    The copies keep ``config_type``, record ``info["perturbation"]``,
    ``info["parent_id"]`` and their own seed.
    """
    copies = []
    parent_id = parent.info["structure_id"]
    for k in range(settings["rattle_copies"]):
        seed = derive_seed(master_seed, "rattle", parent_id, k)
        atoms = rattle(parent, settings["rattle_amplitude_A"], seed)
        atoms.info = {key: v for key, v in parent.info.items() if key != "structure_id"}
        copies.append(annotate(
            atoms, config_type=parent.info["config_type"], seed=seed,
            source=f"rattle of {parent_id}", parent_id=parent_id,
            perturbation=f"rattle sigma={settings['rattle_amplitude_A']:g} A"))
    for k in range(settings["strain_copies"]):
        seed = derive_seed(master_seed, "strain", parent_id, k)
        atoms, epsilon = strain(parent, settings["max_strain"], seed, settings["strain_rattle_amplitude_A"])
        atoms.info = {key: v for key, v in parent.info.items() if key != "structure_id"}
        copies.append(annotate(
            atoms, config_type=parent.info["config_type"], seed=seed,
            source=f"strain of {parent_id}", parent_id=parent_id,
            perturbation=(f"strain max={settings['max_strain']:g} "
                          f"rattle sigma={settings['strain_rattle_amplitude_A']:g} A"),
            strain=epsilon.round(8).ravel().tolist()))
    return copies


def build_crystal_md_cells(settings: dict, master_seed: int) -> dict[str, list[Atoms]]:
    """MD cells of every crystal/defect phase in ``settings["phases"]`` (amorphous excluded)."""
    md = settings["md_supercell"]
    cells = {}
    for name in settings["phases"]:
        if name == "amorphous":
            continue
        cells[name] = [phase_cell(name, md["target_atoms"], md["max_excess_fraction"], master_seed,
                                  "md", settings["frenkel_min_separation_A"])]
        log.info("md cell %s: %d atoms", name, len(cells[name][0]))
    return cells


def build_crystal_dft_candidates(settings: dict, master_seed: int) -> list[Atoms]:
    """Ideal and defect DFT cells plus their perturbed copies."""
    dft = settings["dft_cells"]
    parents = [phase_cell(p, dft["crystal_target_atoms"], dft["max_excess_fraction"], master_seed,
                          "dft", settings["frenkel_min_separation_A"]) for p in dft["crystals"]]
    parents += [phase_cell(p, dft["defect_target_atoms"], dft["max_excess_fraction"], master_seed,
                           "dft", settings["frenkel_min_separation_A"]) for p in dft["defects"]]
    out = []
    for parent in parents:
        out.append(parent)
        out.extend(perturbed_copies(parent, settings["perturbations"], master_seed))
    return out


def check_unique_ids(images: list[Atoms], what: str) -> None:
    """Raise if two structures share a structure_id (would be labelled twice)."""
    seen: dict[str, int] = {}
    for index, atoms in enumerate(images):
        sid = atoms.info["structure_id"]
        if sid in seen:
            raise ConfigError(f"{what}: structures {seen[sid]} and {index} are identical (id {sid}); "
                              "check rattle/strain settings (zero amplitude gives duplicates)")
        seen[sid] = index
