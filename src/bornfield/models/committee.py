"""Committees (ensembles) of independently trained models.

The committee mean is the prediction; the variance across members is the
uncertainty (per atom for forces and Born charges). Members may have
different cutoffs: one neighbour list with the largest cutoff serves all of
them (edges beyond a member's cutoff contribute exactly zero through its
envelope).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bornfield.errors import InputFileError
from bornfield.models.born import EquivariantBornModel
from bornfield.models.graph import Graph, build_cluster_graph, build_graph
from bornfield.models.potential import NNPotential


def _check_members(members: Sequence, what: str) -> tuple[str, ...]:
    if not members:
        raise InputFileError(f"a {what} committee needs at least one model file")
    species = members[0].species
    for member in members[1:]:
        if member.species != species:
            path = member.metadata.get("path", "?")
            raise InputFileError(
                f"{what} committee member {path} has species {list(member.species)}, "
                f"the first member has {list(species)}"
            )
    return species


class _Committee:
    members: list

    def __init__(self, members: Sequence, what: str):
        self.members = list(members)
        self.species = _check_members(self.members, what)
        self.cutoff = max(m.cutoff for m in self.members)
        self.receptive_field = max(m.receptive_field for m in self.members)
        self.network_receptive_field = max(m.network_receptive_field for m in self.members)
        self.paths = [m.metadata.get("path") for m in self.members]

    def __len__(self) -> int:
        return len(self.members)

    @property
    def dtype(self) -> torch.dtype:
        return self.members[0].dtype

    def make_graph(self, positions, numbers, cell, pbc) -> Graph:
        return build_graph([(positions, numbers, cell, pbc)], self.species, self.cutoff, self.dtype)


class PotentialCommittee(_Committee):
    """Mean of N :class:`NNPotential` members; implements the PotentialModel protocol."""

    def __init__(self, members: Sequence[NNPotential]):
        super().__init__(members, "potential")

    def evaluate_graph(self, graph: Graph, stress: bool = True) -> dict[str, np.ndarray]:
        """Mean and variance over members: energy (eV), forces (N, 3), stress (3, 3) of the first structure.

        Returns keys ``energy``, ``forces``, ``stress`` (means) and
        ``energy_var``, ``forces_var`` (N, 3), ``stress_var``, all numpy float64.
        """
        results = [m.forward(graph.to(m.dtype), forces=True, stress=stress) for m in self.members]
        out: dict[str, np.ndarray] = {}
        keys = ["energy", "forces"] + (["stress"] if stress else [])
        for key in keys:
            values = np.stack([r[key].detach().double().numpy() for r in results])
            if key in ("energy", "stress"):
                values = values[:, 0]
            out[key] = values.mean(axis=0)
            out[f"{key}_var"] = values.var(axis=0)
        sites = np.stack([r["site_energies"].detach().numpy() for r in results])
        out["energies"] = sites.mean(axis=0)
        out["energies_var"] = sites.var(axis=0)
        return out

    def energy_forces_stress(self, positions, numbers, cell, pbc):
        out = self.evaluate_graph(self.make_graph(positions, numbers, cell, pbc))
        return float(out["energy"]), out["forces"], out["stress"]

    def cluster_site_energies_forces(self, positions, numbers, energy_mask, with_baseline: bool = True):
        """Member means; only ``energy_mask`` atoms are centres (site energies NaN elsewhere);
        ``with_baseline`` False: the networks alone."""
        mask = np.asarray(energy_mask, dtype=bool)
        if not all(m.shares_blocks for m in self.members):  # each member builds the cluster it needs
            sites, forces = zip(*(m.cluster_site_energies_forces(positions, numbers, mask, with_baseline)
                                  for m in self.members))
            return np.mean(sites, axis=0), np.mean(forces, axis=0)
        cutoff = self.cutoff if with_baseline else max(m.local_cutoff for m in self.members)
        graph = build_cluster_graph(positions, numbers, mask, self.species, cutoff, self.dtype)
        sites, forces = [], []
        for m in self.members:
            r = m.forward(graph.to(m.dtype), forces=True, with_baseline=with_baseline)
            sites.append(r["site_energies"].detach().numpy())
            forces.append(r["forces"].detach().double().numpy())
        all_sites = np.full(len(mask), np.nan)
        all_sites[mask] = np.mean(sites, axis=0)
        return all_sites, np.mean(forces, axis=0)

    @property
    def local_cutoff(self) -> float:
        """The largest network cutoff of the members (Å)."""
        return max(m.local_cutoff for m in self.members)

    @property
    def exchanges_latents(self) -> bool:
        """Whether every member is message-passing, so :meth:`owned_step` serves the committee."""
        return all(hasattr(m, "owned_step") for m in self.members)

    @property
    def latent_width(self) -> int:
        """Numbers per atom that :meth:`owned_step` exchanges: the members' latents side by side."""
        return sum(m.latent_width for m in self.members)

    def owned_step(self, graph: Graph, with_baseline: bool = True) -> CommitteeOwnedStep:
        """A domain-decomposed step of the committee mean (message-passing members only); ``graph`` as
        for :meth:`~bornfield.models.potential_message.MessagePotential.owned_step`, to the largest
        member cutoff."""
        if not self.exchanges_latents:
            raise TypeError("a committee's owned_step needs message-passing members (MessagePotential)")
        return CommitteeOwnedStep([m.owned_step(graph, with_baseline) for m in self.members])


class CommitteeOwnedStep:
    """:class:`~bornfield.models.potential_message.OwnedSiteStep` of a committee mean, one exchange for all
    members: the members' latents side by side (n_owned, Σ widths) and their gradients likewise; site
    energies (n_owned,) eV and forces (M, 3) eV/Å are the member means (the calls and exchanges as for
    one member)."""

    def __init__(self, steps):
        self.steps = list(steps)
        self._bounds = np.cumsum([0] + [step.latents.shape[1] for step in self.steps])
        self.latents = np.concatenate([step.latents for step in self.steps], axis=1)

    def _parts(self, table) -> list[np.ndarray]:
        table = np.asarray(table)
        return [table[:, a:b] for a, b in zip(self._bounds[:-1], self._bounds[1:])]

    def latent_gradient(self, latents) -> np.ndarray:
        """Each member's ``dE_k/dh_k`` from its own block of ``latents`` (M, Σ widths), side by side."""
        return np.concatenate([step.latent_gradient(part) for step, part in zip(self.steps, self._parts(latents))],
                              axis=1)

    def forces(self, latent_gradient) -> np.ndarray:
        """Mean forces (M, 3) eV/Å; each member takes its block of the rank-summed ``latent_gradient``."""
        return np.mean(self.member_forces(latent_gradient), axis=0)

    def member_forces(self, latent_gradient) -> list[np.ndarray]:
        """Each member's forces (M, 3) eV/Å from its block of the rank-summed ``latent_gradient``."""
        return [step.forces(part) for step, part in zip(self.steps, self._parts(latent_gradient))]

    @property
    def site_energies(self) -> np.ndarray:
        return np.mean([step.site_energies for step in self.steps], axis=0)


class BornCommittee(_Committee):
    """Mean of N :class:`EquivariantBornModel` members; implements the BornChargeModel protocol.

    The mean of ASR-exact equivariant tensors is ASR-exact and equivariant.
    """

    def __init__(self, members: Sequence[EquivariantBornModel]):
        super().__init__(members, "born")

    def member_charges(self, graph: Graph, asr: bool = True) -> np.ndarray:
        """Each member's Born charges (members, N, 3, 3) e, float64 (raw if ``asr=False``)."""
        with torch.no_grad():
            return np.stack([m.forward(graph.to(m.dtype), asr=asr).double().numpy() for m in self.members])

    def evaluate_graph(self, graph: Graph, asr: bool = True) -> dict[str, np.ndarray]:
        """``born_charges`` (N, 3, 3) mean and ``born_charges_var`` (N, 3, 3) over members."""
        values = self.member_charges(graph, asr)
        return {"born_charges": values.mean(axis=0), "born_charges_var": values.var(axis=0)}

    def born_charges(self, positions, numbers, cell, pbc) -> np.ndarray:
        return self.evaluate_graph(self.make_graph(positions, numbers, cell, pbc))["born_charges"]

    def born_field_forces(self, positions, numbers, cell, pbc, field) -> np.ndarray:
        """Member mean of the periodic field forces ``Z.T @ E`` (N, 3) eV/Å, ASR exact."""
        return np.mean([m.born_field_forces(positions, numbers, cell, pbc, field) for m in self.members], axis=0)

    def cluster_field_rows_raw(self, positions, numbers, field, centre_mask=None) -> np.ndarray:
        """Member mean of the raw rows ``Z̃.T @ E`` (count, 3) eV/Å of the ``centre_mask`` atoms
        (default all) of an open-boundary cluster."""
        return np.mean([m.cluster_field_rows_raw(positions, numbers, field, centre_mask) for m in self.members],
                       axis=0)

    def cluster_born_charges_raw(self, positions, numbers, centre_mask=None) -> np.ndarray:
        """Member mean of the raw tensors of all atoms, or of the ``centre_mask`` atoms only."""
        if centre_mask is None:
            centre_mask = np.ones(len(numbers), dtype=bool)
        if not all(m.shares_blocks for m in self.members):  # each member builds the cluster it needs
            return np.mean([m.cluster_born_charges_raw(positions, numbers, centre_mask) for m in self.members], axis=0)
        graph = build_cluster_graph(positions, numbers, centre_mask, self.species, self.cutoff, self.dtype)
        return self.evaluate_graph(graph, asr=False)["born_charges"]

    @property
    def sums_owned_dipoles(self) -> bool:
        """Whether every member's Born values sum over dipoles (:meth:`cluster_owned_partial`)."""
        return all(getattr(m, "sums_owned_dipoles", False) for m in self.members)

    def cluster_owned_partial(self, positions, numbers, owned_mask, field=None) -> np.ndarray:
        """Member mean of one domain's share of the raw Born values (or rows, with ``field``) of every
        cluster atom (:meth:`~bornfield.models.born_polar.PolarizationBornModel.cluster_owned_partial`)."""
        return np.mean([m.cluster_owned_partial(positions, numbers, owned_mask, field) for m in self.members], axis=0)


__all__ = ["BornCommittee", "PotentialCommittee"]
