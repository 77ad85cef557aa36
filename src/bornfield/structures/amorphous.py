"""Amorphous Li3PO4 cells for the campaign: one melt-quench per (kind, index).

``kind`` is ``"dft"`` (small cells labelled by DFT, with melt snapshots) or
``"md"`` (large cells for MD). The seed of cell ``index`` is
``derive_seed(master_seed, "amorphous", kind, n_atoms, index)``: it seeds the
random start and the initial velocities, and is stored in ``info["seed"]``.
"""

from __future__ import annotations

import logging

from ase import Atoms

from bornfield.errors import ConfigError
from bornfield.structures.identity import annotate, derive_seed
from bornfield.structures.meltquench import (
    MeltQuenchEngine, MeltQuenchProtocol, MeltQuenchResult, crystal_start, get_engine, random_start)

log = logging.getLogger(__name__)

KINDS = ("dft", "md")


def cell_spec(amorphous: dict, kind: str) -> dict:
    """The ``dft_cells`` / ``md_cells`` sub-section for ``kind``."""
    if kind not in KINDS:
        raise ConfigError(f"amorphous cell kind must be one of {list(KINDS)}, got '{kind}'")
    return amorphous[f"{kind}_cells"]


def amorphous_seed(master_seed: int, kind: str, n_atoms: int, index: int) -> int:
    return derive_seed(master_seed, "amorphous", kind, n_atoms, index)


def starting_cell(amorphous: dict, n_atoms: int, seed: int) -> Atoms:
    if amorphous["start"] == "random":
        return random_start(n_atoms, amorphous["initial_density_g_cm3"], seed, amorphous["min_separation_A"])
    return crystal_start(n_atoms, amorphous["initial_density_g_cm3"])


def make_amorphous_cell(amorphous: dict, master_seed: int, kind: str, index: int,
                        engine: str | MeltQuenchEngine | None = None,
                        lammps_log: str | None = None) -> tuple[Atoms, list[Atoms], MeltQuenchResult]:
    """Melt-quench one cell.

    Args:
        amorphous: validated ``structures.amorphous`` settings.
        master_seed: campaign seed.
        kind: ``"dft"`` or ``"md"``.
        index: cell number (the stage makes 0 .. ``<kind>_cells.seeds`` - 1).
        engine: engine name or object (default: ``amorphous["engine"]``).
        lammps_log: LAMMPS log file of the built-in engine.

    Returns:
        the final cell (config_type ``amorphous``), the melt snapshots
        (config_type ``melt``, DFT cells only) and the raw engine result.
    """
    spec = cell_spec(amorphous, kind)
    if index < 0:
        raise ConfigError(f"amorphous {kind} cell index {index} must be >= 0")
    n_atoms = spec["n_atoms"]
    seed = amorphous_seed(master_seed, kind, n_atoms, index)
    engine_obj = get_engine(engine if engine is not None else amorphous["engine"], amorphous, lammps_log)
    protocol = MeltQuenchProtocol.from_settings(amorphous)
    start = starting_cell(amorphous, n_atoms, seed)
    n_snapshots = spec["melt_snapshots"] if kind == "dft" else 0  # MD cells keep no melt snapshots
    log.info("melt-quench %s cell %d: %d atoms, seed %d, engine %s", kind, index, n_atoms, seed, engine_obj.name)
    result = engine_obj.melt_quench(start, protocol, seed, n_snapshots)
    source = (f"melt-quench ({engine_obj.name}) {kind} cell {index}: start {amorphous['start']} at "
              f"{amorphous['initial_density_g_cm3']} g/cm3, {protocol.melt_temperature_K:g} K for "
              f"{protocol.melt_time_ps:g} ps, quench {protocol.quench_rate_K_per_ps:g} K/ps, NPT "
              f"{protocol.anneal_pressure_bar:g} bar {protocol.anneal_time_ps:g} ps")
    extra = {}
    if "pressure_before_anneal_bar" in result.summary:
        extra["pressure_before_anneal_bar"] = round(float(result.summary["pressure_before_anneal_bar"]), 1)
    anneal = [row["density_g_cm3"] for row in result.trace if row.get("stage") == "anneal"]
    if anneal:  # thermal average at final_temperature_K, second half of the NPT anneal
        extra["anneal_density_g_cm3"] = round(float(sum(anneal[len(anneal) // 2:]) / len(anneal[len(anneal) // 2:])), 4)
    final = annotate(result.final, config_type="amorphous", seed=seed, source=source, charge=0,
                     amorphous_kind=kind, amorphous_index=index, engine=engine_obj.name, **extra)
    snapshots = [
        annotate(snap, config_type="melt", seed=seed, source=f"melt snapshot at {snap.info.get('melt_time_ps')} ps of {source}",
                 charge=0, amorphous_kind=kind, amorphous_index=index, engine=engine_obj.name)
        for snap in result.melt_snapshots
    ]
    return final, snapshots, result
