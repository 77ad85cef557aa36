# MD stage: one job per condition (phase x temperature x field), all its replicas in one
# (MPI) job: `bornfield md run`. Conditions, names and seeds come from
# bornfield.md.conditions.expand_conditions (docs/architecture.md, "MD conditions").
import os
import re

from bornfield.md.conditions import expand_conditions, scheduling_priorities

MD = f"{RESULTS}/md"
# resolved: model_generation null is the final active-learning generation
MD_SETTINGS = SETTINGS.md
MD_CONDITIONS = {c.name: c for c in expand_conditions(MD_SETTINGS)}
MD_RANKS = MD_SETTINGS["resources"]["tasks"]
# a model set (md.models, written by `make models`) or this campaign's generation
MD_MODELS = MD_SETTINGS["models"] or f"{RESULTS}/models/gen{MD_SETTINGS['model_generation']}"

# longest conditions first, after the structure jobs (priority 10) they wait on
MD_PRIORITY = scheduling_priorities(MD_SETTINGS, SETTINGS.structures)


rule md_condition:
    input:
        cells=lambda wc: f"{RESULTS}/structures/md_cells/{MD_CONDITIONS[wc.condition].phase}.extxyz",
        potentials=[
            f"{MD_MODELS}/potential_{i}.pt" for i in range(MD_SETTINGS["committee_size"])
        ],
        born=f"{MD_MODELS}/born_0.pt",
    output:
        summary=f"{MD}/{{condition}}/summary.json",
    wildcard_constraints:
        condition="|".join(re.escape(name) for name in MD_CONDITIONS) or "(?!x)x",
    params:
        # this condition and the dynamics keys only: a new sweep value re-runs no other condition
        settings=lambda wc: settings_arg("md run", condition=wc.condition, inputs_given=True),
        outdir=lambda wc, output: os.path.dirname(output.summary),
        # one rank: no launcher (profiles set a default `mpi` resource for every rule)
        launch=lambda wc, resources: (
            f"{resources.mpi} -n {resources.tasks}" if resources.tasks > 1 else ""
        ),
    log:
        f"{LOGS}/md/{{condition}}.log",
    benchmark:
        f"{BENCH}/md/{{condition}}.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: MD_RANKS
    priority: lambda wc: MD_PRIORITY[wc.condition]
    resources:
        runtime=MD_SETTINGS["resources"]["runtime_min"],
        mem_mb=MD_SETTINGS["resources"]["mem_mb"],
        cpus_per_task=1,
        tasks=MD_RANKS,
        **({"mpi": MD_SETTINGS["resources"]["mpi"]} if MD_RANKS > 1 else {}),
    shell:
        "{params.launch} bornfield md run --settings {params.settings}"
        " --condition {wildcards.condition} --structures {input.cells}"
        " --potential {input.potentials} --born {input.born} --output-dir {params.outdir}"
        " --threads 1 --no-progress > {log} 2>&1"


STAGE_TARGETS["md"] = lambda: [f"{MD}/{name}/summary.json" for name in MD_CONDITIONS]
