"""The seed study's claims, each with its numbers and a verdict, from the sweep tables.

Shimizu et al. (2023) claim, for Li3PO4 under a uniform field: (1) the Li MSD is enhanced
along the field; (2) transverse forces from the off-diagonal Born charges are not
negligible; (3) Li migrates in the amorphous phase without explicit defects and not in
the defect-free crystal. This module states each for a campaign's own runs, plus the
zero-field Arrhenius fit against published activation energies and the linear-response
check, and writes them as ``claims.json`` and ``claims.md``.

Every verdict is a Student-t test on replica standard errors (degrees of freedom: replicas
used − 1; confidence of ``analysis.linear_response.n_sigma`` Gaussian sigmas); a quantity
with no error estimate (one replica) is never called resolved.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bornfield import atomic
from bornfield.analysis.condition import write_json
from bornfield.structures.builder import DEFECT_KINDS

FS_PER_PS = 1000.0


def _finite(value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return value


def signed_verdict(value: float, sem: float, n_used: int, n_sigma: float,
                   positive: str, negative: str, null: str = "not resolved") -> str:
    """``positive`` / ``negative`` when ``value`` differs from zero by more than the Student-t
    critical value (``n_used`` − 1 degrees of freedom) times ``sem``, else ``null``."""
    from bornfield.analysis.sweep import critical_value

    value, sem = _finite(value), _finite(sem)
    if not math.isfinite(value):
        return "undetermined (no value)"
    if not math.isfinite(sem) or n_used < 2:
        return "undetermined (no error estimate: one replica)"
    threshold = critical_value(n_sigma, n_used - 1) * sem
    if value > threshold:
        return positive
    if value < -threshold:
        return negative
    return null


def msd_claim_rows(transport: list[dict], species: str, n_sigma: float) -> list[dict]:
    """Field runs of ``species``: MSD along E against ⊥ (same run) and against the zero-field run."""
    rows = []
    for row in transport:
        if row["species"] != species or _finite(row["field_V_per_A"]) == 0:
            continue
        parallel, parallel_sem = _finite(row["msd_parallel_at_ref_A2"]), _finite(row["msd_parallel_at_ref_sem_A2"])
        perp = _finite(row["msd_perpendicular_per_direction_at_ref_A2"])
        perp_sem = _finite(row["msd_perpendicular_per_direction_at_ref_sem_A2"])
        anisotropy = _finite(row.get("msd_parallel_minus_perpendicular_at_ref_A2"))
        anisotropy_sem = _finite(row.get("msd_parallel_minus_perpendicular_at_ref_sem_A2"))
        if not math.isfinite(anisotropy):  # records written before the paired difference existed
            anisotropy, anisotropy_sem = parallel - perp, math.hypot(parallel_sem, perp_sem)
        rows.append({
            "condition": row["condition"], "phase": row["phase"], "temperature_K": row["temperature_K"],
            "field_V_per_A": row["field_V_per_A"], "species": species, "n_replicas_used": row["n_replicas_used"],
            "reference_time_fs": row["msd_reference_time_fs"],
            "msd_parallel_A2": parallel, "msd_parallel_sem_A2": parallel_sem,
            "msd_perpendicular_A2": perp, "msd_perpendicular_sem_A2": perp_sem,
            "parallel_minus_perpendicular_A2": anisotropy, "parallel_minus_perpendicular_sem_A2": anisotropy_sem,
            "parallel_vs_perpendicular": signed_verdict(
                anisotropy, anisotropy_sem, int(row["n_replicas_used"]), n_sigma, "parallel > perpendicular",
                "parallel < perpendicular"),
            "msd_parallel_zero_field_A2": _finite(row["msd_parallel_zero_field_at_ref_A2"]),
            "msd_parallel_zero_field_sem_A2": _finite(row["msd_parallel_zero_field_at_ref_sem_A2"]),
            "excess_over_zero_field_A2": _finite(row["msd_parallel_excess_at_ref_A2"]),
            "excess_over_zero_field_sem_A2": _finite(row["msd_parallel_excess_at_ref_sem_A2"]),
            "window_start_fs": row["fit_window_start_fs"],
            "growth_A2": _finite(row["msd_parallel_growth_A2"]),
            "growth_sem_A2": _finite(row["msd_parallel_growth_sem_A2"]),
            "excess_growth_over_zero_field_A2": _finite(row["msd_parallel_excess_growth_A2"]),
            "excess_growth_over_zero_field_sem_A2": _finite(row["msd_parallel_excess_growth_sem_A2"]),
            "field_effect": row["msd_field_effect"],
        })
    return rows


def drift_claim_rows(transport: list[dict], n_sigma: float) -> list[dict]:
    """Field runs, every species: drift velocity along E (Å/ps, centre-of-mass frame) and its sign."""
    rows = []
    for row in transport:
        if _finite(row["field_V_per_A"]) == 0:
            continue
        velocity = _finite(row["v_parallel_A_per_fs"]) * FS_PER_PS
        velocity_sem = _finite(row["v_parallel_sem_A_per_fs"]) * FS_PER_PS
        rows.append({
            "condition": row["condition"], "phase": row["phase"], "phase_class": row["phase_class"],
            "temperature_K": row["temperature_K"], "field_V_per_A": row["field_V_per_A"], "species": row["species"],
            "n_replicas_used": row["n_replicas_used"],
            "drift_velocity_A_per_ps": velocity, "drift_velocity_sem_A_per_ps": velocity_sem,
            "drift": signed_verdict(velocity, velocity_sem, int(row["n_replicas_used"]), n_sigma,
                                    "along +E", "against E", "no drift resolved"),
        })
    return rows


def expected_drift(phase: str, phase_class: str) -> str | None:
    """The seed study's expectation for the mobile species: drift along +E in an amorphous phase,
    none in a defect-free crystal; no expectation for a crystal with a point defect."""
    if phase_class == "amorphous":
        return "along +E"
    name = (phase or "").lower()
    if any(kind in name for kind in (*DEFECT_KINDS, "interstitial")):
        return None
    return "no drift resolved"


def migration_claim(drift_rows: list[dict], species: str) -> list[dict]:
    """Per phase (field runs): does ``species`` migrate along +E, as the seed study expects?"""
    rows = []
    for row in drift_rows:
        if row["species"] != species:
            continue
        expectation = expected_drift(row["phase"], row["phase_class"])
        rows.append({**row, "expected": expectation or "",
                     "agrees_with_seed_study": (row["drift"] == expectation) if expectation else None})
    return rows


def transverse_claim_rows(transverse: list[dict]) -> list[dict]:
    """Field runs: transverse (⊥ E) field-force magnitude against the parallel one per species."""
    keep = ("condition", "phase", "temperature_K", "field_V_per_A", "species", "n_replicas_used",
            "mean_abs_perp_eV_per_A", "mean_abs_par_eV_per_A", "median_ratio", "p90_ratio",
            "ratio_threshold", "fraction_above_threshold")
    return [{key: row.get(key) for key in keep} for row in transverse if not row.get("hypothetical_unit_field")]


def arrhenius_claim_rows(arrhenius: dict, references: list[dict]) -> list[dict]:
    """Per phase: the fitted activation energy against each published value for that phase."""
    rows = []
    for phase, entry in arrhenius.get("phases", {}).items():
        fit = entry.get("fit") or {}
        value, sem = _finite(fit.get("activation_energy_eV")), _finite(fit.get("activation_energy_sem_eV"))
        ci95 = _finite(fit.get("activation_energy_ci95_halfwidth_eV"))
        base = {"phase": phase, "species": arrhenius.get("species"),
                "temperatures_K": [p["temperature_K"] for p in entry["points"] if p["used_in_fit"]],
                "activation_energy_eV": value, "activation_energy_sem_eV": sem, "ci95_halfwidth_eV": ci95,
                "notes": [f"{phase}: {note}" for note in entry.get("notes", [])]}
        matching = [r for r in references if r["phase"] == phase]
        for reference in matching or [None]:
            row = dict(base)
            if reference is not None:
                row.update(reference_eV=reference["activation_energy_eV"], reference_source=reference["source"])
                if math.isfinite(value) and math.isfinite(ci95):
                    row["within_ci95"] = abs(value - reference["activation_energy_eV"]) <= ci95
            rows.append(row)
    return rows


def linear_response_claim_rows(linear: list[dict]) -> list[dict]:
    keep = ("condition", "phase", "temperature_K", "field_V_per_A", "species", "n_replicas_used",
            "mobility_cm2_per_V_s", "mobility_sem_cm2_per_V_s", "mu_over_mu_lowest_field",
            "mu_over_mu_lowest_field_sem", "verdict_vs_lowest_field", "mu_over_ne", "mu_over_ne_sem",
            "implied_haven_ratio", "implied_haven_ratio_sem", "verdict_vs_nernst_einstein", "linear_response")
    return [{key: row.get(key) for key in keep} for row in linear]


def build_claims(transport: list[dict], transverse: list[dict], linear: list[dict], arrhenius: dict,
                 settings) -> dict:
    """Every claim's table (lists of row dicts) from the sweep tables of one campaign."""
    n_sigma = float(settings["linear_response"]["n_sigma"])
    species = settings["mobile_species"]
    drift = drift_claim_rows(transport, n_sigma)
    return {
        "format": "bornfield-claims",
        "mobile_species": species,
        "n_sigma": n_sigma,
        "msd_along_field": msd_claim_rows(transport, species, n_sigma),
        "migration": migration_claim(drift, species),
        "drift_per_species": drift,
        "transverse_forces": transverse_claim_rows(transverse),
        "arrhenius": arrhenius_claim_rows(arrhenius, list(settings["arrhenius"]["reference_activation_energies"])),
        "linear_response": linear_response_claim_rows(linear),
        "haven_ratio_assumed": float(settings["arrhenius"]["haven_ratio"]),
        "reference_haven_ratios": list(settings["linear_response"]["reference_haven_ratios"]),
    }


def format_number(value: Any, fmt: str = ".3g") -> str:
    """``value`` formatted with ``fmt``; "–" for None, text or a non-finite number (tables of records)."""
    value = _finite(value)
    return "–" if not math.isfinite(value) else format(value, fmt)


def _num(value: Any, digits: int = 3) -> str:
    return format_number(value, f".{digits}g")


def _pm(value: Any, sem: Any, digits: int = 3) -> str:
    return f"{_num(value, digits)} ± {_num(sem, 2)}" if math.isfinite(_finite(sem)) else _num(value, digits)


def _interval(halfwidth: Any) -> str:
    text = _num(halfwidth, 2)
    return text if text == "–" else f"± {text}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return ["(no runs of this kind)", ""]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def claims_markdown(claims: dict) -> str:
    """The claims as Markdown tables (values ± replica standard error)."""
    species = claims["mobile_species"]
    lines = [
        "# The seed study's claims on this campaign's runs", "",
        f"Values ± standard error over replicas; verdicts are Student-t tests at {claims['n_sigma']:g} sigma "
        "(replicas used − 1 degrees of freedom); one replica gives no verdict.", "",
        f"## 1. {species} MSD along the field", "",
        f"MSD per direction at the reference time t; ∥ − ⊥ in the field run (⊥ = mean of the two directions "
        "normal to E; error of the per-replica differences) and the excess of ∥ over the zero-field run "
        "at the same phase and temperature (the test that survives crystal anisotropy). The field effect "
        "is judged on the excess *growth* of MSD ∥ from the fit window's start t₀ to t: a larger "
        "vibration along E raises the MSD plateau without any migration.", "",
    ]
    lines += _table(
        ["condition", "replicas", "t₀ → t (fs)", "MSD ∥ (Å²)", "MSD ⊥ (Å²)", "∥ vs ⊥", "MSD ∥ at E = 0 (Å²)",
         "excess at t (Å²)", "growth t₀ → t (Å²)", "excess growth (Å²)", "field effect"],
        [[r["condition"], str(r["n_replicas_used"]),
          f"{_num(r['window_start_fs'], 6)} → {_num(r['reference_time_fs'], 6)}",
          _pm(r["msd_parallel_A2"], r["msd_parallel_sem_A2"]),
          _pm(r["msd_perpendicular_A2"], r["msd_perpendicular_sem_A2"]), r["parallel_vs_perpendicular"],
          _pm(r["msd_parallel_zero_field_A2"], r["msd_parallel_zero_field_sem_A2"]),
          _pm(r["excess_over_zero_field_A2"], r["excess_over_zero_field_sem_A2"]),
          _pm(r["growth_A2"], r["growth_sem_A2"]),
          _pm(r["excess_growth_over_zero_field_A2"], r["excess_growth_over_zero_field_sem_A2"]), r["field_effect"]]
         for r in claims["msd_along_field"]])
    lines += [f"## 2. {species} migration without defects (drift along E)", "",
              "Expected from the seed study: drift along +E in the amorphous phase, none in the defect-free "
              "crystal (a crystal with a defect has no expectation here).", ""]
    lines += _table(
        ["condition", "replicas", "v∥ (Å/ps)", "drift", "expected", "agrees"],
        [[r["condition"], str(r["n_replicas_used"]), _pm(r["drift_velocity_A_per_ps"], r["drift_velocity_sem_A_per_ps"]),
          r["drift"], r["expected"] or "–", {True: "yes", False: "no", None: "–"}[r["agrees_with_seed_study"]]]
         for r in claims["migration"]])
    lines += ["### Drift per species", "", "Cations along +E and anions against it, in the centre-of-mass frame.", ""]
    lines += _table(
        ["condition", "species", "v∥ (Å/ps)", "drift"],
        [[r["condition"], r["species"], _pm(r["drift_velocity_A_per_ps"], r["drift_velocity_sem_A_per_ps"]), r["drift"]]
         for r in claims["drift_per_species"]])
    lines += ["## 3. Transverse forces from the off-diagonal Born charges", "",
              "Mean magnitudes of the components of e·Zᵀ·E normal to (F⊥) and along (F∥) the field over atoms "
              "and frames; ratio = F⊥ / F∥ per sample.", ""]
    lines += _table(
        ["condition", "species", "mean F⊥ (eV/Å)", "mean F∥ (eV/Å)", "median ratio", "90th pct ratio",
         "fraction above threshold"],
        [[r["condition"], r["species"], _num(r["mean_abs_perp_eV_per_A"]), _num(r["mean_abs_par_eV_per_A"]),
          _num(r["median_ratio"]), _num(r["p90_ratio"]),
          f"{_num(r['fraction_above_threshold'])} (> {_num(r['ratio_threshold'])})"]
         for r in claims["transverse_forces"]])
    lines += [f"## 4. Zero-field Arrhenius fit ({species})", ""]
    lines += _table(
        ["phase", "temperatures (K)", "Ea (eV)", "95 % interval (eV)", "published (eV)", "source", "within 95 %"],
        [[r["phase"], ", ".join(f"{t:g}" for t in r["temperatures_K"]) or "–",
          _pm(r["activation_energy_eV"], r["activation_energy_sem_eV"]), _interval(r["ci95_halfwidth_eV"]),
          _num(r.get("reference_eV")), r.get("reference_source", "–"),
          {True: "yes", False: "no", None: "–"}[r.get("within_ci95")]]
         for r in claims["arrhenius"]])
    notes = sorted({note for r in claims["arrhenius"] for note in r["notes"]})
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    haven = claims.get("haven_ratio_assumed", 1.0)
    lines += ["## 5. Linear response", "",
              "Mobility (drift relative to the host per |E|) against the lowest field of the same phase, "
              "temperature and axis (the linear-response test), and against the Nernst–Einstein mobility "
              f"⟨Z∥⟩ e D / (H_R k_B T) of the zero-field run with H_R = {haven:g}. The drift measures the "
              "charge (collective) diffusion and D the tracer one, so where the response is linear "
              f"μ / μ_NE = {haven:g} / H_R: the comparison measures the Haven ratio (implied H_R) rather "
              "than testing linearity.", ""]
    lines += _table(
        ["condition", "species", "μ (cm²/V/s)", "μ / μ(lowest E)", "vs lowest E", "μ / μ_NE", "vs Nernst–Einstein",
         "implied H_R", "linear response"],
        [[r["condition"], r["species"], _pm(r["mobility_cm2_per_V_s"], r["mobility_sem_cm2_per_V_s"]),
          _pm(r["mu_over_mu_lowest_field"], r["mu_over_mu_lowest_field_sem"]), str(r["verdict_vs_lowest_field"]),
          _pm(r["mu_over_ne"], r["mu_over_ne_sem"]), str(r["verdict_vs_nernst_einstein"]),
          _pm(r.get("implied_haven_ratio"), r.get("implied_haven_ratio_sem")), str(r["linear_response"])]
         for r in claims["linear_response"]])
    published = claims.get("reference_haven_ratios") or []
    lines += [f"- published Haven ratio, {r['phase']}: {_pm(r['haven_ratio'], r.get('sem'))} ({r['source']})"
              for r in published] + ([""] if published else [])
    return "\n".join(lines)


def write_claims(claims: dict, json_path: str | Path, markdown_path: str | Path) -> tuple[Path, Path]:
    """``claims.json`` and ``claims.md``, each written atomically."""
    json_path = write_json(json_path, claims)
    markdown_path = Path(markdown_path)
    atomic.write_text(markdown_path, claims_markdown(claims) + "\n")
    return json_path, markdown_path
