"""Parsers for Quantum ESPRESSO output: ph.x Born charges / ε∞ and pw.x SCF labels.

Born-charge convention (binding, DESIGN.md): ``Z[κ, α, β] = ∂F_{κβ}/∂E_α / e``,
α = field index, β = force index, shape ``(n_atoms, 3, 3)``, unit e.

QE 6.7 ``ph.x`` prints, under ``Effective charges (d Force / dE) in cartesian axis``,
one 3×3 block per atom whose rows ``Ex, Ey, Ez`` are the field direction α and whose
columns are the displacement/force direction β (``zstareu(α, β, κ)``) — already our
order. Newer QE versions print this raw block (``without acoustic sum rule applied``)
and then an ``with asr applied`` block; we always read the raw block and apply the ASR
correction ourselves (uniform subtraction of the mean), keeping the residual.

``ph.out`` prints 5 decimals. ``_ph0/<prefix>.phsave/tensors.xml`` holds the same
tensors at full precision with each 3×3 block transposed (``[β, α]``); when it is
present :func:`read_ph_output` checks it against ``ph.out`` (to the printed precision)
and returns its full-precision values.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase.io import read as ase_read

from bornfield.errors import InputFileError
from bornfield.fieldphysics import asr_correct

_FLOAT = r"[-+]?(?:\d+\.\d*|\.\d+)(?:[eEdD][-+]?\d+)?"
_VERSION_RE = re.compile(r"Program\s+(\w+)\s+v\.(\S+)\s+starts")
_PRINT_TOL = 1.5e-5  # half a unit in the 5th printed decimal, plus slack


def _qe_version(text: str) -> str | None:
    match = _VERSION_RE.search(text)
    return match.group(2) if match else None


def _read_text(path: Path, what: str) -> str:
    if not path.exists():
        raise InputFileError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputFileError(f"{what} {path} cannot be read: {exc}") from exc


@dataclass
class PhOutput:
    """Born charges and ε∞ from one ph.x run.

    Attributes:
        born_charges: ASR-corrected Z, shape (N, 3, 3), [atom, field α, force β], e.
        born_charges_raw: as printed by ph.x (no ASR), same shape and order.
        asr_residual: ``born_charges_raw.sum(axis=0)``, (3, 3), e.
        epsilon_inf: electronic dielectric tensor, (3, 3), dimensionless.
        species: chemical symbols in ph.x atom order.
        qe_version: version string printed by ph.x (e.g. ``6.7MaX``).
        source: path of the parsed ph.out.
        precision: ``"tensors.xml"`` (full) or ``"ph.out"`` (5 decimals).
    """

    born_charges: np.ndarray
    born_charges_raw: np.ndarray
    asr_residual: np.ndarray
    epsilon_inf: np.ndarray
    species: list[str]
    qe_version: str | None
    source: str
    precision: str = "ph.out"
    notes: list[str] = field(default_factory=list)


def apply_asr(z_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Uniform acoustic-sum-rule correction: subtract the mean over atoms.

    Returns (corrected Z with ``sum(axis=0) == 0``, residual ``z_raw.sum(axis=0)``).
    """
    return asr_correct(z_raw), z_raw.sum(axis=0)


def _parse_matrix_rows(lines: list[str], start: int, count: int, source: str, what: str) -> np.ndarray:
    rows = []
    for offset in range(count):
        if start + offset >= len(lines):
            raise InputFileError(f"{source}: truncated inside {what}")
        numbers = re.findall(_FLOAT, lines[start + offset].split("(", 1)[-1])
        if len(numbers) != 3:
            raise InputFileError(f"{source}: garbled line in {what}: {lines[start + offset].strip()!r}")
        rows.append([float(x.replace("D", "E").replace("d", "e")) for x in numbers])
    return np.array(rows)


def read_tensors_xml(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(ε∞ (3,3), Z (N,3,3) in [atom, α, β] order or None) from ph.x's ``tensors.xml``.

    QE writes ``DIELECTRIC_CONSTANT`` and, once the effective charges are done
    (``DONE_EFFECTIVE_CHARGE_EU`` true), ``EFFECTIVE_CHARGES_EU`` with each atom's 3×3
    block stored transposed ([β, α], Fortran order of ``zstareu(α, β, κ)``); it is
    transposed back here. Z is None when the file holds no finished effective charges.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise InputFileError(f"{path}: not readable XML: {exc}") from exc
    eps_node = root.find(".//DIELECTRIC_CONSTANT")
    if eps_node is None:
        eps_node = root.find(".//EPSILON")
    if eps_node is None or len((eps_node.text or "").split()) != 9:
        raise InputFileError(f"{path}: no DIELECTRIC_CONSTANT with 9 numbers")
    eps = np.array([float(v) for v in eps_node.text.split()]).reshape(3, 3).T
    done = root.find(".//DONE_EFFECTIVE_CHARGE_EU")
    zeu = root.find(".//EFFECTIVE_CHARGES_EU")
    if zeu is None or (done is not None and (done.text or "").strip().lower() != "true"):
        return eps, None
    values = [float(v) for v in (zeu.text or "").split()]
    if not values or len(values) % 9:
        raise InputFileError(f"{path}: EFFECTIVE_CHARGES_EU holds {len(values)} numbers, not a multiple of 9")
    blocks = np.array(values).reshape(-1, 3, 3)  # per atom, rows = β (stored transposed)
    return eps, np.transpose(blocks, (0, 2, 1))


def read_ph_output(path: str | Path, tensors_xml: str | Path | None = None, use_tensors_xml: bool = True) -> PhOutput:
    """Parse a finished ph.x output (QE 6.x/7.x) into a :class:`PhOutput`.

    ``tensors_xml``: explicit path of ``tensors.xml``; by default
    ``<dir>/tmp/_ph0/*.phsave/tensors.xml``, ``<dir>/_ph0/*.phsave/tensors.xml`` or
    ``<dir>/tensors.xml`` is used when present (``use_tensors_xml=False``: ph.out only).
    Raises InputFileError for missing, truncated, non-converged or garbled output.
    """
    path = Path(path)
    text = _read_text(path, "ph.x output")
    source = str(path)
    if "Program PHONON" not in text:
        raise InputFileError(f"{source}: not a ph.x output (no 'Program PHONON' banner)")
    if "No convergence has been achieved" in text:
        raise InputFileError(f"{source}: ph.x linear response did not converge")
    if "Error in routine" in text:
        match = re.search(r"Error in routine\s+(.*)\n\s*(.*)", text)
        raise InputFileError(f"{source}: ph.x stopped with an error: {match.group(0).strip() if match else ''}")
    if "JOB DONE" not in text:
        raise InputFileError(f"{source}: ph.x output is truncated (no 'JOB DONE'; killed or still running?)")
    lines = text.splitlines()
    eps_starts = [i for i, line in enumerate(lines) if "Dielectric constant in cartesian axis" in line]
    if not eps_starts:
        raise InputFileError(f"{source}: no 'Dielectric constant in cartesian axis' block (run truncated?)")
    eps_line = next((j for j in range(eps_starts[-1] + 1, min(eps_starts[-1] + 4, len(lines))) if "(" in lines[j]), None)
    if eps_line is None:
        raise InputFileError(f"{source}: truncated dielectric tensor block")
    epsilon = _parse_matrix_rows(lines, eps_line, 3, source, "dielectric tensor")

    z_headers = [
        i for i, line in enumerate(lines)
        if "Effective charges (d Force / dE) in cartesian axis" in line and "with asr applied" not in line
    ]
    if not z_headers:
        raise InputFileError(f"{source}: no 'Effective charges (d Force / dE)' block (run truncated or zeu off?)")
    species: list[str] = []
    blocks: list[np.ndarray] = []
    i = z_headers[-1] + 1
    while i < len(lines):
        match = re.match(r"\s*atom\s+(\d+)\s+([A-Za-z][A-Za-z0-9_]*)", lines[i])
        if match:
            labels = [lines[i + k].split("(")[0].strip() if i + k < len(lines) else "" for k in (1, 2, 3)]
            if labels != ["Ex", "Ey", "Ez"]:
                raise InputFileError(f"{source}: atom {match.group(1)} block rows are {labels}, expected Ex, Ey, Ez")
            blocks.append(_parse_matrix_rows(lines, i + 1, 3, source, f"Born charge block of atom {match.group(1)}"))
            species.append(re.sub(r"[^A-Za-z].*$", "", match.group(2)))
            i += 4
            continue
        if blocks and lines[i].strip():
            break
        i += 1
    if not blocks:
        raise InputFileError(f"{source}: Born charge block has no atoms")
    n_atoms_match = re.search(r"number of atoms/cell\s*=\s*(\d+)", text)
    if n_atoms_match and int(n_atoms_match.group(1)) != len(blocks):
        raise InputFileError(
            f"{source}: Born charge block lists {len(blocks)} atoms but the cell has {n_atoms_match.group(1)} (truncated?)"
        )
    z_raw = np.array(blocks)
    notes: list[str] = []
    precision = "ph.out"
    xml_path = Path(tensors_xml) if tensors_xml else _find_tensors_xml(path.parent)
    if not use_tensors_xml:
        xml_path = None
    if xml_path is not None:
        eps_xml, z_xml = read_tensors_xml(xml_path)
    if xml_path is not None and z_xml is None:
        notes.append(f"{xml_path} holds no finished effective charges; 5-decimal values from ph.out")
    elif xml_path is not None:
        if z_xml.shape != z_raw.shape:
            raise InputFileError(f"{xml_path}: {z_xml.shape[0]} atoms, but {source} has {z_raw.shape[0]}")
        dz = float(np.abs(z_xml - z_raw).max())
        deps = float(np.abs(eps_xml - epsilon).max())
        if dz > _PRINT_TOL or deps > 1e-6 * max(1.0, np.abs(epsilon).max()):
            raise InputFileError(
                f"{xml_path} disagrees with {source}: max |ΔZ| = {dz:.2e} e, max |Δε| = {deps:.2e}"
            )
        z_raw, epsilon, precision = z_xml, eps_xml, "tensors.xml"
        notes.append(f"full-precision tensors from {xml_path}")
    z_corrected, residual = apply_asr(z_raw)
    return PhOutput(
        born_charges=z_corrected,
        born_charges_raw=z_raw,
        asr_residual=residual,
        epsilon_inf=epsilon,
        species=species,
        qe_version=_qe_version(text),
        source=source,
        precision=precision,
        notes=notes,
    )


def _find_tensors_xml(directory: Path) -> Path | None:
    for pattern in ("tmp/_ph0/*.phsave/tensors.xml", "_ph0/*.phsave/tensors.xml", "tensors.xml"):
        found = sorted(directory.glob(pattern))
        if found:
            return found[0]
    return None


@dataclass
class PwOutput:
    """Labels of one converged pw.x SCF run (ASE units: eV, eV/Å, eV/Å³)."""

    energy: float
    forces: np.ndarray
    stress: np.ndarray | None
    qe_version: str | None
    n_scf_iterations: int
    source: str
    atoms: object = None


#: pw.x failure classes returned by :func:`classify_pw_failure`.
PW_FAILURES = ("scf_not_converged", "truncated", "qe_error", "missing")


def never_started(text: str, program: str) -> str | None:
    """Why a QE output shows that ``program`` ("PWSCF", "PHONON") never started, else None.

    QE prints ``Program <NAME>`` first; without it the launcher, MPI or environment
    failed, which says nothing about the structure (the output's last lines say why).
    """
    if f"Program {program}" in text:
        return None
    tail = " ".join(text.strip().splitlines()[-3:])[:300]
    return f"{program} never started (MPI launcher or environment failure): {tail!r}"


def classify_pw_failure(path: str | Path) -> tuple[str, str] | None:
    """None if the pw.x output finished a converged SCF, else (class, human reason)."""
    path = Path(path)
    if not path.exists():
        return "missing", f"{path} does not exist"
    text = path.read_text(encoding="utf-8", errors="replace")
    reason = never_started(text, "PWSCF")
    if reason is not None:
        return "not_started", f"{reason} ({path})"
    if "Maximum CPU time exceeded" in text:
        return "truncated", f"pw.x stopped at max_seconds; restart files written ({path})"
    if "convergence NOT achieved" in text:
        steps = re.search(r"convergence NOT achieved after\s+(\d+)\s+iterations", text)
        return "scf_not_converged", f"SCF not converged after {steps.group(1) if steps else '?'} iterations ({path})"
    if "Error in routine" in text:
        match = re.search(r"Error in routine\s+(.*)\n\s*(.*)", text)
        return "qe_error", f"pw.x error: {' '.join(match.group(0).split()) if match else '?'} ({path})"
    if "convergence has been achieved" not in text or "JOB DONE" not in text:
        return "truncated", f"pw.x output ends before 'convergence has been achieved'/'JOB DONE' ({path})"
    return None


def read_pw_output(path: str | Path) -> PwOutput:
    """Energy, forces, stress of a converged pw.x SCF via ASE's reader; raise otherwise."""
    path = Path(path)
    failure = classify_pw_failure(path)
    if failure is not None:
        raise InputFileError(f"{path}: no usable SCF labels: {failure[1]}")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        atoms = ase_read(path, format="espresso-out", index=-1)
    except Exception as exc:  # noqa: BLE001 - ASE raises many types on garbled files
        raise InputFileError(f"{path}: ASE cannot read the pw.x output: {exc}") from exc
    calc = atoms.calc
    if calc is None or "energy" not in calc.results or "forces" not in calc.results:
        raise InputFileError(f"{path}: pw.x output lacks total energy or forces (tprnfor off?)")
    forces = np.asarray(calc.results["forces"], dtype=float)
    if not np.all(np.isfinite(forces)):
        raise InputFileError(f"{path}: non-finite forces")
    stress = calc.results.get("stress")
    iterations = re.findall(r"convergence has been achieved in\s+(\d+)\s+iterations", text)
    return PwOutput(
        energy=float(calc.results["energy"]),
        forces=forces,
        stress=None if stress is None else np.asarray(stress, dtype=float),
        qe_version=_qe_version(text),
        n_scf_iterations=int(iterations[-1]) if iterations else -1,
        source=str(path),
        atoms=atoms,
    )


_BERRY_FIELD_RE = re.compile(
    r"Using Berry phase electric field\s*\n\s*In a\.u\.\(Ry\)\s+cartesian system of reference\s*\n"
    rf"\s*({_FLOAT})\s*\n\s*({_FLOAT})\s*\n\s*({_FLOAT})")


def read_berry_field(path: str | Path) -> np.ndarray | None:
    """The homogeneous field (Ry a.u., Cartesian, shape (3,)) a ``lelfield`` pw.x run printed.

    None when the output shows no Berry-phase field (``lelfield`` off). QE's Rydberg atomic
    unit of field is 36.3609 V/Å (bornfield.dft.efield.RY_AU_FIELD_V_PER_A).
    """
    path = Path(path)
    text = _read_text(path, "pw.x output")
    match = _BERRY_FIELD_RE.search(text)
    if match is None:
        return None
    return np.array([float(v.replace("D", "E").replace("d", "e")) for v in match.groups()])


_PROGRAM_TIME_RE = re.compile(r"^\s*(PWSCF|PHONON)\s*:\s*(.+?)\s+CPU\s+(.+?)\s+WALL\s*$", re.MULTILINE)
_DURATION_RE = re.compile(r"^(?:(\d+)h\s*)?(?:(\d+)m\s*)?(?:([\d.]+)s)?$")


def _qe_duration_s(text: str) -> float | None:
    """Seconds of a QE duration such as ``27.22s``, ``4m 0.76s`` or ``1h24m``."""
    match = _DURATION_RE.match(text.strip())
    if match is None or not any(match.groups()):
        return None
    hours, minutes, seconds = match.groups()
    return 3600.0 * int(hours or 0) + 60.0 * int(minutes or 0) + float(seconds or 0.0)


def read_program_times(text: str, program: str = "PWSCF") -> tuple[float, float] | None:
    """(CPU s, wall s) of the last ``PWSCF :`` (or ``PHONON :``) summary line of a QE output text.

    The CPU time is that of the first MPI rank; None when the run printed no summary line.
    """
    found = [m for m in _PROGRAM_TIME_RE.finditer(text) if m.group(1) == program]
    if not found:
        return None
    cpu, wall = (_qe_duration_s(found[-1].group(i)) for i in (2, 3))
    return None if cpu is None or wall is None else (cpu, wall)
