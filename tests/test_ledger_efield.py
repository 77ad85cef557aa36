"""Finite-field checks of ledger entries: input writing, the linear/non-linear analysis, storage.

Physics is asserted on REAL QE 6.7 outputs (tests/data/qe/efield_beta, efield_li2o; PROVENANCE.md).
The storage contract runs the real runner, parsers and ledger code with a stand-in ``pw.x``/``ph.x``
that prints the real Li2O outputs: the plain SCF and ph.x for the DFPT entry, and the
finite-field run matching the sign of ``efield_cart(3)`` in its input.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from ase.io import read
from ase.io.espresso import read_fortran_namelist

from bornfield.cli import main
from bornfield.dft.efield import (
    RY_AU_FIELD_V_PER_A, efield_variant, field_of, field_response, response_metrics, species_metrics, string_index,
    zener_drop_eV,
)
from bornfield.dft.inputs import DFTSettings, PwOverrides, compute_dft_id, write_pw_input
from bornfield.dft.parsers import read_berry_field, read_ph_output, read_pw_output
from bornfield.dft.pseudopotentials import provision_pseudopotentials
from bornfield.dft.qc import QCThresholds
from bornfield.dft.runner import DFTJob, RunnerOptions
from bornfield.errors import ConfigError
from bornfield.ledger.efield import EfieldRequest, FiniteFieldFailed, efield_report, estimate, run_efield
from bornfield.ledger.labeller import label
from bornfield.ledger.queue import finalise, write_queue
from bornfield.ledger.store import Ledger, LedgerSpec, identity_of

QE = Path(__file__).parent / "data" / "qe"
BETA, LI2O = QE / "efield_beta", QE / "efield_li2o"
PSEUDOS = {"Li": "Li.pbesol-s-kjpaw_psl.0.2.1.UPF", "O": "O.pbesol-n-kjpaw_psl.0.1.UPF", "P": "P.pbesol-n-kjpaw_bornfield.UPF"}
SETTINGS = DFTSettings.defaults()
#: the Li2O stand-in outputs: ph.x raw ASR residual up to 0.36 e
QC = QCThresholds.defaults(max_asr_residual_e=2.0)
#: the field of the real finite-field runs: efield_cart(3) = ±0.001 Ry a.u.
FIELD_REAL = 0.001 * RY_AU_FIELD_V_PER_A


def _namelists(path: Path) -> dict:
    with open(path) as handle:
        data, cards = read_fortran_namelist(handle)
    kpoints = cards[cards.index("K_POINTS automatic") + 1].split()
    return {**{k: dict(v) for k, v in data.items()}, "kpoints": [int(x) for x in kpoints[:3]]}


# ------------------------------------------------------------------ input writing

def test_finite_field_input_for_0_1_V_per_A(tmp_path):
    beta = read(BETA / "structure.extxyz")
    field = np.array([0.0, 0.0, 0.1])
    variant = efield_variant(beta, field, "z", k_factor=2)
    path = tmp_path / "pw.in"
    kpts = write_pw_input(path, beta, SETTINGS, PSEUDOS, tmp_path, variant.overrides(PwOverrides()), variant.kpoint_multiplier)
    lists = _namelists(path)
    assert lists["control"]["lelfield"] is True and lists["control"]["nberrycyc"] == 3
    assert lists["control"]["tstress"] is False and lists["control"]["tprnfor"] is True
    assert lists["system"]["nosym"] is True and lists["system"]["noinv"] is True
    assert lists["electrons"]["efield_cart(3)"] == pytest.approx(0.1 / 36.3609, rel=2e-5)  # 0.0027502 Ry a.u.
    assert lists["electrons"]["efield_cart(1)"] == 0.0 and lists["electrons"]["efield_cart(2)"] == 0.0
    # the settings' 2x2x3 mesh of beta, doubled along c (the reciprocal vector of z)
    assert kpts == (2, 2, 6) and lists["kpoints"] == [2, 2, 6]
    np.testing.assert_allclose(field_of(variant), field, atol=1e-15)
    # a cell whose z axis is its first lattice vector: the denser strings follow it
    rolled = beta.copy()
    rolled.set_cell(np.roll(np.asarray(beta.cell), 1, axis=0), scale_atoms=True)
    assert string_index(beta, "z") == 2 and string_index(rolled, "z") == 0
    assert efield_variant(rolled, field, "z", k_factor=3).kpoint_multiplier == (3, 1, 1)
    # Berry-phase well defined: drop e E c N_k = 0.1 * 4.8554 * 6 = 2.91 eV, below the 5.9 eV gap
    assert zener_drop_eV(beta, field, kpts) == pytest.approx(0.1 * 4.8554 * 6, rel=1e-6)
    with pytest.raises(ConfigError, match="k-point factor"):
        efield_variant(beta, field, "z", k_factor=0)


@pytest.mark.parametrize(("run", "efield"), [("plus", 0.001), ("minus", -0.001), ("zero", 0.0)])
def test_generated_input_is_the_one_pw_x_ran(tmp_path, run, efield):
    """The namelists written for a field are those of the real runs of tests/data/qe/efield_li2o
    (pw.x accepted them and converged); only prefix and pseudo_dir differ."""
    real = _namelists(LI2O / f"pw_efield_{run}.in")
    atoms = read(LI2O / "structure.extxyz")
    settings = replace(SETTINGS, ecutwfc_Ry=35.0, ecutrho_Ry=280.0, conv_thr_per_atom_Ry=1e-12)
    variant = efield_variant(atoms, np.array([0.0, 0.0, efield * RY_AU_FIELD_V_PER_A]), "z")
    write_pw_input(tmp_path / "pw.in", atoms, settings, PSEUDOS, tmp_path, variant.overrides(PwOverrides()))
    mine = _namelists(tmp_path / "pw.in")
    for section in ("control", "system", "electrons"):
        for key in set(real[section]) | set(mine[section]):
            if key in ("prefix", "pseudo_dir"):
                continue
            ours, theirs = mine[section].get(key), real[section].get(key)
            if isinstance(theirs, float):
                assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15), (section, key)
            else:
                assert ours == theirs, (section, key)
    np.testing.assert_allclose(read_berry_field(LI2O / f"pw_efield_{run}.out"), [0.0, 0.0, efield], atol=1e-12)


def test_finite_field_job_ids_and_refusals(tmp_path):
    beta = read(BETA / "structure.extxyz")
    settings = replace(SETTINGS, born_charges=False)
    plain = compute_dft_id(beta, settings, PSEUDOS)
    ids = {compute_dft_id(beta, settings, PSEUDOS, efield_variant(beta, np.array([0, 0, e]), "z")) for e in (0.1, -0.1, 0.0)}
    ids.add(compute_dft_id(beta, settings, PSEUDOS, efield_variant(beta, np.array([0, 0, 0.1]), "z", k_factor=2)))
    assert len(ids) == 4 and plain not in ids
    assert compute_dft_id(beta, settings, PSEUDOS, None) == plain
    records = {el: type("R", (), {"filename": name, "md5": "0", "source": ""})() for el, name in PSEUDOS.items()}
    with pytest.raises(ConfigError, match="runs no ph.x"):
        DFTJob(beta, SETTINGS, records, tmp_path, tmp_path, RunnerOptions.defaults(launcher=""), None,
               efield_variant(beta, np.zeros(3), "z"))
    for bad in ({"axis": "w"}, {"field_V_per_A": 0.0}, {"field_V_per_A": 2.0}, {"k_factor": 0}):
        with pytest.raises(ConfigError):
            EfieldRequest("f81757544120190d", **bad)
    with pytest.raises(ConfigError, match="16 hex"):
        EfieldRequest("../x")
    assert EfieldRequest("f81757544120190d").name == "f81757544120190d_z_0.1"
    assert EfieldRequest("f81757544120190d", "x", 0.05, 2).name == "f81757544120190d_x_0.05_k2"


# ------------------------------------------------------------------ analysis

def _real_beta():
    forces = [read_pw_output(BETA / f"{name}.out").forces for name in ("pw", "pw_efield_plus", "pw_efield_minus")]
    ph = read_ph_output(BETA / "ph.out")
    field = read_berry_field(BETA / "pw_efield_plus.out") * RY_AU_FIELD_V_PER_A
    np.testing.assert_allclose(read_berry_field(BETA / "pw_efield_minus.out") * RY_AU_FIELD_V_PER_A, -field)
    return forces, ph, field


def test_analysis_of_real_beta_outputs():
    """Rattled 16-atom beta cell, 30/240 Ry, k 1x1x2 (2-point strings), E = 0.0364 V/Å along z,
    F(0) from the plain SCF at the same k points (P1: the same 2 points with or without noinv)."""
    (f0, fp, fm), ph, field = _real_beta()
    z = ph.born_charges
    response = field_response(f0, fp, fm, field, z)
    # the DFPT force is the row α = z of Z times E_z (DESIGN.md), written out without the einsum
    np.testing.assert_allclose(response.linear, z[:, 2, :] * field[2], atol=1e-15)
    np.testing.assert_allclose(response.row(), (fp - fm) / (2 * field[2]), atol=1e-12)
    m = response_metrics(response, z)
    # measured: |ZᵀE| RMS 57.7 meV/Å; odd part off by 4.8 meV/Å RMS (8.3 %, the 2-point Berry-phase
    # string, mostly zz); even (second-order) part 0.098 meV/Å RMS (0.17 %), max 0.23 meV/Å
    assert m["field_force_rms_meV_per_A"] == pytest.approx(57.75, abs=0.05)
    assert m["linear_force_error_rms_meV_per_A"] == pytest.approx(4.79, abs=0.05)
    assert m["linear_force_error_rel"] == pytest.approx(m["linear_force_error_rms_meV_per_A"] / m["field_force_rms_meV_per_A"])
    assert m["nonlinear_force_rms_meV_per_A"] == pytest.approx(0.098, abs=0.005)
    assert m["nonlinear_force_max_meV_per_A"] == pytest.approx(0.226, abs=0.005)
    assert m["nonlinear_force_rel"] < 0.005
    assert m["bec_row_rmse_e"] == pytest.approx(0.076, abs=0.002) and m["bec_row_max_e"] == pytest.approx(0.172, abs=0.002)
    assert m["finite_field_force_sum_meV_per_A"] < 0.01  # the rigid-lattice sum rule holds in the finite-field forces
    # transverse forces (off-diagonal Z, 6.43 meV/Å RMS) agree to 0.27 meV/Å; the transposed tensors
    # (columns instead of rows) miss them by 3.9 meV/Å
    assert m["transverse_force_rms_meV_per_A"] == pytest.approx(6.43, abs=0.01)
    assert m["transverse_force_error_rms_meV_per_A"] < 0.35
    zt = np.transpose(z, (0, 2, 1))
    wrong = response_metrics(field_response(f0, fp, fm, field, zt), zt)
    assert wrong["transverse_force_error_rms_meV_per_A"] > 10 * m["transverse_force_error_rms_meV_per_A"]
    # per species: the atoms split into Li, O, P and their mean squares recombine to the cell's
    per = species_metrics(response, z, ph.species)
    assert {k: v["n_atoms"] for k, v in per.items()} == {"Li": 6, "O": 8, "P": 2}
    for key in ("field_force_rms_meV_per_A", "linear_force_error_rms_meV_per_A", "transverse_force_error_rms_meV_per_A",
                "nonlinear_force_rms_meV_per_A", "bec_row_rmse_e"):
        pooled = np.sqrt(sum(v["n_atoms"] * v[key] ** 2 for v in per.values()) / 16)
        assert pooled == pytest.approx(m[key], rel=1e-12)


def test_analysis_recovers_a_planted_response():
    """Forces built from known linear, quadratic and cubic parts are split back exactly (float64)."""
    rng = np.random.default_rng(3)
    n = 7
    z = rng.normal(size=(n, 3, 3))
    z -= z.mean(axis=0)
    field = np.array([0.03, -0.05, 0.08])
    f0, quad, cubic = rng.normal(size=(n, 3)), 1e-3 * rng.normal(size=(n, 3)), 1e-4 * rng.normal(size=(n, 3))
    linear = np.einsum("kab,a->kb", z, field)
    response = field_response(f0, f0 + linear + quad + cubic, f0 - linear + quad - cubic, field, z)
    np.testing.assert_allclose(response.even, quad, atol=1e-14)
    np.testing.assert_allclose(response.odd - response.linear, cubic, atol=1e-14)
    m = response_metrics(response, z)
    assert m["nonlinear_force_rms_meV_per_A"] == pytest.approx(1e3 * np.sqrt(np.mean(np.sum(quad**2, axis=1))), rel=1e-9)
    assert m["linear_force_error_max_meV_per_A"] == pytest.approx(1e3 * np.linalg.norm(cubic, axis=1).max(), rel=1e-9)
    direction = field / np.linalg.norm(field)
    expected_row = np.einsum("kab,a->kb", z, direction) + cubic / np.linalg.norm(field)
    np.testing.assert_allclose(response.row(), expected_row, atol=1e-12)
    with pytest.raises(ConfigError, match="nonzero"):
        field_response(f0, f0, f0, np.zeros(3), z)
    with pytest.raises(ConfigError, match="shape"):
        field_response(f0[:-1], f0, f0, field, z)


# ------------------------------------------------------------------ storage contract (stand-in QE)

@pytest.fixture(scope="module")
def pseudo(tmp_path_factory):
    path = tmp_path_factory.mktemp("pseudo")
    return path, provision_pseudopotentials(path, "pbesol_paw")


FAKE_PW = """#!/bin/sh
for input; do :; done
field=$(sed -n 's/.*efield_cart(3) *= *//p' "$input")
if ! grep -q lelfield "$input"; then echo plain >> {log}; cat {real}/pw.out; exit 0; fi
case "$field" in
  0.0|0|0.0e+00) run=zero ;;
  -*) run=minus ;;
  *) run=plus ;;
esac
echo $run >> {log}
if [ "$run" = "$FAKE_FAIL" ]; then cat {failing}; exit 0; fi
if [ -n "$FAKE_ALWAYS" ]; then run=$FAKE_ALWAYS; fi
cat {real}/pw_efield_$run.out
"""


@pytest.fixture
def fake_qe(tmp_path, monkeypatch):
    """Stand-in pw.x / ph.x on PATH printing the real Li2O outputs; pw.x calls logged."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "pw_calls.log"
    (bin_dir / "pw.x").write_text(FAKE_PW.format(log=log, real=LI2O, failing=QE / "scf_not_converged" / "pw.out"))
    (bin_dir / "ph.x").write_text(f"#!/bin/sh\ncat {LI2O / 'ph.out'}\n")
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    monkeypatch.delenv("FAKE_ALWAYS", raising=False)
    return log


def _labelled_ledger(root: Path, pseudo, work: Path) -> tuple[Ledger, str, str]:
    """A ledger at production settings with a Li2O DFPT entry and an SCF entry (stand-in outputs)."""
    _, records = pseudo
    ledger = Ledger.create(root, LedgerSpec(identity_of(SETTINGS, records), SETTINGS, records, QC))
    frames = []
    for kind, shift in (("dfpt", 0.0), ("scf", 0.3)):
        atoms = read(LI2O / "structure.extxyz")
        atoms.positions[0, 0] += shift
        atoms.info.clear()
        atoms.info.update(config_type="li2o", label_kind=kind, family=f"li2o_{kind}", seed=-1)
        frames.append(atoms)
    write_queue(root / "queue.extxyz", finalise(frames, SETTINGS))
    label(root, hours=1.0, ranks=1, work_dir=work)
    ids = {ledger.status(i)["settings"]["born_charges"]: i for i in ledger.dft_ids()}
    return ledger, ids[True], ids[False]


def test_finite_field_results_are_stored_once_beside_the_ledger(tmp_path, pseudo, fake_qe):
    work = tmp_path / "work"
    ledger, dfpt_id, scf_id = _labelled_ledger(tmp_path / "ledger", pseudo, work)
    frames_before = len(ledger.frames())
    fake_qe.write_text("")
    field = f"{FIELD_REAL:.12g}"
    args = ["ledger", "efield", "--ledger", str(ledger.root), "--dft-id", dfpt_id, "--field-V-per-A", field,
            "--ranks", "1", "--launcher", "", "--work-dir", str(work)]
    assert main(args) == 0
    request = EfieldRequest(dfpt_id, "z", float(field))
    result = ledger.root / "efield" / request.name
    assert sorted(p.name for p in result.iterdir()) == ["forces.json", "qe.tar.xz", "status.json"]
    assert sorted(p.name for p in (ledger.root / "efield").iterdir()) == [request.name]  # no partial copies
    status = json.loads((result / "status.json").read_text())
    assert status["ranks"] == 1 and status["wall_time_s"] > 0 and status["identity"] == ledger.identity
    assert status["settings"]["born_charges"] is False and status["settings"]["ecutwfc_Ry"] == SETTINGS.ecutwfc_Ry
    assert status["efield_cart_Ry_au"] == pytest.approx(0.001, rel=1e-9) and set(status["runs"]) == {"zero", "plus", "minus"}
    assert status["estimate"]["core_s"] > 0 and status["kpoints"] == [4, 4, 4]
    with tarfile.open(result / "qe.tar.xz") as tar:
        names = set(tar.getnames())
        assert {f"{run}/{f}" for run in ("zero", "plus", "minus") for f in ("pw.in", "pw.out", "status.json")} <= names
        pw_in = tar.extractfile("minus/pw.in").read().decode()
    value = float(pw_in.split("efield_cart(3)")[1].split("=")[1].split()[0])
    assert "lelfield" in pw_in and "nosym" in pw_in and value == pytest.approx(-0.001, rel=1e-9)
    assert fake_qe.read_text().split() == ["zero", "plus", "minus"]  # one pw.x run per field
    assert not (work / "efield" / request.name).exists()  # work directory cleaned
    # never training data, never recomputed
    assert ledger.dft_ids() == sorted([dfpt_id, scf_id]) and len(ledger.frames()) == frames_before
    with pytest.raises(ConfigError, match="never recomputed"):
        run_efield(ledger.root, request, ranks=1, launcher="", work_dir=work)
    assert main(args) == 2
    assert fake_qe.read_text().split() == ["zero", "plus", "minus"]

    # the report: the real Li2O numbers, recomputed here from the QE files
    out = tmp_path / "efield.json"
    assert main(["ledger", "efield-report", "--ledger", str(ledger.root), "--report-json", str(out)]) == 0
    records = json.loads(out.read_text())
    cell = {r["metric"]: r for r in records if "species" not in r}
    f0, fp, fm = (read_pw_output(LI2O / f"pw_efield_{run}.out").forces for run in ("zero", "plus", "minus"))
    z = read_ph_output(LI2O / "ph.out", use_tensors_xml=False).born_charges  # the stand-in ph.x left no tensors.xml
    expected = response_metrics(field_response(f0, fp, fm, np.array([0, 0, FIELD_REAL]), z), z)
    for metric in ("nonlinear_force_rms_meV_per_A", "linear_force_error_rms_meV_per_A", "field_force_rms_meV_per_A",
                   "bec_row_rmse_e", "nonlinear_force_rel"):
        assert cell[metric]["value"] == pytest.approx(expected[metric], rel=1e-6), metric
    # Li2O at 0.036 V/Å: field force 52 meV/Å RMS, second-order part 0.009 meV/Å, odd part off by 12 % (k 2x2x4)
    assert cell["nonlinear_force_rms_meV_per_A"]["value"] == pytest.approx(0.0086, abs=0.0005)
    assert cell["linear_force_error_rel"]["value"] == pytest.approx(0.117, abs=0.002)
    # the E = 0 run reproduces the entry's SCF forces (real Li2O runs: 0.0013 meV/Å)
    assert cell["zero_field_vs_entry_force_max_meV_per_A"]["value"] < 0.01
    record = cell["bec_row_rmse_e"]
    assert record["unit"] == "e" and cell["nonlinear_force_rms_meV_per_A"]["unit"] == "meV/Å"
    for key in ("system", "n_atoms", "ranks", "threads", "baseline", "date", "machine", "notes", "dataset", "dft_id"):
        assert key in record
    assert record["dft_id"] == dfpt_id and record["n_atoms"] == 3 and record["dataset"] == "li3po4-ledger"
    assert {r["species"] for r in records if "species" in r} == {"Li", "O"}
    assert main(["ledger", "status", "--ledger", str(ledger.root), "--report-json", str(tmp_path / "status.json")]) == 0
    assert json.loads((tmp_path / "status.json").read_text())["efield"]["results"] == [request.name]
    # a stored result makes the next estimate use the measured cost ratio: the median over the three
    # runs of CPU core-s per k point against the entry's SCF (Li2O: 5.50 s / 12 k; runs 3.73, 10.65, 17.69 s / 16 k)
    plan = estimate(ledger, request, 1)
    assert plan["cost_ratio_source"].startswith("measured")
    assert plan["cost_ratio"] == pytest.approx((10.65 / 16) / (5.50 / 12), abs=1e-3)
    assert plan["core_s"] == pytest.approx(3 * 5.50 / 12 * np.prod(plan["kpoints"]) * plan["cost_ratio"], rel=1e-3)


def test_refused_entries_and_failed_runs_store_nothing(tmp_path, pseudo, fake_qe, monkeypatch):
    work = tmp_path / "work"
    ledger, dfpt_id, scf_id = _labelled_ledger(tmp_path / "ledger", pseudo, work)
    with pytest.raises(ConfigError, match="SCF entry"):
        run_efield(ledger.root, EfieldRequest(scf_id), ranks=1, launcher="", work_dir=work)
    with pytest.raises(Exception, match="no entry"):
        run_efield(ledger.root, EfieldRequest("0" * 16), ranks=1, launcher="", work_dir=work)
    # an entry copied into a ledger of other settings is refused
    _, records = pseudo
    coarse = replace(SETTINGS, ecutwfc_Ry=30.0, ecutrho_Ry=240.0)
    other = Ledger.create(tmp_path / "coarse", LedgerSpec(identity_of(coarse, records), coarse, records, QC))
    shutil.copytree(ledger.entries_dir / dfpt_id, other.entries_dir / dfpt_id)
    with pytest.raises(ConfigError, match=r"ecutwfc_Ry 70.0 vs 30.0.*refused"):
        run_efield(other.root, EfieldRequest(dfpt_id), ranks=1, launcher="", work_dir=work)

    request = EfieldRequest(dfpt_id, "z", FIELD_REAL)
    fake_qe.write_text("")
    # the -E run never converges (3 escalating attempts): nothing enters the ledger
    monkeypatch.setenv("FAKE_FAIL", "minus")
    with pytest.raises(FiniteFieldFailed, match="'minus' gave no converged forces.*nothing was stored"):
        run_efield(ledger.root, request, ranks=1, launcher="", work_dir=work)
    assert not (ledger.root / "efield").exists() or not any((ledger.root / "efield").iterdir())
    assert fake_qe.read_text().split() == ["zero", "plus", "minus", "minus", "minus"]
    # a failed job stays failed (never rerun); removing it retries only that run, the others are reused
    monkeypatch.delenv("FAKE_FAIL")
    with pytest.raises(FiniteFieldFailed):
        run_efield(ledger.root, request, ranks=1, launcher="", work_dir=work)
    assert len(fake_qe.read_text().split()) == 5
    for job_dir in (work / "efield" / request.name).iterdir():
        if json.loads((job_dir / "status.json").read_text())["state"] == "failed":
            shutil.rmtree(job_dir)
    run_efield(ledger.root, request, ranks=1, launcher="", work_dir=work)
    assert fake_qe.read_text().split()[5:] == ["minus"]
    assert (ledger.root / "efield" / request.name / "status.json").exists()


def test_output_at_another_field_is_refused(tmp_path, pseudo, fake_qe, monkeypatch):
    """A pw.x output whose printed Berry-phase field is not the requested one never becomes data."""
    work = tmp_path / "work"
    ledger, dfpt_id, _ = _labelled_ledger(tmp_path / "ledger", pseudo, work)
    monkeypatch.setenv("FAKE_ALWAYS", "plus")
    with pytest.raises(FiniteFieldFailed, match=r"printed the Berry-phase field \[0\. +0\. +0\.001\].*'zero'"):
        run_efield(ledger.root, EfieldRequest(dfpt_id, "z", FIELD_REAL), ranks=1, launcher="", work_dir=work)
    assert not (ledger.root / "efield").exists() or not any((ledger.root / "efield").iterdir())
    assert efield_report(ledger.root) == ([], [])
    assert main(["ledger", "efield-report", "--ledger", str(ledger.root)]) == 2
