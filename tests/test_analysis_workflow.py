"""The analysis/figures rules in a Snakemake DAG (with a stand-in for the MD stage)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from bornfield.analysis.synthetic import write_synthetic_condition
from bornfield.md.conditions import expand_conditions

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

SNAKEFILE = """
configfile: "config.yaml"

report: "{repo}/workflow/report/workflow.rst"

include: "{repo}/workflow/rules/common.smk"


rule md_condition:
    output:
        summary=f"{{RESULTS}}/md/{{{{condition}}}}/summary.json",
    log:
        f"{{LOGS}}/md/{{{{condition}}}}.log",
    shell:
        "exit 1"


STAGE_TARGETS["md"] = lambda: []

include: "{repo}/workflow/rules/analysis.smk"
include: "{repo}/workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_targets(),
"""


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    return subprocess.run([SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True, env=env, timeout=300, check=False)


def test_figures_target_needs_only_analysis_jobs_when_md_is_done(tmp_path):
    config = {
        "results_dir": "results",
        "structures": {},
        "md": {"sweep": {"phases": ["amorphous"], "temperatures_K": [700, 900],
                         "field_strengths_V_per_A": [0.0, 0.1], "field_directions": ["x"], "replicas": 2}},
        "analysis": {"figures": {"formats": ["png"]}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(repo=REPO))
    from bornfield.config import validate_section

    conditions = expand_conditions(validate_section(config["md"], "md"))
    assert len(conditions) == 4
    for condition in conditions:
        write_synthetic_condition(tmp_path / "results/md" / condition.name, n_replicas=2, n_frames=40,
                                  field_V_per_A=condition.field_V_per_A, n_formula_units=2)
    result = _snakemake(tmp_path, "figures", "-n", "--quiet", "rules")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    jobs = {line.split()[0]: int(line.split()[1]) for line in output.splitlines()
            if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert jobs.get("analyze_condition") == 4, output
    assert jobs.get("analyze_sweep") == 1 and jobs.get("figures") == 1, output
    assert "md_condition" not in jobs, output  # the stand-in would fail: MD is never re-run
    lint = _snakemake(tmp_path, "--lint")
    lints = lint.stdout + lint.stderr
    for rule in ("analyze_condition", "analyze_sweep", "figures"):
        assert f"Lints for rule {rule} " not in lints, lints
