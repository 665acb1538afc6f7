"""The committed JSON Schema files in docs/schemas/ describe the payloads as the models write them."""

from __future__ import annotations

import json
from pathlib import Path

from linewatch.frames import Verdict, VerdictKind
from linewatch.publish.payloads import PAYLOAD_MODELS, ResultPayload
from linewatch.publish.schemas import main, render_schemas, stale_schemas

DOCS = Path(__file__).resolve().parents[3] / "docs" / "schemas"


def test_committed_schema_files_are_up_to_date() -> None:
    stale = stale_schemas(DOCS)
    assert not stale, f"regenerate with: python -m linewatch.publish.schemas docs/schemas ({stale})"


def test_one_schema_per_payload_with_its_version_id() -> None:
    rendered = render_schemas()
    assert len(rendered) == len(PAYLOAD_MODELS)
    result = json.loads(rendered["result.schema.json"])
    assert result["$id"] == "linewatch.result/1"
    assert result["properties"]["schema"]["const"] == "linewatch.result/1"
    assert result["additionalProperties"] is False
    assert {"seq", "frame_id", "verdict", "score", "threshold", "location"} <= set(result["required"])


def test_check_mode_detects_a_stale_file(tmp_path: Path) -> None:
    assert main([str(tmp_path)]) == 0
    assert main(["--check", str(tmp_path)]) == 0
    (tmp_path / "result.schema.json").write_text("{}\n")
    assert main(["--check", str(tmp_path)]) == 1


def test_a_result_has_exactly_the_keys_its_schema_names() -> None:
    schema = json.loads(render_schemas()["result.schema.json"])
    v = Verdict(seq=1, frame_id=1, verdict=VerdictKind.PASS, product_id=None, bundle_id=None, score=0.1,
                threshold=1.0, location=None, timestamp_ns=0, acquired_ns=0)  # fmt: skip
    data = json.loads(ResultPayload.from_verdict(v).to_json())
    assert set(data) == set(schema["properties"]) == set(schema["required"])
