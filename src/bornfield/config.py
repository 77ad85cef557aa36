"""Campaign configuration: loading and JSON-schema validation.

The schema files live in ``bornfield/schemas/`` (``workflow/schemas`` in the
repository is a link to them), so the CLI validates exactly as the Snakemake
workflow does. The top-level schema ``config.schema.yaml`` refers to one
schema per section (``<section>.schema.yaml``).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from bornfield.errors import ConfigError

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
TOP_SCHEMA = "config.schema.yaml"


def _load_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _registry() -> Registry:
    """All section schemas, addressable by file name from ``$ref``.

    ``$schema`` is dropped from the referenced documents: jsonschema switches
    to a fresh validator class at a sub-resource that declares its dialect,
    which would lose the default-filling extension below.
    """
    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.schema.yaml")):
        contents = _load_yaml(path)
        contents.pop("$schema", None)
        resources.append((path.name, DRAFT202012.create_resource(contents)))
    return Registry().with_resources(resources)


def _validator_with_defaults():
    """A Draft 2020-12 validator that also fills in ``default`` values."""
    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(Draft202012Validator, {"properties": set_defaults})


def _format_error(error, source: str) -> str:
    location = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    allowed = ""
    schema = error.schema if isinstance(error.schema, dict) else {}
    if "enum" in schema:
        allowed = f"; allowed values: {schema['enum']}"
    elif error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        allowed = f"; {error.validator} is {error.validator_value}"
    elif error.validator == "type":
        allowed = f"; expected type {error.validator_value}"
    elif error.validator == "additionalProperties":
        allowed = f"; allowed keys: {sorted(schema.get('properties', {}))}"
    elif error.validator == "pattern" and schema.get("description"):
        # a bare regular expression tells a user little: repeat what the key accepts
        allowed = f"; expected: {' '.join(str(schema['description']).split())}"
    return f"{source}: invalid config key '{location}' (value {error.instance!r}): {error.message}{allowed}"


def validate_section(data: dict, section: str | None, source: str = "config") -> dict:
    """Validate ``data`` (a whole config if ``section`` is None) and fill defaults.

    Returns a validated deep copy. Raises ConfigError naming the key, the value
    and what is allowed.
    """
    name = TOP_SCHEMA if section is None else f"{section}.schema.yaml"
    path = SCHEMA_DIR / name
    if not path.exists():
        raise ConfigError(f"no schema for config section '{section}' (looked for {path})")
    schema = _load_yaml(path)
    instance = copy.deepcopy(data) if data is not None else {}
    cls = _validator_with_defaults()
    validator = cls(schema, registry=_registry())
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        messages = [_format_error(e, source) for e in errors[:10]]
        raise ConfigError("\n".join(messages))
    # a second pass fills defaults that appear inside objects created by the first
    for _ in range(3):
        before = json.dumps(instance, sort_keys=True, default=str)
        list(validator.iter_errors(instance))
        if json.dumps(instance, sort_keys=True, default=str) == before:
            break
    if section is None:
        _check_across_sections(instance, source)
    return instance


def _check_across_sections(config: dict, source: str) -> None:
    """Rules that tie sections together (one schema per section cannot express them).

    Every MD phase (``md.sweep.phases``, ``md.extra_conditions[i].phase``) needs start
    cells, which only the structures stage writes (``structures.phases``): without this
    check Snakemake would stop at DAG construction with a missing-input error that does
    not name the config key.
    """
    built = list(config.get("structures", {}).get("phases", []))
    md = config.get("md", {})
    wanted = [(f"md.sweep.phases.{i}", phase) for i, phase in enumerate(md.get("sweep", {}).get("phases", []))]
    wanted += [
        (f"md.extra_conditions.{i}.phase", extra.get("phase"))
        for i, extra in enumerate(md.get("extra_conditions", []))
    ]
    messages = [
        f"{source}: invalid config key '{key}' (value {phase!r}): no MD start cells for this phase; "
        f"structures.phases builds {built} (add the phase there or remove it here)"
        for key, phase in wanted
        if phase not in built
    ]
    run = config.get("dft", {}).get("run", {})
    if "pools" in run and int(run.get("ranks", 2)) % int(run["pools"]):
        messages.append(
            f"{source}: invalid config key 'dft.run.pools' (value {run['pools']!r}): must divide "
            f"dft.run.ranks = {run.get('ranks', 2)} (QE splits the ranks into k-point pools)"
        )
    if messages:
        raise ConfigError("\n".join(messages))


def load_config(path: str | Path) -> dict:
    """Read a YAML config file, validate it against the top-level schema, fill defaults."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = _load_yaml(path)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return validate_section(data, None, source=str(path))


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` and ``--settings JSON`` to a stage's parser."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--config", help="whole campaign config (YAML); the stage reads its section")
    group.add_argument(
        "--settings",
        help="the stage's config section as a JSON object (what the Snakemake rules pass)",
    )


def settings_from_args(args: argparse.Namespace, section: str) -> dict:
    """Return the validated settings of ``section`` from ``--config`` or ``--settings``."""
    if getattr(args, "config", None):
        return load_config(args.config)[section]
    raw = getattr(args, "settings", None)
    if raw:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--settings for '{section}' is not valid JSON: {exc}") from exc
        return validate_section(data, section, source=f"--settings ({section})")
    return validate_section({}, section, source=f"defaults ({section})")
