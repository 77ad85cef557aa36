"""Aggregation over conditions: sweep tables, linear-response verdicts, Arrhenius fits.

Reads the per-condition records of :mod:`bornfield.analysis.condition` and
writes (under ``{results_dir}/analysis/``):

* ``sweep_transport.csv``: one row per condition and species (D, drift, mobility,
  Nernst–Einstein mobility, MSD at the reference time);
* ``sweep_transverse.csv``: transverse field-force statistics per condition and species;
* ``sweep_linear_response.csv``: mobile species, field runs: mobility (drift
  relative to the host framework per |E|) vs field strength against (a) the
  lowest field of the same phase/temperature/direction,
  (b) ``<Z_∥> e D/(k_B T)`` from the zero-field run (Haven ratio as configured),
  (c) the hopping model ``sinh(x)/x`` with ``x = e E a/(2 k_B T)``;
* ``arrhenius.json`` / ``arrhenius.csv``: zero-field diffusion vs temperature per
  phase, activation energy with its fit uncertainty, Nernst–Einstein conductivity;
* ``claims.json`` / ``claims.md``: the seed study's claims with numbers and verdicts
  (:mod:`bornfield.analysis.claims`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from ase.units import kB

from bornfield.analysis import transport
from bornfield.analysis.claims import build_claims, write_claims
from bornfield.analysis.condition import RESULT_FORMAT, write_json
from bornfield.atomic import atomic_path
from bornfield.errors import InputFileError

LOG = logging.getLogger(__name__)


def phase_class(phase: str | None) -> str:
    """``amorphous`` for glass-like phase names, ``crystalline`` otherwise (beta, gamma, defects)."""
    name = (phase or "").lower()
    return "amorphous" if any(key in name for key in ("amorph", "glass", "melt")) else "crystalline"


def load_records(paths: Iterable[str | Path], require: bool = True) -> list[dict]:
    """Per-condition analysis records (format ``bornfield-analysis``), each file read once.

    A file must be a record (else InputFileError naming it). A directory gives the records among its
    ``*.json`` (the sweep's own outputs, arrhenius.json, claims.json, ..., sit there too and are skipped);
    with ``require`` a directory holding none raises InputFileError. Each record gets ``_path``.
    """
    records = []
    for path in map(Path, paths):
        is_dir = path.is_dir()
        found = 0
        for file in sorted(path.glob("*.json")) if is_dir else [path]:
            try:
                record = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise InputFileError(f"{file}: cannot read analysis record ({exc})") from exc
            fmt = record.get("format") if isinstance(record, dict) else None
            if fmt != RESULT_FORMAT:
                if is_dir:
                    continue
                raise InputFileError(f"{file}: format {fmt!r}, expected {RESULT_FORMAT!r}")
            record["_path"] = str(file)
            records.append(record)
            found += 1
        if is_dir and require and not found:
            raise InputFileError(f"{path}: no per-condition analysis records (format {RESULT_FORMAT}) in this directory")
    return records


def _get(entry: dict | None, key: str = "value") -> float:
    if entry is None:
        return float("nan")
    value = entry.get(key)
    return float("nan") if value is None else float(value)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return str(value)


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "x", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_fmt(row.get(c)) for c in columns])
    return path


def _condition_columns(record: dict) -> dict:
    condition = record["condition"]
    return {
        "condition": condition.get("name"),
        "phase": condition.get("phase"),
        "phase_class": phase_class(condition.get("phase")),
        "temperature_K": condition.get("temperature_K"),
        "field_V_per_A": condition.get("field_strength_V_per_A"),
        "direction": condition.get("direction_label"),
        "ex": record.get("parallel_axis", [None] * 3)[0],
        "ey": record.get("parallel_axis", [None] * 3)[1],
        "ez": record.get("parallel_axis", [None] * 3)[2],
        "n_replicas_used": record["replicas"]["n_used"],
        "n_replicas_failed": record["replicas"]["n_failed"],
        "n_replicas_incomplete": record["replicas"]["n_incomplete"],
    }


TRANSPORT_COLUMNS = [
    "condition", "phase", "phase_class", "temperature_K", "field_V_per_A", "direction", "ex", "ey", "ez",
    "n_replicas_used", "n_replicas_failed", "n_replicas_incomplete", "species", "n_atoms",
    "fit_window_start_fs", "fit_window_end_fs", "msd_exponent", "regime",
    "D_A2_per_fs", "D_sem_A2_per_fs", "D_cm2_per_s", "D_sem_cm2_per_s",
    "D_parallel_A2_per_fs", "D_parallel_sem_A2_per_fs",
    "D_perpendicular_A2_per_fs", "D_perpendicular_sem_A2_per_fs",
    "v_parallel_A_per_fs", "v_parallel_sem_A_per_fs", "v_parallel_m_per_s", "v_parallel_sem_m_per_s",
    "mobility_A2_per_V_fs", "mobility_sem_A2_per_V_fs", "mobility_cm2_per_V_s", "mobility_sem_cm2_per_V_s",
    "ne_mobility_A2_per_V_fs", "ne_mobility_sem_A2_per_V_fs", "ne_mobility_cm2_per_V_s", "ne_mobility_sem_cm2_per_V_s",
    "msd_reference_time_fs", "msd_parallel_at_ref_A2", "msd_parallel_at_ref_sem_A2",
    "msd_perpendicular_per_direction_at_ref_A2", "msd_perpendicular_per_direction_at_ref_sem_A2",
    "msd_total_per_direction_at_ref_A2", "msd_total_per_direction_at_ref_sem_A2",
    "drift_parallel_at_ref_A", "drift_parallel_at_ref_sem_A",
    "msd_parallel_minus_perpendicular_at_ref_A2", "msd_parallel_minus_perpendicular_at_ref_sem_A2",
    "msd_parallel_zero_field_at_ref_A2", "msd_parallel_zero_field_at_ref_sem_A2",
    "msd_parallel_excess_at_ref_A2", "msd_parallel_excess_at_ref_sem_A2",
    "msd_parallel_growth_A2", "msd_parallel_growth_sem_A2",
    "msd_parallel_zero_field_growth_A2", "msd_parallel_zero_field_growth_sem_A2",
    "msd_parallel_excess_growth_A2", "msd_parallel_excess_growth_sem_A2", "msd_field_effect",
    "volume_A3", "temperature_measured_K",
]

TRANSVERSE_COLUMNS = [
    "condition", "phase", "phase_class", "temperature_K", "field_V_per_A", "direction",
    "n_replicas_used", "species", "hypothetical_unit_field", "n_samples",
    "mean_abs_perp_eV_per_A", "median_abs_perp_eV_per_A", "p90_abs_perp_eV_per_A",
    "mean_abs_par_eV_per_A", "mean_par_charge_e", "mean_perp_charge_e",
    "median_ratio", "p90_ratio", "ratio_threshold", "fraction_above_threshold",
    "fraction_above_threshold_time_mean", "fraction_above_threshold_time_std",
    "per_atom_time_averaged_abs_perp_mean_eV_per_A",
]


def _zero_field_partners(records: list[dict]) -> dict[tuple, dict]:
    """Analysed zero-field records keyed by (phase, temperature)."""
    return {
        (r["condition"].get("phase"), round(r["condition"]["temperature_K"], 6)): r
        for r in records
        if r.get("state") == "analysed" and r["condition"]["field_strength_V_per_A"] == 0
    }


def msd_field_effect(record: dict, reference: dict | None, species: str, n_sigma: float) -> dict:
    """MSD along E, field run minus its zero-field run (same phase, T, axis), at the reference time and
    as growth over the fit window.

    In an anisotropic crystal MSD ∥ and ⊥ differ without a field, so the field effect is read
    against the zero-field MSD along the same axis: ``êᵀ MSD ê`` of the zero-field run's tensor
    (:func:`projected_msd_at_reference`), whatever its own reference axis. The verdict tests the
    excess *growth*, ``ΔMSD∥ = MSD∥(t_ref) − MSD∥(t_window_start)`` per replica: an ion that
    vibrates with a larger amplitude along E, or sits displaced by it, raises the MSD plateau
    without migrating, and only growth is migration. Verdict: ``enhanced`` / ``reduced`` when the
    excess growth exceeds the Student-t critical value of ``n_sigma`` times its combined replica
    standard error, else ``not resolved`` (with a remark when the excess at the reference time
    alone is resolved); ``undetermined`` without a zero-field run at the same times.
    """
    keys = ("msd_parallel_zero_field_at_ref_A2", "msd_parallel_zero_field_at_ref_sem_A2",
            "msd_parallel_excess_at_ref_A2", "msd_parallel_excess_at_ref_sem_A2",
            "msd_parallel_growth_A2", "msd_parallel_growth_sem_A2",
            "msd_parallel_zero_field_growth_A2", "msd_parallel_zero_field_growth_sem_A2",
            "msd_parallel_excess_growth_A2", "msd_parallel_excess_growth_sem_A2")
    empty = dict.fromkeys(keys, float("nan"))
    if record["condition"]["field_strength_V_per_A"] == 0:
        return {**empty, "msd_field_effect": ""}

    def same_time(section: str) -> bool:
        times = [_section(r, r["species"][species], section, f"species.{species}")["time_fs"] for r in (reference, record)]
        return math.isclose(*times, rel_tol=1e-9)

    if (reference is None or species not in reference["species"]
            or not same_time("msd_at_reference") or not same_time("msd_at_window_start")):
        return {**empty, "msd_field_effect": "undetermined (no zero-field run at the same reference time and fit window)"}
    axis = np.asarray(record["parallel_axis"], dtype=float)
    field = record["species"][species]["msd_at_reference"]["parallel"]
    zero, zero_sem = projected_msd_at_reference(reference, species, axis)
    excess = _get(field) - zero
    excess_sem = math.hypot(_get(field, "sem"), zero_sem)
    growth, growth_sem = projected_msd_growth(record, species, axis)
    zero_growth, zero_growth_sem = projected_msd_growth(reference, species, axis)
    excess_growth = growth - zero_growth
    excess_growth_sem = math.hypot(growth_sem, zero_growth_sem)
    if not math.isfinite(excess_growth_sem):
        verdict = "undetermined (no error estimate: one replica)"
    else:
        dof = min(record["replicas"]["n_used"], reference["replicas"]["n_used"]) - 1
        critical = critical_value(n_sigma, dof)
        threshold = critical * excess_growth_sem
        verdict = ("enhanced" if excess_growth > threshold else "reduced" if excess_growth < -threshold
                   else "not resolved")
        if verdict == "not resolved" and abs(excess) > critical * excess_sem:
            verdict = "not resolved (a plateau offset without extra growth: vibration, not migration)"
    values = (zero, zero_sem, excess, excess_sem, growth, growth_sem, zero_growth, zero_growth_sem,
              excess_growth, excess_growth_sem)
    return {**dict(zip(keys, values)), "msd_field_effect": verdict}


def projected_msd_growth(record: dict, species: str, direction: np.ndarray) -> tuple[float, float]:
    """``êᵀ [MSD(t_ref) − MSD(t_window_start)] ê`` (Å²): mean and standard error of the per-replica growth."""
    data = record["species"][species]
    at_reference = _per_replica_tensors(record, data["msd_at_reference"], "tensor_per_replica_A2",
                                        f"species.{species}.msd_at_reference")
    at_start = _per_replica_tensors(record, _section(record, data, "msd_at_window_start", f"species.{species}"),
                                    "tensor_per_replica_A2", f"species.{species}.msd_at_window_start")
    return _projection_mean_and_sem(at_reference - at_start, direction)


def projected_msd_at_reference(record: dict, species: str, direction: np.ndarray) -> tuple[float, float]:
    """``êᵀ MSD ê`` (Å²) at the record's reference time and its standard error over replicas."""
    tensors = _per_replica_tensors(record, record["species"][species]["msd_at_reference"], "tensor_per_replica_A2",
                                   f"species.{species}.msd_at_reference")
    return _projection_mean_and_sem(tensors, direction)


def _per_replica_tensors(record: dict, section: dict, key: str, where: str) -> np.ndarray:
    """The (R, 3, 3) per-replica tensors ``section[key]``."""
    return np.asarray(_section(record, section, key, where), dtype=float)


def _section(record: dict, parent: dict, key: str, where: str):
    if key not in parent:
        raise InputFileError(
            f"{record.get('_path', record['condition'].get('name'))}: {where} has no {key} "
            "(written by an older bornfield); re-run `bornfield analyze condition`"
        )
    return parent[key]


def _projection_mean_and_sem(tensors: np.ndarray, direction: np.ndarray) -> tuple[float, float]:
    """Mean and standard error over replicas of ``êᵀ T_r ê`` for (R, 3, 3) tensors.

    The error is that of the per-replica projections: the tensor components of one replica are
    correlated (T_xy and T_yx are one number), so their separate errors do not combine in quadrature.
    """
    mean, sem = transport.mean_and_sem(np.einsum("rab,a,b->r", tensors, direction, direction))
    return float(mean), float("nan") if sem is None else float(sem)


def transport_rows(records: list[dict], n_sigma: float) -> list[dict]:
    """One row per analysed condition and species; field runs also against their zero-field run."""
    zero_field = _zero_field_partners(records)
    rows = []
    for record in records:
        if record.get("state") != "analysed":
            continue
        base = _condition_columns(record)
        reference = zero_field.get((record["condition"].get("phase"), round(record["condition"]["temperature_K"], 6)))
        for species, data in record["species"].items():
            diffusion = data["diffusion"]
            mobility = data.get("mobility") or {}
            ne = data["nernst_einstein_mobility"]
            at_ref = data["msd_at_reference"]
            rows.append(
                {
                    **base,
                    "species": species,
                    "n_atoms": data["n_atoms"],
                    "fit_window_start_fs": record["fit_window_fs"][0],
                    "fit_window_end_fs": record["fit_window_fs"][1],
                    "msd_exponent": data["msd_exponent_in_fit_window"],
                    "regime": data["regime"],
                    "D_A2_per_fs": _get(diffusion["total"]),
                    "D_sem_A2_per_fs": _get(diffusion["total"], "sem"),
                    "D_cm2_per_s": _get(diffusion["cm2_per_s"]["total"]),
                    "D_sem_cm2_per_s": _get(diffusion["cm2_per_s"]["total"], "sem"),
                    "D_parallel_A2_per_fs": _get(diffusion["parallel"]),
                    "D_parallel_sem_A2_per_fs": _get(diffusion["parallel"], "sem"),
                    "D_perpendicular_A2_per_fs": _get(diffusion["perpendicular_per_direction"]),
                    "D_perpendicular_sem_A2_per_fs": _get(diffusion["perpendicular_per_direction"], "sem"),
                    "v_parallel_A_per_fs": _get(data["drift_velocity_A_per_fs"]["parallel"]),
                    "v_parallel_sem_A_per_fs": _get(data["drift_velocity_A_per_fs"]["parallel"], "sem"),
                    "v_parallel_m_per_s": _get(data["drift_velocity_m_per_s"]),
                    "v_parallel_sem_m_per_s": _get(data["drift_velocity_m_per_s"], "sem"),
                    "mobility_A2_per_V_fs": _get(mobility.get("A2_per_V_fs")),
                    "mobility_sem_A2_per_V_fs": _get(mobility.get("A2_per_V_fs"), "sem"),
                    "mobility_cm2_per_V_s": _get(mobility.get("cm2_per_V_s")),
                    "mobility_sem_cm2_per_V_s": _get(mobility.get("cm2_per_V_s"), "sem"),
                    "ne_mobility_A2_per_V_fs": _get(ne["A2_per_V_fs"]),
                    "ne_mobility_sem_A2_per_V_fs": _get(ne["A2_per_V_fs"], "sem"),
                    "ne_mobility_cm2_per_V_s": _get(ne["cm2_per_V_s"]),
                    "ne_mobility_sem_cm2_per_V_s": _get(ne["cm2_per_V_s"], "sem"),
                    "msd_reference_time_fs": at_ref["time_fs"],
                    "msd_parallel_at_ref_A2": _get(at_ref["parallel"]),
                    "msd_parallel_at_ref_sem_A2": _get(at_ref["parallel"], "sem"),
                    "msd_perpendicular_per_direction_at_ref_A2": _get(at_ref["perpendicular_per_direction"]),
                    "msd_perpendicular_per_direction_at_ref_sem_A2": _get(at_ref["perpendicular_per_direction"], "sem"),
                    "msd_total_per_direction_at_ref_A2": _get(at_ref["total_per_direction"]),
                    "msd_total_per_direction_at_ref_sem_A2": _get(at_ref["total_per_direction"], "sem"),
                    "drift_parallel_at_ref_A": _get(at_ref["drift_parallel"]),
                    "drift_parallel_at_ref_sem_A": _get(at_ref["drift_parallel"], "sem"),
                    "msd_parallel_minus_perpendicular_at_ref_A2": _get(at_ref.get("parallel_minus_perpendicular")),
                    "msd_parallel_minus_perpendicular_at_ref_sem_A2": _get(at_ref.get("parallel_minus_perpendicular"), "sem"),
                    **msd_field_effect(record, reference, species, n_sigma),
                    "volume_A3": record["system"]["volume_A3"],
                    "temperature_measured_K": (record["system"].get("temperature_measured_K") or {}).get("mean"),
                }
            )
    return rows


def transverse_rows(records: list[dict]) -> list[dict]:
    rows = []
    for record in records:
        if record.get("state") != "analysed":
            continue
        base = _condition_columns(record)
        for species, data in record["species"].items():
            stats = data.get("transverse_forces") or {}
            if not stats.get("available"):
                continue
            rows.append(
                {
                    **base,
                    "species": species,
                    "hypothetical_unit_field": stats["hypothetical_unit_field"],
                    **{k: stats.get(k) for k in TRANSVERSE_COLUMNS if k in stats},
                    "fraction_above_threshold_time_mean": stats["time_average"]["fraction_above_threshold_mean"],
                    "fraction_above_threshold_time_std": stats["time_average"]["fraction_above_threshold_std"],
                    "per_atom_time_averaged_abs_perp_mean_eV_per_A": stats["time_average"][
                        "per_atom_time_averaged_abs_perp_mean_eV_per_A"
                    ],
                }
            )
    return rows


def _ratio(a: float, sa: float, b: float, sb: float) -> tuple[float, float]:
    """a/b with first-order error propagation (NaN sems count as unknown)."""
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return float("nan"), float("nan")
    value = a / b
    if not (math.isfinite(sa) and math.isfinite(sb)):
        return value, float("nan")
    return value, abs(value) * math.sqrt((sa / a) ** 2 + (sb / b) ** 2) if a != 0 else abs(sb / b * value)


MAX_RELATIVE_ERROR_FOR_VERDICT = 0.5
"""A mobility known to worse than ±50 % (1 s.e.) cannot decide linear response."""


def critical_value(n_sigma: float, degrees_of_freedom: int | None) -> float:
    """Student-t critical value with the two-sided confidence of ``n_sigma`` Gaussian sigmas.

    Standard errors from a few replicas are themselves uncertain; with 3 replicas
    (2 degrees of freedom) a "2 sigma" test needs a deviation of about 4.5 s.e.
    """
    if degrees_of_freedom is None or degrees_of_freedom < 1:
        return n_sigma
    from scipy import stats

    confidence = stats.norm.cdf(n_sigma)
    return float(stats.t.ppf(confidence, degrees_of_freedom))


def _verdict(
    value: float,
    sem: float,
    reference: float,
    reference_sem: float,
    tolerance: float,
    n_sigma: float,
    degrees_of_freedom: int | None = None,
) -> str:
    """Is ``value`` (μ at this field) equal to ``reference`` (what linear response predicts)?

    Works on the difference, not on the ratio, so that noisy references do not
    produce spurious verdicts:

    * ``undetermined``: the reference or the value is not resolved (non-positive
      reference, or a standard error above 50 % of the reference), or there is
      no error estimate and the deviation exceeds the tolerance;
    * ``linear``: |value − reference| ≤ tolerance·reference;
    * ``nonlinear``: the deviation exceeds the tolerance and n_sigma combined standard
      errors (as a Student-t critical value for ``degrees_of_freedom``);
    * ``linear (within error)``: otherwise.
    """
    if not (math.isfinite(value) and math.isfinite(reference)):
        return "undetermined (no value)"
    if reference <= 0:
        return "undetermined (reference mobility not positive)"
    combined = math.hypot(sem, reference_sem) if math.isfinite(sem) and math.isfinite(reference_sem) else float("nan")
    if math.isfinite(combined) and combined > MAX_RELATIVE_ERROR_FOR_VERDICT * reference:
        return f"undetermined (error {combined / reference:.0%} of the reference)"
    deviation = abs(value - reference)
    if deviation <= tolerance * reference:
        return "linear"
    if not math.isfinite(combined):
        return "undetermined (no error estimate: one replica)"
    if deviation > critical_value(n_sigma, degrees_of_freedom) * combined:
        return "nonlinear"
    return "linear (within error)"


def projected_diffusion(record: dict, species: str, direction: np.ndarray) -> tuple[float, float]:
    """``êᵀ D ê`` (Å²/fs) of a record and its standard error over replicas (per-replica projections)."""
    tensors = _per_replica_tensors(record, record["species"][species]["diffusion"], "tensor_per_replica",
                                   f"species.{species}.diffusion")
    return _projection_mean_and_sem(tensors, direction)


def implied_haven_ratio(assumed: float, ratio: float, ratio_sem: float, diffusive: bool) -> tuple[float, float]:
    """H_R that makes μ = μ_NE: ``assumed / (μ/μ_NE)`` and its error; NaN unless the zero-field run is
    diffusive and the ratio positive. The drift measures the charge (collective) diffusion and D the
    tracer one, so in linear response μ/μ_NE = H_R(assumed)/H_R."""
    if not (diffusive and math.isfinite(ratio) and ratio > 0):
        return float("nan"), float("nan")
    return assumed / ratio, assumed * ratio_sem / ratio**2


def overall_linear_response(verdict_sweep: str, verdict_ne: str, n_fields: int, haven_ratio: float,
                            model_verdict: str) -> str:
    """The row's linear-response verdict: the field sweep decides where there is one (the lowest field
    is its reference); a single field falls back on the Nernst–Einstein comparison, which holds the
    assumed Haven ratio as part of the test, then on the hopping model."""
    if n_fields >= 2:
        return "reference (lowest field of the sweep)" if verdict_sweep == "reference" else (
            "linear" if verdict_sweep.startswith("linear") else verdict_sweep)
    if verdict_ne.startswith(("linear", "nonlinear")):
        return ("linear" if verdict_ne.startswith("linear") else "nonlinear") + \
            f" (Nernst–Einstein with H_R = {haven_ratio:g})"
    return f"undetermined (hopping model: {model_verdict})"


def measured_temperature(record: dict) -> float:
    """Mean measured temperature (K) of a record's replicas; its nominal temperature if none was stored."""
    measured = (record.get("system", {}).get("temperature_measured_K") or {}).get("mean")
    return float(measured) if measured is not None and math.isfinite(measured) else float(record["condition"]["temperature_K"])


def linear_response_rows(records: list[dict], settings: dict) -> list[dict]:
    """Mobility of the mobile species vs field strength, with linear-response verdicts."""
    species = settings["mobile_species"]
    options = settings["linear_response"]
    tolerance, n_sigma, hop = options["tolerance"], options["n_sigma"], options["hop_length_A"]
    analysed = [r for r in records if r.get("state") == "analysed" and species in r["species"]]
    zero_field = _zero_field_partners(analysed)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in analysed:
        condition = record["condition"]
        if condition["field_strength_V_per_A"] > 0:
            key = (condition.get("phase"), round(condition["temperature_K"], 6), tuple(np.round(record["parallel_axis"], 6)))
            groups[key].append(record)
    rows = []
    for (phase, temperature, axis), members in sorted(groups.items(), key=lambda item: str(item[0])):
        members.sort(key=lambda r: r["condition"]["field_strength_V_per_A"])
        lowest = members[0]
        low_mu = lowest["species"][species]["mobility"]["A2_per_V_fs"]
        reference = zero_field.get((phase, temperature))
        direction = np.asarray(axis, dtype=float)
        for record in members:
            data = record["species"][species]
            strength = record["condition"]["field_strength_V_per_A"]
            mu, mu_sem = _get(data["mobility"]["A2_per_V_fs"]), _get(data["mobility"]["A2_per_V_fs"], "sem")
            stats = data.get("transverse_forces") or {}
            z_parallel = stats.get("mean_par_charge_e") if stats.get("available") else None
            row = {
                **_condition_columns(record),
                "species": species,
                "mobility_A2_per_V_fs": mu,
                "mobility_sem_A2_per_V_fs": mu_sem,
                "mobility_cm2_per_V_s": mu * transport.MOBILITY_A2_PER_V_FS_IN_CM2_PER_V_S,
                "mobility_sem_cm2_per_V_s": mu_sem * transport.MOBILITY_A2_PER_V_FS_IN_CM2_PER_V_S,
                "mean_par_charge_e": z_parallel,
                "haven_ratio": settings["arrhenius"]["haven_ratio"],
            }
            reasons = []
            # (a) against the lowest field of the same group
            if record is lowest or len(members) < 2:
                ratio_low, ratio_low_sem, verdict_low = 1.0, float("nan"), "reference"
            else:
                ratio_low, ratio_low_sem = _ratio(mu, mu_sem, _get(low_mu), _get(low_mu, "sem"))
                dof = min(record["replicas"]["n_used"], lowest["replicas"]["n_used"]) - 1
                verdict_low = _verdict(mu, mu_sem, _get(low_mu), _get(low_mu, "sem"), tolerance, n_sigma, dof)
                reasons.append(f"mu/mu(E={lowest['condition']['field_strength_V_per_A']:g}) = {ratio_low:.3g}")
            row.update({"mu_over_mu_lowest_field": ratio_low, "mu_over_mu_lowest_field_sem": ratio_low_sem, "verdict_vs_lowest_field": verdict_low})
            # (b) against <Z_par> e D_u / (H_R k_B T) of the zero-field run
            if reference is not None and species in reference["species"]:
                d_u, d_u_sem = projected_diffusion(reference, species, direction)
                t_zero, t_field = measured_temperature(reference), measured_temperature(record)
                kT = transport.thermal_energy_eV(t_zero)  # D was measured at the zero-field run's temperature
                heated = abs(t_field - t_zero) > options["max_temperature_mismatch"] * t_zero
                charge = z_parallel if z_parallel is not None else 1.0
                mu_ne = charge * d_u / (settings["arrhenius"]["haven_ratio"] * kT)
                mu_ne_sem = charge * d_u_sem / (settings["arrhenius"]["haven_ratio"] * kT)
                ratio_ne, ratio_ne_sem = _ratio(mu, mu_sem, mu_ne, mu_ne_sem)
                regime = reference["species"][species]["regime"]
                haven, haven_sem = implied_haven_ratio(settings["arrhenius"]["haven_ratio"], ratio_ne, ratio_ne_sem,
                                                       regime == "diffusive" and not heated)
                if regime != "diffusive":
                    verdict_ne = "undetermined (zero-field run not diffusive)"
                elif heated:
                    verdict_ne = (f"undetermined (field run at {t_field:.0f} K, its zero-field run at {t_zero:.0f} K: "
                                  "the field's heating makes D and the drift incomparable)")
                else:
                    verdict_ne = _verdict(mu, mu_sem, mu_ne, mu_ne_sem, tolerance, n_sigma,
                                          min(record["replicas"]["n_used"], reference["replicas"]["n_used"]) - 1)
                row.update(
                    {
                        "zero_field_condition": reference["condition"]["name"],
                        "zero_field_temperature_measured_K": t_zero,
                        "D_zero_field_along_E_A2_per_fs": d_u,
                        "D_zero_field_along_E_sem_A2_per_fs": d_u_sem,
                        "ne_mobility_A2_per_V_fs": mu_ne,
                        "ne_mobility_sem_A2_per_V_fs": mu_ne_sem,
                        "ne_mobility_cm2_per_V_s": mu_ne * transport.MOBILITY_A2_PER_V_FS_IN_CM2_PER_V_S,
                        "mu_over_ne": ratio_ne,
                        "mu_over_ne_sem": ratio_ne_sem,
                        "implied_haven_ratio": haven,
                        "implied_haven_ratio_sem": haven_sem,
                        "verdict_vs_nernst_einstein": verdict_ne,
                    }
                )
                reasons.append(
                    f"mu/mu_NE = {ratio_ne:.3g}"
                    + (f" with <Z_par> = {charge:.3g} e" if z_parallel is not None else " with <Z_par> = 1 e assumed (no field forces stored)")
                )
            else:
                row["verdict_vs_nernst_einstein"] = "undetermined (no zero-field run)"
            # (c) hopping-model estimate
            model = transport.hopping_nonlinearity(strength, record["condition"]["temperature_K"], hop)
            model_verdict = "linear" if model["relative_excess"] <= tolerance else "nonlinear"
            row.update({"hopping_reduced_field": model["reduced_field"], "hopping_relative_excess": model["relative_excess"], "verdict_hopping_model": model_verdict})
            row["linear_response"] = overall_linear_response(
                verdict_low, row["verdict_vs_nernst_einstein"], len(members), settings["arrhenius"]["haven_ratio"],
                model_verdict)
            row["basis"] = "; ".join(reasons + [f"eEa/2kT = {model['reduced_field']:.3g}"])
            rows.append(row)
    return rows


LINEAR_RESPONSE_COLUMNS = [
    "condition", "phase", "temperature_K", "field_V_per_A", "direction", "n_replicas_used", "species",
    "mobility_A2_per_V_fs", "mobility_sem_A2_per_V_fs", "mobility_cm2_per_V_s", "mobility_sem_cm2_per_V_s",
    "mu_over_mu_lowest_field", "mu_over_mu_lowest_field_sem", "verdict_vs_lowest_field",
    "zero_field_condition", "zero_field_temperature_measured_K", "D_zero_field_along_E_A2_per_fs", "D_zero_field_along_E_sem_A2_per_fs",
    "mean_par_charge_e", "haven_ratio", "ne_mobility_A2_per_V_fs", "ne_mobility_sem_A2_per_V_fs",
    "ne_mobility_cm2_per_V_s", "mu_over_ne", "mu_over_ne_sem", "implied_haven_ratio", "implied_haven_ratio_sem",
    "verdict_vs_nernst_einstein", "hopping_reduced_field", "hopping_relative_excess", "verdict_hopping_model", "linear_response", "basis",
]


def weighted_line_fit(x: np.ndarray, y: np.ndarray, sigma: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Least squares ``y = a + b x``; returns (a, b), their covariance (or None) and how it was obtained.

    With per-point ``sigma`` the covariance is absolute (χ² weights); without,
    it is scaled by the residual variance (needs > 2 points).
    """
    design = np.column_stack([np.ones_like(x), x])
    if sigma is not None:
        weights = 1.0 / sigma**2
        normal = design.T @ (design * weights[:, None])
        coefficients = np.linalg.solve(normal, design.T @ (weights * y))
        return coefficients, np.linalg.inv(normal), "weighted by the replica standard errors"
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    if len(x) > 2:
        residual = y - design @ coefficients
        variance = float(residual @ residual) / (len(x) - 2)
        return coefficients, variance * np.linalg.inv(design.T @ design), "unweighted, scaled by the residual variance"
    return coefficients, None, "two points without error bars: no uncertainty"


def arrhenius(records: list[dict], settings: dict) -> dict:
    """Zero-field Arrhenius analysis per phase of the mobile species.

    D(T) = D0 exp(-Ea / k_B T) fitted as ln D = ln D0 - (Ea/k_B)(1/T); the
    conductivity is σ = n e² D / (H_R k_B T) with n the number density of the
    mobile species and the configured Haven ratio H_R (1: uncorrelated).
    """
    species = settings["mobile_species"]
    options = settings["arrhenius"]
    haven = options["haven_ratio"]
    target = options["extrapolate_to_K"]
    by_phase: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        if record.get("state") == "analysed" and record["condition"]["field_strength_V_per_A"] == 0 and species in record["species"]:
            by_phase[record["condition"].get("phase") or "unknown"].append(record)
    result: dict[str, Any] = {
        "species": species,
        "haven_ratio": haven,
        "haven_ratio_note": f"Nernst–Einstein conductivity with Haven ratio {haven:g} (1 = uncorrelated hops; measured for a-Li3PO4 films: 0.55 ± 0.20)",
        "conductivity_formula": "sigma = n e^2 D / (H_R k_B T), n = number density of the mobile species",
        "extrapolate_to_K": target,
        "phases": {},
    }
    for phase, members in sorted(by_phase.items()):
        members.sort(key=lambda r: r["condition"]["temperature_K"])
        points, notes = [], []
        for record in members:
            data = record["species"][species]
            temperature = record["condition"]["temperature_K"]
            d, d_sem = _get(data["diffusion"]["total"]), _get(data["diffusion"]["total"], "sem")
            density = data["n_atoms"] / record["system"]["volume_A3"]
            usable = data["regime"] == "diffusive" and d > 0
            if not usable:
                notes.append(
                    f"T = {temperature:g} K excluded: {species} MSD exponent {data['msd_exponent_in_fit_window']:.2f} "
                    f"({data['regime']}), D = {d:.3g} Å²/fs"
                )
            points.append(
                {
                    "condition": record["condition"]["name"],
                    "temperature_K": temperature,
                    "D_A2_per_fs": d,
                    "D_sem_A2_per_fs": d_sem,
                    "D_cm2_per_s": d * transport.A2_PER_FS_IN_CM2_PER_S,
                    "number_density_per_A3": density,
                    "conductivity_S_per_cm": transport.nernst_einstein_conductivity_S_per_cm(density, d, temperature, haven) if d > 0 else float("nan"),
                    "n_replicas_used": record["replicas"]["n_used"],
                    "used_in_fit": usable,
                }
            )
        used = [p for p in points if p["used_in_fit"]]
        entry: dict[str, Any] = {"points": points, "notes": notes, "fit": None}
        temperatures = {p["temperature_K"] for p in used}
        if len(temperatures) < 2:
            notes.append(f"{len(temperatures)} usable temperature(s): an Arrhenius fit needs at least 2")
        else:
            inverse_t = np.array([1.0 / p["temperature_K"] for p in used])
            log_d = np.log([p["D_A2_per_fs"] for p in used])
            sems = np.array([p["D_sem_A2_per_fs"] for p in used])
            sigma = sems / np.array([p["D_A2_per_fs"] for p in used]) if np.all(np.isfinite(sems) & (sems > 0)) else None
            (intercept, slope), covariance, method = weighted_line_fit(inverse_t, log_d, sigma)
            activation = -slope * kB
            activation_sem = math.sqrt(covariance[1, 1]) * kB if covariance is not None else None
            log_d_target = intercept + slope / target
            log_d_target_sem = (
                math.sqrt(covariance[0, 0] + 2 * covariance[0, 1] / target + covariance[1, 1] / target**2)
                if covariance is not None
                else None
            )
            d_target = math.exp(log_d_target)
            density = float(np.mean([p["number_density_per_A3"] for p in used]))
            sigma_target = transport.nernst_einstein_conductivity_S_per_cm(density, d_target, target, haven)
            # 95 % interval with a Student-t factor: replica standard errors (weighted fit) or the
            # residual variance (unweighted fit) are themselves estimated from few samples
            dof = min(p["n_replicas_used"] for p in used) - 1 if sigma is not None else len(used) - 2
            ci95 = activation_sem * critical_value(1.959964, dof) if activation_sem is not None and dof >= 1 else None
            entry["fit"] = {
                "method": method,
                "n_points": len(used),
                "activation_energy_eV": float(activation),
                "activation_energy_sem_eV": activation_sem,
                "activation_energy_ci95_halfwidth_eV": ci95,
                "degrees_of_freedom_for_ci": dof,
                "ln_D0_A2_per_fs": float(intercept),
                "D0_A2_per_fs": float(math.exp(intercept)),
                "D0_cm2_per_s": float(math.exp(intercept)) * transport.A2_PER_FS_IN_CM2_PER_S,
                "extrapolated": {
                    "temperature_K": target,
                    "D_A2_per_fs": d_target,
                    "D_cm2_per_s": d_target * transport.A2_PER_FS_IN_CM2_PER_S,
                    "ln_D_sem": log_d_target_sem,
                    "conductivity_S_per_cm": sigma_target,
                    "conductivity_factor_range": (
                        [math.exp(-log_d_target_sem), math.exp(log_d_target_sem)] if log_d_target_sem is not None else None
                    ),
                },
            }
            LOG.info("Arrhenius %s %s: Ea = %.3f eV (sem %s), sigma(%g K) = %.3g S/cm", phase, species, activation, activation_sem, target, sigma_target)
        result["phases"][phase] = entry
    return result


ARRHENIUS_COLUMNS = [
    "phase", "condition", "temperature_K", "inverse_temperature_1000_per_K", "D_A2_per_fs", "D_sem_A2_per_fs",
    "D_cm2_per_s", "number_density_per_A3", "conductivity_S_per_cm", "n_replicas_used", "used_in_fit",
    "activation_energy_eV", "activation_energy_sem_eV", "activation_energy_ci95_halfwidth_eV",
]


def write_sweep(records: list[dict], settings: dict, output_dir: str | Path) -> dict[str, Path]:
    """Write every sweep table and the Arrhenius record; returns their paths by name."""
    output_dir = Path(output_dir)
    linear = linear_response_rows(records, settings)
    for row in linear:
        level = logging.WARNING if row["linear_response"] == "nonlinear" else logging.INFO
        LOG.log(level, "linear response of %s in %s: %s (%s)", row["species"], row["condition"], row["linear_response"], row["basis"])
    for record in records:
        replicas = record["replicas"]
        if record.get("state") != "analysed" or replicas["n_failed"] or replicas["n_incomplete"]:
            LOG.warning(
                "%s: %s, replicas used %d, failed %d, incomplete %d", record["condition"].get("name"),
                record.get("state"), replicas["n_used"], replicas["n_failed"], replicas["n_incomplete"],
            )
    transport_table = transport_rows(records, settings["linear_response"]["n_sigma"])
    transverse_table = transverse_rows(records)
    paths = {
        "transport": _write_csv(output_dir / "sweep_transport.csv", TRANSPORT_COLUMNS, transport_table),
        "transverse": _write_csv(output_dir / "sweep_transverse.csv", TRANSVERSE_COLUMNS, transverse_table),
        "linear_response": _write_csv(output_dir / "sweep_linear_response.csv", LINEAR_RESPONSE_COLUMNS, linear),
    }
    result = arrhenius(records, settings)
    result["conditions"] = [
        {"name": r["condition"].get("name"), "state": r.get("state"), "n_used": r["replicas"]["n_used"], "n_failed": r["replicas"]["n_failed"]}
        for r in records
    ]
    paths["arrhenius_json"] = write_json(output_dir / "arrhenius.json", result)
    rows = []
    for phase, entry in result["phases"].items():
        fit = entry["fit"] or {}
        for point in entry["points"]:
            rows.append(
                {
                    "phase": phase,
                    **point,
                    "inverse_temperature_1000_per_K": 1000.0 / point["temperature_K"],
                    "activation_energy_eV": fit.get("activation_energy_eV"),
                    "activation_energy_sem_eV": fit.get("activation_energy_sem_eV"),
                    "activation_energy_ci95_halfwidth_eV": fit.get("activation_energy_ci95_halfwidth_eV"),
                }
            )
    paths["arrhenius_csv"] = _write_csv(output_dir / "arrhenius.csv", ARRHENIUS_COLUMNS, rows)
    claims = build_claims(transport_table, transverse_table, linear, result, settings)
    paths["claims_json"], paths["claims_md"] = write_claims(claims, output_dir / "claims.json", output_dir / "claims.md")
    return paths
