"""One evaluation of the potential and the Born model per MD step.

The field MD needs, at every step, the NNP forces and (every
``born_refresh_interval`` steps) the Born charges of the same configuration.
:func:`evaluate_periodic` and :func:`evaluate_cluster` compute both from one
neighbour list and one set of per-edge quantities (distances, spherical
harmonics, radial basis; :class:`~bornfield.models.layers.EdgeGeometry`),
with one backward pass for the (committee-mean) forces. Stress is computed
only on request.

Both functions accept bornfield's models and committees; for any other object
implementing the Protocols of :mod:`bornfield.models.interface` (or models with
different species / dtypes) they fall back to the separate Protocol calls, so
the result is the same either way.

Units: positions Å, energy eV, forces eV/Å, stress eV/Å³ (ASE sign), Z in e
with index order ``Z[atom, field α, force β]``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bornfield.fieldphysics import field_forces
from bornfield.models.born import EquivariantBornModel
from bornfield.models.committee import BornCommittee, PotentialCommittee
from bornfield.models.graph import Graph, VerletGraphs, build_cluster_graph, build_graph, merge_graphs
from bornfield.models.layers import EdgeGeometry
from bornfield.models.threads import map_geometry_blocks, parallel_section
from bornfield.models.potential import (
    NNPotential,
    forces_from_edge_gradient,
    stress_from_edge_gradient,
)


@dataclass
class StepResult:
    """Models evaluated on one configuration (numpy, float64).

    Attributes:
        energy: eV, sum of the site energies of the centres.
        forces: (M, 3) eV/Å, ``-d energy / d r`` on every atom (ghosts included).
        stress: (3, 3) eV/Å³ or None (not requested / not periodic).
        born_raw: (N_c, 3, 3) e raw Born tensors of the centres (no ASR correction), or None.
        site_energies: (N_c,) eV of the centres.
        field_rows_raw: (N_c, 3) eV/Å, the rows ``Z̃.T @ E`` in place of ``born_raw`` when the
            caller asked for them (``born_field``), else None; raw as ``born_raw`` is.
    """

    energy: float
    forces: np.ndarray
    stress: np.ndarray | None
    born_raw: np.ndarray | None
    site_energies: np.ndarray
    field_rows_raw: np.ndarray | None = None


def _members(model, single: type, committee: type) -> list | None:
    if isinstance(model, single):
        return [model]
    if isinstance(model, committee):
        return list(model.members)
    return None


def field_rows_cheaper(born) -> bool:
    """True if ``born`` (a bornfield Born model or committee) computes the field-force rows Zᵀ·E for
    less than the full tensors; field MD then asks for the rows (``born_field``) where it can."""
    members = None if born is None else _members(born, EquivariantBornModel, BornCommittee)
    return bool(members) and all(m.field_rows_cheaper for m in members)


def evaluated_separately(born) -> bool:
    """True if ``born`` is a bornfield Born model (or committee) that cannot join the potential's
    block-by-block pass (``shares_blocks`` False, e.g. the polar model): the evaluations below then
    run the potential in its shared pass and the Born model through its own Protocol call."""
    members = None if born is None else _members(born, EquivariantBornModel, BornCommittee)
    return members is not None and not all(m.shares_blocks for m in members)


def model_members(model) -> list:
    """The members of a bornfield model or committee (one-element list for a single model or any other object)."""
    return (_members(model, NNPotential, PotentialCommittee) or _members(model, EquivariantBornModel, BornCommittee)
            or [model])


def shared_members(potential, born) -> tuple[list[NNPotential], list[EquivariantBornModel]] | None:
    """Members of ``potential`` and ``born`` if one shared evaluation can serve them all, else None.

    Potentials that are evaluated as whole graphs (``shares_blocks`` False, the message-passing
    potential) join it on the same graph; Born models must be evaluable block by block.
    """
    potentials = _members(potential, NNPotential, PotentialCommittee)
    borns = [] if born is None else _members(born, EquivariantBornModel, BornCommittee)
    if potentials is None or borns is None or not all(m.shares_blocks for m in borns):
        return None
    models = potentials + borns
    if len({m.species for m in models}) != 1 or len({m.dtype for m in models}) != 1:
        return None
    return potentials, borns


def _evaluate_graph(graph: Graph, potentials, borns, stress: bool, with_baseline: bool = True) -> StepResult:
    """:func:`_evaluate_blocks` of a one-structure graph in one :func:`~bornfield.models.threads.parallel_section`."""
    with parallel_section():
        sites, forces, stress_value, born_raw = _evaluate_blocks(graph, potentials, borns, stress, with_baseline)
    return StepResult(float(sites.sum()), forces, None if stress_value is None else stress_value[0], born_raw, sites)


def _evaluate_blocks(graph: Graph, potentials, borns, stress: bool, with_baseline: bool = True) -> tuple:
    """Forward, backward and Born charges block by block of centres.

    Returns numpy float64 arrays of the whole graph: site energies (N_c,) eV, forces
    (N, 3) eV/Å, stress (B, 3, 3) eV/Å³ or None, raw Born tensors (N_c, 3, 3) e or None.
    Potentials that are not evaluable block by block (``shares_blocks`` False) run once on the
    whole graph after the blocks, on the same edge vectors: the graph must then hold every
    atom's whole neighbourhood (periodic graphs; not clusters of centres and ghosts).

    Site energies and Born charges of a centre depend only on its own row of
    edge vectors, so each block's gradient is complete on its own: exact, and
    the saved activations of one block are freed before the next. The edge
    gradient is the potentials' hand-written backward
    (:meth:`NNPotential.site_energies_and_edge_gradient`). With several torch
    threads the blocks run in parallel threads (:mod:`bornfield.models.threads`).
    The networks see the pairs within their local cutoffs (:meth:`Graph.within`);
    the potentials' physical baselines (each distinct one evaluated once) use the
    whole graph, unless ``with_baseline`` is False (the caller adds the baseline,
    e.g. LAMMPS pair styles, :meth:`~bornfield.models.baseline.PairBaseline.lammps_pair_commands`).
    """
    full = graph
    graph = full.within(max(m.local_cutoff for m in potentials + borns))
    blockwise = [m for m in potentials if m.shares_blocks]
    whole = [m for m in potentials if not m.shares_blocks]
    if whole and graph.centres is not None:
        raise ValueError("potentials evaluated as whole graphs need a periodic graph, not a cluster of centres")
    weight = 1.0 / max(len(potentials), 1)

    def evaluate_block(rows: slice, geometry: EdgeGeometry):
        vec = geometry.edge_vec
        sites = torch.zeros(vec.shape[0], dtype=torch.float64)
        grad = torch.zeros_like(vec)
        for member in blockwise:
            member_sites, member_grad = member.site_energies_and_edge_gradient(graph, vec, geometry)
            sites, grad = sites + member_sites, grad + member_grad
        born = None
        if borns:
            with torch.no_grad():
                born = sum(member.raw_charges(graph, geometry).double() for member in borns) / len(borns)
        return sites * weight, grad * weight, born

    sites_parts, grad_parts, born_parts = zip(*map_geometry_blocks(graph, evaluate_block))
    edge_vec = graph.inference_edge_vectors()  # those of the blocks (the graph's cache)
    grad = torch.cat(grad_parts) if len(grad_parts) > 1 else grad_parts[0]
    site_energies = torch.cat(sites_parts)
    for member in whole:
        member_sites, member_grad = member.site_energies_and_edge_gradient(graph, edge_vec)
        site_energies = site_energies + weight * member_sites
        grad = grad + weight * member_grad.to(grad.dtype)
    with torch.no_grad():
        forces = forces_from_edge_gradient(graph, grad).double()
        stress_value = stress_from_edge_gradient(graph, edge_vec, grad).double() if stress else None
        for baseline, weight in (_baselines(potentials) if with_baseline else ()):
            b_sites, b_grad = baseline.site_energies_and_edge_gradient(full)
            site_energies = site_energies + weight * b_sites
            forces = forces + weight * forces_from_edge_gradient(full, b_grad)
            if stress:
                b_vec = full.inference_edge_vectors().to(torch.float64)
                stress_value = stress_value + weight * stress_from_edge_gradient(full, b_vec, b_grad)
    born_raw = torch.cat(born_parts).numpy() if borns else None
    return (site_energies.numpy(), forces.numpy(), None if stress_value is None else stress_value.numpy(),
            born_raw)


def common_baseline(potential):
    """The physical baseline every member of ``potential`` has (a :class:`PairBaseline`), else None.

    None also for potentials without a baseline, members with different ones and
    models that are not bornfield potentials.
    """
    members = _members(potential, NNPotential, PotentialCommittee)
    if not members:
        return None
    groups = _baselines(members)
    if len(groups) != 1 or groups[0][1] != 1.0:
        return None
    return groups[0][0]


def _baselines(potentials) -> list[tuple]:
    """(baseline, weight in the committee mean) per distinct baseline of the members."""
    groups: dict[str, list] = {}
    for member in potentials:
        if member.baseline is not None:
            key = json.dumps(member.baseline.hyperparameters, sort_keys=True)
            groups.setdefault(key, []).append(member.baseline)
    return [(members[0], len(members) / len(potentials)) for members in groups.values()]


def verlet_graphs(potential, born, skin: float, with_baseline: bool = True) -> VerletGraphs | None:
    """The neighbour lists of :func:`evaluate_periodic` of these models along a trajectory (Verlet list).

    ``skin`` Å > 0: a :class:`~bornfield.models.graph.VerletGraphs` with the models'
    longest cutoff and their local cutoffs as sub-graphs, to be passed as
    ``graphs`` at every step; None if ``skin`` is 0 (a fresh list per
    evaluation) or the models cannot share one evaluation (:func:`shared_members`).
    ``with_baseline`` False: lists for evaluations without the physical baselines
    (the networks' cutoffs only).
    """
    if float(skin) < 0.0:
        raise ValueError(f"neighbour-list skin must be >= 0 Å (got {skin!r})")
    shared = shared_members(potential, None if evaluated_separately(born) else born)
    if float(skin) == 0.0 or shared is None:
        return None
    models = shared[0] + shared[1]
    return VerletGraphs(models[0].species, graph_cutoff(models, with_baseline), float(skin), models[0].dtype,
                        sub_cutoffs=[max(m.local_cutoff for m in models)] + [m.local_cutoff for m in models])


def graph_cutoff(models, with_baseline: bool = True) -> float:
    """Å, the neighbour-list cutoff an evaluation of ``models`` needs (networks only if not ``with_baseline``)."""
    return max(m.cutoff if with_baseline else m.local_cutoff for m in models)


def _periodic_graph(graphs: VerletGraphs | None, models, positions, numbers, cell, pbc,
                    with_baseline: bool = True) -> Graph:
    """The graph of ``models`` for one periodic structure: from ``graphs`` if they serve the models, else fresh."""
    cutoff = graph_cutoff(models, with_baseline)
    species, dtype = models[0].species, models[0].dtype
    if graphs is not None and graphs.cutoff >= cutoff and graphs.species == species and graphs.dtype == dtype:
        return graphs.graph(positions, numbers, cell, pbc)
    return build_graph([(positions, numbers, cell, pbc)], species, cutoff, dtype)


def evaluate_periodic(
    potential, born, positions, numbers, cell, pbc, with_born: bool = True, stress: bool = False,
    graphs: VerletGraphs | None = None, with_baseline: bool = True, born_field=None,
) -> StepResult:
    """Potential (energy, forces, optional stress) and raw Born charges of one periodic structure.

    Args:
        potential: NNPotential / PotentialCommittee (or any PotentialModel).
        born: EquivariantBornModel / BornCommittee (or any BornChargeModel); None -> no Z.
        positions: (N, 3) Å. numbers: (N,). cell: (3, 3) Å rows. pbc: (3,) bool.
        with_born: evaluate the Born model on this step.
        stress: also compute the stress.
        graphs: the neighbour lists kept along a trajectory (:func:`verlet_graphs`);
            None (or lists of other species, dtype or a shorter cutoff): a fresh list
            (same results to round-off).
        with_baseline: include the potentials' physical baselines; False leaves them to
            the caller (bornfield models only: other models raise ValueError).
        born_field: (3,) V/Å, or None. Given (and ``with_born``), the step returns the rows
            ``Z.T @ born_field`` (``field_rows_raw``) instead of Z, by the model's cheaper path
            where it has one (:func:`field_rows_cheaper`), else contracted from Z.

    Returns:
        :class:`StepResult`; ``born_raw`` is the model's ASR-corrected Z in the
        fallback path and the raw mean-free-able tensors otherwise: callers
        subtract the mean over atoms in float64 either way (``field_rows_raw`` alike).
    """
    with_born = with_born and born is not None
    if with_born and born_field is not None:
        return evaluate_periodic_batch(potential, born, [(positions, numbers, cell, pbc)], stress=stress,
                                       graphs=[graphs], born_fields=[born_field], with_baseline=with_baseline)[0]
    if with_born and evaluated_separately(born):
        step = evaluate_periodic(potential, None, positions, numbers, cell, pbc, with_born=False, stress=stress,
                                 graphs=graphs, with_baseline=with_baseline)
        step.born_raw = np.asarray(born.born_charges(positions, numbers, cell, pbc), dtype=float)
        return step
    shared = shared_members(potential, born if with_born else None)
    if shared is None and not with_baseline:
        raise ValueError("with_baseline=False needs bornfield models that share one evaluation")
    if shared is None:
        energy, forces, stress_value = potential.energy_forces_stress(positions, numbers, cell, pbc)
        z = np.asarray(born.born_charges(positions, numbers, cell, pbc), dtype=float) if with_born else None
        return StepResult(float(energy), np.asarray(forces, dtype=float),
                          np.asarray(stress_value, dtype=float) if stress else None, z,
                          np.full(len(numbers), np.nan))
    potentials, borns = shared
    graph = _periodic_graph(graphs, potentials + borns, positions, numbers, cell, pbc, with_baseline)
    return _evaluate_graph(graph, potentials, borns, stress and bool(np.all(pbc)), with_baseline)


def evaluate_periodic_batch(
    potential, born, structures, with_born: bool | Sequence[bool] = True, stress: bool = False,
    graphs: Sequence[VerletGraphs | None] | None = None, born_fields: Sequence | None = None,
    with_baseline: bool = True,
) -> list[StepResult]:
    """:func:`evaluate_periodic` of several periodic structures in one batched model evaluation.

    The structures' graphs (from their own ``graphs``, or fresh) are merged into one
    batch graph (:func:`~bornfield.models.graph.merge_graphs`) and both models run once
    over it; for small cells this saves most of the per-call cost. Models that cannot
    share one evaluation (:func:`shared_members`) are evaluated structure by structure.

    Args:
        potential, born: as for :func:`evaluate_periodic`.
        structures: B tuples ``(positions (N_b, 3) Å, numbers (N_b,), cell (3, 3) Å rows, pbc (3,))``.
        with_born: whose Born charges are wanted, one bool for all or one per structure
            (the Born model runs over the whole batch if any structure wants them).
        stress: also compute each fully periodic structure's stress.
        graphs: one :class:`~bornfield.models.graph.VerletGraphs` (or None: a fresh list)
            per structure, each kept along that structure's trajectory.
        born_fields: one ``born_field`` of :func:`evaluate_periodic` (None or (3,) V/Å) per
            structure; None: Z for all.
        with_baseline: as for :func:`evaluate_periodic`.

    Returns:
        B :class:`StepResult`, each equal to :func:`evaluate_periodic` of its structure to
        float round-off (``born_raw`` None where not wanted).
    """
    structures = list(structures)
    count = len(structures)
    wanted = [bool(with_born)] * count if isinstance(with_born, (bool, np.bool_)) else [bool(w) for w in with_born]
    graphs = [None] * count if graphs is None else list(graphs)
    if len(wanted) != count or len(graphs) != count or (born_fields is not None and len(born_fields) != count):
        raise ValueError(f"{count} structures, {len(wanted)} with_born flags and {len(graphs)} graphs"
                         + ("" if born_fields is None else f" and {len(born_fields)} born_fields"))
    if born is not None and born_fields is not None and any(f is not None for f in born_fields):
        rows_of = [w and f is not None for w, f in zip(wanted, born_fields)]
        cheaper = field_rows_cheaper(born)  # rows by the model's own path, else contracted from Z
        results = evaluate_periodic_batch(
            potential, born, structures, [w and not (cheaper and r) for w, r in zip(wanted, rows_of)],
            stress=stress, graphs=graphs, with_baseline=with_baseline)
        for result, structure, field, rows in zip(results, structures, born_fields, rows_of):
            if rows and cheaper:
                result.field_rows_raw = born.born_field_forces(*structure, field)
            elif rows:
                result.field_rows_raw, result.born_raw = field_forces(result.born_raw, field), None
        return results
    any_born = born is not None and any(wanted)
    if any_born and evaluated_separately(born):
        results = evaluate_periodic_batch(potential, None, structures, with_born=False, stress=stress, graphs=graphs,
                                          with_baseline=with_baseline)
        for result, structure, want in zip(results, structures, wanted):
            if want:
                result.born_raw = np.asarray(born.born_charges(*structure), dtype=float)
        return results
    shared = shared_members(potential, born if any_born else None)
    if shared is None or count == 1:
        return [evaluate_periodic(potential, born, *structure, with_born=w, stress=stress, graphs=g,
                                  with_baseline=with_baseline)
                for structure, w, g in zip(structures, wanted, graphs)]
    potentials, borns = shared
    models = potentials + borns
    parts = [_periodic_graph(g, models, *structure, with_baseline) for structure, g in zip(structures, graphs)]
    if len({(part.cutoff, part.pad_length) for part in parts}) > 1:  # lists of different cutoffs: one by one
        return [_evaluate_graph(part, potentials, borns if w else [], stress and bool(np.all(structure[3])),
                                with_baseline)
                for part, structure, w in zip(parts, structures, wanted)]
    batch = merge_graphs(parts, sub_cutoffs=[max(m.local_cutoff for m in models)])
    periodic = [bool(np.all(structure[3])) for structure in structures]
    with parallel_section():
        sites, forces, stress_value, born_raw = _evaluate_blocks(batch, potentials, borns, stress and any(periodic),
                                                                 with_baseline)
    results = []
    start = 0
    for index, part in enumerate(parts):
        stop = start + part.n_atoms
        results.append(StepResult(
            float(sites[start:stop].sum()), forces[start:stop],
            stress_value[index] if stress and periodic[index] else None,
            born_raw[start:stop] if born_raw is not None and wanted[index] else None,
            sites[start:stop]))
        start = stop
    return results


def member_forces(members, positions, numbers, cell, pbc, graphs: VerletGraphs | None = None) -> list[np.ndarray]:
    """Forces (N, 3) eV/Å of each potential in ``members`` on one periodic structure (committee statistics).

    With ``graphs`` (:func:`verlet_graphs` of the MD's models, called at the same
    positions) the members share the step's neighbour list and edge geometry.
    """
    return [evaluate_periodic(member, None, positions, numbers, cell, pbc, with_born=False, graphs=graphs).forces
            for member in members]


def evaluate_cluster(potential, born, positions, numbers, centre_mask, with_born: bool = True,
                     with_baseline: bool = True) -> StepResult:
    """Open-boundary evaluation of M atoms (owned + ghosts) in which only ``centre_mask`` atoms are centres.

    ``forces`` (M, 3) are ``-d/dr Σ_{centres} E_i`` on every atom (ghost
    contributions are summed onto their real atoms by the caller);
    ``born_raw`` (N_c, 3, 3) are the raw tensors of the centres, in the order
    of ``np.flatnonzero(centre_mask)``.

    Falls back to the Protocol calls (``cluster_site_energies_forces``,
    ``cluster_born_charges_raw``) for models that cannot share one graph.
    ``with_baseline`` as in :func:`evaluate_periodic`.
    """
    centre_mask = np.asarray(centre_mask, dtype=bool)
    with_born = with_born and born is not None
    if with_born and evaluated_separately(born):
        step = evaluate_cluster(potential, None, positions, numbers, centre_mask, with_born=False,
                                with_baseline=with_baseline)
        step.born_raw = np.asarray(born.cluster_born_charges_raw(positions, numbers, centre_mask), dtype=float)
        return step
    shared = shared_members(potential, born if with_born else None)
    if shared is None and not with_baseline:
        raise ValueError("with_baseline=False needs bornfield models that share one evaluation")
    if shared is None:
        sites, forces = potential.cluster_site_energies_forces(positions, numbers, centre_mask)
        sites = np.asarray(sites, dtype=float)[centre_mask]
        z = None
        if with_born:
            z = np.asarray(born.cluster_born_charges_raw(positions, numbers), dtype=float)[centre_mask]
        return StepResult(float(sites.sum()), np.asarray(forces, dtype=float), None, z, sites)
    potentials, borns = shared
    if not all(m.shares_blocks for m in potentials):  # the potential builds the cluster of latent centres it needs
        sites, forces = potential.cluster_site_energies_forces(positions, numbers, centre_mask, with_baseline)
        sites = np.asarray(sites, dtype=float)[centre_mask]
        z = cluster_born_charges_raw(born, positions, numbers, centre_mask) if borns else None
        return StepResult(float(sites.sum()), np.asarray(forces, dtype=float), None, z, sites)
    cutoff = graph_cutoff(potentials + borns, with_baseline)
    graph = build_cluster_graph(positions, numbers, centre_mask, potentials[0].species, cutoff, potentials[0].dtype)
    return _evaluate_graph(graph, potentials, borns, stress=False, with_baseline=with_baseline)


def cluster_born_charges_raw(born, positions, numbers, centre_mask, graph: Graph | None = None) -> np.ndarray:
    """Raw Born tensors (N_c, 3, 3) e of the centres of an open-boundary cluster of M atoms, in the
    order of ``np.flatnonzero(centre_mask)`` (bornfield models: one graph of those centres, blocks
    of centres; other models: their ``cluster_born_charges_raw``). ``graph``: that cluster graph if
    the caller has built it (pairs within the Born model's cutoff at least)."""
    centre_mask = np.asarray(centre_mask, dtype=bool)
    borns = _members(born, EquivariantBornModel, BornCommittee)
    if borns is None or evaluated_separately(born) or len({(m.species, m.dtype) for m in borns}) != 1:
        return np.asarray(born.cluster_born_charges_raw(positions, numbers, centre_mask), dtype=float)
    if graph is None:
        graph = build_cluster_graph(positions, numbers, centre_mask, borns[0].species, graph_cutoff(borns),
                                    borns[0].dtype)
    return _evaluate_graph(graph, [], borns, stress=False).born_raw


__all__ = ["StepResult", "cluster_born_charges_raw", "common_baseline", "evaluate_cluster", "evaluate_periodic",
           "evaluate_periodic_batch", "evaluated_separately", "field_rows_cheaper", "graph_cutoff", "member_forces",
           "model_members", "shared_members", "verlet_graphs"]
