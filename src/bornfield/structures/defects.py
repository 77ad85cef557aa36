"""Point defects in Li3PO4 supercells: Li vacancy and Li Frenkel pair.

Charge convention (read by the DFT stage): ``info["charge"]`` is the total
charge of the cell in units of e, to be passed to pw.x as ``tot_charge``.

* Li vacancy, V_Li' (Kröger–Vink): one Li *ion* is removed and its electron
  stays, so the cell carries ``info["charge"] = -1`` (pw.x ``tot_charge = -1``,
  one electron more than the neutral atoms supply). Nominal oxidation states
  (Li +1, P +5, O -2) of the remaining ions then sum to -1 as well.
* Li Frenkel pair (V_Li' + Li_i^•): a Li ion is moved from its site to the
  largest interstitial void at least ``min_separation`` Å away; the cell stays
  neutral (``info["charge"] = 0``) and keeps its composition.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from scipy.optimize import minimize
from scipy.spatial import cKDTree

from bornfield.errors import ConfigError


def _image_tree(atoms: Atoms) -> tuple[cKDTree, np.ndarray]:
    """KD-tree over the atoms and their 26 neighbouring periodic images."""
    shifts = np.array(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij")).reshape(3, -1).T
    cell = atoms.cell[:]
    images = (atoms.positions[None, :, :] + (shifts @ cell)[:, None, :]).reshape(-1, 3)
    return cKDTree(images), shifts


def find_voids(atoms: Atoms, grid_spacing: float = 0.25, n_voids: int = 10,
               exclude_center: np.ndarray | None = None, exclude_radius: float = 0.0
               ) -> list[tuple[np.ndarray, float]]:
    """Centres and radii of the largest empty spheres of a periodic structure.

    A fractional grid (about ``grid_spacing`` Å) is scanned for the distance to
    the nearest atom; local maxima of that field are refined by maximising the
    nearest-atom distance (Nelder–Mead) and returned largest first.

    Grid maxima closer than ``exclude_radius`` Å (minimum image) to
    ``exclude_center`` are skipped, as are refined centres that drift there.

    Returns:
        list of (position (3,) Å, radius Å), at most ``n_voids`` entries,
        de-duplicated to centres more than 0.5 Å apart.
    """
    if not all(atoms.pbc):
        raise ConfigError("void search needs a fully periodic structure")
    tree, _ = _image_tree(atoms)
    cell = atoms.cell[:]
    lengths = atoms.cell.lengths()
    ngrid = np.maximum(4, np.ceil(lengths / grid_spacing).astype(int))
    axes = [np.arange(n) / n for n in ngrid]
    frac = np.array(np.meshgrid(*axes, indexing="ij")).reshape(3, -1).T
    dist, _ = tree.query(frac @ cell)
    field = dist.reshape(ngrid)
    # local maxima on the periodic grid (>= all 26 neighbours)
    is_max = np.ones_like(field, dtype=bool)
    for shift in np.array(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij")).reshape(3, -1).T:
        if not shift.any():
            continue
        is_max &= field >= np.roll(field, tuple(shift), axis=(0, 1, 2))
    candidates = np.flatnonzero(is_max.ravel())
    candidates = candidates[np.argsort(-dist[candidates])]
    if exclude_center is not None and exclude_radius > 0:
        from ase.geometry import get_distances

        _, d = get_distances(frac[candidates] @ cell, np.asarray(exclude_center)[None, :],
                             cell=atoms.cell, pbc=atoms.pbc)
        candidates = candidates[d[:, 0] >= exclude_radius]
    candidates = candidates[: 3 * n_voids]

    def negative_clearance(cart: np.ndarray) -> float:
        wrapped = (np.linalg.solve(cell.T, cart) % 1.0) @ cell
        return -float(tree.query(wrapped)[0])

    refined: list[tuple[np.ndarray, float]] = []
    for index in candidates:
        start = frac[index] @ cell
        result = minimize(negative_clearance, start, method="Nelder-Mead",
                          options={"xatol": 1e-4, "fatol": 1e-6, "maxiter": 400})
        position = (np.linalg.solve(cell.T, result.x) % 1.0) @ cell
        radius = -negative_clearance(position)
        if exclude_center is not None and exclude_radius > 0 and \
                _min_image_distance(atoms, position, np.asarray(exclude_center)) < exclude_radius:
            continue
        refined.append((position, radius))
    refined.sort(key=lambda item: -item[1])
    unique: list[tuple[np.ndarray, float]] = []
    for position, radius in refined:
        if all(_min_image_distance(atoms, position, other) > 0.5 for other, _ in unique):
            unique.append((position, radius))
        if len(unique) == n_voids:
            break
    return unique


def _min_image_distance(atoms: Atoms, a: np.ndarray, b: np.ndarray) -> float:
    from ase.geometry import get_distances

    _, d = get_distances(a[None, :], b[None, :], cell=atoms.cell, pbc=atoms.pbc)
    return float(d[0, 0])


def _pick_lithium(atoms: Atoms, rng: np.random.Generator) -> int:
    lithium = np.flatnonzero(atoms.numbers == 3)
    if lithium.size == 0:
        raise ConfigError("structure has no Li atom to remove")
    return int(rng.choice(lithium))


def make_li_vacancy(atoms: Atoms, seed: int) -> tuple[Atoms, dict]:
    """Remove one Li (chosen with ``seed``); the cell gets ``info["charge"] = -1``.

    Returns:
        the defect cell and a dict describing the defect (removed index,
        vacancy site in Å).
    """
    rng = np.random.default_rng(seed)
    index = _pick_lithium(atoms, rng)
    site = atoms.positions[index].copy()
    defect = atoms.copy()
    del defect[index]
    defect.info = dict(atoms.info)
    defect.info["charge"] = -1
    detail = {"defect": "V_Li", "removed_index": index, "vacancy_site_A": site.round(6).tolist()}
    defect.info["defect"] = "V_Li'"
    defect.info["vacancy_site"] = site.round(6).tolist()
    return defect, detail


def make_li_interstitial(atoms: Atoms, seed: int) -> tuple[Atoms, dict]:
    """Add one Li ion at the centre of the largest void; the cell gets ``info["charge"] = +1``.

    Li_i^• (Kröger–Vink): the ion comes without its electron (pw.x ``tot_charge = +1``).
    ``seed`` picks among the largest voids of equal radius (within 0.05 Å).
    """
    voids = find_voids(atoms, n_voids=5)
    if not voids:
        raise ConfigError(f"no interstitial void found in a {len(atoms)}-atom cell")
    largest = [v for v in voids if v[1] >= voids[0][1] - 0.05]
    position, radius = largest[int(np.random.default_rng(seed).integers(len(largest)))]
    defect = atoms.copy()
    defect.append("Li")
    defect.positions[-1] = position
    defect.info = dict(atoms.info)
    defect.info["charge"] = 1
    defect.info["defect"] = "Li_i"
    defect.info["interstitial_void_radius"] = round(float(radius), 4)
    detail = {"defect": "Li_i", "site_A": np.round(position, 6).tolist(), "void_radius_A": float(radius)}
    return defect, detail


def make_li_frenkel(atoms: Atoms, seed: int, min_separation: float = 3.0) -> tuple[Atoms, dict]:
    """Move one Li to the largest void at least ``min_separation`` Å from its site.

    Voids are searched in the cell with the Li already removed (so the
    interstitial sees the vacancy); the vacancy site itself is excluded by the
    separation criterion. Composition and neutrality (``charge = 0``) are kept.
    """
    if min_separation <= 0:
        raise ConfigError(f"frenkel min_separation must be > 0 Å, got {min_separation}")
    rng = np.random.default_rng(seed)
    index = _pick_lithium(atoms, rng)
    site = atoms.positions[index].copy()
    host = atoms.copy()
    del host[index]
    voids = find_voids(host, n_voids=5, exclude_center=site, exclude_radius=min_separation)
    if voids:
        position, radius = voids[0]
        separation = _min_image_distance(host, position, site)
    else:
        raise ConfigError(
            f"no interstitial void found at >= {min_separation} Å from the vacancy in a "
            f"{len(atoms)}-atom cell; use a larger supercell or a smaller frenkel_min_separation_A"
        )
    defect = atoms.copy()
    defect.positions[index] = position
    defect.info = dict(atoms.info)
    defect.info["charge"] = 0
    defect.info["defect"] = "Frenkel V_Li' + Li_i"
    defect.info["vacancy_site"] = site.round(6).tolist()
    defect.info["interstitial_index"] = index
    defect.info["interstitial_void_radius"] = round(float(radius), 4)
    defect.info["vacancy_interstitial_distance"] = round(float(separation), 4)
    detail = {"defect": "Frenkel", "moved_index": index, "void_radius_A": float(radius),
              "separation_A": float(separation)}
    return defect, detail


def nominal_charge(atoms: Atoms) -> int:
    """Sum of nominal oxidation states (Li +1, P +5, O -2) in units of e."""
    from bornfield.structures.crystals import NOMINAL_OXIDATION_STATES

    return int(sum(NOMINAL_OXIDATION_STATES[s] for s in atoms.get_chemical_symbols()))
