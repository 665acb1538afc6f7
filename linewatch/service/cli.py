"""``linewatch`` / ``python -m linewatch``: one verb per module.

Each verb module offers ``add_arguments(parser)`` and ``run(args) -> int``; only the chosen verb's module
is imported, so ``linewatch --help`` is fast and never touches a camera, a GPU or the network.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# verb → (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "run": ("linewatch.service.daemon", "run the inspection daemon (camera → model → MQTT)"),
    "check-config": ("linewatch.service.check_config", "validate a config file; print every problem"),
    "demo": ("linewatch.service.demo", "self-contained demo: synthetic camera, bundle, private broker"),
    "bench": ("linewatch.service.bench", "backend and whole-pipeline throughput/latency benchmark"),
    "products": ("linewatch.service.products", "list, show or verify the product bundles on disk"),
    "product": ("linewatch.service.product_command", "prepare/set the running daemon's product over MQTT"),
    "history": ("linewatch.service.history", "print decisions from the local journal"),
    "install-service": ("linewatch.service.install", "install the systemd unit, user and config skeleton"),
    "uninstall-service": ("linewatch.service.install", "remove what install-service installed"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="linewatch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for verb, (module_name, help_text) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        if verb == chosen:
            importlib.import_module(module_name).add_arguments(p)
    args = parser.parse_args(argv)
    result: int = importlib.import_module(args._module).run(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
