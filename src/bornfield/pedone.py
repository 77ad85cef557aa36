"""The Pedone 2006 classical potential for Li3PO4: its parameters, in one place.

Pedone, Malavasi, Menziani, Cormack, Segre, J. Phys. Chem. B 110, 11780 (2006),
doi:10.1021/jp0611018 (parameters as in LI3PO4_FACTS.md): partial charges and,
per anion pair, ``E(r) = D0[exp(-2a(r-r0)) - 2exp(-a(r-r0))] + C0/r^12`` (eV, Å)
on top of the Coulomb energy ``k q_i q_j / r``; cation–cation pairs are Coulomb
only. Used by the LAMMPS melt-quench engine (:mod:`bornfield.structures.meltquench`,
``pair_style pedone`` + ``coul/long``) and by the physical baseline of the NN
potential (:mod:`bornfield.models.baseline`, shifted-force short range + DSF Coulomb).
"""

from __future__ import annotations

from collections.abc import Sequence

SOURCE = "Pedone, Malavasi, Menziani, Cormack, Segre, J. Phys. Chem. B 110, 11780 (2006), doi:10.1021/jp0611018"

#: partial charges (e)
PEDONE_CHARGES = {"Li": 0.6, "P": 3.0, "O": -1.2}
#: pair parameters (D0 eV, a 1/Å, r0 Å, C0 eV Å^12); pairs not listed interact by Coulomb only
PEDONE_PAIRS = {
    ("Li", "O"): (0.001114, 3.429506, 2.681360, 1.0),
    ("P", "O"): (0.831326, 2.585833, 1.800790, 1.0),
    ("O", "O"): (0.042395, 1.379316, 3.618701, 22.0),
}


def lammps_pair_coefficients(type_order: Sequence[str]) -> list[tuple[int, int, tuple[float, float, float, float]]]:
    """``(i, j, (D0, a, r0, C0))`` per Pedone pair with LAMMPS atom types ``i <= j`` (1-based in ``type_order``).

    ``pair_coeff i j pedone D0 a r0 C0`` is the LAMMPS line (argument order of
    ``pair_style pedone``).
    """
    rows = []
    for (a, b), parameters in PEDONE_PAIRS.items():
        if a in type_order and b in type_order:
            i, j = sorted((list(type_order).index(a) + 1, list(type_order).index(b) + 1))
            rows.append((i, j, parameters))
    return rows
