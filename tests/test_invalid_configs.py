"""Invalid configs are rejected before any job starts, with a short message naming the key.

Each case starts from the tiny CI config (``.test/config.yaml``), breaks one key
and goes through ``bornfield.config.resolve_config`` - what the Snakefile
(``workflow/rules/common.smk``) and every ``bornfield --config`` run: schema
checks, then the rules across keys. A few cases also go through a real
``snakemake`` run, which must stop while parsing: no job starts, no results
directory appears, and no injected shell command runs (a canary file must not appear).
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bornfield.config import load_config, resolve_config
from bornfield.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / ".test" / "config.yaml"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def _tiny() -> dict:
    with TINY.open() as handle:
        return yaml.safe_load(handle)


def _mutate(config: dict, dotted: str, value) -> dict:
    """A deep copy of ``config`` with ``dotted`` (a.b.c) set to ``value`` (created if absent)."""
    config = copy.deepcopy(config)
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return config


# (id, dotted key to set, bad value, key the message must name, text the message must hold)
CASES = [
    # wrong types
    ("seed-string", "seed", "abc", "seed", "expected type integer"),
    ("steps-string", "md.production_steps", "100", "md.production_steps", "expected type integer"),
    ("committee-float", "train.potential.committee", 2.5, "train.potential.committee", "expected type integer"),
    ("phases-not-a-list", "structures.phases", "beta", "structures.phases", "expected type array"),
    # unknown keys at several nesting levels (typos)
    ("unknown-top-level", "sed", 1, "sed", "did you mean 'seed'?"),
    ("unknown-section-key", "md.timestep", 0.5, "md.timestep", "did you mean 'timestep_fs'?"),
    ("unknown-nested-key", "md.output.checkpoint_every", 10, "md.output.checkpoint_every", "'checkpoint_interval'"),
    ("unknown-deep-key", "structures.amorphous.lammps.rank", 2, "structures.amorphous.lammps.rank", "'ranks'"),
    ("unknown-model-key", "train.born.learning_rte", 0.1, "train.born.learning_rte", "did you mean 'learning_rate'?"),
    # unknown names
    ("unknown-phase", "structures.phases", ["beta", "delta"], "structures.phases.1", "allowed values"),
    ("md-phase-not-built", "md.sweep.phases", ["gamma"], "md.sweep.phases.0", "structures.phases builds"),
    ("unknown-ensemble", "md.ensemble", "npt", "md.ensemble", "allowed values: ['nve', 'bussi'"),
    ("unknown-backend", "md.backend", "gromacs", "md.backend", "allowed values: ['ase', 'lammps']"),
    ("unknown-pseudo-set", "dft.pseudopotentials.set", "sg15_oncv", "dft.pseudopotentials.set", "allowed values: ['pbesol_paw'"),
    ("unknown-reference-axis", "analysis.reference_axis", "w", "analysis.reference_axis", "one of ['x', 'y', 'z']"),
    # impossible sizes
    ("supercell-too-small", "structures.dft_cells.crystal_target_atoms", 4, "structures.dft_cells.crystal_target_atoms", "allowed: >= 16"),
    ("supercell-too-large", "structures.dft_cells.defect_target_atoms", 10**6, "structures.dft_cells.defect_target_atoms", "allowed: <= 2000"),
    # negative or zero rates, temperatures, timesteps
    ("negative-quench-rate", "structures.amorphous.quench_rate_K_per_ps", -100, "structures.amorphous.quench_rate_K_per_ps", "allowed: > 0"),
    ("negative-temperature", "md.sweep.temperatures_K", [300.0, -300.0], "md.sweep.temperatures_K.1", "allowed: > 0"),
    ("negative-timestep", "md.timestep_fs", -0.5, "md.timestep_fs", "-0.5"),
    ("zero-timestep", "md.timestep_fs", 0, "md.timestep_fs", "value 0"),
    ("negative-field", "md.sweep.field_strengths_V_per_A", [-0.1], "md.sweep.field_strengths_V_per_A.0", "allowed: >= 0"),
    ("negative-seed", "seed", -3, "seed", "allowed: >= 0"),
    # bad field directions
    ("direction-unknown-axis", "md.sweep.field_directions", ["w"], "md.sweep.field_directions.0", "one of ['x', 'y', 'z', '-x'"),
    ("direction-two-components", "md.sweep.field_directions", [[1.0, 0.0]], "md.sweep.field_directions.0", "[1.0, 0.0]"),
    # empty sweeps, zero replicas
    ("empty-temperatures", "md.sweep.temperatures_K", [], "md.sweep.temperatures_K", "should be non-empty"),
    ("empty-directions", "md.sweep.field_directions", [], "md.sweep.field_directions", "should be non-empty"),
    ("zero-replicas", "md.sweep.replicas", 0, "md.sweep.replicas", "allowed: >= 1"),
    # fractions out of range
    ("test-fraction-above-one", "train.split.test_fraction", 1.5, "train.split.test_fraction", "allowed: <= 0.5"),
    ("excess-fraction-negative", "structures.md_supercell.max_excess_fraction", -0.1, "structures.md_supercell.max_excess_fraction", "allowed: >= 0"),
    # values that reach shell commands: only plain words, no shell syntax
    ("inject-dft-launcher", "dft.run.launcher", "/usr/bin/mpirun; rm -rf ~", "dft.run.launcher", "reaches a shell command"),
    ("inject-pw-command", "dft.run.pw_command", "$(touch /tmp/pwned)", "dft.run.pw_command", "One word"),
    ("inject-ph-command", "dft.run.ph_command", "ph.x && curl evil", "dft.run.ph_command", "One word"),
    ("inject-ld1-command", "dft.pseudopotentials.ld1_command", "ld1.x|sh", "dft.pseudopotentials.ld1_command", "One word"),
    ("inject-md-mpi", "md.resources.mpi", "srun `id`", "md.resources.mpi", "reaches a shell command"),
    ("inject-lammps-launcher", "structures.amorphous.lammps.launcher", "mpiexec > /etc/x", "structures.amorphous.lammps.launcher", "reaches a shell command"),
    ("launcher-option-first", "dft.run.launcher", "--oversubscribe", "dft.run.launcher", "not starting with '-'"),
    ("inject-results-dir", "results_dir", "results;touch x", "results_dir", "does not match"),
    # paths relative to results_dir must stay inside it
    ("pseudo-dir-escapes", "dft.pseudopotentials.directory", "../../pseudo", "dft.pseudopotentials.directory", "stay inside results_dir"),
    ("pseudo-dir-escapes-inside", "dft.pseudopotentials.directory", "dft/../../x", "dft.pseudopotentials.directory", "stay inside results_dir"),
    # k-point pools that do not split the ranks
    ("pools-not-dividing-ranks", "dft.run.pools", 3, "dft.run.pools", "must divide dft.run.ranks"),
    # a precision the models do not support
    ("unknown-dtype", "train.dtype", "float16", "train.dtype", "allowed values: ['float32', 'float64']"),
    # accepted silently before (issue 19): rules across keys, absurd values
    ("ecutrho-below-4-ecutwfc", "dft.qe.ecutrho_Ry", 90, "dft.qe.ecutrho_Ry", "at least 4 x dft.qe.ecutwfc_Ry = 100 Ry"),
    ("ecutrho-below-ecutwfc", "dft.qe.ecutwfc_Ry", 250, "dft.qe.ecutrho_Ry", "at least 4 x dft.qe.ecutwfc_Ry = 1000 Ry"),
    ("model-generation-not-trained", "md.model_generation", 1, "md.model_generation", "allowed: null (= 0) or 0..0"),
    ("md-committee-larger-than-trained", "md.committee_size", 3, "md.committee_size", "allowed: 1..2"),
    ("fit-window-reversed", "analysis.fit_window_fraction", [0.5, 0.1], "analysis.fit_window_fraction", "start < end"),
    ("fit-window-fs-reversed", "analysis.fit_window_fs", [500.0, 100.0], "analysis.fit_window_fs", "start < end"),
    ("trajectory-stride-beyond-run", "md.output.trajectory_stride", 100, "md.output.trajectory_stride", "allowed: 1..40"),
    ("mobile-species-not-in-system", "analysis.mobile_species", "Na", "analysis.mobile_species", "allowed: ['Li', 'P', 'O']"),
    ("analysis-species-not-in-system", "analysis.species", ["Li", "Na"], "analysis.species", "['Na'] not in the system"),
    ("empty-md-sweep", "md.sweep.phases", [], "md.sweep.phases", "would run no MD at all"),
    ("field-500-V-per-A", "md.sweep.field_strengths_V_per_A", [0.0, 500.0], "md.sweep.field_strengths_V_per_A.1", "allowed: <= 1.0"),
    ("extra-field-too-strong", "md.extra_conditions", [{"phase": "beta", "temperature_K": 300, "field_strength_V_per_A": 5}],
     "md.extra_conditions.0.field_strength_V_per_A", "allowed: <= 1.0"),
    ("exploration-field-too-strong", "train.active_learning.exploration.fields_V_per_A", [2.0],
     "train.active_learning.exploration.fields_V_per_A.0", "allowed: <= 1.0"),
    ("sample-interval-beyond-steps", "train.active_learning.exploration.sample_interval", 50,
     "train.active_learning.exploration.sample_interval", "allowed: 1..10"),
    ("split-leaves-no-training-data", "train.split.val_fraction", 0.5, "train.split.test_fraction", "must be < 1"),
    # YAML's .nan passes every range check (any comparison with it is false)
    ("ecutrho-nan", "dft.qe.ecutrho_Ry", float("nan"), "dft.qe.ecutrho_Ry", "NaN is not a number"),
    ("timestep-nan", "md.timestep_fs", float("nan"), "md.timestep_fs", "NaN is not a number"),
    ("temperature-nan", "md.sweep.temperatures_K", [300.0, float("nan")], "md.sweep.temperatures_K.1", "NaN is not a number"),
    # model sets and the ledger as the data source
    ("md-models-not-a-model-set", "md.models", "config", "md.models", "not a model set"),
    ("dataset-source-unknown", "dataset.source", "cloud", "dataset.source", "allowed values: ['campaign', 'ledger']"),
    # the potential's physical baseline
    ("unknown-potential-baseline", "train.potential.baseline", "buckingham", "train.potential.baseline",
     "allowed values: ['none', 'pedone', 'pedone_fitted']"),
    ("baseline-cutoff-too-short", "train.potential.baseline_cutoff_A", 0.5, "train.potential.baseline_cutoff_A",
     "allowed: > 1.0"),
    ("baseline-dsf-alpha-zero", "train.potential.baseline_dsf_alpha_per_A", 0, "train.potential.baseline_dsf_alpha_per_A",
     "allowed: > 0"),
    # pre-training on other labels
    ("pretrain-dataset-missing", "train.potential.pretrain.dataset", "data/no_such_set.extxyz",
     "train.potential.pretrain.dataset", "no such file"),
    ("pretrain-epochs-zero", "train.potential.pretrain.max_epochs", 0, "train.potential.pretrain.max_epochs",
     "allowed: >= 1"),
]


def test_there_are_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20
    assert len({case[0] for case in CASES}) == len(CASES)


def test_the_tiny_config_itself_is_valid() -> None:
    """Guard: every case below fails because of its one broken key, not the base config."""
    resolve_config(_tiny(), source=str(TINY))


@pytest.mark.parametrize(("dotted", "value", "key", "hint"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_invalid_config_is_rejected_naming_the_key(dotted, value, key, hint) -> None:
    config = _mutate(_tiny(), dotted, value)
    with pytest.raises(ConfigError) as raised:
        resolve_config(config, source="bad.yaml")
    message = str(raised.value)
    assert f"config key '{key}'" in message, message
    assert message.startswith("bad.yaml: "), message
    assert hint in message, message
    assert len(message) < 600, f"{len(message)} characters: {message}"


@pytest.mark.parametrize(
    "value",
    ["dft/pseudo", "/srv/shared/pseudo", "pseudo..v2/files", "./pseudo"],
)
def test_acceptable_pseudo_directories_pass(value) -> None:
    resolve_config(_mutate(_tiny(), "dft.pseudopotentials.directory", value))


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("dft.run.launcher", "srun --mpi=pmix --cpu-bind=cores"),
        ("dft.run.launcher", "/usr/bin/mpirun --bind-to none"),
        ("md.resources.mpi", "srun --mpi=pmi2"),
        ("dft.run.pw_command", "/opt/qe-7.3/bin/pw.x"),
    ],
)
def test_real_launchers_with_flags_pass(dotted, value) -> None:
    resolve_config(_mutate(_tiny(), dotted, value))


# --------------------------------------------------------- through snakemake


def _snakemake(config_file: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    return subprocess.run(
        [str(SNAKEMAKE), "--cores", "1", "--configfile", str(config_file), *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


@pytest.mark.parametrize(
    ("dotted", "template", "key"),
    [
        ("dft.run.launcher", "/usr/bin/mpirun; touch {canary}", "dft.run.launcher"),
        ("md.resources.mpi", "$(touch {canary})", "md.resources.mpi"),
        ("structures.amorphous.lammps.launcher", ".venv/bin/mpiexec `touch {canary}`", "structures.amorphous.lammps.launcher"),
        ("dft.pseudopotentials.directory", "pseudo && touch {canary}", "dft.pseudopotentials.directory"),
        ("md.sweep.phases", ["gamma"], "md.sweep.phases.0"),
        ("dft.qe.ecutrho_Ry", 90, "dft.qe.ecutrho_Ry"),
        ("md.model_generation", 3, "md.model_generation"),
        ("md.sweep.field_strengths_V_per_A", [500.0], "md.sweep.field_strengths_V_per_A.0"),
        ("analysis.mobile_species", "Na", "analysis.mobile_species"),
    ],
    ids=["dft-launcher", "md-mpi", "lammps-launcher", "pseudo-dir", "md-phase-not-built", "ecutrho",
         "model-generation", "field-500", "mobile-species"],
)
def test_snakemake_stops_before_any_job(tmp_path, dotted, template, key) -> None:
    """A real (not dry) run: the config is rejected while parsing; nothing runs, nothing is written."""
    canary = tmp_path / "pwned"
    value = template.format(canary=canary) if isinstance(template, str) else template
    results = tmp_path / "results"
    config = _mutate(_tiny(), dotted, value)
    config["results_dir"] = str(results)
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml.safe_dump(config))
    result = _snakemake(config_file)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert key in output, output[-3000:]
    # no job was scheduled or started, no output tree, and the injected command never ran
    assert not re.search(r"^\s*(local)?(rule|checkpoint) \w+:", output, re.MULTILINE), output[-3000:]
    assert "Job stats" not in output
    assert not results.exists()
    assert not canary.exists()


def test_snakemake_rejects_a_zero_field_vector_while_parsing(tmp_path) -> None:
    """A 3-vector of zero length passes the schema; the MD rules' condition expansion stops it."""
    results = tmp_path / "results"
    config = _mutate(_tiny(), "md.sweep.field_directions", [[0.0, 0.0, 0.0]])
    config["results_dir"] = str(results)
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml.safe_dump(config))
    result = _snakemake(config_file, "-n")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "md.sweep" in output and "zero length" in output, output[-3000:]
    assert not results.exists()


def test_a_key_given_twice_is_rejected_by_the_cli_and_snakemake(tmp_path) -> None:
    """YAML keeps the last of two equal keys silently; a config must not."""
    results = tmp_path / "results"
    text = TINY.read_text().replace("results_dir: results/test", f"results_dir: {results}")
    text = text.replace("  production_steps: 40\n", "  production_steps: 40\n  production_steps: 400\n")
    config_file = tmp_path / "twice.yaml"
    config_file.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(config_file)
    message = str(raised.value)
    assert "'md.production_steps' is given twice" in message and "twice.yaml:" in message, message
    result = _snakemake(config_file, "-n")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "'md.production_steps' is given twice" in output, output[-3000:]
    assert not results.exists()


def test_a_typo_gives_a_short_message_without_the_config(tmp_path) -> None:
    """No dump of the whole config (6 kB before) for one misspelt top-level key."""
    config_file = tmp_path / "typo.yaml"
    config_file.write_text(yaml.safe_dump(_mutate(_tiny(), "resutls_dir", "x")))
    result = _snakemake(config_file, "-n")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "unknown config key 'resutls_dir' (did you mean 'results_dir'?)" in output, output[-3000:]
    assert "'structures': {" not in output and len(output) < 4000, output


def test_md_committee_is_checked_against_the_model_set(tmp_path) -> None:
    (tmp_path / "manifest.json").write_text('{"members": {"potential": [{"file": "potential_0.pt"}]}}')
    config = _mutate(_mutate(_tiny(), "md.models", str(tmp_path)), "md.committee_size", 2)
    with pytest.raises(ConfigError, match=r"md.committee_size.*holds 1 potentials; allowed: 1..1"):
        resolve_config(config, source="bad.yaml")
    resolve_config(_mutate(config, "md.committee_size", 1), source="ok.yaml")


def test_ledger_source_trains_one_generation() -> None:
    config = _mutate(_mutate(_tiny(), "dataset.source", "ledger"), "train.active_learning.generations", 2)
    with pytest.raises(ConfigError, match=r"train.active_learning.generations.*allowed: 1"):
        resolve_config(config, source="bad.yaml")
    resolve_config(_mutate(config, "train.active_learning.generations", 1), source="ok.yaml")


def test_an_explicit_ghost_shell_covers_the_baseline_when_a_replica_spans_ranks() -> None:
    """LAMMPS with 4 ranks for 2 replicas: ghosts must reach the receptive field (+ skin 1 Å), which
    a Pedone baseline of 8 Å makes longer than train.cutoff (4.5 Å in the tiny config)."""
    config = _mutate(_mutate(_tiny(), "md.backend", "lammps"), "md.resources.tasks", 4)
    config = _mutate(_mutate(config, "md.lammps.ghost_cutoff_A", 6.0), "train.potential.baseline", "pedone")
    config = _mutate(config, "train.potential.baseline_cutoff_A", 8.0)
    with pytest.raises(ConfigError) as raised:
        resolve_config(config, source="bad.yaml")
    message = str(raised.value)
    assert "config key 'md.lammps.ghost_cutoff_A' (value 6.0)" in message and "allowed: null or >= 9" in message, message
    assert "train.potential.baseline_cutoff_A = 8 Å" in message, message
    resolve_config(_mutate(config, "md.lammps.ghost_cutoff_A", 9.0), source="ok.yaml")
    resolve_config(_mutate(config, "md.lammps.ghost_cutoff_A", None), source="ok.yaml")  # follows the models
    resolve_config(_mutate(config, "train.potential.baseline", "none"), source="ok.yaml")  # 4.5 + 1 <= 6
    resolve_config(_mutate(config, "md.resources.tasks", 2), source="ok.yaml")  # one rank per replica
