# STRUCTURES stage: crystals/defects, one melt-quench per amorphous cell (kind, seed index),
# gathering into the stage's final files, potential check and structure reports.
# Outputs under {RESULTS}/structures/ (docs/architecture.md, Files table).
import os

from bornfield.structures.cli import (
    AMORPHOUS_CLASSICAL,
    AMORPHOUS_MD_CELLS,
    classical_md_cells_path,
)

STRUCT = f"{RESULTS}/structures"
STRUCT_CFG = SETTINGS.structures
STRUCT_CRYSTAL_PHASES = [p for p in STRUCT_CFG["phases"] if p != "amorphous"]
STRUCT_AMORPHOUS = {
    # no DFT cells when a model set drives the MD (nothing is labelled)
    "dft": [] if SETTINGS.md["models"] else list(range(STRUCT_CFG["amorphous"]["dft_cells"]["seeds"])),
    "md": (
        list(range(STRUCT_CFG["amorphous"]["md_cells"]["seeds"]))
        if "amorphous" in STRUCT_CFG["phases"]
        else []
    ),
}
STRUCT_AMORPHOUS_CELL_ATOMS = STRUCT_CFG["amorphous"]["md_cells"]["n_atoms"]
STRUCT_AMORPHOUS_FILES = [
    f"{STRUCT}/amorphous/{kind}_{seed}.extxyz"
    for kind, seeds in STRUCT_AMORPHOUS.items()
    for seed in seeds
]
# report sets: every MD phase, plus the small amorphous DFT cells when there are any
STRUCT_REPORT_SETS = list(STRUCT_CFG["phases"]) + (
    ["amorphous_dft"] if STRUCT_AMORPHOUS["dft"] else []
)
STRUCT_LAMMPS_RANKS = STRUCT_CFG["amorphous"]["lammps"]["ranks"]
# NN re-equilibration of the amorphous MD cells (structures.amorphous.nn_equilibration):
# gather then writes the classical cells to intermediate/, rule structures_nn_equilibrate
# makes md_cells/amorphous.extxyz with the MD's potentials; disabled, the DAG is the classical one
STRUCT_NN = STRUCT_CFG["amorphous"]["nn_equilibration"]
STRUCT_NN_ON = bool(STRUCT_NN["enabled"] and STRUCT_AMORPHOUS["md"])
STRUCT_NN_MODELS = (
    SETTINGS.md["models"] or f"{RESULTS}/models/gen{SETTINGS.md['model_generation']}"
)
if STRUCT_NN_ON:
    STRUCT_REPORT_SETS.append("amorphous_classical")


rule structures_md_cells:
    output:
        md_cells=expand(
            f"{STRUCT}/md_cells/{{phase}}.extxyz", phase=STRUCT_CRYSTAL_PHASES
        ),
    params:
        settings=lambda wc: settings_arg("structures crystals", only="md-cells"),
        outdir=lambda wc, output: STRUCT,
    log:
        f"{LOGS}/structures/md_cells.log",
    benchmark:
        f"{BENCH}/structures/md_cells.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: 1
    resources:
        runtime=10,
        mem_mb=2000,
        cpus_per_task=1,
        tasks=1,
    shell:
        "bornfield structures crystals --only md-cells --settings {params.settings}"
        " --output-dir {params.outdir} > {log} 2>&1"


rule structures_crystals_dft:
    output:
        dft=f"{STRUCT}/intermediate/crystals_dft.extxyz",
    params:
        settings=lambda wc: settings_arg("structures crystals", only="dft"),
        outdir=lambda wc, output: os.path.dirname(os.path.dirname(output.dft)),
    log:
        f"{LOGS}/structures/crystals_dft.log",
    benchmark:
        f"{BENCH}/structures/crystals_dft.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: 1
    resources:
        runtime=10,
        mem_mb=2000,
        cpus_per_task=1,
        tasks=1,
    shell:
        "bornfield structures crystals --only dft --settings {params.settings}"
        " --output-dir {params.outdir} > {log} 2>&1"


rule structures_melt_quench:
    input:
        # the classical potential must first pass the crystal check (--strict below)
        validation=f"{STRUCT}/report/pedone_validation.json",
    output:
        cell=f"{STRUCT}/amorphous/{{kind}}_{{seed}}.extxyz",
        trace=f"{STRUCT}/amorphous/{{kind}}_{{seed}}.json",
    wildcard_constraints:
        kind="dft|md",
        seed=r"\d+",
    params:
        settings=lambda wc: settings_arg("structures melt-quench", kind=wc.kind),
        # one rank: no launcher (the SLURM plugin refuses an MPI job with one task,
        # and profiles give every rule a default `mpi`)
        launch=lambda wc, resources: (
            f"{resources.mpi} -n {resources.tasks}" if resources.tasks > 1 else ""
        ),
    log:
        main=f"{LOGS}/structures/melt_quench_{{kind}}_{{seed}}.log",
        lammps=f"{LOGS}/structures/melt_quench_{{kind}}_{{seed}}.lammps.log",
    benchmark:
        f"{BENCH}/structures/melt_quench_{{kind}}_{{seed}}.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: lambda wc: 1 if wc.kind == "dft" else STRUCT_LAMMPS_RANKS
    # first in line: the amorphous cells' MD waits for it (the campaign's longest chain)
    priority: 10
    resources:
        runtime=lambda wc: 60 if wc.kind == "dft" else 600,
        mem_mb=4000,
        cpus_per_task=1,
        # small DFT cells run on one rank; MD-size cells on amorphous.lammps.ranks
        tasks=lambda wc: 1 if wc.kind == "dft" else STRUCT_LAMMPS_RANKS,
        mpi=lambda wc: (
            STRUCT_CFG["amorphous"]["lammps"]["launcher"]
            if wc.kind != "dft" and STRUCT_LAMMPS_RANKS > 1
            else ""
        ),
    shell:
        "{params.launch} bornfield structures melt-quench"
        " --settings {params.settings} --kind {wildcards.kind}"
        " --index {wildcards.seed} --output {output.cell} --lammps-log {log.lammps}"
        " > {log.main} 2>&1"


rule structures_gather:
    input:
        crystals_dft=rules.structures_crystals_dft.output.dft,
        amorphous=STRUCT_AMORPHOUS_FILES,
    output:
        dft_candidates=f"{STRUCT}/dft_candidates.extxyz",
        md_cells=(
            [f"{STRUCT}/{classical_md_cells_path(STRUCT_CFG)}"]
            if STRUCT_AMORPHOUS["md"]
            else []
        ),
        amorphous_dft=(
            [f"{STRUCT}/intermediate/amorphous_dft.extxyz"]
            if STRUCT_AMORPHOUS["dft"]
            else []
        ),
    params:
        settings=lambda wc: settings_arg("structures gather"),
        # with nn_equilibration the classical MD cells go to intermediate/ (one string: the
        # params of a disabled campaign stay those of before the option existed)
        amorphous=lambda wc, input: files_option("--amorphous", input.amorphous)
        + (f" --md-cells-extxyz {STRUCT}/{AMORPHOUS_CLASSICAL}" if STRUCT_NN_ON else ""),
        outdir=lambda wc, output: os.path.dirname(output.dft_candidates),
    log:
        f"{LOGS}/structures/gather.log",
    benchmark:
        f"{BENCH}/structures/gather.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: 1
    # the amorphous cells' MD waits for it
    priority: 10
    resources:
        runtime=10,
        mem_mb=2000,
        cpus_per_task=1,
        tasks=1,
    shell:
        "bornfield structures gather --settings {params.settings}"
        " --crystals-dft {input.crystals_dft} {params.amorphous}"
        " --output-dir {params.outdir} > {log} 2>&1"


if STRUCT_NN_ON:

    rule structures_nn_equilibrate:
        input:
            cells=f"{STRUCT}/{AMORPHOUS_CLASSICAL}",
            potentials=[
                f"{STRUCT_NN_MODELS}/potential_{i}.pt"
                for i in range(SETTINGS.md["committee_size"])
            ],
        output:
            cells=f"{STRUCT}/{AMORPHOUS_MD_CELLS}",
            trace=f"{STRUCT}/amorphous/nn_equilibration.json",
        params:
            settings=lambda wc: settings_arg("structures nn-equilibrate"),
        log:
            f"{LOGS}/structures/nn_equilibrate.log",
        benchmark:
            f"{BENCH}/structures/nn_equilibrate.tsv"
        conda:
            "../../envs/bornfield.yaml"
        threads: 1
        # the MD of the amorphous cells waits for it
        priority: 10
        resources:
            # ~1.3 CPU-min per ps of a 192-atom cell, 4 members (docs/decisions.md); 3 min/ps for a busy node
            runtime=lambda wc: 10
            + int(
                3
                * (STRUCT_NN["anneal_time_ps"] + STRUCT_NN["final_time_ps"])
                * STRUCT_AMORPHOUS_CELL_ATOMS
                * len(STRUCT_AMORPHOUS["md"])
                / 192
            ),
            mem_mb=4000,
            cpus_per_task=1,
            tasks=1,
        shell:
            "bornfield structures nn-equilibrate --settings {params.settings}"
            " --structures {input.cells} --potential {input.potentials}"
            " --output {output.cells} --report-json {output.trace} --threads 1 --no-progress"
            " > {log} 2>&1"


rule structures_validate_potential:
    output:
        f"{STRUCT}/report/pedone_validation.json",
    params:
        settings=lambda wc: settings_arg("structures validate-potential"),
    log:
        f"{LOGS}/structures/validate_potential.log",
    benchmark:
        f"{BENCH}/structures/validate_potential.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: 1
    # the melt-quench waits for it
    priority: 10
    resources:
        runtime=20,
        mem_mb=2000,
        cpus_per_task=1,
        tasks=1,
    shell:
        "bornfield structures validate-potential --strict --settings {params.settings}"
        " --output {output} > {log} 2>&1"


rule structures_report:
    input:
        lambda wc: (
            f"{STRUCT}/intermediate/amorphous_dft.extxyz"
            if wc.set == "amorphous_dft"
            else (
                f"{STRUCT}/{AMORPHOUS_CLASSICAL}"
                if wc.set == "amorphous_classical"
                else f"{STRUCT}/md_cells/{wc.set}.extxyz"
            )
        ),
    output:
        json=f"{STRUCT}/report/{{set}}.json",
        png=report(
            f"{STRUCT}/report/{{set}}.png",
            caption="../report/structures_set.rst",
            category="Structures",
            labels={"set": "{set}"},
        ),
    wildcard_constraints:
        set="|".join(STRUCT_REPORT_SETS) or "none",
    params:
        settings=lambda wc: settings_arg("structures report"),
    log:
        f"{LOGS}/structures/report_{{set}}.log",
    benchmark:
        f"{BENCH}/structures/report_{{set}}.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: 1
    resources:
        runtime=10,
        mem_mb=2000,
        cpus_per_task=1,
        tasks=1,
    shell:
        "bornfield structures report --settings {params.settings}"
        " --structures {input} --set-name {wildcards.set} --report-json {output.json} --report-png {output.png}"
        " > {log} 2>&1"


STAGE_TARGETS["structures"] = lambda: [
    *rules.structures_md_cells.output.md_cells,
    *rules.structures_gather.output,
    *(rules.structures_nn_equilibrate.output if STRUCT_NN_ON else []),
    *rules.structures_validate_potential.output,
    *expand(f"{STRUCT}/report/{{set}}.{{ext}}", set=STRUCT_REPORT_SETS, ext=["json", "png"]),
]
