# STRUCTURES stage: crystals/defects, melt-quench per cell and seed, gathering, reports.
# Outputs under {RESULTS}/structures/ (see docs/architecture.md, Files table).

import os

STRUCT = f"{RESULTS}/structures"
STRUCT_CRYSTAL_PHASES = [p for p in config["structures"]["phases"] if p != "amorphous"]


rule structures_crystals:
    output:
        md_cells=expand(f"{STRUCT}/md_cells/{{phase}}.extxyz", phase=STRUCT_CRYSTAL_PHASES),
        dft=f"{STRUCT}/intermediate/crystals_dft.extxyz",
    params:
        settings=lambda wc: get_settings("structures"),
        seed=config["seed"],
        outdir=lambda wc, output: os.path.dirname(os.path.dirname(output.dft)),
    log:
        f"{LOGS}/structures/crystals.log",
    benchmark:
        f"{BENCH}/structures/crystals.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: 1
    resources:
        runtime=10,
        mem_mb=2000,
        cpus_per_task=1,
        tasks=1,
    shell:
        "bornfield structures crystals --settings {params.settings} --seed {params.seed}"
        " --outdir {params.outdir} > {log} 2>&1"


STAGE_TARGETS["structures"] = lambda: [*rules.structures_crystals.output]
