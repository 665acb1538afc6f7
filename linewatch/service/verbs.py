"""Verb dispatch shared by the ``linewatch`` and ``trainer`` command lines.

Each verb lives in its own module offering ``add_arguments(parser)`` and ``run(args) -> int``. Only the
chosen verb's module is imported, so ``--help`` is fast and never touches a camera, a GPU or the network,
and one verb's missing optional dependency cannot break the others. A ``LinewatchError`` that reaches here
is printed as one line (no traceback) with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Mapping

from linewatch.errors import LinewatchError

# verb → (module, one-line help)
VerbTable = Mapping[str, tuple[str, str]]


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's ``--help`` line ends with its default, so the numbers the README quotes can be read
    from the command itself; options whose help already names its default, flags, and options without one
    are left alone. Several values are shown as they are typed (``512 256 128``)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not text
            or "default" in text
            or default is None
            or default is False  # a flag (0 and 0.0 are defaults worth showing: identity, not ==)
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return action.help
        shown = " ".join(str(v) for v in default) if isinstance(default, list | tuple) else "%(default)s"
        return f"{text} (default: {shown})"


def dispatch(
    prog: str,
    description: str,
    verbs: VerbTable,
    argv: list[str] | None = None,
    *,
    add_common: Callable[[argparse.ArgumentParser], None] | None = None,
    before_run: Callable[[argparse.Namespace], None] | None = None,
) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=prog, description=description)
    if add_common is not None:
        add_common(parser)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for verb, (module_name, help_text) in verbs.items():
        verb_parser = sub.add_parser(
            verb, help=help_text, description=help_text, formatter_class=DefaultsHelpFormatter
        )
        verb_parser.set_defaults(_module=module_name)
        if verb == chosen:
            importlib.import_module(module_name).add_arguments(verb_parser)
    args = parser.parse_args(argv)
    if before_run is not None:
        before_run(args)
    try:
        result: int = importlib.import_module(args._module).run(args)
    except LinewatchError as exc:
        print(f"{prog} {args.verb}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result
