"""benchmarks/models_mace_ledger.py keeps a MACE run across sessions: the committed state holds the
latest checkpoint per run and stage, curves, models and timings, and a fresh work directory resumes
from it; a killed run's half-written newest checkpoint and last curve line never break a resume."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import models_mace_ledger as ml  # noqa: E402


def _write(path: Path, text: str = "x", mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def _mace_work(work: Path) -> None:
    ck = work / "mace" / "checkpoints"
    for epoch in (3, 10, 9):
        _write(ck / f"ledger_mace_small_run-1_epoch-{epoch}.pt", f"stage one {epoch}", mtime=1000 + epoch)
    for epoch in (12, 11):
        _write(ck / f"ledger_mace_small_run-1_epoch-{epoch}_swa.pt", f"stage two {epoch}", mtime=1000 + epoch)
    _write(ck / "ledger_mace_large_run-1_epoch-2.pt", "large 2", mtime=1002)
    _write(work / "mace" / "results" / "ledger_mace_small_run-1_train.txt", '{"mode": "eval", "epoch": 0}\n')
    _write(work / "mace" / "ledger_mace_small_stagetwo.model")
    _write(work / "mace" / "ledger_mace_small_stagetwo_compiled.model")
    _write(work / "mace" / "ledger_mace_small.log", "long log")
    _write(work / "mace" / "logs" / "ledger_mace_small_run-1.log", "MACE's own log")
    _write(work / "mace" / "budget-6" / "ledger_mace_small_stagetwo.model")
    _write(work / "mace" / "budget-6" / "ledger_mace_small_run-1_epoch-5_swa.pt")
    _write(work / "timings.json", json.dumps({"mace_small_epochs": 16}))


def test_state_keeps_the_latest_checkpoint_per_run_and_stage(tmp_path):
    work = tmp_path / "work" / "abc"
    _mace_work(work)
    kept = {str(p) for p in ml.state_files(work)}
    assert kept == {
        "timings.json",
        "mace/checkpoints/ledger_mace_small_run-1_epoch-10.pt",
        "mace/checkpoints/ledger_mace_small_run-1_epoch-12_swa.pt",
        "mace/checkpoints/ledger_mace_large_run-1_epoch-2.pt",
        "mace/results/ledger_mace_small_run-1_train.txt",
        "mace/ledger_mace_small_stagetwo.model",
        "mace/budget-6/ledger_mace_small_stagetwo.model",
    }

    state = tmp_path / "state" / "abc"
    _write(state / "stale.txt")  # a previous state is replaced, not merged
    ml.save_state(work, state)
    assert {str(p.relative_to(state)) for p in state.rglob("*") if p.is_file()} == kept
    assert (state / "mace/checkpoints/ledger_mace_small_run-1_epoch-12_swa.pt").read_text() == "stage two 12"
    assert not list(state.parent.glob(".abc*"))

    fresh = tmp_path / "clone" / "abc"
    _write(fresh / "mace" / "train.extxyz")  # the split files of a run that never trained do not block it
    ml.restore_state(state, fresh)
    assert {str(p) for p in ml.state_files(fresh)} == kept
    # a work directory that already holds a run is never overwritten by the state
    (fresh / "mace" / "checkpoints" / "ledger_mace_small_run-1_epoch-10.pt").write_text("newer work")
    ml.restore_state(state, fresh)
    assert (fresh / "mace" / "checkpoints" / "ledger_mace_small_run-1_epoch-10.pt").read_text() == "newer work"


def test_a_killed_run_drops_its_newest_checkpoint_and_last_curve_line(tmp_path):
    work = tmp_path / "abc"
    _mace_work(work)
    ml.drop_newest_checkpoint(work / "mace" / "checkpoints")
    names = {p.name for p in (work / "mace" / "checkpoints").glob("*.pt")}
    assert "ledger_mace_small_run-1_epoch-12_swa.pt" not in names
    assert "ledger_mace_small_run-1_epoch-11_swa.pt" in names

    rows = [{"mode": "eval", "epoch": e, "loss": 1.0 / (e + 1), "rmse_f": 0.05} for e in range(3)]
    curve = tmp_path / "train.txt"
    curve.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"mode": "ev')
    assert ml.read_curve(curve)["epoch"] == [0, 1, 2]
    curve.write_text('{"mode": "ev\n' + "".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SystemExit, match="line 1 is not JSON"):
        ml.read_curve(curve)
