"""Domain-decomposed field MD with the LAMMPS Python module and ``fix external``.

One LAMMPS instance per replica, created on the replica's MPI communicator;
LAMMPS integrates (``fix nve`` / ``temp/csvr`` / ``nvt`` / ``langevin``) and
decomposes the cell; bornfield's models supply the forces in a
``fix external pf/callback`` callback on every rank:

* one rank per replica: the callback evaluates the models periodically on
  the whole cell (no ghost overhead);
* several ranks: the callback reads the positions of the owned *and* ghost
  atoms (``extract_atom("x", nelem=nlocal+nghost)``); ghosts reach
  ``comm_modify cutoff`` = receptive field + skin, so the site energies of the
  owned atoms are complete. The potential's cluster call returns the forces of
  Σ_owned e_s on owned atoms *and* ghost images; these partial forces are
  summed onto the real atoms by tag (a reverse communication between the ranks
  that share atoms, :class:`bornfield.md.halo.TagHalo`; exact, and half the ghost
  shell of the 2 × receptive-field alternative);
* with bornfield's own models only the owned atoms are neighbour-list centres
  (ghosts enter as neighbours only, :func:`bornfield.models.combined.evaluate_cluster`),
  and one graph serves the potential and the Born model, so a rank's cost
  scales with its owned atoms rather than owned + ghosts;
* a message-passing potential (:class:`~bornfield.models.potential_message.MessagePotential`,
  site energies that read the neighbours' latents) on several ranks: each rank computes the
  latents of its owned atoms only; the latents go to the ranks that read them, and the gradients
  of the energy with respect to the latents each rank read come back to their owners (the same
  halo exchange, rows of the shared atoms only, :meth:`LammpsBackend._message_step`), so the sites
  need ghosts to one network cutoff;
* a potential's physical baseline (Pedone + DSF Coulomb) is evaluated by LAMMPS
  pair styles (``md.lammps.baseline_in_lammps``, :meth:`PairBaseline.lammps_pair_commands`):
  LAMMPS adds its forces, its energy enters ``pe``, and the networks see only their
  own cutoff (periodic list, or owned atoms + a local-cutoff shell with several ranks);
  the field-power velocities add LAMMPS's pair forces (atom ``f`` at ``post_force``);
* the site energies of owned atoms are summed and **allreduced** before being
  handed to ``fix_external_set_energy_global`` (LAMMPS does not sum it);
* Born charges: raw per-site tensors from the model's cluster call, the ASR
  mean is an allreduced sum over the owned atoms of the replica, the field
  force ``Z.T @ E`` is added to the owned atoms and the net field force is
  checked (allreduced) against ``safety.asr_tolerance_eV_per_A`` every step;
  between refreshes (``born_refresh_interval`` > 1) each rank holds the values of
  its owned atoms and hands them to their new owners when atoms change ranks.

Units: LAMMPS ``metal`` (Å, eV, ps, g/mol); all outputs are converted to the
ASE/bornfield units (Å/fs). A general (triclinic) cell is rotated into the
LAMMPS lower-triangular frame by a proper rotation Q (x_L = x Q); the field,
the field forces, velocities and Born charges are rotated consistently
(``Z_L = Qᵀ Z Q``) and rotated back for the output.

The work done by the field is the trapezoid rule on P_n = Σ F_field(n) · v(n)
with v(n) = v(n − ½) + dt F(n) / 2m, reconstructed inside the callback, summed
per rank (the sum over ranks telescopes exactly).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from ase import Atoms, units
from ase.data import chemical_symbols
from ase.constraints import FixCom
from ase.parallel import DummyMPI
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from bornfield.errors import ConfigError, InputFileError
from bornfield.fieldphysics import (
    SafetyLimits,
    UnsafeState,
    all_finite,
    asr_correct,
    committee_force_uncertainty,
    field_forces,
    held_rows_scale,
    min_distance,
)
from bornfield.md.engine import Backend, BlowUp, Snapshot, kinetic_temperature
from bornfield.md.fields import FieldSchedule
from bornfield.md.halo import TagHalo, TagHaloCache
from bornfield.models.combined import (
    cluster_born_charges_raw,
    common_baseline,
    evaluate_cluster,
    evaluate_periodic,
    evaluated_separately,
    field_rows_cheaper,
    graph_cutoff,
    member_forces,
    model_members,
    shared_members,
    verlet_graphs,
)
from bornfield.models.committee import PotentialCommittee
from bornfield.models.graph import build_cluster_graph

LOG = logging.getLogger(__name__)

MVV2E = 1.0364269e-4
"""LAMMPS metal units: (g/mol)(Å/ps)² -> eV."""
FTM2V = 1.0 / 1.0364269e-4
"""LAMMPS metal units: (eV/Å)/(g/mol) -> Å/ps²."""


def _f(value) -> str:
    """A float as LAMMPS input text (full precision, no numpy repr)."""
    return repr(float(value))


def lammps_frame(cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lower-triangular LAMMPS cell L, proper rotation Q) with ``cell @ Q == L``."""
    cell = np.asarray(cell, dtype=float)
    q, r = np.linalg.qr(cell.T)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    rotation = q * signs  # columns scaled
    lower = cell @ rotation
    lower[np.abs(lower) < 1e-12] = 0.0
    if np.linalg.det(rotation) < 0:
        raise InputFileError("MD start cell is left-handed (negative determinant); reorder the cell vectors")
    return lower, rotation


class LammpsBackend(Backend):
    """Field MD of one replica in LAMMPS over the ranks of ``comm`` (see module docstring).

    Args mirror :class:`bornfield.md.ase_backend.ASEBackend`; ``comm`` is the
    replica group communicator (mpi4py). The initial velocities are drawn
    exactly as in the ASE backend (same seed -> same start).
    """

    def __init__(self, atoms: Atoms, potential, born, settings: dict, schedule: FieldSchedule,
                 temperature_K: float, seed: int, committee: Sequence = (), comm=None):
        from mpi4py import MPI  # noqa: F401  (MPI before lammps)
        from lammps import lammps

        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_SELF
        self.rank = self.comm.Get_rank()
        self.is_writer = self.rank == 0
        self.potential = potential
        self.born = born
        self.committee = list(committee)
        self.settings = settings
        self.schedule = schedule
        self.temperature_K = float(temperature_K)
        self.dt_ps = float(settings["timestep_fs"]) * 1e-3
        self.numbers = atoms.numbers.copy()
        self.masses = atoms.get_masses()
        self.cell = np.asarray(atoms.cell).copy()
        self.n_atoms = len(atoms)
        self.n_dof = 3 * self.n_atoms - 3
        self.cell_L, self.Q = lammps_frame(self.cell)
        self.inv_cell_L = np.linalg.inv(self.cell_L)
        species = sorted(set(int(z) for z in self.numbers))
        self.type_of_number = {z: i + 1 for i, z in enumerate(species)}
        self.number_of_type = np.zeros(len(species) + 1, dtype=int)
        self.mass_of_type = np.zeros(len(species) + 1)
        for z, t in self.type_of_number.items():
            self.number_of_type[t] = z
            self.mass_of_type[t] = self.masses[self.numbers == z][0]
        self.types = np.array([self.type_of_number[int(z)] for z in self.numbers], dtype=int)
        self.safety = SafetyLimits.from_md_settings(settings)
        # bornfield models sharing species/dtype: one graph per step for the potential and a block-wise Born
        # model (a polar Born model runs beside it, combined.evaluated_separately; else Protocol calls)
        self._shared = shared_members(potential, None if evaluated_separately(born) else born) is not None
        # the potential's physical baseline as LAMMPS pair styles (the networks alone in the callback)
        self.pair_baseline = (common_baseline(potential)
                              if self._shared and settings["lammps"]["baseline_in_lammps"] else None)
        # the models' neighbour list kept between steps (one rank per replica: periodic evaluation)
        self.graphs = (verlet_graphs(potential, born, settings["neighbour_skin_A"],
                                     with_baseline=self.pair_baseline is None)
                       if self.comm.Get_size() == 1 else None)

        velocity_seq, thermostat_seq = np.random.SeedSequence(int(seed)).spawn(2)
        self.thermostat_seed = int(thermostat_seq.generate_state(1)[0] % 900_000_000) + 1
        start = atoms.copy()
        start.set_constraint(FixCom())  # 3N - 3 degrees of freedom, as in the ASE backend
        thermalize_momenta(start, self.temperature_K, rng=np.random.default_rng(velocity_seq),
                           exact_temperature=True, comm=DummyMPI())
        Stationary(start)
        velocities_A_per_fs = start.get_velocities() * units.fs

        ghost = settings["lammps"]["ghost_cutoff_A"]
        # a Born model whose values are sums over dipoles (the polar model) on several ranks: each rank
        # sums the dipoles of its owned atoms and the partial values are summed by tag, so its ghosts
        # need to reach one Born cutoff, not the receptive field of two
        self._born_partial = self.comm.Get_size() > 1 and bool(getattr(born, "sums_owned_dipoles", False))
        born_reach = float(born.cutoff if self._born_partial else born.receptive_field)
        receptive = max([float(potential.receptive_field), born_reach]
                        + [float(m.receptive_field) for m in self.committee])
        skin = float(settings["lammps"]["skin_A"])
        min_distance = float(settings["safety"]["min_distance_A"])
        if ghost is not None:
            if self.comm.Get_size() > 1 and float(ghost) < receptive + skin:
                raise ConfigError(
                    f"md.lammps.ghost_cutoff_A = {ghost} Å is shorter than the models' receptive field "
                    f"({receptive:g} Å, a physical baseline included) + md.lammps.skin_A ({skin:g} Å) while "
                    f"{self.comm.Get_size()} ranks share a replica: site energies would miss neighbours; "
                    f"use null or at least {receptive + skin:g} Å")
            self.ghost_cutoff = float(ghost)
        elif self.comm.Get_size() > 1:
            self.ghost_cutoff = receptive + skin
        else:  # periodic evaluation; ghosts only for the minimum-distance check
            self.ghost_cutoff = max(min_distance, 1.0) + skin
        # atoms beyond the owned ones that an owned site energy can depend on
        self.committee_reach = max([float(potential.receptive_field)]
                                   + [float(m.receptive_field) for m in self.committee]) + 1e-6
        self.potential_reach = (self.committee_reach if self.pair_baseline is None
                                else max(m.network_receptive_field for m in shared_members(potential, None)[0]) + 1e-6)
        self.born_reach = born_reach + 1e-6
        # a message-passing potential on several ranks: the latents of ghosts are exchanged by tag
        # (OwnedSiteStep) instead of recomputed, so its sites need ghosts to one network cutoff only
        self._latent_exchange = (self.comm.Get_size() > 1 and self._shared
                                 and all(hasattr(m, "owned_step") for m in model_members(potential)))
        if self._latent_exchange:
            self.potential_reach = (potential.local_cutoff if self.pair_baseline is not None
                                    else float(potential.cutoff)) + 1e-6
            # species, cutoff, dtype of the cluster graph the potential and the Born model share each step
            potentials, borns = shared_members(potential, None if evaluated_separately(born) else born)
            self._exchange_graph_args = (potentials[0].species,
                                         graph_cutoff(potentials + borns, with_baseline=self.pair_baseline is None),
                                         potentials[0].dtype)
        # the uncertainty members through the same latent exchange, when they fit the step's cluster and
        # share the baseline the pair styles carry (so the networks' spread is the spread)
        members = self._uncertainty_members = model_members(potential) + self.committee
        with_baseline = self.pair_baseline is None
        self._uncertainty_exchange = None
        if (self._latent_exchange and len(members) > 1 and all(hasattr(m, "owned_step") for m in members)
                and (cutoff := graph_cutoff(members, with_baseline)) <= self._exchange_graph_args[1]
                and cutoff < self.potential_reach):
            candidate = PotentialCommittee(members)
            if with_baseline or common_baseline(candidate) is not None:
                self._uncertainty_exchange = candidate
        self.lmp = lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite"], comm=self.comm)
        self.lmp.command("units metal")
        lower = self.cell_L
        commands = [
            f"atom_style {'atomic' if self.pair_baseline is None else 'charge'}",
            "atom_modify map array sort 0 0.0",
            "boundary p p p",
            f"region cell prism 0 {_f(lower[0, 0])} 0 {_f(lower[1, 1])} 0 {_f(lower[2, 2])} "
            f"{_f(lower[1, 0])} {_f(lower[2, 0])} {_f(lower[2, 1])} units box",
            f"create_box {len(species)} cell",
        ]
        commands += [f"mass {t} {_f(self.mass_of_type[t])}" for t in range(1, len(species) + 1)]
        if self.pair_baseline is None:
            commands += ["pair_style zero 1.0", "pair_coeff * *"]
            self.type_charges = {}
        else:
            symbols = [chemical_symbols[int(self.number_of_type[t])] for t in range(1, len(species) + 1)]
            self.type_charges, pair_commands = self.pair_baseline.lammps_pair_commands(
                symbols, self.lmp.extract_global("qqr2e"))
            commands += pair_commands
        commands += [
            f"neighbor {_f(skin)} bin",
            "neigh_modify every 1 delay 0 check yes",
            f"comm_modify cutoff {_f(self.ghost_cutoff)}",
            f"timestep {_f(self.dt_ps)}",
            "fix ext all external pf/callback 1 1",
            "fix_modify ext energy yes",
            "fix mom all momentum 1 linear 1 1 1",
            "thermo_style custom step temp pe ke ecouple",
            "thermo 0",
        ]
        self.lmp.commands_list(commands)
        self.lmp.set_fix_external_callback("ext", self._callback, None)
        self.bits = (self.lmp.extract_setting("IMGBITS"), self.lmp.extract_setting("IMG2BITS"),
                     self.lmp.extract_setting("IMGMASK"), self.lmp.extract_setting("IMGMAX"))

        # state
        self.step = 0
        self.work_local = 0.0
        self.power_prev_local = 0.0
        self.epot = 0.0
        self.thermostat_offset = 0.0
        self.dyn_kind = None
        self.error: str | None = None
        self._setup_call = False
        self._cache = None  # (ntimestep, tags, forces, field_forces, born)
        self.born_refresh_interval = int(settings["born_refresh_interval"])
        # Z (n_owned, 3, 3) or the rows Zᵀ·E (n_owned, 3) of the owned atoms held between refreshes
        # (born_refresh_interval > 1), with the tags they belong to: (tags, values), handed over to the
        # atoms' new owners when atoms change ranks (_held_values)
        self._held: tuple[np.ndarray, np.ndarray] | None = None
        # a Born model with a cheaper path for the rows Zᵀ·E (polar) gives the field forces alone unless
        # the trajectory stores Z; held rows serve later fields along _rows_field only
        self.born_rows = field_rows_cheaper(born) and not settings["output"]["born_charges"]
        self._rows_field: np.ndarray | None = None
        self._halos = TagHaloCache(self.comm, self.n_atoms) if self.comm.Get_size() > 1 else None
        self._create_atoms(atoms.get_positions(), velocities_A_per_fs)
        self._ensure_integrator()
        self._run(0, pre=True)

    # -- atoms ----------------------------------------------------------
    def _pack_images(self, images: np.ndarray) -> np.ndarray:
        bits, bits2, mask, imgmax = self.bits
        ix, iy, iz = (images + imgmax).T.astype(np.int64)
        return (ix & mask) | ((iy & mask) << bits) | (iz << bits2)

    def _unpack_images(self, packed: np.ndarray) -> np.ndarray:
        bits, bits2, mask, imgmax = self.bits
        packed = np.asarray(packed, dtype=np.int64)
        return np.stack([(packed & mask) - imgmax, ((packed >> bits) & mask) - imgmax,
                         (packed >> bits2) - imgmax], axis=1)

    def _create_atoms(self, positions_unwrapped: np.ndarray, velocities_A_per_fs: np.ndarray) -> None:
        x_L = np.asarray(positions_unwrapped, dtype=float) @ self.Q
        images = np.floor(x_L @ self.inv_cell_L).astype(np.int64)
        wrapped = x_L - images @ self.cell_L
        v_L = (np.asarray(velocities_A_per_fs, dtype=float) @ self.Q) * 1e3  # Å/ps
        ids = list(range(1, self.n_atoms + 1))
        self.lmp.create_atoms(self.n_atoms, ids, self.types.tolist(), wrapped.ravel().tolist(),
                              v_L.ravel().tolist(), self._pack_images(images).tolist())
        created = self.lmp.get_natoms()
        if created != self.n_atoms:
            raise InputFileError(f"LAMMPS created {created} of {self.n_atoms} atoms (atoms outside the cell?)")
        for atom_type, charge in self.type_charges.items():
            self.lmp.command(f"set type {atom_type} charge {_f(charge)}")

    # -- integrators ----------------------------------------------------
    def _wanted_kind(self) -> str:
        ensemble = self.settings["ensemble"]
        if ensemble == "nve" and self.step < self.schedule.field_on_step:
            return "bussi"
        return ensemble

    def _ecouple(self) -> float:
        return float(self.lmp.get_thermo("ecouple"))

    def _thermostat_energy(self) -> float:
        """Energy added by thermostats so far (eV); NaN for Langevin (its tally is not
        consistent with the externally added forces, as in the ASE backend)."""
        if self.dyn_kind == "langevin":
            return float("nan")
        return self.thermostat_offset - self._ecouple()

    def _ensure_integrator(self) -> bool:
        kind = self._wanted_kind()
        if kind == self.dyn_kind:
            return False
        if self.dyn_kind is not None:
            self.thermostat_offset += -self._ecouple()
            self.lmp.command("unfix integ")
            if self.dyn_kind in ("bussi", "langevin"):
                self.lmp.command("unfix thermostat")
        T = self.temperature_K
        tau_ps = float(self.settings["thermostat_time_constant_fs"]) * 1e-3
        if kind == "nose_hoover_chain":
            chain = int(self.settings["nose_hoover_chain_length"])
            self.lmp.command(f"fix integ all nvt temp {_f(T)} {_f(T)} {_f(tau_ps)} tchain {chain}")
        else:
            self.lmp.command("fix integ all nve")
        if kind == "bussi":
            self.lmp.command(f"fix thermostat all temp/csvr {_f(T)} {_f(T)} {_f(tau_ps)} {self.thermostat_seed}")
        elif kind == "langevin":
            self.lmp.command(f"fix thermostat all langevin {_f(T)} {_f(T)} {_f(tau_ps)} {self.thermostat_seed} "
                             "zero yes tally yes")
        self.dyn_kind = kind
        return True

    def _run(self, n_steps: int, pre: bool) -> None:
        # only 'pre yes' calls fix external's setup (-> the callback at the current step)
        self._setup_call = bool(pre)
        self.error = None
        self.lmp.command(f"run {int(n_steps)} pre {'yes' if pre else 'no'} post no")
        self.step = int(self.lmp.extract_global("ntimestep"))
        errors = self.comm.allgather(self.error) if self.comm.Get_size() > 1 else [self.error]
        errors = [e for e in errors if e]
        if errors:
            raise BlowUp(errors[0])

    def advance(self, n_steps: int) -> None:
        changed = self._ensure_integrator()
        if changed:
            self._run(0, pre=True)
        self._run(int(n_steps), pre=False)

    # -- the force callback -----------------------------------------------
    def _wrap(self, positions_L: np.ndarray) -> np.ndarray:
        frac = positions_L @ self.inv_cell_L
        return (frac - np.floor(frac)) @ self.cell_L

    @staticmethod
    def _distance_outside_owned(positions: np.ndarray, nlocal: int) -> np.ndarray:
        """Distance (Å) of each atom from the bounding box of the owned atoms (0 inside)."""
        if nlocal == 0:
            return np.full(len(positions), np.inf)
        lower, upper = positions[:nlocal].min(axis=0), positions[:nlocal].max(axis=0)
        return np.linalg.norm(np.maximum(np.maximum(lower - positions, positions - upper), 0.0), axis=1)

    def _callback(self, caller, ntimestep, nlocal, tag, x, f):  # noqa: ARG002
        setup = self._setup_call
        self._setup_call = False
        comm = self.comm
        tags = np.array(tag, dtype=np.int64).reshape(-1)
        cache = self._cache
        if (setup and cache is not None and cache[0] == ntimestep and len(cache[1]) == nlocal
                and np.array_equal(cache[1], tags)):
            f[:] = cache[2]
            return
        nghost = int(self.lmp.extract_global("nghost"))
        n = nlocal + nghost
        positions = np.array(self.lmp.numpy.extract_atom("x", nelem=n), dtype=float).reshape(n, 3)
        types = np.array(self.lmp.numpy.extract_atom("type", nelem=n), dtype=int).reshape(n)
        numbers = self.number_of_type[types]
        error = None
        partial = None
        interval = self.born_refresh_interval
        field_L = self.schedule(ntimestep) @ self.Q
        rows = self.born_rows
        scale = None if self._held is None or not rows else held_rows_scale(field_L, self._rows_field)
        held = scale is not None if rows else self._held is not None
        refresh = interval == 1 or not held or ntimestep % interval == 0
        # the rows of a zero field are zero: no Born evaluation (the same decision on every rank)
        evaluate_born = refresh and not (rows and not np.any(field_L))
        # Born values computed here, or summed over the ranks' owned dipoles after this block
        born_here = evaluate_born and not self._born_partial
        born_field = field_L if rows else None
        raw = None
        halo = None
        if comm.Get_size() > 1:  # partial forces (and latents) move between the ranks that share atoms
            ids = np.array(self.lmp.numpy.extract_atom("id", nelem=n), dtype=np.int64).reshape(n)
            halo = self._halos.get(ids[:nlocal], ids)
        try:
            if comm.Get_size() == 1:
                # one domain: periodic evaluation of the whole cell, no ghost overhead; one
                # neighbour list and edge geometry for both models (see bornfield.models.combined)
                owned = self._wrap(positions[:nlocal])
                step = evaluate_periodic(self.potential, self.born, owned, numbers[:nlocal], self.cell_L,
                                         np.ones(3, dtype=bool), with_born=evaluate_born, graphs=self.graphs,
                                         with_baseline=self.pair_baseline is None, born_field=born_field)
                raw = step.field_rows_raw if rows else step.born_raw
                forces = step.forces
                energy_local = step.energy
            elif self._latent_exchange:
                sel = self._distance_outside_owned(positions, nlocal) <= max(self.potential_reach, self.born_reach)
                owned = np.arange(int(sel.sum())) < nlocal  # owned atoms come first and are always selected
                site_energies, step_forces, graph = self._message_step(positions, numbers, sel, nlocal, halo)
                partial = np.zeros((n, 3))
                partial[sel] = step_forces
                energy_local = float(np.sum(site_energies))
                if born_here and rows:
                    raw = self.born.cluster_field_rows_raw(positions[sel], numbers[sel], field_L, owned)
                elif born_here:
                    raw = cluster_born_charges_raw(self.born, positions[sel], numbers[sel], owned, graph)
            elif self._shared:
                # owned atoms are the only centres; ghosts enter as neighbours only, so each
                # rank evaluates its own sites (cost ~ nlocal, not nlocal + nghost)
                sel = self._distance_outside_owned(positions, nlocal) <= max(self.potential_reach, self.born_reach)
                centres = np.zeros(int(sel.sum()), dtype=bool)
                centres[:nlocal] = True  # owned atoms come first and are always selected
                step = evaluate_cluster(self.potential, self.born, positions[sel], numbers[sel], centres,
                                        with_born=born_here and not rows,
                                        with_baseline=self.pair_baseline is None)
                partial = np.zeros((n, 3))
                partial[sel] = step.forces
                energy_local = step.energy
                raw = step.born_raw
                if born_here and rows:
                    raw = self.born.cluster_field_rows_raw(positions[sel], numbers[sel], field_L, centres)
            else:
                outside = self._distance_outside_owned(positions, nlocal)
                pot_sel = outside <= self.potential_reach
                born_sel = outside <= self.born_reach
                mask = np.zeros(int(pot_sel.sum()), dtype=bool)
                mask[:nlocal] = True  # owned atoms come first and are always selected
                site_energies, partial_forces = self.potential.cluster_site_energies_forces(
                    positions[pot_sel], numbers[pot_sel], mask)
                # forces of the owned site energies on owned atoms and on ghost images,
                # summed onto the real atoms (tags) over the replica's ranks below
                partial = np.zeros((n, 3))
                partial[pot_sel] = np.asarray(partial_forces, dtype=float)
                energy_local = float(np.sum(site_energies[:nlocal]))
                if born_here and rows:
                    born_mask = np.arange(int(born_sel.sum())) < nlocal
                    raw = self.born.cluster_field_rows_raw(positions[born_sel], numbers[born_sel], field_L,
                                                           born_mask)
                elif born_here:
                    raw = np.asarray(self.born.cluster_born_charges_raw(positions[born_sel],
                                                                        numbers[born_sel]), dtype=float)[:nlocal]
        except Exception as exc:  # any rank failing must still join the collectives
            error = f"model evaluation failed on rank {self.rank} at step {ntimestep}: {exc!r}"
            raw = np.zeros((nlocal, 3) if rows else (nlocal, 3, 3))
            forces = np.zeros((nlocal, 3))
            energy_local = 0.0
            partial = np.zeros((n, 3))
        if halo is not None:
            forces = halo.scatter_add(partial)
        if evaluate_born and self._born_partial:
            raw, born_failure = self._owned_dipole_sums(positions, numbers, nlocal, halo,
                                                        field_L if rows else None, skip=error is not None)
            if born_failure is not None and error is None:
                error = f"Born model evaluation failed on rank {self.rank} at step {ntimestep}: {born_failure}"
        born_error = None
        born = None
        if refresh:
            if raw is None:
                raw = np.zeros((nlocal, 3) if rows else (nlocal, 3, 3))
            corrected = asr_correct(raw, comm=comm)  # mean over all owned atoms of the replica
            try:
                if rows:
                    self.safety.check_born_field_rows(corrected, field_L, f" at step {ntimestep}")
                else:
                    self.safety.check_born_charges(corrected, f" at step {ntimestep}")
            except UnsafeState as exc:  # the other ranks learn of it in the reduction below
                born_error = str(exc)
            if interval > 1:  # keep Z (or the rows and their field) until the next refresh
                self._held = (tags.copy(), corrected)
                self._rows_field = field_L if rows else None
            ffield = corrected if rows else field_forces(corrected, field_L)
            born = None if rows else corrected
        elif rows:
            ffield = self._held_values(tags) * scale
        else:
            born = self._held_values(tags)
            ffield = field_forces(born, field_L)
        total = forces + ffield
        bad = 0.0 if (error is None and all_finite(total, energy_local)) else 1.0
        reduced = np.array([energy_local, *ffield.sum(axis=0), bad, 0.0 if born_error is None else 1.0])
        if comm.Get_size() > 1:
            reduced = comm.allreduce(reduced, op=self.MPI.SUM)
        self.epot = float(reduced[0])
        if reduced[4] > 0:
            self.error = error or f"non-finite energy or forces at step {ntimestep}"
            total = np.zeros_like(total)
        elif reduced[5] > 0:
            self.error = born_error or (f"Born charge above safety.max_born_charge_e on another rank at step "
                                        f"{ntimestep} (Born model extrapolating)")
        else:
            try:
                self.safety.check_asr(reduced[1:4], f" at step {ntimestep}")
            except UnsafeState as exc:  # raised on every rank after the run (collectives first)
                self.error = str(exc)
        f[:] = total
        self.lmp.fix_external_set_energy_global("ext", self.epot)
        # field power with full-step velocities
        velocities = np.array(self.lmp.numpy.extract_atom("v", nelem=nlocal), dtype=float).reshape(nlocal, 3)
        if not setup:
            mass = self.mass_of_type[types[:nlocal]][:, None]
            acting = total
            if self.pair_baseline is not None:  # LAMMPS's pair forces, already in atom f (post_force)
                acting = total + np.array(self.lmp.numpy.extract_atom("f", nelem=nlocal), dtype=float).reshape(nlocal, 3)
            velocities = velocities + 0.5 * self.dt_ps * acting / mass * FTM2V
        power = float(np.sum(ffield * velocities))  # eV/ps
        if not setup:
            self.work_local += 0.5 * self.dt_ps * (self.power_prev_local + power)
        self.power_prev_local = power
        self._cache = (ntimestep, tags, total.copy(), ffield, born)

    def _held_values(self, tags: np.ndarray) -> np.ndarray:
        """The held Born values of the atoms this rank owns now (``tags``, LAMMPS order): those of the
        refresh, handed from their owners then to their owners now (a :class:`TagHalo` gather) on the
        first step after atoms changed ranks or order on any rank (collective)."""
        held_tags, values = self._held
        moved = not np.array_equal(held_tags, tags)
        if self.comm.Get_size() > 1:
            moved = bool(self.comm.allreduce(int(moved), op=self.MPI.MAX))
        if moved:
            self._held = (tags.copy(), TagHalo(self.comm, held_tags, tags, self.n_atoms).gather(values))
        return self._held[1]

    def _message_step(self, positions, numbers, sel, nlocal: int, halo, model=None,
                      per_member: bool = False) -> tuple[np.ndarray, np.ndarray, object]:
        """Owned site energies (nlocal,) eV, forces (M, 3) eV/Å on the cluster's M atoms (the ``sel`` (n,)
        atoms of the rank's n owned + ghost atoms, owned first) of a message-passing potential or the
        mean of a committee of them (:meth:`MessagePotential.owned_step`) and the cluster graph (for the
        Born model): the owned latents go to the ranks that read them and the gradients of the latents
        read come back to their owners (``halo``, :class:`~bornfield.md.halo.TagHalo` of the n atoms).
        Every rank joins both exchanges even if its evaluation failed (with zeros); the failure is raised
        after them.
        ``model``: another such potential or committee than the MD's; ``per_member``: each member's
        forces (K, M, 3) instead of their mean."""
        model = self.potential if model is None else model
        hidden = model.latent_width
        owned = np.arange(int(sel.sum())) < nlocal
        positions, numbers = positions[sel], numbers[sel]
        failure = None

        def guarded(compute, fallback):
            nonlocal failure
            if failure is None:
                try:
                    return compute()
                except Exception as exc:  # noqa: BLE001  (re-raised after the collectives)
                    failure = exc
            return fallback

        graph = guarded(lambda: build_cluster_graph(positions, numbers, owned, *self._exchange_graph_args), None)
        step = guarded(lambda: model.owned_step(graph, with_baseline=self.pair_baseline is None), None)
        latents = halo.gather(guarded(lambda: step.latents, np.zeros((nlocal, hidden))))[sel]
        gradient = np.zeros((len(sel), hidden))
        gradient[sel] = guarded(lambda: step.latent_gradient(latents), np.zeros((len(latents), hidden)))
        owned_gradient = halo.scatter_add(gradient)
        forces = guarded(lambda: np.stack(step.member_forces(owned_gradient)) if per_member
                         else step.forces(owned_gradient), None)
        if failure is not None:
            raise failure
        return step.site_energies, forces, graph

    def _owned_dipole_sums(self, positions, numbers, nlocal: int, halo, field_L, skip: bool) -> tuple:
        """Raw Born values of the owned atoms, (nlocal, 3, 3) e or the rows (nlocal, 3) eV/Å with
        ``field_L``, summed over the ranks' owned dipoles (``cluster_owned_partial`` of the n owned +
        ghost atoms, added onto their owners by ``halo``), and the failure text or None. Every rank
        joins the exchange, with zeros if its evaluation failed or ``skip``."""
        width = 9 if field_L is None else 3
        partial = np.zeros((len(positions), width))
        failure = None
        if not skip:
            try:
                sel = self._distance_outside_owned(positions, nlocal) <= self.born_reach
                owned = np.arange(int(sel.sum())) < nlocal
                values = self.born.cluster_owned_partial(positions[sel], numbers[sel], owned, field_L)
                partial[sel] = np.asarray(values, dtype=float).reshape(-1, width)
            except Exception as exc:  # noqa: BLE001  (reported after the exchange)
                failure = repr(exc)
        summed = halo.scatter_add(partial)
        return (summed if field_L is not None else summed.reshape(nlocal, 3, 3)), failure

    # -- observables ----------------------------------------------------
    def _sum(self, value: float) -> float:
        return float(self.comm.allreduce(value, op=self.MPI.SUM)) if self.comm.Get_size() > 1 else float(value)

    def _local_state(self):
        nlocal = int(self.lmp.extract_global("nlocal"))
        v = np.array(self.lmp.numpy.extract_atom("v", nelem=nlocal), dtype=float).reshape(nlocal, 3)
        types = np.array(self.lmp.numpy.extract_atom("type", nelem=nlocal), dtype=int).reshape(nlocal)
        return nlocal, v, types

    def _gather_by_tag(self, tags: np.ndarray, values: np.ndarray) -> np.ndarray | None:
        parts = self.comm.gather((tags, values), root=0) if self.comm.Get_size() > 1 else [(tags, values)]
        if self.rank != 0:
            return None
        out = np.zeros((self.n_atoms, *values.shape[1:]))
        for part_tags, part_values in parts:
            out[part_tags - 1] = part_values
        return out

    def _gather_positions_velocities(self) -> tuple[np.ndarray, np.ndarray]:
        x = np.array(self.lmp.gather_atoms("x", 1, 3), dtype=float).reshape(self.n_atoms, 3)
        image = np.array(self.lmp.gather_atoms("image", 0, 1), dtype=np.int64).reshape(self.n_atoms)
        v = np.array(self.lmp.gather_atoms("v", 1, 3), dtype=float).reshape(self.n_atoms, 3)
        unwrapped = (x + self._unpack_images(image) @ self.cell_L) @ self.Q.T
        return unwrapped, (v @ self.Q.T) * 1e-3  # Å, Å/fs

    def snapshot(self, with_arrays: bool) -> Snapshot:
        _, v, types = self._local_state()
        ekin = self._sum(0.5 * MVV2E * float(np.sum(self.mass_of_type[types][:, None] * v * v)))
        work = self._sum(self.work_local)
        thermostat = self._thermostat_energy()
        with_arrays = bool(self.comm.bcast(with_arrays, root=0)) if self.comm.Get_size() > 1 else with_arrays
        # LAMMPS's pe: the pair baseline + the networks' energy handed to fix external
        epot = self.epot if self.pair_baseline is None else float(self.lmp.get_thermo("pe"))
        snap = Snapshot(step=self.step, epot=epot, ekin=ekin,
                        temperature_K=kinetic_temperature(ekin, self.n_dof), field_work=work,
                        thermostat_energy=thermostat, field=self.schedule(self.step))
        if with_arrays:
            positions, velocities = self._gather_positions_velocities()
            _, tags, _, ffield, born = self._cache
            ffield_all = self._gather_by_tag(tags, ffield @ self.Q.T)
            born_all = (None if born is None
                        else self._gather_by_tag(tags, np.einsum("ij,kjl,ml->kim", self.Q, born, self.Q)))
            if self.is_writer:
                snap.positions = positions
                snap.velocities = velocities.astype(np.float32)
                snap.field_forces = ffield_all.astype(np.float32)
                snap.born_charges = None if born_all is None else born_all.astype(np.float32)
        return snap

    def _local_and_ghost_positions(self):
        nlocal = int(self.lmp.extract_global("nlocal"))
        n = nlocal + int(self.lmp.extract_global("nghost"))
        positions = np.array(self.lmp.numpy.extract_atom("x", nelem=n), dtype=float).reshape(n, 3)
        types = np.array(self.lmp.numpy.extract_atom("type", nelem=n), dtype=int).reshape(n)
        return nlocal, positions, self.number_of_type[types]

    def min_distance(self) -> float:
        nlocal, positions, _ = self._local_and_ghost_positions()
        return min_distance(positions, self.settings["safety"]["min_distance_A"], n_owned=nlocal, comm=self.comm)

    def committee_force_std(self) -> float | None:
        members = self._uncertainty_members
        if len(members) < 2:
            return None
        nlocal, positions, numbers = self._local_and_ghost_positions()
        if self.comm.Get_size() == 1:
            forces = member_forces(members, self._wrap(positions[:nlocal]), numbers[:nlocal], self.cell_L,
                                   np.ones(3, dtype=bool), self.graphs)
        else:
            n = len(positions)
            ids = np.array(self.lmp.numpy.extract_atom("id", nelem=n), dtype=np.int64).reshape(n)
            halo = self._halos.get(ids[:nlocal], ids)
            if self._uncertainty_exchange is not None:  # one latent exchange, ghosts to one cutoff
                sel = self._distance_outside_owned(positions, nlocal) <= self.potential_reach
                partial = np.zeros((n, 3 * len(members)))
                failure = None
                try:
                    _, per_member, _ = self._message_step(positions, numbers, sel, nlocal, halo,
                                                          model=self._uncertainty_exchange, per_member=True)
                    partial[sel] = np.concatenate(list(per_member), axis=1)
                except Exception as exc:  # noqa: BLE001  (raised after the collectives below)
                    failure = exc
                summed = halo.scatter_add(partial)
                std = committee_force_uncertainty(np.split(summed, len(members), axis=1), comm=self.comm)
                if failure is not None:
                    raise failure
                return std
            sel = self._distance_outside_owned(positions, nlocal) <= self.committee_reach
            mask = np.zeros(int(sel.sum()), dtype=bool)
            mask[:nlocal] = True
            forces = []
            for member in members:
                partial = np.zeros((n, 3))
                partial[sel] = np.asarray(member.cluster_site_energies_forces(positions[sel], numbers[sel], mask)[1])
                forces.append(halo.scatter_add(partial))
        return committee_force_uncertainty(forces, comm=self.comm)

    # -- checkpoints ----------------------------------------------------
    def checkpoint_state(self) -> tuple[dict[str, np.ndarray], dict]:
        positions, velocities = self._gather_positions_velocities()
        metadata = {
            "backend": "lammps",
            "step": self.step,
            "field_work": self._sum(self.work_local),
            "power_prev": self._sum(self.power_prev_local),
            "thermostat_energy": self.thermostat_offset - self._ecouple(),  # raw, also for langevin
            "dyn_kind": self.dyn_kind,
        }
        return {"positions": positions, "velocities_A_per_fs": velocities}, metadata

    def restore(self, arrays: dict[str, np.ndarray] | None, metadata: dict | None) -> None:
        if self.comm.Get_size() > 1:
            arrays, metadata = self.comm.bcast((arrays, metadata), root=0)
        if metadata.get("backend") != "lammps" or arrays["positions"].shape != (self.n_atoms, 3):
            raise InputFileError(
                f"checkpoint does not match this replica (backend {metadata.get('backend')!r}); "
                "delete the replica directory to start again")
        self.lmp.command("delete_atoms group all")
        self._create_atoms(arrays["positions"], arrays["velocities_A_per_fs"])
        self.step = int(metadata["step"])
        self.lmp.command(f"reset_timestep {self.step}")
        if self.dyn_kind is not None:
            self.lmp.command("unfix integ")
            if self.dyn_kind in ("bussi", "langevin"):
                self.lmp.command("unfix thermostat")
            self.dyn_kind = None
        self._ensure_integrator()
        self.thermostat_offset = float(metadata["thermostat_energy"])
        self.work_local = float(metadata["field_work"]) if self.rank == 0 else 0.0
        self._cache = None
        self._held = self._rows_field = None  # refreshed at the restart step (n > 1: not bit-identical)
        self._run(0, pre=True)
        self.power_prev_local = float(metadata["power_prev"]) if self.rank == 0 else 0.0

    def close(self) -> None:
        if getattr(self, "lmp", None) is not None:
            self.lmp.close()
            self.lmp = None
