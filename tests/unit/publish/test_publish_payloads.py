"""Payload models and command parsing: what an integrator or a fuzzing client can send and receive."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linewatch.errors import CommandError
from linewatch.frames import DefectLocation, Verdict, VerdictKind
from linewatch.publish.payloads import (
    FeedbackPayload,
    ProductCommand,
    RejectPayload,
    ResultPayload,
    parse_command,
    request_id_of,
)
from linewatch.publish.topics import Topics


def verdict(seq: int, kind: VerdictKind = VerdictKind.PASS, score: float | None = 0.5) -> Verdict:
    return Verdict(
        seq=seq,
        frame_id=seq + 100,
        verdict=kind,
        product_id="widget",
        bundle_id="widget-1",
        score=score,
        threshold=1.0,
        location=DefectLocation(x=10, y=20),
        timestamp_ns=123,
        acquired_ns=456,
        latencies_ms={"inference": 3.5},
    )


def test_result_wire_form_carries_schema_and_every_field() -> None:
    data = json.loads(
        ResultPayload.from_verdict(verdict(7, VerdictKind.FAIL, 2.0), acquired_unix_ns=99).to_json()
    )
    assert data["schema"] == "linewatch.result/1"
    assert (data["seq"], data["frame_id"], data["verdict"], data["score"]) == (7, 107, "fail", 2.0)
    assert data["location"] == {"x": 10, "y": 20}
    assert data["acquired_unix_ns"] == 99 and data["latencies_ms"] == {"inference": 3.5}
    assert ResultPayload.model_validate_json(json.dumps(data)).seq == 7  # round trip


def test_non_finite_score_becomes_null_with_a_reason() -> None:
    result = ResultPayload.from_verdict(verdict(1, VerdictKind.NOT_INSPECTED, float("nan")))
    data = json.loads(result.to_json())
    assert data["score"] is None and "non-finite score" in data["reason"]


def test_reject_only_for_non_pass() -> None:
    fail = ResultPayload.from_verdict(verdict(3, VerdictKind.FAIL, 2.0))
    assert RejectPayload.from_result(fail).verdict == "fail"
    with pytest.raises(ValueError, match="passed"):
        RejectPayload.from_result(ResultPayload.from_verdict(verdict(4)))


def test_topics_live_under_prefix_and_station() -> None:
    topics = Topics.for_station("plant/linewatch", "line-3")
    assert topics.result == "plant/linewatch/line-3/result"
    assert topics.product_response == "plant/linewatch/line-3/product/response"
    assert topics.heatmap_with_seq(12) == "plant/linewatch/line-3/heatmap/12"
    assert set(topics.commands) == {
        "plant/linewatch/line-3/product/set",
        "plant/linewatch/line-3/product/prepare",
        "plant/linewatch/line-3/feedback",
    }
    for station in ("a/b", "+", "#", "", "x" * 65):
        with pytest.raises(ValueError, match="station"):
            Topics.for_station("linewatch", station)
    with pytest.raises(ValueError, match="prefix"):
        Topics.for_station("linewatch/#", "s1")


def test_product_command_action_comes_from_the_topic() -> None:
    command = parse_command("prepare", b'{"product_id": "widget", "request_id": "r1"}')
    assert isinstance(command, ProductCommand)
    assert (command.action, command.product_id, command.request_id) == ("prepare", "widget", "r1")
    with pytest.raises(CommandError, match="sent on the product/set topic"):
        parse_command("set", b'{"action": "prepare", "product_id": "widget"}')


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "invalid set command"),
        (b'{"product_id": 5}', "product_id"),  # wrong type: no coercion
        (b'{"product_id": "../etc"}', "product_id"),  # path traversal
        (b'{"product_id": "a", "action": "explode"}', "action"),
        (b'{"product_id": "a", "colour": "red"}', "colour"),  # unknown key
        (b"[]", "invalid set command"),
        (b"\xff\xfe", "invalid set command"),
    ],
)
def test_malformed_product_commands_are_refused_with_a_reason(payload: bytes, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        parse_command("set", payload)


def test_oversized_command_is_refused_unparsed() -> None:
    huge = json.dumps({"product_id": "a", "note": "x" * 10_000}).encode()
    with pytest.raises(CommandError, match="exceeds the limit of 4096 bytes"):
        parse_command("set", huge)


def test_feedback_is_strict() -> None:
    ok = parse_command("feedback", b'{"seq": 5, "label": "good", "note": "scratch is dust"}')
    assert isinstance(ok, FeedbackPayload) and ok.label == "good"
    for bad in (
        b'{"seq": "5", "label": "good"}',
        b'{"seq": 5, "label": "meh"}',
        b'{"seq": -1, "label": "good"}',
    ):
        with pytest.raises(CommandError, match="invalid feedback command"):
            parse_command("feedback", bad)


def test_request_id_is_recovered_from_refused_commands() -> None:
    assert request_id_of(b'{"request_id": "abc", "product_id": 5}') == "abc"
    assert request_id_of(b"{broken") is None
    assert request_id_of(b'{"request_id": 7}') is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
command_like = st.fixed_dictionaries(
    {},
    optional={
        "product_id": json_values | st.text(max_size=70),
        "action": json_values | st.sampled_from(["set", "prepare"]),
        "request_id": json_values,
        "seq": json_values,
        "label": json_values | st.sampled_from(["good", "defect"]),
        "note": json_values,
        "schema": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(["set", "prepare", "feedback"]),
    payload=st.binary(max_size=300) | command_like.map(lambda d: json.dumps(d).encode()),
)
def test_fuzzed_commands_parse_or_raise_command_error(name: str, payload: bytes) -> None:
    try:
        command = parse_command(name, payload)  # type: ignore[arg-type]
    except CommandError as exc:
        assert str(exc)
        return
    # Whatever parses is fully valid.
    if isinstance(command, ProductCommand):
        assert command.action == name and ".." not in command.product_id and "/" not in command.product_id
    else:
        assert name == "feedback" and command.seq >= 0 and command.label in ("good", "defect")
