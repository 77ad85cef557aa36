"""Summarise benchmarks/results/*.json (DESIGN.md record format) as Markdown tables.

Usage:
    python benchmarks/summarize.py                 # print the tables
    python benchmarks/summarize.py --readme benchmarks/README.md
        # replace the block between the BENCHMARKS markers of that file
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BEGIN, END = "<!-- BENCHMARKS:BEGIN -->", "<!-- BENCHMARKS:END -->"
# Records of these metrics are listed; the others stay in the JSON files.
HEADLINE = {
    "atom_steps_per_s",
    "atom_evals_per_s",
    "amorphous_density_g_cm3",
    "bec_row_x_rmse_e",
    "bec_rmse_e",
    "field_force_rel_rmse",
    "bec_staleness_rmse_e",
    "exchange_ms",
    "qe_wall_time_s",
    "qe_cpu_time_s",
    "bec_max_dev_e",
    "force_max_dev_meV_per_A",
    "D_relative_bias",
    "v_relative_bias",
    "msd_atom_frames_per_s",
    "peak_rss_MiB",
    "scaling_exponent",
    "asr_residual_max_e",
    "nve_energy_rms_over_kinetic_rms",
    "nve_energy_drift_meV_per_atom_ps",
    "md_replica_step_cpu_ms_median",
    "replica_batch_speedup",
}


def _format(value: float) -> str:
    if value is None:
        return "–"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 1 or magnitude == 0:
        return f"{value:.3g}"
    return f"{value:.2e}" if magnitude < 1e-3 else f"{value:.4f}"


STANDARD_KEYS = {"metric", "value", "unit", "system", "n_atoms", "ranks", "threads", "baseline", "date",
                 "machine", "notes", "values", "split"}


def _details(record: dict) -> str:
    """The keys a benchmark added beyond the standard record (what tells its rows apart)."""
    extra = [f"{k}={v}" for k, v in record.items() if k not in STANDARD_KEYS and not isinstance(v, (list, dict))]
    if record.get("split"):
        extra.insert(0, f"split={record['split']}")
    return ", ".join(extra)


def tables(results: Path = RESULTS) -> str:
    """One Markdown table per benchmark file (headline metrics only)."""
    out = []
    for path in sorted(results.glob("*.json")):
        records = json.loads(path.read_text())
        if not isinstance(records, list):
            continue
        rows = [r for r in records if r.get("metric") in HEADLINE]
        if not rows:
            continue
        date = max(str(r.get("date", "")) for r in rows)
        out.append(f"**{path.stem}** ({date}, `{path.relative_to(results.parent.parent)}`)\n")
        out.append("| metric | system | atoms | ranks×threads | value | unit | details |")
        out.append("|---|---|---|---|---|---|---|")
        for r in rows:
            flag = " (baseline)" if r.get("baseline") else ""
            ranks = f"{r.get('ranks', '–')}×{r.get('threads', '–')}"
            out.append(
                f"| {r['metric']} | {r.get('system', '')}{flag} | {r.get('n_atoms', '–')} | {ranks} "
                f"| {_format(r.get('value'))} | {r.get('unit', '')} | {_details(r)} |"
            )
        out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, help="README to update between the BENCHMARKS markers")
    args = parser.parse_args()
    text = tables()
    if args.readme is None:
        print(text)
        return 0
    readme = args.readme.read_text()
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"{args.readme}: markers {BEGIN} / {END} not found")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    args.readme.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", readme))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
