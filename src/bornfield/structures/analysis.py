"""Structural analysis of Li3PO4 cells: density, partial RDFs, coordination, PO4 / P2O7 units.

Distances in Å, densities in g/cm^3. Neighbour search by
:func:`ase.neighborlist.neighbor_list` (periodic images included, so cells
smaller than twice ``rmax`` are handled).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list

from bornfield.structures.crystals import density_g_cm3

#: partial RDFs computed for every set, (centre species, neighbour species)
RDF_PAIRS = (("P", "O"), ("Li", "O"), ("O", "O"), ("Li", "Li"))
#: windows (Å) in which the first RDF peak is searched
FIRST_PEAK_WINDOWS = {"P-O": (1.2, 2.0), "Li-O": (1.6, 2.6), "O-O": (2.2, 3.3), "Li-Li": (2.0, 3.8)}
#: Gaussian smoothing (Å) before the first-peak search, per pair (default 0.03): Li-Li is a broad
#: shell whose single-cell histogram is spiky
FIRST_PEAK_SMOOTHING = {"Li-Li": 0.1}


def partial_rdf(atoms: Atoms, a: str, b: str, rmax: float, dr: float) -> tuple[np.ndarray, np.ndarray]:
    """Partial radial distribution function g_ab(r).

    g_ab(r) = V n_ab(r) / (N_a N_b' 4 pi r^2 dr), n_ab counting ordered pairs
    (i in a, j in b) and N_b' = N_b - delta_ab.

    Returns:
        bin centres r (n_bins,) Å and g (n_bins,), dimensionless.
    """
    edges = np.arange(0.0, rmax + dr / 2, dr)
    centres = 0.5 * (edges[1:] + edges[:-1])
    symbols = np.array(atoms.get_chemical_symbols())
    n_a, n_b = int((symbols == a).sum()), int((symbols == b).sum())
    n_b_eff = n_b - (1 if a == b else 0)
    if n_a == 0 or n_b_eff <= 0:
        return centres, np.zeros_like(centres)
    i, j, d = neighbor_list("ijd", atoms, rmax)
    mask = (symbols[i] == a) & (symbols[j] == b)
    counts, _ = np.histogram(d[mask], bins=edges)
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    g = atoms.get_volume() * counts / (n_a * n_b_eff * shell)
    return centres, g


def first_peak(r: np.ndarray, g: np.ndarray, window: tuple[float, float], smoothing: float = 0.03) -> float:
    """Position (Å) of the first peak of g(r) inside ``window``.

    g is smoothed with a Gaussian of ``smoothing`` Å (crystals give sharp
    spikes); the first local maximum reaching half of the window's maximum is
    refined by a parabola through three bins. For the crystals this picks the
    nearest-neighbour shell even when a later shell in the window is higher.
    NaN when the window holds no finite positive maximum (empty pair, NaN in g).
    """
    r, g = np.asarray(r, dtype=float), np.asarray(g, dtype=float)
    if r.size < 3 or not np.all(np.isfinite(g)):
        return float("nan")
    dr = r[1] - r[0]
    sigma = max(smoothing / dr, 1e-9)
    half = int(np.ceil(4 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    smooth = np.convolve(g, kernel / kernel.sum(), mode="same")
    inside = np.flatnonzero((r >= window[0]) & (r <= window[1]))
    if inside.size < 3 or not np.any(smooth[inside] > 0):
        return float("nan")
    threshold = 0.5 * smooth[inside].max()
    k = next((i for i in inside[1:-1]
              if smooth[i] >= threshold and smooth[i] >= smooth[i - 1] and smooth[i] >= smooth[i + 1]), None)
    if k is None:  # monotonic inside the window: no peak there
        return float("nan")
    y0, y1, y2 = smooth[k - 1], smooth[k], smooth[k + 1]
    denom = y0 - 2 * y1 + y2
    shift = 0.5 * (y0 - y2) / denom if denom != 0 else 0.0
    return float(r[k] + np.clip(shift, -0.5, 0.5) * dr)


def coordination(atoms: Atoms, centre: str, neighbour: str, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordination numbers of every ``centre`` atom by ``neighbour`` atoms within ``cutoff`` Å.

    Returns:
        indices of the centre atoms (n,), their coordination numbers (n,),
        and all bond lengths found (m,) Å.
    """
    symbols = np.array(atoms.get_chemical_symbols())
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    mask = (symbols[i] == centre) & (symbols[j] == neighbour)
    centres = np.flatnonzero(symbols == centre)
    counts = np.bincount(i[mask], minlength=len(atoms))[centres]
    return centres, counts, d[mask]


def phosphate_units(atoms: Atoms, cutoff: float) -> dict:
    """PO4 tetrahedra and P–O–P linkages.

    Returns:
        dict with ``P_fourfold_fraction`` (P with exactly 4 O), ``bridging_O``
        (O bonded to two or more P), ``free_O`` (O bonded to no P), ``P2O7_count`` (P–P pairs sharing a
        bridging O that form an isolated dimer), ``isolated_PO4_fraction``
        (P bonded to no bridging O: Q0 units).
    """
    symbols = np.array(atoms.get_chemical_symbols())
    i, j, _ = neighbor_list("ijd", atoms, cutoff)
    po = (symbols[i] == "P") & (symbols[j] == "O")
    p_of_o: dict[int, set[int]] = {}
    for p_index, o_index in zip(i[po], j[po]):
        p_of_o.setdefault(int(o_index), set()).add(int(p_index))
    bridging = {o: ps for o, ps in p_of_o.items() if len(ps) >= 2}
    phosphorus = np.flatnonzero(symbols == "P")
    n_o = np.bincount(i[po], minlength=len(atoms))[phosphorus]
    links: dict[int, set[int]] = {int(p): set() for p in phosphorus}
    for ps in bridging.values():
        for p in ps:
            links[p] |= ps - {p}
    dimers = {tuple(sorted((p, q))) for p, qs in links.items() if len(qs) == 1
              for q in qs if len(links[q]) == 1}
    return {
        "P_fourfold_fraction": float(np.mean(n_o == 4)) if len(phosphorus) else float("nan"),
        "bridging_O": len(bridging),
        "free_O": int(np.sum(symbols == "O")) - len(p_of_o),
        "P2O7_count": len(dimers),
        "isolated_PO4_fraction": float(np.mean([len(links[int(p)]) == 0 for p in phosphorus]))
        if len(phosphorus) else float("nan"),
    }


def analyse_structure(atoms: Atoms, rmax: float = 6.0, dr: float = 0.02, p_o_cutoff: float = 2.0,
                      li_o_cutoff: float = 2.6) -> dict:
    """All per-structure metrics plus the partial RDFs (``rdf`` sub-dict)."""
    result: dict = {"n_atoms": len(atoms), "density_g_cm3": density_g_cm3(atoms),
                    "formula": atoms.get_chemical_formula(), "rdf": {}}
    for a, b in RDF_PAIRS:
        r, g = partial_rdf(atoms, a, b, rmax, dr)
        key = f"{a}-{b}"
        result["rdf"][key] = g
        result["rdf"]["r_A"] = r
        result[f"{key}_first_peak_A"] = first_peak(r, g, FIRST_PEAK_WINDOWS[key], FIRST_PEAK_SMOOTHING.get(key, 0.03))
    _, cn_p, d_po = coordination(atoms, "P", "O", p_o_cutoff)
    _, cn_li, d_lio = coordination(atoms, "Li", "O", li_o_cutoff)
    result["P-O_coordination"] = float(cn_p.mean()) if cn_p.size else float("nan")
    result["Li-O_coordination"] = float(cn_li.mean()) if cn_li.size else float("nan")
    result["P-O_mean_bond_A"] = float(d_po.mean()) if d_po.size else float("nan")
    result["P-O_min_bond_A"] = float(d_po.min()) if d_po.size else float("nan")
    result["P-O_max_bond_A"] = float(d_po.max()) if d_po.size else float("nan")
    result["Li-O_mean_bond_A"] = float(d_lio.mean()) if d_lio.size else float("nan")
    result.update(phosphate_units(atoms, p_o_cutoff))
    return result
