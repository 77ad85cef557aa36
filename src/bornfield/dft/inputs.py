"""Quantum ESPRESSO inputs: pw.x through ASE's writer, ph.x for Born charges at Γ.

Every numerical setting comes from the validated ``dft`` config section
(:class:`DFTSettings`). The k-point mesh follows a density in points per Å⁻¹
(ASE's convention, ``n_i = ceil(2π |b_i| · density)`` with ``b_i`` the reciprocal
vectors without 2π); for the experimental beta-Li3PO4 cell the default density of 1.6 Å
gives 2×2×3 (why: ``docs/decisions.md``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import kptdensity2monkhorstpack
from ase.io.espresso import write_espresso_in

from bornfield.atomic import atomic_path, write_text
from bornfield.errors import ConfigError

PREFIX = "bornfield"
OUTDIR = "./tmp"


@dataclass(frozen=True)
class DFTSettings:
    """Numerical settings of one pw.x SCF + ph.x DFPT job (from the ``dft`` config section).

    Energies in Ry (QE's input units), k-point density in points per Å⁻¹.
    """

    pseudo_set: str
    ecutwfc_Ry: float
    ecutrho_Ry: float
    kpoint_density_per_inv_A: float
    kpoint_offset: bool
    conv_thr_per_atom_Ry: float
    mixing_beta: float
    diagonalization: str
    electron_maxstep: int
    tr2_ph: float
    born_charges: bool
    gamma_phonons: bool

    @classmethod
    def from_section(cls, section: dict) -> DFTSettings:
        """Build from resolved ``dft`` settings (reads ``qe`` and ``pseudopotentials.set``)."""
        qe = section["qe"]
        return cls(
            pseudo_set=str(section["pseudopotentials"]["set"]),
            ecutwfc_Ry=float(qe["ecutwfc_Ry"]),
            ecutrho_Ry=float(qe["ecutrho_Ry"]),
            kpoint_density_per_inv_A=float(qe["kpoint_density_per_inv_A"]),
            kpoint_offset=bool(qe["kpoint_offset"]),
            conv_thr_per_atom_Ry=float(qe["conv_thr_per_atom_Ry"]),
            mixing_beta=float(qe["mixing_beta"]),
            diagonalization=str(qe["diagonalization"]),
            electron_maxstep=int(qe["electron_maxstep"]),
            tr2_ph=float(qe["tr2_ph"]),
            born_charges=bool(qe["born_charges"]),
            gamma_phonons=bool(qe["gamma_phonons"]),
        )

    @classmethod
    def defaults(cls, **changes) -> DFTSettings:
        """The schema's default ``dft`` settings with some fields changed (scripts, tests)."""
        from bornfield.config import default_settings

        return replace(cls.from_section(default_settings().dft), **changes)

    def to_dict(self) -> dict:
        """Plain dict (for hashing and provenance)."""
        return asdict(self)


def kpoint_mesh(atoms: Atoms, density_per_inv_A: float) -> tuple[int, int, int]:
    """Monkhorst-Pack mesh for ``atoms`` at ``density_per_inv_A`` points per Å⁻¹ (ASE rule)."""
    if density_per_inv_A <= 0:
        raise ConfigError(f"dft.qe.kpoint_density_per_inv_A must be > 0, got {density_per_inv_A}")
    mesh = kptdensity2monkhorstpack(atoms, kptdensity=density_per_inv_A, even=False)
    return tuple(int(max(1, n)) for n in mesh)


@dataclass
class PwOverrides:
    """Per-attempt changes of the SCF (escalation after non-convergence) and restarts.

    ``restart``: start from the charge density of the stopped run (``startingpot='file'``).
    """

    mixing_beta: float | None = None
    electron_maxstep: int | None = None
    diagonalization: str | None = None
    restart: bool = False
    max_seconds: float | None = None
    extra_control: dict = field(default_factory=dict)
    extra_system: dict = field(default_factory=dict)
    extra_electrons: dict = field(default_factory=dict)
    #: further namelists for ASE's writer, e.g. {"ions": {...}, "cell": {...}} of a vc-relax
    extra_namelists: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PwVariant:
    """A pw.x job that differs from the plain SCF of its settings (e.g. a finite field).

    ``control``/``system``/``electrons``: namelist keys added to every attempt's input;
    ``kpoint_multiplier``: the settings' Monkhorst-Pack mesh is multiplied by it per
    reciprocal vector. The whole variant enters the job's ``dft_id`` and ``status.json``.
    """

    kind: str
    control: dict = field(default_factory=dict)
    system: dict = field(default_factory=dict)
    electrons: dict = field(default_factory=dict)
    kpoint_multiplier: tuple[int, int, int] = (1, 1, 1)

    def __post_init__(self) -> None:
        if len(self.kpoint_multiplier) != 3 or any(int(m) != m or m < 1 for m in self.kpoint_multiplier):
            raise ConfigError(f"k-point multiplier must be three integers >= 1, got {self.kpoint_multiplier!r}")

    def to_dict(self) -> dict:
        """Plain dict (for hashing and provenance)."""
        return {"kind": self.kind, "control": dict(self.control), "system": dict(self.system),
                "electrons": dict(self.electrons), "kpoint_multiplier": [int(m) for m in self.kpoint_multiplier]}

    def overrides(self, base: PwOverrides) -> PwOverrides:
        """``base`` (an attempt's escalation/restart) with this variant's namelist keys added."""
        return replace(
            base,
            extra_control={**base.extra_control, **self.control},
            extra_system={**base.extra_system, **self.system},
            extra_electrons={**base.extra_electrons, **self.electrons},
        )


def pw_input_data(atoms: Atoms, settings: DFTSettings, pseudo_dir: str | Path, overrides: PwOverrides | None = None) -> dict:
    """The namelist dict handed to :func:`ase.io.espresso.write_espresso_in`."""
    overrides = overrides or PwOverrides()
    control = {
        "calculation": "scf",
        "prefix": PREFIX,
        "outdir": OUTDIR,
        "pseudo_dir": str(Path(pseudo_dir).resolve()),
        "tprnfor": True,
        "tstress": True,
        "disk_io": "low",
        "restart_mode": "from_scratch",
    }
    if overrides.max_seconds:
        control["max_seconds"] = float(overrides.max_seconds)
    control.update(overrides.extra_control)
    system = {"ecutwfc": settings.ecutwfc_Ry, "ecutrho": settings.ecutrho_Ry}
    charge = float(atoms.info.get("charge", 0.0) or 0.0)
    if charge != 0.0:
        system["tot_charge"] = charge
    system.update(overrides.extra_system)
    electrons = {
        "conv_thr": settings.conv_thr_per_atom_Ry * len(atoms),
        "mixing_beta": overrides.mixing_beta or settings.mixing_beta,
        "electron_maxstep": overrides.electron_maxstep or settings.electron_maxstep,
        "diagonalization": overrides.diagonalization or settings.diagonalization,
    }
    if overrides.restart:
        electrons["startingpot"] = "file"
    electrons.update(overrides.extra_electrons)
    return {"control": control, "system": system, "electrons": electrons, **overrides.extra_namelists}


def write_pw_input(
    path: str | Path,
    atoms: Atoms,
    settings: DFTSettings,
    pseudopotentials: dict[str, str],
    pseudo_dir: str | Path,
    overrides: PwOverrides | None = None,
    kpoint_multiplier: tuple[int, int, int] = (1, 1, 1),
) -> tuple[int, int, int]:
    """Write a pw.x SCF input with ASE's QE writer; return the k-point mesh used.

    ``pseudopotentials`` maps element symbol -> UPF file name inside ``pseudo_dir``.
    ``atoms.info["charge"]`` (e) becomes ``tot_charge``. The settings' mesh is multiplied
    by ``kpoint_multiplier`` per reciprocal vector (a denser Berry-phase string).
    """
    missing = sorted(set(atoms.get_chemical_symbols()) - set(pseudopotentials))
    if missing:
        raise ConfigError(f"no pseudopotential for elements {missing} in the configured set")
    kpts = tuple(int(n) * int(m) for n, m in zip(kpoint_mesh(atoms, settings.kpoint_density_per_inv_A), kpoint_multiplier))
    offset = (1, 1, 1) if settings.kpoint_offset else (0, 0, 0)
    data = pw_input_data(atoms, settings, pseudo_dir, overrides)
    with atomic_path(path) as tmp, open(tmp, "x", encoding="utf-8") as handle:
        write_espresso_in(
            handle,
            atoms,
            input_data=data,
            pseudopotentials={el: pseudopotentials[el] for el in sorted(set(atoms.get_chemical_symbols()))},
            kpts=kpts,
            koffset=offset,
        )
    return kpts


def ph_input_text(settings: DFTSettings, recover: bool = False, max_seconds: float | None = None) -> str:
    """ph.x input at Γ: E-field response (``epsil``) and Born charges from it (``zeu``).

    ``trans`` (full Γ phonons) only when ``settings.gamma_phonons``.
    """
    lines = [
        "Born effective charges and epsilon_inf at Gamma (bornfield)",
        "&inputph",
        f"  prefix = '{PREFIX}'",
        f"  outdir = '{OUTDIR}'",
        f"  tr2_ph = {settings.tr2_ph:.3e}",
        "  epsil = .true.",
        "  zeu = .true.",
        f"  trans = {'.true.' if settings.gamma_phonons else '.false.'}",
        f"  fildyn = '{PREFIX}.dyn'",
        f"  recover = {'.true.' if recover else '.false.'}",
    ]
    if max_seconds:
        lines.append(f"  max_seconds = {float(max_seconds):.1f}")
    lines += ["/", "0.0 0.0 0.0", ""]
    return "\n".join(lines)


def write_ph_input(path: str | Path, settings: DFTSettings, recover: bool = False, max_seconds: float | None = None) -> None:
    """Write :func:`ph_input_text` atomically."""
    write_text(path, ph_input_text(settings, recover, max_seconds))


def compute_dft_id(atoms: Atoms, settings: DFTSettings, pseudopotentials: dict[str, str],
                   variant: PwVariant | None = None) -> str:
    """Stable 16-hex id of (structure, charge, settings, pseudopotential files[, pw.x variant]).

    Positions and cell enter rounded to 1e-6 Å so that a re-read extxyz gives the same id.
    Without a variant the payload is that of a plain SCF/DFPT job (ledger ids unchanged).
    """
    payload = {
        "numbers": [int(z) for z in atoms.numbers],
        "positions": (np.round(atoms.positions, 6) + 0.0).tolist(),
        "cell": (np.round(np.asarray(atoms.cell), 6) + 0.0).tolist(),
        "pbc": [bool(p) for p in atoms.pbc],
        "charge": float(atoms.info.get("charge", 0.0) or 0.0),
        "settings": settings.to_dict(),
        "pseudopotentials": dict(sorted(pseudopotentials.items())),
    }
    if variant is not None:
        payload["variant"] = variant.to_dict()
    blob = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
