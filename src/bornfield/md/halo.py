"""Per-atom rows exchanged between the ranks of one domain-decomposed replica, by atom tag.

Each rank owns some atoms (LAMMPS's local atoms) and reads others (its ghosts: images of other
ranks' atoms and periodic images of its own). :class:`TagHalo` moves rows only between ranks that
share atoms, and only the shared rows:

* ``gather(owned_rows)``: every read atom gets the row its owner holds (forward communication);
* ``scatter_add(read_rows)``: the rows of every rank's read atoms are summed onto their owners
  (reverse communication, e.g. partial forces on ghost images).

A rank sends and receives rows for its halo, not for the N atoms of the cell, so the traffic per
step does not grow with the cell at a fixed domain size. Building one costs an ``Allgatherv`` of
the owned tags (who owns what); :class:`TagHaloCache` builds again only when some rank's owned or
read tags have changed (LAMMPS re-neighbouring), which one scalar ``allreduce`` per step detects.
Every method is collective over ``comm``. Tags are LAMMPS atom ids, 1 … N.
"""

from __future__ import annotations

import numpy as np


class TagHalo:
    """The exchange pattern of one layout of owned and read tags (see module docstring).

    Args:
        comm: mpi4py communicator of the replica's ranks.
        owned_tags: (n_owned,) int, distinct, the atoms this rank owns, in the order of its rows.
        read_tags: (M,) int, the atoms this rank reads (may repeat and include owned tags).
        n_atoms: N, the largest tag.
    """

    def __init__(self, comm, owned_tags, read_tags, n_atoms: int):
        from mpi4py import MPI

        self.comm = comm
        self.MPI = MPI
        size, rank = comm.Get_size(), comm.Get_rank()
        owned_tags = np.ascontiguousarray(owned_tags, dtype=np.int64)
        read_tags = np.ascontiguousarray(read_tags, dtype=np.int64)
        self.n_owned = len(owned_tags)
        counts = np.array(comm.allgather(self.n_owned), dtype=np.int64)
        every = np.empty(int(counts.sum()), dtype=np.int64)
        comm.Allgatherv(owned_tags, [every, counts, _displacements(counts), MPI.INT64_T])
        owner = np.full(n_atoms + 1, -1, dtype=np.int64)
        owner[every] = np.repeat(np.arange(size), counts)
        unread = read_tags[owner[read_tags] < 0]
        if len(unread):
            raise ValueError(f"rank {rank} reads atom tags no rank owns, e.g. {unread[:5].tolist()}")
        row_of_owned = np.full(n_atoms + 1, -1, dtype=np.int64)
        row_of_owned[owned_tags] = np.arange(self.n_owned)
        # the remote tags this rank reads, grouped by owner: what it receives
        unique = np.unique(read_tags)
        remote = unique[owner[unique] != rank]
        remote = remote[np.argsort(owner[remote], kind="stable")]
        self.receive_counts = np.bincount(owner[remote], minlength=size).astype(np.int64)
        self.send_counts = np.empty(size, dtype=np.int64)
        comm.Alltoall(self.receive_counts, self.send_counts)
        requested = np.empty(int(self.send_counts.sum()), dtype=np.int64)
        comm.Alltoallv([remote, self.receive_counts, _displacements(self.receive_counts), MPI.INT64_T],
                       [requested, self.send_counts, _displacements(self.send_counts), MPI.INT64_T])
        self.send_rows = row_of_owned[requested]  # rows of owned atoms other ranks read, by rank
        # each read atom's row in [owned rows; received rows]
        slot_of_remote = np.full(n_atoms + 1, -1, dtype=np.int64)
        slot_of_remote[remote] = self.n_owned + np.arange(len(remote))
        mine = owner[read_tags] == rank
        self.source = np.where(mine, row_of_owned[read_tags], slot_of_remote[read_tags])
        self.n_remote = len(remote)
        # the sums of scatter_add as sparse matrices (rows of images onto slots, received rows onto owned)
        self._collect = _summing_matrix(self.source, self.n_owned + self.n_remote)
        self._deliver = _summing_matrix(self.send_rows, self.n_owned)

    def gather(self, owned_rows: np.ndarray) -> np.ndarray:
        """Rows (M, ...) of the read atoms from the owners' ``owned_rows`` (n_owned, ...), float64."""
        owned_rows = np.asarray(owned_rows, dtype=float)
        shape = owned_rows.shape[1:]
        width = int(np.prod(shape))
        received = np.empty((self.n_remote, width))
        self._exchange(owned_rows.reshape(self.n_owned, width)[self.send_rows], self.send_counts,
                       received, self.receive_counts, width)
        rows = np.concatenate([owned_rows.reshape(self.n_owned, width), received])
        return rows[self.source].reshape(len(self.source), *shape)

    def scatter_add(self, read_rows: np.ndarray) -> np.ndarray:
        """Owned rows (n_owned, ...): the sum over all ranks of ``read_rows`` (M, ...) of their images."""
        read_rows = np.asarray(read_rows, dtype=float)
        shape = read_rows.shape[1:]
        width = int(np.prod(shape))
        slots = self._collect @ read_rows.reshape(len(self.source), width)
        received = np.empty((len(self.send_rows), width))
        self._exchange(slots[self.n_owned:], self.receive_counts, received, self.send_counts, width)
        owned = slots[:self.n_owned] + self._deliver @ received
        return owned.reshape(self.n_owned, *shape)

    def _exchange(self, send: np.ndarray, send_counts, receive: np.ndarray, receive_counts, width: int) -> None:
        send = np.ascontiguousarray(send, dtype=float)
        sizes_out, sizes_in = send_counts * width, receive_counts * width
        self.comm.Alltoallv([send, sizes_out, _displacements(sizes_out), self.MPI.DOUBLE],
                            [receive, sizes_in, _displacements(sizes_in), self.MPI.DOUBLE])

    @property
    def rows_moved(self) -> int:
        """Rows this rank sends per gather (and receives per scatter_add)."""
        return len(self.send_rows)


class TagHaloCache:
    """The :class:`TagHalo` of the current layout, built again only when it changes on some rank."""

    def __init__(self, comm, n_atoms: int):
        self.comm, self.n_atoms = comm, int(n_atoms)
        self.layout: tuple[np.ndarray, np.ndarray] | None = None
        self.halo: TagHalo | None = None
        self.builds = 0

    def get(self, owned_tags, read_tags) -> TagHalo:
        """The halo of ``owned_tags`` / ``read_tags`` (collective: every rank calls it each time)."""
        from mpi4py import MPI

        owned_tags, read_tags = np.asarray(owned_tags), np.asarray(read_tags)
        same = (self.layout is not None and np.array_equal(self.layout[0], owned_tags)
                and np.array_equal(self.layout[1], read_tags))
        if self.comm.allreduce(0 if same else 1, op=MPI.MAX):
            self.halo = TagHalo(self.comm, owned_tags, read_tags, self.n_atoms)
            self.layout = (owned_tags.copy(), read_tags.copy())
            self.builds += 1
        return self.halo


def _summing_matrix(targets: np.ndarray, n_targets: int):
    """(n_targets, len(targets)) sparse matrix whose product with rows sums row k onto ``targets[k]``."""
    from scipy.sparse import csr_matrix

    return csr_matrix((np.ones(len(targets)), (targets, np.arange(len(targets)))), shape=(n_targets, len(targets)))


def _displacements(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


__all__ = ["TagHalo", "TagHaloCache"]
