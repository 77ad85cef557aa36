# Shared helpers: config validation first, then small input functions.
# Logic belongs in src/bornfield (unit-tested); this file stays small.
import json
import shlex

from snakemake.utils import validate

from bornfield.config import validate_section

# bornfield's validator first: its message names the key as a dotted path with the
# bad value and what is allowed, it checks rules across sections (MD phases need
# structures), and it fills the defaults of nested sections (Snakemake's set_default
# does not descend through $ref'd section schemas). Snakemake's check then confirms.
config.update(validate_section(config, None, source="config"))
validate(config, "../schemas/config.schema.yaml")

RESULTS = config["results_dir"]
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"

# Each rules file registers a function returning its final targets.
STAGE_TARGETS = {}


def get_final_targets():
    targets = []
    for stage in STAGE_TARGETS.values():
        targets.extend(stage())
    return targets


def get_settings(section):
    """The validated config section as a shell-quoted JSON argument for the CLI."""
    return shlex.quote(json.dumps(config[section], sort_keys=True))


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
