"""Index-order proof inputs: sheared + rattled Li2O (no symmetry), ph.x vs finite-field pw.x."""
import numpy as np
from ase.build import bulk
from ase.io import write
import spglib
from bornfield.dft.inputs import DFTSettings, PwOverrides, write_pw_input, write_ph_input

a = bulk("OLi2", "fluorite", a=4.61)
shear = np.array([[1.0, 0.04, 0.02], [0.0, 1.0, 0.05], [0.0, 0.0, 1.03]])
a.set_cell(a.cell[:] @ shear, scale_atoms=True)
a.rattle(stdev=0.12, seed=5)
print("spacegroup:", spglib.get_spacegroup((a.cell[:], a.get_scaled_positions(), a.numbers), symprec=1e-3))
write("structure.extxyz", a)
S = DFTSettings.defaults(ecutwfc_Ry=35, ecutrho_Ry=280, kpoint_density_per_inv_A=1.6, conv_thr_per_atom_Ry=1e-12, tr2_ph=1e-16)
PP = {"Li": "Li.pbesol-s-kjpaw_psl.0.2.1.UPF", "O": "O.pbesol-n-kjpaw_psl.0.1.UPF"}
print("k:", write_pw_input("pw.in", a, S, PP, "/work/scratch_dft/pseudo_set"))
write_ph_input("ph.in", S)
E = 0.001  # Ry atomic units of field
for tag, sign in (("plus", 1), ("minus", -1)):
    o = PwOverrides(extra_control={"lelfield": True, "nberrycyc": 3, "tstress": False, "prefix": f"ef{tag}"},
                    extra_system={"nosym": True, "noinv": True},
                    extra_electrons={"efield_cart(1)": 0.0, "efield_cart(2)": 0.0, "efield_cart(3)": sign * E, "startingwfc": "random"})
    write_pw_input(f"pw_efield_{tag}.in", a, S, PP, "/work/scratch_dft/pseudo_set", o)
