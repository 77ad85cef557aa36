# Shared helpers: the resolved config first, then small input functions.
# Logic belongs in src/bornfield (unit-tested); this file stays small.
import json
import os
import shlex
from pathlib import Path

from snakemake.utils import update_config

from bornfield.config import read_config_file, resolve_config, settings_json

# One meaning of a config, the CLI's (bornfield.config.resolve_config): the files given with
# --configfile (merged by Snakemake, later files win) plus --config overrides, and every key
# they leave out at its schema default -- never at the value of another file. Without
# --configfile the demo, config/config.yaml, is the config. Files are read strictly (a key
# given twice is an error); the message of a bad key names it with its value and what is
# allowed, before any job starts.
CONFIG_FILES = [Path(p) for p in workflow.configfiles]  # --configfile, or a configfile: directive
if CONFIG_FILES:
    for _path in CONFIG_FILES:
        read_config_file(_path)
    _given = config
else:
    CONFIG_FILES = [Path(workflow.basedir) / "config" / "config.yaml"]
    _given = read_config_file(CONFIG_FILES[0])
    update_config(_given, config)
SETTINGS = resolve_config(_given, source=", ".join(map(str, CONFIG_FILES)))
config.clear()
config.update(SETTINGS.to_dict())

RESULTS = SETTINGS.results_dir
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"

# Each rules file registers a function returning its final targets.
STAGE_TARGETS = {}


# with a model set (md.models) the campaign labels and trains nothing
MODEL_STAGES = ("dft", "dataset", "train")


def get_final_targets(skip=()):
    """Targets of every stage but those in ``skip`` (and the model stages with a model set)."""
    targets = []
    for name, stage in STAGE_TARGETS.items():
        if name not in skip and not (SETTINGS.md["models"] and name in MODEL_STAGES):
            targets.extend(stage())
    return targets


def files_option(option, files):
    """`option file ...` for a list option of bornfield (one or more files), '' without files."""
    return f"{option} {' '.join(shlex.quote(str(f)) for f in files)}" if files else ""


def settings_arg(command, **context):
    """The settings `bornfield <command>` reads (bornfield.config.COMMAND_KEYS), as one
    shell-quoted JSON argument: a job's params change exactly when one of them does."""
    return shlex.quote(settings_json(SETTINGS, command, **context))


# --- DFT stage input functions (DFT, RESULTS and checkpoints are resolved when called) ---


def get_dft_candidates(wildcards):
    """Candidate structures of generation `gen`: the structures stage for gen 0,
    active-learning selections (train stage) afterwards."""
    gen = int(wildcards.gen)
    if gen == 0:
        return f"{RESULTS}/structures/dft_candidates.extxyz"
    return f"{RESULTS}/active_learning/gen{gen}/candidates.extxyz"


def get_dft_labels(gen):
    """labels.json of every job planned in generations 0..gen (checkpoint-driven)."""
    labels = []
    for g in range(int(gen) + 1):
        plan_file = checkpoints.dft_plan.get(gen=g).output.plan
        with open(plan_file) as handle:
            plan = json.load(handle)
        labels += [f"{DFT}/jobs/{job['dft_id']}/labels.json" for job in plan["jobs"]]
    return labels
