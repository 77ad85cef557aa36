"""Physical baseline of the NN potential (Δ-learning): a classical pair potential, E = E_pair + E_NN.

The baseline is the Pedone 2006 potential (:mod:`bornfield.pedone`), made
smooth at one cutoff ``r_c`` (Å) so that energy and forces go to zero there:

* short range per listed pair, shifted force:
  ``φ_SR(r) = m(r) - m(r_c) - (r - r_c) m'(r_c)``,
  ``m(r) = D0[exp(-2a(r-r0)) - 2exp(-a(r-r0))] + C0/r^12 + A exp(-r/ρ)``
  (LAMMPS ``morse/smooth/linear`` for the Morse part); Pedone's pairs have no Born–Mayer
  term (A = 0), a fitted baseline may add one (:mod:`bornfield.train.pair_baseline`);
* Coulomb between the partial charges by the damped shifted force method
  (Fennell & Gezelter, J. Chem. Phys. 124, 234104 (2006)), exactly as LAMMPS
  ``coul/dsf`` (damping α, 1/Å):
  ``φ_C(r) = k q_i q_j [erfc(αr)/r - e_s - r f_s]`` with
  ``f_s = -(erfc(α r_c)/r_c² + 2α/√π exp(-α² r_c²)/r_c)``, ``e_s = erfc(α r_c)/r_c - f_s r_c``,
  plus the per-atom self term ``-k q_i² (e_s/2 + α/√π)``.

``E = Σ_i [self_i + ½ Σ_{j: r_ij < r_c} (φ_SR + φ_C)(r_ij)]``: site energies
are half pair sums, so the baseline works on the same neighbour rows as the
NN (periodic graphs and clusters of owned atoms + ghosts alike). It has no
trainable parameters: its energy and its edge gradient ``∂E/∂r_e = ½ φ'(r) r̂``
are computed analytically in float64, and forces/stress follow from the edge
gradient exactly as for the NN. The parameters, the cutoff and the source are
the model file's hyperparameters (:func:`pedone_baseline`), so a file keeps
its baseline if the constants in the code change.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from ase import units
from torch import nn

from bornfield.models.graph import Graph
from bornfield.models.threads import centre_blocks, map_blocks, parallel_workers, EDGES_PER_TASK

NAME = "pedone2006-dsf"
#: a pair's numbers: the Pedone four, optionally followed by a Born–Mayer wall (A = 0 without)
PAIR_UNITS = "eV, Å, e; pairs: [D0 eV, a 1/Å, r0 Å, C0 eV Å^12] or [D0, a, r0, C0, A eV, rho Å]"
#: e²/(4πε0) in eV·Å (ASE units)
COULOMB_CONSTANT = units.Hartree * units.Bohr
FORM = (
    "E = sum_i [self_i + 1/2 sum_{j: r<cutoff} (phi_SR + phi_C)(r_ij)]; "
    "phi_SR = m(r) - m(rc) - (r - rc) m'(rc), m = D0[exp(-2a(r-r0)) - 2exp(-a(r-r0))] + C0/r^12 + A exp(-r/rho) per pair "
    "(other pairs: Coulomb only); phi_C = k q_i q_j [erfc(alpha r)/r - e_s - r f_s], "
    "f_s = -(erfc(alpha rc)/rc^2 + 2 alpha/sqrt(pi) exp(-alpha^2 rc^2)/rc), e_s = erfc(alpha rc)/rc - f_s rc "
    "(damped shifted force, Fennell & Gezelter 2006, as LAMMPS coul/dsf); self_i = -k q_i^2 (e_s/2 + alpha/sqrt(pi))"
)


def pedone_baseline(cutoff: float, dsf_alpha: float) -> dict[str, Any]:
    """Hyperparameters of the Pedone 2006 + DSF Coulomb baseline (what a model file stores).

    Args:
        cutoff: Å, cutoff of both the short-range and the Coulomb part.
        dsf_alpha: 1/Å, damping of the DSF Coulomb sum.
    """
    from bornfield.pedone import PEDONE_CHARGES, PEDONE_PAIRS, SOURCE

    return {
        "name": NAME,
        "form": FORM,
        "source": SOURCE + "; Coulomb: Fennell & Gezelter, J. Chem. Phys. 124, 234104 (2006)",
        "units": PAIR_UNITS,
        "cutoff": float(cutoff),
        "dsf_alpha": float(dsf_alpha),
        "coulomb_constant": float(COULOMB_CONSTANT),
        "charges": dict(PEDONE_CHARGES),
        "pairs": {f"{a}-{b}": [float(v) for v in values] for (a, b), values in PEDONE_PAIRS.items()},
    }


class PairBaseline(nn.Module):
    """The baseline of :func:`pedone_baseline` for the model's species (no trainable parameters).

    Args:
        species: the model's chemical symbols (index order of the graph's species).
        hyperparameters: a dict as returned by :func:`pedone_baseline`.

    Raises:
        ValueError: unknown baseline name, missing keys, a species without a charge,
            a pair naming an unknown species, or non-positive cutoff/damping.
    """

    def __init__(self, species, hyperparameters: dict[str, Any]):
        super().__init__()
        h = dict(hyperparameters)
        if h.get("name") != NAME:
            raise ValueError(f"unknown potential baseline {h.get('name')!r} (known: {NAME!r})")
        missing = [k for k in ("cutoff", "dsf_alpha", "coulomb_constant", "charges", "pairs") if k not in h]
        if missing:
            raise ValueError(f"potential baseline {NAME!r} lacks {missing}")
        self.species = tuple(species)
        self.cutoff = float(h["cutoff"])
        self.alpha = float(h["dsf_alpha"])
        self.k = float(h["coulomb_constant"])
        if not self.cutoff > 0 or not self.alpha > 0:
            raise ValueError(f"baseline cutoff and dsf_alpha must be positive (got {self.cutoff} Å, {self.alpha} 1/Å)")
        charges = {str(s): float(q) for s, q in h["charges"].items()}
        unknown = [s for s in self.species if s not in charges]
        if unknown:
            raise ValueError(f"baseline {NAME!r} has no charge for species {unknown} (charges: {charges})")
        n = len(self.species)
        table = torch.zeros(6, n, n, dtype=torch.float64)  # D0, a, r0, C0, A, rho per species pair
        table[2] = 1.0  # r0 of pairs without a short-range term (D0 = C0 = 0): any finite value
        table[5] = 1.0  # rho of pairs without a Born-Mayer wall (A = 0): any positive value
        for name, values in h["pairs"].items():
            a, _, b = name.partition("-")
            if a not in charges or b not in charges or len(values) not in (4, 6):
                raise ValueError(f"baseline pair {name!r}: expected 'A-B' of known species and 4 numbers "
                                 f"(D0, a, r0, C0) or 6 (and A, rho) (got {values})")
            if len(values) == 6 and not float(values[5]) > 0:
                raise ValueError(f"baseline pair {name!r}: Born-Mayer rho must be positive (got {values[5]} Å)")
            if a in self.species and b in self.species:
                i, j = self.species.index(a), self.species.index(b)
                table[:len(values), i, j] = table[:len(values), j, i] = torch.tensor(
                    [float(v) for v in values], dtype=torch.float64)
        self.hyperparameters = {**h, "charges": charges,
                                "pairs": {k: [float(v) for v in values] for k, values in h["pairs"].items()}}
        # float64 constants, kept out of the module's dtype casts (plain attributes)
        self._charges = torch.tensor([charges[s] for s in self.species], dtype=torch.float64)
        self._table = table
        rc, alpha = self.cutoff, self.alpha
        erfc_rc = math.erfc(alpha * rc)
        self._f_shift = -(erfc_rc / rc**2 + 2.0 * alpha / math.sqrt(math.pi) * math.exp(-((alpha * rc) ** 2)) / rc)
        self._e_shift = erfc_rc / rc - self._f_shift * rc
        self._self_factor = -self.k * (self._e_shift / 2.0 + alpha / math.sqrt(math.pi))
        d0, a, r0, c0, wall, rho = table
        x = torch.exp(-a * (rc - r0))
        #: whether any pair has a Born-Mayer wall (without, the per-pair evaluation skips its exponential)
        self._walls = bool((wall != 0).any())
        y = wall * torch.exp(-rc / rho)
        self._sr_at_cutoff = d0 * (x * x - 2.0 * x) + c0 / rc**12 + y  # (S, S) eV
        self._sr_slope_at_cutoff = -2.0 * a * d0 * (x * x - x) - 12.0 * c0 / rc**13 - y / rho  # (S, S) eV/Å
        # per species pair s_i * S + s_j: k q_i q_j, D0, a, r0, C0, A, rho, m(r_c), m'(r_c) (one gather per evaluation)
        qq = self.k * torch.outer(self._charges, self._charges)
        self._pair_table = torch.stack([qq, d0, a, r0, c0, wall, rho, self._sr_at_cutoff,
                                        self._sr_slope_at_cutoff]).reshape(9, n * n)

    def lammps_pair_commands(self, type_symbols, lammps_coulomb_constant: float) -> tuple[dict[int, float], list[str]]:
        """The same pair energy as LAMMPS pair styles: ``coul/dsf`` + ``lepton`` (shifted-force short range).

        Args:
            type_symbols: chemical symbol of LAMMPS atom type 1, 2, ... (each one of the model's species).
            lammps_coulomb_constant: eV·Å, LAMMPS's ``qqr2e`` of the run's units (``metal``: 14.399645).

        Returns:
            ``({type: charge}, commands)``: per-type charges (e, scaled by
            ``sqrt(k / qqr2e)`` so LAMMPS's Coulomb constant gives this model's ``k``)
            for ``set type <t> charge <q>`` on an ``atom_style charge`` system, and the
            ``pair_style`` / ``pair_coeff`` commands. LAMMPS's ``coul/dsf`` evaluates erfc
            by a polynomial (relative error ~1e-7), so forces agree to ~1e-5 eV/Å.
        """
        symbols = [str(s) for s in type_symbols]
        unknown = [s for s in symbols if s not in self.species]
        if unknown:
            raise ValueError(f"LAMMPS atom types of {unknown} are not species of this model {self.species}")
        index = [self.species.index(s) for s in symbols]
        scale = math.sqrt(self.k / float(lammps_coulomb_constant))
        charges = {t + 1: float(self._charges[i]) * scale for t, i in enumerate(index)}
        rc = self.cutoff
        commands = [f"pair_style hybrid/overlay coul/dsf {self.alpha!r} {rc!r} lepton {rc!r}",
                    "pair_coeff * * coul/dsf"]
        for ti, i in enumerate(index):  # every type pair with a short-range term, its constants from __init__
            for tj in range(ti, len(index)):
                j = index[tj]
                d0, a, r0, c0, wall, rho = (float(v) for v in self._table[:, i, j])
                if d0 == 0.0 and c0 == 0.0 and wall == 0.0:
                    continue
                at_cutoff, slope = float(self._sr_at_cutoff[i, j]), float(self._sr_slope_at_cutoff[i, j])
                m = f"{d0!r}*(exp(-2*{a!r}*(r-{r0!r}))-2*exp(-{a!r}*(r-{r0!r})))+{c0!r}/r^12"
                m += f"+{wall!r}*exp(-r/{rho!r})" if wall != 0.0 else ""
                energy = f"{m}-({at_cutoff!r})-(r-{rc!r})*({slope!r})"
                commands.append(f'pair_coeff {ti + 1} {tj + 1} lepton "{energy}"')
        return charges, commands

    def self_energies(self, species: torch.Tensor) -> torch.Tensor:
        """Per-atom DSF self energy (eV, float64) of atoms with species indices ``species``."""
        return self._self_factor * self._charges[species] ** 2

    def pair_energy_and_derivative(self, r: torch.Tensor, si: torch.Tensor, sj: torch.Tensor):
        """``φ(r)`` (eV) and ``φ'(r)`` (eV/Å) of pairs at distances ``r`` (float64, r > 0) with species ``si``, ``sj``.

        Valid for ``r < cutoff``; the caller masks pairs beyond it.
        """
        rc, alpha = self.cutoff, self.alpha
        qq, d0, a, r0, c0, wall, rho, sr_cut, sr_slope = self._pair_table[:, si * len(self.species) + sj]
        scaled = alpha * r
        erfc = torch.special.erfc(scaled)
        gauss = torch.exp(-scaled * scaled)
        inv_r = 1.0 / r
        inv_r6 = inv_r * inv_r
        inv_r6 = inv_r6 * inv_r6 * inv_r6
        inv_r12 = inv_r6 * inv_r6
        x = torch.exp(-a * (r - r0))
        phi = qq * (erfc * inv_r - self._e_shift - r * self._f_shift) \
            + d0 * (x * x - 2.0 * x) + c0 * inv_r12 - sr_cut - (r - rc) * sr_slope
        dphi = qq * (-erfc * inv_r * inv_r - (2.0 * alpha / math.sqrt(math.pi)) * gauss * inv_r - self._f_shift) \
            - 2.0 * a * d0 * (x * x - x) - 12.0 * c0 * inv_r12 * inv_r - sr_slope
        if self._walls:
            y = wall * torch.exp(-r / rho)
            phi = phi + y
            dphi = dphi - y / rho
        return phi, dphi

    def site_energies_and_edge_gradient(
        self, graph: Graph, energy_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Site energies (N_c,) eV and an edge gradient (N_c, K, 3) eV/Å, float64, no autograd graph.

        ``graph`` must hold every pair closer than :attr:`cutoff` (``graph.cutoff >= cutoff``).
        ``E = Σ site_energies`` (or ``Σ site_energies[energy_mask]``, (N_c,) bool, for the gradient).
        The gradient ``g`` gives the forces and the virial of E through
        :func:`~bornfield.models.potential.forces_from_edge_gradient` and
        :func:`~bornfield.models.potential.stress_from_edge_gradient`: ``g_e = ½ φ'(r) r̂`` on each
        edge, except in graphs whose rows are all atoms (``centres`` None) without ``energy_mask``,
        where every pair is in both rows and is evaluated once: ``φ'(r) r̂`` on one of its two
        edges, 0 on the other (same forces and virial). Pairs in blocks (parallel threads,
        :mod:`bornfield.models.threads`).
        """
        if graph.cutoff is not None and graph.cutoff < self.cutoff:
            raise ValueError(
                f"the neighbour list ({graph.cutoff} Å) is shorter than the potential baseline's cutoff "
                f"({self.cutoff} Å): build the graph with the model's cutoff")
        with torch.no_grad():
            edge_vec = graph.inference_edge_vectors()
            n, k = edge_vec.shape[:2]
            slots = graph.mask.reshape(-1).nonzero().squeeze(1)  # flat (row, neighbour) slots of real pairs
            rows = torch.div(slots, k, rounding_mode="floor")
            cols = graph.neighbours.reshape(-1).index_select(0, slots)
            once = graph.centres is None and energy_mask is None
            if once:  # keep the edge i -> j with j > i, or of a periodic image of i, the one with a positive shift
                keep = cols > rows
                images = (cols == rows).nonzero().squeeze(1)
                if len(images):
                    sx, sy, sz = graph.shifts.reshape(-1, 3).index_select(0, slots.index_select(0, images)).unbind(-1)
                    keep[images] = (sx > 0) | ((sx == 0) & ((sy > 0) | ((sy == 0) & (sz > 0))))
                pick = keep.nonzero().squeeze(1)
                slots, rows, cols = slots.index_select(0, pick), rows.index_select(0, pick), cols.index_select(0, pick)
            vec = edge_vec.reshape(-1, 3).index_select(0, slots).to(torch.float64)
            r = torch.linalg.norm(vec, dim=-1)
            if not bool((r < self.cutoff).all()):
                pick = (r < self.cutoff).nonzero().squeeze(1)
                slots, rows, cols, vec, r = (t.index_select(0, pick) for t in (slots, rows, cols, vec, r))
            centre_species = graph.centre_species

            def block(pairs: slice):
                return self.pair_energy_and_derivative(r[pairs], centre_species[rows[pairs]],
                                                       graph.species[cols[pairs]])

            parts = map_blocks(block, centre_blocks(len(r), 1, EDGES_PER_TASK, parallel_workers()))
            phi = torch.cat([p[0] for p in parts]) if parts else r.new_zeros(0)
            dphi = torch.cat([p[1] for p in parts]) if parts else r.new_zeros(0)
            sites = self.self_energies(centre_species).index_add(0, rows, 0.5 * phi)
            if once:
                sites = sites.index_add(0, cols, 0.5 * phi)
            pair_grad = ((1.0 if once else 0.5) * dphi / r).unsqueeze(-1) * vec
            if energy_mask is not None:
                pair_grad = pair_grad * energy_mask[rows].to(pair_grad.dtype).unsqueeze(-1)
            grad = torch.zeros(n * k, 3, dtype=torch.float64).index_copy_(0, slots, pair_grad)
            return sites, grad.view(n, k, 3)


__all__ = ["COULOMB_CONSTANT", "NAME", "PairBaseline", "pedone_baseline"]
