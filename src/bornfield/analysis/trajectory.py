"""Reading ``traj.h5`` trajectories of the MD stage, replica discovery, unwrapping.

The trajectory format (``docs/architecture.md``): root attributes
``format = "bornfield-traj"``, ``version``, ``timestep_fs``, ``stride``,
``temperature_K``, …; datasets ``numbers`` (N,), ``masses`` (N,) amu,
``cell`` (3, 3) Å (rows are cell vectors), ``step`` (T,), ``time_fs`` (T,),
``field`` (T, 3) V/Å, ``positions`` (T, N, 3) Å **unwrapped**, optional
``velocities`` (T, N, 3) Å/fs, ``field_forces`` (T, N, 3) eV/Å and
``born_charges`` (T, N, 3, 3) e.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase.geometry import find_mic

from bornfield.errors import InputFileError
from bornfield.fieldphysics import field_forces

LOG = logging.getLogger(__name__)

TRAJ_FORMAT = "bornfield-traj"
SUPPORTED_VERSIONS = (1,)
REQUIRED_DATASETS = ("numbers", "masses", "cell", "time_fs", "field", "positions")
_REPLICA_DIR = re.compile(r"^replica_(\d+)$")


@dataclass
class Trajectory:
    """One replica's trajectory in memory (field forces are read separately).

    Attributes:
        path: the ``traj.h5`` file.
        numbers: (N,) atomic numbers.
        masses: (N,) amu.
        cell: (3, 3) Å, rows are cell vectors (fixed cell).
        time_fs: (T,) frame times in fs.
        field: (T, 3) applied field in V/Å.
        positions: (T, N, 3) unwrapped positions in Å (None when read with
            ``load_positions=False``, e.g. to check many replicas cheaply).
        attrs: root attributes of the file (``temperature_K``, ``timestep_fs``, …).
        has_field_forces: the file stores ``field_forces``.
        has_born_charges: the file stores ``born_charges``.
    """

    path: Path
    numbers: np.ndarray
    masses: np.ndarray
    cell: np.ndarray
    time_fs: np.ndarray
    field: np.ndarray
    positions: np.ndarray | None
    attrs: dict[str, Any] = field(default_factory=dict)
    has_field_forces: bool = False
    has_born_charges: bool = False
    frame_slice: slice = field(default_factory=lambda: slice(None))

    @property
    def n_frames(self) -> int:
        return int(self.time_fs.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def frame_interval_fs(self) -> float:
        """Time between stored frames (fs)."""
        return float(self.time_fs[1] - self.time_fs[0]) if self.n_frames > 1 else float("nan")

    @property
    def volume_A3(self) -> float:
        return float(abs(np.linalg.det(self.cell)))

    @property
    def symbols(self) -> list[str]:
        from ase.data import chemical_symbols

        return [chemical_symbols[int(z)] for z in self.numbers]


def _attr_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def unwrap(positions: np.ndarray, cell: np.ndarray, pbc: tuple[bool, bool, bool] = (True, True, True)) -> np.ndarray:
    """Unwrap a trajectory of wrapped positions across periodic boundaries.

    Every frame-to-frame displacement is replaced by its minimum-image
    vector (``ase.geometry.find_mic``, correct for triclinic cells) and the
    displacements are accumulated from the first frame. This is exact as long
    as no atom moves by more than half a cell height between stored frames.

    Args:
        positions: (T, N, 3) wrapped positions in Å.
        cell: (3, 3) Å, rows are cell vectors (fixed cell).
        pbc: periodic directions.

    Returns:
        (T, N, 3) unwrapped positions in Å; frame 0 is unchanged.
    """
    positions = np.asarray(positions, dtype=float)
    if positions.ndim != 3 or positions.shape[2] != 3:
        raise ValueError(f"positions must have shape (T, N, 3), got {positions.shape}")
    cell = np.asarray(cell, dtype=float)
    unwrapped = np.empty_like(positions)
    unwrapped[0] = positions[0]
    for t in range(1, positions.shape[0]):
        step, _ = find_mic(positions[t] - positions[t - 1], cell, pbc)
        unwrapped[t] = unwrapped[t - 1] + step
    return unwrapped


def max_frame_jump_fraction(positions: np.ndarray, cell: np.ndarray) -> float:
    """Largest frame-to-frame displacement in units of the smallest cell height.

    Unwrapped trajectories give small values (≪ 0.5); a wrapped trajectory
    shows jumps close to a full cell height when an atom crosses a boundary.
    """
    if positions.shape[0] < 2:
        return 0.0
    heights = abs(np.linalg.det(cell)) / np.linalg.norm(
        np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1
    )
    jumps = np.linalg.norm(np.diff(positions, axis=0), axis=-1)
    return float(jumps.max() / heights.min())


def read_trajectory(
    path: str | Path,
    *,
    equilibration_fs: float = 0.0,
    unwrap_positions: bool = False,
    load_positions: bool = True,
) -> Trajectory:
    """Read and validate one ``traj.h5``.

    Args:
        path: trajectory file.
        equilibration_fs: frames earlier than ``time_fs[0] + equilibration_fs``
            are discarded (the field and thermostat settle).
        unwrap_positions: the file holds *wrapped* positions (not the bornfield
            format, e.g. converted from elsewhere): unwrap them with :func:`unwrap`.
        load_positions: read the (large) positions dataset; False reads only the
            metadata, times and field.

    Raises:
        InputFileError: missing file, wrong format, missing datasets, inconsistent
            shapes, non-uniform frame times, or positions that are evidently wrapped.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: trajectory file not found")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise InputFileError(f"{path}: not a readable HDF5 file ({exc})") from exc
    with handle:
        attrs = {key: _attr_value(value) for key, value in handle.attrs.items()}
        fmt = attrs.get("format")
        if fmt != TRAJ_FORMAT:
            raise InputFileError(f"{path}: root attribute format={fmt!r}, expected {TRAJ_FORMAT!r}")
        if int(attrs.get("version", -1)) not in SUPPORTED_VERSIONS:
            raise InputFileError(
                f"{path}: trajectory version {attrs.get('version')!r} not supported "
                f"(this bornfield reads {SUPPORTED_VERSIONS})"
            )
        missing = [name for name in REQUIRED_DATASETS if name not in handle]
        if missing:
            raise InputFileError(f"{path}: missing datasets {missing}")
        numbers = np.asarray(handle["numbers"][()], dtype=int)
        masses = np.asarray(handle["masses"][()], dtype=float)
        cell = np.asarray(handle["cell"][()], dtype=float)
        time_fs = np.asarray(handle["time_fs"][()], dtype=float)
        n_atoms = numbers.shape[0]
        n_frames = time_fs.shape[0]
        shapes = {
            "masses": (masses.shape, (n_atoms,)),
            "cell": (cell.shape, (3, 3)),
            "field": (handle["field"].shape, (n_frames, 3)),
            "positions": (handle["positions"].shape, (n_frames, n_atoms, 3)),
        }
        if "field_forces" in handle:
            shapes["field_forces"] = (handle["field_forces"].shape, (n_frames, n_atoms, 3))
        if "born_charges" in handle:
            shapes["born_charges"] = (handle["born_charges"].shape, (n_frames, n_atoms, 3, 3))
        bad = {name: got for name, (got, want) in shapes.items() if tuple(got) != want}
        if bad:
            raise InputFileError(
                f"{path}: dataset shapes {bad} inconsistent with {n_frames} frames of {n_atoms} atoms"
            )
        if n_frames < 2:
            raise InputFileError(f"{path}: {n_frames} frame(s); at least 2 are needed for any dynamics")
        intervals = np.diff(time_fs)
        if np.any(intervals <= 0) or not np.allclose(intervals, intervals[0], rtol=1e-6, atol=1e-9):
            raise InputFileError(
                f"{path}: time_fs is not uniformly increasing (intervals {intervals.min():g}…"
                f"{intervals.max():g} fs); multiple-origin MSD needs equally spaced frames"
            )
        keep = time_fs >= time_fs[0] + float(equilibration_fs) - 1e-9 * max(1.0, abs(time_fs[0]))
        first = int(np.argmax(keep))
        if n_frames - first < 2:
            raise InputFileError(
                f"{path}: equilibration_fs={equilibration_fs} leaves {n_frames - first} frame(s) "
                f"of a {time_fs[-1] - time_fs[0]:g} fs trajectory"
            )
        frame_slice = slice(first, n_frames)
        positions = np.asarray(handle["positions"][first:], dtype=float) if load_positions else None
        field_values = np.asarray(handle["field"][first:], dtype=float)
        has_field_forces = "field_forces" in handle
        has_born_charges = "born_charges" in handle
    if not np.all(np.isfinite(field_values)) or (positions is not None and not np.all(np.isfinite(positions))):
        raise InputFileError(f"{path}: positions or field contain NaN/inf")
    if positions is None:
        pass
    elif unwrap_positions:
        positions = unwrap(positions, cell)
    else:
        jump = max_frame_jump_fraction(positions, cell)
        if jump > 0.4:
            raise InputFileError(
                f"{path}: an atom moves {jump:.2f} cell heights between two frames: the positions "
                "look wrapped (bornfield trajectories store unwrapped positions). Pass "
                "--unwrap (analysis setting unwrap: true) for wrapped input"
            )
    return Trajectory(
        path=path,
        numbers=numbers,
        masses=masses,
        cell=cell,
        time_fs=time_fs[first:],
        field=field_values,
        positions=positions,
        attrs=attrs,
        has_field_forces=has_field_forces,
        has_born_charges=has_born_charges,
        frame_slice=frame_slice,
    )


def iter_field_forces(trajectory: Trajectory, atom_indices: np.ndarray, chunk_frames: int = 256):
    """Yield (field (t, 3) V/Å, field forces (t, n, 3) eV/Å) in chunks of frames.

    Uses the stored ``field_forces`` if present, else recomputes
    ``F[κ] = Z[κ].T @ E`` from ``born_charges`` (:func:`bornfield.fieldphysics.field_forces`).

    Raises:
        InputFileError: the file stores neither dataset.
    """
    import h5py

    if not (trajectory.has_field_forces or trajectory.has_born_charges):
        raise InputFileError(f"{trajectory.path}: neither field_forces nor born_charges stored")
    start = trajectory.frame_slice.start or 0
    atom_indices = np.asarray(atom_indices, dtype=int)
    with h5py.File(trajectory.path, "r") as handle:
        n_total = handle["time_fs"].shape[0]
        for lo in range(start, n_total, chunk_frames):
            hi = min(lo + chunk_frames, n_total)
            field_chunk = np.asarray(handle["field"][lo:hi], dtype=float)
            if trajectory.has_field_forces:
                forces = np.asarray(handle["field_forces"][lo:hi], dtype=float)[:, atom_indices]
            else:
                charges = np.asarray(handle["born_charges"][lo:hi], dtype=float)[:, atom_indices]
                forces = field_forces(charges, field_chunk)
            yield field_chunk, forces


def iter_born_charges(trajectory: Trajectory, atom_indices: np.ndarray, chunk_frames: int = 256):
    """Yield Born charges (t, n, 3, 3) in e, chunked over frames (requires ``born_charges``)."""
    import h5py

    start = trajectory.frame_slice.start or 0
    atom_indices = np.asarray(atom_indices, dtype=int)
    with h5py.File(trajectory.path, "r") as handle:
        dataset = handle["born_charges"]
        for lo in range(start, dataset.shape[0], chunk_frames):
            hi = min(lo + chunk_frames, dataset.shape[0])
            yield np.asarray(dataset[lo:hi], dtype=float)[:, atom_indices]


@dataclass
class ReplicaSet:
    """The replicas of one condition directory and which of them are usable.

    Attributes:
        condition_dir: ``{results_dir}/md/<condition>``.
        completed: trajectory paths of replicas whose status is ``completed``.
        failed: ``{"replica": r, "reason": …}`` for replicas with status ``failed``.
        incomplete: replica numbers without a final status (running or killed).
        summary: contents of ``summary.json`` (empty if absent).
    """

    condition_dir: Path
    completed: list[Path]
    failed: list[dict[str, Any]]
    incomplete: list[int]
    summary: dict[str, Any]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InputFileError(f"{path}: expected a JSON object")
    return data


def discover_replicas(condition_dir: str | Path) -> ReplicaSet:
    """Find ``replica_<r>/`` directories and sort them by their ``status.json``.

    A replica is used only when its ``status.json`` says ``"state": "completed"``;
    ``failed`` replicas are reported with their reason; replicas without a status
    file are reported as incomplete and never used.

    Raises:
        InputFileError: the directory does not exist, holds no replica, a status
            file is malformed, or a completed replica has no ``traj.h5``.
    """
    condition_dir = Path(condition_dir)
    if not condition_dir.is_dir():
        raise InputFileError(f"{condition_dir}: condition directory not found")
    summary_path = condition_dir / "summary.json"
    summary = _read_json(summary_path) if summary_path.is_file() else {}
    replica_dirs = sorted(
        (int(m.group(1)), p)
        for p in condition_dir.iterdir()
        if p.is_dir() and (m := _REPLICA_DIR.match(p.name))
    )
    if not replica_dirs:
        raise InputFileError(f"{condition_dir}: no replica_<r>/ directories")
    completed: list[Path] = []
    failed: list[dict[str, Any]] = []
    incomplete: list[int] = []
    for number, directory in replica_dirs:
        status_path = directory / "status.json"
        if not status_path.is_file():
            incomplete.append(number)
            continue
        status = _read_json(status_path)
        state = status.get("state")
        if state == "completed":
            traj = directory / "traj.h5"
            if not traj.is_file():
                raise InputFileError(f"{status_path}: state is completed but {traj} does not exist")
            completed.append(traj)
        elif state == "failed":
            failed.append({"replica": number, "reason": str(status.get("reason", "not given"))})
        else:
            raise InputFileError(
                f"{status_path}: state {state!r}; expected 'completed' or 'failed'"
            )
    return ReplicaSet(condition_dir, completed, failed, incomplete, summary)
