"""RESULTS.md of a reference campaign, written from its stored analysis.

A reference campaign is too long for one working stretch, so its per-condition analysis
records (``<results_dir>/analysis/<condition>.json``) are committed as each condition
finishes; the sweep tables, the claims and the figures are regenerated from them.
This module writes the Markdown page from those files: which conditions are done (replicas,
length, cell size, MD cost in core-hours, model set), the claims with their verdicts
(``claims.md`` of :mod:`bornfield.analysis.claims`), the finite-field check of the linear
response on ledger structures (:func:`bornfield.ledger.efield.efield_report`), and what is
still below the scale of the seed study.
"""

from __future__ import annotations

import math
from pathlib import Path

from bornfield import atomic
from bornfield.analysis.claims import format_number
from bornfield.errors import InputFileError
from bornfield.md.output import model_files_changes

FS_PER_PS = 1000.0


def model_set_identity(records: list[dict]) -> dict | None:
    """The model files (with sha256) shared by every record's MD run, or None if none recorded.

    Raises InputFileError naming two records whose MD ran with different model files: their
    numbers cannot be compared in one table.
    """
    identity, first = None, None
    for record in records:
        models = (record.get("md_run") or {}).get("models")
        if models is None:
            continue
        if identity is None:
            identity, first = models, record
        elif changes := model_files_changes(identity, models):
            raise InputFileError(
                f"{record.get('_path')}: MD ran with other model files than {first.get('_path')} "
                f"({'; '.join(changes)}); rerun one of them with the current model set")
    return identity


def condition_rows(conditions: list[dict], records: list[dict]) -> list[dict]:
    """One row per configured condition (``md list --json`` dicts): stored record facts or pending."""
    by_name = {r["condition"].get("name"): r for r in records}
    rows = []
    for condition in conditions:
        record = by_name.get(condition["name"])
        row = {"name": condition["name"], "phase": condition["phase"], "temperature_K": condition["temperature_K"],
               "field_V_per_A": condition["field_strength_V_per_A"], "replicas": condition["replicas"],
               "state": "pending", "n_used": 0, "n_failed": 0, "n_atoms": None, "production_ps": None,
               "core_hours": None, "spread": None, "measured_K": None, "density_g_cm3": None}
        if record is not None:
            md_run = record.get("md_run") or {}
            row.update(state=record.get("state", "?"), n_used=record["replicas"]["n_used"],
                       n_failed=record["replicas"]["n_failed"],
                       n_atoms=(record.get("system") or {}).get("n_atoms"),
                       production_ps=((record.get("time") or {}).get("duration_fs") or float("nan")) / FS_PER_PS,
                       core_hours=md_run.get("core_hours"), spread=md_run.get("force_uncertainty"),
                       measured_K=((record.get("system") or {}).get("temperature_measured_K") or {}).get("mean"),
                       density_g_cm3=density_g_cm3(record))
        rows.append(row)
    return rows


def spread_cell(spread: dict | None) -> str:
    """``median / max, fraction of n checks ≤ limit`` of :func:`~bornfield.analysis.condition.committee_spread`."""
    if not spread:
        return "–"
    fraction = spread.get("fraction_below_limit")
    below = "–" if fraction is None else f"{fraction:.1%}"
    limit = spread.get("limit_eV_per_A")
    return (f"{format_number(spread['median'], '.2f')} / {format_number(spread['max'], '.2f')}, {below} of "
            f"{spread['checks']} ≤ {format_number(limit, 'g')}")


def model_set_lines(models: dict | None) -> list[str]:
    """The paragraph naming the model files (and sha256 prefixes) of :func:`model_set_identity`; none without."""
    if models is None:
        return []
    return ["Model set: " + ", ".join(f"`{Path(m['file']).name}` ({m['sha256'][:12]})" for m in models["potentials"])
            + f"; Born charges `{Path(models['born']['file']).name}` ({models['born']['sha256'][:12]}).", ""]


def runs_table_lines(rows: list[dict], extra: dict[str, list[str]] | None = None) -> list[str]:
    """Markdown table of :func:`condition_rows`; ``extra`` adds columns (header -> one cell per row)."""
    extra = extra or {}
    header = ("| condition | phase | T (K) | T measured (K) | E (V/Å) | replicas used / failed / planned | atoms "
              "| production (ps) | MD (core-h) | committee spread median / max (eV/Å), checks below limit | state |")
    lines = [header + "".join(f" {name} |" for name in extra), "|" + "---|" * (11 + len(extra))]
    for i, r in enumerate(rows):
        lines.append(f"| {r['name']} | {r['phase']} | {format_number(r['temperature_K'], 'g')} "
                     f"| {format_number(r['measured_K'], '.0f')} | {format_number(r['field_V_per_A'], 'g')} "
                     f"| {r['n_used']} / {r['n_failed']} / {r['replicas']} | {r['n_atoms'] or '–'} "
                     f"| {format_number(r['production_ps'], 'g')} | {format_number(r['core_hours'], '.2f')} "
                     f"| {spread_cell(r['spread'])} | {r['state']} |" + "".join(f" {cells[i]} |" for cells in extra.values()))
    return lines


def density_g_cm3(record: dict) -> float | None:
    """Mean mass density (g/cm³) of a record's cells from its stored volume and species counts."""
    from ase.data import atomic_masses, atomic_numbers
    from ase.units import _amu

    system = record.get("system") or {}
    volume, counts = system.get("volume_A3"), system.get("counts")
    if not volume or not counts:
        return None
    mass_amu = sum(int(n) * atomic_masses[atomic_numbers[symbol]] for symbol, n in counts.items())
    return mass_amu * _amu * 1e3 / (float(volume) * 1e-24)


def stability_verdicts(rows: list[dict], production_ps: list[float], min_fraction: float) -> list[str]:
    """Per :func:`condition_rows` row: "holds", "fails: <reasons>" or "pending".

    Holds when every planned replica completed its planned ``production_ps`` (one per row) and the
    committee spread stayed below the safety limit in at least ``min_fraction`` of the checks.
    """
    verdicts = []
    for r, planned in zip(rows, production_ps, strict=True):
        if r["state"] == "pending":
            verdicts.append("pending")
            continue
        reasons = []
        if r["n_failed"] or r["n_used"] < r["replicas"]:
            reasons.append(f"{r['n_used']} of {r['replicas']} replicas used, {r['n_failed']} failed")
        if r["production_ps"] is None or not r["production_ps"] >= planned * (1 - 1e-6):
            reasons.append(f"{format_number(r['production_ps'], 'g')} of {planned:g} ps")
        fraction = (r["spread"] or {}).get("fraction_below_limit")
        if fraction is None or fraction < min_fraction:
            reasons.append(f"spread below the limit in {format_number(fraction, '.1%')} of checks (< {min_fraction:.0%})")
        verdicts.append("holds" if not reasons else "fails: " + "; ".join(reasons))
    return verdicts


def stability_markdown(config_path: str, analysis_dir: str, conditions: list[dict], records: list[dict],
                       production_ps: list[float], min_fraction: float) -> str:
    """The stability page: the runs table with density and a verdict per condition."""
    rows = condition_rows(conditions, records)
    densities = [format_number(r["density_g_cm3"], ".3f") for r in rows]
    verdicts = stability_verdicts(rows, production_ps, min_fraction)
    held = sum(v == "holds" for v in verdicts)
    lines = [
        "# Stability of field MD with the shipped models", "",
        f"Written by `bornfield analyze stability` from the stored analysis in `{analysis_dir}` of `{config_path}`; "
        f"a pending condition runs with `make stability` (one condition after another). A condition holds when "
        f"every replica completes its production ({', '.join(f'{x:g}' for x in sorted(set(production_ps)))} ps) "
        "and the committee force spread stays below the safety "
        f"limit in at least {min_fraction:.0%} of the checks. {held} of {len(rows)} conditions hold.", ""]
    lines += model_set_lines(model_set_identity(records))
    lines += runs_table_lines(rows, {"density (g/cm³)": densities, "verdict": verdicts})
    return "\n".join(lines) + "\n"


def _demote(markdown: str) -> list[str]:
    """claims.md with its title dropped and its headings one level down."""
    lines = markdown.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return [("#" + line) if line.startswith("#") else line for line in lines]


def linear_response_lines(summaries: list[dict]) -> list[str]:
    """Finite-field (pw.x lelfield) forces against Zᵀ·E of the DFPT Born charges, one row per result."""
    if not summaries:
        return ["(no finite-field result in the ledger yet: `bornfield ledger efield --dft-id <DFPT entry> --axis x`)", ""]
    lines = ["| structure | config type | atoms | axis | E (V/Å) | RMS Zᵀ·E (meV/Å) | RMS linear misfit (meV/Å) "
             "| relative | RMS even part (meV/Å) | relative | Born row RMSE (e) | cost (core-h) |",
             "|" + "---|" * 12]
    for item in summaries:
        m = item["metrics"]
        lines.append(
            f"| {item['dft_id']} | {item.get('config_type') or '–'} | {item['n_atoms']} | {item['axis']} "
            f"| {format_number(item['field_V_per_A'])} | {format_number(m.get('field_force_rms_meV_per_A'))} "
            f"| {format_number(m.get('linear_force_error_rms_meV_per_A'))} | {format_number(m.get('linear_force_error_rel'), '.2%')} "
            f"| {format_number(m.get('nonlinear_force_rms_meV_per_A'))} | {format_number(m.get('nonlinear_force_rel'), '.2%')} "
            f"| {format_number(m.get('bec_row_rmse_e'))} | {format_number(float(item['core_time_s']) / 3600.0, '.2f')} |")
    return lines + [
        "",
        "Odd part (F(+E) − F(−E))/2 against Zᵀ·E: the linear response the MD uses and how well DFPT predicts it; "
        "even part (F(+E) + F(−E))/2 − F(0): the leading non-linear (quadratic) response at this field.", ""]


def results_markdown(config_path: str, analysis_dir: str, conditions: list[dict], records: list[dict],
                     claims_md: str | None, efield_summaries: list[dict], figures: list[str]) -> str:
    """The RESULTS.md page (see the module docstring)."""
    rows = condition_rows(conditions, records)
    done = [r for r in rows if r["state"] != "pending"]
    costs = [float(r["core_hours"]) for r in done if r["core_hours"] is not None]
    spent = sum(costs) if costs else None
    models = model_set_identity(records)
    lines = [
        "# Results: field-driven Li migration in Li3PO4", "",
        f"Written by `bornfield analyze results` from the stored analysis in `{analysis_dir}` of the campaign "
        f"`{config_path}`; regenerate tables, figures and this page with `make results` (under a minute). "
        "Every number below comes from those records.", "",
        "## Runs", "",
        f"{len(done)} of {len(rows)} conditions done, {format_number(spent, '.2f')} core-hours of MD recorded so far. "
        f"A pending condition runs with `make reference` (one condition after another, each committed when "
        f"its analysis is written), or alone: `snakemake {analysis_dir}/<condition>.json --cores 1 "
        f"--configfile {config_path}`.", "",
    ]
    lines += model_set_lines(models)
    lines += runs_table_lines(rows)
    lines += ["", "Committee spread: the force standard deviation over the potential committee, checked every "
              "`md.safety.uncertainty_check_interval` steps; a replica stops above the limit. T measured: the mean "
              "kinetic temperature of the analysed frames (a field's work can outpace the thermostat)."]
    lines += ["", "## The seed study's claims", ""]
    lines += _demote(claims_md) if claims_md else ["(no condition analysed yet)"]
    lines += ["", "## Linear response at the source: finite-field DFT against DFPT Born charges", ""]
    lines += linear_response_lines(efield_summaries)
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    lines += ["## Below the seed study's scale", ""]
    atoms = sorted({int(r["n_atoms"]) for r in done if r["n_atoms"]})
    lengths = sorted({float(r["production_ps"]) for r in done if r["production_ps"] is not None
                      and math.isfinite(float(r["production_ps"]))})
    lines += [
        f"- cells of {', '.join(map(str, atoms)) or '–'} atoms, {', '.join(format_number(x, 'g') for x in lengths) or '–'} ps "
        "of production per replica; conditions still pending: "
        f"{', '.join(r['name'] for r in rows if r['state'] == 'pending') or 'none'}.",
        "- the models are trained on the label ledger as it stands (see README, 'Shipped models'); the numbers "
        "move as labels accumulate and the committees are retrained.",
        "- the seed study's own cell sizes, temperatures and MD lengths are not known (abstract only), so no "
        "one-to-one comparison of magnitudes is made.", ""]
    return "\n".join(lines)


def write_results(output: str | Path, text: str) -> Path:
    output = Path(output)
    atomic.write_text(output, text + "\n")
    return output


def relative_figures(figures_dir: str | Path, output: str | Path) -> list[str]:
    """PNG figures of ``figures_dir`` as paths relative to the page's directory."""
    import os

    figures_dir, base = Path(figures_dir), Path(output).resolve().parent
    return [os.path.relpath(p.resolve(), base) for p in sorted(figures_dir.glob("*.png"))]


def stored_records(analysis_dir: str | Path) -> list[dict]:
    from bornfield.analysis.sweep import load_records

    directory = Path(analysis_dir)
    return load_records([directory], require=False) if directory.is_dir() else []


def claims_markdown_of(analysis_dir: str | Path) -> str | None:
    path = Path(analysis_dir) / "claims.md"
    return path.read_text(encoding="utf-8") if path.is_file() else None


__all__ = ["model_set_identity", "condition_rows", "results_markdown", "write_results", "linear_response_lines",
           "relative_figures", "stored_records", "claims_markdown_of"]
