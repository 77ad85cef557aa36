"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture
def kill_md_at_step(monkeypatch):
    """``kill_md_at_step(step)``: ASE-backend MD raises KeyboardInterrupt once a replica reaches ``step``.

    Returns a function that undoes it (the run can then be resumed from its checkpoint).
    """
    from bornfield.md import ase_backend

    original = ase_backend.ASEBackend.advance

    def arm(step: int):
        def killed(self, n_steps):
            if self.step >= step:
                raise KeyboardInterrupt("simulated kill")
            return original(self, n_steps)

        monkeypatch.setattr(ase_backend.ASEBackend, "advance", killed)
        return lambda: monkeypatch.setattr(ase_backend.ASEBackend, "advance", original)

    return arm
