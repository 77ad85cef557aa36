"""Finite homogeneous fields in pw.x (Berry phase, ``lelfield``) and the linear-response check.

A field E (V/Å) enters pw.x as ``efield_cart`` in Rydberg atomic units, where e = √2:
1 Ry a.u. of field = √2 Ry / (e bohr) = 36.3609 V/Å (checked against ph.x on real outputs,
tests/test_dft_efield.py). Runs at 0, +E and −E separate the force response into

* the odd part ``F_odd = (F(+E) − F(−E)) / 2`` = e Zᵀ·E + O(E³), compared with the DFPT
  field force ``Zᵀ·E`` (bornfield.fieldphysics.field_forces, convention of DESIGN.md);
* the even part ``F_even = (F(+E) + F(−E)) / 2 − F(0)`` = O(E²), the second-order response
  that the linear field force of the MD leaves out.

Forces in eV/Å, Born charges ``Z[atom, field α, force β]`` in e, shapes (N, 3) and (N, 3, 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms, units

from bornfield.dft.inputs import PwVariant
from bornfield.errors import ConfigError
from bornfield.fieldphysics import field_forces

#: QE's Rydberg atomic unit of electric field in V/Å (e = √2 in Ry units)
RY_AU_FIELD_V_PER_A = float(np.sqrt(2.0) * units.Rydberg / units.Bohr)
AXES = ("x", "y", "z")
#: Berry-phase iterations per SCF step; the value of the real runs in tests/data/qe/efield_*
NBERRYCYC = 3


def field_vector(axis: str, strength_V_per_A: float) -> np.ndarray:
    """The field ``strength`` (V/Å, may be negative or 0) along Cartesian ``axis`` (x, y, z), shape (3,)."""
    if axis not in AXES:
        raise ConfigError(f"field axis must be one of {AXES}, got {axis!r}")
    vector = np.zeros(3)
    vector[AXES.index(axis)] = float(strength_V_per_A)
    return vector


def string_index(atoms: Atoms, axis: str) -> int:
    """Index of the reciprocal vector most parallel to Cartesian ``axis``: its k points form the
    Berry-phase strings that carry the polarization along the field."""
    if axis not in AXES:
        raise ConfigError(f"field axis must be one of {AXES}, got {axis!r}")
    reciprocal = np.asarray(atoms.cell.reciprocal())
    cosines = np.abs(reciprocal[:, AXES.index(axis)]) / np.linalg.norm(reciprocal, axis=1)
    return int(np.argmax(cosines))


def efield_variant(atoms: Atoms, field_V_per_A: np.ndarray, axis: str, k_factor: int = 1,
                   nberrycyc: int = NBERRYCYC) -> PwVariant:
    """The pw.x variant of a finite-field SCF at ``field_V_per_A`` (3-vector, V/Å).

    ``lelfield`` with ``efield_cart`` in Ry a.u., ``nosym``/``noinv`` (the field breaks the
    symmetry, and the Berry phase needs the full mesh), no stress (not implemented with a
    field), random starting wavefunctions (as in the real runs the tests check); the k mesh
    along the reciprocal vector of ``axis`` is multiplied by ``k_factor`` (denser strings).
    """
    if int(k_factor) != k_factor or k_factor < 1:
        raise ConfigError(f"k-point factor along the field must be an integer >= 1, got {k_factor!r}")
    if nberrycyc < 1:
        raise ConfigError(f"nberrycyc must be >= 1, got {nberrycyc!r}")
    field = np.asarray(field_V_per_A, dtype=float)
    if field.shape != (3,) or not np.all(np.isfinite(field)):
        raise ConfigError(f"field must be a finite 3-vector in V/Å, got {field_V_per_A!r}")
    multiplier = [1, 1, 1]
    multiplier[string_index(atoms, axis)] = int(k_factor)
    cart = field / RY_AU_FIELD_V_PER_A
    return PwVariant(
        kind="efield",
        control={"lelfield": True, "nberrycyc": int(nberrycyc), "tstress": False},
        system={"nosym": True, "noinv": True},
        electrons={**{f"efield_cart({i + 1})": float(cart[i]) for i in range(3)}, "startingwfc": "random"},
        kpoint_multiplier=tuple(multiplier),
    )


def field_of(variant: PwVariant) -> np.ndarray:
    """The field (V/Å, shape (3,)) a finite-field variant asks pw.x for."""
    return np.array([variant.electrons[f"efield_cart({i + 1})"] for i in range(3)]) * RY_AU_FIELD_V_PER_A


def zener_drop_eV(atoms: Atoms, field_V_per_A: np.ndarray, kpts: tuple[int, int, int]) -> float:
    """Largest potential drop e|E·a_j|·N_j (eV) over the Born–von Kármán supercell of the k mesh.

    The Berry-phase field is well defined only while this stays below the band gap
    (Souza, Íñiguez, Vanderbilt, PRL 89, 117602 (2002)): denser strings lower the
    discretisation error but raise the drop.
    """
    drops = np.abs(np.asarray(atoms.cell) @ np.asarray(field_V_per_A, dtype=float)) * np.asarray(kpts)
    return float(drops.max())


@dataclass(frozen=True)
class FieldResponse:
    """Force response of one structure to ±E, all (N, 3) in eV/Å, ``field_V_per_A`` (3,)."""

    field_V_per_A: np.ndarray
    linear: np.ndarray  # DFPT: Zᵀ·E
    odd: np.ndarray  # (F(+E) − F(−E)) / 2
    even: np.ndarray  # (F(+E) + F(−E)) / 2 − F(0)

    @property
    def strength_V_per_A(self) -> float:
        return float(np.linalg.norm(self.field_V_per_A))

    def row(self) -> np.ndarray:
        """Finite-field Born charges along the field direction ê, ``F_odd / |E|`` = ê·Z, (N, 3) in e."""
        return self.odd / self.strength_V_per_A


def field_response(forces_zero: np.ndarray, forces_plus: np.ndarray, forces_minus: np.ndarray,
                   field_V_per_A: np.ndarray, born_charges: np.ndarray) -> FieldResponse:
    """Split finite-field forces at 0, +E, −E into odd and even parts and the DFPT linear force.

    ``forces_plus`` was computed at ``+field_V_per_A``, ``forces_minus`` at its negative;
    ``born_charges`` (N, 3, 3) are the zero-field DFPT tensors (ASR-corrected).
    """
    field = np.asarray(field_V_per_A, dtype=float)
    if field.shape != (3,) or not np.linalg.norm(field) > 0:
        raise ConfigError(f"field must be a nonzero 3-vector in V/Å, got {field_V_per_A!r}")
    f0, fp, fm = (np.asarray(f, dtype=float) for f in (forces_zero, forces_plus, forces_minus))
    z = np.asarray(born_charges, dtype=float)
    n = z.shape[0]
    for name, value in (("forces_zero", f0), ("forces_plus", fp), ("forces_minus", fm)):
        if value.shape != (n, 3):
            raise ConfigError(f"{name} has shape {value.shape}, expected ({n}, 3) for {n} Born-charge tensors")
    return FieldResponse(field, field_forces(z, field), (fp - fm) / 2.0, (fp + fm) / 2.0 - f0)


def _rms(norms: np.ndarray) -> float:
    return float(np.sqrt(np.mean(norms**2)))


def response_metrics(response: FieldResponse, born_charges: np.ndarray) -> dict[str, float]:
    """Metrics of one response (forces in meV/Å, charges in e, ratios dimensionless).

    ``field_force_rms``: RMS over atoms of |Zᵀ·E|; ``linear_force_error``: |F_odd − Zᵀ·E|;
    ``nonlinear_force``: |F_even|; ``*_rel``: RMS divided by the RMS of |Zᵀ·E|;
    ``transverse_*``: the same for the force components perpendicular to E (off-diagonal Z);
    ``bec_row``: F_odd/|E| against ê·Z per component (e); ``finite_field_force_sum``:
    |Σ_κ F_odd| (zero for an exact rigid-lattice response).
    """
    direction = response.field_V_per_A / response.strength_V_per_A
    perpendicular = np.eye(3) - np.outer(direction, direction)
    difference = response.odd - response.linear
    linear = np.linalg.norm(response.linear, axis=1) * 1e3
    error = np.linalg.norm(difference, axis=1) * 1e3
    even = np.linalg.norm(response.even, axis=1) * 1e3
    scale = _rms(linear)
    row_error = response.row() - field_forces(np.asarray(born_charges, dtype=float), direction)
    return {
        "n_atoms": int(len(linear)),
        "field_force_rms_meV_per_A": scale,
        "linear_force_error_rms_meV_per_A": _rms(error),
        "linear_force_error_max_meV_per_A": float(error.max()),
        "linear_force_error_rel": _rms(error) / scale,
        "transverse_force_rms_meV_per_A": _rms(np.linalg.norm(response.linear @ perpendicular, axis=1) * 1e3),
        "transverse_force_error_rms_meV_per_A": _rms(np.linalg.norm(difference @ perpendicular, axis=1) * 1e3),
        "nonlinear_force_rms_meV_per_A": _rms(even),
        "nonlinear_force_max_meV_per_A": float(even.max()),
        "nonlinear_force_rel": _rms(even) / scale,
        "bec_row_rmse_e": float(np.sqrt(np.mean(row_error**2))),
        "bec_row_max_e": float(np.abs(row_error).max()),
        "finite_field_force_sum_meV_per_A": float(np.linalg.norm(response.odd.sum(axis=0)) * 1e3),
    }


def species_metrics(response: FieldResponse, born_charges: np.ndarray, species: list[str]) -> dict[str, dict[str, float]]:
    """:func:`response_metrics` per chemical species (relative values against that species' |Zᵀ·E|)."""
    symbols = np.asarray(species)
    if symbols.shape != (response.odd.shape[0],):
        raise ConfigError(f"{len(species)} species for {response.odd.shape[0]} atoms")
    z = np.asarray(born_charges, dtype=float)
    out = {}
    for element in sorted(set(species)):
        mask = symbols == element
        part = FieldResponse(response.field_V_per_A, response.linear[mask], response.odd[mask], response.even[mask])
        metrics = response_metrics(part, z[mask])
        metrics.pop("finite_field_force_sum_meV_per_A")  # a whole-cell sum rule
        out[element] = metrics
    return out
