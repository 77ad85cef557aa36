"""The field physics every path shares: field forces, the acoustic sum rule, safety checks.

Used by the MD backends (:mod:`bornfield.md`), the ASE calculator
(:class:`bornfield.calculators.FieldCalculator`, hence ``bornfield predict`` and
the exploration MD of active learning), the models' own ASR
(:mod:`bornfield.models.born`), the DFPT labels and the analysis. Depends on
numpy only (the torch function takes tensors; vesin and mpi4py are imported
where needed), so every layer may import it.

Conventions (binding, see the design notes): ``Z[κ, α, β]`` in e with α the
field index and β the force index; the field force on atom κ is
``F_field[κ] = e Z[κ].T @ E`` = ``np.einsum("kab,a->kb", Z, E)``, eV/Å for E in
V/Å (ASE units, e = 1). Acoustic sum rule: ``Σ_κ Z[κ] = 0``, imposed by
subtracting the mean tensor over the atoms of the cell (minimum-norm correction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class UnsafeState(RuntimeError):
    """A configuration or a model output that the physics must not continue from
    (non-finite values, atoms too close, committee uncertainty too large, ASR violated).
    The message says which, with the limit and the setting that holds it."""


# --- field forces and the acoustic sum rule ---------------------------------------

def field_forces(born_charges: np.ndarray, field_V_per_A: np.ndarray) -> np.ndarray:
    """Field forces ``Z[κ].T @ E`` in eV/Å.

    Args:
        born_charges: (..., N, 3, 3) in e, index order [atom, field α, force β].
        field_V_per_A: (..., 3) field in V/Å; leading axes broadcast against
            those of ``born_charges`` (e.g. a time series of fields (T, 3)).

    Returns:
        (..., N, 3) eV/Å.
    """
    field = np.asarray(field_V_per_A, dtype=float)
    if born_charges.ndim == 3 and field.ndim == 1:  # the MD case: the plain contraction
        return np.einsum("kab,a->kb", born_charges, field)
    return np.einsum("...kab,...a->...kb", born_charges, field)


def field_forces_batched(z, field, batch):
    """:func:`field_forces` for torch tensors of several structures, each in its own field.

    Args:
        z: (N, 3, 3) Born tensors in e, [atom, field α, force β].
        field: (B, 3) V/Å, the field of each structure.
        batch: (N,) int64 structure index of each atom.

    Returns:
        (N, 3) eV/Å, the dtype of ``z``.
    """
    return (z * field.to(z.dtype)[batch][:, :, None]).sum(dim=1)


def held_rows_scale(field_V_per_A: np.ndarray, held_field_V_per_A: np.ndarray) -> float | None:
    """λ with ``field = λ · held_field``, or None if there is none (the field turned, or switched on).

    Field forces ``Z.T @ E`` held from an earlier step (Z refreshed every n steps) serve a later
    field only along the same direction: they are then ``λ`` times the held ones. 0 for a zero field.
    """
    field = np.asarray(field_V_per_A, dtype=float)
    held = np.asarray(held_field_V_per_A, dtype=float)
    if not np.any(field):
        return 0.0
    norm2 = float(held @ held)
    if norm2 == 0.0:
        return None
    scale = float(field @ held) / norm2
    return scale if np.linalg.norm(field - scale * held) <= 1e-12 * np.linalg.norm(field) else None


def asr_correct(raw: np.ndarray, owned_mask: np.ndarray | None = None, comm=None) -> np.ndarray:
    """Subtract the mean Born tensor so that the owned tensors sum to zero (float64).

    The correction is linear, so it applies equally to the field-force rows
    ``Z̃[κ].T @ E`` (M, 3) of raw tensors: correcting the rows gives the rows of the
    corrected tensors (the path of models that compute the rows directly,
    :meth:`bornfield.models.born_polar.PolarizationBornModel.raw_field_rows`).

    Args:
        raw: (M, 3, 3) raw per-site tensors in e (owned atoms and ghosts), or any
            other per-site quantity linear in them, (M, ...).
        owned_mask: (M,) bool, the atoms this process owns (default: all).
        comm: mpi4py communicator of one cell split over ranks (domain
            decomposition); the sum and the count are reduced over it so the
            correction uses the whole cell. None or one rank: serial.

    Returns:
        Corrected values, the shape of ``raw`` (ghost entries corrected with the same mean).
    """
    raw = np.asarray(raw, dtype=float)
    owned = raw if owned_mask is None else raw[owned_mask]
    size = int(np.prod(raw.shape[1:]))
    total = np.empty(size + 1)
    total[:size] = owned.sum(axis=0).ravel()
    total[size] = len(owned)
    if comm is not None and comm.Get_size() > 1:
        from mpi4py import MPI

        reduced = np.empty_like(total)
        comm.Allreduce(total, reduced, op=MPI.SUM)
        total = reduced
    if total[size] == 0:
        return raw.copy()
    return raw - (total[:size] / total[size]).reshape(raw.shape[1:])


def asr_correct_batched(z, batch, n_structures: int):
    """:func:`asr_correct` for torch tensors of several structures (differentiable).

    Args:
        z: (N, ...) per-atom tensors (Born tensors (N, 3, 3) or rows (N, 3)).
        batch: (N,) int64 structure index of each atom.
        n_structures: number of structures.

    Returns:
        ``z`` minus the mean of its structure, same shape and dtype.
    """
    flat = z.reshape(z.shape[0], -1)
    sums = flat.new_zeros(n_structures, flat.shape[1]).index_add(0, batch, flat)
    counts = batch.bincount(minlength=n_structures).to(flat.dtype).clamp(min=1)
    return z - (sums / counts[:, None])[batch].reshape(z.shape)


# --- quantities the safety checks look at ------------------------------------------

def all_finite(*values) -> bool:
    """True if every scalar and array in ``values`` is finite."""
    return all(bool(np.all(np.isfinite(v))) for v in values)


def per_atom_uncertainty(variance: np.ndarray) -> np.ndarray:
    """Per-atom committee standard deviation ``sqrt(Σ var)`` over the components.

    Args:
        variance: (N, ...) variance across members (forces (N, 3) eV²/Å², Born
            charges (N, 3, 3) e²).

    Returns:
        (N,) in the unit of the quantity.
    """
    variance = np.asarray(variance, dtype=float)
    return np.sqrt(variance.reshape(len(variance), -1).sum(axis=1))


def committee_force_uncertainty(member_forces: np.ndarray, comm=None) -> float:
    """Largest per-atom committee force standard deviation (eV/Å).

    Args:
        member_forces: (members, N, 3) eV/Å, the forces of each member on the atoms
            this process owns.
        comm: mpi4py communicator over which the maximum is reduced (None: serial).
    """
    member_forces = np.asarray(member_forces, dtype=float)
    std = per_atom_uncertainty(member_forces.var(axis=0))
    local = float(std.max()) if len(std) else 0.0
    if comm is not None and comm.Get_size() > 1:
        from mpi4py import MPI

        return float(comm.allreduce(local, op=MPI.MAX))
    return local


def min_distance(positions: np.ndarray, cutoff: float, cell: np.ndarray | None = None, pbc=None,
                 n_owned: int | None = None, comm=None) -> float:
    """Shortest interatomic distance (Å) if below ``cutoff``, else inf.

    Args:
        positions: (M, 3) Å.
        cutoff: Å; distances at or beyond it are not looked at.
        cell: (3, 3) Å rows, minimum image in the periodic directions; None: open
            boundaries (a rank's owned atoms followed by its ghosts).
        pbc: (3,) bool (periodic only if all are True); ignored when ``cell`` is None.
        n_owned: with ``cell`` None, only pairs with at least one of the first
            ``n_owned`` atoms count (default: all).
        comm: mpi4py communicator over which the minimum is reduced (None: serial).
    """
    from vesin import NeighborList

    cutoff = max(float(cutoff), 1e-3)
    positions = np.ascontiguousarray(positions, dtype=float)
    if cell is not None:
        periodic = bool(np.all(pbc)) if pbc is not None else True
        box = np.asarray(cell, dtype=float) if periodic else np.zeros((3, 3))
    else:
        periodic, box = False, np.zeros((3, 3))
    i, j, d = NeighborList(cutoff=cutoff, full_list=False).compute(
        points=positions, box=box, periodic=periodic, quantities="ijd")
    if cell is None and n_owned is not None:
        d = d[(i < n_owned) | (j < n_owned)]
    local = float(d.min()) if len(d) else float("inf")
    if comm is not None and comm.Get_size() > 1:
        from mpi4py import MPI

        return float(comm.allreduce(local, op=MPI.MIN))
    return local


# --- the checks ----------------------------------------------------------------------

def check_finite(description: str, *values) -> None:
    """Raise :class:`UnsafeState` ``"non-finite <description>"`` unless every value is finite."""
    if not all_finite(*values):
        raise UnsafeState(f"non-finite {description}")


@dataclass(frozen=True)
class SafetyLimits:
    """Limits of the safety checks; None switches a check off.

    Attributes:
        asr_tolerance_eV_per_A: max |Σ_κ F_field| per component (eV/Å).
        min_distance_A: smallest allowed interatomic distance (Å).
        max_force_uncertainty_eV_per_A: max per-atom committee force std (eV/Å).
        max_force_eV_per_A: max |force component| (eV/Å).
        max_born_charge_e: max |Z_ab| of any atom (e): a Born model far outside its
            training data predicts charges no material has, and e·Zᵀ·E then pumps
            energy into the cell while the potential committee still agrees.
        key_prefix: prefix of the setting names quoted in the messages
            (e.g. ``safety.`` for the MD settings).
    """

    asr_tolerance_eV_per_A: float | None = None
    min_distance_A: float | None = None
    max_force_uncertainty_eV_per_A: float | None = None
    max_force_eV_per_A: float | None = None
    max_born_charge_e: float | None = None
    key_prefix: str = ""

    @classmethod
    def from_md_settings(cls, settings: dict) -> SafetyLimits:
        """The limits of the validated ``md`` settings (section ``safety``)."""
        safety = settings["safety"]
        return cls(asr_tolerance_eV_per_A=safety["asr_tolerance_eV_per_A"],
                   min_distance_A=safety["min_distance_A"],
                   max_force_uncertainty_eV_per_A=safety["max_force_uncertainty_eV_per_A"],
                   max_born_charge_e=safety["max_born_charge_e"],
                   key_prefix="safety.")

    def check_asr(self, net_field_force: np.ndarray, where: str = "") -> None:
        """Raise unless every component of ``Σ_κ F_field`` (3,) is within the tolerance."""
        if self.asr_tolerance_eV_per_A is None:
            return
        residual = float(np.abs(net_field_force).max())
        if residual > float(self.asr_tolerance_eV_per_A):
            raise UnsafeState(f"acoustic sum rule violated{where}: net field force {residual:.3e} eV/Å "
                              f"> {self.key_prefix}asr_tolerance_eV_per_A = {self.asr_tolerance_eV_per_A:g}")

    def check_born_charges(self, born_charges: np.ndarray, where: str = "") -> None:
        """Raise if a Born-charge component (N, 3, 3) e exceeds the limit in magnitude."""
        limit = self.max_born_charge_e
        if limit is None or not len(born_charges):
            return
        largest = float(np.abs(born_charges).max())
        if largest > float(limit):
            atom = int(np.abs(born_charges).reshape(len(born_charges), -1).max(axis=1).argmax())
            raise UnsafeState(f"Born charge {largest:.1f} e on atom {atom}{where} above "
                              f"{self.key_prefix}max_born_charge_e = {limit:g} (Born model extrapolating)")

    def check_born_field_rows(self, rows: np.ndarray, field_V_per_A: np.ndarray, where: str = "") -> None:
        """:meth:`check_born_charges` for models that give the field forces ``Z.T @ E`` (N, 3) eV/Å only.

        ``|(Zᵀ E)_β| ≤ max|Z_ab| · Σ_α |E_α|``, so the rows divided by the field's L1 norm never
        exceed the largest component of Z: the check raises only where the full one would, and for
        a field along an axis it is the full check on the row of Z the field acts through.
        """
        limit = self.max_born_charge_e
        scale = float(np.abs(np.asarray(field_V_per_A, dtype=float)).sum())
        if limit is None or not len(rows) or scale == 0.0:
            return
        per_atom = np.abs(rows).max(axis=1) / scale
        largest = float(per_atom.max())
        if largest > float(limit):
            raise UnsafeState(f"Born charge along the field {largest:.1f} e on atom {int(per_atom.argmax())}{where} "
                              f"above {self.key_prefix}max_born_charge_e = {limit:g} (Born model extrapolating)")

    def check_min_distance(self, distance_A: float, where: str = "") -> None:
        """Raise if the shortest interatomic distance is below the limit."""
        if self.min_distance_A is not None and distance_A < float(self.min_distance_A):
            raise UnsafeState(f"atoms too close{where}: minimum distance {distance_A:.3f} Å "
                              f"< {self.key_prefix}min_distance_A = {self.min_distance_A} Å")

    def check_force_uncertainty(self, std_eV_per_A: float | None, where: str = "") -> None:
        """Raise if the committee force uncertainty (None: no committee) exceeds the limit."""
        limit = self.max_force_uncertainty_eV_per_A
        if limit is not None and std_eV_per_A is not None and std_eV_per_A > float(limit):
            raise UnsafeState(f"committee force uncertainty {std_eV_per_A:.3f} eV/Å{where} exceeds "
                              f"{self.key_prefix}max_force_uncertainty_eV_per_A = {limit} (extrapolation)")

    def check_forces(self, forces: np.ndarray, where: str = "") -> None:
        """Raise if forces (N, 3) eV/Å are non-finite or a component exceeds the limit."""
        check_finite(f"forces{where}", forces)
        limit = self.max_force_eV_per_A
        if limit is not None and len(forces) and float(np.abs(forces).max()) > float(limit):
            raise UnsafeState(f"force {float(np.abs(forces).max()):.1f} eV/Å{where} above "
                              f"{self.key_prefix}max_force_eV_per_A = {limit}")


__all__ = [
    "SafetyLimits",
    "UnsafeState",
    "all_finite",
    "asr_correct",
    "asr_correct_batched",
    "check_finite",
    "committee_force_uncertainty",
    "field_forces",
    "field_forces_batched",
    "held_rows_scale",
    "min_distance",
    "per_atom_uncertainty",
]
