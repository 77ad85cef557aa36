"""Pseudopotential provisioning: find the shipped PBEsol files, generate P with ``ld1.x``.

The PBEsol Li and O PAW/ultrasoft files ship with Debian's ``quantum-espresso-data``
(``/usr/share/espresso/pseudo``). Phosphorus does not ship, so it is generated with
``ld1.x`` from the input committed as package data (``bornfield/dft/data/*.ld1.in``):
a scalar-relativistic PBEsol PAW recipe after the pslibrary 1.0.0 high-accuracy P
(``[Ne] 3s2 3p3 3d-1``, Troullier-Martins, ``rcloc`` 1.8 bohr, PSQ augmentation,
nonlinear core correction with ``rcore`` 1.5 bohr, two projectors per 3S/3P/3D channel).

QE 6.7's UPF reader rejects the very long numeric lines that ``ld1.x`` 6.7 writes
(thousands of characters); :func:`wrap_upf_numeric_lines` re-wraps them.

Transferability is tested with the generator itself: ``ld1.x`` test mode
(``iswitch=2``) misbehaves for PAW in QE 6.7, so each test configuration is run as
a separate ``iswitch=3`` job with one ``&test`` configuration, and all-electron and
pseudo excitation energies (relative to the reference configuration) and eigenvalues
are compared (:func:`transferability_tests`).
"""

from __future__ import annotations

import hashlib
import logging
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from bornfield import atomic
from bornfield.errors import ConfigError, InputFileError

LOG = logging.getLogger(__name__)

#: Directories searched for shipped pseudopotentials, after the configured one.

#: Named pseudopotential sets: element -> ("shipped", filename) or ("generate", ld1 input name).
PSEUDO_SETS: dict[str, dict[str, tuple[str, str]]] = {
    "pbesol_paw": {
        "Li": ("shipped", "Li.pbesol-s-kjpaw_psl.0.2.1.UPF"),
        "O": ("shipped", "O.pbesol-n-kjpaw_psl.0.1.UPF"),
        "P": ("generate", "P.pbesol-n-kjpaw_bornfield.ld1.in"),
    },
    # ultrasoft Li/O (15 of 16 atoms of Li3PO4) + the PAW P: the same recipe without PAW
    # (lpaw=.false.) fails ld1.x's transferability test (0.40 Ry excitation error for 3s1 3p4)
    "pbesol_us": {
        "Li": ("shipped", "Li.pbesol-s-rrkjus_psl.0.2.1.UPF"),
        "O": ("shipped", "O.pbesol-n-rrkjus_psl.0.1.UPF"),
        "P": ("generate", "P.pbesol-n-kjpaw_bornfield.ld1.in"),
    },
}

#: Valence test configurations for the generated P (reference first).
P_TEST_CONFIGURATIONS = ("3s2 3p3", "3s1 3p4", "3s2 3p2", "3s2 3p2 3d1", "3s2 3p1")

_MAX_NUMERIC_LINE = 100


@dataclass(frozen=True)
class PseudoRecord:
    """One provisioned pseudopotential file."""

    element: str
    filename: str
    md5: str
    source: str  # "shipped:<original path>" or "generated:<ld1 input name>"


def md5sum(path: str | Path) -> str:
    """Hex md5 of a file's bytes."""
    digest = hashlib.md5()  # noqa: S324 - a content fingerprint, not security
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def wrap_upf_numeric_lines(text: str, values_per_line: int = 4) -> str:
    """Re-wrap over-long purely numeric lines of a UPF file.

    Lines without XML markup longer than 100 characters are split into lines of
    ``values_per_line`` whitespace-separated numbers; everything else is unchanged.
    """
    out: list[str] = []
    for line in text.splitlines():
        if len(line) > _MAX_NUMERIC_LINE and "<" not in line and ">" not in line:
            tokens = line.split()
            for start in range(0, len(tokens), values_per_line):
                out.append("  " + "  ".join(tokens[start : start + values_per_line]))
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def without_generation_date(upf_text: str) -> str:
    """``upf_text`` with ld1.x's generation date replaced by a fixed word.

    ld1.x stamps the day into the UPF header; the md5 is part of a label ledger's settings
    identity and must depend only on the pseudopotential's content.
    """
    text = re.sub(r"(Generation date:)[^\n]*", r"\1  (not recorded)", upf_text)
    return re.sub(r'(<PP_HEADER[^>]*?\sdate=")[^"]*(")', r"\1not recorded\2", text, flags=re.S)


def ld1_input_text(name: str) -> str:
    """The text of a committed ``ld1.x`` input (package data ``bornfield/dft/data/<name>``)."""
    try:
        return resources.files("bornfield.dft").joinpath("data", name).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"no ld1.x input '{name}' in bornfield/dft/data") from exc


def _upf_name_in(ld1_text: str) -> str:
    match = re.search(r"file_pseudopw\s*=\s*'([^']+)'", ld1_text)
    if not match:
        raise InputFileError("ld1.x input has no file_pseudopw = '<name>' entry")
    return match.group(1)


def _run_ld1(ld1_text: str, workdir: Path, ld1_command: str) -> str:
    """Run ``ld1.x`` on ``ld1_text`` in ``workdir``; return its stdout. Raise on failure."""
    proc = subprocess.run(  # noqa: S603 - command from config, no shell
        [ld1_command],
        input=ld1_text,
        capture_output=True,
        text=True,
        cwd=workdir,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    out = proc.stdout + proc.stderr
    (workdir / "ld1.out").write_text(out, encoding="utf-8")
    if proc.returncode != 0 or "Error in routine" in out:
        error = re.search(r"Error in routine.*\n.*", out)
        raise InputFileError(
            f"ld1.x failed (exit {proc.returncode}) in {workdir}: "
            f"{error.group(0).strip() if error else out[-400:]}"
        )
    return out


def packaged_upf_text(upf_name: str) -> str | None:
    """The committed copy of a generated UPF (package data ``bornfield/dft/data/<upf_name>.xz``), or None.

    ld1.x's output differs in its last digits between CPUs, so the file made once is shipped and
    every machine uses the same bytes; :func:`generate_pseudopotential` remakes it from its input.
    """
    resource = resources.files("bornfield.dft").joinpath("data", f"{upf_name}.xz")
    if not resource.is_file():
        return None
    return lzma.decompress(resource.read_bytes()).decode("utf-8")


def generate_pseudopotential(ld1_name: str, target_dir: Path, ld1_command: str) -> Path:
    """Generate a UPF file with ``ld1.x`` from committed input ``ld1_name``; re-wrap; install.

    The file is written to a temporary name and renamed into ``target_dir`` only after
    ``ld1.x`` finished without error and the UPF ends with ``</UPF>``.
    """
    text = ld1_input_text(ld1_name)
    upf_name = _upf_name_in(text)
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ld1_") as tmp:
        work = Path(tmp)
        _run_ld1(text, work, ld1_command)
        produced = work / upf_name
        if not produced.exists():
            raise InputFileError(f"ld1.x finished but wrote no {upf_name} (see its output)")
        upf = produced.read_text(encoding="utf-8")
        if "</UPF>" not in upf:
            raise InputFileError(f"ld1.x wrote a truncated {upf_name} (no </UPF>)")
        final = atomic.write_text(target_dir / upf_name, wrap_upf_numeric_lines(without_generation_date(upf)))
    LOG.info("generated %s with %s (md5 %s)", final, ld1_command, md5sum(final))
    return final


def pseudo_elements(set_name: str) -> tuple[str, ...]:
    """Elements the pseudopotential set ``set_name`` covers (ConfigError for an unknown set)."""
    if set_name not in PSEUDO_SETS:
        raise ConfigError(f"dft.pseudopotentials.set: unknown set '{set_name}'; known: {sorted(PSEUDO_SETS)}")
    return tuple(PSEUDO_SETS[set_name])


def upf_name_for(element: str, set_name: str) -> str:
    """File name of ``element``'s pseudopotential in set ``set_name``."""
    try:
        kind, name = PSEUDO_SETS[set_name][element]
    except KeyError as exc:
        raise ConfigError(
            f"dft.pseudopotentials.set '{set_name}' has no pseudopotential for element "
            f"{element!r}; known sets: {sorted(PSEUDO_SETS)} "
            f"(elements {sorted(PSEUDO_SETS.get(set_name, {}))})"
        ) from exc
    return _upf_name_in(ld1_input_text(name)) if kind == "generate" else name


def provision_pseudopotentials(
    pseudo_dir: str | Path,
    set_name: str,
    elements: tuple[str, ...] | None = None,
    search_dirs: tuple[str, ...] | None = None,
    ld1_command: str | None = None,
) -> dict[str, PseudoRecord]:
    """Find or create every pseudopotential of ``set_name`` in ``pseudo_dir``.

    Shipped files are copied from ``search_dirs`` when missing; generated ones are made
    with ``ld1.x``. Writes ``pseudo_dir/manifest.json`` (element -> filename, md5,
    source) and returns the same records.
    """
    from bornfield.config import default_settings

    defaults = default_settings().dft.pseudopotentials  # None: the schema's value
    search_dirs = defaults.search_dirs if search_dirs is None else search_dirs
    ld1_command = defaults.ld1_command if ld1_command is None else ld1_command
    if set_name not in PSEUDO_SETS:
        raise ConfigError(f"dft.pseudopotentials.set: unknown set '{set_name}'; known: {sorted(PSEUDO_SETS)}")
    pseudo_dir = Path(pseudo_dir)
    pseudo_dir.mkdir(parents=True, exist_ok=True)
    wanted = elements or tuple(PSEUDO_SETS[set_name])
    records: dict[str, PseudoRecord] = {}
    for element in wanted:
        kind, name = PSEUDO_SETS[set_name].get(element, (None, None))
        if kind is None:
            upf_name_for(element, set_name)  # raises a ConfigError naming the set
        if kind == "shipped":
            target = pseudo_dir / name
            if not target.exists():
                for directory in search_dirs:
                    candidate = Path(directory) / name
                    if candidate.exists():
                        with atomic.atomic_path(target) as partial:  # concurrent provisioning
                            shutil.copyfile(candidate, partial)
                        break
                else:
                    raise InputFileError(
                        f"pseudopotential {name} for {element} not found in {pseudo_dir} nor in "
                        f"{list(search_dirs)} (Debian package quantum-espresso-data ships it)"
                    )
            source = f"shipped:{name}"
        else:
            target = pseudo_dir / _upf_name_in(ld1_input_text(name))
            packaged = packaged_upf_text(target.name)
            if not target.exists():
                if packaged is None:
                    generate_pseudopotential(name, pseudo_dir, ld1_command)
                else:
                    atomic.write_text(target, packaged)
            same = packaged is not None and target.read_bytes() == packaged.encode("utf-8")
            source = f"packaged:{target.name}.xz (ld1.x, {name})" if same else f"generated:{name}"
        records[element] = PseudoRecord(element, target.name, md5sum(target), source)
    atomic.write_json(pseudo_dir / "manifest.json", {k: asdict(v) for k, v in records.items()}, indent=2)
    return records


@dataclass(frozen=True)
class TransferabilityResult:
    """All-electron vs pseudo comparison of one valence configuration (energies in Ry)."""

    configuration: str
    excitation_ae_Ry: float  # E_AE(config) - E_AE(reference)
    excitation_ps_Ry: float  # E_PS(config) - E_PS(reference)
    max_eigenvalue_error_Ry: float

    @property
    def excitation_error_Ry(self) -> float:
        """|ΔE_AE − ΔE_PS| (Ry)."""
        return abs(self.excitation_ae_Ry - self.excitation_ps_Ry)


def _parse_test_run(out: str, source: str) -> tuple[float, float, float]:
    """(E_AE, E_PS, max |e_AE - e_PS|) of an ld1.x run with one &test configuration."""
    part = out.split("Testing the pseudopotential")
    if len(part) < 2:
        raise InputFileError(f"{source}: ld1.x output has no 'Testing the pseudopotential' section")
    test = part[-1]
    e_ae = re.search(r"Etot\s*=\s*(-?\d+\.\d+)\s*Ry", test)
    e_ps = re.search(r"Etotps\s*=\s*(-?\d+\.\d+)\s*Ry", test)
    eig = re.findall(r"^\s+\d\s+\d\s+\d[SPDF]\s+\d\(\s*[\d.]+\)\s+(-?[\d.]+)\s+(-?[\d.]+)\s+(-?[\d.]+)", test, re.M)
    if not (e_ae and e_ps and eig):
        raise InputFileError(f"{source}: ld1.x test output lacks Etot/Etotps/eigenvalue lines")
    max_err = max(abs(float(a) - float(b)) for a, b, _ in eig)
    return float(e_ae.group(1)), float(e_ps.group(1)), max_err


def transferability_tests(
    ld1_name: str = "P.pbesol-n-kjpaw_bornfield.ld1.in",
    configurations: tuple[str, ...] = P_TEST_CONFIGURATIONS,
    ld1_command: str = "ld1.x",
) -> list[TransferabilityResult]:
    """Run one ``iswitch=3`` generation + ``&test`` per configuration; compare AE and PS.

    The first configuration is the reference for excitation energies.
    """
    text = ld1_input_text(ld1_name)
    upf_name = _upf_name_in(text)
    totals: list[tuple[str, float, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="ld1_test_") as tmp:
        for index, config in enumerate(configurations):
            work = Path(tmp) / f"conf{index}"
            work.mkdir()
            run_text = text.replace(upf_name, f"test{index}.UPF").rstrip("\n") + (
                f"\n &test\n   nconf = 1,\n   configts(1) = '{config}'\n /\n"
            )
            out = _run_ld1(run_text, work, ld1_command)
            totals.append((config, *_parse_test_run(out, f"ld1.x test '{config}'")))
    _, ref_ae, ref_ps, _ = totals[0]
    return [
        TransferabilityResult(config, e_ae - ref_ae, e_ps - ref_ps, eig_err)
        for config, e_ae, e_ps, eig_err in totals
    ]
