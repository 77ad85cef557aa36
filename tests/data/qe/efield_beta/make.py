"""Finite-field (Berry phase) pw.x inputs on the rattled 16-atom beta cell of first demo_v2 job (beta_rattled_0),
same cutoffs / k mesh / pseudopotentials as its ph.x run (30/240 Ry, k 1x1x2)."""
from ase.io import read
from bornfield.dft.inputs import DFTSettings, PwOverrides, write_pw_input
a = read("/work/scratch_dft/runs/demo_v2/candidates.extxyz", index=0)
S = DFTSettings.defaults(ecutwfc_Ry=30, ecutrho_Ry=240, kpoint_density_per_inv_A=0.8, conv_thr_per_atom_Ry=1e-11)
PP = {"Li": "Li.pbesol-s-kjpaw_psl.0.2.1.UPF", "O": "O.pbesol-n-kjpaw_psl.0.1.UPF", "P": "P.pbesol-n-kjpaw_bornfield.UPF"}
for tag, sign in (("plus", 1), ("minus", -1)):
    o = PwOverrides(extra_control={"lelfield": True, "nberrycyc": 3, "tstress": False, "prefix": f"ef{tag}"},
                    extra_system={"nosym": True, "noinv": True},
                    extra_electrons={"efield_cart(1)": 0.0, "efield_cart(2)": 0.0, "efield_cart(3)": sign * 0.001, "startingwfc": "random"})
    print(write_pw_input(f"pw_efield_{tag}.in", a, S, PP, "/work/scratch_dft/pseudo_set", o))
