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
            slots hold ``(pad_length, 0, 0)``, so their edge vector is exactly that.
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
    i, j, shifts = calculator.compute(positions, cell, [bool(p) for p in pbc], quantities="ijS")
    cartesian = np.asarray(shifts, dtype=np.float64) @ cell
    return np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64), cartesian


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
    # stable sort by row; 16-bit keys sort by radix (several times faster than 64-bit keys)
    keys = row.astype(np.uint16) if n_rows <= np.iinfo(np.uint16).max + 1 else row
    order = np.argsort(keys, kind="stable")
    starts = np.zeros(n_rows, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    row_sorted = row[order]
    # flat slot of every edge in the (n_rows, k_max) matrix, in the input order of the edges
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
    i, j, shift = neighbour_list(pos, np.zeros((3, 3)), np.zeros(3, dtype=bool), cutoff)
    centres = np.flatnonzero(centre_mask)
    row_of_atom = np.full(len(pos), -1, dtype=np.int64)
    row_of_atom[centres] = np.arange(len(centres))
    keep = centre_mask[i]
    neighbours, mask, shifts = _padded_rows(row_of_atom[i[keep]], j[keep], shift[keep], centres, _pad_length(cutoff))
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
