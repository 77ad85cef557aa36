"""Synthetic trajectories in the exact ``traj.h5`` format, with known transport.

Used by the tests and for trying the analysis without running MD. Mobile
species perform a biased Gaussian random walk relative to the framework (the
host): diffusion tensor ``D`` (a scalar means ``D·I``), drift velocity ``v``
along the field, so that relative to the host the displacement covariance is
exactly ``2 D τ`` about the drift ``v τ`` at every lag. The immobile framework
vibrates about its sites. Then every frame is shifted so that the mass-weighted
centre of mass stays exactly where it started, as in field MD with an
acoustic-sum-rule-respecting Born charge model and ``FixCom``: the framework
recoils against the drift and the diffusion of the mobile atoms, and the
mobile species' drift relative to the centre of mass is ``(1 - f) v`` with
``f`` its mass fraction of the cell (single mobile species).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from ase.data import atomic_masses, atomic_numbers

from bornfield.analysis.trajectory import TRAJ_FORMAT
from bornfield import atomic, fieldphysics
from bornfield.atomic import atomic_path

TRAJ_UNITS = "ASE: Å, eV, fs, amu, e; field V/Å"


def write_trajectory(
    path: str | Path,
    *,
    numbers: np.ndarray,
    masses: np.ndarray,
    cell: np.ndarray,
    time_fs: np.ndarray,
    field: np.ndarray,
    positions: np.ndarray,
    timestep_fs: float,
    stride: int,
    temperature_K: float,
    condition: str,
    replica: int,
    seed: int,
    ensemble: str = "synthetic",
    field_forces: np.ndarray | None = None,
    born_charges: np.ndarray | None = None,
    velocities: np.ndarray | None = None,
) -> Path:
    """Write one ``traj.h5`` in the bornfield format (atomically: temp file, then rename).

    Shapes: ``positions`` (T, N, 3) Å unwrapped, ``field`` (T, 3) V/Å,
    ``field_forces`` (T, N, 3) eV/Å, ``born_charges`` (T, N, 3, 3) e,
    ``velocities`` (T, N, 3) Å/fs. Frame-indexed datasets are resizable along T.
    """
    import h5py

    path = Path(path)
    n_frames = len(time_fs)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        handle.attrs.update(
            {
                "format": TRAJ_FORMAT,
                "version": 1,
                "timestep_fs": float(timestep_fs),
                "stride": int(stride),
                "temperature_K": float(temperature_K),
                "ensemble": ensemble,
                "seed": int(seed),
                "replica": int(replica),
                "condition": condition,
                "units": TRAJ_UNITS,
            }
        )
        handle.create_dataset("numbers", data=np.asarray(numbers, dtype=np.int32))
        handle.create_dataset("masses", data=np.asarray(masses, dtype=np.float64))
        handle.create_dataset("cell", data=np.asarray(cell, dtype=np.float64))

        def frames(name: str, data: np.ndarray, dtype: Any) -> None:
            data = np.asarray(data, dtype=dtype)
            handle.create_dataset(
                name, data=data, maxshape=(None, *data.shape[1:]), chunks=(min(64, n_frames), *data.shape[1:])
            )

        frames("step", np.arange(n_frames, dtype=np.int64) * int(stride), np.int64)
        frames("time_fs", time_fs, np.float64)
        frames("field", field, np.float64)
        frames("positions", positions, np.float64)
        if velocities is not None:
            frames("velocities", velocities, np.float32)
        if field_forces is not None:
            frames("field_forces", field_forces, np.float32)
        if born_charges is not None:
            frames("born_charges", born_charges, np.float32)
    return path


def li3po4_like_cell(n_formula_units: int = 8, density_g_cm3: float = 2.4, seed: int = 0):
    """Random (unphysical) Li3PO4-composition positions in a cubic cell of the given density.

    Returns:
        numbers (N,), masses (N,) amu, cell (3, 3) Å, positions (N, 3) Å.
    """
    rng = np.random.default_rng(seed)
    symbols = ["Li"] * (3 * n_formula_units) + ["P"] * n_formula_units + ["O"] * (4 * n_formula_units)
    numbers = np.array([atomic_numbers[s] for s in symbols], dtype=int)
    masses = atomic_masses[numbers]
    mass_g = masses.sum() * 1.66053906660e-24
    length = (mass_g / density_g_cm3 * 1e24) ** (1.0 / 3.0)
    cell = np.eye(3) * length
    positions = rng.uniform(0.0, length, size=(len(numbers), 3))
    return numbers, masses, cell, positions


def _step_matrix(diffusion: float | np.ndarray, frame_interval_fs: float) -> np.ndarray:
    """B with B Bᵀ = 2 D Δt, for a scalar D (Å²/fs, per direction) or a symmetric PSD 3×3 tensor."""
    tensor = np.asarray(diffusion, dtype=float)
    tensor = tensor * np.eye(3) if tensor.ndim == 0 else tensor
    if tensor.shape != (3, 3) or not np.allclose(tensor, tensor.T):
        raise ValueError(f"diffusion must be a scalar or a symmetric 3x3 tensor (A2/fs), got {diffusion!r}")
    eigenvalues, vectors = np.linalg.eigh(2.0 * frame_interval_fs * tensor)
    if eigenvalues.min() < -1e-12 * max(eigenvalues.max(), 1e-300):
        raise ValueError(f"diffusion tensor {tensor.tolist()} is not positive semi-definite")
    return vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))


def biased_random_walk(
    *,
    numbers: np.ndarray,
    masses: np.ndarray,
    start: np.ndarray,
    n_frames: int,
    frame_interval_fs: float,
    diffusion_A2_per_fs: dict[int, float | np.ndarray],
    drift_A_per_fs: dict[int, np.ndarray],
    vibration_A: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Unwrapped positions (T, N, 3): random walks for mobile species, vibration for the rest.

    Args:
        diffusion_A2_per_fs: atomic number -> D (Å²/fs per Cartesian direction, or a 3×3
            tensor) relative to the framework.
        drift_A_per_fs: atomic number -> drift velocity vector (Å/fs) of that species
            relative to the framework.
        vibration_A: rms displacement per Cartesian direction of immobile atoms about their sites.

    The whole configuration is then translated frame by frame so that the mass-weighted
    centre of mass stays at its initial position exactly.
    """
    n_atoms = len(numbers)
    masses = np.asarray(masses, dtype=float)
    times = np.arange(n_frames) * frame_interval_fs
    positions = np.repeat(start[None], n_frames, axis=0).astype(float)
    mobile = np.zeros(n_atoms, dtype=bool)
    for z, diffusion in diffusion_A2_per_fs.items():
        mask = numbers == z
        mobile |= mask
        steps = rng.normal(size=(n_frames - 1, mask.sum(), 3)) @ _step_matrix(diffusion, frame_interval_fs).T
        positions[1:, mask] += np.cumsum(steps, axis=0)
    for z, velocity in drift_A_per_fs.items():
        mask = numbers == z
        mobile |= mask
        positions[:, mask] += times[:, None, None] * np.asarray(velocity, dtype=float)
    framework = ~mobile
    if framework.any():
        positions[:, framework] += rng.normal(0.0, vibration_A, size=(n_frames, framework.sum(), 3))
    centre = np.einsum("tnc,n->tc", positions, masses) / masses.sum()
    return positions - (centre - centre[0])[:, None, :]


def write_synthetic_condition(
    condition_dir: str | Path,
    *,
    n_replicas: int = 3,
    n_frames: int = 400,
    frame_interval_fs: float = 10.0,
    timestep_fs: float = 1.0,
    temperature_K: float = 600.0,
    field_V_per_A: Sequence[float] = (0.0, 0.0, 0.0),
    diffusion_A2_per_fs: dict[str, float | np.ndarray] | None = None,
    drift_A_per_fs: dict[str, float] | None = None,
    vibration_A: float = 0.05,
    born_charges: dict[str, np.ndarray] | None = None,
    store: str = "field_forces",
    n_formula_units: int = 8,
    failed_replicas: Sequence[int] = (),
    phase: str = "synthetic",
    seed: int = 1,
    wrap: bool = False,
) -> dict[str, Any]:
    """Write ``condition_dir/replica_<r>/{traj.h5,status.json,thermo.csv}`` and ``summary.json``.

    Args:
        field_V_per_A: the applied field vector E (V/Å), constant in time.
        diffusion_A2_per_fs: symbol -> D (Å²/fs) per direction, or a 3×3 tensor, relative to
            the framework (default Li: 1e-3).
        drift_A_per_fs: symbol -> drift speed (Å/fs) relative to the framework along the field
            direction (along x when the field is zero).
        born_charges: symbol -> 3×3 Born charge tensor (e), ``Z[α, β]``; stored as
            ``field_forces = Zᵀ E`` (``store="field_forces"``), as ``born_charges``
            (``store="born_charges"``), both (``"both"``) or neither (``"none"``).
        failed_replicas: replica numbers written with ``status: failed`` (their
            trajectory is garbage and must not be used).
        wrap: store positions wrapped into the cell (not the bornfield format;
            exercises :func:`bornfield.analysis.trajectory.unwrap`).

    Returns:
        The summary dictionary (also written to ``summary.json``).
    """
    condition_dir = Path(condition_dir)
    diffusion_A2_per_fs = {"Li": 1.0e-3} if diffusion_A2_per_fs is None else diffusion_A2_per_fs
    drift_A_per_fs = drift_A_per_fs or {}
    field_vector = np.asarray(field_V_per_A, dtype=float)
    strength = float(np.linalg.norm(field_vector))
    direction = field_vector / strength if strength > 0 else np.array([1.0, 0.0, 0.0])
    numbers, masses, cell, start = li3po4_like_cell(n_formula_units, seed=seed)
    name = condition_dir.name
    time_fs = np.arange(n_frames) * frame_interval_fs
    stride = max(1, int(round(frame_interval_fs / timestep_fs)))
    field_series = np.repeat(field_vector[None], n_frames, axis=0)
    z_per_atom = None
    if born_charges is not None:
        z_per_atom = np.zeros((len(numbers), 3, 3))
        for symbol, tensor in born_charges.items():
            z_per_atom[numbers == atomic_numbers[symbol]] = np.asarray(tensor, dtype=float)
    for replica in range(n_replicas):
        rng = np.random.default_rng([seed, replica])
        directory = condition_dir / f"replica_{replica}"
        directory.mkdir(parents=True, exist_ok=True)
        positions = biased_random_walk(
            numbers=numbers,
            masses=masses,
            start=start,
            n_frames=n_frames,
            frame_interval_fs=frame_interval_fs,
            diffusion_A2_per_fs={atomic_numbers[s]: d for s, d in diffusion_A2_per_fs.items()},
            drift_A_per_fs={atomic_numbers[s]: v * direction for s, v in drift_A_per_fs.items()},
            vibration_A=vibration_A,
            rng=rng,
        )
        if replica in failed_replicas:
            positions = positions + 1.0e3 * rng.normal(size=positions.shape)
        if wrap:
            fractional = np.linalg.solve(cell.T, positions.reshape(-1, 3).T).T % 1.0
            positions = (fractional @ cell).reshape(positions.shape)
        forces = charges = None
        if z_per_atom is not None:
            tensors = np.repeat(z_per_atom[None], n_frames, axis=0)
            if store in ("field_forces", "both"):
                forces = fieldphysics.field_forces(tensors, field_series)
            if store in ("born_charges", "both"):
                charges = tensors
        write_trajectory(
            directory / "traj.h5",
            numbers=numbers,
            masses=masses,
            cell=cell,
            time_fs=time_fs,
            field=field_series,
            positions=positions,
            timestep_fs=timestep_fs,
            stride=stride,
            temperature_K=temperature_K,
            condition=name,
            replica=replica,
            seed=int(seed * 1000 + replica),
            field_forces=forces,
            born_charges=charges,
        )
        state = (
            {"state": "failed", "reason": "synthetic failure", "steps": n_frames // 2}
            if replica in failed_replicas
            else {"state": "completed", "reason": None, "steps": (n_frames - 1) * stride}
        )
        atomic.write_json(directory / "status.json", state)
    summary = {
        "condition": {
            "name": name,
            "phase": phase,
            "temperature_K": float(temperature_K),
            "field_strength_V_per_A": strength,
            "field_direction": direction.tolist() if strength > 0 else [0.0, 0.0, 0.0],
            "direction_label": "synthetic" if strength > 0 else "none",
            "replicas": n_replicas,
            "field_V_per_A": field_vector.tolist(),
        },
        "replicas_completed": n_replicas - len(failed_replicas),
        "replicas_failed": len(failed_replicas),
    }
    atomic.write_json(condition_dir / "summary.json", summary)
    return summary
