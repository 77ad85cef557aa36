# FIGURES and REPORT: rule `figures` draws every figure in one job from the stored
# analysis results (JSON/CSV) only, so `snakemake figures` never needs DFT, training
# or MD when the analysis results are up to date. Redraw everything (e.g. after a
# style change) with: snakemake figures --forcerun figures
FIGURES = f"{RESULTS}/figures"
FIGURE_FORMATS = ANALYSIS_SETTINGS["figures"]["formats"]
SWEEP_FIGURES = {
    "sweep_msd_vs_field": "../report/figure_sweep_msd.rst",
    "mobility_vs_field": "../report/figure_mobility.rst",
    "transverse_forces": "../report/figure_transverse.rst",
    "arrhenius": "../report/figure_arrhenius.rst",
}


# (figure path stem, caption, report subcategory, report labels)
FIGURE_SPECS = [
    (
        f"{FIGURES}/condition_{name}",
        "../report/figure_condition.rst",
        "Conditions",
        {"condition": name},
    )
    for name in ANALYSIS_CONDITIONS
] + [
    (f"{FIGURES}/{name}", caption, "Sweep", {"figure": name})
    for name, caption in SWEEP_FIGURES.items()
]
FIGURE_FILES = [f"{stem}.{fmt}" for stem, *_ in FIGURE_SPECS for fmt in FIGURE_FORMATS]
# the PNGs go into the report with their captions; other formats are plain outputs
# (a line must not start with "report(": Snakemake would read it as the report: keyword)
FIGURE_OUTPUTS = [
    f"{stem}.{fmt}" if fmt != "png" else report(
        f"{stem}.{fmt}",
        caption=caption,
        category="Figures",
        subcategory=subcategory,
        labels=labels,
    )
    for stem, caption, subcategory, labels in FIGURE_SPECS
    for fmt in FIGURE_FORMATS
]


rule figures:
    input:
        records=ANALYSIS_RECORDS,
        linear_response=ANALYSIS_SWEEP_TABLES["linear_response"],
        arrhenius=f"{ANALYSIS}/arrhenius.json",
    output:
        FIGURE_OUTPUTS,
    params:
        settings=lambda wc: settings_arg("plot"),
        analysis_dir=lambda wc, input: os.path.dirname(input.arrhenius),
        figures_dir=lambda wc, output: os.path.dirname(output[0]),
    log:
        f"{LOGS}/figures/figures.log",
    benchmark:
        f"{BENCH}/figures/figures.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: 1
    resources:
        runtime=10,
        mem_mb=2000,
        cpus_per_task=1,
        tasks=1,
    shell:
        "bornfield plot all --analysis-dir {params.analysis_dir} --records {input.records}"
        " --output-dir {params.figures_dir} --settings {params.settings} > {log} 2>&1"


STAGE_TARGETS["figures"] = lambda: FIGURE_FILES if STAGE_TARGETS["analysis"]() else []
