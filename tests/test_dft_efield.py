"""Born charges checked against finite-field forces (REAL QE 6.7 output, PROVENANCE.md).

pw.x with a homogeneous field (Berry phase, ``lelfield``) at +E and −E along z gives
``(F(+E) − F(−E)) / 2E = e Z[:, z, :]`` — the row α = z of the tensor in the project
convention ``Z[atom, field α, force β]``.

Units: QE's ``efield_cart`` is in Rydberg atomic units where e = √2, so
1 Ry a.u. of field = √2 · Ry / (e · bohr) = 36.3609 V/Å.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from bornfield.dft.efield import RY_AU_FIELD_V_PER_A as RY_AU_FIELD_IN_V_PER_A
from bornfield.dft.parsers import read_ph_output, read_pw_output


def _field_z(path) -> float:
    match = re.search(r"efield_cart\(3\)\s*=\s*(\S+)", path.read_text())
    return float(match.group(1))


def finite_field_row(directory):
    """(F(+E) − F(−E)) / (2E) in e, shape (N, 3): the row α = z of Z."""
    plus, minus = directory / "pw_efield_plus", directory / "pw_efield_minus"
    e_plus = _field_z(plus.with_suffix(".in")) * RY_AU_FIELD_IN_V_PER_A
    e_minus = _field_z(minus.with_suffix(".in")) * RY_AU_FIELD_IN_V_PER_A
    assert e_plus == pytest.approx(-e_minus) and e_plus > 0
    f_plus = read_pw_output(plus.with_suffix(".out")).forces
    f_minus = read_pw_output(minus.with_suffix(".out")).forces
    return (f_plus - f_minus) / (e_plus - e_minus)


def test_field_unit_conversion():
    assert RY_AU_FIELD_IN_V_PER_A == pytest.approx(36.3609, rel=2e-5)


def test_finite_field_forces_fix_the_field_units(data_dir):
    """Li2O (P1, k 2×2×4): the zz response agrees with DFPT to the Berry-phase
    discretisation error (< 12 %), while a field unit off by √2 (Hartree vs Rydberg
    a.u., or e = 1 instead of √2) would be 30–40 % off."""
    directory = data_dir / "qe" / "efield_li2o"
    row = finite_field_row(directory)
    z = read_ph_output(directory / "ph.out").born_charges
    ratio = row[:, 2] / z[:, 2, 2]
    assert np.all(np.abs(ratio - 1) < 0.12), ratio
    for wrong in (np.sqrt(2.0), 1 / np.sqrt(2.0)):
        assert np.all(np.abs(ratio * wrong - 1) > 0.25)
    # the field response is a rigid-lattice sum rule: total force change vanishes
    assert np.allclose(row.sum(axis=0), 0, atol=0.02)


def test_finite_field_forces_match_rows_not_columns_of_parsed_li3po4_tensors(data_dir):
    """Rattled 16-atom beta-Li3PO4 (P1), ph.x and finite-field pw.x at identical settings
    (30/240 Ry, k 1×1×2): (F(+E_z) − F(−E_z)) / 2E_z reproduces the row Z[:, z, :] of the
    parsed tensors, off-diagonals included, and not the column Z[:, :, z]."""
    directory = data_dir / "qe" / "efield_beta"
    row_ff = finite_field_row(directory)
    z = read_ph_output(directory / "ph.out").born_charges
    row, column = z[:, 2, :], z[:, :, 2]
    asymmetry = np.abs(row - column)
    assert asymmetry.max() > 0.1  # the cell is distorted enough to tell rows from columns
    off = ~np.eye(3, dtype=bool)[2]  # the two off-diagonal components β = x, y of the row α = z
    row_error = np.sqrt(np.mean((row_ff[:, off] - row[:, off]) ** 2))
    column_error = np.sqrt(np.mean((row_ff[:, off] - column[:, off]) ** 2))
    assert row_error < 0.5 * column_error, (row_error, column_error)
    # diagonal zz agrees to the Berry-phase discretisation error along the 2-point string
    assert np.all(np.abs(row_ff[:, 2] - row[:, 2]) < 0.25 * np.maximum(1.0, np.abs(row[:, 2])))
