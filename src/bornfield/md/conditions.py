"""MD conditions: the (phase, temperature, field) points of a campaign.

A *condition* is one thermodynamic + field state that is simulated by
``replicas`` independent replicas in one MPI job. Conditions are expanded from
the ``md.sweep`` block of the config (a Cartesian product) plus the optional
``md.extra_conditions`` list. Every stage that needs to know which MD runs
exist (the md rules, the analysis) calls :func:`expand_conditions` on the
validated ``md`` settings, so names never have to be parsed back.

Naming (stable, filesystem- and Snakemake-wildcard-safe)::

    <phase>_T<temperature>K_E<strength>_<direction label>
    e.g.  amorphous_T600K_E0.1_x   beta_vacancy_T900K_E0_none   gamma_T600K_E0.05_u0.7071_0.7071_0

* temperature and strength are printed with ``format(value, "g")``;
* direction label: ``x``/``y``/``z`` for the Cartesian axes, ``mx``/``my``/``mz``
  for the negative axes, ``u<a>_<b>_<c>`` (unit-vector components rounded to
  4 decimals, ``m`` for a minus sign) for any other direction, and ``none``
  for a zero field (the direction is then irrelevant and the condition is
  generated once per phase and temperature, not once per direction).

Seeds: replica ``r`` of a condition gets
``int.from_bytes(sha256(f"bornfield-md|{seed}|{name}|{r}").digest()[:4]) & 0x7FFFFFFF``
— a function of the master seed (``md.seed``) and the condition name only, so
adding or removing other conditions never changes a condition's seeds.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict, dataclass
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np

from bornfield.errors import ConfigError

AXIS_VECTORS: dict[str, tuple[float, float, float]] = {
    "x": (1.0, 0.0, 0.0),
    "y": (0.0, 1.0, 0.0),
    "z": (0.0, 0.0, 1.0),
    "-x": (-1.0, 0.0, 0.0),
    "-y": (0.0, -1.0, 0.0),
    "-z": (0.0, 0.0, -1.0),
}
"""Axis names accepted in ``field_directions``."""

_AXIS_LABELS = {"x": "x", "y": "y", "z": "z", "-x": "mx", "-y": "my", "-z": "mz"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
NO_DIRECTION = (0.0, 0.0, 0.0)
"""``field_direction`` of a zero-field condition."""


@dataclass(frozen=True)
class MDCondition:
    """One simulated (phase, temperature, field) state.

    Attributes:
        name: unique, stable, filesystem-safe identifier (see module docstring);
            the directory ``{results_dir}/md/<name>/``.
        phase: structure set; start cells come from
            ``{results_dir}/structures/md_cells/<phase>.extxyz``.
        temperature_K: thermostat / initial-velocity temperature (K).
        field_strength_V_per_A: |E| in V/Å (>= 0).
        field_direction: unit vector of E (Cartesian); ``(0, 0, 0)`` when the
            field is zero.
        direction_label: ``x``, ``y``, ``z``, ``mx``, …, ``u…`` or ``none``.
        replicas: number of independent replicas.
        seeds: one seed per replica (length ``replicas``).
        production_steps: this condition's production steps, or None for
            ``md.production_steps`` (see :func:`condition_production_steps`).
    """

    name: str
    phase: str
    temperature_K: float
    field_strength_V_per_A: float
    field_direction: tuple[float, float, float]
    direction_label: str
    replicas: int
    seeds: tuple[int, ...]
    production_steps: int | None = None

    @property
    def field_V_per_A(self) -> np.ndarray:
        """The field vector E (3,) in V/Å (zeros for a zero-field condition)."""
        return self.field_strength_V_per_A * np.asarray(self.field_direction, dtype=float)

    @property
    def has_field(self) -> bool:
        return self.field_strength_V_per_A > 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (used in ``summary.json``)."""
        data = asdict(self)
        data["field_direction"] = list(self.field_direction)
        data["seeds"] = list(self.seeds)
        data["field_V_per_A"] = self.field_V_per_A.tolist()
        return data


def replica_seed(master_seed: int, condition_name: str, replica: int) -> int:
    """Stable 31-bit seed of replica ``replica`` of ``condition_name``."""
    text = f"bornfield-md|{int(master_seed)}|{condition_name}|{int(replica)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def _format_number(value: float) -> str:
    return format(float(value), "g")


def _format_component(value: float) -> str:
    value = round(float(value), 4)
    if value == 0.0:
        value = 0.0  # no "-0"
    text = format(value, "g")
    return text.replace("-", "m")


def normalize_direction(direction: Any, where: str = "md.sweep.field_directions") -> tuple[tuple[float, float, float], str]:
    """Return (unit vector, label) of an axis name or a 3-vector.

    Raises:
        ConfigError: unknown axis name, wrong length, non-finite or zero vector.
    """
    if isinstance(direction, str):
        key = direction.strip().lower()
        if key not in AXIS_VECTORS:
            raise ConfigError(
                f"{where}: unknown field direction {direction!r}; expected one of "
                f"{sorted(AXIS_VECTORS)} or a 3-vector [ex, ey, ez]"
            )
        return AXIS_VECTORS[key], _AXIS_LABELS[key]
    try:
        vector = np.asarray(direction, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: field direction {direction!r} is not a 3-vector of numbers") from exc
    if vector.shape != (3,) or not np.all(np.isfinite(vector)):
        raise ConfigError(f"{where}: field direction {direction!r} must be 3 finite numbers")
    norm = float(np.linalg.norm(vector))
    if norm < 1e-12:
        raise ConfigError(f"{where}: field direction {direction!r} has zero length")
    unit = vector / norm
    for axis, axis_vector in AXIS_VECTORS.items():
        if np.allclose(unit, axis_vector, atol=1e-9):
            return axis_vector, _AXIS_LABELS[axis]
    unit_tuple = (float(unit[0]), float(unit[1]), float(unit[2]))
    label = "u" + "_".join(_format_component(c) for c in unit_tuple)
    return unit_tuple, label


def _make_condition(
    phase: str,
    temperature_K: float,
    strength: float,
    direction: Any,
    replicas: int,
    master_seed: int,
    where: str,
    production_steps: int | None = None,
) -> MDCondition:
    if not isinstance(phase, str) or not _SAFE_NAME.match(phase):
        raise ConfigError(
            f"{where}: phase {phase!r} must be a non-empty name of letters, digits, '_', '-', '.'"
        )
    temperature_K = float(temperature_K)
    strength = float(strength)
    if not math.isfinite(temperature_K) or temperature_K <= 0.0:
        raise ConfigError(f"{where}: temperature {temperature_K!r} K must be a positive number")
    if not math.isfinite(strength) or strength < 0.0:
        raise ConfigError(
            f"{where}: field strength {strength!r} V/Å must be >= 0 (set the sign via the direction)"
        )
    if int(replicas) < 1:
        raise ConfigError(f"{where}: replicas {replicas!r} must be >= 1")
    if strength == 0.0:
        unit, label = NO_DIRECTION, "none"
    else:
        unit, label = normalize_direction(direction, where)
    name = f"{phase}_T{_format_number(temperature_K)}K_E{_format_number(strength)}_{label}"
    seeds = tuple(replica_seed(master_seed, name, r) for r in range(int(replicas)))
    return MDCondition(
        name=name,
        phase=phase,
        temperature_K=temperature_K,
        field_strength_V_per_A=strength,
        field_direction=unit,
        direction_label=label,
        replicas=int(replicas),
        seeds=seeds,
        production_steps=None if production_steps is None else int(production_steps),
    )


def expand_conditions(md_settings: dict) -> list[MDCondition]:
    """All MD conditions of a validated ``md`` config section, in a stable order.

    The sweep block gives the Cartesian product phases × temperatures ×
    field strengths × field directions (zero field once per phase and
    temperature); ``extra_conditions`` are appended. A condition that appears
    twice with identical settings is kept once; two different conditions with
    the same name raise :class:`ConfigError`.

    Args:
        md_settings: the ``md`` section (checked against the schema here, so a raw
            section works too; keys left out take the schema defaults). Uses
            ``seed``, ``sweep.{phases, temperatures_K, field_strengths_V_per_A,
            field_directions, replicas}`` and ``extra_conditions``.
    """
    if not isinstance(md_settings, Mapping):
        raise ConfigError(f"md settings must be a mapping, got {type(md_settings).__name__}")
    from bornfield.config import resolve_extra_conditions, validate_section

    # idempotent on resolved settings: fills the schema defaults of a raw config section
    md_settings = resolve_extra_conditions(validate_section(md_settings, "md", source="md settings"))
    master_seed = int(md_settings["seed"])
    sweep = md_settings["sweep"]
    phases: Sequence[str] = sweep["phases"]
    temperatures: Sequence[float] = sweep["temperatures_K"]
    strengths: Sequence[float] = sweep["field_strengths_V_per_A"]
    directions: Sequence[Any] = sweep["field_directions"]
    replicas = int(sweep["replicas"])

    conditions: list[MDCondition] = []
    for phase in phases:
        for temperature in temperatures:
            for strength in strengths:
                if float(strength) == 0.0:
                    conditions.append(
                        _make_condition(phase, temperature, 0.0, None, replicas, master_seed, "md.sweep")
                    )
                    continue
                for direction in directions:
                    conditions.append(
                        _make_condition(
                            phase, temperature, strength, direction, replicas, master_seed, "md.sweep"
                        )
                    )
    for index, extra in enumerate(md_settings["extra_conditions"]):
        conditions.append(
            _make_condition(
                extra["phase"],
                extra["temperature_K"],
                extra["field_strength_V_per_A"],
                extra["field_direction"],
                int(extra["replicas"]),
                master_seed,
                f"md.extra_conditions[{index}]",
                extra.get("production_steps"),
            )
        )

    unique: dict[str, MDCondition] = {}
    for condition in conditions:
        previous = unique.get(condition.name)
        if previous is None:
            unique[condition.name] = condition
        elif previous != condition:
            raise ConfigError(
                f"md: two different conditions share the name {condition.name!r} "
                f"({previous} vs {condition}); make temperatures/strengths/directions distinct"
            )
    return list(unique.values())


def condition_production_steps(md_settings: Mapping, condition: MDCondition) -> int:
    """Production steps of ``condition``: its own, else ``md.production_steps``."""
    if condition.production_steps is not None:
        return condition.production_steps
    return int(md_settings["production_steps"])


def condition_work(md_settings: Mapping, condition: MDCondition, n_atoms: int) -> int:
    """Atom-steps of ``condition`` on a cell of ``n_atoms``: replicas x (equilibration + production steps) x atoms."""
    steps = int(md_settings["equilibration_steps"]) + condition_production_steps(md_settings, condition)
    return condition.replicas * steps * int(n_atoms)


def configured_cell_atoms(structures_settings: Mapping, phase: str) -> int:
    """The MD cell size the ``structures`` section asks for: ``amorphous.md_cells.n_atoms`` for the amorphous
    phase, else ``md_supercell.target_atoms`` (the built crystal or defect cell may differ by a few atoms)."""
    if phase == "amorphous":
        return int(structures_settings["amorphous"]["md_cells"]["n_atoms"])
    return int(structures_settings["md_supercell"]["target_atoms"])


def scheduling_priorities(md_settings: Mapping, structures_settings: Mapping, top: int = 9) -> dict[str, int]:
    """Priority 1..``top`` per condition name, rising with :func:`condition_work` on the configured cell size,
    so that a scheduler starts the longest conditions first."""
    work = {c.name: condition_work(md_settings, c, configured_cell_atoms(structures_settings, c.phase))
            for c in expand_conditions(md_settings)}
    largest = max(work.values(), default=1)
    return {name: 1 + round((top - 1) * w / largest) for name, w in work.items()}


def condition_by_name(md_settings: dict, name: str) -> MDCondition:
    """The condition called ``name`` (raises ConfigError listing the known names)."""
    conditions = expand_conditions(md_settings)
    for condition in conditions:
        if condition.name == name:
            return condition
    raise ConfigError(
        f"md: no condition named {name!r}; the config defines {[c.name for c in conditions]}"
    )
