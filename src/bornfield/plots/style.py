"""The one figure style of bornfield: colours, sizes, labels, saving.

Colour-blind-safe Okabe–Ito colours; one colour per species and per phase,
used identically in every figure. ``save_figure`` writes every requested
format atomically (temporary file, then rename), so an interrupted run never
leaves a truncated figure that looks complete.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator, Sequence

import matplotlib

matplotlib.use("Agg")
# the PDF backend's font subsetting logs every glyph at INFO level
logging.getLogger("fontTools").setLevel(logging.WARNING)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bornfield.atomic import atomic_path  # noqa: E402

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
SPECIES_COLORS = {"Li": "#0072B2", "P": "#E69F00", "O": "#D55E00"}
PHASE_COLORS = {
    "amorphous": "#009E73",
    "beta": "#0072B2",
    "gamma": "#CC79A7",
    "beta_vacancy": "#56B4E9",
    "beta_frenkel": "#000000",
    "gamma_vacancy": "#E69F00",
}
TEMPERATURE_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
SINGLE_COLUMN_IN = 3.5
DOUBLE_COLUMN_IN = 7.2

RC_PARAMS = {
    "font.size": 9,
    "axes.labelsize": 9,
    "axes.titlesize": 9,
    "legend.fontsize": 7.5,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "xtick.direction": "in",
    "ytick.direction": "in",
    "xtick.top": True,
    "ytick.right": True,
    "lines.linewidth": 1.4,
    "lines.markersize": 4.5,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "figure.constrained_layout.use": True,
    "mathtext.default": "regular",
    "pdf.fonttype": 42,
}

# axis labels with units, shared by all figures
LABELS = {
    "lag": "lag time τ (ps)",
    "msd": "MSD (Å²)",
    "drift": "drift ⟨Δr$_∥$⟩ (Å)",
    "field": "field strength |E| (V/Å)",
    "mobility": "mobility μ (cm²/(V·s))",
    "ratio": "|F$_⊥$| / |F$_∥$|",
    "density": "probability density",
    "inverse_T": "1000 / T (1/K)",
    "diffusion": "D (cm²/s)",
}


def _stable_color(name: str, palette: dict[str, str]) -> str:
    if name in palette:
        return palette[name]
    return OKABE_ITO[sum(map(ord, name)) % len(OKABE_ITO)]


def species_color(symbol: str) -> str:
    """The colour of a chemical species (same in every figure)."""
    return _stable_color(symbol, SPECIES_COLORS)


def phase_color(phase: str | None) -> str:
    """The colour of a phase (same in every figure)."""
    return _stable_color(phase or "unknown", PHASE_COLORS)


def temperature_marker(index: int) -> str:
    return TEMPERATURE_MARKERS[index % len(TEMPERATURE_MARKERS)]


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Context in which figures are drawn with the bornfield rcParams."""
    with plt.rc_context(RC_PARAMS):
        yield


def line_with_band(ax, x, mean, sem, *, color: str, label: str | None = None, linestyle: str = "-", alpha: float = 0.25):
    """A mean curve with a ±1 standard-error band (no band when ``sem`` is None)."""
    x = np.asarray(x, dtype=float)
    mean = np.asarray(mean, dtype=float)
    (line,) = ax.plot(x, mean, color=color, linestyle=linestyle, label=label)
    if sem is not None:
        sem = np.asarray(sem, dtype=float)
        ax.fill_between(x, mean - sem, mean + sem, color=color, alpha=alpha, linewidth=0)
    return line


def no_data(ax, message: str) -> None:
    """Mark an empty panel with an explanation instead of leaving it blank."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True, fontsize=8, color="0.3")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def save_figure(fig, stem: str | Path, formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Save ``fig`` as ``<stem>.<fmt>`` for every format (atomic), close it, return the paths."""
    stem = Path(stem)
    paths = []
    try:
        for fmt in formats:
            target = stem.with_name(f"{stem.name}.{fmt}")
            with atomic_path(target) as tmp:
                fig.savefig(tmp, format=fmt, dpi=dpi)
            paths.append(target)
    finally:
        plt.close(fig)
    return paths
