"""QE input writing (ASE writer), k-point density, dft_id, ph.x input, failure classification."""

from __future__ import annotations

import re

import numpy as np
import pytest
from ase.io import read, write
from ase.spacegroup import crystal

from bornfield.dft.inputs import DFTSettings, PwOverrides, compute_dft_id, kpoint_mesh, ph_input_text, write_pw_input
from bornfield.dft.parsers import classify_pw_failure, read_pw_output
from bornfield.dft.runner import RunnerOptions, scf_escalation
from bornfield.errors import ConfigError, InputFileError

PSEUDOS = {"Li": "Li.pbesol-s-kjpaw_psl.0.2.1.UPF", "O": "O.pbesol-n-kjpaw_psl.0.1.UPF", "P": "P.pbesol-n-kjpaw_bornfield.UPF"}


@pytest.fixture
def beta():
    """beta-Li3PO4, Keffer et al. Inorg. Chem. 6, 119 (1967) (LI3PO4_FACTS.md)."""
    return crystal(
        ["Li", "Li", "P", "O", "O", "O"],
        basis=[(0.24810, 0.32770, 0.98600), (0.5, 0.84280, 0.98930), (0, 0.82430, 0),
               (0.20777, 0.68676, 0.89610), (0, 0.10520, 0.90040), (0.5, 0.18140, 0.81720)],
        spacegroup=31, cellpar=[6.1150, 5.2394, 4.8554, 90, 90, 90],
    )


def _namelist_value(text: str, key: str) -> str:
    match = re.search(rf"^\s*{re.escape(key)}\s*=\s*(.+)$", text, re.M)
    assert match, f"{key} not in input"
    return match.group(1).strip()


def test_kpoint_density_gives_the_converged_beta_mesh(beta):
    assert len(beta) == 16
    assert kpoint_mesh(beta, 1.6) == (2, 2, 3)
    assert kpoint_mesh(beta, 0.8) == (1, 1, 2)
    assert kpoint_mesh(beta, 0.1) == (1, 1, 1)
    big = beta.repeat((2, 1, 1))
    assert kpoint_mesh(big, 1.6) == (1, 2, 3)  # density, not a fixed mesh
    with pytest.raises(ConfigError):
        kpoint_mesh(beta, 0.0)


def test_pw_input_carries_every_setting_and_charge(tmp_path, beta):
    settings = DFTSettings.defaults(ecutwfc_Ry=50, ecutrho_Ry=400, conv_thr_per_atom_Ry=1e-11, mixing_beta=0.3, diagonalization="cg")
    charged = beta.copy()
    del charged[0]  # a Li vacancy: V_Li' cell
    charged.info["charge"] = -1.0
    path = tmp_path / "pw.in"
    kpts = write_pw_input(path, charged, settings, PSEUDOS, tmp_path)
    text = path.read_text()
    assert float(_namelist_value(text, "ecutwfc")) == 50
    assert float(_namelist_value(text, "ecutrho")) == 400
    assert float(_namelist_value(text, "tot_charge")) == -1.0
    assert float(_namelist_value(text, "conv_thr")) == pytest.approx(1e-11 * 15)
    assert float(_namelist_value(text, "mixing_beta")) == 0.3
    assert _namelist_value(text, "diagonalization") == "'cg'"
    assert _namelist_value(text, "tprnfor") == ".true."
    assert f"{kpts[0]} {kpts[1]} {kpts[2]}" in text
    # ASE's QE reader gets the same structure back
    back = read(path, format="espresso-in")
    assert np.allclose(back.positions, charged.positions, atol=1e-8)
    assert back.get_chemical_symbols() == charged.get_chemical_symbols()
    neutral = tmp_path / "neutral.in"
    write_pw_input(neutral, beta, settings, PSEUDOS, tmp_path)
    assert "tot_charge" not in neutral.read_text()


def test_restart_and_escalation_overrides(tmp_path, beta):
    settings = DFTSettings.defaults(mixing_beta=0.4, electron_maxstep=50, diagonalization="david")
    assert scf_escalation(settings, 1) == PwOverrides()
    second, third = scf_escalation(settings, 2), scf_escalation(settings, 3)
    assert second.mixing_beta == pytest.approx(0.2) and second.electron_maxstep == 100
    assert third.mixing_beta == pytest.approx(0.1) and third.diagonalization == "cg"
    overrides = PwOverrides(restart=True, max_seconds=600)
    write_pw_input(tmp_path / "pw.in", beta, settings, PSEUDOS, tmp_path, overrides)
    text = (tmp_path / "pw.in").read_text()
    assert _namelist_value(text, "restart_mode") == "'from_scratch'"
    assert _namelist_value(text, "startingpot") == "'file'"
    assert float(_namelist_value(text, "max_seconds")) == 600


def test_missing_pseudopotential_is_a_config_error(tmp_path, beta):
    with pytest.raises(ConfigError, match="P"):
        write_pw_input(tmp_path / "pw.in", beta, DFTSettings.defaults(), {"Li": "a", "O": "b"}, tmp_path)


def test_ph_input_asks_for_efield_response_and_born_charges():
    text = ph_input_text(DFTSettings.defaults(tr2_ph=1e-16))
    assert "epsil = .true." in text and "zeu = .true." in text and "trans = .false." in text
    assert "recover = .false." in text and float(re.search(r"tr2_ph = (\S+)", text).group(1)) == 1e-16
    assert "recover = .true." in ph_input_text(DFTSettings.defaults(), recover=True)
    assert "trans = .true." in ph_input_text(DFTSettings.defaults(gamma_phonons=True))
    assert text.rstrip().endswith("0.0 0.0 0.0")


def test_dft_id_stable_under_extxyz_round_trip_and_sensitive_to_inputs(tmp_path, beta):
    settings = DFTSettings.defaults()
    write(tmp_path / "s.extxyz", beta)
    once = read(tmp_path / "s.extxyz")
    first = compute_dft_id(once, settings, PSEUDOS)
    write(tmp_path / "t.extxyz", once)  # what a job re-reads hashes the same
    assert compute_dft_id(read(tmp_path / "t.extxyz"), settings, PSEUDOS) == first
    beta = once
    moved = beta.copy()
    moved.positions[3, 0] += 1e-4
    assert compute_dft_id(moved, settings, PSEUDOS) != first
    assert compute_dft_id(beta, DFTSettings.defaults(ecutwfc_Ry=50), PSEUDOS) != first
    charged = beta.copy()
    charged.info["charge"] = 1
    assert compute_dft_id(charged, settings, PSEUDOS) != first
    assert len(first) == 16


def test_launcher_command_keeps_the_configured_mpi():
    options = RunnerOptions.defaults(launcher="srun -n 4")
    assert options.command("pw.x", "pw.in") == ["srun", "-n", "4", "pw.x", "-in", "pw.in"]
    serial = RunnerOptions.defaults(launcher="")
    assert serial.command("ph.x", "ph.in") == ["ph.x", "-in", "ph.in"]


def test_real_scf_capped_at_three_iterations_is_classified(data_dir):
    """Real pw.x 6.7 output with electron_maxstep=3 (tests/data/qe/scf_not_converged)."""
    path = data_dir / "qe" / "scf_not_converged" / "pw.out"
    failure = classify_pw_failure(path)
    assert failure is not None and failure[0] == "scf_not_converged"
    assert "3 iterations" in failure[1]
    with pytest.raises(InputFileError, match="not converged"):
        read_pw_output(path)
    assert classify_pw_failure(path.parent / "absent.out")[0] == "missing"


def test_extra_namelists_reach_the_input(tmp_path, beta):
    """A vc-relax's &IONS/&CELL go through the same writer as every SCF (no text surgery)."""
    overrides = PwOverrides(extra_control={"calculation": "vc-relax"},
                            extra_namelists={"ions": {"ion_dynamics": "bfgs"}, "cell": {"cell_dofree": "all"}})
    path = tmp_path / "pw.in"
    write_pw_input(path, beta, DFTSettings.defaults(), {"Li": "Li.UPF", "P": "P.UPF", "O": "O.UPF"}, tmp_path, overrides)
    text = path.read_text()
    assert re.search(r"&IONS\s+ion_dynamics\s*=\s*'bfgs'\s*/", text)
    assert re.search(r"&CELL\s+cell_dofree\s*=\s*'all'\s*/", text)
    assert re.search(r"calculation\s*=\s*'vc-relax'", text)
