"""A job re-runs exactly when a setting it reads changes (issue 19, item 2).

A finished results tree of the CI config is made without running anything:
a stand-in DFT plan (the checkpoint) and empty files for every output, then
``snakemake --touch --forceall`` records each job's parameters and orders the
modification times. A dry run after one config change must then list exactly
the jobs that read the changed key, plus what depends on their outputs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
DFT_IDS = ["0000000000000001", "0000000000000002"]
pytestmark = pytest.mark.slow  # about a minute of Snakemake runs


def _snakemake(workdir: Path, config: Path, *args: str) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    result = subprocess.run([str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
                             "--configfile", str(config), *args],
                            capture_output=True, text=True, timeout=900, env=env, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def _config(workdir: Path, name: str, change=None) -> Path:
    config = yaml.safe_load((REPO / ".test" / "config.yaml").read_text())
    config["results_dir"] = "results"
    if change:
        change(config)
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _jobs(dry_run: str) -> set[str]:
    """'rule: first output' of every job a dry run would run (rule all excluded)."""
    jobs, rule = set(), None
    for line in dry_run.splitlines():
        match = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):", line)
        if match:
            rule = match.group(1)
        elif rule and line.strip().startswith("output:"):
            jobs.add(f"{rule}: {line.split('output:')[1].split(',')[0].strip()}")
            rule = None
    return jobs


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A results tree in which every job of the CI config is done (as far as Snakemake can tell)."""
    workdir = tmp_path_factory.mktemp("finished")
    base = _config(workdir, "base")
    plan = {"generation": 0, "jobs": [{"dft_id": i, "index": k, "n_atoms": 16, "config_type": "beta",
                                       "structure_id": None} for k, i in enumerate(DFT_IDS)]}
    files = ["results/dft/gen0/plan.json", "results/dft/pseudo/manifest.json"]
    files += [f"results/dft/inputs/{i}.extxyz" for i in DFT_IDS] + [f"results/dft/jobs/{i}/labels.json" for i in DFT_IDS]
    summary = _snakemake(workdir, base, "--summary")
    files += [line.split("\t")[0] for line in summary.splitlines()
              if line.count("\t") >= 4 and line.split("\t")[4] == "missing"]
    for name in files:
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    (workdir / files[0]).write_text(json.dumps(plan))
    _snakemake(workdir, base, "--touch", "--forceall", "--cores", "1")
    assert "Nothing to be done" in _snakemake(workdir, base, "-n")
    return workdir


def _changed(workdir: Path, name: str, change) -> set[str]:
    return _jobs(_snakemake(workdir, _config(workdir, name, change), "-n"))


def test_a_new_sweep_value_runs_only_its_condition_and_the_aggregates(finished):
    def new_field(config):
        config["md"]["sweep"]["field_strengths_V_per_A"] = [0.0, 0.2]

    r = "results"
    assert _changed(finished, "sweep", new_field) == {
        f"md_condition: {r}/md/beta_T300K_E0.2_x/summary.json",
        f"analyze_condition: {r}/analysis/beta_T300K_E0.2_x.json",
        f"analyze_sweep: {r}/analysis/sweep_transport.csv",
        f"figures: {r}/figures/condition_beta_T300K_E0_none.png",
        f"provenance: {r}/provenance.json",
    }  # the zero-field condition and its analysis stay


def test_a_born_model_key_reruns_the_born_models_and_what_uses_them(finished):
    def born_rate(config):
        config["train"]["born"]["learning_rate"] = 0.003

    r = "results"
    assert _changed(finished, "born", born_rate) == {
        f"train_born: {r}/models/gen0/born_0.pt", f"train_born: {r}/models/gen0/born_1.pt",
        f"train_evaluate: {r}/models/gen0/evaluation.json",
        f"md_condition: {r}/md/beta_T300K_E0_none/summary.json",
        f"md_condition: {r}/md/beta_T300K_E0.1_x/summary.json",
        f"analyze_condition: {r}/analysis/beta_T300K_E0_none.json",
        f"analyze_condition: {r}/analysis/beta_T300K_E0.1_x.json",
        f"analyze_sweep: {r}/analysis/sweep_transport.csv",
        f"figures: {r}/figures/condition_beta_T300K_E0_none.png",
        f"provenance: {r}/provenance.json",
    }  # not the potentials, the baseline or the split


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("structures.report.rdf_bin_A", 0.05, {"structures_report"}),
    ("analysis.figures.dpi", 120, {"figures"}),
    ("dft.run.runtime_min", 45, set()),  # a resource: no job re-runs, DFT least of all
    ("md.resources.mem_mb", 3000, set()),
])
def test_an_unrelated_key_reruns_only_its_readers(finished, key, value, expected):
    def change(config):
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    rules = {job.split(":")[0] for job in _changed(finished, key.replace(".", "_"), change)}
    assert rules == expected | {"provenance"}, rules
