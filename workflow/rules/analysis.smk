# ANALYSIS stage: one job per MD condition (all completed replicas), then the sweep
# tables and Arrhenius fits over all conditions. Outputs under {RESULTS}/analysis/
# (docs/architecture.md, Files table). Conditions come from the md section via
# bornfield.md.conditions.expand_conditions, so names are never parsed back.
import os
import re

from bornfield.md.conditions import expand_conditions

ANALYSIS = f"{RESULTS}/analysis"
ANALYSIS_SETTINGS = SETTINGS.analysis
# the same conditions as the md rules
ANALYSIS_CONDITIONS = [c.name for c in expand_conditions(SETTINGS.md)]
# only names of configured conditions match (keeps sweep/arrhenius files unambiguous)
ANALYSIS_CONDITION_REGEX = (
    "|".join(re.escape(name) for name in ANALYSIS_CONDITIONS) or "(?!x)x"
)
ANALYSIS_SWEEP_TABLES = {
    "transport": f"{ANALYSIS}/sweep_transport.csv",
    "transverse": f"{ANALYSIS}/sweep_transverse.csv",
    "linear_response": f"{ANALYSIS}/sweep_linear_response.csv",
    "arrhenius_csv": f"{ANALYSIS}/arrhenius.csv",
    "claims_md": f"{ANALYSIS}/claims.md",
}


# every configured condition's record (the inputs of the sweep and of the figures)
ANALYSIS_RECORDS = [f"{ANALYSIS}/{name}.json" for name in ANALYSIS_CONDITIONS]


rule analyze_condition:
    input:
        summary=f"{RESULTS}/md/{{condition}}/summary.json",
    output:
        json=f"{ANALYSIS}/{{condition}}.json",
        msd=report(
            f"{ANALYSIS}/{{condition}}_msd.csv",
            caption="../report/analysis_msd_table.rst",
            category="Analysis",
            subcategory="MSD tables",
            labels={"condition": "{condition}"},
        ),
    wildcard_constraints:
        condition=ANALYSIS_CONDITION_REGEX,
    params:
        settings=lambda wc: settings_arg("analyze condition"),
        condition_dir=lambda wc, input: os.path.dirname(input.summary),
    log:
        f"{LOGS}/analysis/{{condition}}.log",
    benchmark:
        f"{BENCH}/analysis/{{condition}}.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: 1
    resources:
        runtime=60,
        mem_mb=8000,
        cpus_per_task=1,
        tasks=1,
    shell:
        "bornfield analyze condition {params.condition_dir} --output {output.json}"
        " --msd-csv {output.msd} --settings {params.settings} > {log} 2>&1"


rule analyze_sweep:
    input:
        records=ANALYSIS_RECORDS,
    output:
        transport=report(
            ANALYSIS_SWEEP_TABLES["transport"],
            caption="../report/analysis_sweep_transport.rst",
            category="Analysis",
            subcategory="Sweep tables",
        ),
        transverse=report(
            ANALYSIS_SWEEP_TABLES["transverse"],
            caption="../report/analysis_sweep_transverse.rst",
            category="Analysis",
            subcategory="Sweep tables",
        ),
        linear_response=report(
            ANALYSIS_SWEEP_TABLES["linear_response"],
            caption="../report/analysis_linear_response.rst",
            category="Analysis",
            subcategory="Sweep tables",
        ),
        arrhenius_json=f"{ANALYSIS}/arrhenius.json",
        arrhenius_csv=report(
            ANALYSIS_SWEEP_TABLES["arrhenius_csv"],
            caption="../report/analysis_arrhenius_table.rst",
            category="Analysis",
            subcategory="Sweep tables",
        ),
        claims_json=f"{ANALYSIS}/claims.json",
        claims_md=report(
            ANALYSIS_SWEEP_TABLES["claims_md"],
            caption="../report/analysis_claims.rst",
            category="Analysis",
            subcategory="Paper claims",
        ),
    params:
        settings=lambda wc: settings_arg("analyze sweep"),
        outdir=lambda wc, output: os.path.dirname(output.transport),
    log:
        f"{LOGS}/analysis/sweep.log",
    benchmark:
        f"{BENCH}/analysis/sweep.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: 1
    resources:
        runtime=10,
        mem_mb=2000,
        cpus_per_task=1,
        tasks=1,
    shell:
        "bornfield analyze sweep {input.records} --output-dir {params.outdir}"
        " --settings {params.settings} > {log} 2>&1"


# analysis needs the md rules (md/<condition>/summary.json): no targets without them
STAGE_TARGETS["analysis"] = lambda: (
    ANALYSIS_RECORDS + list(ANALYSIS_SWEEP_TABLES.values())
    if ANALYSIS_CONDITIONS and "md" in STAGE_TARGETS
    else []
)
