# FIGURES and REPORT: every figure is drawn from stored analysis results (JSON/CSV)
# only, so `snakemake figures` never needs DFT, training or MD to re-run when the
# analysis results are up to date. Force a redraw of all figures (e.g. after a style
# change) with: snakemake figures --forcerun plot_condition plot_sweep
FIGURES = f"{RESULTS}/figures"
FIGURE_FORMATS = ANALYSIS_SETTINGS["figures"]["formats"]
SWEEP_FIGURES = ["sweep_msd_vs_field", "mobility_vs_field", "transverse_forces", "arrhenius"]


rule plot_condition:
    input:
        record=f"{ANALYSIS}/{{condition}}.json",
    output:
        png=report(
            f"{FIGURES}/condition_{{condition}}.png",
            caption="../report/figure_condition.rst",
            category="Figures",
            subcategory="Conditions",
            labels={"condition": "{condition}"},
        ),
        other=[
            f"{FIGURES}/condition_{{condition}}.{fmt}"
            for fmt in FIGURE_FORMATS
            if fmt != "png"
        ],
    wildcard_constraints:
        condition=ANALYSIS_CONDITION_REGEX,
    params:
        settings=lambda wc: get_settings("analysis"),
        stem=lambda wc, output: os.path.splitext(output.png)[0],
    log:
        f"{LOGS}/figures/condition_{{condition}}.log",
    benchmark:
        f"{BENCH}/figures/condition_{{condition}}.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: 1
    resources:
        runtime=5,
        mem_mb=2000,
        cpus_per_task=1,
        tasks=1,
    shell:
        "bornfield plot condition {input.record} --output-stem {params.stem}"
        " --settings {params.settings} > {log} 2>&1"


rule plot_sweep:
    input:
        records=get_analysis_records,
        linear_response=ANALYSIS_SWEEP_TABLES["linear_response"],
        arrhenius=f"{ANALYSIS}/arrhenius.json",
    output:
        msd=report(
            f"{FIGURES}/sweep_msd_vs_field.png",
            caption="../report/figure_sweep_msd.rst",
            category="Figures",
            subcategory="Sweep",
        ),
        mobility=report(
            f"{FIGURES}/mobility_vs_field.png",
            caption="../report/figure_mobility.rst",
            category="Figures",
            subcategory="Sweep",
        ),
        transverse=report(
            f"{FIGURES}/transverse_forces.png",
            caption="../report/figure_transverse.rst",
            category="Figures",
            subcategory="Sweep",
        ),
        arrhenius=report(
            f"{FIGURES}/arrhenius.png",
            caption="../report/figure_arrhenius.rst",
            category="Figures",
            subcategory="Sweep",
        ),
        other=[
            f"{FIGURES}/{name}.{fmt}"
            for name in SWEEP_FIGURES
            for fmt in FIGURE_FORMATS
            if fmt != "png"
        ],
    params:
        settings=lambda wc: get_settings("analysis"),
        outdir=lambda wc, output: os.path.dirname(output.msd),
    log:
        f"{LOGS}/figures/sweep.log",
    benchmark:
        f"{BENCH}/figures/sweep.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: 1
    resources:
        runtime=5,
        mem_mb=2000,
        cpus_per_task=1,
        tasks=1,
    shell:
        "bornfield plot sweep --records {input.records}"
        " --linear-response {input.linear_response} --arrhenius {input.arrhenius}"
        " --output-dir {params.outdir} --settings {params.settings} > {log} 2>&1"


def get_figure_targets():
    if not get_analysis_targets():
        return []
    return [
        f"{FIGURES}/condition_{name}.{fmt}"
        for name in ANALYSIS_CONDITIONS
        for fmt in FIGURE_FORMATS
    ] + [f"{FIGURES}/{name}.{fmt}" for name in SWEEP_FIGURES for fmt in FIGURE_FORMATS]


rule figures:
    input:
        lambda wc: get_figure_targets(),


STAGE_TARGETS["figures"] = get_figure_targets
