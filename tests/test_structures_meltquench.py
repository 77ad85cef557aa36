"""STRUCTURES stage, LAMMPS part: Pedone potential on the crystals, a real tiny melt-quench,
the engine hook, gathering and the structure report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms

from bornfield.cli import main
from bornfield.config import validate_section
from bornfield.errors import ConfigError
from bornfield.structures.amorphous import make_amorphous_cell
from bornfield.structures.crystals import build_crystal, density_g_cm3
from bornfield.structures.io import read_structures
from bornfield.structures.meltquench import (
    MeltQuenchProtocol, MeltQuenchResult, PedoneLammpsEngine, get_engine, random_start)
from bornfield.structures.report import build_report
from bornfield.structures.validation import validate_pedone_on_crystals

TINY = {
    "phases": ["beta", "amorphous"],
    "md_supercell": {"target_atoms": 16},
    "dft_cells": {"crystals": ["beta"], "defects": []},
    "perturbations": {"rattle_copies": 1, "strain_copies": 0},
    "amorphous": {
        "dft_cells": {"n_atoms": 32, "seeds": 1, "melt_snapshots": 2},
        "md_cells": {"n_atoms": 32, "seeds": 1},
        "melt_time_ps": 0.6, "quench_rate_K_per_ps": 5000, "anneal_time_ps": 0.4,
        "lammps": {"cutoff_A": 7.0, "kspace_accuracy": 1e-4, "thermo_every": 100},
    },
}


def test_pedone_energy_matches_a_direct_evaluation_for_a_dimer():
    """LAMMPS pair_coeff order (D0, alpha, r0, C0) gives the Pedone P–O pair energy.

    A P–O pair is charged (+1.8 e), so its periodic energy carries an
    r-independent background term: compare energy *differences* between two
    separations with the analytic Pedone + bare Coulomb difference (the
    remaining image term changes by < 0.01 eV between 1.5 and 2.2 Å in a 30 Å box).
    """
    from bornfield.structures.meltquench import PEDONE_CHARGES, PEDONE_PAIRS

    engine = PedoneLammpsEngine(cutoff=12.0, kspace_accuracy=1e-6, thermo_every=500, progress=False)
    d0, alpha, r0, c0 = PEDONE_PAIRS[("P", "O")]

    def analytic(r):
        short = d0 * (np.exp(-2 * alpha * (r - r0)) - 2 * np.exp(-alpha * (r - r0))) + c0 / r**12
        return short + 14.399645 * PEDONE_CHARGES["P"] * PEDONE_CHARGES["O"] / r

    energies = []
    for r in (1.5, 2.2):
        dimer = Atoms("PO", positions=[[10, 10, 10], [10 + r, 10, 10]], cell=[30.0] * 3, pbc=True)
        energy, forces, _ = engine.energy_forces(dimer)
        energies.append(energy)
        assert forces[0] == pytest.approx(-forces[1], abs=1e-6)
    assert energies[0] - energies[1] == pytest.approx(analytic(1.5) - analytic(2.2), abs=0.02)


def test_pedone_potential_reproduces_the_crystals():
    """Box relaxation keeps both crystals within 3 % of experiment, with intact PO4 tetrahedra."""
    result = validate_pedone_on_crystals(validate_section({}, "structures")["amorphous"]["lammps"], target_atoms=64)
    assert result["all_pass"], result
    for phase, record in result["phases"].items():
        assert max(abs(x) for x in record["relative_deviation"]) < 0.03, (phase, record)
        assert record["P-O_coordination"] == 4.0
        assert 1.48 < record["P-O_bond_range_A"][0] <= record["P-O_bond_range_A"][1] < 1.58
        assert record["Li-O_coordination"] == pytest.approx(4.0)
        assert record["spacegroup_relaxed"] == record["spacegroup_experiment"]


def test_random_start_respects_density_and_separation():
    atoms = random_start(64, 2.47, seed=4, min_separation=1.6)
    assert density_g_cm3(atoms) == pytest.approx(2.47, rel=1e-9)
    assert atoms.get_all_distances(mic=True)[np.triu_indices(64, 1)].min() >= 1.6
    counts = atoms.symbols.formula.count()
    assert counts == {"Li": 24, "P": 8, "O": 32}
    with pytest.raises(ConfigError, match="multiple of 8"):
        random_start(30, 2.47, seed=1)


def test_tiny_melt_quench_in_lammps_is_physical_and_reproducible():
    settings = validate_section(TINY, "structures")["amorphous"]
    final, snaps, result = make_amorphous_cell(settings, master_seed=5, kind="dft", index=0)
    again, _, _ = make_amorphous_cell(settings, master_seed=5, kind="dft", index=0)
    assert final.info["structure_id"] == again.info["structure_id"], "same seed, same glass"
    assert final.info["config_type"] == "amorphous" and final.info["charge"] == 0
    assert final.get_chemical_formula() == "Li12O16P4"
    assert [s.info["config_type"] for s in snaps] == ["melt", "melt"]
    stages = [row["stage"] for row in result.trace]
    assert stages[0] == "melt" and "quench" in stages and "anneal" in stages and stages[-1] == "relax"
    melt_t = np.mean([row["temperature_K"] for row in result.trace if row["stage"] == "melt"])
    assert 2000 < melt_t < 4000
    # the quench ramps the thermostat target over the whole segment (not per chunk)
    quench_t = [row["temperature_K"] for row in result.trace if row["stage"] == "quench"]
    assert quench_t[0] > 1500 and quench_t[-1] < 1200
    # even a 1-ps quench keeps PO4 tetrahedra and a condensed, plausible density
    report = build_report([final], "tiny", validate_section({}, "structures")["report"])
    assert report["metrics"]["P-O_coordination"]["mean"] == pytest.approx(4.0, abs=0.3)
    assert 1.8 < report["metrics"]["density_g_cm3"]["mean"] < 2.8
    assert 1.45 < report["metrics"]["P-O_first_peak_A"]["mean"] < 1.6
    assert abs(result.summary["final_pressure_bar"]) < 2000
    assert 1.5 < final.info["anneal_density_g_cm3"] < 3.0
    assert final.info["pressure_before_anneal_bar"] == pytest.approx(result.summary["pressure_before_anneal_bar"], abs=0.1)


class _ScalingEngine:
    """A stand-in engine object (the hook a later NN-potential engine uses): it only rescales the start."""

    name = "scale"

    def melt_quench(self, atoms, protocol, seed, n_melt_snapshots):
        out = atoms.copy()
        out.set_cell(atoms.cell[:] * 1.01, scale_atoms=True)
        return MeltQuenchResult(final=out, melt_snapshots=[atoms.copy() for _ in range(n_melt_snapshots)],
                                trace=[], summary={"pressure_before_anneal_bar": 0.0})


def test_engine_hook_accepts_an_object():
    settings = validate_section(TINY, "structures")["amorphous"]
    engine = _ScalingEngine()
    assert get_engine(engine, settings) is engine
    final, snaps, _ = make_amorphous_cell(settings, 5, "dft", 0, engine=engine)
    assert final.info["engine"] == "scale" and len(snaps) == 2
    with pytest.raises(ConfigError):
        get_engine(object(), settings)
    with pytest.raises(ConfigError, match="engine"):
        get_engine("nequip", settings)
    with pytest.raises(ConfigError, match="index"):
        make_amorphous_cell(settings, 5, "md", -1, engine=engine)
    assert MeltQuenchProtocol.from_settings(settings).quench_time_ps == pytest.approx(2700 / 5000)


def test_cli_build_gather_and_report(tmp_path):
    out = tmp_path / "structures"
    assert main(["structures", "build", "--settings", json.dumps({"structures": TINY}), "--seed", "9",
                 "--output-dir", str(out)]) == 0
    amorphous = read_structures(out / "md_cells" / "amorphous.extxyz")
    assert len(amorphous) == 1 and amorphous[0].info["amorphous_kind"] == "md"
    candidates = read_structures(out / "dft_candidates.extxyz")
    types = [a.info["config_type"] for a in candidates]
    assert types.count("beta") == 2 and types.count("amorphous") == 2 and types.count("melt") == 2
    assert len({a.info["structure_id"] for a in candidates}) == len(candidates)
    json_path, png_path = tmp_path / "report" / "amorphous.json", tmp_path / "report" / "amorphous.png"
    code = main(["structures", "report", "--settings", "{}", "--structures", str(out / "md_cells" / "amorphous.extxyz"),
                 "--set-name", "amorphous", "--report-json", str(json_path), "--report-png", str(png_path)])
    assert code == 0 and png_path.stat().st_size > 10000
    report = json.loads(json_path.read_text())
    assert set(report["acceptance"]) == {"density_g_cm3", "P-O_first_peak_A", "P_fourfold_fraction", "all_pass"}
    assert len(report["rdf"]["r_A"]) == len(report["rdf"]["P-O"])


def test_report_of_crystals_counts_units():
    beta, gamma = build_crystal("beta"), build_crystal("gamma")
    report = build_report([beta, gamma], "crystals", validate_section({}, "structures")["report"])
    m = report["metrics"]
    assert m["P_fourfold_fraction"]["mean"] == 1.0 and m["P2O7_count"]["max"] == 0
    assert m["density_g_cm3"]["values"] == pytest.approx([2.472, 2.445], abs=2e-3)
    assert "acceptance" not in report


def test_p2o7_dimer_is_counted():
    """Two PO4 sharing one O (a pyrophosphate unit) count as one P2O7 and one bridging O."""
    from bornfield.structures.analysis import phosphate_units

    o = 1.55
    positions = [[0, 0, 0], [2 * o, 0, 0], [o, 0, 0],  # P, P, bridging O
                 [-0.5, 1.45, 0], [-0.5, -0.7, 1.2], [-0.5, -0.7, -1.2],
                 [2 * o + 0.5, 1.45, 0], [2 * o + 0.5, -0.7, 1.2], [2 * o + 0.5, -0.7, -1.2]]
    atoms = Atoms("P2O7", positions=np.array(positions) + 10, cell=[20] * 3, pbc=True)
    units = phosphate_units(atoms, 2.0)
    assert units["bridging_O"] == 1 and units["P2O7_count"] == 1 and units["free_O"] == 0
    assert units["P_fourfold_fraction"] == 1.0 and units["isolated_PO4_fraction"] == 0.0
    atoms += Atoms("O", positions=[[15.0, 15.0, 15.0]])  # an oxide ion bonded to no P
    assert phosphate_units(atoms, 2.0)["free_O"] == 1


def test_npt_quench_branch_sets_the_glass_at_the_anneal_pressure():
    """With npt_quench_below_K the low-temperature part of the quench runs NPT (volume changes)."""
    section = json.loads(json.dumps(TINY))
    section["amorphous"].update({"npt_quench_below_K": 1500, "anneal_time_ps": 0.1, "relax": False,
                                 "melt_time_ps": 0.3})
    settings = validate_section(section, "structures")["amorphous"]
    _, _, result = make_amorphous_cell(settings, master_seed=5, kind="md", index=0)
    stages = [row["stage"] for row in result.trace]
    assert "quench" in stages and "quench_npt" in stages
    nvt = [row["density_g_cm3"] for row in result.trace if row["stage"] == "quench"]
    npt = [row["density_g_cm3"] for row in result.trace if row["stage"] == "quench_npt"]
    assert max(abs(d - 2.47) for d in nvt) < 1e-6, "NVT part keeps the start density"
    assert abs(npt[-1] - 2.47) > 0.01, "NPT part lets the volume relax from ~5 GPa"
    # the NVT part ends at 1500 K: (3000 - 1500) K at 5000 K/ps = 0.3 ps after the 0.3-ps melt
    last_nvt = max(row["time_ps"] for row in result.trace if row["stage"] == "quench")
    assert last_nvt == pytest.approx(0.6, abs=1e-9)
