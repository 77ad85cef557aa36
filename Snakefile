# bornfield campaign: structures -> DFT/DFPT -> dataset -> NN models -> field MD -> analysis -> report
from snakemake.utils import min_version

min_version("9.0")


# The config is --configfile (config/config.yaml, the demo, without one), every key it leaves
# out at its schema default: see workflow/rules/common.smk and config/README.md.


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/structures.smk"
include: "workflow/rules/dft.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/md.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/provenance.smk"


rule all:
    default_target: True
    input:
        get_final_targets(),
