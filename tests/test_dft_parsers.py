"""ph.x / pw.x parsers on REAL QE 6.7 output (tests/data/qe, see PROVENANCE.md there).

``beta_rattled16_gamma``: a rattled 16-atom beta-Li3PO4 cell (space group P1, so every
Born-charge component is independent) at Γ only — its large raw ASR residual is a real
case for the QC gate, and one P–O contact of 1.17 Å makes forces above the force gate.
``efield_li2o``: a sheared, rattled Li2O cell (P1) whose run kept ``tensors.xml``.
Corrupted copies of the real files check that truncated or garbled output raises
instead of returning partial numbers.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from ase.io import read

from bornfield.dft.parsers import read_ph_output, read_program_times, read_pw_output, read_tensors_xml
from bornfield.dft.qc import QCThresholds, run_gates
from bornfield.errors import InputFileError


@pytest.fixture(scope="module")
def qe_dir(data_dir):
    return data_dir / "qe" / "beta_rattled16_gamma"


@pytest.fixture(scope="module")
def xml_dir(data_dir):
    return data_dir / "qe" / "efield_li2o"


@pytest.fixture(scope="module")
def ph(qe_dir):
    return read_ph_output(qe_dir / "ph.out")


def test_born_charges_shapes_species_version(ph, qe_dir):
    structure = read(qe_dir / "structure.extxyz")
    n = len(structure)
    assert ph.born_charges.shape == ph.born_charges_raw.shape == (n, 3, 3)
    assert ph.species == structure.get_chemical_symbols()
    assert ph.qe_version == "6.7MaX"
    assert ph.precision == "ph.out"


def test_asr_correction_and_residual(ph):
    assert np.allclose(ph.born_charges.sum(axis=0), 0.0, atol=1e-12)
    assert np.allclose(ph.asr_residual, ph.born_charges_raw.sum(axis=0), atol=1e-12)
    assert np.allclose(ph.born_charges - ph.born_charges_raw, -ph.asr_residual / len(ph.species))


def test_born_charges_are_physical_for_li3po4(ph):
    z = ph.born_charges
    diag = np.einsum("kii->ki", z)
    species = np.array(ph.species)
    assert np.all((diag[species == "Li"] > 0.5) & (diag[species == "Li"] < 1.6))
    assert np.all((diag[species == "P"] > 2.3) & (diag[species == "P"] < 4.2))
    assert np.all(diag[species == "O"] < -0.5)
    assert np.mean(diag[species == "Li"]) == pytest.approx(1.0, abs=0.25)
    # no symmetry: off-diagonals present and Z not symmetric
    assert np.abs(z[:, ~np.eye(3, dtype=bool)]).max() > 0.1
    assert np.abs(z - np.transpose(z, (0, 2, 1))).max() > 0.1
    eps = ph.epsilon_inf
    assert np.allclose(eps, eps.T, atol=1e-6)
    assert np.all((np.linalg.eigvalsh(eps) > 1.8) & (np.linalg.eigvalsh(eps) < 4.0))


def test_printed_rows_are_the_field_direction(ph, qe_dir):
    text = (qe_dir / "ph.out").read_text()
    block = text[text.rindex("Effective charges (d Force / dE)"):]
    first = re.search(r"atom\s+1\s+\S+\s*\n\s*Ex\s*\(\s*(\S+)\s+(\S+)\s+(\S+)\s*\)\s*\n\s*Ey\s*\(\s*(\S+)\s+(\S+)\s+(\S+)", block)
    values = [float(v) for v in first.groups()]
    assert np.allclose(values[:3], ph.born_charges_raw[0, 0, :], atol=1e-12)  # row Ex = Z[0, x, :]
    assert np.allclose(values[3:], ph.born_charges_raw[0, 1, :], atol=1e-12)


def test_tensors_xml_is_transposed_and_agrees_with_ph_out(xml_dir):
    full = read_ph_output(xml_dir / "ph.out")
    printed = read_ph_output(xml_dir / "ph.out", use_tensors_xml=False)
    assert full.precision == "tensors.xml" and printed.precision == "ph.out"
    assert np.abs(printed.born_charges_raw - full.born_charges_raw).max() <= 1.5e-5
    assert np.abs(printed.born_charges_raw - full.born_charges_raw).max() > 0  # more digits
    _, z_xml = read_tensors_xml(xml_dir / "tensors.xml")
    naive = np.transpose(z_xml, (0, 2, 1))  # the blocks as stored, [β, α]
    assert np.abs(naive - printed.born_charges_raw).max() > 5e-3


def test_gamma_only_output_fails_the_gates(ph, qe_dir):
    scf = read_pw_output(qe_dir / "pw.out")
    assert np.abs(ph.asr_residual).max() > 1.0  # Γ-only sampling of a 16-atom cell breaks the ASR badly
    bec = {"asr_residual": ph.asr_residual, "epsilon_inf": ph.epsilon_inf, "born_charges_raw": ph.born_charges_raw}
    qc = run_gates({"energy": scf.energy, "forces": scf.forces}, bec, QCThresholds.defaults(max_asr_residual_e=0.3, max_force_eV_per_A=100))
    assert qc.scf_ok and not qc.bec_ok and "ASR residual" in qc.reasons[0]
    # the 1.17 Å P–O contact of this rattled cell gives ~58 eV/Å: the default force gate rejects it
    assert not run_gates({"energy": scf.energy, "forces": scf.forces}, bec, QCThresholds.defaults()).scf_ok


def test_pw_output_labels(qe_dir):
    scf = read_pw_output(qe_dir / "pw.out")
    assert scf.forces.shape == (16, 3) and np.isfinite(scf.energy)
    assert scf.qe_version == "6.7MaX"
    assert np.abs(scf.forces.sum(axis=0)).max() < 1e-3  # QE removes the net force
    assert np.abs(scf.forces).max() > 0.05  # rattled: real forces (eV/Å)
    assert scf.stress.shape == (6,)
    assert scf.n_scf_iterations > 3


@pytest.mark.parametrize("where", ["early", "inside_born_block", "before_job_done"])
def test_truncated_ph_output_raises(tmp_path, qe_dir, where):
    text = (qe_dir / "ph.out").read_text()
    start = text.rindex("Effective charges (d Force / dE)")
    cut = {
        "early": text[: len(text) // 3],
        "inside_born_block": text[: text.index("atom      9", start)],
        "before_job_done": text[: text.index("JOB DONE")],
    }[where]
    (tmp_path / "ph.out").write_text(cut)
    with pytest.raises(InputFileError, match=re.escape(str(tmp_path / "ph.out"))):
        read_ph_output(tmp_path / "ph.out")


def test_garbled_or_failed_ph_output_raises(tmp_path, qe_dir):
    text = (qe_dir / "ph.out").read_text()
    start = text.rindex("Effective charges (d Force / dE)")
    garbled = text[:start] + re.sub(r"(Ey\s*\(\s*)\S+", r"\1*******", text[start:], count=1)
    (tmp_path / "ph.out").write_text(garbled)
    with pytest.raises(InputFileError, match="garbled"):
        read_ph_output(tmp_path / "ph.out")
    (tmp_path / "ph.out").write_text(text.replace("Program PHONON", "Program XXXXXX"))
    with pytest.raises(InputFileError, match="not a ph.x output"):
        read_ph_output(tmp_path / "ph.out")
    (tmp_path / "ph.out").write_text(text[:start] + "     No convergence has been achieved\n")
    with pytest.raises(InputFileError, match="did not converge"):
        read_ph_output(tmp_path / "ph.out")
    with pytest.raises(InputFileError, match="not found"):
        read_ph_output(tmp_path / "absent.out")


def test_tensors_xml_that_disagrees_is_rejected(tmp_path, xml_dir):
    shutil.copy(xml_dir / "ph.out", tmp_path / "ph.out")
    xml = (xml_dir / "tensors.xml").read_text()
    start = xml.index("<EFFECTIVE_CHARGES_EU")
    body_start = xml.index(">", start) + 1
    first = re.search(r"\S+", xml[body_start:])
    value = float(first.group(0))
    xml = xml[:body_start] + xml[body_start:].replace(first.group(0), f"{value + 0.01:.15E}", 1)
    (tmp_path / "tensors.xml").write_text(xml)
    with pytest.raises(InputFileError, match="disagrees"):
        read_ph_output(tmp_path / "ph.out")


def test_truncated_pw_output_raises(tmp_path, qe_dir):
    text = (qe_dir / "pw.out").read_text()
    (tmp_path / "pw.out").write_text(text[: text.index("convergence has been achieved")])
    with pytest.raises(InputFileError, match="no usable SCF labels"):
        read_pw_output(tmp_path / "pw.out")


def test_program_times_from_real_outputs(data_dir):
    beta = data_dir / "qe" / "beta_rattled16"
    assert read_program_times((beta / "pw.out").read_text()) == pytest.approx((27.22, 90.27))
    assert read_program_times((beta / "ph.out").read_text(), "PHONON") == pytest.approx((233.60, 670.49))
    # hours: "1h24m CPU      2h 8m WALL"
    assert read_program_times((data_dir / "qe" / "vcrelax_beta" / "pw.out").read_text()) == pytest.approx((5040.0, 7680.0))
    # a run killed before its summary line
    text = (beta / "pw.out").read_text()
    assert read_program_times(text[: text.index("PWSCF        :")]) is None
    assert read_program_times(text, "PHONON") is None
