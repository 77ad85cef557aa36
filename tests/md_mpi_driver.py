"""Run one field-MD condition with the analytic test models (used by tests via subprocess/mpiexec).

    python tests/md_mpi_driver.py OUTDIR BACKEND ENSEMBLE STEPS [--cell fcc|triclinic|beta] [--interrupt-at N]
        [--models analytic|nn-baseline|nn-message|nn-polar|nn-committee|nn-message-committee] [--ghost-cutoff Å] [--baseline-in-torch]

``--models nn-baseline``: small random bornfield models (float64) instead of the analytic ones, an
NN potential with the Pedone baseline (8 Å, longer than the network's 4 Å) and an equivariant Born
model, on a 2x2x2 beta-Li3PO4 cell (``--cell beta``). ``--models nn-message``: the same with the
message-passing potential (network 4 Å, receptive field 8 Å). ``--models nn-message-committee``: the
mean of two such potentials; on several ranks the run fails unless they exchange latents.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mpi4py import MPI  # MPI before lammps

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from ase.build import bulk  # noqa: E402
from md_testmodels import EnvironmentBorn, MorsePotential, fcc_cell  # noqa: E402

from bornfield.config import validate_section  # noqa: E402
from bornfield.md.conditions import expand_conditions  # noqa: E402
from bornfield.md.runner import run_condition  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("outdir")
    parser.add_argument("backend")
    parser.add_argument("ensemble")
    parser.add_argument("steps", type=int)
    parser.add_argument("--cell", default="fcc")
    parser.add_argument("--interrupt-at", type=int, default=0)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--born-refresh", type=int, default=1)
    parser.add_argument("--models", default="analytic")
    parser.add_argument("--ghost-cutoff", type=float, default=None, help="md.lammps.ghost_cutoff_A (Å)")
    parser.add_argument("--baseline-in-torch", action="store_true", help="md.lammps.baseline_in_lammps false")
    parser.add_argument("--no-born-output", action="store_true", help="md.output.born_charges false")
    parser.add_argument("--uncertainty-interval", type=int, default=100,
                        help="md.safety.uncertainty_check_interval (the limit is then lifted to 100 eV/Å)")
    args = parser.parse_args()
    settings = validate_section({
        "backend": args.backend, "ensemble": args.ensemble,
        "equilibration_steps": 0, "production_steps": args.steps,
        "lammps": {"skin_A": 0.5, "ghost_cutoff_A": args.ghost_cutoff,
                   "baseline_in_lammps": not args.baseline_in_torch}, "born_refresh_interval": args.born_refresh,
        "output": {"trajectory_stride": 50, "thermo_stride": 10, "checkpoint_interval": 100,
                   "velocities": True, "born_charges": not args.no_born_output},
        "safety": {"uncertainty_check_interval": args.uncertainty_interval,
                   **({"max_force_uncertainty_eV_per_A": 100.0} if args.uncertainty_interval != 100 else {})},
        "sweep": {"phases": ["fcc"], "temperatures_K": [300.0], "field_strengths_V_per_A": [0.1],
                  "field_directions": [[1.0, 2.0, 3.0]], "replicas": args.replicas},
    }, "md")
    if args.cell == "beta":
        from bornfield.structures.crystals import build_crystal

        atoms = build_crystal("beta").repeat((2, 2, 2))
        atoms.rattle(0.03, seed=1)
    elif args.cell == "triclinic":
        atoms = bulk("Cu", "fcc", a=3.6).repeat(5)  # 60° rhombohedral cell, not lower-triangular
        atoms.set_atomic_numbers(np.where(np.arange(len(atoms)) % 2 == 0, 3, 8))
        atoms.rattle(0.03, seed=1)
    else:
        atoms = fcc_cell(4)
    if args.interrupt_at:
        from bornfield.md import lammps_backend

        original = lammps_backend.LammpsBackend.advance

        def interrupted(self, n_steps):
            if self.step >= args.interrupt_at:
                raise SystemExit(3)
            return original(self, n_steps)

        lammps_backend.LammpsBackend.advance = interrupted
    condition = expand_conditions(settings)[0]
    owned_steps: list = []
    per_member_steps: list = []
    if args.models in ("nn-baseline", "nn-message", "nn-polar"):
        potential, born = nn_models_with_baseline(message=args.models == "nn-message", polar=args.models == "nn-polar")
    elif args.models == "nn-committee":  # the mean of a density and a message potential drives the MD
        from bornfield.models import PotentialCommittee

        density, born = nn_models_with_baseline()
        potential = PotentialCommittee([density, nn_models_with_baseline(message=True)[0]])
    elif args.models == "nn-message-committee":  # the mean of two message potentials (one latent exchange)
        from bornfield.models import PotentialCommittee

        first, born = nn_models_with_baseline(message=True)
        potential = PotentialCommittee([first, nn_models_with_baseline(message=True, seed=4)[0]])
        owned_steps = count_calls(potential, "owned_step")
        from bornfield.md.lammps_backend import LammpsBackend

        original_step = LammpsBackend._message_step

        def counted_step(self, *step_args, **options):  # the uncertainty checks' per-member exchange
            per_member_steps.extend([1] if options.get("per_member") else [])
            return original_step(self, *step_args, **options)

        LammpsBackend._message_step = counted_step
    else:
        potential, born = MorsePotential(cutoff=3.4), EnvironmentBorn(cutoff=3.0)
    run_condition(settings, condition, Path(args.outdir), potential, born, [atoms], progress=False)
    if args.models == "nn-message-committee" and MPI.COMM_WORLD.Get_size() > 1:
        if not owned_steps:
            raise SystemExit("the committee of message potentials did not exchange latents between ranks")
        if args.uncertainty_interval < args.steps and not per_member_steps:
            raise SystemExit("the uncertainty checks did not take the members' forces from the latent exchange")


def count_calls(obj, name: str) -> list:
    """Wrap the method ``name`` of ``obj``; the returned list grows by one per call."""
    calls, original = [], getattr(obj, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    setattr(obj, name, counted)
    return calls


def nn_models_with_baseline(message: bool = False, polar: bool = False, seed: int = 1):
    """Random (seeded, identical on every rank) float64 potential with the Pedone baseline + Born model;
    ``message``: the message-passing potential; ``polar``: the polar Born model (3.5 Å); ``seed``: the
    potential's."""
    import torch

    from bornfield.models import create_model
    from bornfield.models.baseline import pedone_baseline

    small = {"channels": 4, "hidden": 16, "radial_hidden": 16}
    architecture = {"architecture": "message", "interactions": 2} if message else {}
    potential = create_model("potential", ["Li", "P", "O"], 4.0, seed=seed, baseline=pedone_baseline(8.0, 0.22),
                             **small, **architecture)
    born_architecture = {"architecture": "polar", "edge_layers": 1} if polar else {}
    born = create_model("born", ["Li", "P", "O"], 3.5 if polar else 4.0, seed=2,
                        mean_charges={"Li": 1.0, "P": 3.2, "O": -1.55}, **small, **born_architecture)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for model in (potential, born):
            for parameter in model.parameters():
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    potential.set_energy_scale(0.05)
    return potential.double().eval(), born.double().eval()


if __name__ == "__main__":
    main()
