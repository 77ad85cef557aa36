"""The Snakemake campaign: lint, dry runs on every shipped config, a real tiny run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
CONFIGS = ["config/config.yaml", "config/chain.yaml", "config/reference.yaml", "config/stability.yaml", "config/paper.yaml", ".test/config.yaml"]


def snakemake(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    return subprocess.run(
        [SNAKEMAKE, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.mark.parametrize("config", ["config/config.yaml", "config/chain.yaml", "config/models.yaml"])
def test_lint_is_clean(config):
    result = snakemake("--lint", "--configfile", config)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Lints for" not in output, output


@pytest.mark.parametrize("config", CONFIGS)
def test_dry_run(config, tmp_path):
    result = snakemake(
        "-n", "--configfile", config, "--config", f"results_dir={tmp_path}/results", "--quiet", "rules"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_invalid_config_fails_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("results_dir: results\nseed: -3\n")
    result = snakemake("-n", "--configfile", str(bad))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "seed" in output


