"""The time-dependent field of an MD run: E(step) in V/Å.

The field forces, the acoustic sum rule and the safety checks are in
:mod:`bornfield.fieldphysics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bornfield.errors import ConfigError


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
        schedule = settings["field_schedule"]
        return cls(
            field_V_per_A=tuple(float(x) for x in np.asarray(field_V_per_A, dtype=float)),
            field_on_step=int(settings["equilibration_steps"]),
            timestep_fs=float(settings["timestep_fs"]),
            kind=schedule["kind"],
            ramp_fs=float(schedule["ramp_fs"]),
            period_fs=float(schedule["period_fs"]),
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
