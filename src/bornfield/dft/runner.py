"""One DFT job: pw.x SCF (+ ph.x Born charges) in a directory named by its ``dft_id``.

Job directory ``<jobs_dir>/<dft_id>/`` holds ``structure.extxyz``, ``pw.in``,
``pw.out`` (and ``pw.attempt<k>.out`` of failed attempts), ``ph.in``, ``ph.out``,
``status.json`` and, when finished, ``labels.json``.

``status.json``: ``state`` (``running`` | ``scf_done`` | ``interrupted`` | ``completed`` | ``failed``),
``attempts`` (one record per QE run: program, attempt, overrides, outcome, wall time,
peak resident memory of its largest local process), ``wall_time_s``, ``peak_rss_MiB`` (largest
over the job's QE runs), ``qe_version``, ``pseudopotentials`` (file + md5 per element),
``settings``, ``kpoints``, ``failure`` ({stage, class, reason} or null).

Policy:
* finished jobs (``completed``/``failed`` with ``labels.json``) are never recomputed;
* SCF non-convergence is retried with a bounded, logged escalation (lower
  ``mixing_beta``, more iterations, then the other diagonalization);
* ph.x failure is retried once (from scratch); then the job keeps its SCF labels and
  records why the Born charges are missing;
* a job stopped by the walltime resumes from QE restart files: QE stops itself
  cleanly at ``max_seconds`` (state ``interrupted``, :class:`JobInterrupted` raised, the
  CLI exits non-zero so the scheduler's retry resubmits), and the next run starts
  pw.x from the stopped run's charge density or continues ph.x with ``recover=.true.``;
  a hard-killed SCF whose restart files are unusable starts over once;
* a hard-killed ph.x (no clean stop: SIGKILL, node failure) starts over from the SCF: the
  recover files of such a run are not trusted (why: ``docs/decisions.md``).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read, write

from bornfield import atomic
from bornfield.dft.inputs import DFTSettings, PwOverrides, PwVariant, compute_dft_id, write_ph_input, write_pw_input
from bornfield.dft.parsers import apply_asr, classify_pw_failure, never_started, read_ph_output, read_pw_output
from bornfield.dft.pseudopotentials import PseudoRecord
from bornfield.dft.qc import QCThresholds, run_gates
from bornfield.errors import BornfieldError, ConfigError, InputFileError

LOG = logging.getLogger(__name__)

FINISHED_STATES = ("completed", "failed")
_QE_WALLTIME_STOP = "Maximum CPU time exceeded"


# Run by a bare interpreter between the runner and QE: it starts the command, forwards SIGTERM
# and SIGINT to it, and writes the command's peak RSS in KiB (wait4) to the file argv[1].
_MEASURE = """
import os, signal, subprocess, sys
try:
    proc = subprocess.Popen(sys.argv[2:])
except OSError as exc:
    print(f"bornfield: cannot start {sys.argv[2]!r}: {exc}", flush=True)
    sys.exit(127)
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda number, frame: proc.send_signal(number))
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(argv: list[str], cwd: Path, stdout, env: dict) -> tuple[int, float, float]:
    """Run ``argv`` to completion; (exit code, wall s, peak RSS MiB).

    The peak is the largest resident set of the command and of the descendants it waited for
    (with ``mpirun``: the largest local MPI rank), for this run alone. Linux carries a
    parent's memory high-water mark into a child across ``exec``, so the command is started
    from a bare interpreter (about 10 MiB), not from this process; otherwise every job would
    report at least the driver's own memory. Ranks that ``srun`` starts on other nodes are
    not seen: on SLURM read ``sacct --format=MaxRSS``.
    """
    with tempfile.TemporaryDirectory(prefix="bornfield-rss-") as scratch:
        report = Path(scratch) / "peak_rss_KiB"
        start = time.perf_counter()
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-I", "-S", "-c", _MEASURE, str(report), *argv],
            cwd=cwd, stdout=stdout, stderr=subprocess.STDOUT, env=env,
        )
        try:
            returncode = proc.wait()
        except BaseException:
            proc.terminate()  # forwarded to the command (mpirun passes it on to the ranks)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        wall = time.perf_counter() - start
        peak_kib = float(report.read_text()) if report.exists() else float("nan")
    return returncode, wall, peak_kib / 1024.0


class JobInterrupted(RuntimeError):
    """QE stopped itself at ``max_seconds``: the job is resumable, not finished or failed."""


class LaunchFailed(BornfieldError):
    """QE never started (launcher/MPI/environment problem): not a property of the structure,
    so the job is neither completed nor failed; fix the launcher and run it again."""


def launch_prefix(launcher: str, ranks: int) -> str:
    """The command prefix QE runs under: ``"<launcher> -n <ranks>"``, or ``""`` (QE run
    directly, one process) for one rank or an empty launcher (``dft.run.launcher`` holds
    no rank count; ``dft.run.ranks`` is the count)."""
    return f"{launcher} -n {ranks}" if launcher and ranks > 1 else ""


@dataclass(frozen=True)
class RunnerOptions:
    """How QE is launched and how failures are handled (``dft.run`` config section).

    ``launcher``: the launch prefix *including* the rank count (:func:`launch_prefix`), e.g.
    ``/usr/bin/mpirun -n 2`` (Debian QE is built against Open MPI — never the venv's
    MPICH ``mpirun``) or ``srun -n 2``. Empty string: run serially.
    ``max_seconds``: QE's own soft walltime (s) so a killed job leaves restart files.
    ``pools``: k-point pools (QE's ``-nk``) for pw.x and ph.x; must divide the rank count.
    """

    launcher: str
    pw_command: str
    ph_command: str
    pools: int
    max_scf_attempts: int
    ph_retries: int
    max_seconds: float | None
    keep_scratch: bool

    @classmethod
    def from_section(cls, section: dict, launcher: str | None = None, ranks: int | None = None) -> RunnerOptions:
        """Build from resolved ``dft`` settings; ``launcher`` (without the rank count) and
        ``ranks``, when given, replace ``dft.run.launcher`` and ``dft.run.ranks``."""
        run = section["run"]
        launcher = run["launcher"] if launcher is None else launcher
        ranks = int(run["ranks"] if ranks is None else ranks)
        if ranks < 1 or ranks % run["pools"]:
            raise ConfigError(f"dft.run.pools = {run['pools']} must divide the {ranks} MPI rank(s) of a QE job "
                              "(dft.run.ranks or --ranks; QE splits the ranks into pools)")
        return cls(
            launcher=launch_prefix(launcher, ranks),
            pools=int(run["pools"]),
            pw_command=run["pw_command"],
            ph_command=run["ph_command"],
            max_scf_attempts=int(run["max_scf_attempts"]),
            ph_retries=int(run["ph_retries"]),
            max_seconds=run["max_seconds"],
            keep_scratch=bool(run["keep_scratch"]),
        )

    @classmethod
    def defaults(cls, **changes) -> RunnerOptions:
        """The schema's default ``dft.run`` settings with some fields changed (scripts, tests)."""
        from bornfield.config import default_settings

        return replace(cls.from_section(default_settings().dft), **changes)

    def command(self, program: str, input_name: str) -> list[str]:
        """Full argv to run ``program -in input_name`` under the launcher."""
        argv = shlex.split(self.launcher)
        if argv and os.path.basename(argv[0]) in ("mpirun", "mpiexec", "orterun") and hasattr(os, "geteuid") and os.geteuid() == 0:
            if "--allow-run-as-root" not in argv and _is_open_mpi(argv[0]):
                argv.insert(1, "--allow-run-as-root")
        return argv + [program, *(["-nk", str(self.pools)] if self.pools > 1 else []), "-in", input_name]


def _is_open_mpi(launcher: str) -> bool:
    path = shutil.which(launcher)
    if path is None:
        return False
    real = os.path.realpath(path)
    return "openmpi" in real or "orterun" in real or os.path.basename(real) in ("orterun", "mpirun.openmpi")


def scf_escalation(settings: DFTSettings, attempt: int) -> PwOverrides:
    """Overrides of SCF attempt ``attempt`` (1-based): bounded, reproducible escalation.

    1: as configured; 2: half the mixing, twice the iterations; 3+: a quarter of the
    mixing, three times the iterations and the other diagonalization (david <-> cg).
    """
    if attempt <= 1:
        return PwOverrides()
    if attempt == 2:
        return PwOverrides(mixing_beta=settings.mixing_beta * 0.5, electron_maxstep=settings.electron_maxstep * 2)
    other = "cg" if settings.diagonalization != "cg" else "david"
    return PwOverrides(
        mixing_beta=settings.mixing_beta * 0.25,
        electron_maxstep=settings.electron_maxstep * 3,
        diagonalization=other,
    )


class DFTJob:
    """One structure's pw.x + ph.x job in ``jobs_dir/<dft_id>``.

    ``variant``: a pw.x-only job of another kind (e.g. a finite field, bornfield.dft.efield):
    its namelist keys are added to every SCF attempt, its k mesh multiplier applied, and it
    is part of the ``dft_id``; the resume, retry and never-recompute rules are the same.
    """

    def __init__(
        self,
        atoms: Atoms,
        settings: DFTSettings,
        pseudos: dict[str, PseudoRecord],
        pseudo_dir: str | Path,
        jobs_dir: str | Path,
        options: RunnerOptions,
        thresholds: QCThresholds | None = None,
        variant: PwVariant | None = None,
    ) -> None:
        if variant is not None and settings.born_charges:
            raise ConfigError(f"a {variant.kind} pw.x job runs no ph.x: settings.born_charges must be false")
        self.atoms = atoms.copy()
        self.variant = variant
        self.settings = settings
        self.pseudos = pseudos
        self.pseudo_dir = Path(pseudo_dir)
        self.options = options
        self.thresholds = thresholds or QCThresholds.defaults()
        missing = sorted(set(atoms.get_chemical_symbols()) - set(pseudos))
        if missing:
            raise ConfigError(f"no pseudopotential provisioned for {missing}")
        self.dft_id = compute_dft_id(atoms, settings, {el: rec.filename for el, rec in pseudos.items()}, variant)
        self.dir = Path(jobs_dir) / self.dft_id

    # ------------------------------------------------------------------ state
    @property
    def status_path(self) -> Path:
        return self.dir / "status.json"

    @property
    def labels_path(self) -> Path:
        return self.dir / "labels.json"

    def status(self) -> dict:
        """Current status.json content (empty dict before the first run)."""
        if self.status_path.exists():
            return json.loads(self.status_path.read_text(encoding="utf-8"))
        return {}

    def is_finished(self) -> bool:
        """True for completed or failed jobs that wrote their labels."""
        return self.status().get("state") in FINISHED_STATES and self.labels_path.exists()

    def _save_status(self, status: dict) -> None:
        atomic.write_json(self.status_path, status)

    # ------------------------------------------------------------------ running
    def _run_program(self, program: str, input_name: str, output_name: str) -> tuple[float, float]:
        """Run one QE program; (wall s, peak RSS MiB of its largest local process)."""
        argv = self.options.command(program, input_name)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        LOG.info("%s: %s", self.dft_id, " ".join(argv))
        with open(self.dir / output_name, "w", encoding="utf-8") as out:
            returncode, wall, peak_rss = run_measured(argv, self.dir, out, env)
        if returncode != 0:
            LOG.warning("%s: %s exited with %d", self.dft_id, program, returncode)
        return wall, peak_rss

    def _record_peak_rss(self, status: dict, record: dict, peak_rss: float) -> None:
        if not np.isfinite(peak_rss):  # the command never started
            return
        record["peak_rss_MiB"] = round(peak_rss, 1)
        status["peak_rss_MiB"] = round(max(status.get("peak_rss_MiB") or 0.0, peak_rss), 1)

    def run(self, retry_failed: bool = False) -> dict:
        """Run (or resume) the job; return the labels dict. Never recomputes a finished job."""
        if self.is_finished() and not (retry_failed and self.status().get("state") == "failed"):
            LOG.info("%s: already %s, not recomputed", self.dft_id, self.status()["state"])
            return self.regate()
        if self.status().get("state") == "completed" and not self.labels_path.exists():
            # labels.json removed (e.g. Snakemake deletes a rule's output before re-running it
            # after a code change): rebuild it from the finished QE outputs, do not rerun QE
            labels = self._labels_from_outputs()
            if labels is not None:
                return labels
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(self.dir / "structure.extxyz") as tmp:
            write(tmp, self.atoms, format="extxyz")
        status = self.status()
        previous_state = status.get("state")
        status.update(
            dft_id=self.dft_id,
            state="running",
            settings=self.settings.to_dict(),
            pseudopotentials={el: {"file": r.filename, "md5": r.md5, "source": r.source} for el, r in sorted(self.pseudos.items())},
            launcher=self.options.launcher,
            failure=None,
        )
        if self.variant is not None:
            status["variant"] = self.variant.to_dict()
        status.setdefault("attempts", [])
        status.setdefault("wall_time_s", 0.0)
        self._save_status(status)

        scf = None
        scf_finished = (self.dir / "pw.out").exists() and classify_pw_failure(self.dir / "pw.out") is None
        if previous_state in ("scf_done", "interrupted", "running", "launch_failed") and scf_finished and (self.dir / "tmp").exists():
            scf = read_pw_output(self.dir / "pw.out")  # resume at ph.x
        else:
            scf = self._run_scf(status, resume=previous_state in ("running", "interrupted"))
        bec = None
        if scf is not None:
            status["state"] = "scf_done"
            status["qe_version"] = scf.qe_version
            self._save_status(status)
            if self.settings.born_charges:
                bec = self._finished_ph_output(status)
                if bec is None:
                    clean_stop = previous_state == "interrupted" and status.get("interrupted_stage") == "ph"
                    bec = self._run_ph(status, recover_allowed=clean_stop)
                else:
                    LOG.info("%s: ph.x finished in an earlier run (same structure and settings); its output is reused", self.dft_id)
        labels = self._labels(scf, bec, status)
        status["state"] = "completed" if scf is not None else "failed"
        if scf is not None and self.settings.born_charges and bec is None:
            status["state"] = "completed"  # SCF labels are kept; failure records why BEC is missing
        atomic.write_json(self.labels_path, labels)
        self._save_status(status)
        if not self.options.keep_scratch:
            shutil.rmtree(self.dir / "tmp", ignore_errors=True)
        return labels

    def _finished_ph_output(self, status: dict):
        """The parsed ``ph.out`` of an earlier converged ph.x attempt of this job, else None."""
        converged = any(a.get("program") == "ph.x" and a.get("outcome") == "converged" for a in status.get("attempts", []))
        if not converged or not (self.dir / "ph.out").exists():
            return None
        try:
            return read_ph_output(self.dir / "ph.out")
        except InputFileError as exc:
            LOG.warning("%s: earlier ph.x output unusable (%s); running ph.x again", self.dft_id, exc)
            return None

    def _labels_from_outputs(self) -> dict | None:
        """Labels of a completed job rebuilt from pw.out/ph.out (None when they do not parse)."""
        status = self.status()
        try:
            scf = read_pw_output(self.dir / "pw.out")
        except InputFileError as exc:
            LOG.warning("%s: completed but pw.out unusable (%s); the job runs again", self.dft_id, exc)
            return None
        bec = self._finished_ph_output(status) if self.settings.born_charges else None
        if self.settings.born_charges and bec is None and status.get("failure") is None:
            return None  # Born charges expected and not recoverable: run again
        labels = self._labels(scf, bec, status)
        atomic.write_json(self.labels_path, labels)
        LOG.info("%s: labels.json rebuilt from the finished QE outputs (QE not rerun)", self.dft_id)
        return labels

    def _launch_failed(self, status: dict, program: str, reason: str) -> None:
        status["state"] = "launch_failed"
        status["failure"] = {"stage": program, "class": "not_started", "reason": reason}
        self._save_status(status)
        raise LaunchFailed(
            f"{self.dir}: {program} never started with launcher {self.options.launcher!r} ({reason}); "
            "the job is not marked failed -- fix dft.run.launcher and run it again"
        )

    def _interrupt(self, status: dict, stage: str) -> None:
        status["state"] = "interrupted"
        status["interrupted_stage"] = stage
        self._save_status(status)
        LOG.warning("%s: %s.x stopped at max_seconds; rerun the job to resume from QE restart files", self.dft_id, stage)
        raise JobInterrupted(f"{self.dft_id}: {stage}.x reached max_seconds; job left resumable in {self.dir}")

    def write_scf_input(self, path: str | Path, attempt: int, restart: bool) -> tuple[PwOverrides, tuple[int, int, int]]:
        """Write the pw.x input of SCF attempt ``attempt`` (1-based) to ``path``; return its overrides and k mesh."""
        overrides = scf_escalation(self.settings, attempt)
        overrides.restart = restart
        overrides.max_seconds = self.options.max_seconds
        multiplier = (1, 1, 1)
        if self.variant is not None:
            overrides, multiplier = self.variant.overrides(overrides), self.variant.kpoint_multiplier
        kpts = write_pw_input(
            path, self.atoms, self.settings,
            {el: r.filename for el, r in self.pseudos.items()}, self.pseudo_dir, overrides, multiplier,
        )
        return overrides, kpts

    def _run_scf(self, status: dict, resume: bool):
        kpts = None
        restart = resume and (self.dir / "tmp" / "bornfield.save").exists() and (self.dir / "pw.out").exists()
        for attempt in range(1, self.options.max_scf_attempts + 1):
            overrides, kpts = self.write_scf_input(self.dir / "pw.in", attempt, restart)
            status["kpoints"] = list(kpts)
            wall, peak_rss = self._run_program(self.options.pw_command, "pw.in", "pw.out")
            failure = classify_pw_failure(self.dir / "pw.out")
            if failure is not None and failure[0] == "not_started":
                self._launch_failed(status, "pw.x", failure[1])
            record = {
                "program": "pw.x", "attempt": attempt, "restart": restart, "wall_s": round(wall, 2),
                "overrides": {k: v for k, v in vars(overrides).items() if v not in (None, {}, False)},
                "outcome": "converged" if failure is None else failure[0], "reason": None if failure is None else failure[1],
            }
            self._record_peak_rss(status, record, peak_rss)
            status["attempts"].append(record)
            status["wall_time_s"] = round(status["wall_time_s"] + wall, 2)
            self._save_status(status)
            LOG.info("%s: pw.x attempt %d: %s (%.1f s)", self.dft_id, attempt, record["outcome"], wall)
            if failure is None:
                try:
                    return read_pw_output(self.dir / "pw.out")
                except InputFileError as exc:
                    status["failure"] = {"stage": "pw", "class": "unreadable", "reason": str(exc)}
                    return None
            shutil.copyfile(self.dir / "pw.out", self.dir / f"pw.attempt{attempt}.out")
            if failure[0] == "truncated" and "max_seconds" in failure[1]:
                # QE stopped itself before the allocation ends: leave a resumable job
                self._interrupt(status, "pw")
            if restart and failure[0] != "scf_not_converged":
                # the restart files of a hard-killed run were unusable: start over once
                LOG.warning("%s: restart failed (%s); starting the SCF from scratch", self.dft_id, failure[1])
                restart = False
                shutil.rmtree(self.dir / "tmp", ignore_errors=True)
                continue
            restart = False
            if failure[0] != "scf_not_converged":
                status["failure"] = {"stage": "pw", "class": failure[0], "reason": failure[1]}
                return None
        status["failure"] = {
            "stage": "pw", "class": "scf_not_converged",
            "reason": f"SCF not converged after {self.options.max_scf_attempts} escalating attempts",
        }
        return None

    def _run_ph(self, status: dict, recover_allowed: bool):
        """ph.x with one retry; resumes QE's recover files only after QE's own clean stop."""
        scratch = self.dir / "tmp" / "_ph0"
        recover = recover_allowed and scratch.exists() and (self.dir / "ph.out").exists()
        if scratch.exists() and not recover:
            LOG.warning("%s: ph.x was killed without a clean stop; its recover files are not trusted "
                        "(wrong Born charges seen after such resumes), ph.x starts over", self.dft_id)
            shutil.rmtree(scratch)
        for attempt in range(1, self.options.ph_retries + 2):
            write_ph_input(self.dir / "ph.in", self.settings, recover=recover, max_seconds=self.options.max_seconds)
            wall, peak_rss = self._run_program(self.options.ph_command, "ph.in", "ph.out")
            status["wall_time_s"] = round(status["wall_time_s"] + wall, 2)
            record = {"program": "ph.x", "attempt": attempt, "recover": recover, "wall_s": round(wall, 2)}
            self._record_peak_rss(status, record, peak_rss)
            ph_text = (self.dir / "ph.out").read_text(errors="replace")
            reason = never_started(ph_text, "PHONON")
            if reason is not None:
                self._launch_failed(status, "ph.x", reason)
            if _QE_WALLTIME_STOP in ph_text:
                status["attempts"].append({**record, "outcome": "interrupted"})
                self._interrupt(status, "ph")
            try:
                result = read_ph_output(self.dir / "ph.out")
            except InputFileError as exc:
                status["attempts"].append({**record, "outcome": "failed", "reason": str(exc)})
                self._save_status(status)
                shutil.copyfile(self.dir / "ph.out", self.dir / f"ph.attempt{attempt}.out")
                LOG.warning("%s: ph.x attempt %d failed: %s", self.dft_id, attempt, exc)
                shutil.rmtree(self.dir / "tmp" / "_ph0", ignore_errors=True)
                recover = False
                status["failure"] = {"stage": "ph", "class": "ph_failed", "reason": str(exc)}
                continue
            status["attempts"].append({**record, "outcome": "converged"})
            status["failure"] = None
            # keep the full-precision tensors next to ph.out (scratch is removed later)
            for xml in (self.dir / "tmp" / "_ph0").glob("*.phsave/tensors.xml"):
                shutil.copyfile(xml, self.dir / "tensors.xml")
            self._save_status(status)
            return result
        return None

    def regate(self) -> dict:
        """Re-apply the QC gates of the current thresholds to a finished job's stored labels.

        QC thresholds are not part of the ``dft_id`` (they do not change QE's output), so a
        changed threshold re-decides which Born charges are kept without rerunning QE.
        ``labels.json`` is rewritten only when the decision or thresholds changed.
        """
        labels = json.loads(self.labels_path.read_text(encoding="utf-8"))
        thresholds = asdict(self.thresholds)
        if labels.get("qc", {}).get("thresholds") == thresholds or "forces" not in labels and "born_charges_raw" not in labels:
            return labels
        scf = {"energy": labels.get("energy"), "forces": labels.get("forces")} if "forces" in labels else None
        bec = None
        if "born_charges_raw" in labels:
            bec = {key: np.asarray(labels[key]) for key in ("asr_residual", "epsilon_inf", "born_charges_raw")}
        if scf is None:
            return labels
        qc = run_gates({"energy": scf["energy"], "forces": np.asarray(scf["forces"])}, bec, self.thresholds)
        labels["qc"] = {**qc.to_dict(), "thresholds": thresholds}
        labels.pop("born_charges", None)
        if bec is not None and qc.bec_ok:
            labels["born_charges"], _ = apply_asr(bec["born_charges_raw"])
        atomic.write_json(self.labels_path, labels)
        LOG.info("%s: QC re-applied with %s: %s", self.dft_id, thresholds, qc.reasons or "accepted")
        return json.loads(self.labels_path.read_text(encoding="utf-8"))

    def _labels(self, scf, bec, status: dict) -> dict:
        scf_labels = None if scf is None else {"energy": scf.energy, "forces": scf.forces}
        bec_labels = None if bec is None else {
            "asr_residual": bec.asr_residual, "epsilon_inf": bec.epsilon_inf, "born_charges_raw": bec.born_charges_raw,
        }
        if bec is not None and bec.species != self.atoms.get_chemical_symbols():
            raise InputFileError(f"{bec.source}: atom species {bec.species} differ from the job structure")
        qc = run_gates(scf_labels, bec_labels, self.thresholds)
        labels = {
            "dft_id": self.dft_id,
            "state": "completed" if scf is not None else "failed",
            "failure": status.get("failure"),
            "qc": {**qc.to_dict(), "thresholds": asdict(self.thresholds)},
            "qe_version": status.get("qe_version"),
            "pseudopotentials": status["pseudopotentials"],
            "settings": status["settings"],
        }
        if scf is not None and qc.scf_ok:
            labels.update(energy=scf.energy, forces=scf.forces, stress=scf.stress)
        if bec is not None:
            labels.update(
                born_charges_raw=bec.born_charges_raw, asr_residual=bec.asr_residual, epsilon_inf=bec.epsilon_inf,
                bec_precision=bec.precision,
            )
            if qc.bec_ok:
                labels["born_charges"] = bec.born_charges
        return labels


def load_job_structure(job_dir: str | Path) -> Atoms:
    """The structure a job directory was run on."""
    path = Path(job_dir) / "structure.extxyz"
    if not path.exists():
        raise InputFileError(f"{path}: job structure missing")
    return read(path, format="extxyz")
