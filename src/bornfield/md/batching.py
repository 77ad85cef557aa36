"""Replicas of one rank in lockstep: one batched model evaluation per MD step.

Each replica of a condition runs in its own Python thread with its own
:class:`~bornfield.md.engine.ReplicaRunner` and ASE backend; its
:class:`~bornfield.calculators.FieldCalculator` evaluates the models through a
:class:`ReplicaSlot` of one shared :class:`BatchEvaluator` instead of calling
:func:`~bornfield.models.combined.evaluate_periodic` itself. A request blocks
until every *open* slot has a request pending; then one thread evaluates them
all in one batch (:func:`~bornfield.models.combined.evaluate_periodic_batch`:
each replica's Verlet list merged into one batch graph) and hands each replica
its own :class:`~bornfield.models.combined.StepResult`, equal to what
``evaluate_periodic`` returns for it to float round-off.

Contract:

* A slot that will submit no more requests (its replica completed, failed or
  raised) must be closed (:meth:`ReplicaSlot.close`; idempotent): the others
  then no longer wait for it. A thread never waits for anything but its own
  request, so the rendezvous cannot deadlock while every thread either submits
  or closes its slot.
* Requests are batched in slot order (the order of :meth:`BatchEvaluator.slot`
  calls), so the same set of replicas in the same states gives the same batch,
  hence bit-for-bit the same numbers (a resumed run continues as the
  uninterrupted one when its replicas resume together).
* If the batched evaluation raises, each request is evaluated on its own, so an
  exception reaches only the replica whose structure caused it, as in the
  sequential path.
* :meth:`BatchEvaluator.abort` (e.g. on Ctrl-C in the main thread) makes every
  waiting and later request raise :class:`BatchAborted`.

Threads add no parallel speed (the GIL serialises the Python part of a step; the
models run one batch at a time): the gain is fewer, larger model calls.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from bornfield.models.combined import StepResult, evaluate_periodic, evaluate_periodic_batch, model_members


class BatchAborted(RuntimeError):
    """The batch evaluator was aborted; the replica thread should stop."""


@dataclass
class _Request:
    """One pending evaluation: the arguments of :func:`evaluate_periodic` and its outcome."""

    potential: object
    born: object
    structure: tuple
    with_born: bool
    stress: bool
    graphs: object
    born_field: object = None  # (3,) V/Å: the rows Zᵀ·E for this field instead of Z
    result: StepResult | None = None
    error: BaseException | None = None
    done: bool = False
    key: tuple = field(default=(), init=False)

    def __post_init__(self) -> None:
        # requests whose models are the same members (each FieldCalculator wraps them in its own committee) batch
        members = tuple(map(id, model_members(self.potential))), tuple(map(id, model_members(self.born)))
        self.key = (members, self.stress)


class BatchEvaluator:
    """Rendezvous of the replicas' model evaluations (thread-safe; see the module docstring).

    Attributes:
        batches: number of batched model evaluations so far.
        requests: number of requests served so far (``requests / batches`` = mean batch size).
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._open: set[int] = set()
        self._pending: dict[int, _Request] = {}
        self._next = 0
        self._aborted = False
        self.batches = 0
        self.requests = 0

    def slot(self) -> ReplicaSlot:
        """A new open slot (one per replica; open all of them before their threads start)."""
        with self._condition:
            index = self._next
            self._next += 1
            self._open.add(index)
        return ReplicaSlot(self, index)

    def abort(self) -> None:
        """Wake every waiting request with :class:`BatchAborted`; later requests raise it at once."""
        with self._condition:
            self._aborted = True
            self._condition.notify_all()

    # -- used by ReplicaSlot -----------------------------------------------------
    def _submit(self, index: int, request: _Request) -> StepResult:
        with self._condition:
            if self._aborted:
                raise BatchAborted("replica batch aborted")
            if index not in self._open:
                raise RuntimeError(f"request on closed replica slot {index}")
            self._pending[index] = request
            batch = self._take_batch()
        if batch:
            self._run(batch)
        with self._condition:
            while not request.done and not self._aborted:
                self._condition.wait()
            if not request.done:
                self._pending.pop(index, None)
                raise BatchAborted("replica batch aborted")
        if request.error is not None:
            raise request.error
        return request.result

    def _close(self, index: int) -> None:
        with self._condition:
            self._open.discard(index)
            self._pending.pop(index, None)
            batch = self._take_batch()
        if batch:  # the others were waiting only for this slot
            self._run(batch)

    def _take_batch(self) -> list[_Request]:
        """(Lock held.) The pending requests in slot order if every open slot has one, else []."""
        if not self._pending or self._aborted or not self._open.issubset(self._pending):
            return []
        batch = [self._pending[index] for index in sorted(self._pending)]
        self._pending.clear()
        return batch

    def _run(self, batch: list[_Request]) -> None:
        """Evaluate ``batch`` (lock not held: its owners are all waiting) and wake them."""
        try:
            groups: dict[tuple, list[_Request]] = {}
            for request in batch:
                groups.setdefault(request.key, []).append(request)
            for group in groups.values():
                _evaluate_group(group)
        except BaseException as exc:  # not an Exception (those are per request): hand it to all, then raise
            for request in batch:
                if not request.done:
                    request.error, request.done = exc, True
            raise
        finally:
            with self._condition:
                self.batches += 1
                self.requests += len(batch)
                self._condition.notify_all()


def _evaluate_group(group: list[_Request]) -> None:
    """Requests with the same models in one batch; if that raises, one by one (errors per request)."""
    first = group[0]
    try:
        results = evaluate_periodic_batch(first.potential, first.born, [r.structure for r in group],
                                          with_born=[r.with_born for r in group], stress=first.stress,
                                          graphs=[r.graphs for r in group],
                                          born_fields=[r.born_field for r in group])
    except Exception:  # noqa: BLE001 - find out whose structure fails, as the sequential path would
        for request in group:
            try:
                request.result = evaluate_periodic(request.potential, request.born, *request.structure,
                                                   with_born=request.with_born, stress=request.stress,
                                                   graphs=request.graphs, born_field=request.born_field)
            except Exception as exc:  # noqa: BLE001 - raised in the replica's own thread
                request.error = exc
            request.done = True
        return
    for request, result in zip(group, results):
        request.result, request.done = result, True


class ReplicaSlot:
    """One replica's access to a :class:`BatchEvaluator`: a drop-in for :func:`evaluate_periodic`.

    Give it to :class:`~bornfield.calculators.FieldCalculator` as ``evaluator``; close
    it when the replica stops (also a context manager).
    """

    def __init__(self, owner: BatchEvaluator, index: int):
        self._owner = owner
        self.index = index
        self.closed = False

    def evaluate(self, potential, born, positions, numbers, cell, pbc, with_born: bool = True,
                 stress: bool = False, graphs=None, born_field=None) -> StepResult:
        """:func:`evaluate_periodic` of this replica's structure, evaluated in the next batch (blocks until then)."""
        request = _Request(potential, born, (positions, numbers, cell, pbc), bool(with_born), bool(stress), graphs,
                           born_field)
        return self._owner._submit(self.index, request)

    def close(self) -> None:
        """No more requests from this replica: the others stop waiting for it. Idempotent."""
        if not self.closed:
            self.closed = True
            self._owner._close(self.index)

    def __enter__(self) -> ReplicaSlot:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["BatchAborted", "BatchEvaluator", "ReplicaSlot"]
