"""Provenance: which software, on which machine, when, produced a result.

:func:`collect_provenance` returns a JSON-ready dict with the versions of
bornfield (and its git commit when run from a checkout), Python, Quantum
ESPRESSO, torch, e3nn, ASE, LAMMPS, numpy, Snakemake and the MPI library that
mpi4py loads, plus host name and date. :func:`write_provenance` stores it
together with the configuration and the random seeds of a run, atomically.

Cheap by design (well under a second without QE, about half a second with
it): package versions come from ``importlib.metadata`` (nothing is imported,
so neither torch nor LAMMPS is loaded), the MPI library version is asked in a
subprocess that imports mpi4py *without* initialising MPI (the caller's MPI
state is never touched), and the QE version is read from the banner that
``pw.x`` prints before it looks for input.

A tool that cannot be found is recorded as ``None`` with the reason in
``unavailable`` — provenance never invents a version.
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import bornfield
from bornfield import atomic
from bornfield.errors import ConfigError

#: Distribution names (PyPI) whose versions are recorded, keyed by record name.
PYTHON_PACKAGES = {
    "numpy": "numpy",
    "scipy": "scipy",
    "torch": "torch",
    "e3nn": "e3nn",
    "ase": "ase",
    "vesin": "vesin",
    "lammps": "lammps",
    "h5py": "h5py",
    "mpi4py": "mpi4py",
    "mpich": "mpich",
    "snakemake": "snakemake",
    "snakemake_executor_plugin_slurm": "snakemake-executor-plugin-slurm",
}

#: Seconds allowed for each external probe (git, pw.x, the mpi4py subprocess).
PROBE_TIMEOUT_S = 30.0

_QE_BANNER = re.compile(r"Program\s+PWSCF\s+v\.?\s*(\S+)\s+starts")

# Imports mpi4py without MPI_Init: Get_library_version() is allowed before it.
_MPI_PROBE = (
    "import mpi4py; mpi4py.rc.initialize = False; mpi4py.rc.finalize = False; "
    "from mpi4py import MPI; print(MPI.Get_library_version().strip()); "
    "print('MPI standard %d.%d' % MPI.Get_version())"
)

# Variables that make a child process believe it is an MPI rank of the caller's job.
_MPI_LAUNCHER_ENV_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "HYDRA_", "MPIR_", "SLURM_STEP_")


def cpu_model() -> str:
    """CPU model name and architecture of this machine, e.g. ``"Intel(R) Xeon(R) Processor (x86_64)"``."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text(encoding="utf-8", errors="replace") if cpuinfo.exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    return f"{model} ({platform.machine()})" if model else platform.machine()


def _run(command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=PROBE_TIMEOUT_S,
        check=False,
        **kwargs,
    )


def _standalone_env() -> dict[str, str]:
    """The caller's environment without the variables of an MPI launcher or job step."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_MPI_LAUNCHER_ENV_PREFIXES)
    }


def python_package_versions() -> tuple[dict[str, str | None], dict[str, str]]:
    """Installed versions of :data:`PYTHON_PACKAGES` (``None`` if not installed) and reasons."""
    versions: dict[str, str | None] = {}
    unavailable: dict[str, str] = {}
    for name, distribution in PYTHON_PACKAGES.items():
        try:
            versions[name] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
            unavailable[name] = f"Python distribution {distribution!r} is not installed"
    return versions, unavailable


def git_state(directory: Path | None = None) -> dict[str, Any] | None:
    """Commit, branch and dirtiness of the git checkout bornfield runs from.

    Args:
        directory: a directory inside the checkout; default: the one holding
            the ``bornfield`` package source.

    Returns:
        ``{"commit": sha, "branch": name or None, "dirty": bool}``, or ``None``
        when that directory is not in a git work tree (an installed wheel) or
        ``git`` is not available.
    """
    directory = Path(directory) if directory is not None else Path(bornfield.__file__).parent
    git = shutil.which("git")
    if git is None:
        return None
    try:
        head = _run([git, "-C", str(directory), "rev-parse", "HEAD"])
        if head.returncode != 0:
            return None
        branch = _run([git, "-C", str(directory), "rev-parse", "--abbrev-ref", "HEAD"])
        status = _run(
            [git, "-C", str(directory), "status", "--porcelain", "--untracked-files=no"]
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    branch_name = branch.stdout.strip() if branch.returncode == 0 else ""
    return {
        "commit": head.stdout.strip(),
        "branch": branch_name if branch_name and branch_name != "HEAD" else None,
        "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None,
    }


def quantum_espresso_version(pw_executable: str = "pw.x") -> tuple[dict[str, Any], str | None]:
    """Version of Quantum ESPRESSO's ``pw.x``, read from its start-up banner.

    ``pw.x`` started without input prints ``Program PWSCF v.<version> starts``
    and then stops; it runs in a scratch directory so the ``CRASH`` file it
    leaves behind goes nowhere. The Debian package version is added when
    ``dpkg`` owns the executable.

    Args:
        pw_executable: name on ``PATH`` or path of ``pw.x``.

    Returns:
        ``({"executable": path, "version": str or None, "package": str or None}, reason)``
        where ``reason`` says why the version is unknown (``None`` if known).
    """
    path = shutil.which(pw_executable)
    record: dict[str, Any] = {"executable": path, "version": None, "package": None}
    if path is None:
        return record, f"{pw_executable!r} not found on PATH"
    path = os.path.realpath(path)
    record["executable"] = path
    reason = None
    try:
        with tempfile.TemporaryDirectory(prefix="bornfield-pw-version-") as scratch:
            banner = _run([path], cwd=scratch, env=_standalone_env())
        match = _QE_BANNER.search(banner.stdout + banner.stderr)
        if match:
            record["version"] = match.group(1)
        else:
            reason = f"{path} printed no 'Program PWSCF v.<version> starts' banner"
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = f"running {path} for its banner failed: {exc}"
    record["package"] = _dpkg_package_version(path)
    return record, reason


def _dpkg_package_version(path: str) -> str | None:
    """``"<package> <version>"`` of the Debian package owning ``path``, if any."""
    dpkg_query = shutil.which("dpkg-query")
    if dpkg_query is None:
        return None
    try:
        owner = _run([dpkg_query, "-S", path])
        if owner.returncode != 0:
            return None
        package = owner.stdout.split(":", 1)[0].strip()
        version = _run([dpkg_query, "-W", "-f=${Version}", package])
    except (OSError, subprocess.TimeoutExpired):
        return None
    if version.returncode != 0 or not version.stdout.strip():
        return None
    return f"{package} {version.stdout.strip()}"


def mpi_library_version(python: str | None = None) -> tuple[str | None, str | None]:
    """The MPI library mpi4py loads (``MPI.Get_library_version()``), asked in a subprocess.

    The subprocess imports mpi4py with ``mpi4py.rc.initialize = False``, so no
    MPI process is started and the caller's MPI (if any) is untouched.

    Args:
        python: interpreter to ask; default: the running one.

    Returns:
        ``(version text or None, reason or None)``.
    """
    interpreter = python or sys.executable
    try:
        probe = _run([interpreter, "-c", _MPI_PROBE], env=_standalone_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"asking mpi4py for the MPI library failed: {exc}"
    if probe.returncode != 0:
        last_line = (probe.stderr.strip().splitlines() or ["no error output"])[-1]
        return None, f"mpi4py could not report the MPI library: {last_line}"
    return probe.stdout.strip(), None


@functools.lru_cache(maxsize=8)
def _external_versions(
    pw_executable: str,
) -> tuple[tuple[dict[str, Any], str | None], tuple[str | None, str | None]]:
    """QE and MPI probes, cached per process (they cost subprocesses). Do not mutate."""
    return quantum_espresso_version(pw_executable), mpi_library_version()


def collect_provenance(*, pw_executable: str = "pw.x") -> dict[str, Any]:
    """Versions, machine and date of this run as a JSON-ready dict.

    Args:
        pw_executable: ``pw.x`` whose QE version is recorded (name on ``PATH``
            or path; the one the DFT stage uses).

    Returns:
        ``{"bornfield": {"version", "git"}, "python": {...}, "packages": {name: version},
        "quantum_espresso": {"executable", "version", "package"},
        "mpi": {"library", "library_details", "mpi4py"}, "host": {...},
        "date_utc": ISO 8601, "unavailable": {item: reason}}``.
    """
    packages, unavailable = python_package_versions()
    (qe_cached, qe_reason), (mpi_library, mpi_reason) = _external_versions(pw_executable)
    qe = dict(qe_cached)  # a copy: callers may edit the record
    if qe_reason:
        unavailable["quantum_espresso"] = qe_reason
    if mpi_reason:
        unavailable["mpi"] = mpi_reason
    slurm = {
        key: os.environ[f"SLURM_{key.upper()}"]
        for key in ("job_id", "cluster_name", "job_partition")
        if f"SLURM_{key.upper()}" in os.environ
    }
    return {
        "bornfield": {"version": bornfield.__version__, "git": git_state()},
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "packages": packages,
        "quantum_espresso": qe,
        "mpi": {
            # first line, e.g. "MPICH Version: 5.0.2" or "Open MPI v4.1.4, ..."
            "library": " ".join(mpi_library.splitlines()[0].split()) if mpi_library else None,
            "library_details": mpi_library,
            "mpi4py": packages.get("mpi4py"),
        },
        "host": {
            "hostname": socket.gethostname(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "slurm": slurm or None,
        },
        "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "unavailable": unavailable,
    }


def _to_json(value: Any, where: str) -> Any:
    """``value`` as plain JSON types; numpy scalars/arrays and paths are converted."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {value!r} is not a finite number (JSON has no NaN/inf)")
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        converted = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where}: key {key!r} is not a string")
            converted[key] = _to_json(item, f"{where}.{key}")
        return converted
    if isinstance(value, (list, tuple)):
        return [_to_json(item, f"{where}[{index}]") for index, item in enumerate(value)]
    # numpy scalars and arrays, without importing numpy here
    if hasattr(value, "tolist") and type(value).__module__ == "numpy":
        return _to_json(value.tolist(), where)
    raise ConfigError(f"{where}: {value!r} of type {type(value).__name__} cannot be stored as JSON")


def write_provenance(
    path: str | os.PathLike[str],
    config: Mapping[str, Any],
    seeds: Mapping[str, Any] | Sequence[int],
    *,
    pw_executable: str = "pw.x",
) -> dict[str, Any]:
    """Write ``{"provenance", "config", "seeds"}`` as JSON to ``path``, atomically.

    The file is written to a temporary name in the same directory, flushed to
    disk and renamed, so ``path`` is either absent or complete.

    Args:
        path: output JSON file; its directory is created if needed.
        config: the (validated) configuration of the run.
        seeds: the random seeds used (e.g. ``{"md": 7, "split": 3}`` or a list).
        pw_executable: see :func:`collect_provenance`.

    Returns:
        The record written.

    Raises:
        ConfigError: ``config`` is not a mapping, or ``config``/``seeds`` hold
            values JSON cannot represent.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"provenance config: expected a mapping, got {type(config).__name__}")
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (Mapping, Sequence)):
        raise ConfigError(
            f"provenance seeds: expected a mapping or a list of integers, got {seeds!r}"
        )
    record = {
        "provenance": collect_provenance(pw_executable=pw_executable),
        "config": _to_json(config, "config"),
        "seeds": _to_json(seeds, "seeds"),
    }
    atomic.write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def campaign_seeds(config: Mapping[str, Any]) -> dict[str, Any]:
    """The random seeds of a validated campaign config.

    ``seed`` (master seed; the structures, training and active-learning seeds derive from
    it), ``md`` (the MD stage's seed) and ``md_replicas``: per MD condition the replica
    seeds that :func:`bornfield.md.conditions.expand_conditions` derives from it.
    """
    from bornfield.md.conditions import expand_conditions  # only the seeds need the md stage

    md = config["md"]
    return {"seed": config["seed"], "md": md["seed"],
            "md_replicas": {c.name: list(c.seeds) for c in expand_conditions(md)}}


def run_write(args) -> int:
    """``bornfield provenance``: resolve the campaign config, write its provenance record."""
    from bornfield.config import load_config, resolve_config

    if args.config:
        config = load_config(args.config)
    else:
        try:
            data = json.loads(args.settings)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--settings is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError("--settings: expected a JSON object (the whole campaign config)")
        config = resolve_config(data, source="--settings")
    record = write_provenance(
        args.output, config, campaign_seeds(config), pw_executable=config["dft"]["run"]["pw_command"]
    )
    missing = record["provenance"]["unavailable"]
    print(
        f"provenance: bornfield {record['provenance']['bornfield']['version']}, "
        f"QE {record['provenance']['quantum_espresso'].get('version')}, "
        f"MPI {record['provenance']['mpi']['library']} -> {args.output}"
        + (f" (unavailable: {sorted(missing)})" if missing else "")
    )
    return 0


def register(subparsers) -> None:
    """``bornfield provenance --config FILE | --settings JSON --output FILE``."""
    parser = subparsers.add_parser(
        "provenance",
        help="write the provenance record of a results tree (versions, machine, config, seeds)",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="campaign config (YAML)")
    source.add_argument("--settings", help="the whole campaign config as JSON (what the workflow passes)")
    parser.add_argument("--output", required=True, help="JSON file to write, e.g. results/provenance.json")
    parser.set_defaults(func=run_write)
