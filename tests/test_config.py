"""Config loading: one meaning of a config (schema defaults) for Snakemake and the CLI."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bornfield.config import (
    COMMAND_KEYS,
    SCHEMA_DIR,
    Settings,
    command_settings,
    default_settings,
    load_config,
    resolve_config,
    schema_default,
    settings_from_args,
    validate_section,
)
from bornfield.errors import ConfigError

CONFIGS = ["config/config.yaml", "config/chain.yaml", "config/reference.yaml", "config/stability.yaml", "config/paper.yaml",
           "config/models_polar.yaml", ".test/config.yaml"]


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_validate(repo_root, name):
    config = load_config(repo_root / name)
    assert config["results_dir"]
    assert isinstance(config["seed"], int)


def test_every_schema_key_is_documented():
    """Every property in every schema carries a description (the schema is the key reference)."""
    missing = []

    def walk(node, where):
        if isinstance(node, dict):
            for key, sub in node.get("properties", {}).items():
                if isinstance(sub, dict) and "description" not in sub and "$ref" not in sub:
                    missing.append(f"{where}:{key}")
                walk(sub, f"{where}:{key}")
            for key in ("items", "additionalProperties"):
                if isinstance(node.get(key), dict):
                    walk(node[key], f"{where}:{key}")
            for key in ("$defs", "definitions"):
                for name, sub in node.get(key, {}).items():
                    walk(sub, f"{where}:{name}")

    for path in SCHEMA_DIR.glob("*.schema.yaml"):
        walk(yaml.safe_load(path.read_text()), path.name)
    assert not missing, f"schema keys without description: {missing}"


def test_defaults_are_filled_down_to_nested_sections():
    """Defaults of section schemas (reached through $ref) and of their sub-objects are filled."""
    config = validate_section({}, None)
    assert config["results_dir"] == "results"
    for section in ("structures", "dft", "md", "analysis"):
        assert config[section], f"section {section} got no defaults"
    nested = [key for key, value in config["md"].items() if isinstance(value, dict) and value]
    assert nested, "sub-objects of a section get their defaults too"


def test_unknown_top_level_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"results_dir": "results", "seedd": 1}))
    with pytest.raises(ConfigError, match="seedd"):
        load_config(path)


def test_wrong_type_names_key_and_value(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"seed": "twelve"}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "seed" in message and "twelve" in message and "integer" in message


def test_results_dir_cannot_carry_shell_syntax(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"results_dir": "results; rm -rf /"}))
    with pytest.raises(ConfigError, match="results_dir"):
        load_config(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "garbled.yaml"
    bad.write_text("seed: [1, 2\n")
    with pytest.raises(ConfigError, match="garbled.yaml"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


# ------------------------------------------------- one meaning, Snakemake and CLI

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
PARTIAL = {"results_dir": "results/partial", "dft": {"qe": {"ecutwfc_Ry": 40, "ecutrho_Ry": 320}},
           "md": {"sweep": {"phases": ["beta"], "temperatures_K": [500]}}}


def _dry_run(workdir: Path, *configfile: Path) -> str:
    """`snakemake -n -p` of the repository's workflow in ``workdir``; its output."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    args = [str(SNAKEMAKE), "-n", "-p", "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]
    if configfile:
        args += ["--configfile", *map(str, configfile)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


def _commands(output: str) -> list[list[str]]:
    """argv (from 'bornfield') of every job's shell command in a dry run."""
    commands = []
    for line in output.splitlines():
        if "bornfield " in line and "--settings" in line:
            argv = shlex.split(line[line.index("bornfield "):].split(" > ")[0])
            commands.append(argv)
    return commands


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def _command_and_context(argv: list[str]) -> tuple[str, dict]:
    words = argv[1:3]
    command = "plot" if words[0] == "plot" else " ".join(words)
    context = {}
    if command == "structures crystals":
        context["only"] = _option(argv, "--only")
    elif command == "structures melt-quench":
        context["kind"] = _option(argv, "--kind")
    elif command == "md run":
        context.update(condition=_option(argv, "--condition"), inputs_given=True)
    elif command == "dft run":
        context.update(launcher_given="--launcher" in argv, ranks_given="--ranks" in argv)
    return command, context


@pytest.fixture(params=["config/config.yaml", "config/chain.yaml", "config/paper.yaml", "config/models.yaml", ".test/config.yaml", "partial"])
def config_file(request, tmp_path) -> Path:
    if request.param == "partial":
        path = tmp_path / "partial.yaml"
        path.write_text(yaml.safe_dump(PARTIAL))
        return path
    return REPO / request.param


def test_snakemake_and_the_cli_resolve_a_config_identically(config_file, tmp_path):
    """The config the workflow records, and the settings every job of a dry run gets, are what the
    CLI resolves from the same file: through --config and through the rule's --settings alike."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "data").symlink_to(REPO / "data")  # config/models.yaml's ledger and pre-training set
    (workdir / "models").symlink_to(REPO / "models")  # the model set of the demo's MD (md.models)
    commands = _commands(_dry_run(workdir, config_file))
    resolved = load_config(config_file)
    (provenance,) = [argv for argv in commands if argv[1] == "provenance"]
    assert json.loads(_option(provenance, "--settings")) == resolved.to_dict()
    checked = set()
    for argv in commands:
        if argv[1] == "provenance":
            continue
        command, context = _command_and_context(argv)
        passed = json.loads(_option(argv, "--settings"))
        assert passed == command_settings(resolved, command, **context).to_dict(), command
        via_config = settings_from_args(argparse.Namespace(config=str(config_file), settings=None), command, **context)
        via_rule = settings_from_args(argparse.Namespace(config=None, settings=_option(argv, "--settings")),
                                      command, **context)
        assert via_rule == via_config, command
        checked.add(command)
    expected = {"structures crystals", "structures melt-quench", "dft plan", "train potential", "train born",
                "md run", "analyze condition", "analyze sweep", "plot"}
    if resolved.md.models:  # MD on a shipped model set: nothing is labelled or trained
        expected = expected - {"dft plan", "train potential", "train born"}
    elif resolved.dataset.source == "ledger":  # labels come from the ledger: no DFT plan (pre-training if asked)
        expected = expected - {"dft plan"} | ({"train pretrain"} if resolved.train.potential.pretrain.dataset else set())
    assert expected <= checked, sorted(checked)


def test_a_partial_config_means_the_schema_defaults_everywhere(tmp_path):
    """Keys a config leaves out take the schema default -- never the demo config's value."""
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump(PARTIAL))
    resolved = load_config(path)
    schema = default_settings()
    assert resolved.dft.qe.ecutwfc_Ry == 40 and resolved.dft.qe.kpoint_density_per_inv_A == schema.dft.qe.kpoint_density_per_inv_A
    assert resolved.dft.max_structures is None  # the full-chain demo labels only 2
    chain = load_config(REPO / "config" / "chain.yaml")
    assert resolved.train == schema.train != chain.train  # the full-chain demo's smaller models are not inherited
    assert resolved.md.model_generation == resolved.train.active_learning.generations - 1
    workdir = tmp_path / "work"
    workdir.mkdir()
    (provenance,) = [a for a in _commands(_dry_run(workdir, path)) if a[1] == "provenance"]
    assert json.loads(_option(provenance, "--settings")) == resolved.to_dict()


def test_snakemake_without_configfile_runs_the_demo(tmp_path):
    """`make demo` passes config/config.yaml; plain `snakemake` means the same."""
    (tmp_path / "models").symlink_to(REPO / "models")
    (provenance,) = [a for a in _commands(_dry_run(tmp_path)) if a[1] == "provenance"]
    assert json.loads(_option(provenance, "--settings")) == load_config(REPO / "config" / "config.yaml").to_dict()


def test_settings_are_read_only_and_have_no_fallbacks():
    settings = load_config(REPO / ".test" / "config.yaml")
    assert settings.train.potential.min_lr == settings["train"]["potential"]["min_lr"] == 1e-5
    with pytest.raises(TypeError, match="index them"):
        settings.train.potential.get("min_lr", 1e-6)
    with pytest.raises(KeyError, match="train.potential.min_lrr"):
        settings.train.potential["min_lrr"]
    with pytest.raises(TypeError, match="read-only"):
        settings.md["timestep_fs"] = 2.0
    assert isinstance(settings.md.sweep.phases, tuple)
    assert pickle.loads(pickle.dumps(settings)) == settings
    assert json.loads(json.dumps(settings)) == settings.to_dict()
    changed = settings.analysis.replaced(unwrap=True)
    assert changed.unwrap is True and settings.analysis.unwrap is False


def test_a_command_sees_only_the_keys_it_reads():
    settings = load_config(REPO / "config" / "paper.yaml")
    born = command_settings(settings, "train born")
    assert set(born) == {"seed", "train"} and "potential" not in born.train
    with pytest.raises(KeyError, match="'bornfield train born' reads only"):
        born.train["potential"]
    run = command_settings(settings, "dft run", launcher_given=True, ranks_given=True)
    assert "runtime_min" not in run.dft.run and "ranks" not in run.dft.run  # resources: no re-run of a job
    assert run.dft.ledger == settings.dft.ledger  # what the rule passes; --ledger replaces it
    assert "ledger" not in command_settings(settings, "dft run", launcher_given=True, ranks_given=True, ledger_given=True).dft
    assert "ranks" in command_settings(settings, "dft run", launcher_given=True).dft.run


@pytest.mark.parametrize("dotted", ["dft.ledger", "dft.run.launcher", "dft.run.ranks", "seed", "md.sweep.replicas"])
def test_schema_default_of_one_key_is_the_default_setting(dotted):
    """Command-line options standing for a config key (``bornfield label --ledger``) default to the schema."""
    assert schema_default(dotted) == default_settings().lookup(dotted)
    with pytest.raises(KeyError, match="no config key 'dft.ledgr'"):
        schema_default("dft.ledgr")


def test_every_command_table_entry_names_real_keys():
    settings = default_settings()
    contexts = {"structures crystals": [{"only": None}, {"only": "md-cells"}, {"only": "dft"}],
                "structures melt-quench": [{"kind": "dft"}, {"kind": "md"}],
                "dft run": [{"launcher_given": True, "ranks_given": True}, {"ledger_given": True}, {}],
                "train learning-curve": [{"kind": k} for k in ("potential", "born", "baseline")],
                "md run": [{"condition": c, "inputs_given": g} for c in ("amorphous_T600K_E0_none",) for g in (True, False)]}
    for command in COMMAND_KEYS:
        for context in contexts.get(command, [{}]):
            part = command_settings(settings, command, **context)
            assert isinstance(part, Settings) and part, command


def test_md_run_settings_reproduce_every_condition_exactly():
    """The one-condition sweep a job gets has the same name, seeds and field as in the full sweep."""
    from bornfield.md.conditions import expand_conditions

    settings = load_config(REPO / "config" / "paper.yaml")
    conditions = expand_conditions(settings.md)
    assert len(conditions) > 100
    for condition in conditions:
        part = command_settings(settings, "md run", condition=condition.name, inputs_given=True)
        assert expand_conditions(part.md) == [condition]


def test_resolve_config_fills_derived_values():
    settings = resolve_config({"train": {"active_learning": {"generations": 3}},
                               "md": {"extra_conditions": [{"phase": "beta", "temperature_K": 600,
                                                            "field_strength_V_per_A": 0.1}]}})
    assert settings.md.model_generation == 2
    assert settings.md.extra_conditions[0].replicas == settings.md.sweep.replicas
    assert settings.md.extra_conditions[0].field_direction == "x"
