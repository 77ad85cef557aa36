# TRAIN stage: split, committees of NN potentials / equivariant Born models / paper-style
# baseline per dataset generation, and their test-set evaluation.
# Generic in `gen` so the active-learning loop can ask for later generations.

MODELS = f"{RESULTS}/models"


# committee member indices per model kind, and the baseline's field-axis letter
TRAIN = SETTINGS.train
TRAIN_MEMBERS = {
    kind: list(range(TRAIN[kind]["committee"])) for kind in ("potential", "born", "baseline")
}
BASELINE_AXIS = "xyz"[TRAIN.baseline.field_axis]
BASELINE_ON = TRAIN.baseline.enabled
# pre-training of each potential member on other labels (train.potential.pretrain.dataset)
PRETRAIN = TRAIN.potential.pretrain.dataset
# the potential's Pedone baseline fitted to the first generation's training forces (baseline: pedone_fitted)
PAIR_BASELINE = f"{MODELS}/pair_baseline.json" if TRAIN.potential.baseline == "pedone_fitted" else None


rule train_split:
    wildcard_constraints:
        gen=r"\d+",
    input:
        dataset=f"{RESULTS}/dataset/gen{{gen}}.extxyz",
    output:
        split=f"{MODELS}/gen{{gen}}/split.json",
    params:
        settings=lambda wc: settings_arg("train split"),
    log:
        f"{LOGS}/train/gen{{gen}}/split.log",
    benchmark:
        f"{BENCH}/train/gen{{gen}}/split.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: 1
    resources:
        runtime=5,
        mem_mb=1000,
        cpus_per_task=1,
        tasks=1,
    shell:
        "bornfield train split --settings {params.settings}"
        " --dataset {input.dataset} --output {output.split} > {log} 2>&1"


rule train_fit_baseline:
    input:
        dataset=f"{RESULTS}/dataset/gen0.extxyz",
        split=f"{MODELS}/gen0/split.json",
    output:
        fitted=f"{MODELS}/pair_baseline.json",
    params:
        settings=lambda wc: settings_arg("train fit-baseline"),
    log:
        f"{LOGS}/train/pair_baseline.log",
    benchmark:
        f"{BENCH}/train/pair_baseline.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: 1
    resources:
        runtime=30,
        mem_mb=4000,
        cpus_per_task=1,
        tasks=1,
    shell:
        "bornfield train fit-baseline --settings {params.settings}"
        " --dataset {input.dataset} --split-file {input.split} --output {output.fitted} > {log} 2>&1"


rule train_pretrain:
    wildcard_constraints:
        member=r"\d+",
    input:
        dataset=PRETRAIN or [],
        pair_baseline=PAIR_BASELINE or [],
    output:
        model=f"{MODELS}/pretrain/potential_{{member}}.pt",
    params:
        settings=lambda wc: settings_arg("train pretrain"),
        outdir=lambda wc, output: os.path.dirname(output.model),
        pair_baseline=f" --pair-baseline {PAIR_BASELINE}" if PAIR_BASELINE else "",
    log:
        f"{LOGS}/train/pretrain/potential_{{member}}.log",
    benchmark:
        f"{BENCH}/train/pretrain/potential_{{member}}.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: TRAIN.threads
    resources:
        runtime=480,
        mem_mb=6000,
        cpus_per_task=TRAIN.threads,
        tasks=1,
    shell:
        "bornfield train pretrain --settings {params.settings}"
        " --output-dir {params.outdir} --member {wildcards.member}{params.pair_baseline} > {log} 2>&1"


rule train_potential:
    wildcard_constraints:
        gen=r"\d+",
        member=r"\d+",
    input:
        dataset=f"{RESULTS}/dataset/gen{{gen}}.extxyz",
        split=f"{MODELS}/gen{{gen}}/split.json",
        pretrained=lambda wc: [f"{MODELS}/pretrain/potential_{wc.member}.pt"] if PRETRAIN else [],
        pair_baseline=PAIR_BASELINE or [],
    output:
        model=f"{MODELS}/gen{{gen}}/potential_{{member}}.pt",
    params:
        settings=lambda wc: settings_arg("train potential"),
        outdir=lambda wc: f"{MODELS}/gen{wc.gen}",
        init=lambda wc, input: (f" --init-model {input.pretrained}" if PRETRAIN else "")
        + (f" --pair-baseline {PAIR_BASELINE}" if PAIR_BASELINE else ""),
    log:
        f"{LOGS}/train/gen{{gen}}/potential_{{member}}.log",
    benchmark:
        f"{BENCH}/train/gen{{gen}}/potential_{{member}}.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: TRAIN.threads
    resources:
        runtime=240,
        mem_mb=4000,
        cpus_per_task=TRAIN.threads,
        tasks=1,
    shell:
        "bornfield train potential --settings {params.settings}"
        " --dataset {input.dataset} --output-dir {params.outdir} --member {wildcards.member}"
        "{params.init} > {log} 2>&1"


rule train_born:
    wildcard_constraints:
        gen=r"\d+",
        member=r"\d+",
    input:
        dataset=f"{RESULTS}/dataset/gen{{gen}}.extxyz",
        split=f"{MODELS}/gen{{gen}}/split.json",
    output:
        model=f"{MODELS}/gen{{gen}}/born_{{member}}.pt",
    params:
        settings=lambda wc: settings_arg("train born"),
        outdir=lambda wc: f"{MODELS}/gen{wc.gen}",
    log:
        f"{LOGS}/train/gen{{gen}}/born_{{member}}.log",
    benchmark:
        f"{BENCH}/train/gen{{gen}}/born_{{member}}.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: TRAIN.threads
    resources:
        runtime=240,
        mem_mb=4000,
        cpus_per_task=TRAIN.threads,
        tasks=1,
    shell:
        "bornfield train born --settings {params.settings}"
        " --dataset {input.dataset} --output-dir {params.outdir} --member {wildcards.member}"
        " > {log} 2>&1"


rule train_baseline:
    input:
        dataset=f"{RESULTS}/dataset/gen{{gen}}.extxyz",
        split=f"{MODELS}/gen{{gen}}/split.json",
    output:
        model=f"{MODELS}/gen{{gen}}/born_row_{{axis}}_{{member}}.pt",
    params:
        settings=lambda wc: settings_arg("train baseline"),
        outdir=lambda wc: f"{MODELS}/gen{wc.gen}",
    wildcard_constraints:
        gen=r"\d+",
        member=r"\d+",
        axis="[xyz]",
    log:
        f"{LOGS}/train/gen{{gen}}/born_row_{{axis}}_{{member}}.log",
    benchmark:
        f"{BENCH}/train/gen{{gen}}/born_row_{{axis}}_{{member}}.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: TRAIN.threads
    resources:
        runtime=240,
        mem_mb=4000,
        cpus_per_task=TRAIN.threads,
        tasks=1,
    shell:
        "bornfield train baseline --settings {params.settings}"
        " --dataset {input.dataset} --output-dir {params.outdir} --member {wildcards.member}"
        " > {log} 2>&1"


rule train_evaluate:
    wildcard_constraints:
        gen=r"\d+",
    input:
        dataset=f"{RESULTS}/dataset/gen{{gen}}.extxyz",
        split=f"{MODELS}/gen{{gen}}/split.json",
        potential=lambda wc: expand(
            f"{MODELS}/gen{wc.gen}/potential_{{i}}.pt", i=TRAIN_MEMBERS["potential"]
        ),
        born=lambda wc: expand(f"{MODELS}/gen{wc.gen}/born_{{i}}.pt", i=TRAIN_MEMBERS["born"]),
        baseline=lambda wc: expand(
            f"{MODELS}/gen{wc.gen}/born_row_{BASELINE_AXIS}_{{i}}.pt",
            i=TRAIN_MEMBERS["baseline"] if BASELINE_ON else [],
        ),
    output:
        records=f"{MODELS}/gen{{gen}}/evaluation.json",
        potential_png=report(
            f"{MODELS}/gen{{gen}}/evaluation_potential_parity.png",
            caption="../report/train.rst",
            category="Models",
        ),
        born_png=report(
            f"{MODELS}/gen{{gen}}/evaluation_born_parity.png",
            caption="../report/train.rst",
            category="Models",
        ),
    params:
        baseline=lambda wc, input: files_option("--baseline", input.baseline),
    log:
        f"{LOGS}/train/gen{{gen}}/evaluate.log",
    benchmark:
        f"{BENCH}/train/gen{{gen}}/evaluate.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: 1
    resources:
        runtime=30,
        mem_mb=4000,
        cpus_per_task=1,
        tasks=1,
    shell:
        "bornfield train evaluate --dataset {input.dataset} --split {input.split} --subset test"
        " --potential {input.potential} --born {input.born} {params.baseline}"
        " --output {output.records} > {log} 2>&1"


# Active learning: generation g >= 1 gets its DFT candidates from exploration MD with the
# generation g-1 committees, picked by committee disagreement (the DFT stage reads
# active_learning/gen<g>/candidates.extxyz).
AL = f"{RESULTS}/active_learning"


rule train_explore:
    wildcard_constraints:
        gen=r"[1-9]\d*",
    input:
        structures=f"{RESULTS}/structures/dft_candidates.extxyz",
        potential=lambda wc: expand(
            f"{MODELS}/gen{int(wc.gen) - 1}/potential_{{i}}.pt", i=TRAIN_MEMBERS["potential"]
        ),
        born=lambda wc: expand(
            f"{MODELS}/gen{int(wc.gen) - 1}/born_{{i}}.pt", i=TRAIN_MEMBERS["born"]
        ),
    output:
        samples=f"{AL}/gen{{gen}}/samples.extxyz",
        report=f"{AL}/gen{{gen}}/exploration.json",
    params:
        settings=lambda wc: settings_arg("train explore"),
    log:
        f"{LOGS}/train/gen{{gen}}/explore.log",
    benchmark:
        f"{BENCH}/train/gen{{gen}}/explore.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: TRAIN.threads
    resources:
        runtime=240,
        mem_mb=4000,
        cpus_per_task=TRAIN.threads,
        tasks=1,
    shell:
        "bornfield train explore --settings {params.settings}"
        " --structures {input.structures} --potential {input.potential} --born {input.born}"
        " --generation {wildcards.gen} --output {output.samples} --report-json {output.report}"
        " --no-progress > {log} 2>&1"


rule train_select:
    wildcard_constraints:
        gen=r"[1-9]\d*",
    input:
        samples=f"{AL}/gen{{gen}}/samples.extxyz",
        potential=lambda wc: expand(
            f"{MODELS}/gen{int(wc.gen) - 1}/potential_{{i}}.pt", i=TRAIN_MEMBERS["potential"]
        ),
        born=lambda wc: expand(
            f"{MODELS}/gen{int(wc.gen) - 1}/born_{{i}}.pt", i=TRAIN_MEMBERS["born"]
        ),
    output:
        candidates=f"{AL}/gen{{gen}}/candidates.extxyz",
        report=f"{AL}/gen{{gen}}/selection.json",
    params:
        settings=lambda wc: settings_arg("train select"),
    log:
        f"{LOGS}/train/gen{{gen}}/select.log",
    benchmark:
        f"{BENCH}/train/gen{{gen}}/select.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: 1
    resources:
        runtime=30,
        mem_mb=4000,
        cpus_per_task=1,
        tasks=1,
    shell:
        "bornfield train select --settings {params.settings} --candidates {input.samples}"
        " --potential {input.potential} --born {input.born} --generation {wildcards.gen}"
        " --output {output.candidates} --report-json {output.report} > {log} 2>&1"


rule train_al_report:
    wildcard_constraints:
        gen=r"[1-9]\d*",
    input:
        dataset=f"{RESULTS}/dataset/gen{{gen}}.extxyz",
        potential=lambda wc: expand(
            f"{MODELS}/gen{int(wc.gen) - 1}/potential_{{i}}.pt", i=TRAIN_MEMBERS["potential"]
        ),
        born=lambda wc: expand(
            f"{MODELS}/gen{int(wc.gen) - 1}/born_{{i}}.pt", i=TRAIN_MEMBERS["born"]
        ),
    output:
        records=f"{AL}/gen{{gen}}/previous_models_on_new_data.json",
    log:
        f"{LOGS}/train/gen{{gen}}/al_report.log",
    benchmark:
        f"{BENCH}/train/gen{{gen}}/al_report.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: 1
    resources:
        runtime=30,
        mem_mb=4000,
        cpus_per_task=1,
        tasks=1,
    shell:
        "bornfield train evaluate --dataset {input.dataset} --dft-generation {wildcards.gen}"
        " --potential {input.potential} --born {input.born} --output {output.records}"
        " --notes 'generation-{wildcards.gen} structures (chosen by committee disagreement)"
        " predicted by the generation-(gen-1) committees' > {log} 2>&1"


# every generation's evaluation (gen >= 1 pulls in exploration, selection, DFT and dataset)
STAGE_TARGETS["train"] = lambda: [
    f"{MODELS}/gen{g}/evaluation.json"
    for g in range(TRAIN.active_learning.generations)
] + [
    f"{AL}/gen{g}/previous_models_on_new_data.json"
    for g in range(1, TRAIN.active_learning.generations)
]


# train.ship_to: the generation-0 committees as a committed model set (`make models`)
if TRAIN.ship_to:

    rule ship_models:
        input:
            dataset=f"{RESULTS}/dataset/gen0.extxyz",
            split=f"{MODELS}/gen0/split.json",
            potential=expand(f"{MODELS}/gen0/potential_{{i}}.pt", i=TRAIN_MEMBERS["potential"]),
            born=expand(f"{MODELS}/gen0/born_{{i}}.pt", i=TRAIN_MEMBERS["born"]),
            baseline=expand(
                f"{MODELS}/gen0/born_row_{BASELINE_AXIS}_{{i}}.pt",
                i=TRAIN_MEMBERS["baseline"] if BASELINE_ON else [],
            ),
        output:
            manifest=f"{TRAIN.ship_to}/manifest.json",
        params:
            ledger=(
                f"--ledger {SETTINGS.dft['ledger']}" if SETTINGS.dataset["source"] == "ledger" else ""
            ),
            outdir=lambda wc, output: os.path.dirname(output.manifest),
            baseline=lambda wc, input: files_option("--baseline", input.baseline),
        log:
            f"{LOGS}/train/ship_models.log",
        conda:
            "../../envs/bornfield.yaml"
        threads: 1
        resources:
            runtime=30,
            mem_mb=4000,
            cpus_per_task=1,
            tasks=1,
        shell:
            "bornfield train ship --dataset {input.dataset} --split {input.split} {params.ledger}"
            " --potential {input.potential}"
            " --born {input.born} {params.baseline} --output-dir {params.outdir} > {log} 2>&1"
