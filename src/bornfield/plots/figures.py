"""Figure builders. Each reads stored analysis results only (no trajectories).

* :func:`plot_condition` — one condition: MSD ∥/⊥ per species with error bands
  and the fit window, drift displacement with the fitted drift velocity, and the
  distribution of |F_⊥|/|F_∥|.
* :func:`plot_sweep_msd` — MSD of the mobile species at a fixed lag vs field strength per phase.
* :func:`plot_mobility` — field-driven mobility vs field strength against the
  Nernst–Einstein value of the zero-field run, with the linear-response verdicts.
* :func:`plot_transverse` — |F_⊥|/|F_∥| distributions, crystalline vs amorphous, per species.
* :func:`plot_arrhenius` — zero-field D(T) with the Arrhenius fits.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from bornfield.analysis.sweep import phase_class
from bornfield.analysis.transport import A2_PER_FS_IN_CM2_PER_S, MOBILITY_A2_PER_V_FS_IN_CM2_PER_V_S
from bornfield.plots import style as st

PS = 1.0e-3  # fs -> ps


def _axis_name(vector: list[float]) -> str:
    names = {(1.0, 0.0, 0.0): "x", (0.0, 1.0, 0.0): "y", (0.0, 0.0, 1.0): "z"}
    key = tuple(round(float(v), 6) for v in vector)
    return names.get(key, "[" + ", ".join(f"{v:.2f}" for v in vector) + "]")


def _title(condition: dict) -> str:
    strength = condition.get("field_strength_V_per_A", 0.0)
    field = f"E = {strength:g} V/Å" if strength else "E = 0"
    phase = condition.get("phase") or ""
    return f"{condition.get('name')}: {phase} {condition.get('temperature_K', float('nan')):g} K, {field}".replace("  ", " ")


def plot_condition(record: dict, stem: str | Path, formats=("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Three panels for one condition (see module docstring)."""
    with st.style():
        fig, axes = plt.subplots(1, 3, figsize=(st.DOUBLE_COLUMN_IN, 2.9))
        if record.get("state") != "analysed":
            for ax in axes:
                st.no_data(ax, "no completed replica")
            fig.suptitle(f"{record.get('condition', {}).get('name')}: {record['replicas']['n_failed']} failed replicas")
            return st.save_figure(fig, stem, formats, dpi)
        condition = record["condition"]
        has_field = condition["field_strength_V_per_A"] > 0
        axis = _axis_name(record["parallel_axis"])
        lag_ps = np.asarray(record["lag_fs"]) * PS
        window = np.asarray(record["fit_window_fs"]) * PS
        ax_msd, ax_drift, ax_ratio = axes
        species_handles = []
        mobility_lines = []
        for symbol, data in record["species"].items():
            color = st.species_color(symbol)
            msd = data["msd"]
            handle = st.line_with_band(ax_msd, lag_ps, msd["parallel"]["value"], msd["parallel"]["sem"], color=color, label=symbol)
            species_handles.append(handle)
            st.line_with_band(
                ax_msd, lag_ps, msd["perpendicular_per_direction"]["value"], msd["perpendicular_per_direction"]["sem"],
                color=color, linestyle="--",
            )
            drift = msd["drift_parallel"]
            velocity = data["drift_velocity_A_per_fs"]["parallel"]["value"]
            st.line_with_band(ax_drift, lag_ps, drift["value"], drift["sem"], color=color)
            if has_field and data.get("mobility"):
                mobility = data["mobility"]["cm2_per_V_s"]
                sem = mobility["sem"]
                mobility_lines.append(
                    f"μ$_{{{symbol}}}$ = {mobility['value']:.3g}" + (f" ± {sem:.2g}" if sem is not None else "")
                )
                fit_t = np.linspace(window[0], window[1], 2)
                offset = _intercept(lag_ps, drift["value"], velocity / PS, window)
                ax_drift.plot(fit_t, velocity / PS * fit_t + offset, color="0.15", linewidth=0.9, linestyle=":")
        for ax in (ax_msd, ax_drift):
            ax.axvspan(window[0], window[1], color="0.85", alpha=0.5, linewidth=0)
            ax.set_xlabel(st.LABELS["lag"])
            ax.set_xlim(0, lag_ps[-1])
        ax_msd.set_ylabel(st.LABELS["msd"])
        ax_msd.set_title(f"MSD ∥ {'E' if has_field else 'reference axis'} ({axis})")
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        ax_msd.legend(
            handles=[Line2D([], [], color="0.2", label="∥"), Line2D([], [], color="0.2", linestyle="--", label="⊥ (per direction)"),
                     Patch(color="0.85", label="fit window")],
            loc="best",
        )
        ax_drift.set_ylabel(st.LABELS["drift"])
        ax_drift.axhline(0.0, color="0.5", linewidth=0.6)
        ax_drift.set_title("drift along ∥ (COM frame)")
        if mobility_lines:
            ax_drift.text(0.03, 0.97, "v∥ rel. host / |E|, cm²/(V·s):\n" + "\n".join(mobility_lines), transform=ax_drift.transAxes, va="top", ha="left",
                          fontsize=6.5, bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.8", "boxstyle": "round,pad=0.3"})
        elif not has_field:
            ax_drift.text(0.03, 0.97, "E = 0: no drift expected", transform=ax_drift.transAxes, va="top", fontsize=7)
        fig.legend(handles=species_handles, loc="outside lower center", ncol=len(species_handles), title=None)
        _ratio_panel(ax_ratio, record)
        n_used, n_failed = record["replicas"]["n_used"], record["replicas"]["n_failed"]
        fig.suptitle(f"{_title(condition)} — {n_used} replica(s) used, {n_failed} failed; bands: ±1 s.e.", fontsize=8.5)
        return st.save_figure(fig, stem, formats, dpi)


def _intercept(lag_ps, values, slope_per_ps, window) -> float:
    lag_ps = np.asarray(lag_ps)
    inside = (lag_ps >= window[0]) & (lag_ps <= window[1])
    values = np.asarray(values)
    if not inside.any():
        return 0.0
    return float(np.mean(values[inside] - slope_per_ps * lag_ps[inside]))


def _ratio_panel(ax, record: dict) -> None:
    drawn = False
    threshold = None
    hypothetical = False
    for symbol, data in record["species"].items():
        stats = data.get("transverse_forces") or {}
        if not stats.get("available"):
            continue
        histogram = stats["histograms"]["ratio"]
        edges = np.asarray(histogram["edges"])
        ax.stairs(histogram["density"], edges, color=st.species_color(symbol),
                  label=f"{symbol}: {100 * stats['fraction_above_threshold']:.0f}% > {stats['ratio_threshold']:g}")
        threshold = stats["ratio_threshold"]
        hypothetical = stats.get("hypothetical_unit_field", False)
        drawn = True
    if not drawn:
        reasons = {(data.get("transverse_forces") or {}).get("reason") for data in record["species"].values()} - {None}
        reason = reasons.pop() if len(reasons) == 1 else "no field forces or Born charges stored"
        st.no_data(ax, "transverse forces:\n" + reason.replace(": ", ":\n"))
        return
    ax.axvline(threshold, color="0.3", linestyle=":", linewidth=0.9)
    ax.set_xlabel(st.LABELS["ratio"])
    ax.set_ylabel(st.LABELS["density"])
    ax.set_yscale("log")
    ax.set_title("transverse field force" + (" (Zᵀê, unit field)" if hypothetical else ""))
    ax.legend(loc="upper right")


def _group_label(condition: dict, direction: str) -> str:
    return f"{condition.get('phase')} {condition['temperature_K']:g} K, E∥{direction}"


def plot_sweep_msd(records: list[dict], species: str, stem: str | Path, formats=("png", "pdf"), dpi: int = 150) -> list[Path]:
    """MSD_∥ (filled) and MSD_⊥ per direction (open) of ``species`` at the reference lag vs |E|.

    Zero-field points are projected on each group's field direction from the
    stored MSD tensor, so E = 0 and E > 0 are compared along the same axis.
    """
    analysed = [r for r in records if r.get("state") == "analysed" and species in r["species"]]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    zero = {}
    for record in analysed:
        condition = record["condition"]
        if condition["field_strength_V_per_A"] > 0:
            groups[(condition.get("phase"), condition["temperature_K"], _axis_name(record["parallel_axis"]))].append(record)
        else:
            zero[(condition.get("phase"), condition["temperature_K"])] = record
    for (phase, temperature), record in zero.items():
        if not any(k[0] == phase and k[1] == temperature for k in groups):
            groups[(phase, temperature, _axis_name(record["parallel_axis"]))] = []
    temperatures = sorted({k[1] for k in groups})
    with st.style():
        fig, ax = plt.subplots(figsize=(st.SINGLE_COLUMN_IN + 1.4, 2.9))
        if not groups:
            st.no_data(ax, f"no analysed condition with {species}")
            return st.save_figure(fig, stem, formats, dpi)
        reference_times = set()
        for (phase, temperature, axis), members in sorted(groups.items(), key=lambda kv: str(kv[0])):
            vector = np.asarray(members[0]["parallel_axis"] if members else zero[(phase, temperature)]["parallel_axis"])
            points = []
            base = zero.get((phase, temperature))
            for record in ([base] if base else []) + sorted(members, key=lambda r: r["condition"]["field_strength_V_per_A"]):
                at_ref = record["species"][species]["msd_at_reference"]
                reference_times.add(round(at_ref["time_fs"], 6))
                tensor = np.asarray(at_ref["tensor_A2"]["value"])
                sem_t = at_ref["tensor_A2"]["sem"]
                parallel = float(vector @ tensor @ vector)
                perpendicular = 0.5 * (float(np.trace(tensor)) - parallel)
                if sem_t is not None:
                    sem_t = np.asarray(sem_t)
                    par_sem = float(np.sqrt(((np.outer(vector, vector) * sem_t) ** 2).sum()))
                    perp_sem = 0.5 * float(np.sqrt(np.sum(np.diag(sem_t) ** 2) + par_sem**2))
                else:
                    par_sem = perp_sem = np.nan
                points.append((record["condition"]["field_strength_V_per_A"], parallel, par_sem, perpendicular, perp_sem))
            points = np.array(points)
            color = st.phase_color(phase)
            marker = st.temperature_marker(temperatures.index(temperature))
            label = f"{phase} {temperature:g} K" + ("" if axis == "x" else f", E∥{axis}")
            ax.errorbar(points[:, 0], points[:, 1], yerr=np.nan_to_num(points[:, 2]), color=color, marker=marker, capsize=2, label=label)
            ax.errorbar(points[:, 0], points[:, 3], yerr=np.nan_to_num(points[:, 4]), color=color, marker=marker,
                        markerfacecolor="white", linestyle="--", capsize=2)
        times = ", ".join(f"{t * PS:g}" for t in sorted(reference_times))
        ax.set_xlabel(st.LABELS["field"])
        ax.set_ylabel(f"{species} MSD at τ = {times} ps (Å²)")
        ax.set_yscale("log")
        ax.set_title(f"{species}: ∥ E (filled, solid) and ⊥ E per direction (open, dashed)", fontsize=8)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=6.5)
        return st.save_figure(fig, stem, formats, dpi)


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV table as dicts (numbers converted to float where possible, empty -> NaN)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            converted = {}
            for key, value in row.items():
                try:
                    converted[key] = float(value) if value != "" else float("nan")
                except ValueError:
                    converted[key] = value
            rows.append(converted)
    return rows


def plot_mobility(linear_rows: list[dict], species: str, stem: str | Path, formats=("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Left: μ(E) of the mobile species (log scale) with ⟨Z∥⟩·e·D/(H_R k_B T) of the zero-field
    run as a dotted line and band. Right: μ / that expectation with the linear-response tolerance.

    Marker fill: filled = linear, open = nonlinear, faint = undetermined.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in linear_rows:
        groups[(row["phase"], row["temperature_K"], row["direction"])].append(row)
    temperatures = sorted({k[1] for k in groups})
    with st.style():
        fig, (ax, ax_ratio) = plt.subplots(1, 2, figsize=(st.DOUBLE_COLUMN_IN, 2.8))
        if not groups:
            st.no_data(ax, "no field-driven condition analysed")
            st.no_data(ax_ratio, "no field-driven condition analysed")
            return st.save_figure(fig, stem, formats, dpi)
        hidden = 0
        for (phase, temperature, direction), rows in sorted(groups.items(), key=lambda kv: str(kv[0])):
            rows.sort(key=lambda r: r["field_V_per_A"])
            color = st.phase_color(phase)
            marker = st.temperature_marker(temperatures.index(temperature))
            label = f"{phase} {temperature:g} K" + ("" if direction == "x" else f", E∥{direction}")
            strengths = np.array([r["field_V_per_A"] for r in rows])
            mobility = np.array([r["mobility_cm2_per_V_s"] for r in rows])
            sem = np.nan_to_num(np.array([r["mobility_sem_cm2_per_V_s"] for r in rows]))
            positive = mobility > 0
            hidden += int((~positive).sum())
            ax.plot(strengths[positive], mobility[positive], color=color, linewidth=0.8, label=label, marker="none")
            ne = rows[0].get("ne_mobility_cm2_per_V_s", float("nan"))
            ratio = np.array([r.get("mu_over_ne", float("nan")) for r in rows], dtype=float)
            ratio_sem = np.nan_to_num(np.array([r.get("mu_over_ne_sem", float("nan")) for r in rows], dtype=float))
            for i, row in enumerate(rows):
                verdict = str(row["linear_response"])
                face = "white" if verdict == "nonlinear" else color
                alpha = 0.35 if verdict.startswith("undetermined") else 1.0
                if positive[i]:
                    ax.errorbar([strengths[i]], [mobility[i]], yerr=[[min(sem[i], 0.999 * mobility[i])], [sem[i]]], color=color,
                                marker=marker, capsize=2, markerfacecolor=face, alpha=alpha)
                if math.isfinite(ratio[i]):
                    ax_ratio.errorbar([strengths[i]], [ratio[i]], yerr=[ratio_sem[i]], color=color, marker=marker, capsize=2,
                                      markerfacecolor=face, alpha=alpha)
            if np.isfinite(ratio).any():
                ax_ratio.plot(strengths[np.isfinite(ratio)], ratio[np.isfinite(ratio)], color=color, linewidth=0.8)
            if isinstance(ne, float) and math.isfinite(ne) and ne > 0:
                ne_sem = rows[0].get("ne_mobility_sem_A2_per_V_fs", float("nan")) * MOBILITY_A2_PER_V_FS_IN_CM2_PER_V_S
                ax.axhline(ne, color=color, linestyle=":", linewidth=1.0)
                if math.isfinite(ne_sem):
                    ax.axhspan(max(ne - ne_sem, ne * 1e-3), ne + ne_sem, color=color, alpha=0.12, linewidth=0)
        ax.plot([], [], color="0.3", linestyle=":", label="⟨Z∥⟩eD/(H$_R$k$_B$T), E = 0")
        ax.set_xlabel(st.LABELS["field"])
        ax.set_ylabel(f"{species} " + st.LABELS["mobility"])
        ax.set_yscale("log")
        ax.set_xlim(left=0)
        ax.set_title(f"{species} mobility v∥/|E|" + (f" ({hidden} non-positive values not shown)" if hidden else ""), fontsize=8)
        ax.legend(loc="best", fontsize=6.5)
        ax_ratio.axhline(1.0, color="0.3", linewidth=0.8)
        ax_ratio.set_xlabel(st.LABELS["field"])
        ax_ratio.set_ylabel("μ / (⟨Z∥⟩ e D/(H$_R$k$_B$T))")
        ax_ratio.set_xlim(left=0)
        lower, upper = ax_ratio.get_ylim()
        ax_ratio.set_ylim(max(lower, -1.0), min(upper, 4.0))
        ax_ratio.set_title("linear response = 1; filled: linear, open: nonlinear, faint: undetermined", fontsize=7)
        return st.save_figure(fig, stem, formats, dpi)


def plot_transverse(records: list[dict], stem: str | Path, formats=("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Per species (columns): distributions of |F_⊥|/|F_∥| (top) and of |F_⊥|/|E| (bottom, e),
    one curve per phase pooled over temperatures and field strengths; amorphous solid,
    crystalline dashed."""
    pooled: dict[tuple[str, str], dict] = {}
    species_order: list[str] = []
    for record in records:
        if record.get("state") != "analysed":
            continue
        phase = record["condition"].get("phase") or "unknown"
        for symbol, data in record["species"].items():
            stats = data.get("transverse_forces") or {}
            if not stats.get("available"):
                continue
            if symbol not in species_order:
                species_order.append(symbol)
            ratio = stats["histograms"]["ratio"]
            charge = stats["histograms"]["perp_charge_e"]
            hypothetical = bool(stats.get("hypothetical_unit_field", False))
            entry = pooled.setdefault(
                (symbol, phase, hypothetical),
                {"ratio_edges": np.asarray(ratio["edges"]), "charge_edges": np.asarray(charge["edges"]),
                 "ratio": 0.0, "charge": 0.0, "n": 0, "exceed": 0.0, "perp_charge": 0.0, "real": False},
            )
            if len(entry["ratio_edges"]) != len(ratio["edges"]) or len(entry["charge_edges"]) != len(charge["edges"]):
                continue
            n = stats["n_samples"]
            entry["ratio"] = entry["ratio"] + np.asarray(ratio["density"]) * n
            entry["charge"] = entry["charge"] + np.asarray(charge["density"]) * n
            entry["n"] += n
            entry["exceed"] += stats["fraction_above_threshold"] * n
            entry["perp_charge"] += stats["mean_perp_charge_e"] * n
            entry["real"] = not hypothetical
            entry["threshold"] = stats["ratio_threshold"]
    # zero-field runs (Zᵀê for a unit field) are shown only for a phase without field runs
    pooled = {
        (symbol, phase): entry
        for (symbol, phase, hypothetical), entry in pooled.items()
        if not hypothetical or (symbol, phase, False) not in pooled
    }
    with st.style():
        n_species = max(len(species_order), 1)
        fig, axes = plt.subplots(2, n_species, figsize=(st.DOUBLE_COLUMN_IN, 4.4), squeeze=False)
        if not species_order:
            for ax in axes.ravel():
                st.no_data(ax, "no field forces or Born charges stored in any trajectory")
            return st.save_figure(fig, stem, formats, dpi)
        for column, symbol in enumerate(species_order):
            ax_ratio, ax_charge = axes[0, column], axes[1, column]
            threshold = None
            for (sym, phase), entry in sorted(pooled.items()):
                if sym != symbol or entry["n"] == 0:
                    continue
                linestyle = "-" if phase_class(phase) == "amorphous" else "--"
                color = st.phase_color(phase)
                tag = "" if entry["real"] else " (Zᵀê)"
                ax_ratio.stairs(entry["ratio"] / entry["n"], entry["ratio_edges"], color=color, linestyle=linestyle,
                                label=f"{phase}: {100 * entry['exceed'] / entry['n']:.0f}% > {entry['threshold']:g}{tag}")
                ax_charge.stairs(entry["charge"] / entry["n"], entry["charge_edges"], color=color, linestyle=linestyle,
                                 label=f"{phase}: mean {entry['perp_charge'] / entry['n']:.2f} e{tag}")
                threshold = entry["threshold"]
            if threshold is not None:
                ax_ratio.axvline(threshold, color="0.3", linestyle=":", linewidth=0.9)
            # zoom on the occupied range (histogram range from the settings; overflow is in the legend)
            for ax, key, edges_key, floor in ((ax_ratio, "ratio", "ratio_edges", 3 * (threshold or 0.1)), (ax_charge, "charge", "charge_edges", 0.5)):
                occupied = [e[edges_key][1:][np.asarray(e[key]) > 0].max() for (sym, _), e in pooled.items()
                            if sym == symbol and e["n"] and np.any(np.asarray(e[key]) > 0)]
                if occupied:
                    ax.set_xlim(0.0, min(max(1.15 * max(occupied), floor), pooled_edges_max(pooled, symbol, edges_key)))
            for ax in (ax_ratio, ax_charge):
                ax.set_yscale("log")
                ax.legend(loc="upper right", fontsize=6)
            ax_ratio.set_title(symbol)
            ax_ratio.set_xlabel(st.LABELS["ratio"])
            ax_charge.set_xlabel("|F$_⊥$| / |E| (e)")
        axes[0, 0].set_ylabel(st.LABELS["density"])
        axes[1, 0].set_ylabel(st.LABELS["density"])
        fig.suptitle("transverse field force F = Zᵀ·E: amorphous (solid) vs crystalline (dashed)", fontsize=8.5)
        return st.save_figure(fig, stem, formats, dpi)


def pooled_edges_max(pooled: dict, symbol: str, edges_key: str) -> float:
    """Upper histogram edge of ``symbol`` (the configured range)."""
    return max(float(e[edges_key][-1]) for (sym, _), e in pooled.items() if sym == symbol)


def plot_arrhenius(result: dict, stem: str | Path, formats=("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Zero-field D(T) of the mobile species per phase, Arrhenius fit and Ea ± s.e."""
    species = result.get("species", "Li")
    with st.style():
        fig, ax = plt.subplots(figsize=(st.SINGLE_COLUMN_IN + 0.4, 2.8))
        drawn = False
        for phase, entry in sorted(result.get("phases", {}).items()):
            points = [p for p in entry["points"] if p["D_A2_per_fs"] is not None and p["D_A2_per_fs"] > 0]
            if not points:
                continue
            color = st.phase_color(phase)
            x = np.array([1000.0 / p["temperature_K"] for p in points])
            d = np.array([p["D_A2_per_fs"] for p in points]) * A2_PER_FS_IN_CM2_PER_S
            sem = np.array([p["D_sem_A2_per_fs"] if p["D_sem_A2_per_fs"] is not None else np.nan for p in points]) * A2_PER_FS_IN_CM2_PER_S
            used = np.array([p["used_in_fit"] for p in points])
            fit = entry.get("fit")
            label = phase
            if fit:
                sem_ea = fit["activation_energy_sem_eV"]
                label += f": Ea = {fit['activation_energy_eV']:.3f}" + (f" ± {sem_ea:.3f}" if sem_ea is not None else "") + " eV"
                grid = np.linspace(x.min() * 0.97, x.max() * 1.03, 50)
                ax.plot(grid, np.exp(fit["ln_D0_A2_per_fs"] - fit["activation_energy_eV"] / (8.617333262e-5) * grid / 1000.0) * A2_PER_FS_IN_CM2_PER_S,
                        color=color, linewidth=1.0)
            ax.errorbar(x[used], d[used], yerr=np.nan_to_num(sem[used]), color=color, marker="o", linestyle="none", capsize=2, label=label)
            if (~used).any():
                ax.plot(x[~used], d[~used], color=color, marker="x", linestyle="none", label=f"{phase}: not diffusive (excluded)")
            drawn = True
        if not drawn:
            st.no_data(ax, f"no zero-field {species} diffusion to fit")
            return st.save_figure(fig, stem, formats, dpi)
        ax.set_yscale("log")
        ax.set_xlabel(st.LABELS["inverse_T"])
        ax.set_ylabel(f"{species} " + st.LABELS["diffusion"])
        ax.set_title(f"zero-field {species} diffusion, Arrhenius fit (Ea ± s.e.)")
        ax.legend(loc="lower left", fontsize=6.5)
        return st.save_figure(fig, stem, formats, dpi)
