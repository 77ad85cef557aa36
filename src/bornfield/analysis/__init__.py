"""Analysis of field-MD trajectories: MSD parallel/perpendicular to the field,
drift, mobility, zero-field diffusion, Nernst–Einstein comparison, transverse
field forces from off-diagonal Born charges, Arrhenius fits and sweep tables.

Units follow the project conventions (ASE): Å, fs, eV, e, amu; fields in V/Å.
Derived transport quantities are reported both in these units and in the usual
laboratory units (cm²/s, cm²/(V·s), S/cm).
"""
