"""The SLURM machinery: profiles, and a real run through ``snakemake --executor slurm``.

The end-to-end test starts the single-node cluster of
``scripts/slurm/start-cluster.sh`` itself (root only: it installs packages and
starts munged/slurmctld/slurmd), runs ``tests/data/slurm/Snakefile`` with the
``profiles/slurm-local`` workflow profile and stops the cluster again.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
START = REPO / "scripts" / "slurm" / "start-cluster.sh"
STOP = REPO / "scripts" / "slurm" / "stop-cluster.sh"
SITE_PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
LOCAL_PROFILE = REPO / "profiles" / "slurm-local" / "config.yaml"
TEST_WORKFLOW = REPO / "tests" / "data" / "slurm" / "Snakefile"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

# Keys in which the local test profile may differ from the site profile.
LOCAL_ONLY_KEYS = {
    "jobs",
    "cores",
    "latency-wait",
    "slurm-status-command",
    "slurm-init-seconds-before-status-checks",
}
SITE_RESOURCES = {"slurm_partition", "slurm_account"}


def _load(path: Path) -> dict:
    with path.open() as handle:
        return yaml.safe_load(handle)


# --------------------------------------------------------------- profiles


@pytest.mark.parametrize("profile", [SITE_PROFILE, LOCAL_PROFILE], ids=["slurm", "slurm-local"])
def test_profile_follows_the_resource_conventions(profile: Path) -> None:
    settings = _load(profile)
    assert settings["executor"] == "slurm"
    defaults = settings["default-resources"]
    assert {"slurm_partition", "mem_mb", "runtime"} <= set(defaults)
    # A non-empty `mpi` default would turn every job into an MPI job, which the
    # plugin rejects for tasks == 1; an empty one keeps jobs out of the plugin's
    # `srun -n1` wrapper (stale PMI_* variables break single-process mpi4py).
    assert defaults["mpi"] == "''"
    # tasks/cpus_per_task defaults would be summed over the members of a bundle.
    assert not {"tasks", "cpus_per_task"} & set(defaults)
    # String resources are Python expressions for Snakemake: keep them quoted.
    for key in SITE_RESOURCES | {"mpi"}:
        value = defaults[key]
        assert re.fullmatch(r"'[^']*'", value), f"{profile}: {key}={value!r} must be quoted"
    assert isinstance(defaults["mem_mb"], int) and defaults["mem_mb"] > 0
    assert isinstance(defaults["runtime"], int) and defaults["runtime"] > 0
    components = dict(item.split("=") for item in settings["group-components"])
    assert int(components["dft_jobs"]) > 1
    # a grouped MPI rule must not ask for --cpus-per-task (see the profile's "Groups")
    # (written as the expression "(-1)": Snakemake refuses negative numbers there)
    assert ast.literal_eval(str(settings["set-resources"]["dft_job"]["cpus_per_task"])) < 0


def test_local_profile_differs_from_site_profile_only_in_site_keys() -> None:
    site, local = _load(SITE_PROFILE), _load(LOCAL_PROFILE)
    for key in (set(site) | set(local)) - LOCAL_ONLY_KEYS - {"default-resources"}:
        assert site.get(key) == local.get(key), f"profiles disagree on {key!r}"
    site_defaults, local_defaults = site["default-resources"], local["default-resources"]
    for key in (set(site_defaults) | set(local_defaults)) - SITE_RESOURCES:
        assert site_defaults.get(key) == local_defaults.get(key), f"default-resources.{key}"
    assert local["slurm-status-command"] == "squeue"  # the test cluster has no accounting
    assert local_defaults["slurm_partition"] == "'local'"  # start-cluster.sh's default partition


def test_profile_rule_and_group_names_exist_in_the_workflow() -> None:
    """Snakemake silently ignores unknown rule/group names in a profile: catch typos here."""
    rules, groups = set(), set()
    for smk in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        text = smk.read_text()
        rules.update(re.findall(r"^(?:rule|checkpoint)\s+(\w+)\s*:", text, flags=re.MULTILINE))
        groups.update(re.findall(r"^\s+group:\s*[\"'](\w+)[\"']", text, flags=re.MULTILINE))
    for profile in (SITE_PROFILE, LOCAL_PROFILE):
        settings = _load(profile)
        named = set(settings.get("set-resources") or {})
        assert named <= rules, f"{profile} names unknown rules {sorted(named - rules)}"
        grouped = {item.split("=")[0] for item in settings.get("group-components") or []}
        assert grouped <= groups, f"{profile} names unknown groups {sorted(grouped - groups)}"


def test_generated_slurm_conf_is_consistent() -> None:
    """The scripts parse, and the slurm.conf template sets what the plugin relies on."""
    for script in (START, STOP):
        subprocess.run(["bash", "-n", str(script)], check=True)
        assert os.access(script, os.X_OK), f"{script} is not executable"
    text = START.read_text()
    for setting in (
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "MpiDefault=pmi2",
        "AccountingStorageType=accounting_storage/none",
        "MinJobAge=$MIN_JOB_AGE",
    ):
        assert setting in text
    default_age = re.search(r"MIN_JOB_AGE=\$\{BORNFIELD_SLURM_MIN_JOB_AGE:-(\d+)\}", text)
    assert default_age and int(default_age.group(1)) >= 300


# ------------------------------------------------------------ real cluster


def _slurm_unavailable_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "a SLURM test cluster needs Linux"
    if os.geteuid() != 0:
        return "starting the SLURM test cluster needs root (scripts/slurm/start-cluster.sh)"
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        return "SLURM is not installed and apt-get is unavailable to install it"
    if not SNAKEMAKE.exists():
        return f"snakemake not found next to {sys.executable}"
    return None


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A running single-node SLURM; yields the environment that reaches it."""
    reason = _slurm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    state_dir = Path(os.environ.get("BORNFIELD_SLURM_DIR", "/var/lib/bornfield-slurm"))
    env = dict(os.environ, BORNFIELD_SLURM_DIR=str(state_dir), BORNFIELD_SLURM_PARTITION="local")
    started = subprocess.run(
        ["bash", str(START)], env=env, capture_output=True, text=True, timeout=600
    )
    if started.returncode != 0:
        pytest.fail(f"start-cluster.sh failed:\n{started.stdout}\n{started.stderr}")
    env["SLURM_CONF"] = str(state_dir / "slurm.conf")
    # Stop the cluster afterwards only if this test started it.
    started_here = "starting slurmctld" in started.stdout
    try:
        yield env
    finally:
        if started_here:
            subprocess.run(
                ["bash", str(STOP)], env=env, capture_output=True, text=True, timeout=120
            )


def _mpi_ranks(path: Path) -> list[tuple[int, int, str, str]]:
    """(rank, size, SLURM job id, step id) that each MPI rank printed into ``path``, sorted."""
    lines = [line for line in path.read_text().split("\n") if line]
    pattern = r"rank (\d+) size (\d+) job (\d+) step (\d+|None)"
    found = [re.fullmatch(pattern, line) for line in lines]
    assert all(found), f"{path.name}: {lines}"
    return sorted((int(m[1]), int(m[2]), m[3], m[4]) for m in found)


@pytest.mark.slow
@pytest.mark.timeout(600)  # includes a first-time apt-get install of slurm-wlm + munge
def test_workflow_runs_through_slurm_executor(slurm_cluster: dict, tmp_path: Path) -> None:
    env = slurm_cluster
    sinfo = subprocess.run(
        ["sinfo", "-h", "-o", "%P %t %c"], env=env, capture_output=True, text=True, check=True
    )
    assert re.search(r"^local\*? idle \d+$", sinfo.stdout.strip(), re.MULTILINE), sinfo.stdout

    command = [
        str(SNAKEMAKE),
        "--snakefile", str(TEST_WORKFLOW),
        "--directory", str(tmp_path),
        "--workflow-profile", str(LOCAL_PROFILE.parent),
        "--group-components", "small=3", "dft_jobs=2",
        "--config", f"python={sys.executable}",
    ]  # fmt: skip
    # A waiting Snakemake ignores SIGTERM; SIGINT makes it cancel its jobs and exit.
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
        pytest.fail(f"snakemake did not finish within 180 s:\n{output[-4000:]}")
    assert process.returncode == 0, output[-4000:]

    # The MPI rule: one srun step with 2 PMI-2 ranks that saw each other.
    ranks = _mpi_ranks(tmp_path / "mpi_ranks.txt")
    assert [(rank, size) for rank, size, _, _ in ranks] == [(0, 2), (1, 2)], ranks
    assert len({(job, step) for _, _, job, step in ranks}) == 1, ranks

    # The bundled MPI jobs: one SLURM job, one srun step (2 ranks) per DFT-like job.
    bundle = [_mpi_ranks(tmp_path / "bundle" / f"{item}.txt") for item in range(2)]
    for ranks in bundle:
        assert [(rank, size) for rank, size, _, _ in ranks] == [(0, 2), (1, 2)], ranks
    assert len({job for ranks in bundle for _, _, job, _ in ranks}) == 1, bundle
    assert len({step for ranks in bundle for _, _, _, step in ranks}) == 2, bundle

    # A single-process mpi4py program in a non-MPI job (MPI_Init as a singleton).
    single = _mpi_ranks(tmp_path / "single_rank.txt")
    assert [(rank, size) for rank, size, _, _ in single] == [(0, 1)], single

    # The three grouped jobs ran inside one SLURM job (one submission).
    job_ids = set()
    for item in range(3):
        record = (tmp_path / "small" / f"{item}.txt").read_text()
        match = re.fullmatch(rf"item={item} job=(\d+) host=\S+\n", record)
        assert match, f"small/{item}.txt: {record!r} (not run by SLURM?)"
        job_ids.add(match.group(1))
    assert len(job_ids) == 1, f"grouped jobs ran in SLURM jobs {sorted(job_ids)}"

    assert re.search(r"submitted with SLURM jobid", output), output[-4000:]


# ------------------------------------------------- tiny campaign on the cluster

# Both MPI stages through `srun`: MD with 2 PMI-2 ranks (PyPI MPICH; the two replicas of a
# condition side by side, one rank each), QE with 2 PMIx ranks (Debian's Open MPI). Open MPI's
# own `mpirun` cannot start inside Snakemake's SLURM job steps: the jobstep executor drops the
# SLURM_* variables except the job id, and mpirun then stops for want of SLURM_NODELIST.
# Walltimes: generous, for a loaded machine. Seen here: the two DFT jobs, bundled into one
# SLURM job of 2 x 10 min, hit its time limit under load; SLURM killed the bundle and Snakemake
# deleted the outputs of both jobs, so the retry recomputed the one that had finished.
SLURM_CAMPAIGN_OVERLAY = {
    "md": {"resources": {"tasks": 2, "mpi": "srun --mpi=pmi2", "runtime_min": 60}},
    "dft": {"run": {"launcher": "srun --mpi=pmix", "runtime_min": 60}},
}


@pytest.mark.slow
@pytest.mark.timeout(2400)  # ~10 min on 2 idle cores; generous for a loaded machine
def test_tiny_campaign_runs_end_to_end_through_slurm(slurm_cluster: dict, tmp_path: Path) -> None:
    """`.test/config.yaml` through `--workflow-profile profiles/slurm-local`, every rule a SLURM job."""
    results = tmp_path / "results"
    overlay = tmp_path / "slurm_overlay.yaml"
    overlay.write_text(yaml.safe_dump({"results_dir": str(results), **SLURM_CAMPAIGN_OVERLAY}))
    env = dict(slurm_cluster, PATH=f"{SNAKEMAKE.parent}:{slurm_cluster.get('PATH', '')}")
    base = [
        str(SNAKEMAKE),
        "--workflow-profile", str(LOCAL_PROFILE.parent),
        "--configfile", str(REPO / ".test" / "config.yaml"), str(overlay),
    ]  # fmt: skip
    process = subprocess.Popen(
        [*base, "--slurm-keep-successful-logs"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=2200)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)  # a waiting Snakemake ignores SIGTERM
        output, _ = process.communicate(timeout=120)
        pytest.fail(f"snakemake did not finish within 2200 s:\n{output[-6000:]}")
    (tmp_path / "snakemake.log").write_text(output)
    assert process.returncode == 0, output[-6000:]

    # every job went through SLURM (nothing ran as a local job)
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", output)
    assert len(submitted) >= 10, output[-4000:]
    assert not re.search(r"^local(rule|checkpoint) (?!all:)", output, re.MULTILINE), "a rule ran outside SLURM"
    slurm_logs = "".join(
        path.read_text(errors="replace")
        for job_id in submitted
        for path in (REPO / ".snakemake" / "slurm_logs").rglob(f"{job_id}.log")
    )

    # all final targets exist: a dry run has nothing left to do
    dry = subprocess.run(
        [*base, "-n"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]

    # figures, their analysis inputs and the MD replicas behind them
    figures = sorted((results / "figures").glob("*.png"))
    assert figures and all(path.stat().st_size > 5_000 for path in figures), figures
    records = sorted((results / "analysis").glob("*.json"))
    conditions = sorted(path.parent.name for path in (results / "md").glob("*/summary.json"))
    assert conditions == ["beta_T300K_E0.1_x", "beta_T300K_E0_none"], conditions
    for name in conditions:
        summary = json.loads((results / "md" / name / "summary.json").read_text())
        assert summary["replicas_completed"] == 2, summary["replicas"]
        for replica in (0, 1):
            assert (results / "md" / name / f"replica_{replica}" / "traj.h5").stat().st_size > 0
        # the 2-task MPI job: srun started 2 ranks that formed one communicator
        assert summary["mpi_ranks"] == 2 and summary["ranks_per_replica"] == 1, summary
        log = (results / "logs" / "md" / f"{name}.log").read_text()
        assert "2 replicas on 2 MPI ranks" in log, log[-2000:]
        record = json.loads((results / "analysis" / f"{name}.json").read_text())
        assert record["replicas"]["n_used"] == 2
    assert {path.stem for path in records} >= set(conditions)
    # the srun command line of the MD jobs, as Snakemake ran it inside SLURM
    assert re.search(r"srun --mpi=pmi2 -n 2 bornfield md run", output + slurm_logs), output[-4000:]

    # DFT: both jobs as 2-rank srun steps inside their (bundled) SLURM job
    statuses = [json.loads(p.read_text()) for p in (results / "dft" / "jobs").glob("*/status.json")]
    assert len(statuses) == 2 and all(s["state"] == "completed" for s in statuses), statuses
    assert all(s["launcher"] == "srun --mpi=pmix -n 2" for s in statuses)
    for job in (results / "dft" / "jobs").iterdir():
        for out in ("pw.out", "ph.out"):
            text = (job / out).read_text()
            assert re.search(r"Parallel version \(MPI\), running on\s+2 processors", text), job / out
