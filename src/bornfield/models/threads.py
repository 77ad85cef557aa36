"""Data-parallel evaluation of independent blocks of centres on the CPU cores.

Site energies, their edge gradients and Born charges of a centre depend only
on its own row of edge vectors, so contiguous blocks of centres can be
evaluated independently and concatenated (exact: the same numbers as one
pass). :func:`map_blocks` runs the blocks in ``torch.get_num_threads()``
Python threads, each running torch ops on one core (torch releases the GIL
inside its kernels): coarse-grained parallelism instead of torch's intra-op
fork-join around every small kernel. Parallel blocks are the default (why:
``docs/decisions.md``); ``BORNFIELD_MODEL_THREADS=intraop`` switches to torch's own
intra-op threading (same results) for dedicated nodes.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

T = TypeVar("T")

#: one parallel section at a time: torch's intra-op thread count is process-wide
_SECTION = threading.Lock()
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
#: worker count of the parallel section the current thread is in (None outside one)
_ACTIVE = threading.local()


def threading_mode() -> str:
    """``"blocks"`` (default, :func:`map_blocks` parallel over blocks) or ``"intraop"`` (torch's threads)."""
    mode = os.environ.get("BORNFIELD_MODEL_THREADS", "blocks").strip().lower()
    if mode not in ("blocks", "intraop"):
        from bornfield.errors import ConfigError

        raise ConfigError(f"BORNFIELD_MODEL_THREADS={mode!r}: expected 'blocks' or 'intraop'")
    return mode


def parallel_workers() -> int:
    """Threads :func:`map_blocks` uses: ``torch.get_num_threads()`` in "blocks" mode, else 1.

    Inside :func:`parallel_section`, the thread count torch had when it was entered.
    """
    active = getattr(_ACTIVE, "workers", None)
    if active is not None:
        return active
    return torch.get_num_threads() if threading_mode() == "blocks" else 1


@contextmanager
def parallel_section() -> Iterator[None]:
    """One model evaluation whose parallelism is :func:`map_blocks` alone.

    In "blocks" mode with more than one torch thread, torch's intra-op thread
    count is 1 for the whole section (the few per-step operations outside the
    blocks, e.g. the force scatter, then run without fork-join barriers, which
    stall when other jobs load the cores) and restored on exit; blocks inside
    run on the original number of threads. Re-entrant; a no-op otherwise.
    """
    if getattr(_ACTIVE, "workers", None) is not None or threading_mode() != "blocks":
        yield
        return
    workers = torch.get_num_threads()
    if workers <= 1:
        yield
        return
    with _torch_on_one_thread(workers):
        yield


@contextmanager
def _torch_on_one_thread(workers: int) -> Iterator[None]:
    """Torch's intra-op thread count 1 (restored on exit) while ``workers`` block threads run."""
    with _SECTION:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        _ACTIVE.workers = workers
        try:
            yield
        finally:
            _ACTIVE.workers = None
            torch.set_num_threads(previous)


def centre_blocks(n_rows: int, n_neighbours: int, edges_per_block: int, workers: int = 1) -> list[slice]:
    """Contiguous slices of ``n_rows`` centres with at most ~``edges_per_block`` edge slots each.

    With ``workers`` > 1 the number of blocks is a multiple of ``workers`` (equal
    shares for the threads), unless there are fewer rows than that.
    """
    if n_rows <= 0:
        return []
    count = max(1, math.ceil(n_rows * max(n_neighbours, 1) / edges_per_block))
    if workers > 1:
        count = math.ceil(count / workers) * workers
    count = min(count, n_rows)
    size = math.ceil(n_rows / count)
    return [slice(start, min(start + size, n_rows)) for start in range(0, n_rows, size)]


def map_blocks(function: Callable[[slice], T], blocks: Sequence[slice], workers: int | None = None) -> list[T]:
    """``[function(block) for block in blocks]``, evaluated by ``workers`` threads (default :func:`parallel_workers`).

    With more than one worker, torch's intra-op thread count is 1 while the
    blocks run (each worker is one core) and restored afterwards; the workers
    run in the caller's autograd mode (``torch.no_grad()`` carries over).
    ``function`` must only read shared tensors. Results are in the order of
    ``blocks``. Not re-entrant with more than one worker (a nested call runs
    serially, since torch then has one thread).
    """
    workers = parallel_workers() if workers is None else workers
    workers = min(workers, len(blocks))
    if workers <= 1:
        return [function(block) for block in blocks]
    grad_enabled = torch.is_grad_enabled()  # autograd mode is per thread: run the blocks in the caller's

    def run(block: slice) -> T:
        with torch.set_grad_enabled(grad_enabled):
            return function(block)

    def run_all() -> list[T]:
        key = (os.getpid(), workers)  # a forked child needs its own threads
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="bornfield-model")
        return list(pool.map(run, blocks))

    if getattr(_ACTIVE, "workers", None) is not None:  # inside parallel_section: torch has 1 thread already
        return run_all()
    with _torch_on_one_thread(workers):
        return run_all()


#: edge slots per parallel task: the working set of one task (edges x hidden activations) stays
#: that of a ~1,000-atom cell, so large cells run at the per-atom speed of small ones
EDGES_PER_TASK = 65536


def map_geometry_blocks(graph, function: Callable, edges_per_task: int = EDGES_PER_TASK) -> list:
    """``function(rows, geometry)`` for blocks of the graph's centres, in parallel (see :func:`map_blocks`).

    ``geometry`` is the :class:`~bornfield.models.layers.EdgeGeometry` of rows
    ``rows`` of ``graph.edge_vectors()`` (N_c, K, 3) Å, built under
    ``torch.no_grad()`` (inference) and kept in the graph's cache
    (:meth:`~bornfield.models.graph.Graph.cached`), so every model evaluated on
    the same graph (potential, Born model, committee members) shares one
    neighbour geometry per block.
    """
    from bornfield.models.layers import EdgeGeometry

    edge_vec = graph.inference_edge_vectors()
    n, k = edge_vec.shape[:2]
    blocks = centre_blocks(n, k, edges_per_task, parallel_workers())

    def geometry(rows: slice) -> EdgeGeometry:
        def build() -> EdgeGeometry:
            with torch.no_grad():
                return EdgeGeometry(edge_vec[rows], graph.centre_species[rows], graph.species[graph.neighbours[rows]])

        return graph.cached(("edge_geometry", rows.start, rows.stop), build)

    return map_blocks(lambda rows: function(rows, geometry(rows)), blocks)
