"""``trainer`` / ``linewatch-train`` / ``python -m trainer``: the command line, one verb per module."""

from __future__ import annotations

import argparse
import logging

from linewatch.service.verbs import VerbTable, dispatch

VERBS: VerbTable = {
    "synth": ("trainer.data.synth", "write synthetic textured surfaces with defects in MVTec-AD layout"),
    "pretrain": ("trainer.pretrain", "train the general texture feature network with triplet loss"),
    "fit": ("trainer.fit", "build a product bundle (prototype + calibrated threshold) from good images"),
    "evaluate": ("trainer.evaluate", "evaluate a bundle on an MVTec-layout test set (or DAGM classes)"),
    "export": ("trainer.export_cli", "write a bundle's model.onnx in another precision (e.g. fp16)"),
    "build-engine": ("trainer.engine", "compile a bundle's model.onnx to a TensorRT plan"),
}


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _configure_logging(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )


def main(argv: list[str] | None = None) -> int:
    return dispatch(
        "trainer",
        "trainer: learn the feature network, fit, evaluate and export product bundles",
        VERBS,
        argv,
        add_common=_add_verbose,
        before_run=_configure_logging,
    )


if __name__ == "__main__":
    raise SystemExit(main())
