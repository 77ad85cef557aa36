"""Write the saved-model reference of tests/test_models_fast_paths.py (run once, with the code to freeze).

    PYTHONPATH=<old checkout>/src .venv/bin/python tests/data/models/make_reference.py

Writes, next to this script: ``potential_ref.pt`` and ``born_ref.pt`` (float32,
demo architecture: channels 8, radial_hidden 32, hidden 64, cutoff 5 Å, with
randomised non-trivial weights) and ``reference_outputs.npz`` (energy, forces,
stress, raw and ASR-corrected Born charges of a rattled, strained 2x1x2
beta-Li3PO4 cell, and the md-step outputs of
:func:`bornfield.models.combined.evaluate_periodic`). The committed files were
produced by commit 3a4bd6d, before the hand-written edge backward of the speed
work; the test asserts that today's code gives the same numbers to float32
round-off.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import torch

from bornfield.models import create_model, save_model
from bornfield.structures.crystals import build_crystal
from bornfield.models.combined import evaluate_periodic

HERE = Path(__file__).resolve().parent
SPECIES = ["Li", "P", "O"]
HYPER = {"channels": 8, "radial_hidden": 32, "hidden": 64}


def reference_structure():
    atoms = build_crystal("beta").repeat((2, 1, 2))
    strain = np.eye(3) + 0.02 * np.random.default_rng(7).normal(size=(3, 3))
    atoms.set_cell(np.asarray(atoms.cell) @ strain, scale_atoms=True)
    atoms.rattle(0.12, seed=3)
    return atoms


def randomised(kind, seed):
    model = create_model(kind, SPECIES, 5.0, seed=seed, **HYPER)
    generator = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return model.float()


def main():
    atoms = reference_structure()
    args = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
    potential, born = randomised("potential", 0), randomised("born", 1)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    save_model(potential, HERE / "potential_ref.pt", {"note": f"test reference, written by commit {commit}"})
    save_model(born, HERE / "born_ref.pt", {"note": f"test reference, written by commit {commit}"})
    energy, forces, stress = potential.energy_forces_stress(*args)
    step = evaluate_periodic(potential, born, *args, stress=True)
    np.savez(
        HERE / "reference_outputs.npz",
        positions=atoms.positions, numbers=atoms.numbers, cell=np.asarray(atoms.cell),
        energy=energy, forces=forces, stress=stress,
        born_charges=born.born_charges(*args),
        step_energy=step.energy, step_forces=step.forces, step_stress=step.stress, step_born_raw=step.born_raw,
    )


if __name__ == "__main__":
    main()
