"""Analysis of one MD condition: all completed replicas of ``md/<condition>/``.

Produces the per-condition record written to ``analysis/<condition>.json``
(see :func:`analyze_condition` for its keys) and the long-format MSD table
``analysis/<condition>_msd.csv``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import atomic_numbers, chemical_symbols
from tqdm import tqdm

from bornfield import __version__, atomic
from bornfield.analysis import transport
from bornfield.analysis.forces import TransverseAccumulator
from bornfield.analysis.msd import drift_free_covariance, project, species_moments
from bornfield.analysis.trajectory import (
    ReplicaSet,
    Trajectory,
    discover_replicas,
    iter_born_charges,
    iter_field_forces,
    read_trajectory,
)
from bornfield.errors import ConfigError, InputFileError
from bornfield.fieldphysics import field_forces

LOG = logging.getLogger(__name__)

RESULT_FORMAT = "bornfield-analysis"
RESULT_VERSION = 1
AXES = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}
CURVE_KEYS = (
    "parallel",
    "perpendicular",
    "perpendicular_per_direction",
    "total",
    "total_per_direction",
    "parallel_drift_corrected",
    "x",
    "y",
    "z",
    "drift_parallel",
)


def reference_axis_vector(value: Any) -> np.ndarray:
    """Unit vector of the ``reference_axis`` setting (axis name or 3-vector)."""
    if isinstance(value, str):
        if value not in AXES:
            raise ConfigError(f"analysis.reference_axis: {value!r} is not one of {sorted(AXES)} or a 3-vector")
        return np.array(AXES[value])
    vector = np.asarray(value, dtype=float)
    if vector.shape != (3,) or not np.all(np.isfinite(vector)) or np.linalg.norm(vector) == 0:
        raise ConfigError(f"analysis.reference_axis: {value!r} must be a nonzero 3-vector")
    return vector / np.linalg.norm(vector)


def _constant_field(trajectories: list[Trajectory]) -> np.ndarray:
    """The applied field vector (V/Å), required to be constant over frames and replicas."""
    reference = trajectories[0].field[0]
    scale = max(float(np.linalg.norm(reference)), 1e-12)
    for trajectory in trajectories:
        deviation = float(np.abs(trajectory.field - reference).max())
        if deviation > 1e-6 * scale and deviation > 1e-12:
            raise InputFileError(
                f"{trajectory.path}: the field changes during the analysed frames (max deviation "
                f"{deviation:.3g} V/Å from {reference.tolist()}); mobility needs a constant field. "
                "Skip a switch-on period with analysis.equilibration_fs"
            )
    return np.asarray(reference, dtype=float)


def _check_same_system(trajectories: list[Trajectory]) -> None:
    """Every replica holds the same atoms (species and masses, in the same order).

    The cells may differ: replicas can start from independent cells of one phase (e.g. several
    melt-quenched amorphous cells); the record then gives the mean volume and each replica's.
    """
    first = trajectories[0]
    for other in trajectories[1:]:
        if not (np.array_equal(first.numbers, other.numbers) and np.allclose(first.masses, other.masses)):
            raise InputFileError(
                f"{other.path}: atoms or masses differ from {first.path}; replicas of one "
                "condition must simulate the same atoms in the same order"
            )


def fit_window_indices(settings: dict, duration_fs: float, frame_interval_fs: float, max_lag: int) -> tuple[int, int, list[str]]:
    """Lag indices [i0, i1] (inclusive) of the linear-regime fit window, and notes.

    Raises:
        ConfigError: the window is empty, inverted or has fewer than 3 lags.
    """
    notes: list[str] = []
    if settings["fit_window_fs"] is not None:
        start_fs, end_fs = (float(v) for v in settings["fit_window_fs"])
        key = "analysis.fit_window_fs"
    else:
        start_frac, end_frac = (float(v) for v in settings["fit_window_fraction"])
        start_fs, end_fs = start_frac * duration_fs, end_frac * duration_fs
        key = "analysis.fit_window_fraction"
    if end_fs <= start_fs:
        raise ConfigError(f"{key}: fit window [{start_fs:g}, {end_fs:g}] fs is empty or inverted")
    first = max(1, int(math.ceil(start_fs / frame_interval_fs - 1e-9)))
    last = int(math.floor(end_fs / frame_interval_fs + 1e-9))
    if last > max_lag:
        notes.append(
            f"fit window end {end_fs:g} fs exceeds the longest lag {max_lag * frame_interval_fs:g} fs; clipped"
        )
        last = max_lag
    if last - first + 1 < 3:
        raise ConfigError(
            f"{key}: fit window [{start_fs:g}, {end_fs:g}] fs holds {max(last - first + 1, 0)} lag(s) of "
            f"{frame_interval_fs:g} fs (trajectory {duration_fs:g} fs, longest lag "
            f"{max_lag * frame_interval_fs:g} fs); at least 3 are needed"
        )
    return first, last, notes


def _value(mean: Any, sem: Any) -> dict:
    def clean(x: Any) -> Any:
        if x is None:
            return None
        array = np.asarray(x, dtype=float)
        return float(array) if array.ndim == 0 else array.tolist()

    return {"value": clean(mean), "sem": clean(sem)}


def _scaled(entry: dict, factor: float) -> dict:
    def scale(x: Any) -> Any:
        if x is None:
            return None
        return (np.asarray(x) * factor).tolist() if isinstance(x, list) else x * factor

    return {"value": scale(entry["value"]), "sem": scale(entry["sem"])}


def _condition_metadata(replicas, trajectories: list[Trajectory], field_vector: np.ndarray) -> dict:
    summary_condition = replicas.summary.get("condition", {}) if isinstance(replicas.summary, dict) else {}
    attrs = trajectories[0].attrs
    strength = float(np.linalg.norm(field_vector))
    temperature = summary_condition.get("temperature_K", attrs.get("temperature_K"))
    if temperature is None:
        raise InputFileError(
            f"{trajectories[0].path}: no temperature_K attribute and no condition in summary.json"
        )
    return {
        "name": summary_condition.get("name", attrs.get("condition", replicas.condition_dir.name)),
        "phase": summary_condition.get("phase"),
        "temperature_K": float(temperature),
        "field_strength_V_per_A": strength,
        "field_V_per_A": field_vector.tolist(),
        "field_direction": (field_vector / strength).tolist() if strength > 0 else [0.0, 0.0, 0.0],
        "direction_label": summary_condition.get("direction_label", "none" if strength == 0 else None),
    }


def measured_temperature(trajectories: list[Trajectory]) -> dict | None:
    """Mean ± std of ``temperature_K`` in each replica's ``thermo.csv`` over the analysed frames.

    Returns None when no replica has a readable ``thermo.csv`` (e.g. trajectories from elsewhere).
    """
    means = []
    for trajectory in trajectories:
        path = trajectory.path.with_name("thermo.csv")
        if not path.is_file():
            continue
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        try:
            values = [
                float(row["temperature_K"])
                for row in rows
                if float(row["time_fs"]) >= trajectory.time_fs[0] - 1e-9
                and float(row["time_fs"]) <= trajectory.time_fs[-1] + 1e-9
            ]
        except (KeyError, ValueError) as exc:
            raise InputFileError(f"{path}: expected numeric time_fs and temperature_K columns ({exc})") from exc
        if values:
            means.append(float(np.mean(values)))
    if not means:
        return None
    return {"mean": float(np.mean(means)), "replica_means": means}


def _species_order(numbers: np.ndarray, requested: list[str], source: Path) -> list[str]:
    present = [chemical_symbols[z] for z in dict.fromkeys(numbers.tolist())]
    if not requested:
        return present
    unknown = [s for s in requested if s not in present]
    if unknown:
        raise ConfigError(
            f"analysis.species: {unknown} not present in {source} (species present: {present})"
        )
    return list(requested)


def host_atoms(numbers: np.ndarray, masses: np.ndarray, mobile_species: str) -> tuple[np.ndarray, dict]:
    """Indices of the host framework (every atom not of ``mobile_species``) and its description.

    Drift velocities and mobilities are measured relative to the host's mass-weighted centre:
    that is the frame of Nernst–Einstein (tracer D relative to the lattice) and of the charge
    current of a neutral cell, which equals the mobile charge times its velocity relative to the
    host. Without a host (no atom of ``mobile_species``, or nothing else) the whole cell is used.
    """
    if mobile_species not in atomic_numbers:
        raise ConfigError(f"analysis.mobile_species: {mobile_species!r} is not a chemical symbol")
    mobile = numbers == atomic_numbers[mobile_species]
    masses = np.asarray(masses, dtype=float)
    if mobile.any() and not mobile.all():
        host = np.flatnonzero(~mobile)
        note = None
        reference = f"mass-weighted centre of the host: every atom that is not {mobile_species} (analysis.mobile_species)"
    else:
        host = np.arange(len(numbers))
        reason = "absent" if not mobile.any() else "the only species"
        note = f"mobile species {mobile_species} is {reason}: drifts are measured relative to the whole cell's centre of mass"
        reference = "mass-weighted centre of mass of the whole cell (no host framework)"
    return host, {
        "mobile_species": mobile_species,
        "host_species": [chemical_symbols[z] for z in dict.fromkeys(numbers[host].tolist())],
        "mobile_mass_fraction": float(masses[mobile].sum() / masses.sum()),
        "reference": reference,
        "note": note,
    }


def diffusion_tensors(
    moments: list[dict[str, np.ndarray]], n_atoms: int, lags_fs: np.ndarray, first: int, last: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """Per-replica diffusion tensors of one species from its :func:`species_moments` per replica.

    ``D_ab = (1/2) dC_ab/dτ``, fitted over the lags ``first…last`` (inclusive) of ``lags_fs`` (fs),
    where C is the displacement covariance about the species mean of each time origin (a
    field-driven drift, the host's recoil and any common shift do not masquerade as diffusion;
    for one atom, the time-averaged drift is removed instead).

    Returns:
        covariance (R, L, 3, 3) Å², diffusion tensors (R, 3, 3) Å²/fs, and the definition used.
    """
    tensors = np.asarray([m["tensor"] for m in moments])
    if n_atoms > 1:
        covariance = drift_free_covariance(tensors, np.asarray([m["centroid_tensor"] for m in moments]), n_atoms)
        definition = (
            "D_ab = slope/2 over the fit window of N/(N-1) <(du_a - <du_a>_N)(du_b - <du_b>_N)>, "
            "<.>_N the species mean at the same time origin (species drift removed)"
        )
    else:
        means = np.asarray([m["mean"] for m in moments])
        covariance = tensors - np.einsum("rla,rlb->rlab", means, means)
        definition = "D_ab = slope/2 of <du_a du_b> - <du_a><du_b> over the fit window (one atom: time-averaged drift removed)"
    # linear in the data, so the mean of the replica fits is the fit of the mean curve
    slope = transport.linear_slope(lags_fs[first : last + 1], np.moveaxis(covariance[:, first : last + 1], 1, 0))
    return covariance, 0.5 * slope, definition


def analyze_condition(condition_dir: str | Path, settings: dict) -> dict:
    """Analyse every completed replica of one condition.

    Args:
        condition_dir: ``{results_dir}/md/<condition>`` with ``replica_<r>/`` subdirectories.
        settings: the validated ``analysis`` config section.

    Returns:
        A JSON-friendly record with keys ``format``, ``version``, ``state``
        (``"analysed"`` or ``"no_completed_replicas"``), ``condition``,
        ``replicas`` (used / failed / incomplete), ``time``, ``fit_window_fs``,
        ``parallel_axis`` and its ``parallel_axis_source``, ``error_estimate``,
        ``msd_reference_time_fs``, ``system`` (volume, atom counts) and
        ``species`` → per-species ``msd`` curves (mean and standard error over
        replicas), ``diffusion`` (tensor, total, parallel, perpendicular,
        per direction; Å²/fs and cm²/s), ``msd_exponent_in_fit_window``, ``regime``,
        ``drift_velocity``, ``mobility`` (Å²/(V·fs) and cm²/(V·s)),
        ``nernst_einstein_mobility``, ``msd_at_reference``, ``msd_at_window_start`` and
        ``transverse_forces``.
    """
    return analyze_replicas(discover_replicas(condition_dir), settings)


def replicas_from_files(paths: list[str | Path]) -> ReplicaSet:
    """A replica set made of explicitly given ``traj.h5`` files (all treated as completed).

    For trajectories outside a campaign directory; a ``summary.json`` two levels
    up (``md/<condition>/summary.json``) is read for the condition metadata if present.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputFileError("no trajectory files given")
    for path in paths:
        if not path.is_file():
            raise InputFileError(f"{path}: trajectory file not found")
    summary_path = paths[0].resolve().parent.parent / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return ReplicaSet(paths[0].resolve().parent.parent, paths, [], [], summary)


def md_run_facts(summary: dict) -> dict:
    """Model identity and MD cost of a condition from its summary.json (empty values if not recorded).

    core_hours: wall time x MPI ranks summed over the job's invocations (``md.output.InvocationClock``),
    failed replicas included; a summary without invocations counts its last invocation; one without
    wall time keeps its stored ``core_hours``.
    """
    if not isinstance(summary, dict) or not summary:
        return {"models": None, "core_hours": None, "replicas_total": None, "force_uncertainty": None}
    from bornfield.md.output import invocations_core_hours, md_core_hours

    core_hours = summary.get("core_hours")
    if summary.get("invocations"):
        core_hours = invocations_core_hours(summary["invocations"])
    elif "wall_time_s" in summary and "mpi_ranks" in summary:
        core_hours = md_core_hours(summary["wall_time_s"], summary["mpi_ranks"])
    return {"models": summary.get("models"), "core_hours": core_hours,
            "replicas_total": summary.get("replicas_total"), "force_uncertainty": committee_spread(summary)}


def committee_spread(summary: dict) -> dict | None:
    """The committee force spread (eV/Å) over the replicas of a summary.json, or None without checks.

    ``checks`` (all replicas), ``max``, ``median`` (of the per-replica medians), ``fraction_below_limit``
    (weighted by checks) and ``limit_eV_per_A`` (md.safety.max_force_uncertainty_eV_per_A); a replica
    resumed from a checkpoint written before the check history was kept counts its last invocation only.
    """
    per_replica = [r["force_uncertainty_eV_per_A"] for r in summary.get("replicas") or []
                   if isinstance(r, dict) and r.get("force_uncertainty_eV_per_A")]
    if not per_replica:
        return None
    checks = np.asarray([r["checks"] for r in per_replica], dtype=float)
    fractions = [r.get("fraction_below_limit") for r in per_replica]
    limit = ((summary.get("settings") or {}).get("safety") or {}).get("max_force_uncertainty_eV_per_A")
    return {
        "checks": int(checks.sum()),
        "replicas": len(per_replica),
        "max": float(max(r["max"] for r in per_replica)),
        "median": float(np.median([r["median"] for r in per_replica])),
        "fraction_below_limit": (None if any(f is None for f in fractions)
                                 else float(np.dot(checks, fractions) / checks.sum())),
        "limit_eV_per_A": limit,
    }


def analyze_replicas(replicas: ReplicaSet, settings: dict) -> dict:
    """Analyse the completed trajectories of a :class:`ReplicaSet` (see :func:`analyze_condition`)."""
    condition_dir = replicas.condition_dir
    notes: list[str] = []
    record: dict[str, Any] = {
        "format": RESULT_FORMAT,
        "version": RESULT_VERSION,
        "bornfield_version": __version__,
        "condition_dir": str(replicas.condition_dir),
        "replicas": {
            "used": [],
            "n_used": len(replicas.completed),
            "failed": replicas.failed,
            "n_failed": len(replicas.failed),
            "incomplete": replicas.incomplete,
            "n_incomplete": len(replicas.incomplete),
        },
        "notes": notes,
        "md_run": md_run_facts(replicas.summary),
    }
    if not replicas.completed:
        LOG.warning("%s: no completed replica (%d failed, %d incomplete)", condition_dir, len(replicas.failed), len(replicas.incomplete))
        record["state"] = "no_completed_replicas"
        record["condition"] = replicas.summary.get("condition", {"name": Path(condition_dir).name})
        return record

    # metadata of every replica first (cheap); positions are then read one replica at a time
    trajectories = [
        read_trajectory(path, equilibration_fs=settings["equilibration_fs"], load_positions=False)
        for path in replicas.completed
    ]
    record["replicas"]["used"] = [str(t.path) for t in trajectories]
    _check_same_system(trajectories)
    volumes = [t.volume_A3 for t in trajectories]
    if max(volumes) - min(volumes) > 1e-6 * max(volumes):
        notes.append(f"replicas start from different cells (volumes {min(volumes):.1f}–{max(volumes):.1f} Å³); "
                     "number densities use the mean volume")
    n_frames = min(t.n_frames for t in trajectories)
    if any(t.n_frames != n_frames for t in trajectories):
        notes.append(f"replica lengths differ ({[t.n_frames for t in trajectories]} frames); all truncated to {n_frames}")
    field_vector = _constant_field(trajectories)
    strength = float(np.linalg.norm(field_vector))
    condition = _condition_metadata(replicas, trajectories, field_vector)
    temperature = condition["temperature_K"]
    if strength > 0:
        direction = field_vector / strength
        axis_source = "field direction"
    else:
        direction = reference_axis_vector(settings["reference_axis"])
        axis_source = f"reference axis analysis.reference_axis={settings['reference_axis']!r} (zero field)"

    first = trajectories[0]
    dt = first.frame_interval_fs
    duration = (n_frames - 1) * dt
    max_lag = max(1, int(math.floor(settings["max_lag_fraction"] * (n_frames - 1))))
    i0, i1, window_notes = fit_window_indices(settings, duration, dt, max_lag)
    notes.extend(window_notes)
    lags_fs = np.arange(max_lag + 1) * dt
    window_lags = lags_fs[i0 : i1 + 1]
    reference_time = settings["msd_reference_time_fs"]
    reference_time = float(window_lags[-1]) if reference_time is None else float(reference_time)
    reference_index = int(round(reference_time / dt))
    if reference_index > max_lag:
        notes.append(f"msd_reference_time_fs={reference_time:g} exceeds the longest lag; using {max_lag * dt:g} fs")
        reference_index = max_lag
    reference_index = max(reference_index, 1)
    n_used = len(trajectories)

    species_list = _species_order(first.numbers, list(settings["species"]), first.path)
    curve_index = np.unique(np.linspace(0, max_lag, min(max_lag + 1, settings["curve_points"])).astype(int))
    kT = transport.thermal_energy_eV(temperature)
    thermo = measured_temperature(trajectories)
    if thermo is not None and abs(thermo["mean"] - temperature) > 0.05 * temperature:
        notes.append(
            f"measured temperature {thermo['mean']:.1f} K deviates by more than 5 % from the nominal "
            f"{temperature:g} K used in k_B T (thermostat or field heating?)"
        )
    record.update(
        {
            "state": "analysed",
            "condition": condition,
            "parallel_axis": direction.tolist(),
            "parallel_axis_source": axis_source,
            "time": {
                "frame_interval_fs": dt,
                "timestep_fs": first.attrs.get("timestep_fs"),
                "n_frames_analysed": n_frames,
                "duration_fs": duration,
                "equilibration_fs": float(settings["equilibration_fs"]),
                "max_lag_fs": max_lag * dt,
            },
            "fit_window_fs": [float(window_lags[0]), float(window_lags[-1])],
            "fit_window_points": int(i1 - i0 + 1),
            "msd_reference_time_fs": reference_index * dt,
            "error_estimate": (
                f"standard error of the mean over {n_used} independent replicas"
                if n_used > 1
                else "none: a single replica (run more replicas for error bars)"
            ),
            "com_reference": "positions relative to the mass-weighted centre of mass of the whole cell, frame by frame",
            "system": {
                "n_atoms": first.n_atoms,
                "volume_A3": float(np.mean(volumes)),
                "volume_per_replica_A3": volumes,
                "counts": {s: int((first.numbers == atomic_numbers[s]).sum()) for s in dict.fromkeys(first.symbols)},
                "thermal_energy_eV": kT,
                "temperature_measured_K": thermo,
            },
            "lag_fs": lags_fs[curve_index].tolist(),
            "species": {},
        }
    )

    species_indices = {symbol: np.flatnonzero(first.numbers == atomic_numbers[symbol]) for symbol in species_list}
    host_indices, host_frame = host_atoms(first.numbers, first.masses, settings["mobile_species"])
    record["host_frame"] = host_frame
    if host_frame["note"]:
        notes.append(host_frame["note"])
    moments: dict[str, list[dict[str, np.ndarray]]] = {symbol: [] for symbol in species_list}
    chunk_atoms = max(8, min(256, 4_000_000 // max(n_frames, 1)))
    for header in tqdm(trajectories, desc="replicas", unit="replica", disable=None):
        loaded = read_trajectory(
            header.path, equilibration_fs=settings["equilibration_fs"], unwrap_positions=settings["unwrap"]
        )
        for symbol, indices in species_indices.items():
            moments[symbol].append(
                species_moments(loaded.positions[:n_frames], loaded.masses, indices, host_indices, max_lag, chunk_atoms=chunk_atoms)
            )
        del loaded

    for symbol in species_list:
        indices = species_indices[symbol]
        tensors = np.asarray([m["tensor"] for m in moments[symbol]])  # (R, L, 3, 3)
        means = np.asarray([m["mean"] for m in moments[symbol]])  # (R, L, 3)
        means_host = np.asarray([m["mean_relative_to_host"] for m in moments[symbol]])  # (R, L, 3)
        curves = project(tensors, means, direction)  # each (R, L)
        msd_curves = {}
        for key in CURVE_KEYS:
            mean, sem = transport.mean_and_sem(curves[key][:, curve_index])
            msd_curves[key] = _value(mean, sem)
        covariance, diffusion_tensor, definition = diffusion_tensors(moments[symbol], int(indices.size), lags_fs, i0, i1)
        if indices.size == 1:
            notes.append(f"{symbol}: a single atom; its D has the time-averaged drift removed, not the per-origin species mean")
        d_total = np.trace(diffusion_tensor, axis1=1, axis2=2) / 3.0
        d_parallel = np.einsum("rab,a,b->r", diffusion_tensor, direction, direction)
        d_perpendicular = (3.0 * d_total - d_parallel) / 2.0
        velocity = transport.linear_slope(window_lags, np.moveaxis(means[:, i0 : i1 + 1], 1, 0))  # (R,3)
        v_parallel = velocity @ direction
        velocity_host = transport.linear_slope(window_lags, np.moveaxis(means_host[:, i0 : i1 + 1], 1, 0))
        v_host_parallel = velocity_host @ direction

        def stat(samples: np.ndarray) -> dict:
            return _value(*transport.mean_and_sem(samples))

        diffusion = {
            "unit": "A2/fs",
            "definition": definition,
            "tensor": stat(diffusion_tensor),
            "tensor_per_replica": diffusion_tensor.tolist(),
            "total": stat(d_total),
            "parallel": stat(d_parallel),
            "perpendicular_per_direction": stat(d_perpendicular),
        }
        diffusion["cm2_per_s"] = {
            key: _scaled(diffusion[key], transport.A2_PER_FS_IN_CM2_PER_S)
            for key in ("total", "parallel", "perpendicular_per_direction")
        }
        covariance_trace = np.trace(covariance, axis1=2, axis2=3).mean(axis=0)
        exponent = transport.loglog_exponent(window_lags, covariance_trace[i0 : i1 + 1])
        species_record_regime = (
            "diffusive" if 0.8 <= exponent <= 1.2 else ("subdiffusive" if exponent < 0.8 else "superdiffusive")
        )
        # e·D/(k_B T) with D along the parallel axis (drift removed; the covariance about the
        # species mean does not depend on the frame, so it is the host-frame D)
        ne = stat(d_parallel / kT)
        species_record: dict[str, Any] = {
            "n_atoms": int(indices.size),
            "msd": msd_curves,
            "msd_exponent_in_fit_window": exponent,
            "regime": species_record_regime,
            "diffusion": diffusion,
            "drift_velocity_A_per_fs": {"vector": stat(velocity), "parallel": stat(v_parallel)},
            "drift_velocity_m_per_s": _scaled(stat(v_parallel), transport.A_PER_FS_IN_M_PER_S),
            "drift_velocity_relative_to_host_A_per_fs": {"vector": stat(velocity_host), "parallel": stat(v_host_parallel)},
            "nernst_einstein_mobility": {
                "definition": "e*D_parallel/(k_B*T) per unit charge (drift removed from D)",
                "A2_per_V_fs": ne,
                "cm2_per_V_s": _scaled(ne, transport.MOBILITY_A2_PER_V_FS_IN_CM2_PER_V_S),
            },
            "msd_at_reference": {
                "time_fs": reference_index * dt,
                "tensor_A2": stat(tensors[:, reference_index]),
                "tensor_per_replica_A2": tensors[:, reference_index].tolist(),
                **{key: stat(curves[key][:, reference_index]) for key in ("parallel", "perpendicular_per_direction", "total_per_direction", "parallel_drift_corrected", "drift_parallel")},
                # paired per replica: the error of the difference, not of each part
                "parallel_minus_perpendicular": stat(
                    curves["parallel"][:, reference_index] - curves["perpendicular_per_direction"][:, reference_index]),
            },
            "msd_at_window_start": {
                "time_fs": i0 * dt,
                "tensor_per_replica_A2": tensors[:, i0].tolist(),
                "parallel": stat(curves["parallel"][:, i0]),
            },
        }
        if strength > 0:
            mobility = stat(v_host_parallel / strength)
            species_record["mobility"] = {
                "definition": "v_parallel relative to the host framework / |E| (see host_frame)",
                "A2_per_V_fs": mobility,
                "cm2_per_V_s": _scaled(mobility, transport.MOBILITY_A2_PER_V_FS_IN_CM2_PER_V_S),
            }
        else:
            species_record["mobility"] = None
        if not 0.8 <= exponent <= 1.2:
            regime = "sub-diffusive or caged (immobile on this time scale)" if exponent < 0.8 else "super-diffusive (not yet linear)"
            notes.append(
                f"{symbol}: MSD exponent {exponent:.2f} in the fit window (1 = diffusive): {regime}; "
                "its D is an upper bound / not a linear-regime value"
            )
        species_record["transverse_forces"] = _transverse(trajectories, indices, n_frames, direction, strength, settings, symbol)
        record["species"][symbol] = species_record
        LOG.info(
            "%s %s: D = %.4g A2/fs, v_par = %.4g A/fs, exponent %.2f",
            condition["name"], symbol, float(np.mean(d_total)), float(np.mean(v_parallel)), exponent,
        )
    return record


def _transverse(trajectories, indices, n_frames, direction, strength, settings, symbol) -> dict:
    """Transverse field-force statistics of one species (pooled over replicas)."""
    options = settings["transverse"]
    have_forces = all(t.has_field_forces or t.has_born_charges for t in trajectories)
    if not have_forces:
        return {"available": False, "reason": "trajectories store neither field_forces nor born_charges"}
    accumulator = TransverseAccumulator(
        ratio_threshold=options["ratio_threshold"],
        ratio_max=options["ratio_histogram_max"],
        charge_max=options["charge_histogram_max_e"],
        bins=options["histogram_bins"],
        n_atoms=int(indices.size),
    )
    hypothetical = strength == 0
    if hypothetical and not all(t.has_born_charges for t in trajectories):
        return {"available": False, "reason": "E = 0 and no born_charges stored: no field force to analyse"}
    for trajectory in trajectories:
        done = 0
        if hypothetical:
            # no field was applied: evaluate Zᵀ·ê for a unit field along the reference axis
            for charges in iter_born_charges(trajectory, indices):
                take = min(charges.shape[0], n_frames - done)
                if take <= 0:
                    break
                unit_field = np.repeat(direction[None], take, axis=0)
                forces = field_forces(charges[:take], unit_field)
                accumulator.add(trajectory.time_fs[done : done + take], unit_field, forces)
                done += take
        else:
            for field_chunk, forces in iter_field_forces(trajectory, indices):
                take = min(forces.shape[0], n_frames - done)
                if take <= 0:
                    break
                accumulator.add(trajectory.time_fs[done : done + take], field_chunk[:take], forces[:take])
                done += take
        accumulator.end_replica()
    result = accumulator.result(options["time_series_points"])
    result["available"] = True
    result["hypothetical_unit_field"] = hypothetical
    if hypothetical:
        result["note"] = (
            "zero-field run: statistics of Zᵀ·ê for a unit field (1 V/Å) along the reference axis; "
            "forces are per V/Å, ratios are field-independent"
        )
    return result


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _finite_json(value: Any) -> Any:
    """Replace non-finite floats by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def write_json(path: str | Path, record: dict) -> Path:
    """Write a JSON record atomically (temp file + rename); NaN/inf become null."""
    path = Path(path)
    atomic.write_text(path, json.dumps(_finite_json(json.loads(json.dumps(record, default=_json_default))), indent=1))
    return path


def write_msd_csv(path: str | Path, record: dict) -> Path:
    """Long-format MSD table: one row per species and lag (Å², Å; sem empty for one replica)."""
    path = Path(path)
    columns = ["condition", "species", "lag_fs"]
    keys = [k for k in CURVE_KEYS]
    for key in keys:
        unit = "A" if key == "drift_parallel" else "A2"
        columns += [f"msd_{key}_{unit}" if key != "drift_parallel" else f"{key}_{unit}", f"{key}_sem_{unit}"]
    with atomic.atomic_path(path) as tmp, open(tmp, "x", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        if record.get("state") == "analysed":
            name = record["condition"]["name"]
            for symbol, data in record["species"].items():
                for i, lag in enumerate(record["lag_fs"]):
                    row: list[Any] = [name, symbol, f"{lag:.6g}"]
                    for key in keys:
                        entry = data["msd"][key]
                        row.append(f"{entry['value'][i]:.8g}")
                        row.append("" if entry["sem"] is None else f"{entry['sem'][i]:.6g}")
                    writer.writerow(row)
    return path
