# Provenance of the results tree (bornfield.provenance): bornfield version and git commit,
# versions of QE, torch, e3nn, ASE, LAMMPS, MPI and Snakemake, the host, the validated config
# and the seeds. It needs every other final target, so it describes the software that
# finished the campaign, and it is written again whenever one of them is.


rule provenance:
    input:
        lambda wc: get_final_targets(skip=("provenance",)),
    output:
        record=f"{RESULTS}/provenance.json",
    params:
        config=lambda wc: settings_arg("provenance"),
    log:
        f"{LOGS}/provenance.log",
    benchmark:
        f"{BENCH}/provenance.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: 1
    resources:
        runtime=5,
        mem_mb=1000,
        cpus_per_task=1,
        tasks=1,
    shell:
        "bornfield provenance --settings {params.config} --output {output.record} > {log} 2>&1"


STAGE_TARGETS["provenance"] = lambda: [f"{RESULTS}/provenance.json"]
