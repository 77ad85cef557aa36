"""Field forces, the acoustic sum rule and time-dependent field schedules.

Conventions (binding, see the design notes): ``Z[κ, α, β]`` with α the field
index and β the force index; the field force on atom κ is
``F_field[κ] = e Z[κ].T @ E`` = ``np.einsum("kab,a->kb", Z, E)`` in eV/Å
for E in V/Å (ASE units, e = 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bornfield.errors import ConfigError


def field_forces(born_charges: np.ndarray, field_V_per_A: np.ndarray) -> np.ndarray:
    """Field forces ``Z[κ].T @ E`` (N, 3) in eV/Å.

    Args:
        born_charges: (N, 3, 3) in e, index order [atom, field α, force β].
        field_V_per_A: (3,) field in V/Å.
    """
    return np.einsum("kab,a->kb", born_charges, np.asarray(field_V_per_A, dtype=float))


def asr_correct(raw: np.ndarray, owned_mask: np.ndarray | None = None, comm=None) -> np.ndarray:
    """Subtract the mean Born tensor so that the owned tensors sum to zero.

    Args:
        raw: (M, 3, 3) raw per-site tensors (owned atoms and ghosts).
        owned_mask: (M,) bool, the atoms this process owns (default: all).
        comm: mpi4py communicator of the replica; the sum and the count are
            reduced over it so the correction uses the whole cell.

    Returns:
        (M, 3, 3) corrected tensors (ghost entries corrected with the same mean).
    """
    owned = raw if owned_mask is None else raw[owned_mask]
    total = np.empty(10)
    total[:9] = owned.sum(axis=0).ravel()
    total[9] = len(owned)
    if comm is not None and comm.Get_size() > 1:
        from mpi4py import MPI

        reduced = np.empty_like(total)
        comm.Allreduce(total, reduced, op=MPI.SUM)
        total = reduced
    if total[9] == 0:
        return raw.copy()
    mean = (total[:9] / total[9]).reshape(3, 3)
    return raw - mean


@dataclass(frozen=True)
class FieldSchedule:
    """E(step): zero during equilibration, ``E0 * s(t)`` afterwards.

    Attributes:
        field_V_per_A: E0 (3,) in V/Å.
        field_on_step: first MD step with the field on (= equilibration steps).
        timestep_fs: MD time step in fs.
        kind: ``step`` (s = 1), ``ramp`` (s = min(t / ramp_fs, 1)) or
            ``sinusoid`` (s = sin(2π t / period_fs)); t = (step − field_on_step)·dt.
    """

    field_V_per_A: tuple[float, float, float]
    field_on_step: int
    timestep_fs: float
    kind: str = "step"
    ramp_fs: float = 1000.0
    period_fs: float = 1000.0

    def __post_init__(self):
        if self.kind not in ("step", "ramp", "sinusoid"):
            raise ConfigError(
                f"md.field_schedule.kind: unknown schedule {self.kind!r}; expected step, ramp or sinusoid"
            )

    @classmethod
    def from_settings(cls, field_V_per_A, settings: dict) -> "FieldSchedule":
        schedule = settings.get("field_schedule", {})
        return cls(
            field_V_per_A=tuple(float(x) for x in np.asarray(field_V_per_A, dtype=float)),
            field_on_step=int(settings["equilibration_steps"]),
            timestep_fs=float(settings["timestep_fs"]),
            kind=schedule.get("kind", "step"),
            ramp_fs=float(schedule.get("ramp_fs", 1000.0)),
            period_fs=float(schedule.get("period_fs", 1000.0)),
        )

    def scale(self, step: int) -> float:
        if step < self.field_on_step:
            return 0.0
        t_fs = (step - self.field_on_step) * self.timestep_fs
        if self.kind == "step":
            return 1.0
        if self.kind == "ramp":
            return min(t_fs / self.ramp_fs, 1.0)
        return math.sin(2.0 * math.pi * t_fs / self.period_fs)

    def __call__(self, step: int) -> np.ndarray:
        """Field (3,) in V/Å acting on the configuration of MD step ``step``."""
        return self.scale(step) * np.asarray(self.field_V_per_A, dtype=float)
