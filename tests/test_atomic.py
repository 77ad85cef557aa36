"""Atomic output honours the umask and leaves nothing behind on failure."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from ase.build import bulk

from bornfield import atomic


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_get_the_mode_the_umask_gives(tmp_path, umask_027):
    """0640 under umask 027 (mkstemp would give 0600: the group could not read results)."""
    text = atomic.write_text(tmp_path / "a" / "note.txt", "x")
    data = atomic.write_json(tmp_path / "record.json", {"v": np.arange(3)})
    with atomic.atomic_path(tmp_path / "cells.extxyz") as tmp:
        bulk("Cu").write(tmp, format="extxyz")
    for path in (text, data, tmp_path / "cells.extxyz"):
        assert _mode(path) == 0o640, oct(_mode(path))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "cells.extxyz", "note.txt", "record.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = atomic.write_text(tmp_path / "out.json", "old")
    with pytest.raises(TypeError):
        atomic.write_json(target, {"bad": object()})
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_outputs_of_the_stages_are_group_readable(tmp_path, umask_027):
    """Models, split.json, candidates and structure reports (all mkstemp-written before)."""
    from bornfield.models.io import create_random_model_file
    from bornfield.structures.io import write_extxyz_atomic, write_json_atomic
    from bornfield.structures.report import build_report, plot_report
    from bornfield.structures.crystals import build_crystal

    model = create_random_model_file("potential", ["Li", "P", "O"], 4.0, tmp_path / "potential_0.pt", 0,
                                     channels=2, hidden=4, radial_hidden=4)
    beta = build_crystal("beta")
    beta.info.update(config_type="beta", structure_id="0" * 12, seed=-1, source="test", charge=0)
    cells = write_extxyz_atomic(tmp_path / "candidates.extxyz", [beta])
    report = build_report([beta], "beta", {"rdf_rmax_A": 4.0, "rdf_bin_A": 0.1, "p_o_cutoff_A": 2.0,
                                           "li_o_cutoff_A": 2.6})
    record = write_json_atomic(tmp_path / "report.json", report)
    plot_report(report, tmp_path / "report.png")
    for path in (model, cells, record, tmp_path / "report.png"):
        assert _mode(path) == 0o640, (path.name, oct(_mode(path)))
