# DATASET stage: gather the DFT labels of generations 0..k into dataset/gen{k}.extxyz + report.
# Generic in `gen` so the active-learning loop can ask for later generations.

DATASET = f"{RESULTS}/dataset"


# dataset.source = ledger: generation 0 is the label ledger's entries (their info['split'] is the split)
if SETTINGS.dataset["source"] == "ledger":

    rule dataset_from_ledger:
        input:
            # every finished entry: a new one re-exports the dataset (and retrains)
            ledger=f"{SETTINGS.dft['ledger']}/ledger.json",
            entries=sorted(
                str(p) for p in Path(SETTINGS.dft["ledger"]).glob("entries/*/entry.extxyz")
            ),
        output:
            extxyz=f"{DATASET}/gen0.extxyz",
            report_json=f"{DATASET}/report/gen0.json",
            report_png=report(
                f"{DATASET}/report/gen0.png",
                caption="../report/dataset.rst",
                category="Dataset",
            ),
        params:
            ledger=lambda wc, input: os.path.dirname(input.ledger),
        log:
            f"{LOGS}/dataset/gen0.log",
        benchmark:
            f"{BENCH}/dataset/gen0.tsv"
        conda:
            "../../envs/bornfield.yaml"
        threads: 1
        resources:
            runtime=10,
            mem_mb=2000,
            cpus_per_task=1,
            tasks=1,
        shell:
            "(bornfield ledger export --ledger {params.ledger} --output {output.extxyz}"
            " && bornfield dataset report --ledger {params.ledger}"
            " --report-json {output.report_json} --report-png {output.report_png}) > {log} 2>&1"

    ruleorder: dataset_from_ledger > dataset_assemble


rule dataset_assemble:
    input:
        labels=lambda wc: get_dft_labels(wc.gen),
        plans=lambda wc: [f"{DFT}/gen{g}/plan.json" for g in range(int(wc.gen) + 1)],
    output:
        extxyz=f"{DATASET}/gen{{gen}}.extxyz",
        report_json=f"{DATASET}/report/gen{{gen}}.json",
        report_png=report(
            f"{DATASET}/report/gen{{gen}}.png",
            caption="../report/dataset.rst",
            category="Dataset",
        ),
    params:
        settings=lambda wc: settings_arg("dataset assemble"),
        jobs_dir=f"{DFT}/jobs",  # where get_dft_labels finds every job
    log:
        f"{LOGS}/dataset/gen{{gen}}.log",
    benchmark:
        f"{BENCH}/dataset/gen{{gen}}.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: 1
    resources:
        runtime=10,
        mem_mb=2000,
        cpus_per_task=1,
        tasks=1,
    shell:
        "bornfield dataset assemble --settings {params.settings} --plans {input.plans}"
        " --jobs-dir {params.jobs_dir} --output {output.extxyz}"
        " --report-json {output.report_json} --report-png {output.report_png} > {log} 2>&1"


STAGE_TARGETS["dataset"] = lambda: [f"{DATASET}/gen0.extxyz", f"{DATASET}/report/gen0.json"]
