"""Quality gates: SCF labels kept, Born charges dropped with a reason."""

from __future__ import annotations

import numpy as np
import pytest

from bornfield.dft.parsers import apply_asr
from bornfield.config import validate_section
from bornfield.dft.qc import QCThresholds, check_bec, run_gates


def _good_bec(n: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=0.3, size=(n, 3, 3)) + np.eye(3) * np.array([1.0, 1.0, -1.0, -1.0])[:n, None, None]
    z -= z.mean(axis=0)
    z[0] += 0.02  # a small, normal ASR residual
    eps = np.diag([2.5, 2.6, 2.7])
    return {"born_charges_raw": z, "asr_residual": z.sum(axis=0), "epsilon_inf": eps}


def test_asr_correction_removes_residual_and_keeps_differences():
    bec = _good_bec()
    corrected, residual = apply_asr(bec["born_charges_raw"])
    assert np.allclose(corrected.sum(axis=0), 0.0, atol=1e-14)
    assert np.allclose(residual, bec["born_charges_raw"].sum(axis=0))
    # uniform correction: pairwise differences between atoms are unchanged
    assert np.allclose(corrected[1] - corrected[2], bec["born_charges_raw"][1] - bec["born_charges_raw"][2])


def test_gates_accept_good_labels():
    result = run_gates({"energy": -100.0, "forces": np.zeros((4, 3))}, _good_bec(), QCThresholds.defaults())
    assert result.scf_ok and result.bec_ok and result.reasons == []


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b.update(asr_residual=np.full((3, 3), 0.5)), "ASR residual"),
        (lambda b: b.update(epsilon_inf=np.array([[2.5, 0.1, 0], [0, 2.5, 0], [0, 0, 2.5]])), "not symmetric"),
        (lambda b: b.update(epsilon_inf=np.diag([2.5, -1.0, 2.5])), "positive definite"),
        (lambda b: b.update(epsilon_inf=np.diag([2.5, 0.5, 2.5])), "< 1"),
        (lambda b: b["born_charges_raw"].__setitem__((0, 0, 0), np.nan), "not finite"),
    ],
)
def test_bad_bec_loses_bec_but_keeps_scf(mutate, reason):
    bec = _good_bec()
    mutate(bec)
    result = run_gates({"energy": -100.0, "forces": np.zeros((4, 3))}, bec, QCThresholds.defaults(max_asr_residual_e=0.3))
    assert result.scf_ok and not result.bec_ok
    assert any(reason in r for r in result.reasons), result.reasons


def test_bad_scf_rejects_everything():
    forces = np.zeros((4, 3))
    forces[1, 2] = np.inf
    result = run_gates({"energy": -100.0, "forces": forces}, _good_bec(), QCThresholds.defaults())
    assert not result.scf_ok and not result.bec_ok and "not finite" in result.reasons[0]
    huge = np.zeros((4, 3))
    huge[0, 0] = 80.0
    assert not run_gates({"energy": -1.0, "forces": huge}, None, QCThresholds.defaults()).scf_ok
    assert run_gates(None, None, QCThresholds.defaults()).reasons == ["SCF failed"]
    no_dfpt = run_gates({"energy": -1.0, "forces": np.zeros((4, 3))}, None, QCThresholds.defaults())
    assert no_dfpt.scf_ok and not no_dfpt.bec_ok


def test_threshold_is_configurable():
    bec = _good_bec()
    bec["asr_residual"] = np.full((3, 3), 0.2)
    assert check_bec(bec["asr_residual"], bec["epsilon_inf"], bec["born_charges_raw"], QCThresholds.defaults(max_asr_residual_e=0.3)) == []
    assert check_bec(bec["asr_residual"], bec["epsilon_inf"], bec["born_charges_raw"], QCThresholds.defaults(max_asr_residual_e=0.1))
    assert QCThresholds.from_section(validate_section({"qc": {"max_asr_residual_e": 0.05}}, "dft")).max_asr_residual_e == 0.05
