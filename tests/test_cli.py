"""The ``bornfield`` command tree: one help format, one option vocabulary (docs/cli.md)."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from bornfield.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]

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
                assert "default:" not in action.help, f"{where}: default written by hand: {action.help!r}"


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


# ------------------------------------------------------------ the vocabulary

RETIRED = {"--out", "--outdir", "--output-stem", "--png", "--csv", "--summary", "--report", "--plots-dir",
           "--cells", "--input", "--config-json", "-n", "--json", "--figures-dir"}
"""Spellings of before the vocabulary; allowed only as the table of docs/cli.md defines them."""
OUTPUT_LIKE = re.compile(r"^--(out|output|report|figures|plots|json|png|csv|summary)|-(dir|csv|json|png|log)$")


def _vocabulary() -> set[str]:
    """Option names in the first column of the table in docs/cli.md."""
    names = set()
    for line in (REPO / "docs" / "cli.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`(--?[a-z][a-z-]*)`", line.split("|")[1]))
    return names


def _leaf(words: list[str]) -> tuple[tuple[str, ...], argparse.ArgumentParser]:
    """The parser of 'bornfield <words...>' (as deep as the words name sub-commands)."""
    parsers = dict(PARSERS)
    path = ("bornfield",)
    for word in words:
        if path + (word,) not in parsers:
            break
        path += (word,)
    return path, parsers[path]


def test_option_names_follow_the_vocabulary():
    vocabulary = _vocabulary()
    assert {"--output", "--output-dir", "--report-json", "--potential", "--config", "--settings"} <= vocabulary
    commands_of = defaultdict(set)
    for path, parser in PARSERS:
        names = {n for a in _options(parser) for n in a.option_strings}
        for action in _options(parser):
            where = f"{' '.join(path)} {action.option_strings or action.dest}"
            assert action.nargs not in ("*", "?"), f"{where}: a list option takes one or more values"
            for name in action.option_strings:
                commands_of[name].add(path)
                assert name not in RETIRED or name in vocabulary, f"{where}: retired spelling"
                assert not OUTPUT_LIKE.search(name) or name in vocabulary, f"{where}: output option not in docs/cli.md"
            if action.dest in ("potential", "born", "baseline"):
                assert action.nargs == "+", f"{where}: model files are one or more"
            if action.dest in ("output", "output_dir", "report_json", "report_png", "figures_dir"):
                assert action.nargs is None, where
        if "--json" in names:  # a stdout format switch, never a file
            assert isinstance(parser._option_string_actions["--json"], argparse._StoreTrueAction), path
        if "--figures-dir" in names:  # figures besides the main output
            assert "--output" in names, path
    shared = {name for name, paths in commands_of.items() if len({p for p in paths if len(p) > 1}) > 1}
    assert shared <= vocabulary, f"options of several commands missing from docs/cli.md: {sorted(shared - vocabulary)}"


def _rule_commands() -> list[tuple[str, list[str]]]:
    """(rule file, 'bornfield ...' words) of every shell command in workflow/rules/*.smk."""
    commands = []
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.strip() != "shell:":
                continue
            text = ""
            for follow in lines[i + 1:]:
                literal = re.fullmatch(r'\s*"(.*)"\s*', follow)
                if not literal:
                    break
                text += literal.group(1)
            for part in re.split(r"&&|\|\||;", text):
                if "bornfield " in part:
                    commands.append((path.name, part[part.index("bornfield "):].split(" > ")[0].split()))
    return commands


def test_every_rule_calls_options_the_cli_has():
    """Static check of every rule (also those a dry run cannot reach: dft_job, explore, select)."""
    commands = _rule_commands()
    assert len(commands) >= 25
    for rule_file, words in commands:
        path, parser = _leaf(words[1:])
        assert hasattr(parser, "_defaults") and parser.get_default("func") is not None, (rule_file, words)
        known = set(parser._option_string_actions)
        for word in words:
            if word.startswith("--"):
                assert word in known, f"{rule_file}: 'bornfield {' '.join(path[1:])}' has no option {word}"


def _dry_run_commands(*args: str, cwd: Path) -> list[list[str]]:
    snakemake = Path(sys.executable).with_name("snakemake")
    result = subprocess.run([str(snakemake), "-n", "-p", "--cores", "1", "-s", str(REPO / "Snakefile"), *args],
                            cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    commands = []
    for line in result.stdout.splitlines():
        if line.startswith("Shell command:"):
            text = line.split(":", 1)[1].strip().lstrip("(")
            for part in text.split(" && "):
                argv = shlex.split(part.split(" > ")[0].rstrip(")"))
                if "bornfield" in argv:
                    commands.append(argv[argv.index("bornfield") + 1:])
    return commands


def test_dry_run_commands_parse(tmp_path):
    """Every command a dry run prints parses: the tiny campaign, and the model-set campaign
    (ledger dataset, ship_models) with its outputs redirected to tmp_path."""
    commands = _dry_run_commands("--configfile", str(REPO / ".test" / "config.yaml"), "--directory", str(tmp_path),
                                 cwd=REPO)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"results_dir: {tmp_path / 'models-results'}\ntrain: {{ship_to: {tmp_path / 'shipped'}}}\n")
    commands += _dry_run_commands("--configfile", str(REPO / "config" / "models.yaml"), str(overlay),
                                  "--", "all", "ship_models", cwd=REPO)
    seen = set()
    for argv in commands:
        args = build_parser().parse_args(argv)  # SystemExit (exit 2) on an unknown option or a wrong arity
        assert callable(args.func), argv
        seen.add(" ".join(_leaf(argv)[0][1:]))
    assert {"structures report", "structures gather", "dataset assemble", "train evaluate", "train ship",
            "ledger export", "dataset report", "md run", "analyze condition", "plot all", "provenance"} <= seen
