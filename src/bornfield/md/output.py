"""Per-replica output files: ``traj.h5``, ``thermo.csv``, checkpoints, ``status.json``.

Formats follow ``docs/architecture.md``. A killed run must leave consistent,
readable data: trajectory frames and thermo rows are queued in memory and
appended at each checkpoint (the HDF5 file is open only during that write, so
a SIGKILL between checkpoints cannot corrupt it), then the checkpoint is
written; on restart both files are truncated back to the checkpoint's step.
Checkpoints and JSON files are written to a temporary file and renamed.
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import h5py
import numpy as np

from bornfield import atomic
from bornfield.errors import InputFileError

THERMO_COLUMNS = (
    "step",
    "time_fs",
    "temperature_K",
    "epot_eV",
    "ekin_eV",
    "econs_eV",
    "field_work_eV",
    "field_x_V_per_A",
    "field_y_V_per_A",
    "field_z_V_per_A",
)
"""Columns of thermo.csv. ``econs_eV`` = epot + ekin − field work − energy the
thermostat added (NaN for Langevin, whose heat exchange is not tracked);
``time_fs`` = (step − field_on_step)·dt, the clock of traj.h5 (negative during
the zero-field equilibration)."""


def model_files_record(potential_files: list[Path], born_file: Path) -> dict:
    """``{"potentials": [{"file", "sha256"}, ...], "born": {"file", "sha256"}}``: the model files an MD
    run records (summary.json ``models``, the analysis record's ``md_run.models``)."""
    from bornfield.models.io import file_sha256

    return {"potentials": [{"file": str(p), "sha256": file_sha256(p)} for p in potential_files],
            "born": {"file": str(born_file), "sha256": file_sha256(born_file)}}


def model_files_changes(recorded: dict, current: dict) -> list[str]:
    """How two ``model_files_record`` dicts differ, one phrase per changed file ("potential_1.pt
    sha256 <was>, now <now>", names of ``current``) and one for a changed committee size; empty for the
    same model set."""
    changes = [] if len(recorded["potentials"]) == len(current["potentials"]) else [
        f"{len(recorded['potentials'])} potentials, now {len(current['potentials'])}"]
    pairs = [*zip(recorded["potentials"], current["potentials"]), (recorded["born"], current["born"])]
    changes += [f"{Path(now['file']).name} sha256 {was['sha256'][:12]}, now {now['sha256'][:12]}"
                for was, now in pairs if was["sha256"] != now["sha256"]]
    return changes


def md_core_hours(wall_time_s: float, mpi_ranks: int) -> float:
    """Core-hours of one MD job invocation: its wall time (s) x the MPI ranks it held.

    Replicas of one rank run concurrently (batched) or one after the other inside that wall time, so
    their own wall times are not added up.
    """
    return float(wall_time_s) * int(mpi_ranks) / 3600.0


def invocations_core_hours(invocations: list[dict]) -> float:
    """Core-hours of a condition over all its invocations (``InvocationClock`` records)."""
    return sum(md_core_hours(item["wall_time_s"], item["mpi_ranks"]) for item in invocations)


class InvocationClock:
    """Wall time of every invocation of a condition's MD job, kept in ``<condition>/invocations.json``.

    A list of ``{"started_utc", "mpi_ranks", "wall_time_s", "finished"}``, one per invocation; the
    running entry is rewritten every ``interval_s`` seconds, so a killed invocation (resumed later from
    checkpoints) still counts up to its last update. Use as a context manager on the rank that writes.
    """

    FILE = "invocations.json"

    def __init__(self, condition_dir: Path, mpi_ranks: int, interval_s: float = 60.0):
        self.path = Path(condition_dir) / self.FILE
        self.previous = read_json(self.path) if self.path.is_file() else []
        if not isinstance(self.previous, list):
            raise InputFileError(f"{self.path}: expected a list of invocation records")
        self.entry = {"started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
                      "mpi_ranks": int(mpi_ranks), "wall_time_s": 0.0, "finished": False}
        self.interval_s = float(interval_s)
        self._start = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def invocations(self) -> list[dict]:
        return [*self.previous, dict(self.entry)]

    def update(self, finished: bool = False) -> list[dict]:
        """Record the running invocation's wall time so far; returns all invocations."""
        with self._lock:
            self.entry["wall_time_s"] = round(time.perf_counter() - self._start, 3)
            self.entry["finished"] = bool(finished)
            write_json(self.path, self.invocations)
            return self.invocations

    def _tick(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.update()

    def __enter__(self) -> Self:
        self._start = time.perf_counter()
        self.update()
        self._thread = threading.Thread(target=self._tick, name="invocation-clock", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.update(finished=exc_info[0] is None)


def write_json(path: Path, data: Any) -> None:
    atomic.write_json(path, data, indent=2, sort_keys=True)


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{path}: not valid JSON ({exc})") from exc


class TrajectoryWriter:
    """Appends frames to ``traj.h5`` (format ``bornfield-traj`` version 1).

    Args:
        path: file path.
        attributes: root attributes (timestep_fs, stride, temperature_K, …).
        numbers: (N,) atomic numbers; masses: (N,) amu; cell: (3, 3) Å.
        velocities / field_forces / born_charges: which optional datasets to write.
        keep_until_step: on restart, frames with ``step`` greater than this are
            dropped (they were written after the last checkpoint); None = new file.
    """

    def __init__(
        self,
        path: Path,
        attributes: dict,
        numbers: np.ndarray,
        masses: np.ndarray,
        cell: np.ndarray,
        velocities: bool = False,
        field_forces: bool = True,
        born_charges: bool = False,
        keep_until_step: int | None = None,
    ):
        self.path = Path(path)
        n_atoms = len(numbers)
        self.optional = {"velocities": velocities, "field_forces": field_forces, "born_charges": born_charges}
        self.buffer: list[dict] = []
        if keep_until_step is not None and self.path.exists():
            try:
                with h5py.File(self.path, "a") as file:
                    steps = file["step"][:]
                    keep = int(np.searchsorted(steps, keep_until_step, side="right"))
                    for dataset in file.values():
                        if isinstance(dataset, h5py.Dataset) and dataset.maxshape[0] is None:
                            dataset.resize(keep, axis=0)
                return
            except (OSError, KeyError) as exc:
                raise InputFileError(
                    f"{self.path}: trajectory unreadable on restart ({exc}); delete the replica "
                    "directory to start it again") from exc
        with atomic.atomic_path(self.path) as tmp, h5py.File(tmp, "w") as file:
            file.attrs["format"] = "bornfield-traj"
            file.attrs["version"] = 1
            file.attrs["units"] = "ASE: Å, eV, fs, amu, e; field V/Å"
            for key, value in attributes.items():
                file.attrs[key] = value
            file.create_dataset("numbers", data=np.asarray(numbers, dtype=np.int32))
            file.create_dataset("masses", data=np.asarray(masses, dtype=np.float64))
            file.create_dataset("cell", data=np.asarray(cell, dtype=np.float64))
            chunk = 16

            def resizable(name, shape, dtype):
                file.create_dataset(
                    name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=(chunk, *shape)
                )

            resizable("step", (), np.int64)
            resizable("time_fs", (), np.float64)
            resizable("field", (3,), np.float64)
            resizable("positions", (n_atoms, 3), np.float64)
            if velocities:
                resizable("velocities", (n_atoms, 3), np.float32)
            if field_forces:
                resizable("field_forces", (n_atoms, 3), np.float32)
            if born_charges:
                resizable("born_charges", (n_atoms, 3, 3), np.float32)

    def append(self, step: int, time_fs: float, field: np.ndarray, positions: np.ndarray,
               velocities_A_per_fs: np.ndarray | None = None, field_forces: np.ndarray | None = None,
               born_charges: np.ndarray | None = None) -> None:
        """Queue one frame (positions unwrapped, Å); written at the next :meth:`flush`."""
        values = {
            "step": step,
            "time_fs": time_fs,
            "field": np.asarray(field, dtype=float),
            "positions": np.array(positions, dtype=np.float64),
        }
        if self.optional["velocities"]:
            values["velocities"] = np.array(velocities_A_per_fs, dtype=np.float32)
        if self.optional["field_forces"]:
            values["field_forces"] = np.array(field_forces, dtype=np.float32)
        if self.optional["born_charges"]:
            values["born_charges"] = np.array(born_charges, dtype=np.float32)
        self.buffer.append(values)

    def flush(self) -> None:
        """Append the queued frames; the file is open only during this call, so a
        killed run leaves it closed and readable (frames up to the last flush)."""
        if not self.buffer:
            return
        with h5py.File(self.path, "a") as file:
            start = int(file["step"].shape[0])
            count = len(self.buffer)
            for name in self.buffer[0]:
                dataset = file[name]
                dataset.resize(start + count, axis=0)
                dataset[start:start + count] = np.stack([frame[name] for frame in self.buffer])
        self.buffer = []

    def discard(self) -> None:
        """Drop queued frames (a failed replica keeps only checkpointed frames)."""
        self.buffer = []

    def close(self) -> None:
        self.buffer = []


class ThermoWriter:
    """``thermo.csv`` rows, queued and appended at :meth:`flush` (checkpoints).

    On restart, rows after ``keep_until_step`` (and any torn last line) are dropped.
    """

    def __init__(self, path: Path, keep_until_step: int | None = None):
        self.path = Path(path)
        self.buffer: list[list[str]] = []
        rows: list[list[str]] = []
        if keep_until_step is not None and self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as handle:
                reader = csv.reader(handle)
                header = next(reader, None)
                if header is not None and tuple(header) == THERMO_COLUMNS:
                    for row in reader:
                        try:
                            complete = len(row) == len(THERMO_COLUMNS) and all(row)
                            if complete and int(row[0]) <= keep_until_step:
                                rows.append(row)
                        except ValueError:
                            continue
        with atomic.atomic_path(self.path) as tmp, open(tmp, "x", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(THERMO_COLUMNS)
            writer.writerows(rows)

    def append(self, values: dict) -> None:
        row = []
        for column in THERMO_COLUMNS:
            value = values[column]
            row.append(str(int(value)) if column == "step" else repr(float(value)))
        self.buffer.append(row)

    def flush(self) -> None:
        if not self.buffer:
            return
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(self.buffer)
            handle.flush()
            os.fsync(handle.fileno())
        self.buffer = []

    def discard(self) -> None:
        self.buffer = []

    def close(self) -> None:
        self.buffer = []


def save_checkpoint(path: Path, arrays: dict[str, np.ndarray], metadata: dict) -> None:
    """Write a checkpoint atomically (npz: arrays + a JSON metadata string)."""
    with atomic.atomic_path(path) as tmp, open(tmp, "xb") as handle:
        np.savez(handle, metadata=np.array(json.dumps(metadata, sort_keys=True)), **arrays)


def load_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files if key != "metadata"}
            metadata = json.loads(str(data["metadata"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # truncated/corrupt npz
        raise InputFileError(f"{path}: unreadable MD checkpoint ({exc}); delete it to restart from scratch") from exc
    return arrays, metadata
