# DFT stage: pseudopotentials, a plan per generation (checkpoint), one pw.x + ph.x job per structure.
# Outputs under {RESULTS}/dft/ (see docs/architecture.md, Files table).

import os

DFT = f"{RESULTS}/dft"
DFT_CFG = SETTINGS.dft
DFT_RUN = DFT_CFG["run"]
_dft_pseudo = DFT_CFG["pseudopotentials"]["directory"]
DFT_PSEUDO_DIR = _dft_pseudo if os.path.isabs(_dft_pseudo) else f"{RESULTS}/{_dft_pseudo}"


rule dft_pseudopotentials:
    output:
        manifest=f"{DFT_PSEUDO_DIR}/manifest.json",
    params:
        settings=lambda wc: settings_arg("dft provision"),
        pseudo_dir=lambda wc, output: os.path.dirname(output.manifest),
    log:
        f"{LOGS}/dft/pseudopotentials.log",
    benchmark:
        f"{BENCH}/dft/pseudopotentials.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: 1
    resources:
        runtime=5,
        mem_mb=1000,
        cpus_per_task=1,
        tasks=1,
    shell:
        "bornfield dft provision --settings {params.settings} --pseudo-dir {params.pseudo_dir} > {log} 2>&1"


checkpoint dft_plan:
    input:
        structures=get_dft_candidates,
    output:
        plan=f"{DFT}/gen{{gen}}/plan.json",
    params:
        settings=lambda wc: settings_arg("dft plan"),
        inputs_dir=lambda wc, output: os.path.join(os.path.dirname(os.path.dirname(output.plan)), "inputs"),
    log:
        f"{LOGS}/dft/plan_gen{{gen}}.log",
    benchmark:
        f"{BENCH}/dft/plan_gen{{gen}}.tsv"
    conda:
        "../../envs/bornfield.yaml"
    threads: 1
    resources:
        runtime=5,
        mem_mb=1000,
        cpus_per_task=1,
        tasks=1,
    shell:
        "bornfield dft plan --settings {params.settings} --structures {input.structures}"
        " --inputs-dir {params.inputs_dir} --output {output.plan} --generation {wildcards.gen} > {log} 2>&1"


rule dft_job:
    input:
        structure=f"{DFT}/inputs/{{dft_id}}.extxyz",
        manifest=rules.dft_pseudopotentials.output.manifest,
    output:
        labels=f"{DFT}/jobs/{{dft_id}}/labels.json",
    params:
        # with dft.ledger: a job the ledger holds is taken from it (QE not run)
        settings=lambda wc: settings_arg("dft run", launcher_given=True, ranks_given=True),
        pseudo_dir=lambda wc, input: os.path.dirname(input.manifest),
        jobs_dir=lambda wc, output: os.path.dirname(os.path.dirname(output.labels)),
        # the launcher as ONE shell-quoted argument (it may hold flags, e.g. "srun --mpi=pmix");
        # one rank: '' = pw.x/ph.x run without launcher (no `mpi` resource then)
        launcher=lambda wc, resources: shlex.quote(resources.mpi if resources.tasks > 1 else ""),
        entries_dir=f"{DFT}/entries",
    log:
        f"{LOGS}/dft/job_{{dft_id}}.log",
    benchmark:
        f"{BENCH}/dft/job_{{dft_id}}.tsv"
    conda:
        "../../envs/bornfield.yaml"
    group:
        "dft_jobs"
    threads: DFT_RUN["ranks"]
    resources:
        runtime=DFT_RUN["runtime_min"],
        mem_mb=DFT_RUN["mem_mb"],
        cpus_per_task=1,
        tasks=DFT_RUN["ranks"],
        # an MPI job only with more than one rank: the SLURM plugin refuses `mpi` with one task
        **({"mpi": DFT_RUN["launcher"]} if DFT_RUN["ranks"] > 1 else {}),
    shell:
        "bornfield dft run --settings {params.settings} --structure {input.structure}"
        " --pseudo-dir {params.pseudo_dir} --jobs-dir {params.jobs_dir}"
        " --launcher {params.launcher} --ranks {resources.tasks} --entries-dir {params.entries_dir} > {log} 2>&1"
