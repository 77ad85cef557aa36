"""The ``bornfield`` command tree: one help format, one option vocabulary (docs/cli.md)."""

from __future__ import annotations

import argparse

import pytest

from bornfield.cli import build_parser, main

FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._VersionAction)


def _tree(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("bornfield",)):
    """(command path, parser) of every parser in the tree, the root first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _tree(sub, path + (name,))


PARSERS = list(_tree(build_parser()))


def _options(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def test_every_help_is_plain_text_with_placeholders():
    """No RST markup in any --help; COMMAND at the top, SUBCOMMAND below; sub-commands required."""
    for path, parser in PARSERS:
        text = parser.format_help()
        assert "``" not in text and ":func:" not in text and ":class:" not in text, " ".join(path)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                assert action.metavar == ("COMMAND" if len(path) == 1 else "SUBCOMMAND"), " ".join(path)
                assert len(path) == 1 or action.required, " ".join(path)


def test_every_option_has_help_and_shows_its_default():
    """Help text everywhere; the formatter shows a default value, an option without one says
    in its help what leaving it out means (one mechanism: no hand-written literal defaults)."""
    for path, parser in PARSERS:
        formatter = parser._get_formatter()
        # one of a required group is required: no default to show
        required = {id(a) for group in parser._mutually_exclusive_groups if group.required for a in group._group_actions}
        for action in _options(parser):
            where = f"{' '.join(path)} {action.option_strings or action.dest}"
            assert action.help and action.help.strip(), f"{where}: no help"
            if not action.option_strings or action.required or id(action) in required or isinstance(action, FLAG_ACTIONS):
                continue
            shown = formatter._get_help_string(action)
            assert "(default: " in shown, f"{where}: default not shown: {shown!r}"
            if action.default is not None:
                assert "(default" not in action.help, f"{where}: default written by hand: {action.help!r}"


@pytest.mark.parametrize("argv", [["-v", "md", "list"], ["md", "-v", "list"], ["md", "list", "-v"]])
def test_verbose_is_accepted_before_and_after_a_sub_command(argv):
    assert build_parser().parse_args(argv).verbose is True
    assert getattr(build_parser().parse_args(["md", "list"]), "verbose", False) is False


def test_md_list_verbose_with_a_config(repo_root, capsys):
    assert main(["md", "list", "-v", "--config", str(repo_root / ".test" / "config.yaml")]) == 0
    names = capsys.readouterr().out.split()
    assert names and all("_T" in name for name in names)


def test_train_init_takes_the_model_kinds_of_the_other_commands(tmp_path):
    """--kind baseline (as in 'train baseline', 'learning-curve --kind', '--baseline') writes a row model."""
    from bornfield.models import load_model

    path = tmp_path / "baseline.pt"
    assert main(["train", "init", "--kind", "baseline", "--species", "Li", "O", "--cutoff", "3.0",
                 "--field-axis", "2", "--output", str(path)]) == 0
    model = load_model(path, kind="born_row")
    assert tuple(model.species) == ("Li", "O")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "init", "--kind", "born_row", "--species", "Li", "--output", "x.pt"])


@pytest.mark.parametrize("argv", [
    ["train", "evaluate", "--dataset", "d.extxyz", "--output", "r.json", "--potential"],
    ["predict", "--structures", "s.extxyz", "--output", "o.extxyz", "--born"],
    ["md", "run", "--condition", "c", "--potential"],
])
def test_a_model_option_takes_one_or_more_files(argv, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert "expected at least one argument" in capsys.readouterr().err


def test_md_run_refuses_a_born_committee(tmp_path, capsys):
    assert main(["md", "run", "--condition", "beta_T300K_E0_none", "--potential", "p0.pt", "p1.pt",
                 "--born", "b0.pt", "b1.pt"]) == 2
    assert "give one file" in capsys.readouterr().err
