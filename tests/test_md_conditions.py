"""Condition expansion: names, products, zero field once, stable seeds."""

import numpy as np
import pytest

from bornfield.config import validate_section
from bornfield.errors import ConfigError
from bornfield.md.conditions import expand_conditions, replica_seed


def _settings(**sweep):
    return validate_section({"sweep": sweep}, "md")


def test_product_with_zero_field_once_per_phase_and_temperature():
    s = _settings(
        phases=["amorphous", "beta_vacancy"],
        temperatures_K=[600, 900],
        field_strengths_V_per_A=[0.0, 0.05, 0.1],
        field_directions=["x", "z", [1, 1, 0]],
        replicas=3,
    )
    conditions = expand_conditions(s)
    # per phase/T: 1 zero field + 2 strengths x 3 directions
    assert len(conditions) == 2 * 2 * (1 + 2 * 3)
    names = [c.name for c in conditions]
    assert len(set(names)) == len(names)
    assert "amorphous_T600K_E0.1_x" in names
    assert "beta_vacancy_T900K_E0_none" in names
    assert "amorphous_T600K_E0.05_u0.7071_0.7071_0" in names
    for c in conditions:
        assert c.replicas == 3 and len(c.seeds) == 3 and len(set(c.seeds)) == 3
        if c.field_strength_V_per_A == 0:
            assert c.direction_label == "none"
            assert np.all(c.field_V_per_A == 0)
        else:
            assert np.isclose(np.linalg.norm(c.field_direction), 1.0)
            assert np.isclose(np.linalg.norm(c.field_V_per_A), c.field_strength_V_per_A)


def test_vector_direction_is_normalised_and_axis_vectors_get_axis_labels():
    s = _settings(phases=["a"], temperatures_K=[300], field_strengths_V_per_A=[0.2],
                  field_directions=[[0, 0, -5], "-y", [3, 4, 0]])
    labels = {c.direction_label: c for c in expand_conditions(s)}
    assert set(labels) == {"mz", "my", "u0.6_0.8_0"}
    assert np.allclose(labels["u0.6_0.8_0"].field_V_per_A, [0.12, 0.16, 0.0])
    assert np.allclose(labels["mz"].field_V_per_A, [0, 0, -0.2])


def test_seeds_stable_and_independent_of_other_conditions():
    one = expand_conditions(_settings(phases=["a"], temperatures_K=[600], field_strengths_V_per_A=[0.1]))
    two = expand_conditions(_settings(phases=["b", "a"], temperatures_K=[300, 600],
                                      field_strengths_V_per_A=[0.0, 0.1]))
    by_name = {c.name: c for c in two}
    assert by_name[one[0].name].seeds == one[0].seeds
    assert one[0].seeds[0] == replica_seed(20231, "a_T600K_E0.1_x", 0)
    other_seed = validate_section({"seed": 7, "sweep": {"phases": ["a"], "temperatures_K": [600],
                                                       "field_strengths_V_per_A": [0.1]}}, "md")
    assert expand_conditions(other_seed)[0].seeds != one[0].seeds


def test_extra_conditions_appended_duplicates_merged_conflicts_rejected():
    s = validate_section({
        "sweep": {"phases": ["a"], "temperatures_K": [600], "field_strengths_V_per_A": [0.1]},
        "extra_conditions": [
            {"phase": "a", "temperature_K": 600, "field_strength_V_per_A": 0.1},  # same as sweep
            {"phase": "g", "temperature_K": 900, "field_strength_V_per_A": 0.05,
             "field_direction": "y", "replicas": 4},
        ]}, "md")
    conditions = expand_conditions(s)
    assert [c.name for c in conditions] == ["a_T600K_E0.1_x", "g_T900K_E0.05_y"]
    assert conditions[1].replicas == 4
    bad = dict(s, extra_conditions=[{"phase": "a", "temperature_K": 600,
                                     "field_strength_V_per_A": 0.1, "replicas": 5}])
    with pytest.raises(ConfigError, match="share the name"):
        expand_conditions(bad)


def test_bad_directions_rejected():
    with pytest.raises(ConfigError):
        validate_section({"sweep": {"field_directions": ["w"]}}, "md")
    s = _settings(phases=["a"], temperatures_K=[600], field_strengths_V_per_A=[0.1],
                  field_directions=[[0, 0, 0]])
    with pytest.raises(ConfigError, match="zero length"):
        expand_conditions(s)


def test_an_extra_condition_runs_its_own_production_length():
    from bornfield.config import command_settings, resolve_config

    md = {"production_steps": 2000, "output": {"trajectory_stride": 10},
          "sweep": {"phases": ["amorphous"], "temperatures_K": [900], "field_strengths_V_per_A": [0.1]},
          "extra_conditions": [{"phase": "beta_vacancy", "temperature_K": 1200, "field_strength_V_per_A": 0.1,
                                "production_steps": 15000}]}
    settings = resolve_config({"md": md})
    conditions = {c.name: c for c in expand_conditions(settings.md)}
    assert conditions["amorphous_T900K_E0.1_x"].production_steps is None
    assert conditions["beta_vacancy_T1200K_E0.1_x"].production_steps == 15000
    # what `bornfield md run` reads for each condition (the Snakemake rule passes the same)
    run = {name: command_settings(settings, "md run", condition=name, inputs_given=True).md["production_steps"]
           for name in conditions}
    assert run == {"amorphous_T900K_E0.1_x": 2000, "beta_vacancy_T1200K_E0.1_x": 15000}
    # the trajectory stride is checked against the shortest run
    short = {**md, "extra_conditions": [{**md["extra_conditions"][0], "production_steps": 5}]}
    with pytest.raises(ConfigError, match="shortest production run"):
        resolve_config({"md": short})


def test_scheduling_priorities_start_the_longest_condition_first():
    from bornfield.config import resolve_config
    from bornfield.md.conditions import condition_work, configured_cell_atoms, scheduling_priorities

    md = {"production_steps": 2500, "equilibration_steps": 250,
          "sweep": {"phases": ["amorphous"], "temperatures_K": [900], "field_strengths_V_per_A": [0.0, 0.1],
                    "replicas": 4},
          "extra_conditions": [{"phase": "beta_vacancy", "temperature_K": 1200, "field_strength_V_per_A": 0.1,
                                "field_direction": "y", "replicas": 8, "production_steps": 10000},
                               {"phase": "beta", "temperature_K": 1200, "field_strength_V_per_A": 0.0}]}
    settings = resolve_config({"md": md, "structures": {"amorphous": {"md_cells": {"n_atoms": 192}},
                                                        "md_supercell": {"target_atoms": 64}}})
    work = {c.name: condition_work(settings.md, c, configured_cell_atoms(settings.structures, c.phase))
            for c in expand_conditions(settings.md)}
    assert work["amorphous_T900K_E0.1_x"] == 4 * 2750 * 192
    assert work["beta_vacancy_T1200K_E0.1_y"] == 8 * 10250 * 64
    priority = scheduling_priorities(settings.md, settings.structures)
    assert priority["beta_vacancy_T1200K_E0.1_y"] == 9
    assert priority["amorphous_T900K_E0.1_x"] == priority["amorphous_T900K_E0_none"] == 1 + round(8 * 2112000 / 5248000)
    assert priority["beta_T1200K_E0_none"] == 1 + round(8 * 4 * 2750 * 64 / 5248000) < priority["amorphous_T900K_E0.1_x"]
    assert all(1 <= p <= 9 for p in priority.values())
