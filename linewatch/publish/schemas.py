"""JSON Schema files for integrators: one per MQTT payload, generated from the pydantic models.

    python -m linewatch.publish.schemas docs/schemas          # (re)write the files
    python -m linewatch.publish.schemas --check docs/schemas  # exit 1 when a committed file is stale

Outbound payloads are described as the daemon writes them (serialization mode: every key present);
inbound commands as the daemon accepts them (validation mode: optional keys may be left out).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal

from linewatch.publish.payloads import PAYLOAD_MODELS, FeedbackPayload, ProductCommand, schema_id

_INBOUND = (ProductCommand, FeedbackPayload)
_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def render_schemas() -> dict[str, str]:
    """File name → file text for every payload."""
    out: dict[str, str] = {}
    for name, model in PAYLOAD_MODELS.items():
        mode: Literal["validation", "serialization"] = "validation" if model in _INBOUND else "serialization"
        schema: dict[str, Any] = {
            "$schema": _DIALECT,
            "$id": schema_id(model),
            **model.model_json_schema(by_alias=True, mode=mode),
        }
        out[f"{name}.schema.json"] = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    return out


def write_schemas(directory: Path) -> list[Path]:
    """Write every schema file into ``directory`` (created if missing); returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale_schemas(directory: Path) -> list[str]:
    """Names of schema files in ``directory`` that are missing or differ from the models."""
    stale = []
    for name, text in render_schemas().items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m linewatch.publish.schemas", description=__doc__)
    parser.add_argument("directory", type=Path, help="output directory, e.g. docs/schemas")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if a file is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_schemas(args.directory)
        for name in stale:
            print(f"{args.directory / name}: stale or missing (run python -m linewatch.publish.schemas "
                  f"{args.directory})", file=sys.stderr)  # fmt: skip
        return 1 if stale else 0
    for path in write_schemas(args.directory):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
