"""Label ledger contracts: entries round trip, settings identity, budget, queue, campaign reuse, kill -9.

QE is replaced by stand-in ``pw.x``/``ph.x`` scripts that print real QE 6.7 outputs of the
16-atom beta cell (tests/data/qe/beta_rattled16), so the runner, parsers, QC and ledger code
are the real ones; the pseudopotentials are provisioned for real (ld1.x) because their md5s
are part of the ledger identity.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from ase.geometry import get_distances
from ase.io import read, write

from bornfield.cli import main
from bornfield.dft.inputs import DFTSettings
from bornfield.dft.pseudopotentials import provision_pseudopotentials
from bornfield.dft.qc import QCThresholds
from bornfield.dft.runner import DFTJob
from bornfield.errors import ConfigError, InputFileError
from bornfield.ledger import labeller
from bornfield.ledger.labeller import cost_correction, label, pending_jobs
from bornfield.ledger.queue import deduplicate, finalise, interleave, near_duplicate, read_queue, write_queue, Family
from bornfield.ledger.store import Ledger, LedgerSpec, identity_of
from bornfield.provenance import cpu_model

REAL = Path(__file__).parent / "data" / "qe" / "beta_rattled16"
SETTINGS = DFTSettings.defaults()  # the production settings (schema defaults)
#: the stand-in outputs are from coarse settings (k 1x1x2): raw ASR residual up to 1.35 e
QC = QCThresholds.defaults(max_asr_residual_e=2.0)


@pytest.fixture(scope="module")
def pseudo(tmp_path_factory):
    path = tmp_path_factory.mktemp("pseudo")
    return path, provision_pseudopotentials(path, "pbesol_paw")


@pytest.fixture
def fake_qe(tmp_path, monkeypatch):
    """Stand-in pw.x / ph.x on PATH printing real outputs after ``FAKE_QE_SLEEP`` seconds."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program, out in (("pw.x", "pw.out"), ("ph.x", "ph.out")):
        script = bin_dir / program
        script.write_text(f"#!/bin/sh\nsleep ${{FAKE_QE_SLEEP:-0}}\ncat {REAL / out}\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


def _ledger(root: Path, pseudo) -> Ledger:
    _, records = pseudo
    spec = LedgerSpec(identity_of(SETTINGS, records), SETTINGS, records, QC)
    return Ledger.create(root, spec)


def _structure(shift: float = 0.0, kind: str = "dfpt", family: str = "beta_thermal"):
    atoms = read(REAL / "structure.extxyz")
    atoms.positions[0, 0] += shift
    atoms.info.clear()
    atoms.info.update(config_type="beta", label_kind=kind, family=family, seed=-1)
    return atoms


def _queue(ledger: Ledger, frames) -> None:
    write_queue(ledger.root / "queue.extxyz", finalise(frames, ledger.spec.settings))


def test_identity_ignores_the_dfpt_switch_and_follows_settings_and_pseudopotential_md5(pseudo):
    _, records = pseudo
    base = identity_of(SETTINGS, records)
    assert identity_of(replace(SETTINGS, born_charges=False), records) == base
    assert identity_of(replace(SETTINGS, ecutrho_Ry=360.0), records) != base
    other = dict(records)
    other["P"] = replace(records["P"], md5="0" * 32)
    assert identity_of(SETTINGS, other) != base


def test_provisioned_generated_pseudopotential_is_reproducible(tmp_path):
    """ld1.x stamps the day into the UPF; the provisioned file must not depend on it."""
    first = provision_pseudopotentials(tmp_path / "a", "pbesol_paw")["P"]
    second = provision_pseudopotentials(tmp_path / "b", "pbesol_paw")["P"]
    assert first.md5 == second.md5
    text = (tmp_path / "a" / first.filename).read_text()
    assert "Generation date:  (not recorded)" in text and 'date="not recorded"' in text


def test_entry_round_trip_and_campaign_reuse(tmp_path, pseudo, fake_qe):
    ledger = _ledger(tmp_path / "ledger", pseudo)
    held_out = _structure()
    held_out.info["split"] = "test"
    _queue(ledger, [held_out])
    summary = label(ledger.root, hours=1.0, ranks=1, work_dir=tmp_path / "work")
    assert summary["jobs_finished"] == 1 and pending_jobs(ledger) == []
    (dft_id,) = ledger.dft_ids()
    entry = ledger.root / "entries" / dft_id
    assert sorted(p.name for p in entry.iterdir()) == ["entry.extxyz", "qe.tar.xz", "status.json"]
    assert sum(p.stat().st_size for p in entry.iterdir()) < 30_000
    assert not (tmp_path / "work" / "jobs" / dft_id).exists()  # work directory cleaned
    # the labelled row: DESIGN.md keys, ASR-corrected Z with its raw tensor kept
    (atoms,) = ledger.frames()
    labels = ledger.labels(dft_id)
    z = atoms.arrays["born_charges"].reshape(-1, 3, 3)
    # extxyz keeps 8 decimals; labels.json in the archive keeps full precision
    np.testing.assert_allclose(z, np.asarray(labels["born_charges"]), atol=1e-8)
    np.testing.assert_allclose(z.sum(axis=0), 0.0, atol=1e-6)
    raw = atoms.arrays["born_charges_raw"].reshape(-1, 3, 3)
    assert np.abs(raw.sum(axis=0)).max() > 1e-4  # the raw residual is kept, not zeroed
    np.testing.assert_allclose(atoms.arrays["forces"], labels["forces"], atol=1e-8)
    assert atoms.info["dft_id"] == dft_id and atoms.info["config_type"] == "beta"
    status = ledger.status(dft_id)
    assert status["ranks"] == 1 and status["est_core_s"] > 0
    # an entry packed before the queue keys existed takes them from its queue row
    assert (atoms.info["family"], atoms.info["split"]) == ("beta_thermal", "test")
    bare = read(entry / "entry.extxyz")
    for key in ("family", "split", "label_kind"):
        del bare.info[key]
    write(entry / "entry.extxyz", bare, format="extxyz")
    (restored,) = ledger.frames()
    assert (restored.info["family"], restored.info["split"], restored.info["label_kind"]) == ("beta_thermal", "test", "dfpt")
    # the ledger report
    assert main(["dataset", "report", "--ledger", str(ledger.root), "--report-json", str(tmp_path / "r.json"),
                 "--report-png", str(tmp_path / "r.png")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["entries"] == {"dfpt": {"completed": 1}} and report["n_with_born_charges"] == 1
    assert report["atoms_labelled"] == {"scf": 16, "born_charges": 16}
    assert report["asr_residuals"][0]["max_abs_e"] == pytest.approx(np.abs(raw.sum(axis=0)).max(), abs=1e-6)
    assert report["statistics"]["born_charges"]["P"]["n_atoms"] == 2 and (tmp_path / "r.png").stat().st_size > 10_000

    # the campaign's `dft run` takes the job from the ledger: QE must not run (pw.x fails)
    (fake_qe / "pw.x").write_text("#!/bin/sh\necho QE should not run >&2\nexit 1\n")
    pseudo_dir = tmp_path / "campaign_pseudo"
    assert main(["dft", "provision", "--pseudo-dir", str(pseudo_dir)]) == 0
    structure = tmp_path / "s.extxyz"
    write(structure, read_queue(ledger.root / "queue.extxyz")[0], format="extxyz")
    jobs = tmp_path / "campaign_jobs"
    entries = tmp_path / "campaign_entries"
    # the ledger as the Snakemake rule passes it: the config key dft.ledger in --settings
    settings = json.dumps({"dft": {"qc": {"max_asr_residual_e": QC.max_asr_residual_e}, "ledger": str(ledger.root)}})
    assert main(["dft", "run", "--settings", settings, "--structure", str(structure), "--pseudo-dir", str(pseudo_dir),
                 "--jobs-dir", str(jobs), "--launcher", "", "--entries-dir", str(entries)]) == 0
    reused = json.loads((jobs / dft_id / "labels.json").read_text())
    assert reused["forces"] == labels["forces"] and reused["born_charges"] == labels["born_charges"]
    # --ledger '' overrides the config's ledger: QE runs (the stand-in pw.x refuses)
    assert main(["dft", "run", "--settings", settings, "--structure", str(structure), "--pseudo-dir", str(pseudo_dir),
                 "--jobs-dir", str(tmp_path / "no_ledger_jobs"), "--launcher", "", "--ledger", ""]) != 0
    assert "QE should not run" in (tmp_path / "no_ledger_jobs" / dft_id / "pw.out").read_text()
    # ... and writes the entry format, which another ledger of the same settings accepts
    other = _ledger(tmp_path / "other", pseudo)
    assert main(["ledger", "add", "--ledger", str(other.root), str(entries / dft_id)]) == 0
    assert other.dft_ids() == [dft_id]
    assert not other.add_job(entries / dft_id)  # never twice


def test_entry_made_at_other_settings_is_refused(tmp_path, pseudo, fake_qe):
    ledger = _ledger(tmp_path / "ledger", pseudo)
    _queue(ledger, [_structure()])
    label(ledger.root, hours=1.0, ranks=1, work_dir=tmp_path / "work")
    (dft_id,) = ledger.dft_ids()
    _, records = pseudo
    coarse = replace(SETTINGS, ecutwfc_Ry=30.0, ecutrho_Ry=240.0)
    other = Ledger.create(tmp_path / "coarse", LedgerSpec(identity_of(coarse, records), coarse, records, QC))
    with pytest.raises(ConfigError, match=r"ecutwfc_Ry 70.0 vs 30.0.*refused"):
        other.add_job(ledger.root / "entries" / dft_id)
    assert other.dft_ids() == []
    with pytest.raises(InputFileError, match="settings are fixed once created"):
        _ledger(tmp_path / "ledger", pseudo)
    # a tampered ledger.json (settings edited, identity kept) is not read
    meta = json.loads((ledger.root / "ledger.json").read_text())
    meta["settings"]["tr2_ph"] = 1e-12
    (ledger.root / "ledger.json").write_text(json.dumps(meta))
    with pytest.raises(InputFileError, match="does not match its settings"):
        Ledger(ledger.root)


def test_queue_order_interleaves_families_and_drops_near_duplicates():
    def frames(tag, n):
        out = []
        for k in range(n):
            atoms = _structure(shift=0.1 * (k + 1))
            atoms.info["tag"] = f"{tag}{k}"
            out.append(atoms)
        return out

    fams = [(Family("a", "dfpt", None), frames("a", 3)), (Family("b", "dfpt", None), frames("b", 1)),
            (Family("s", "scf", None), frames("s", 3))]
    order = [a.info["tag"] for a in interleave(fams)]
    assert order == ["a0", "b0", "s0", "a1", "a2", "s1", "s2"]
    base = _structure()
    assert near_duplicate(base, _structure(shift=0.005))
    assert not near_duplicate(base, _structure(shift=0.05))
    wrapped = _structure()
    wrapped.positions[3] += wrapped.cell[0]  # the same structure across the periodic boundary
    assert near_duplicate(base, wrapped)
    kept = deduplicate([base, _structure(shift=0.005), _structure(shift=0.2)], existing=[_structure(shift=0.2)])
    assert len(kept) == 1 and kept[0] is base


def test_budget_starts_only_jobs_that_fit(tmp_path, pseudo, fake_qe):
    ledger = _ledger(tmp_path / "ledger", pseudo)
    dfpt, scf = _structure(0.01), _structure(0.02, kind="scf")
    _queue(ledger, [dfpt, scf])
    queue = read_queue(ledger.root / "queue.extxyz")
    assert [a.info["label_kind"] for a in queue] == ["dfpt", "scf"]
    est = {a.info["label_kind"]: a.info["est_core_s"] for a in queue}
    assert est["dfpt"] > est["scf"] > 0
    # a budget between the SCF and DFPT estimates (1 rank, safety factor): only the SCF job runs
    hours = (labeller.SAFETY * est["scf"] + 0.5 * (est["dfpt"] - est["scf"])) / 3600
    assert labeller.SAFETY * est["scf"] / 3600 < hours < labeller.SAFETY * est["dfpt"] / 3600
    summary = label(ledger.root, hours=hours, ranks=1, work_dir=tmp_path / "work")
    assert [j["kind"] for j in summary["jobs"]] == ["scf"] and summary["pending_not_started"] == 1
    # on 2 ranks the same DFPT estimate halves
    assert labeller.SAFETY * est["dfpt"] / 2 / 3600 < 2 * hours
    # the measured cost corrects later estimates (fake QE takes ~0 s: ratio far below 1)
    assert cost_correction(ledger)["scf"] < 0.1 and cost_correction(ledger)["dfpt"] == 1.0
    # an SCF request is met by a DFPT entry of the same structure
    again = tmp_path / "again"
    other = _ledger(again, pseudo)
    _queue(other, [_structure(0.03), _structure(0.03, kind="scf")])
    label(other.root, hours=1.0, ranks=1, work_dir=tmp_path / "work2", max_jobs=1)
    assert pending_jobs(other) == [] and len(other.dft_ids()) == 1


def test_kill_9_mid_job_loses_only_that_job(tmp_path, pseudo, fake_qe):
    ledger = _ledger(tmp_path / "ledger", pseudo)
    _queue(ledger, [_structure(0.01), _structure(0.02)])
    work = tmp_path / "work"
    env = {**os.environ, "FAKE_QE_SLEEP": "0"}
    # first job quick; then slow jobs: kill -9 while the second job's pw.x runs
    cmd = [sys.executable, "-m", "bornfield.cli", "label", "--hours", "1", "--ranks", "1",
           "--ledger", str(ledger.root), "--work-dir", str(work)]
    subprocess.run([*cmd, "--max-jobs", "1"], env=env, check=True, capture_output=True)
    assert len(ledger.dft_ids()) == 1
    proc = subprocess.Popen(cmd, env={**env, "FAKE_QE_SLEEP": "60"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not list((work / "jobs").glob("*/pw.out")) and time.time() < deadline:
            time.sleep(0.2)
        assert list((work / "jobs").glob("*/pw.out")), "the second job never started"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # the finished entry is intact, nothing half-written entered the ledger
    assert len(ledger.dft_ids()) == 1
    assert [p.name for p in (ledger.root / "entries").iterdir()] == ledger.dft_ids()
    assert len(ledger.frames()) == 1
    # the next run redoes the killed job and completes the queue
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    assert len(ledger.dft_ids()) == 2 and pending_jobs(ledger) == []


def test_label_cli_rejects_a_missing_ledger(tmp_path, capsys):
    assert main(["label", "--hours", "0.1", "--ledger", str(tmp_path / "none")]) == 2
    assert "ledger.json missing" in capsys.readouterr().err


def test_fixed_test_split_holds_out_whole_melt_quench_groups():
    from bornfield.ledger.queue import assign_test_split

    frames = []
    for seed in range(8):  # 8 melt-quench groups of 3 correlated cells
        for k in range(3):
            atoms = _structure(shift=0.01 * (3 * seed + k), family="amorphous")
            atoms.info.update(melt_seed=seed, structure_id=f"a{seed}{k}")
            frames.append(atoms)
    for k in range(20):
        atoms = _structure(shift=0.5 + 0.01 * k, family="thermal")
        atoms.info["structure_id"] = f"t{k}"
        frames.append(atoms)
    small = _structure(family="ideal")
    small.info["structure_id"] = "ideal"
    frames.append(small)
    assign_test_split(frames, seed=1)
    test = [a for a in frames if a.info["split"] == "test"]
    groups = {a.info["melt_seed"] for a in test if "melt_seed" in a.info}
    assert len(groups) == 1 and sum(a.info.get("melt_seed") in groups for a in frames) == 3
    assert sum(a.info["family"] == "thermal" for a in test) == 3  # nearest to 15 % of 20
    assert small.info["split"] == "train"
    before = [a.info["split"] for a in frames]
    assign_test_split(frames, seed=1)
    assert [a.info["split"] for a in frames] == before  # deterministic


def test_family_batches_are_reproducible_distinct_and_go_ahead_of_pending_entries(tmp_path, pseudo, monkeypatch):
    from bornfield.ledger.queue import build_family_batch

    def melt(seed):  # a stand-in builder: 5 melt-quench groups of 2 cells whose positions follow the seed
        rng = np.random.default_rng(seed)
        frames = []
        for group in range(5):
            for _ in range(2):
                atoms = _structure(shift=float(rng.uniform(0.1, 1.0)))
                atoms.info.update(config_type="amorphous", melt_seed=int(rng.integers(1 << 30)))
                frames.append(atoms)
        return frames

    families = [Family("amorphous_x", "scf", melt)]
    first = build_family_batch("amorphous_x", 7, 1, families)
    again = build_family_batch("amorphous_x", 7, 1, families)
    second = build_family_batch("amorphous_x", 7, 2, families)
    assert [a.positions[0, 0] for a in first] == [a.positions[0, 0] for a in again]
    assert not {a.positions[0, 0] for a in first} & {a.positions[0, 0] for a in second}
    assert all(a.info["family"] == "amorphous_x" and a.info["label_kind"] == "scf" for a in first)
    assert {a.info["split"] for a in first} == {"train", "test"}
    with pytest.raises(ConfigError, match="amorphous_y"):
        build_family_batch("amorphous_y", 7, 1, families)
    with pytest.raises(ConfigError, match="batch 0"):
        build_family_batch("amorphous_x", 7, 0, families)

    ledger = _ledger(tmp_path / "ledger", pseudo)
    _queue(ledger, [_structure(0.01), _structure(0.02, kind="scf")])
    monkeypatch.setattr("bornfield.ledger.queue.base_families", lambda: families)
    assert main(["ledger", "extend", "--ledger", str(ledger.root), "--family", "amorphous_x", "--batch", "1",
                 "--seed", "7", "--first"]) == 0
    queue = read_queue(ledger.root / "queue.extxyz")
    assert len(queue) == 12
    assert [a.info.get("family_batch") for a in queue[:10]] == [1] * 10  # ahead of both pending entries
    assert [a.positions[0, 0] for a in queue[:10]] == pytest.approx([a.positions[0, 0] for a in first])


def test_promote_moves_chosen_pending_entries_ahead_and_leaves_labelled_ones(tmp_path, pseudo, fake_qe, capsys):
    from bornfield.ledger.queue import has_rare_oxygen

    ledger = _ledger(tmp_path / "ledger", pseudo)
    frames = [_structure(0.01 * k, kind="scf") for k in range(1, 6)]
    oxide = frames[3]
    o_index = next(i for i, s in enumerate(oxide.get_chemical_symbols()) if s == "O")
    p_positions = oxide.positions[[s == "P" for s in oxide.get_chemical_symbols()]]
    grid = np.stack(np.meshgrid(*[np.linspace(0, 1, 12)] * 3), -1).reshape(-1, 3) @ oxide.cell[:]
    distances = get_distances(grid, p_positions, cell=oxide.cell, pbc=True)[1].min(1)
    oxide.positions[o_index] = grid[int(np.argmax(distances))]  # an O farther than 2 A from every P
    assert has_rare_oxygen(oxide) and not any(has_rare_oxygen(a) for a in frames[:3])
    _queue(ledger, frames)
    label(ledger.root, hours=1.0, ranks=1, work_dir=tmp_path / "work", launcher="", max_jobs=1)  # labels entry 0
    ids = [a.info["structure_id"] for a in read_queue(ledger.root / "queue.extxyz")]
    assert main(["ledger", "promote", "--ledger", str(ledger.root), "--structure-ids", ids[4], ids[2]]) == 0
    assert [a.info["structure_id"] for a in read_queue(ledger.root / "queue.extxyz")] == \
        [ids[0], ids[2], ids[4], ids[1], ids[3]]
    assert main(["ledger", "promote", "--ledger", str(ledger.root), "--rare-oxygen"]) == 0
    assert [a.info["structure_id"] for a in read_queue(ledger.root / "queue.extxyz")] == \
        [ids[0], ids[3], ids[2], ids[4], ids[1]]
    assert main(["ledger", "promote", "--ledger", str(ledger.root), "--structure-ids", ids[0]]) == 2
    assert f"no pending entry with structure_id ['{ids[0]}']" in capsys.readouterr().err


def test_append_to_queue_drops_near_duplicates_and_keeps_order(tmp_path, pseudo):
    ledger = _ledger(tmp_path / "ledger", pseudo)
    _queue(ledger, [_structure(0.01), _structure(0.02, kind="scf")])
    picks = tmp_path / "picks.extxyz"
    new = [_structure(0.3), _structure(0.015), _structure(0.3005)]  # a near-duplicate of the queue, then of a pick
    for atoms in new:
        atoms.info.pop("label_kind")
        atoms.info.pop("family")
    write(picks, new, format="extxyz")
    assert main(["ledger", "append", "--ledger", str(ledger.root), "--structures", str(picks), "--kind", "scf"]) == 0
    queue = read_queue(ledger.root / "queue.extxyz")
    assert [a.info["queue_index"] for a in queue] == [0, 1, 2]
    assert queue[2].info["label_kind"] == "scf" and queue[2].info["family"] == "active_learning"
    assert queue[2].positions[0, 0] == pytest.approx(_structure(0.3).positions[0, 0])


def test_append_first_puts_picks_ahead_of_pending_entries_only(tmp_path, pseudo, fake_qe):
    ledger = _ledger(tmp_path / "ledger", pseudo)
    _queue(ledger, [_structure(0.01), _structure(0.02), _structure(0.03, kind="scf")])
    label(ledger.root, hours=1.0, ranks=1, work_dir=tmp_path / "work", max_jobs=1)  # entry 0 labelled
    labelled = read_queue(ledger.root / "queue.extxyz")[0].info["structure_id"]
    picks = tmp_path / "picks.extxyz"
    new = [_structure(0.3), _structure(0.4)]
    for atoms in new:
        atoms.info.pop("label_kind")
        atoms.info.pop("family")
    write(picks, new, format="extxyz")
    assert main(["ledger", "append", "--ledger", str(ledger.root), "--structures", str(picks), "--kind", "scf",
                 "--first"]) == 0
    queue = read_queue(ledger.root / "queue.extxyz")
    assert [a.info["queue_index"] for a in queue] == [0, 1, 2, 3, 4]
    assert queue[0].info["structure_id"] == labelled  # a labelled entry keeps its position
    assert [a.info["family"] for a in queue[1:3]] == ["active_learning"] * 2
    assert queue[1].positions[0, 0] == pytest.approx(_structure(0.3).positions[0, 0])
    assert [a.info["label_kind"] for a in queue[3:]] == ["dfpt", "scf"]  # the pending ones follow, in their order
    assert [job.atoms.info["family"] for job in pending_jobs(Ledger(ledger.root))][:2] == ["active_learning"] * 2


def test_charged_cells_get_scf_labels_and_revise_leaves_labelled_entries(tmp_path, pseudo, fake_qe):
    ledger = _ledger(tmp_path / "ledger", pseudo)
    neutral, charged = _structure(0.01), _structure(0.02)
    charged.info["charge"] = -1
    assert [a.info["label_kind"] for a in finalise([neutral.copy(), charged.copy()], ledger.spec.settings)] == ["dfpt", "scf"]

    # a queue written before the rule: label the first entry, then revise the rest
    frames = finalise([neutral, _structure(0.03), charged], ledger.spec.settings)
    frames[2].info["label_kind"] = "dfpt"
    write_queue(ledger.root / "queue.extxyz", frames)
    label(ledger.root, hours=1.0, ranks=1, work_dir=tmp_path / "work", max_jobs=1)
    assert len(ledger.dft_ids()) == 1
    assert main(["ledger", "revise", "--ledger", str(ledger.root)]) == 0
    queue = read_queue(ledger.root / "queue.extxyz")
    assert [a.info["label_kind"] for a in queue] == ["dfpt", "dfpt", "scf"]
    assert [a.info["queue_index"] for a in queue] == [0, 1, 2]
    assert [job.kind for job in pending_jobs(Ledger(ledger.root))] == ["dfpt", "scf"]


def test_sigterm_to_the_labeller_alone_stops_its_qe_child(tmp_path, pseudo, fake_qe):
    ledger = _ledger(tmp_path / "ledger", pseudo)
    _queue(ledger, [_structure(0.01)])
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "bornfield.cli", "label", "--hours", "1", "--ranks", "1",
           "--ledger", str(ledger.root), "--work-dir", str(work)]
    proc = subprocess.Popen(cmd, env={**os.environ, "FAKE_QE_SLEEP": "120"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    qe_pattern = str(fake_qe / "pw.x")
    try:
        deadline = time.time() + 60
        while subprocess.run(["pgrep", "-f", qe_pattern], capture_output=True).returncode and time.time() < deadline:
            time.sleep(0.2)
        assert not subprocess.run(["pgrep", "-f", qe_pattern], capture_output=True).returncode, "pw.x never started"
        proc.send_signal(signal.SIGTERM)  # the labeller only, not its process group
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.time() + 30
        while not subprocess.run(["pgrep", "-f", qe_pattern], capture_output=True).returncode and time.time() < deadline:
            time.sleep(0.2)
        assert subprocess.run(["pgrep", "-f", qe_pattern], capture_output=True).returncode, "pw.x outlived the labeller"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert ledger.dft_ids() == []


def test_workers_label_side_by_side_each_job_once(tmp_path, pseudo, fake_qe):
    """--workers 2: two labellers on one ledger claim different jobs; the report merges both."""
    ledger = _ledger(tmp_path / "ledger", pseudo)
    _queue(ledger, [_structure(0.01 * k, kind="scf") for k in range(1, 5)])
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "bornfield.cli", "label", "--hours", "1", "--ranks", "1", "--workers", "2",
           "--ledger", str(ledger.root), "--work-dir", str(tmp_path / "work"), "--launcher", "",
           "--report-json", str(report)]
    subprocess.run(cmd, env={**os.environ, "FAKE_QE_SLEEP": "3"}, check=True, capture_output=True, timeout=300)
    summary = json.loads(report.read_text())
    ids = [job["dft_id"] for job in summary["jobs"]]
    assert summary["workers"] == 2 and summary["jobs_finished"] == 4 and len(set(ids)) == 4
    assert {job["worker"] for job in summary["jobs"]} == {0, 1}  # both took jobs
    assert sorted(ids) == ledger.dft_ids() and pending_jobs(ledger) == [] and summary["pending_not_started"] == 0


def test_sigterm_to_a_multi_worker_labeller_stops_every_worker_and_qe(tmp_path, pseudo, fake_qe):
    ledger = _ledger(tmp_path / "ledger", pseudo)
    _queue(ledger, [_structure(0.01 * k, kind="scf") for k in range(1, 4)])
    cmd = [sys.executable, "-m", "bornfield.cli", "label", "--hours", "1", "--ranks", "1", "--workers", "2",
           "--ledger", str(ledger.root), "--work-dir", str(tmp_path / "work"), "--launcher", ""]
    proc = subprocess.Popen(cmd, env={**os.environ, "FAKE_QE_SLEEP": "120"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    qe_pattern = str(fake_qe / "pw.x")

    def running_qe() -> int:
        found = subprocess.run(["pgrep", "-f", qe_pattern], capture_output=True, text=True).stdout.split()
        return len(found)

    try:
        deadline = time.time() + 90
        while running_qe() < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert running_qe() == 2, "the two workers' pw.x never ran side by side"
        proc.send_signal(signal.SIGTERM)  # the first labeller only, not its process group
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.time() + 30
        while running_qe() and time.time() < deadline:
            time.sleep(0.2)
        assert running_qe() == 0, "a worker's pw.x outlived the labeller"
        assert subprocess.run(["pgrep", "-f", f"{ledger.root}.*--worker-index"], capture_output=True).returncode
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert ledger.dft_ids() == []


def test_a_running_labeller_takes_picks_appended_during_its_run(tmp_path, pseudo, fake_qe, monkeypatch):
    import bornfield.ledger.labeller as labeller

    ledger = _ledger(tmp_path / "ledger", pseudo)
    _queue(ledger, [_structure(0.01, kind="scf"), _structure(0.02, kind="scf")])
    picks = tmp_path / "picks.extxyz"
    pick = _structure(0.3)
    pick.info.pop("label_kind")
    pick.info.pop("family")
    write(picks, [pick], format="extxyz")
    run_one = labeller._run_one
    calls = []

    def run_then_append(*args, **kwargs):
        record = run_one(*args, **kwargs)
        if not calls:  # while the first job finishes, a user appends an active-learning pick
            assert main(["ledger", "append", "--ledger", str(ledger.root), "--structures", str(picks),
                         "--kind", "scf", "--first"]) == 0
        calls.append(record["dft_id"])
        return record

    monkeypatch.setattr(labeller, "_run_one", run_then_append)
    summary = label(ledger.root, hours=1.0, ranks=1, work_dir=tmp_path / "work", max_jobs=2)
    families = {atoms.info["dft_id"]: atoms.info["family"] for atoms in Ledger(ledger.root).frames()}
    assert summary["jobs_finished"] == 2
    assert [families[d] for d in calls] == ["beta_thermal", "active_learning"]


def test_a_pseudopotential_rebuilt_elsewhere_joins_only_after_recomputed_labels_agree(tmp_path, pseudo, fake_qe,
                                                                                        monkeypatch):
    """A generated file with other bytes (ld1.x on another CPU) is refused until admit-pseudo has recomputed
    entries with it within tolerance; then labels made with it join, naming the file they used."""
    from bornfield.ledger.equivalence import admit_pseudopotentials

    pseudo_dir, records = pseudo
    ledger = _ledger(tmp_path / "ledger", pseudo)
    _queue(ledger, [_structure(), _structure(0.05, kind="scf", family="beta_strain")])
    label(ledger.root, hours=1.0, ranks=1, work_dir=tmp_path / "work", max_jobs=1, kinds=("dfpt",))
    (dft_id,) = ledger.dft_ids()
    # the ledger as if made on another machine, where ld1.x wrote P with other bytes
    elsewhere = {**records, "P": replace(records["P"], md5="f" * 32)}
    spec = LedgerSpec(identity_of(SETTINGS, elsewhere), SETTINGS, elsewhere, QC)
    (ledger.root / "ledger.json").write_text(json.dumps(spec.to_dict()))
    with pytest.raises(ConfigError, match=f"md5 {records['P'].md5} .*admit-pseudo"):
        label(ledger.root, hours=1.0, ranks=1, work_dir=tmp_path / "work")
    assert Ledger(ledger.root).identity_of_job(SETTINGS, records) != spec.identity  # the campaign does not reuse it

    # recomputed labels that differ (1 mRy on 16 atoms: 0.85 meV/atom) admit nothing
    (fake_qe / "pw.x").write_text(
        f"#!/bin/sh\nsed 's/-528.50410765 Ry/-528.50510765 Ry/' {REAL / 'pw.out'}\n")
    with pytest.raises(ConfigError, match=r"not admitted.*energy_meV_per_atom"):
        admit_pseudopotentials(ledger.root, [dft_id], tmp_path / "admit_bad", 1, "")
    assert "equivalent_pseudopotentials" not in json.loads((ledger.root / "ledger.json").read_text())
    # an SCF-only recomputation is not enough: Born charges must be compared
    (fake_qe / "pw.x").write_text(f"#!/bin/sh\ncat {REAL / 'pw.out'}\n")
    with pytest.raises(ConfigError, match="at least one DFPT entry"):
        admit_pseudopotentials(ledger.root, [], tmp_path / "admit_none", 1, "")

    # a pw.in this machine would write otherwise (beyond directories) is refused before anything runs
    ran = tmp_path / "pw_ran"
    (fake_qe / "pw.x").write_text(f"#!/bin/sh\ntouch {ran}\ncat {REAL / 'pw.out'}\n")
    write_scf_input = DFTJob.write_scf_input

    def other_cutoff(job, path, attempt, restart):
        result = write_scf_input(job, path, attempt, restart)
        Path(path).write_text(re.sub(r"ecutwfc\s*=\s*\S+", "ecutwfc = 99", Path(path).read_text()))
        return result

    with monkeypatch.context() as patched, pytest.raises(ConfigError, match="differs from the archived one.*nothing was run"):
        patched.setattr(DFTJob, "write_scf_input", other_cutoff)
        admit_pseudopotentials(ledger.root, [dft_id], tmp_path / "admit_other_input", 1, "")
    assert not ran.exists()
    (fake_qe / "pw.x").write_text(f"#!/bin/sh\ncat {REAL / 'pw.out'}\n")

    # agreeing labels admit the file, with the comparison kept as evidence
    assert main(["ledger", "admit-pseudo", "--ledger", str(ledger.root), "--entries", dft_id, "--work-dir",
                 str(tmp_path / "admit"), "--ranks", "1", "--launcher", "", "--report-json", str(tmp_path / "a.json")]) == 0
    admitted = Ledger(ledger.root)
    assert admitted.identity == spec.identity  # the identity of the ledger's own files is unchanged
    evidence = admitted.spec.equivalents["P"][records["P"].md5]
    assert evidence["entries"][dft_id] == {"energy_meV_per_atom": 0.0, "force_meV_per_A": 0.0, "stress_GPa": 0.0,
                                           "born_charge_e": 0.0, "epsilon_inf": 0.0}
    assert json.loads((tmp_path / "a.json").read_text())["admitted"] == {"P": records["P"].md5}
    assert admitted.identity_of_job(SETTINGS, records) == admitted.identity  # the campaign reuses entries again
    with pytest.raises(ConfigError, match="already the ledger's own or admitted"):
        admit_pseudopotentials(ledger.root, [dft_id], tmp_path / "admit_again", 1, "")
    # the labeller runs again; its entry names the admitted file it ran with
    summary = label(ledger.root, hours=1.0, ranks=1, work_dir=tmp_path / "work")
    assert summary["jobs_finished"] == 1
    (new_id,) = set(admitted.dft_ids()) - {dft_id}
    status = admitted.status(new_id)
    assert status["pseudopotentials"]["P"]["md5"] == "f" * 32
    assert status["pseudopotential_files_used"]["P"]["md5"] == records["P"].md5
    assert status["machine"] == cpu_model()  # what the labeller's cost correction is grouped by
    # a file of yet other bytes is still refused
    other = {**records, "P": replace(records["P"], md5="0" * 32)}
    assert admitted.identity_of_job(SETTINGS, other) != admitted.identity


def test_cost_correction_follows_the_machine_a_labeller_runs_on(tmp_path, pseudo):
    """Entries record the CPU they ran on; a kind measured on this machine takes its own median, a
    kind not yet measured here the ledger-wide median scaled by this machine's speed on the others."""
    ledger = _ledger(tmp_path / "ledger", pseudo)

    def entry(dft_id: str, kind: str, ratio: float, machine: str | None) -> None:
        directory = ledger.entries_dir / dft_id
        directory.mkdir(parents=True)
        status = {"state": "completed", "settings": {"born_charges": kind == "dfpt"}, "est_core_s": 100.0, "ranks": 2,
                  "wall_time_s": 50.0 * ratio, **({"machine": machine} if machine else {})}
        (directory / "status.json").write_text(json.dumps(status))
        (directory / "qe.tar.xz").write_bytes(b"")

    for i, ratio in enumerate((0.8, 1.0, 1.2)):
        entry(f"d{i}", "dfpt", ratio, "old cpu" if i else None)
        entry(f"s{i}", "scf", 2.0 * ratio, "old cpu")
    assert cost_correction(ledger) == {"dfpt": 1.0, "scf": 2.0}
    assert cost_correction(ledger, "new cpu") == {"dfpt": 1.0, "scf": 2.0}  # nothing measured here yet
    entry("d_new", "dfpt", 2.5, "new cpu")  # this machine ran one DFPT job 2.5x slower than estimated
    overall = cost_correction(ledger)
    here = cost_correction(ledger, "new cpu")
    assert here["dfpt"] == 2.5
    assert here["scf"] == pytest.approx(overall["scf"] * 2.5 / overall["dfpt"])
    assert cost_correction(ledger, "old cpu") == {"dfpt": 1.1, "scf": 2.0}
