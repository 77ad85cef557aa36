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


def figure_files(with_report=False):
    """Every figure file; PNGs wrapped in report() (with captions) when asked."""
    files = []
    for name in ANALYSIS_CONDITIONS:
        for fmt in FIGURE_FORMATS:
            path = f"{FIGURES}/condition_{name}.{fmt}"
            if with_report and fmt == "png":
                path = report(
                    path,
                    caption="../report/figure_condition.rst",
                    category="Figures",
                    subcategory="Conditions",
                    labels={"condition": name},
                )
            files.append(path)
    for name, caption in SWEEP_FIGURES.items():
        for fmt in FIGURE_FORMATS:
            path = f"{FIGURES}/{name}.{fmt}"
            if with_report and fmt == "png":
                path = report(
                    path,
                    caption=caption,
                    category="Figures",
                    subcategory="Sweep",
                    labels={"figure": name},
                )
            files.append(path)
    return files


rule figures:
    input:
        records=get_analysis_records,
        linear_response=ANALYSIS_SWEEP_TABLES["linear_response"],
        arrhenius=f"{ANALYSIS}/arrhenius.json",
    output:
        figure_files(with_report=True),
    params:
        settings=lambda wc: get_settings("analysis"),
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
        " --figures-dir {params.figures_dir} --settings {params.settings} > {log} 2>&1"


def get_figure_targets():
    return figure_files() if get_analysis_targets() else []


STAGE_TARGETS["figures"] = get_figure_targets
