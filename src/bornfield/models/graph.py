"""Neighbour lists (vesin) and the batched graph that every bornfield model consumes.

A graph holds one or several structures. Edges are directed pairs (i -> j)
within the cutoff, stored as a padded (N, K) neighbour matrix,
``edge_vec = positions[j] - positions[i] + shift`` in Å,
where ``shift = S @ cell`` is the Cartesian periodic image offset. The same
graph (hence one neighbour-list computation) serves the potential and the
Born-charge model; a model whose local cutoff is shorter than the graph's
(e.g. the NN part of a potential with a long-range physical baseline) works on
:meth:`Graph.within`, the sub-graph of the shorter pairs, computed once per
graph state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import vesin
from scipy.spatial import cKDTree

from bornfield.errors import InputFileError


@dataclass
class Graph:
    """A batch of atomic structures with padded neighbour lists.

    Neighbours are stored densely per atom (``K`` = largest neighbour count in
    the batch) so the per-atom neighbour sums become batched matrix products.

    Attributes:
        positions: (N, 3) Å, concatenated over structures.
        species: (N,) int64 index into the model's ``species`` tuple.
        neighbours: (N, K) int64 index of neighbour j of atom i (padding: i itself).
        mask: (N, K) bool, True for real neighbours within the cutoff.
        shifts: (N, K, 3) Å, Cartesian periodic offset added to ``r_j - r_i``; padding
            slots hold ``(pad_length, 0, 0)``, so their edge vector is exactly that. The
            other masked slots (pairs of a :class:`VerletGraphs` list now beyond the cutoff)
            hold their pair's shift: every masked edge vector is at least ``cutoff`` long.
        batch: (N,) int64 structure index of each atom.
        cells: (B, 3, 3) Å, rows are cell vectors (zeros for open boundaries).
        volumes: (B,) Å³ (0 for structures that are not fully periodic).
        n_structures: B.
        pad_length: Å, length of the vector given to padding slots (beyond every cutoff).
        centres: optional (N_c,) int64 indices of the atoms that are neighbour-list
            centres. ``None`` (the default): every atom is a centre and row n of
            ``neighbours``/``mask``/``shifts`` belongs to atom n. Otherwise row n belongs
            to atom ``centres[n]`` and the other atoms (e.g. LAMMPS ghosts) enter only as
            neighbours: site quantities are computed for the centres alone.
        cutoff: Å, every pair closer than this is in the graph (None: not known).
    """

    positions: torch.Tensor
    species: torch.Tensor
    neighbours: torch.Tensor
    mask: torch.Tensor
    shifts: torch.Tensor
    batch: torch.Tensor
    cells: torch.Tensor
    volumes: torch.Tensor
    n_structures: int
    pad_length: float
    centres: torch.Tensor | None = None
    cutoff: float | None = None
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def cached(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per graph state: derived inference quantities (edge vectors, edge geometry).

        An entry is valid while ``positions``, ``shifts``, ``neighbours`` and
        ``mask`` are the same tensors, unmodified in place (torch version
        counters): the potential, the Born model and committee members evaluated
        on one graph share them. Not for quantities that need autograd.
        """
        stamp = tuple((t, t._version) for t in (self.positions, self.shifts, self.neighbours, self.mask))
        entry = self._cache.get(key)
        if entry is not None and all(a is b and va == vb for (a, va), (b, vb) in zip(entry[0], stamp)):
            return entry[1]
        value = compute()
        self._cache[key] = (stamp, value)
        return value

    def inference_edge_vectors(self) -> torch.Tensor:
        """:meth:`edge_vectors` (N, K, 3) Å without autograd, computed once per graph state (:meth:`cached`)."""
        with torch.no_grad():
            return self.cached(("edge_vectors",), self.edge_vectors)

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[0])

    @property
    def centre_species(self) -> torch.Tensor:
        """(N_c,) species index of the centre atom of each neighbour row."""
        return self.species if self.centres is None else self.species[self.centres]

    @property
    def centre_batch(self) -> torch.Tensor:
        """(N_c,) structure index of the centre atom of each neighbour row."""
        return self.batch if self.centres is None else self.batch[self.centres]

    @property
    def n_edges(self) -> int:
        return int(self.mask.sum())

    def edge_vectors(self, positions: torch.Tensor | None = None) -> torch.Tensor:
        """(N, K, 3) Å, ``r_j - r_i + shift`` (padding slots: a vector longer than the cutoff)."""
        positions = self.positions if positions is None else positions
        origins = positions if self.centres is None else positions[self.centres]
        n, k = self.neighbours.shape
        neighbours = positions.index_select(0, self.neighbours.reshape(-1)).view(n, k, 3)
        # padding slots: neighbour = centre (exactly zero difference) + shift (pad_length, 0, 0)
        return (neighbours - origins.unsqueeze(1)) + self.shifts

    def to(self, dtype: torch.dtype) -> Graph:
        """A copy with floating-point tensors cast to ``dtype``."""
        if dtype == self.positions.dtype:
            return self
        return Graph(
            positions=self.positions.to(dtype),
            species=self.species,
            neighbours=self.neighbours,
            mask=self.mask,
            shifts=self.shifts.to(dtype),
            batch=self.batch,
            cells=self.cells.to(dtype),
            volumes=self.volumes.to(dtype),
            n_structures=self.n_structures,
            pad_length=self.pad_length,
            centres=self.centres,
            cutoff=self.cutoff,
        )

    def within(self, cutoff: float) -> Graph:
        """The graph of the pairs closer than ``cutoff`` Å (same atoms, centres and positions tensor).

        ``self`` if the graph holds no longer pairs (``self.cutoff <= cutoff``);
        otherwise the rows are compacted (edges keep their order), computed once
        per graph state (:meth:`cached`). Index data only: not for autograd
        through ``shifts``.
        """
        if self.cutoff is not None and self.cutoff <= cutoff:
            return self
        return self.cached(("within", float(cutoff)), lambda: _restrict(self, float(cutoff)))


def _restrict(graph: Graph, cutoff: float) -> Graph:
    """:meth:`Graph.within`: the rows of ``graph`` compacted to the pairs closer than ``cutoff`` Å."""
    with torch.no_grad():
        r = torch.linalg.norm(graph.inference_edge_vectors(), dim=-1)
        keep = graph.mask & (r < cutoff)
        n, k = keep.shape
        width = max(int(keep.sum(1).max()) if n else 0, 1)
        rows = torch.arange(n).unsqueeze(1).expand(n, k)[keep]
        slots = (keep.cumsum(1) - 1)[keep]
        row_atoms = torch.arange(n) if graph.centres is None else graph.centres
        neighbours = row_atoms.unsqueeze(1).repeat(1, width)
        neighbours[rows, slots] = graph.neighbours[keep]
        mask = torch.zeros(n, width, dtype=torch.bool)
        mask[rows, slots] = True
        shifts = graph.shifts.new_zeros(n, width, 3)
        shifts[..., 0] = graph.pad_length
        shifts[rows, slots] = graph.shifts[keep]
    return Graph(
        positions=graph.positions,
        species=graph.species,
        neighbours=neighbours,
        mask=mask,
        shifts=shifts,
        batch=graph.batch,
        cells=graph.cells,
        volumes=graph.volumes,
        n_structures=graph.n_structures,
        pad_length=graph.pad_length,
        centres=graph.centres,
        cutoff=cutoff,
    )


def species_indices(numbers: np.ndarray, species: Sequence[str]) -> np.ndarray:
    """Map atomic numbers to indices into ``species`` (chemical symbols).

    Raises:
        InputFileError: if a structure holds an element the model does not know.
    """
    from ase.data import atomic_numbers

    table = np.full(119, -1, dtype=np.int64)
    for index, symbol in enumerate(species):
        table[atomic_numbers[symbol]] = index
    numbers = np.asarray(numbers, dtype=np.int64)
    indices = table[numbers]
    if (indices < 0).any():
        from ase.data import chemical_symbols

        unknown = sorted({chemical_symbols[z] for z in numbers[indices < 0]})
        raise InputFileError(
            f"structure contains element(s) {unknown} that the model does not know "
            f"(model species: {list(species)})"
        )
    return indices


def neighbour_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full (both directions) neighbour list with vesin.

    Args:
        positions: (N, 3) Å. cell: (3, 3) Å rows are cell vectors. pbc: (3,) bool.
        cutoff: Å.

    Returns:
        i (E,), j (E,) int64 and the Cartesian shifts (E, 3) Å = S @ cell.
    """
    i, j, shifts, cell = _integer_neighbour_list(positions, cell, pbc, cutoff)
    return i, j, shifts.astype(np.float64) @ cell


def _integer_neighbour_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float, distances: bool = False
) -> tuple[np.ndarray, ...]:
    """:func:`neighbour_list` with integer shifts: i, j (E,) int64, S (E, 3) int64 and the cell (3, 3) Å used.

    The cell is zero for open boundaries; the Cartesian shift of pair e is ``S[e] @ cell``.
    ``distances``: the pair distances (E,) Å are appended.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    cell = np.asarray(cell, dtype=np.float64)
    if pbc.any():
        lengths = np.linalg.norm(cell, axis=1)
        if np.any(lengths[pbc] == 0.0):
            raise InputFileError("periodic direction with a zero-length cell vector")
    else:
        cell = np.zeros((3, 3))
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    out = calculator.compute(positions, cell, [bool(p) for p in pbc], quantities="ijSd" if distances else "ijS")
    i, j, shifts = (np.asarray(out[0], dtype=np.int64), np.asarray(out[1], dtype=np.int64),
                    np.asarray(out[2], dtype=np.int64))
    return (i, j, shifts, cell, np.asarray(out[3], dtype=np.float64)) if distances else (i, j, shifts, cell)


@dataclass
class StructureEdges:
    """Neighbour list of one structure, computed once (e.g. for every training epoch)."""

    positions: np.ndarray  # (n, 3) Å
    species: np.ndarray  # (n,) int64
    src: np.ndarray  # (e,) int64
    dst: np.ndarray  # (e,) int64
    shifts: np.ndarray  # (e, 3) Å
    cell: np.ndarray  # (3, 3) Å (zeros if open)
    volume: float  # Å³ (0 unless fully periodic)
    cutoff: float


def structure_edges(positions, numbers, cell, pbc, species: Sequence[str], cutoff: float) -> StructureEdges:
    """Neighbour list and species indices of one structure ``(positions, numbers, cell, pbc)``."""
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    i, j, cartesian = neighbour_list(pos, cell, pbc, cutoff)
    return StructureEdges(
        positions=pos,
        species=species_indices(numbers, species),
        src=i,
        dst=j,
        shifts=cartesian,
        cell=cell if pbc.any() else np.zeros((3, 3)),
        volume=float(abs(np.linalg.det(cell))) if pbc.all() else 0.0,
        cutoff=float(cutoff),
    )


def collate(structures: Sequence[StructureEdges], dtype: torch.dtype = torch.float64) -> Graph:
    """Concatenate per-structure neighbour lists into one padded :class:`Graph`."""
    offsets = np.cumsum([0] + [len(s.positions) for s in structures])
    n_atoms = int(offsets[-1])
    src = np.concatenate([s.src + o for s, o in zip(structures, offsets)])
    dst = np.concatenate([s.dst + o for s, o in zip(structures, offsets)])
    shift = np.concatenate([s.shifts for s in structures])
    cutoff = max(s.cutoff for s in structures)
    neighbours, mask, shifts = _padded_rows(src, dst, shift, np.arange(n_atoms), _pad_length(cutoff))
    return Graph(
        positions=torch.tensor(np.concatenate([s.positions for s in structures]), dtype=dtype),
        species=torch.from_numpy(np.concatenate([s.species for s in structures])),
        neighbours=torch.from_numpy(neighbours),
        mask=torch.from_numpy(mask),
        shifts=torch.tensor(shifts, dtype=dtype),
        batch=torch.from_numpy(np.repeat(np.arange(len(structures)), np.diff(offsets))),
        cells=torch.tensor(np.stack([s.cell for s in structures]), dtype=dtype),
        volumes=torch.tensor([s.volume for s in structures], dtype=dtype),
        n_structures=len(structures),
        pad_length=_pad_length(cutoff),
        cutoff=min(s.cutoff for s in structures),
    )


def _pad_length(cutoff: float) -> float:
    """Å, length of the edge vector of padding slots: beyond every cutoff."""
    return 2.0 * float(cutoff) + 1.0


def _padded_rows(
    row: np.ndarray, dst: np.ndarray, shift: np.ndarray, row_atoms: np.ndarray, pad_length: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Padded (R, K) neighbour matrix, mask and (R, K, 3) shifts from edges with row index ``row``.

    ``row_atoms`` (R,) is the atom of each row, used as the padding neighbour;
    padding shifts are ``(pad_length, 0, 0)`` Å. Within a row, edges keep their
    input order.
    """
    n_rows = len(row_atoms)
    counts = np.bincount(row, minlength=n_rows)
    k_max = max(int(counts.max()) if len(counts) else 0, 1)
    starts = np.zeros(n_rows, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    # flat slot of every edge in the (n_rows, k_max) matrix, in the input order of the edges
    if np.all(row[1:] >= row[:-1]):  # already grouped by row (vesin's order, Verlet lists): no sort
        flat = np.arange(len(row), dtype=np.int64) + (row * k_max - starts[row])
    else:
        # stable sort by row; 16-bit keys sort by radix (several times faster than 64-bit keys)
        keys = row.astype(np.uint16) if n_rows <= np.iinfo(np.uint16).max + 1 else row
        order = np.argsort(keys, kind="stable")
        row_sorted = row[order]
        flat = np.empty(len(row), dtype=np.int64)
        flat[order] = np.arange(len(row), dtype=np.int64) + (row_sorted * k_max - starts[row_sorted])
    neighbours = np.repeat(np.asarray(row_atoms, dtype=np.int64), k_max)
    neighbours[flat] = dst
    mask = np.zeros(n_rows * k_max, dtype=bool)
    mask[flat] = True
    shifts = np.empty((n_rows * k_max, 3))
    shifts[:] = (pad_length, 0.0, 0.0)
    shifts[flat] = shift
    return neighbours.reshape(n_rows, k_max), mask.reshape(n_rows, k_max), shifts.reshape(n_rows, k_max, 3)


def _centre_pairs(positions: np.ndarray, centres: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Open-boundary pairs closer than ``cutoff`` (Å) whose first atom is a centre: row (index into
    ``centres``) and neighbour atom (E,) int64, grouped by row, neighbours ascending."""
    found = cKDTree(positions[centres]).sparse_distance_matrix(cKDTree(positions), cutoff, output_type="ndarray")
    rows, atoms = found["i"].astype(np.int64), found["j"].astype(np.int64)
    keep = (found["v"] < cutoff) & (atoms != centres[rows])
    rows, atoms = rows[keep], atoms[keep]
    order = np.lexsort((atoms, rows))
    return rows[order], atoms[order]


def build_cluster_graph(
    positions: np.ndarray,
    numbers: np.ndarray,
    centre_mask: np.ndarray,
    species: Sequence[str],
    cutoff: float,
    dtype: torch.dtype = torch.float64,
) -> Graph:
    """Open-boundary graph of M atoms in which only ``centre_mask`` atoms are centres.

    Every atom is a possible neighbour, so the centres' site quantities are the
    same as in the full graph, while non-centre atoms (ghosts) cost only their
    neighbour contributions.

    Args:
        positions: (M, 3) Å. numbers: (M,) atomic numbers. centre_mask: (M,) bool.
        species: model species. cutoff: Å.
    """
    pos = np.ascontiguousarray(np.asarray(positions, dtype=np.float64).reshape(-1, 3))
    centre_mask = np.asarray(centre_mask, dtype=bool).reshape(-1)
    if centre_mask.shape != (len(pos),):
        raise ValueError(f"centre_mask has shape {centre_mask.shape}, expected ({len(pos)},)")
    atom_species = species_indices(numbers, species)
    centres = np.flatnonzero(centre_mask)
    if 2 * len(centres) <= len(pos):  # few centres among many ghosts: the centres' pairs only
        rows, j = _centre_pairs(pos, centres, cutoff)
        shift = np.zeros((len(j), 3))
    else:
        i, j, shift = neighbour_list(pos, np.zeros((3, 3)), np.zeros(3, dtype=bool), cutoff)
        row_of_atom = np.full(len(pos), -1, dtype=np.int64)
        row_of_atom[centres] = np.arange(len(centres))
        keep = centre_mask[i]
        rows, j, shift = row_of_atom[i[keep]], j[keep], shift[keep]
    neighbours, mask, shifts = _padded_rows(rows, j, shift, centres, _pad_length(cutoff))
    return Graph(
        positions=torch.tensor(pos, dtype=dtype),
        species=torch.from_numpy(atom_species),
        neighbours=torch.from_numpy(neighbours),
        mask=torch.from_numpy(mask),
        shifts=torch.tensor(shifts, dtype=dtype),
        batch=torch.zeros(len(pos), dtype=torch.int64),
        cells=torch.zeros(1, 3, 3, dtype=dtype),
        volumes=torch.zeros(1, dtype=dtype),
        n_structures=1,
        pad_length=_pad_length(cutoff),
        centres=torch.from_numpy(centres),
        cutoff=float(cutoff),
    )


def build_graph(
    structures: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    species: Sequence[str],
    cutoff: float,
    dtype: torch.dtype = torch.float64,
) -> Graph:
    """Batch structures ``(positions, numbers, cell, pbc)`` into one padded graph."""
    return collate([structure_edges(p, n, c, b, species, cutoff) for p, n, c, b in structures], dtype)


def graph_from_atoms(atoms_list, species: Sequence[str], cutoff: float, dtype=torch.float64) -> Graph:
    """Convenience wrapper of :func:`build_graph` for ``ase.Atoms`` objects."""
    return build_graph(
        [(a.positions, a.numbers, np.asarray(a.cell), a.pbc) for a in atoms_list],
        species,
        cutoff,
        dtype,
    )


class VerletGraphs:
    """Graphs of one structure along a trajectory from a neighbour list with a skin (Verlet list).

    The list holds the pairs closer than ``cutoff + skin`` Å at the positions of
    its last build. It is rebuilt when an atom has moved more than ``skin / 2``
    since then (a move counts modulo lattice translations, so wrapped positions
    are fine), or when the atom count, atomic numbers, cell or pbc change; while
    no atom has, every pair now closer than ``cutoff`` is in it. ``skin = 0``
    rebuilds at every call.

    Each :meth:`graph` has the list's padded rows with ``mask`` True exactly for
    the pairs now closer than ``cutoff`` (the other slots are masked, their edge
    vectors are the real ones, up to ``cutoff + skin`` long); its sub-graphs of
    ``sub_cutoffs``, served by :meth:`Graph.within`, hold only their own pairs.
    If ``cutoff`` itself is among ``sub_cutoffs``, :meth:`graph` returns that
    compacted graph instead (rows as narrow as a fresh list's: networks
    evaluated on every row slot do not pay for the skin).
    Edge vectors are those of a fresh list (:func:`build_graph`); only the order
    of a centre's neighbours may differ, so results agree to round-off.

    Args:
        species: model species (chemical symbols).
        cutoff: Å, the graph's cutoff (the longest any model needs).
        skin: Å, >= 0.
        dtype: floating-point dtype of the graphs.
        sub_cutoffs: Å, shorter cutoffs whose :meth:`Graph.within` sub-graphs are precomputed.

    Attributes:
        builds: number of neighbour-list builds so far.
    """

    def __init__(self, species: Sequence[str], cutoff: float, skin: float, dtype: torch.dtype = torch.float64,
                 sub_cutoffs: Sequence[float] = ()):
        if not float(skin) >= 0.0:
            raise ValueError(f"neighbour-list skin must be >= 0 Å (got {skin!r})")
        self.species = tuple(species)
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.dtype = dtype
        self.sub_cutoffs = sorted({float(c) for c in sub_cutoffs if float(c) <= self.cutoff})
        self.builds = 0
        self._list: dict | None = None
        self._last: tuple[np.ndarray, Graph] | None = None  # positions and graph of the last call

    def reset(self) -> None:
        """Forget the list: the next :meth:`graph` builds a new one at its positions."""
        self._list = None
        self._last = None

    def graph(self, positions, numbers, cell, pbc) -> Graph:
        """The graph of one structure ``(positions (N, 3) Å, numbers (N,), cell (3, 3) Å rows, pbc (3,))``."""
        positions = np.ascontiguousarray(np.asarray(positions, dtype=np.float64).reshape(-1, 3))
        numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
        cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
        if numbers.shape != (len(positions),):
            raise ValueError(f"{len(numbers)} atomic numbers for {len(positions)} positions")
        images = None
        if not self._stale(numbers, cell, pbc):
            if self._last is not None and np.array_equal(self._last[0], positions):
                return self._last[1]
            images = self._images(positions)
        if images is None:
            self._build(positions, numbers, cell, pbc)
            images = self._list["images"]
        graph = self._graph(positions, images)
        self._last = (positions.copy(), graph)
        return graph

    # -- the list -----------------------------------------------------------------------
    def _stale(self, numbers: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> bool:
        state = self._list
        return (state is None or self.skin == 0.0 or not np.array_equal(state["numbers"], numbers)
                or not np.array_equal(state["cell"], cell) or not np.array_equal(state["pbc"], pbc))

    def _images(self, positions: np.ndarray) -> np.ndarray | None:
        """Lattice images n (N, 3) int of the atoms' moves since the build (move = u + n @ cell, |u| <= skin/2).

        None if an atom moved farther than ``skin / 2`` (modulo lattice translations in fully periodic cells).
        """
        state = self._list
        moved = positions - state["positions"]
        if not np.isfinite(moved).all():
            return None  # the fresh list decides what to do with such positions
        if state["inverse"] is not None:
            images = np.rint(moved @ state["inverse"]).astype(np.int64)
            moved = moved - images @ state["cell"]
        else:  # not fully periodic: a wrapped atom counts as moved
            images = state["images"]
        if np.einsum("ij,ij->i", moved, moved).max(initial=0.0) > (0.5 * self.skin) ** 2:
            return None
        return images

    def _build(self, positions: np.ndarray, numbers: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> None:
        """Neighbour list within cutoff + skin as padded rows (integer shifts), and each sub-cutoff's candidates."""
        i, j, shifts, list_cell, distances = _integer_neighbour_list(positions, cell, pbc, self.cutoff + self.skin,
                                                                     distances=True)
        n = len(positions)
        if not np.all(i[1:] >= i[:-1]):  # pairs by centre (vesin's order already)
            order = np.argsort(i, kind="stable")
            i, j, shifts, distances = i[order], j[order], shifts[order], distances[order]
        counts = np.bincount(i, minlength=n)
        k = max(int(counts.max()) if n else 0, 1)
        starts = np.zeros(n, dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        flat = i * k + (np.arange(len(i), dtype=np.int64) - starts[i])  # slot of each pair, row-major order
        neighbours = np.repeat(np.arange(n, dtype=np.int64), k)
        neighbours[flat] = j
        in_list = np.zeros(n * k, dtype=bool)
        in_list[flat] = True
        cartesian = torch.zeros(n * k, 3, dtype=self.dtype)  # (torch: numpy's row scatter is several times slower)
        cartesian[:, 0] = _pad_length(self.cutoff)
        cartesian.index_copy_(0, torch.from_numpy(flat), torch.from_numpy(shifts.astype(np.float64) @ list_cell).to(
            self.dtype))
        # pairs by neighbour (16-bit keys sort by radix, several times faster)
        by_neighbour = np.argsort(j.astype(np.uint16) if n <= np.iinfo(np.uint16).max + 1 else j, kind="stable")
        fully_periodic = bool(pbc.all())
        self._list = {
            "positions": positions.copy(), "numbers": numbers.copy(), "cell": cell.copy(), "pbc": pbc.copy(),
            "inverse": np.linalg.inv(cell) if fully_periodic else None, "list_cell": list_cell,
            "k": k, "in_list": torch.from_numpy(in_list.reshape(n, k)),
            # per pair (row-major slot order): slot, centre, neighbour, integer shift S (edge = r_j - r_i + S @ cell)
            "slots": flat, "centres": i, "neighbours": j, "integer_shifts": shifts,
            # the pairs of each atom as centre (starts[a] + range(counts[a])) and as neighbour (CSR)
            "starts": starts, "counts": counts, "as_neighbour": by_neighbour,
            "as_neighbour_starts": np.concatenate([[0], np.cumsum(np.bincount(j, minlength=n))]),
            "images": np.zeros((n, 3), dtype=np.int64),
            "shifts": cartesian.view(n, k, 3),
            # slots of the pairs that can come within each sub-cutoff before the next build (row-major)
            "candidates": {c: torch.from_numpy(flat[distances < c + self.skin]) for c in self.sub_cutoffs},
            "species": torch.from_numpy(species_indices(numbers, self.species)),
            "neighbour_tensor": torch.from_numpy(neighbours.reshape(n, k)),
            "cells": torch.tensor(list_cell, dtype=self.dtype).unsqueeze(0),  # as collate: zeros if open
            "volumes": torch.tensor([abs(np.linalg.det(cell)) if fully_periodic else 0.0], dtype=self.dtype),
        }
        self.builds += 1

    def _shift_tensor(self, images: np.ndarray) -> torch.Tensor:
        """(N, K, 3) Cartesian shifts (Å, dtype) when the atoms moved by lattice images ``images`` (N, 3) int.

        An atom moved by ``n @ cell`` keeps its pairs' edge vectors with the shifts
        ``S + n_i - n_j``: the pairs of the atoms whose image changed since the last call are recomputed.
        """
        state = self._list
        changed = np.flatnonzero(np.any(images != state["images"], axis=1))
        if len(changed) == 0:
            return state["shifts"]
        starts, counts, by_neighbour = state["starts"], state["counts"], state["as_neighbour_starts"]
        pairs = np.concatenate(  # the pairs of the changed atoms, as centre and as neighbour
            [np.arange(starts[a], starts[a] + counts[a]) for a in changed]
            + [state["as_neighbour"][by_neighbour[a]:by_neighbour[a + 1]] for a in changed])
        integer = state["integer_shifts"][pairs] + images[state["centres"][pairs]] - images[state["neighbours"][pairs]]
        cartesian = integer.astype(np.float64) @ state["list_cell"]
        slots = state["slots"][pairs]
        shifts = state["shifts"].clone()  # graphs of earlier calls keep theirs
        shifts.view(-1, 3)[torch.from_numpy(slots)] = torch.from_numpy(cartesian).to(self.dtype)
        state["shifts"], state["images"] = shifts, images
        return shifts

    # -- graphs of one call -------------------------------------------------------------
    def _graph(self, positions: np.ndarray, images: np.ndarray) -> Graph:
        state = self._list
        n = len(positions)

        def make(neighbours, mask, shifts, cutoff) -> Graph:
            return Graph(positions=position_tensor, species=state["species"], neighbours=neighbours, mask=mask,
                         shifts=shifts, batch=torch.zeros(n, dtype=torch.int64), cells=state["cells"],
                         volumes=state["volumes"], n_structures=1, pad_length=_pad_length(self.cutoff),
                         cutoff=cutoff)

        position_tensor = torch.tensor(positions, dtype=self.dtype)
        shifts = self._shift_tensor(images)
        with torch.no_grad():
            vectors = make(state["neighbour_tensor"], state["in_list"], shifts, self.cutoff).edge_vectors()
            within = state["in_list"] & ((vectors * vectors).sum(-1) < self.cutoff**2)
            full = make(state["neighbour_tensor"], within, shifts, self.cutoff)
            full.cached(("edge_vectors",), lambda: vectors)
            subs = {}
            for cutoff in self.sub_cutoffs:
                candidates = state["candidates"][cutoff]
                # the test of Graph.within (the norm of the same edge vectors), on the candidates only
                slots = candidates[torch.linalg.norm(vectors.view(-1, 3)[candidates], dim=-1) < cutoff]
                rows = torch.div(slots, state["k"], rounding_mode="floor")
                counts = torch.bincount(rows, minlength=n)
                k = max(int(counts.max()) if n else 0, 1)
                starts = torch.cumsum(counts, 0) - counts
                flat = rows * k + (torch.arange(len(slots)) - starts[rows])
                neighbours = torch.arange(n).repeat_interleave(k)
                neighbours[flat] = state["neighbour_tensor"].view(-1)[slots]
                mask = torch.zeros(n * k, dtype=torch.bool)
                mask[flat] = True
                sub_shifts = shifts.new_zeros(n * k, 3)
                sub_shifts[:, 0] = _pad_length(self.cutoff)
                sub_shifts[flat] = shifts.view(-1, 3)[slots]
                sub = make(neighbours.view(n, k), mask.view(n, k), sub_shifts.view(n, k, 3), cutoff)
                subs[cutoff] = sub
            result = subs.get(self.cutoff, full)
            for cutoff, sub in subs.items():
                if cutoff < self.cutoff:
                    result.cached(("within", cutoff), lambda sub=sub: sub)  # what result.within(cutoff) would compute
        return result


def merge_graphs(graphs: Sequence[Graph], sub_cutoffs: Sequence[float] = ()) -> Graph:
    """One batch graph of the structures of ``graphs`` (e.g. the :class:`VerletGraphs` graphs of MD replicas).

    Atoms, structures and neighbour rows are concatenated in the order of ``graphs``
    (neighbour indices offset by the atoms before, ``batch`` by the structures before);
    rows narrower than the widest are padded as :func:`collate` pads (neighbour = the
    row's atom, ``mask`` False, shift ``(pad_length, 0, 0)`` Å). Every edge vector of
    the batch is the corresponding one of its own graph, so a model evaluated on the
    batch gives each structure's results to float round-off (the padding width can
    change the order of sums). The batch's :meth:`Graph.within` sub-graphs of
    ``sub_cutoffs`` Å are the merged sub-graphs of the inputs (precomputed ones, e.g.
    a :class:`VerletGraphs` list's, are reused).

    Args:
        graphs: graphs with every atom a centre (``centres`` None), the same dtype,
            padding length and cutoff.
        sub_cutoffs: Å, cutoffs whose sub-graphs are merged now.

    Returns:
        The batch graph (``graphs[0]`` itself if there is one graph).
    """
    graphs = list(graphs)
    if not graphs:
        raise ValueError("merge_graphs needs at least one graph")
    if len(graphs) == 1:
        return graphs[0]
    first = graphs[0]
    for graph in graphs:
        if graph.centres is not None:
            raise ValueError("merge_graphs: graphs with a centre subset (cluster graphs) cannot be merged")
        if (graph.positions.dtype != first.positions.dtype or graph.pad_length != first.pad_length
                or graph.cutoff != first.cutoff):
            raise ValueError("merge_graphs: the graphs differ in dtype, padding length or cutoff")
    merged = _merge_rows(graphs, torch.cat([g.positions for g in graphs]))
    # the inputs' edge vectors (VerletGraphs computed them already), padded: the same numbers as recomputing
    # (a padding slot's neighbour is its centre, so its vector is its shift)
    width = merged.neighbours.shape[1]
    pad_vector = torch.tensor([merged.pad_length, 0.0, 0.0])
    padded = [_widen(g.inference_edge_vectors(), width, pad_vector) for g in graphs]
    merged.cached(("edge_vectors",), lambda: torch.cat(padded))
    for cutoff in sub_cutoffs:
        if merged.cutoff is None or float(cutoff) < merged.cutoff:
            sub = _merge_rows([g.within(float(cutoff)) for g in graphs], merged.positions)
            merged.cached(("within", float(cutoff)), lambda sub=sub: sub)
    return merged


def _merge_rows(graphs: Sequence[Graph], positions: torch.Tensor) -> Graph:
    """:func:`merge_graphs` without the checks and sub-graphs; ``positions`` is the batch's (N, 3) tensor."""
    width = max(int(g.neighbours.shape[1]) for g in graphs)
    pad_length = graphs[0].pad_length
    pad_shift = torch.tensor([pad_length, 0.0, 0.0])
    neighbours, masks, shifts, batches = [], [], [], []
    atoms = structures = 0
    for graph in graphs:
        n = graph.neighbours.shape[0]
        own_atoms = torch.arange(atoms, atoms + n).unsqueeze(1)  # a padding slot's neighbour: its centre
        neighbours.append(_widen(graph.neighbours + atoms, width, own_atoms))
        masks.append(_widen(graph.mask, width, torch.tensor(False)))
        shifts.append(_widen(graph.shifts, width, pad_shift))
        batches.append(graph.batch + structures)
        atoms += n
        structures += graph.n_structures
    return Graph(
        positions=positions,
        species=torch.cat([g.species for g in graphs]),
        neighbours=torch.cat(neighbours),
        mask=torch.cat(masks),
        shifts=torch.cat(shifts),
        batch=torch.cat(batches),
        cells=torch.cat([g.cells for g in graphs]),
        volumes=torch.cat([g.volumes for g in graphs]),
        n_structures=structures,
        pad_length=pad_length,
        cutoff=graphs[0].cutoff,
    )


def _widen(rows: torch.Tensor, width: int, fill: torch.Tensor) -> torch.Tensor:
    """``rows`` (n, k, ...) with columns appended up to ``width``, holding ``fill`` broadcast to (n, width − k, ...)."""
    n, k = rows.shape[:2]
    if k >= width:
        return rows
    return torch.cat([rows, torch.broadcast_to(fill.to(rows.dtype), (n, width - k, *rows.shape[2:]))], dim=1)
