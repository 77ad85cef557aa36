"""Campaign configuration: one loader, one meaning of a config, for Snakemake and the CLI.

:func:`resolve_config` turns a config (a YAML file, or what Snakemake merged from
``--configfile``/``--config``) into frozen :class:`Settings`:

1. the JSON schemas (``bornfield/schemas/``; ``workflow/schemas`` links to them)
   check every key and fill in every key the config leaves out with the
   schema's ``default`` -- the only defaults there are: code indexes settings
   and never falls back to a value of its own;
2. derived values are resolved (``md.model_generation: null`` is the last
   active-learning generation; an ``md.extra_conditions`` entry without
   ``replicas`` gets ``md.sweep.replicas``);
3. rules across keys are checked (cutoffs, generations, committees, windows,
   strides, species, the MD sweep, ...): every broken rule is reported with
   the dotted key, the value and what is allowed, before any job starts.

YAML files are read strictly (:func:`read_config_file`): a key given twice is
an error, not "the last one wins".

Each command reads only some keys (:data:`COMMAND_KEYS`, :func:`command_settings`);
a Snakemake rule passes exactly those keys to its command (``--settings``), so a
job's parameters change exactly when something it reads changes, and the
command sees the same values whether it got ``--settings`` from a rule or
``--config`` from a user.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import functools
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, ValidationError, validators
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from bornfield.errors import ConfigError
from bornfield.structures import SPECIES as SYSTEM_SPECIES

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
TOP_SCHEMA = "config.schema.yaml"
MAX_MESSAGES = 10


# ------------------------------------------------------------------------ settings


class Settings(dict):
    """Read-only, fully resolved settings: ``s["key"]`` or ``s.key``.

    Nested mappings are Settings and lists are tuples. Every schema key is
    present, so a missing key is a programming error (a typo, or a key the
    command does not read); it raises KeyError naming the dotted key. There
    are no fallbacks: ``get`` with a default is refused. JSON-serialisable as
    a dict; :meth:`to_dict` gives plain dicts and lists.
    """

    __slots__ = ("_where", "_note")

    def __init__(self, data: Mapping[str, Any] = (), where: str = "", note: str = ""):
        dict.__init__(self, {key: _freeze(value, _join(where, key), note) for key, value in dict(data).items()})
        self._where = where
        self._note = note

    def __missing__(self, key):
        known = ", ".join(sorted(map(str, self)))
        raise KeyError(f"settings have no key '{_join(self._where, key)}' (keys here: {known}){self._note}")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(exc.args[0]) from None

    def get(self, key, *default):
        """``self[key]``; a default is refused (the schema gives every key its default)."""
        if default:
            raise TypeError(f"settings.get('{_join(self._where, key)}', default): settings carry every key "
                            "with its schema default; index them instead")
        return self[key]

    def _read_only(self, *args, **kwargs):
        raise TypeError(f"settings{' ' + self._where if self._where else ''} are read-only; "
                        "use .replaced(...) for a changed copy")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = _read_only

    def replaced(self, **changes: Any) -> Settings:
        """A copy with some keys of this level set to new values."""
        data = self.to_dict()
        data.update(changes)
        return Settings(data, self._where, self._note)

    def to_dict(self) -> dict:
        """Plain nested dicts and lists (what JSON, YAML and the schema validator take)."""
        return _thaw(self)

    def lookup(self, dotted: str) -> Any:
        """The value at a dotted key, e.g. ``"md.sweep.phases"``."""
        node: Any = self
        for part in dotted.split("."):
            node = node[part]
        return node

    def __reduce__(self):
        return (Settings, (self.to_dict(), self._where, self._note))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _freeze(value: Any, where: str, note: str) -> Any:
    if isinstance(value, Mapping):
        return value if isinstance(value, Settings) and value._where == where else Settings(value, where, note)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v, f"{where}.{i}", note) for i, v in enumerate(value))
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _thaw(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    return value


# ------------------------------------------------------------------ reading YAML


def read_config_file(path: str | Path) -> dict:
    """The mapping in a YAML config file, read strictly: a key given twice is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _check_duplicate_keys(node, "", path)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return data


def _check_duplicate_keys(node: yaml.Node, where: str, path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"{path}:{line}: config key '{_join(where, key)}' is given twice (lines {seen[key]} and "
                    f"{line}); YAML would silently keep only the last value - remove one")
            seen[key] = line
            _check_duplicate_keys(value_node, _join(where, key), path)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicate_keys(item, _join(where, index), path)


# ------------------------------------------------------------ schema validation


def _load_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@functools.lru_cache(maxsize=None)
def _schema(name: str) -> dict:
    return _load_yaml(SCHEMA_DIR / name)


@functools.lru_cache(maxsize=1)
def _registry() -> Registry:
    """All section schemas, addressable by file name from ``$ref``.

    ``$schema`` is dropped from the referenced documents: jsonschema switches
    to a fresh validator class at a sub-resource that declares its dialect,
    which would lose the default-filling extension below.
    """
    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.schema.yaml")):
        contents = copy.deepcopy(_schema(path.name))
        contents.pop("$schema", None)
        resources.append((path.name, DRAFT202012.create_resource(contents)))
    return Registry().with_resources(resources)


@functools.lru_cache(maxsize=1)
def _validator_with_defaults():
    """A Draft 2020-12 validator class that also fills in ``default`` values and refuses NaN.

    NaN (YAML ``.nan``) is a float, so ``type: number`` accepts it, and every range
    check passes it (a comparison with NaN is false).
    """
    validate_properties = Draft202012Validator.VALIDATORS["properties"]
    validate_type = Draft202012Validator.VALIDATORS["type"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    def type_without_nan(validator, types, instance, schema):
        yield from validate_type(validator, types, instance, schema)
        if isinstance(instance, float) and math.isnan(instance):
            yield ValidationError("NaN is not a number")

    return validators.extend(Draft202012Validator, {"properties": set_defaults, "type": type_without_nan})


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...]"


def _alternatives(schema: dict) -> str:
    """What a oneOf/anyOf accepts, e.g. "one of ['x', 'y'] or a list of 3 numbers"."""
    parts = []
    for option in schema.get("oneOf", schema.get("anyOf", [])):
        if "enum" in option:
            parts.append(f"one of {option['enum']}")
        elif option.get("type") == "array":
            n = option.get("minItems")
            kind = option.get("items", {}).get("type", "value")
            count = f"{n} " if n is not None and n == option.get("maxItems") else ""
            parts.append(f"a list of {count}{kind}s")
        elif "type" in option:
            parts.append(str(option["type"]))
    return " or ".join(parts)


RANGE_WORDS = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}


def _format_error(error, source: str) -> str:
    path = [str(p) for p in error.absolute_path]
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        allowed = sorted(schema.get("properties", {}))
        if error.validator == "unevaluatedProperties":  # keys of an allOf'ed block count too
            allowed = sorted(set(allowed) | _all_of_keys(schema))
        extra = [key for key in error.instance if key not in allowed]
        messages = []
        for key in extra:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            messages.append(f"{source}: unknown config key '{'.'.join(path + [key])}'{hint}; "
                            f"allowed keys here: {allowed}")
        return "\n".join(messages)
    location = ".".join(path) or "<top level>"
    if "enum" in schema:
        allowed = f"; allowed values: {schema['enum']}"
    elif error.validator in ("oneOf", "anyOf"):
        allowed = f"; expected {_alternatives(schema)}"
    elif error.validator in RANGE_WORDS:
        return (f"{source}: invalid config key '{location}' (value {_short(error.instance)}): out of range; "
                f"allowed: {RANGE_WORDS[error.validator]} {error.validator_value}")
    elif error.validator == "type":
        allowed = f"; expected type {error.validator_value}"
    elif error.validator == "pattern" and schema.get("description"):
        # a bare regular expression tells a user little: repeat what the key accepts
        allowed = f"; expected: {' '.join(str(schema['description']).split())}"
    else:
        allowed = ""
    message = error.message if len(error.message) <= 160 else f"{_short(error.instance)} is not valid"
    return f"{source}: invalid config key '{location}' (value {_short(error.instance)}): {message}{allowed}"


def _all_of_keys(schema: dict) -> set[str]:
    keys: set[str] = set()
    for part in schema.get("allOf", []):
        if "$ref" in part:
            name = part["$ref"].split("/")[-1]
            for file in SCHEMA_DIR.glob("*.schema.yaml"):
                keys |= set(_schema(file.name).get("$defs", {}).get(name, {}).get("properties", {}))
        keys |= set(part.get("properties", {}))
    return keys


def validate_section(data: Mapping | None, section: str | None, source: str = "config") -> dict:
    """Check ``data`` against the schema of ``section`` (the whole config if None); fill defaults.

    Returns a validated deep copy as plain dicts and lists (no cross-key rules: see
    :func:`resolve_config`). Raises ConfigError naming each bad key, its value and
    what is allowed.
    """
    name = TOP_SCHEMA if section is None else f"{section}.schema.yaml"
    if not (SCHEMA_DIR / name).exists():
        raise ConfigError(f"no schema for config section '{section}' (looked for {SCHEMA_DIR / name})")
    instance = _thaw(data) if data is not None else {}
    validator = _validator_with_defaults()(_schema(name), registry=_registry())
    errors = sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        messages = [_format_error(e, source) for e in errors]
        messages = [m for m in dict.fromkeys("\n".join(messages).splitlines()) if m]
        raise ConfigError("\n".join(messages[:MAX_MESSAGES]))
    # further passes fill defaults inside objects created by the first
    for _ in range(3):
        before = json.dumps(instance, sort_keys=True, default=str)
        list(validator.iter_errors(instance))
        if json.dumps(instance, sort_keys=True, default=str) == before:
            break
    return instance


# ------------------------------------------------------------------- resolution


def resolve_config(data: Mapping | None, source: str = "config", check: bool = True) -> Settings:
    """Validated, defaults-filled, derived-values-resolved, cross-checked frozen settings.

    ``data`` is a whole config or any part of it (keys left out take the schema
    defaults). ``check=False`` skips the rules across keys (for the key subsets
    that Snakemake hands to one command, already checked on the whole config).
    """
    config = validate_section(data, None, source)
    if check:
        messages = check_config(config, source)
        if messages:
            raise ConfigError("\n".join(messages[:MAX_MESSAGES]))
    _resolve_derived(config)
    return Settings(config)


def _resolve_derived(config: dict) -> None:
    md = config["md"]
    if md["model_generation"] is None:
        md["model_generation"] = config["train"]["active_learning"]["generations"] - 1
    resolve_extra_conditions(md)


def resolve_extra_conditions(md: dict) -> dict:
    """Give every ``md.extra_conditions`` entry without ``replicas`` the sweep's (in place)."""
    for extra in md["extra_conditions"]:
        extra.setdefault("replicas", md["sweep"]["replicas"])
    return md


def load_config(path: str | Path) -> Settings:
    """Read a YAML config file strictly and resolve it (:func:`resolve_config`)."""
    return resolve_config(read_config_file(path), source=str(path))


@functools.lru_cache(maxsize=1)
def default_settings() -> Settings:
    """The settings of an empty config: every key at its schema default."""
    return resolve_config({}, source="schema defaults")


def schema_default(dotted: str) -> Any:
    """The schema's ``default`` of one dotted key, read from the schema files alone.

    Cheap (no validation): for the defaults and help texts of command-line options
    that stand for a config key, e.g. ``schema_default("dft.ledger")``. Equal to
    ``default_settings().lookup(dotted)`` for keys with a plain default.
    """
    node = _schema(TOP_SCHEMA)
    for part in dotted.split("."):
        while "$ref" in node and not node["$ref"].startswith("#"):
            node = _schema(node["$ref"])
        try:
            node = node["properties"][part]
        except KeyError:
            raise KeyError(f"no config key '{dotted}' in the schema") from None
    if "default" not in node:
        raise KeyError(f"config key '{dotted}' has no schema default")
    return copy.deepcopy(node["default"])


# ------------------------------------------------------------------ cross-checks

def _model_set_members(root: str) -> int | None:
    """Number of potentials in the model set at ``root`` (None: no manifest there)."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        return None
    return len(json.loads(path.read_text(encoding="utf-8")).get("members", {}).get("potential", []))


def check_config(config: Mapping, source: str = "config") -> list[str]:
    """Messages for every broken rule across keys of a schema-valid config (empty: fine).

    One schema per section cannot express these; each would otherwise fail hours
    later in a job, or silently.
    """
    out: list[str] = []

    def bad(key: str, value: Any, rule: str) -> None:
        out.append(f"{source}: invalid config key '{key}' (value {_short(value)}): {rule}")

    structures, dft, train, md, analysis = (config[k] for k in ("structures", "dft", "train", "md", "analysis"))

    # every MD phase needs start cells, which only the structures stage writes
    built = list(structures["phases"])
    wanted = [(f"md.sweep.phases.{i}", p) for i, p in enumerate(md["sweep"]["phases"])]
    wanted += [(f"md.extra_conditions.{i}.phase", e["phase"]) for i, e in enumerate(md["extra_conditions"])]
    for key, phase in wanted:
        if phase not in built:
            bad(key, phase, f"no MD start cells for this phase; structures.phases builds {built} "
                            "(add the phase there or remove it here)")
    if not md["sweep"]["phases"] and not md["extra_conditions"]:
        bad("md.sweep.phases", md["sweep"]["phases"], "the campaign would run no MD at all; give at least "
            f"one phase (built: {built}) or an md.extra_conditions entry")

    qe, run = dft["qe"], dft["run"]
    if qe["ecutrho_Ry"] < 4 * qe["ecutwfc_Ry"]:
        bad("dft.qe.ecutrho_Ry", qe["ecutrho_Ry"], f"must be at least 4 x dft.qe.ecutwfc_Ry = "
            f"{4 * qe['ecutwfc_Ry']:g} Ry (the density holds products of wave functions; PAW "
            "augmentation wants 8x)")
    if run["ranks"] % run["pools"]:
        bad("dft.run.pools", run["pools"], f"must divide dft.run.ranks = {run['ranks']} "
            "(QE splits the ranks into k-point pools)")

    split = train["split"]
    if split["val_fraction"] + split["test_fraction"] >= 1:
        bad("train.split.test_fraction", split["test_fraction"], "train.split.val_fraction + test_fraction "
            f"= {split['val_fraction'] + split['test_fraction']:g} leaves no training structures; must be < 1")
    generations = train["active_learning"]["generations"]
    if md["model_generation"] is not None and md["model_generation"] > generations - 1:
        bad("md.model_generation", md["model_generation"], f"train.active_learning.generations = "
            f"{generations} trains generations 0..{generations - 1}; allowed: null (= {generations - 1}) "
            f"or 0..{generations - 1}")
    if not md["models"] and md["committee_size"] > train["potential"]["committee"]:
        bad("md.committee_size", md["committee_size"], f"only train.potential.committee = "
            f"{train['potential']['committee']} potentials are trained; allowed: 1..{train['potential']['committee']}")
    if config["dataset"]["source"] == "ledger" and generations != 1:
        bad("train.active_learning.generations", generations, "dataset.source = ledger trains one generation "
            "on the ledger's entries (active-learning picks join the ledger's queue instead); allowed: 1")
    if md["models"]:
        members = _model_set_members(md["models"])
        if members is None:
            bad("md.models", md["models"], "not a model set (no manifest.json there); give a directory "
                "written by 'make models' (e.g. models/li3po4) or '' for this campaign's models")
        elif md["committee_size"] > members:
            bad("md.committee_size", md["committee_size"], f"the model set {md['models']} holds {members} "
                f"potentials; allowed: 1..{members}")
    pretrain = train["potential"]["pretrain"]["dataset"]
    if pretrain and not Path(pretrain).is_file():
        bad("train.potential.pretrain.dataset", pretrain, "no such file (relative paths are taken from the "
            "working directory, the repository root for Snakemake); give a labelled extxyz file or '' for "
            "no pre-training")
    exploration = train["active_learning"]["exploration"]
    if exploration["sample_interval"] > exploration["steps"]:
        bad("train.active_learning.exploration.sample_interval", exploration["sample_interval"],
            f"larger than exploration.steps = {exploration['steps']}: no snapshot would be taken; "
            f"allowed: 1..{exploration['steps']}")

    production = min([md["production_steps"], *(e.get("production_steps", md["production_steps"])
                                                 for e in md["extra_conditions"])])
    if md["output"]["trajectory_stride"] > production:
        bad("md.output.trajectory_stride", md["output"]["trajectory_stride"], f"larger than the "
            f"shortest production run ({production} steps): the trajectory would hold one frame and no MSD; "
            f"allowed: 1..{production}")

    if not out:  # names, seeds and field directions of the MD conditions (zero-length vectors, clashes)
        from bornfield.md.conditions import expand_conditions

        try:
            conditions = expand_conditions(md)
        except ConfigError as exc:
            out.append(f"{source}: {exc}")
        else:
            _check_ghost_shell(config, conditions, bad)

    for key in ("fit_window_fraction", "fit_window_fs"):
        window = analysis[key]
        if window is not None and not window[0] < window[1]:
            bad(f"analysis.{key}", window, "expected [start, end] with start < end")
    for key, symbols in (("analysis.mobile_species", [analysis["mobile_species"]]),
                         ("analysis.species", list(analysis["species"]))):
        unknown = [s for s in symbols if s not in SYSTEM_SPECIES]
        if unknown:
            value = analysis["mobile_species"] if key == "analysis.mobile_species" else analysis["species"]
            bad(key, value, f"{unknown} not in the system; allowed: {list(SYSTEM_SPECIES)}")
    return out


def _check_ghost_shell(config: Mapping, conditions, bad: Callable[[str, Any, str], None]) -> None:
    """An explicit LAMMPS ghost shell must cover this campaign's models when a replica spans ranks.

    The receptive field of the trained models is ``train.cutoff``, or the baseline cutoff of a
    potential with a physical baseline when that is longer; LAMMPS keeps ghosts for
    ``ghost_cutoff_A`` between neighbour-list rebuilds, so it needs that plus ``skin_A``. A
    replica spans ranks when ``md.resources.tasks`` exceeds its replicas (md.runner.replica_layout).
    Model sets (``md.models``) are checked when the MD job reads their files.
    """
    md, train = config["md"], config["train"]
    ghost, tasks = md["lammps"]["ghost_cutoff_A"], md["resources"]["tasks"]
    if md["backend"] != "lammps" or ghost is None or md["models"]:
        return
    split = [c for c in conditions if c.replicas < tasks]
    if not split:
        return
    potential = train["potential"]
    reach = max(train["cutoff"], potential["baseline_cutoff_A"] if potential["baseline"] != "none" else 0.0)
    needed = reach + md["lammps"]["skin_A"]
    if ghost < needed:
        origin = (f"train.potential.baseline_cutoff_A = {reach:g} Å (baseline {potential['baseline']})"
                  if reach > train["cutoff"] else f"train.cutoff = {reach:g} Å")
        bad("md.lammps.ghost_cutoff_A", ghost,
            f"shorter than the models' receptive field, {origin}, + md.lammps.skin_A = "
            f"{md['lammps']['skin_A']:g} Å, while md.resources.tasks = {tasks} splits a replica of "
            f"condition {split[0].name!r} ({split[0].replicas} replicas) over ranks; allowed: null or >= {needed:g}")


# ------------------------------------------------------- what each command reads

_AMORPHOUS_PROTOCOL = tuple(
    f"structures.amorphous.{key}" for key in (
        "engine", "start", "initial_density_g_cm3", "timestep_fs", "melt_temperature_K", "melt_time_ps",
        "quench_rate_K_per_ps", "final_temperature_K", "anneal_time_ps", "anneal_pressure_bar",
        "npt_quench_below_K", "relax", "thermostat_damping_fs", "barostat_damping_fs", "min_separation_A",
        "lammps.cutoff_A", "lammps.kspace_accuracy", "lammps.thermo_every"))
_NN_EQUILIBRATION = tuple(
    f"structures.amorphous.nn_equilibration.{key}" for key in (
        "anneal_temperature_K", "anneal_time_ps", "final_temperature_K", "final_time_ps", "pressure_bar",
        "timestep_fs", "thermostat_time_constant_fs", "barostat_time_constant_fs", "min_distance_A",
        "max_force_uncertainty_eV_per_A", "max_temperature_factor", "max_density_change_fraction",
        "check_interval_steps", "trace_interval_steps"))
_DFT_JOB = ("dft.qe", "dft.pseudopotentials.set", "dft.qc", "dft.run.pw_command", "dft.run.ph_command",
            "dft.run.pools", "dft.run.max_scf_attempts", "dft.run.ph_retries", "dft.run.max_seconds",
            "dft.run.keep_scratch")
_TRAIN_MODEL = ("seed", "train.cutoff", "train.dtype", "train.threads", "train.split")
_MD_DYNAMICS = tuple(f"md.{key}" for key in (
    "seed", "backend", "timestep_fs", "equilibration_steps", "production_steps", "ensemble",
    "thermostat_time_constant_fs", "nose_hoover_chain_length", "born_refresh_interval", "neighbour_skin_A",
    "batch_replicas", "field_schedule", "output", "safety", "lammps", "committee_mean_forces"))
_ANALYSIS_CONDITION = tuple(f"analysis.{key}" for key in (
    "species", "mobile_species", "reference_axis", "equilibration_fs", "max_lag_fraction", "fit_window_fraction",
    "fit_window_fs", "msd_reference_time_fs", "unwrap", "curve_points", "transverse"))

COMMAND_KEYS: dict[str, Callable[..., tuple[str, ...]] | tuple[str, ...]] = {
    # --only md-cells / dft: the MD cells of the crystal phases / the crystal DFT candidates
    "structures crystals": lambda only=None: ("seed", "structures.frenkel_min_separation_A") + {
        "md-cells": ("structures.phases", "structures.md_supercell"),
        "dft": ("structures.dft_cells", "structures.perturbations"),
        None: ("structures.phases", "structures.md_supercell", "structures.dft_cells", "structures.perturbations"),
    }[only],
    "structures melt-quench": lambda kind: (
        "seed", *_AMORPHOUS_PROTOCOL, f"structures.amorphous.{kind}_cells.n_atoms",
        *(("structures.amorphous.dft_cells.melt_snapshots",) if kind == "dft" else ())),
    "structures gather": ("seed", "structures.perturbations"),
    "structures nn-equilibrate": _NN_EQUILIBRATION,
    "structures validate-potential": ("structures.amorphous.lammps.cutoff_A",
                                      "structures.amorphous.lammps.kspace_accuracy",
                                      "structures.amorphous.lammps.thermo_every"),
    "structures report": ("structures.report",),
    "structures build": ("seed", "structures"),
    "dft provision": ("dft.pseudopotentials.set", "dft.pseudopotentials.search_dirs",
                      "dft.pseudopotentials.ld1_command"),
    "dft plan": ("dft.qe", "dft.pseudopotentials.set", "dft.max_structures"),
    # the launcher, rank count and ledger come from --launcher, --ranks and --ledger when given
    "dft run": lambda launcher_given=False, ranks_given=False, ledger_given=False: _DFT_JOB + (
        () if launcher_given else ("dft.run.launcher",)) + (() if ranks_given else ("dft.run.ranks",)) + (
        () if ledger_given else ("dft.ledger",)),
    "dataset assemble": ("dataset",),
    "train split": ("seed", "train.split"),
    "train potential": _TRAIN_MODEL + ("train.potential",),
    "train pretrain": _TRAIN_MODEL + ("train.potential",),
    "train fit-baseline": ("train.potential.baseline_cutoff_A", "train.potential.baseline_dsf_alpha_per_A",
                           "train.potential.baseline_energy_weight", "train.potential.baseline_wall_pairs"),
    "train born": _TRAIN_MODEL + ("train.born",),
    "train baseline": _TRAIN_MODEL + ("train.baseline",),
    "train learning-curve": lambda kind: _TRAIN_MODEL + (f"train.{kind}",),
    "train explore": ("seed", "train.threads", "train.active_learning.exploration"),
    "train select": ("train.active_learning.select_per_generation", "train.active_learning.score",
                     "train.active_learning.min_frame_gap"),
    # --pending-in compares analysis records with the configured model files
    "md list": ("md.seed", "md.sweep", "md.extra_conditions", "results_dir", "md.models", "md.model_generation",
                "md.committee_size"),
    # the condition itself, as a one-condition sweep (see command_settings); the model
    # files, start cells and output directory come from --potential/--born/--structures/--output-dir when given
    "md run": lambda condition, inputs_given: _MD_DYNAMICS + (
        () if inputs_given else ("results_dir", "md.models", "md.model_generation", "md.committee_size")),
    "analyze condition": _ANALYSIS_CONDITION,
    "analyze sweep": ("analysis.mobile_species", "analysis.linear_response", "analysis.arrhenius"),
    "analyze results": ("results_dir", "md.seed", "md.sweep", "md.extra_conditions"),
    "analyze stability": ("results_dir", "md.seed", "md.sweep", "md.extra_conditions", "md.production_steps", "md.timestep_fs"),
    "plot": ("analysis.mobile_species", "analysis.figures"),
    "estimate": lambda: tuple(_schema(TOP_SCHEMA)["properties"]),
    "provenance": lambda: tuple(_schema(TOP_SCHEMA)["properties"]),
}
"""Dotted keys each command reads (a callable takes the command's context, e.g. ``kind``)."""


def command_keys(command: str, **context: Any) -> tuple[str, ...]:
    """The dotted keys ``bornfield <command>`` reads in this context."""
    try:
        keys = COMMAND_KEYS[command]
    except KeyError:
        raise KeyError(f"no settings table entry for command '{command}'; known: {sorted(COMMAND_KEYS)}") from None
    return keys(**context) if callable(keys) else keys


def command_settings(settings: Mapping, command: str, **context: Any) -> Settings:
    """The part of resolved ``settings`` that ``bornfield <command>`` reads (and nothing else).

    For ``md run`` (context ``condition``) the sweep is replaced by the one condition
    the command runs, so adding a temperature or a phase to the sweep does not change
    the settings of the other conditions.
    """
    tree: dict = {}
    for dotted in command_keys(command, **context):
        node, source = tree, settings
        *parents, last = dotted.split(".")
        for part in parents:
            source = source[part]
            node = node.setdefault(part, {})
        node[last] = _thaw(source[last])
    if command == "md run":
        sweep, own_steps = _one_condition_sweep(settings["md"], context["condition"])
        tree["md"]["sweep"] = sweep
        tree["md"]["extra_conditions"] = []
        if own_steps is not None:  # an extra condition's own run length
            tree["md"]["production_steps"] = own_steps
    note = f" - 'bornfield {command}' reads only {list(command_keys(command, **context))} (bornfield.config.COMMAND_KEYS)"
    return Settings(tree, note=note)


def _one_condition_sweep(md: Mapping, name: str) -> tuple[dict, int | None]:
    """An ``md.sweep`` whose only condition is ``name`` (same name, seeds and field direction),
    and that condition's own ``production_steps`` (None: ``md.production_steps``)."""
    key = json.dumps({k: md[k] for k in ("seed", "sweep", "extra_conditions")}, sort_keys=True)
    sweeps = _one_condition_sweeps(key)
    if name not in sweeps:
        raise ConfigError(f"md: no condition named {name!r}; the config defines {sorted(sweeps)}")
    sweep, own_steps = sweeps[name]
    return copy.deepcopy(sweep), own_steps


@functools.lru_cache(maxsize=8)
def _one_condition_sweeps(md_json: str) -> dict[str, tuple[dict, int | None]]:
    from bornfield.md.conditions import expand_conditions, normalize_direction

    md = json.loads(md_json)
    given = [*md["sweep"]["field_directions"], *(e["field_direction"] for e in md["extra_conditions"])]
    sweeps = {}
    for condition in expand_conditions(md):
        direction: Any = "x"  # a zero field has no direction (named "none")
        if condition.field_strength_V_per_A:
            direction = next(d for d in given if normalize_direction(d)[0] == condition.field_direction)
        sweeps[condition.name] = ({
            "phases": [condition.phase], "temperatures_K": [condition.temperature_K],
            "field_strengths_V_per_A": [condition.field_strength_V_per_A], "field_directions": [direction],
            "replicas": condition.replicas}, condition.production_steps)
    return sweeps


def settings_json(settings: Mapping, command: str, **context: Any) -> str:
    """``command_settings`` as compact JSON (what a Snakemake rule passes as ``--settings``)."""
    return json.dumps(command_settings(settings, command, **context), sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------- CLI


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` and ``--settings JSON`` to a stage's parser."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--config", help="campaign config (YAML); keys it leaves out take their schema defaults "
                       "(default: none, every key at its schema default)")
    group.add_argument(
        "--settings",
        help="the keys this command reads, as a JSON config sub-tree (what the Snakemake rules pass); "
        "keys left out take their schema defaults (default: none, every key at its schema default)",
    )


def settings_from_args(args: argparse.Namespace, command: str, **context: Any) -> Settings:
    """What ``bornfield <command>`` reads, from ``--config``, ``--settings`` or the schema defaults.

    ``--config``: the whole config, resolved and checked (:func:`load_config`).
    ``--settings``: a config sub-tree as JSON (checked key by key; the rules across
    keys were checked by the workflow on the whole config). Neither: schema defaults.
    Either way the result holds only the keys of :data:`COMMAND_KEYS` for the command.
    """
    if getattr(args, "config", None):
        settings = load_config(args.config)
    elif getattr(args, "settings", None):
        try:
            data = json.loads(args.settings)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--settings of 'bornfield {command}' is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"--settings of 'bornfield {command}' must be a JSON object (a config sub-tree)")
        settings = resolve_config(data, source=f"--settings of 'bornfield {command}'", check=False)
    else:
        settings = default_settings()
    return command_settings(settings, command, **context)


def register(subparsers) -> None:
    """``bornfield config --config FILE``: print what a config means (every key resolved)."""
    parser = subparsers.add_parser(
        "config", help="print a campaign config with every key resolved (schema defaults, derived values)",
        description="Resolve a config exactly as Snakemake and every command do and print it as YAML; "
        "exit 2 with the broken keys named if it is invalid.")
    parser.add_argument("--config", required=True, help="campaign config (YAML)")
    parser.add_argument("--command", dest="only_command",
                        help="print only the keys 'bornfield <COMMAND>' reads, e.g. 'train born' (default: every key)")
    parser.set_defaults(func=_run_show)


def _run_show(args: argparse.Namespace) -> int:
    settings = load_config(args.config)
    if args.only_command:
        try:
            settings = command_settings(settings, args.only_command)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"--command {args.only_command!r}: {exc.args[0]} (commands whose keys depend on "
                              f"their options, e.g. 'md run', cannot be shown alone)") from None
    print(yaml.safe_dump(settings.to_dict(), sort_keys=False), end="")
    return 0
