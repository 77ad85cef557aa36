"""Config validation: the CLI and Snakemake validate against the same schema files."""

from __future__ import annotations

import json

import pytest
import yaml

from bornfield.config import SCHEMA_DIR, load_config, validate_section
from bornfield.errors import ConfigError

CONFIGS = ["config/config.yaml", "config/paper.yaml", ".test/config.yaml"]


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
