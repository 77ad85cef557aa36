"""benchmarks/models_pareto.py: the Pareto front of (speed, error) points, model files read from git
history, and MACE's held-out errors taken from the records of the same model set only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import models_pareto as mp  # noqa: E402


def test_pareto_front_keeps_the_points_nothing_beats_on_both_axes():
    # (speed, error): (1, 5) is beaten by (2, 4); (3, 6) is the fastest; (0.5, 1) the most accurate
    points = [(1.0, 5.0), (2.0, 4.0), (3.0, 6.0), (0.5, 1.0)]
    assert mp.pareto_front(points) == [3, 1, 2]
    # equal points do not beat each other; a point equal in speed and worse in error is beaten
    assert mp.pareto_front([(1.0, 1.0), (1.0, 1.0), (1.0, 2.0)]) == [0, 1]


def test_resolve_file_reads_a_committed_file_from_history(tmp_path):
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    path = mp.resolve_file(f"git:{head.stdout.strip()}:pyproject.toml", tmp_path)
    committed = subprocess.run(["git", "-C", str(ROOT), "show", "HEAD:pyproject.toml"], capture_output=True, check=True).stdout
    assert path.read_bytes() == committed
    with pytest.raises(SystemExit, match="git:HEAD:no/such/file.pt"):
        mp.resolve_file("git:HEAD:no/such/file.pt", tmp_path)
    with pytest.raises(SystemExit, match="missing.pt: not found"):
        mp.resolve_file(str(tmp_path / "missing.pt"), tmp_path)


def _mace_record(metric: str, value: float, models: str, **extra) -> dict:
    return {"metric": metric, "value": value, "system": mp.MACE_SYSTEM, "models": models, "config_type": "all",
            "split": "test", "epochs": 800, "converged": True, **extra}


def test_mace_errors_come_from_the_same_model_set(tmp_path):
    results = tmp_path / "models_mace_ledger.json"
    results.write_text(json.dumps([
        _mace_record("force_rmse_meV_per_A", 70.0, "models/other"),
        _mace_record("force_rmse_meV_per_A", 77.8, "models/li3po4"),
        _mace_record("energy_rmse_meV_per_atom", 2.7, "models/li3po4"),
        _mace_record("force_mae_meV_per_A", 30.0, "models/li3po4"),
        {**_mace_record("force_rmse_meV_per_A", 99.0, "models/li3po4"), "config_type": "melt"},
    ]))
    errors, facts = mp.mace_errors(results, "models/li3po4")
    assert errors == {"force_rmse_meV_per_A": 77.8, "energy_rmse_meV_per_atom": 2.7}
    assert facts == {"epochs": 800, "converged": True}
    with pytest.raises(SystemExit, match="no mace-0.3.16-small test force record for model set models/none"):
        mp.mace_errors(results, "models/none")


def test_staleness_is_zero_at_every_step_and_read_per_model_and_interval(tmp_path):
    results = tmp_path / "md_born_refresh_trained.json"
    rows = [{"metric": "bec_staleness_rmse_e", "system": "models/a/born_0.pt", "born_refresh_interval": n,
             "value": 0.002 * n} for n in (1, 2, 5)]
    rows.append({"metric": "bec_staleness_rmse_e", "system": "models/b/born_0.pt", "born_refresh_interval": 2,
                 "value": 0.5})
    results.write_text(json.dumps(rows))
    assert mp.staleness(tmp_path / "absent.json", "models/a/born_0.pt", 1) == 0.0
    assert mp.staleness(results, "models/a/born_0.pt", 2) == pytest.approx(0.004)
    assert mp.staleness(results, "models/b/born_0.pt", 2) == pytest.approx(0.5)
    with pytest.raises(SystemExit, match="interval 10, found 0"):
        mp.staleness(results, "models/a/born_0.pt", 10)
    with pytest.raises(SystemExit, match="absent.json: missing"):
        mp.staleness(tmp_path / "absent.json", "models/a/born_0.pt", 2)


def test_born_staleness_of_charges_held_n_steps():
    import md_born_refresh as mbr

    rng = np.random.default_rng(3)
    constant = np.repeat(rng.normal(size=(1, 4, 3, 3)), 6, axis=0)
    assert mbr.staleness_rmse(constant, 3) == (0.0, 0.0)
    # Z(t) = t A: held for 2 steps, the odd steps lag by one step (error A), the even ones are fresh
    a = rng.normal(size=(4, 3, 3))
    z = np.arange(6)[:, None, None, None] * a[None]
    all_rmse, row_x = mbr.staleness_rmse(z, 2)
    assert all_rmse == pytest.approx(np.sqrt(0.5 * np.mean(a**2)))
    assert row_x == pytest.approx(np.sqrt(0.5 * np.mean(a[:, 0, :] ** 2)))
    assert mbr.staleness_rmse(z, 1) == (0.0, 0.0)
