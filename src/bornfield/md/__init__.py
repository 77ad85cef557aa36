"""Field molecular dynamics: F = F_NNP + e Z^T E, ASE and LAMMPS backends, replicas over MPI.

``bornfield.md.conditions`` expands the config into named conditions; the
engine modules are imported lazily so that importing the conditions never
pulls in LAMMPS or MPI.
"""

from bornfield.md.conditions import MDCondition, condition_by_name, expand_conditions

__all__ = ["MDCondition", "condition_by_name", "expand_conditions"]
