"""``trainer export``: write a bundle's model.onnx in another precision, e.g. the fp16 model TensorRT builds.

    trainer export --bundle DIR --precision fp16 --out FILE

fp16 is the mixed-precision graph of ``trainer.precision`` (fp16 backbone, fp32 scoring head, float32
inputs and outputs), the same one ``trainer build-engine --precision fp16`` compiles; fp32 copies
model.onnx unchanged. The bundle is verified first; ``--out`` is written atomically and never inside it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from linewatch.bundle.registry import load_bundle
from linewatch.errors import LinewatchError
from trainer.precision import convert_to_fp16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, help="bundle directory (contains bundle.json)")
    parser.add_argument("--precision", choices=["fp32", "fp16"], default="fp16",
                        help="fp16: mixed precision (fp16 backbone, fp32 head and I/O); fp32: as is")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")


def export_model(bundle_dir: Path, precision: str, out: Path) -> int:
    """Write the model in ``precision`` to ``out``; returns the number of bytes written."""
    bundle = load_bundle(bundle_dir)
    if out.resolve().parent == bundle.path.resolve() or bundle.path.resolve() in out.resolve().parents:
        raise ValueError(f"{out}: refusing to write inside the bundle (its files are hash-listed)")
    data = bundle.model_path.read_bytes()
    if precision == "fp16":
        data = convert_to_fp16(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(data)


def run(args: argparse.Namespace) -> int:
    try:
        size = export_model(args.bundle, args.precision, args.out)
    except (LinewatchError, ValueError, OSError) as exc:
        print(f"trainer export: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {args.precision} model, {size} bytes")
    return 0
