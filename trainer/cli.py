"""``trainer`` / ``linewatch-train`` / ``python -m trainer``: one verb per module.

Each verb module offers ``add_arguments(parser)`` and ``run(args) -> int``; imported only when used, so
``--help`` stays fast and one broken verb cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# verb → (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "synth": ("trainer.data.synth", "write synthetic textured surfaces with defects in MVTec-AD layout"),
    "pretrain": ("trainer.pretrain", "train the general texture feature network with triplet loss"),
    "fit": ("trainer.fit", "build a product bundle (prototype + calibrated threshold) from good images"),
    "evaluate": ("trainer.evaluate", "evaluate a bundle on an MVTec-layout test set (or DAGM classes)"),
    "export": ("trainer.export_cli", "re-export a bundle's model.onnx (e.g. fp16) from its backbone"),
    "build-engine": ("trainer.engine", "compile a bundle's model.onnx to a TensorRT plan"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="trainer")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for verb, (module_name, help_text) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        if verb == chosen:
            importlib.import_module(module_name).add_arguments(p)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    result: int = importlib.import_module(args._module).run(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
