"""The ``bornfield`` command: one sub-command per stage.

Each stage module in ``STAGES`` exposes ``register(subparsers)``; every leaf
parser sets ``func`` to a callable ``run(args) -> int``. Every parser of the tree
is a :class:`BornfieldParser` (sub-parsers inherit the class): the same help
format, defaults shown, and ``-v/--verbose`` before or after a sub-command.
The option names follow the vocabulary of ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading

from bornfield import __version__
from bornfield.errors import BornfieldError

STAGES = (
    "bornfield.config",
    "bornfield.structures.cli",
    "bornfield.dft.cli",
    "bornfield.ledger.cli",
    "bornfield.data.cli",
    "bornfield.train.cli",
    "bornfield.md.cli",
    "bornfield.analysis.cli",
    "bornfield.plots.cli",
    "bornfield.estimate",
    "bornfield.provenance",
)


def _shown(value) -> str:
    """A default as a user would type it: lists space-separated, '' quoted."""
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else "none"
    return "''" if value == "" else str(value)


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every option that has a default value.

    Options without one (default ``None``) say in their help what happens when
    they are left out; flags (``store_true``) and required options show nothing.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or action.required or default is None or default is argparse.SUPPRESS
                or isinstance(default, bool) or action.nargs == 0):
            return text
        return f"{text} (default: {_shown(default).replace('%', '%%')})"


class BornfieldParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` with the shared help format and ``-v/--verbose`` on every level."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        # SUPPRESS: a sub-parser sets 'verbose' only when -v is given there, so a -v given
        # before the sub-command is not overwritten by the sub-parser's default
        self.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                          help="debug logging (accepted before or after any sub-command)")


MODEL_HELP = {
    "potential": "NN-potential file(s), one or more (a committee, member 0 first)",
    "born": "Born-charge model file(s), one or more (a committee, member 0 first)",
    "baseline": "paper-style row baseline file(s), one or more",
}


def add_model_arguments(parser: argparse.ArgumentParser, kinds: tuple[str, ...], required: bool = False,
                        absent: str = "none of this kind", note: str = "") -> None:
    """``--potential/--born/--baseline FILE...``: one or more model files each (``nargs='+'``);
    ``absent`` says what leaving an optional one out means, ``note`` what the command does with them."""
    for kind in kinds:
        parser.add_argument(f"--{kind}", nargs="+", metavar="FILE", required=required,
                            help=MODEL_HELP[kind] + note + ("" if required else f" (default: {absent})"))


def build_parser() -> BornfieldParser:
    parser = BornfieldParser(
        prog="bornfield",
        description="Ion migration under electric fields: structures, DFT/DFPT, NN models, field MD, analysis.",
    )
    parser.add_argument("--version", action="version", version=f"bornfield {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in STAGES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    previous = _exit_on_sigterm() if getattr(args, "exit_on_sigterm", False) else None
    try:
        return int(args.func(args) or 0)
    except BornfieldError as exc:
        print(f"bornfield: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminated(number, frame):
    raise SystemExit(128 + number)


def _exit_on_sigterm():
    """SIGTERM raises SystemExit (exit code 143) instead of killing the interpreter, so a command
    that drives QE (parsers with ``exit_on_sigterm=True``) still terminates its QE child and
    leaves a resumable job. Not for MPI commands: a handler cannot run inside a blocking MPI
    call. Returns the previous handler (None off the main thread, where none can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _terminated)


if __name__ == "__main__":
    sys.exit(main())
