"""The JSON payloads on linewatch's MQTT topics, as pydantic models (DESIGN 3.4).

Every payload carries a ``schema`` field such as ``"linewatch.result/1"``: the name of the payload and its
major version. A version changes only when a field is removed or changes meaning; integrators validate
against the JSON Schema files generated from these models into ``docs/schemas/`` (``python -m
linewatch.publish.schemas docs/schemas``).

Outbound (daemon → line): StatusPayload, ResultPayload, RejectPayload, ProductStatePayload,
CommandResponse, StatsPayload. Inbound (line → daemon): ProductCommand, FeedbackPayload — these are strict
(no type coercion, unknown keys refused) and size-limited before they are parsed (see
``MqttConfig.max_command_bytes``).

Times: ``*_unix_ns`` are wall-clock nanoseconds since the Unix epoch (for people and databases);
``acquired_ns`` is the host's monotonic clock (for latency arithmetic inside one daemon run);
``timestamp_ns`` is the camera's own timestamp where the device has one, else the host monotonic time.
"""

from __future__ import annotations

import json
import math
import time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from linewatch.errors import BundleNotFoundError, CommandError
from linewatch.frames import Verdict

# Inbound commands larger than this are answered with an error and never parsed.
DEFAULT_MAX_COMMAND_BYTES = 4096

VerdictName = Literal["pass", "fail", "not_inspected"]
StatusState = Literal["starting", "online", "degraded", "stopped", "offline"]
CommandName = Literal["set", "prepare", "feedback"]


def _product_id(value: str) -> str:
    # Same rule as the bundle registry (the one owner of product-id syntax); pydantic wants ValueError.
    from linewatch.bundle.registry import validate_product_id

    try:
        return validate_product_id(value)
    except BundleNotFoundError as exc:
        raise ValueError(str(exc)) from exc


ProductId = Annotated[
    str,
    Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"),
    AfterValidator(_product_id),
]
RequestId = Annotated[str, Field(min_length=1, max_length=128)]


def unix_now_ns() -> int:
    return time.time_ns()


class _Payload(BaseModel):
    """Outbound payload: immutable; ``to_json`` writes the wire form (``schema`` key included)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        serialize_by_alias=True,
        validate_by_alias=True,
        json_schema_serialization_defaults_required=True,  # the daemon always writes every key
    )

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class _Command(BaseModel):
    """Inbound payload: strict types (``"5"`` is not a number), unknown keys refused."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, serialize_by_alias=True, validate_by_alias=True
    )

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class Location(_Payload):
    """Defect location: the heatmap maximum mapped to frame pixels (centre of its 32x32 neighbourhood)."""

    x: int = Field(description="column in frame pixels")
    y: int = Field(description="row in frame pixels")


class StatusPayload(_Payload):
    """``status`` (retained). The broker publishes ``offline`` as the last will when the daemon vanishes."""

    schema_name: Literal["linewatch.status/1"] = Field(
        default="linewatch.status/1", alias="schema", description="payload name and major version"
    )
    state: StatusState = Field(
        description="starting | online | degraded (inspecting, but something needs attention: see reason) "
        "| stopped (orderly shutdown) | offline (last will: the daemon or its connection died)"
    )
    reason: str | None = Field(
        default=None, description="why the state is what it is (degraded, stopped, offline)"
    )
    station: str = Field(description="station id (the topic level after the prefix)")
    version: str = Field(description="linewatch version")
    product: str | None = Field(default=None, description="active product id")
    bundle: str | None = Field(default=None, description="active bundle id")
    backend: str | None = Field(default=None, description="inference backend in use (onnxruntime, tensorrt)")
    camera: str | None = Field(
        default=None,
        description="camera state as the acquisition stage reports it, e.g. streaming, reconnecting",
    )
    timestamp_unix_ns: int = Field(default_factory=unix_now_ns, description="when this status was made")


class ResultPayload(_Payload):
    """``result`` (QoS 1): one per acquired frame, in ``seq`` order. Duplicates are possible after an
    outage (at-least-once); de-duplicate by ``seq``."""

    schema_name: Literal["linewatch.result/1"] = Field(
        default="linewatch.result/1", alias="schema", description="payload name and major version"
    )
    seq: int = Field(ge=0, description="linewatch's consecutive frame number; continues across restarts")
    frame_id: int = Field(description="the camera's frame id (or the source's counter)")
    timestamp_ns: int = Field(description="camera timestamp where the device has one, else host monotonic")
    acquired_ns: int = Field(description="host monotonic clock when the image was copied out")
    acquired_unix_ns: int = Field(description="wall clock (Unix epoch ns) when the image was copied out")
    product: str | None = Field(description="product id the frame was inspected with")
    bundle: str | None = Field(description="bundle id the frame was inspected with")
    verdict: VerdictName = Field(description="pass | fail | not_inspected (not_inspected counts as a reject)")
    score: float | None = Field(allow_inf_nan=False, description="image score (max of the distance map)")
    threshold: float | None = Field(allow_inf_nan=False, description="the bundle's threshold")
    location: Location | None = Field(description="defect location (heatmap maximum) in frame pixels")
    latencies_ms: dict[str, float] = Field(
        default_factory=dict, description="stage latencies in milliseconds, e.g. queue, inference, total"
    )
    reason: str | None = Field(default=None, description="why a frame was not inspected")

    @classmethod
    def from_verdict(cls, verdict: Verdict, acquired_unix_ns: int | None = None) -> ResultPayload:
        """Build the wire form of a Verdict.

        ``acquired_unix_ns`` defaults to the wall clock shifted back by the frame's monotonic age. A score
        that is not finite (a broken model) cannot travel as JSON: it becomes ``null`` and the reason says so.
        """
        if acquired_unix_ns is None:
            acquired_unix_ns = time.time_ns() - max(0, time.monotonic_ns() - verdict.acquired_ns)
        score, threshold, reason = verdict.score, verdict.threshold, verdict.reason
        if score is not None and not math.isfinite(score):
            reason = f"non-finite score {score!r}" + (f"; {reason}" if reason else "")
            score = None
        if threshold is not None and not math.isfinite(threshold):
            threshold = None
        loc = verdict.location
        return cls(
            seq=verdict.seq,
            frame_id=verdict.frame_id,
            timestamp_ns=verdict.timestamp_ns,
            acquired_ns=verdict.acquired_ns,
            acquired_unix_ns=acquired_unix_ns,
            product=verdict.product_id,
            bundle=verdict.bundle_id,
            verdict=verdict.verdict.value,
            score=score,
            threshold=threshold,
            location=None if loc is None else Location(x=loc.x, y=loc.y),
            latencies_ms={k: float(v) for k, v in verdict.latencies_ms.items() if math.isfinite(v)},
            reason=reason,
        )

    @property
    def is_reject(self) -> bool:
        return self.verdict != "pass"


class RejectPayload(_Payload):
    """``reject`` (QoS 1): every result that is not a pass — what a reject gate or PLC subscribes to.

    After a broker outage rejects are delivered late: compare ``acquired_unix_ns`` with the part's position.
    """

    schema_name: Literal["linewatch.reject/1"] = Field(
        default="linewatch.reject/1", alias="schema", description="payload name and major version"
    )
    seq: int = Field(ge=0, description="seq of the result this reject belongs to")
    frame_id: int = Field(description="the camera's frame id")
    timestamp_ns: int = Field(description="camera timestamp where the device has one, else host monotonic")
    acquired_unix_ns: int = Field(description="wall clock (Unix epoch ns) when the image was copied out")
    product: str | None = Field(description="product id")
    bundle: str | None = Field(description="bundle id")
    verdict: Literal["fail", "not_inspected"] = Field(description="fail | not_inspected")
    score: float | None = Field(allow_inf_nan=False, description="image score")
    threshold: float | None = Field(allow_inf_nan=False, description="the bundle's threshold")
    location: Location | None = Field(description="defect location in frame pixels")
    reason: str | None = Field(default=None, description="why a frame was not inspected")

    @classmethod
    def from_result(cls, result: ResultPayload) -> RejectPayload:
        if result.verdict == "pass":
            raise ValueError(f"seq {result.seq} passed; only fail/not_inspected results are rejects")
        # Every field of a reject is the result's field of the same name (the result has a few more).
        return cls(**{name: getattr(result, name) for name in cls.model_fields if name != "schema_name"})


class PreparedProduct(_Payload):
    """A product loaded, verified and warmed up beside the running one."""

    product: str = Field(description="product id")
    bundle: str = Field(description="bundle id")


class ProductStatePayload(_Payload):
    """``product`` (retained): which product inspects now and which are prepared for a switch."""

    schema_name: Literal["linewatch.product/1"] = Field(
        default="linewatch.product/1", alias="schema", description="payload name and major version"
    )
    active: str | None = Field(description="active product id (None before the first product is loaded)")
    active_bundle: str | None = Field(description="bundle id of the active product")
    prepared: list[PreparedProduct] = Field(default_factory=list, description="prepared, not active")
    last_error: str | None = Field(default=None, description="why the last prepare/set failed, if it did")
    timestamp_unix_ns: int = Field(default_factory=unix_now_ns, description="when this state was made")


class ProductCommand(_Command):
    """``product/set`` / ``product/prepare``: ``{"product_id": "...", "request_id": "..."}``.

    ``action`` may be omitted (the topic says it); when given it must match the topic.
    """

    schema_name: Literal["linewatch.product-command/1"] = Field(
        default="linewatch.product-command/1", alias="schema", description="payload name and major version"
    )
    action: Literal["set", "prepare"] | None = Field(
        default=None,
        description="set (activate at the next frame boundary) | prepare (load and warm up only)",
    )
    product_id: ProductId = Field(description="product id: 1-64 of letters, digits, '.', '_', '-'")
    request_id: RequestId | None = Field(default=None, description="echoed in the answer on product/response")


class FeedbackPayload(_Command):
    """``feedback``: an operator's label for a decision (false reject: label good on a fail; miss: label
    defect on a pass)."""

    schema_name: Literal["linewatch.feedback/1"] = Field(
        default="linewatch.feedback/1", alias="schema", description="payload name and major version"
    )
    seq: int = Field(ge=0, description="seq of the result the label is for")
    label: Literal["good", "defect"] = Field(description="what the part really was")
    note: str = Field(default="", max_length=1000, description="free text from the operator")
    request_id: RequestId | None = Field(default=None, description="echoed in the answer on product/response")


Command = ProductCommand | FeedbackPayload


class CommandResponse(_Payload):
    """``product/response``: exactly one per command received, ok or with the reason it was refused."""

    schema_name: Literal["linewatch.command-response/1"] = Field(
        default="linewatch.command-response/1", alias="schema", description="payload name and major version"
    )
    request_id: str | None = Field(
        description="the command's request_id (None when it had none or could not be parsed)"
    )
    command: CommandName = Field(description="set | prepare | feedback (from the topic)")
    product_id: str | None = Field(default=None, description="the product the command named, if it parsed")
    ok: bool = Field(description="true when the command was carried out")
    error: str | None = Field(default=None, description="why the command was refused")
    timestamp_unix_ns: int = Field(default_factory=unix_now_ns, description="when the answer was made")


class PublisherStats(_Payload):
    """The publisher's own counters (filled in by ``MqttPublisher.publish_stats``)."""

    connected: bool = Field(description="connected to the broker now")
    reconnects: int = Field(description="successful connections after the first")
    results_journaled: int = Field(description="results written to the journal in this run")
    results_published: int = Field(description="results the broker acknowledged in this run")
    pending: int = Field(description="results handed to the MQTT client, not yet acknowledged")
    backlog: int = Field(description="unpublished results only on disk, waiting to be re-sent")
    spilled: int = Field(
        description="results that waited on disk (in-memory bound full, or older results still being re-sent)"
    )
    heatmaps_sent: int = Field(description="heatmaps published")
    heatmaps_skipped: int = Field(description="heatmaps skipped by the rate limit or while disconnected")
    commands_received: int = Field(description="commands received")
    commands_refused: int = Field(description="commands answered with an error")
    publish_errors: int = Field(description="publish calls the MQTT client refused")


class DriftStats(_Payload):
    """Rolling good-part score distribution against the bundle's calibration."""

    window: int = Field(description="number of recent passing scores in the window")
    good_score_p50: float | None = Field(allow_inf_nan=False, description="median passing score")
    good_score_p95: float | None = Field(allow_inf_nan=False, description="95th percentile passing score")
    calibration_good_p95: float | None = Field(
        default=None, allow_inf_nan=False, description="95th percentile of good scores at calibration"
    )
    threshold: float | None = Field(allow_inf_nan=False, description="the active threshold")
    margin_ratio: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="good_score_p95 / threshold (1.0 = good parts at the threshold)",
    )


class StageLatency(_Payload):
    """Latency percentiles of one pipeline stage over the stats window (None: no frame in the window)."""

    p50_ms: float | None = Field(allow_inf_nan=False, description="median, milliseconds")
    p99_ms: float | None = Field(allow_inf_nan=False, description="99th percentile, milliseconds")


class StatsPayload(_Payload):
    """``stats`` (periodic, QoS 0): throughput, drops, queue depth, latency percentiles, counts.

    The same figures as the Prometheus endpoint (``linewatch.service.metrics``), from the same counters.
    """

    schema_name: Literal["linewatch.stats/1"] = Field(
        default="linewatch.stats/1", alias="schema", description="payload name and major version"
    )
    interval_s: float = Field(gt=0, description="length of the window these rates cover")
    fps_in: float = Field(ge=0, description="frames acquired per second over the window")
    fps_out: float = Field(ge=0, description="results published per second over the window")
    frames_in: int = Field(ge=0, description="frames acquired since start")
    frames_out: int = Field(ge=0, description="results produced since start")
    dropped: int = Field(ge=0, description="frames dropped by the queue policy since start (not_inspected)")
    queue_depth: int = Field(ge=0, description="frames waiting for inference now")
    latency_p50_ms: float | None = Field(
        allow_inf_nan=False, description="acquire→publish latency median over the window"
    )
    latency_p99_ms: float | None = Field(
        allow_inf_nan=False, description="acquire→publish latency 99th percentile over the window"
    )
    pass_count: int = Field(ge=0, description="passes since start")
    fail_count: int = Field(ge=0, description="fails since start")
    not_inspected_count: int = Field(ge=0, description="not_inspected results since start")
    frames_acquired: int = Field(
        default=0, ge=0,
        description="images read from the camera since start (frames_in also counts the frames the camera "
        "lost and those that could not be read)",
    )
    frames_inspected: int = Field(default=0, ge=0, description="pass and fail results since start")
    verdicts: dict[str, dict[VerdictName, int]] = Field(
        default_factory=dict,
        description='results since start per product id and verdict ("" = no product was active)',
    )
    latency_ms: dict[str, StageLatency] = Field(
        default_factory=dict,
        description="per-stage latency over the window: queue (camera to inference), inference "
        "(preprocessing + model), scoring, publish (journal + hand-over to MQTT), total (camera to "
        "publisher)",
    )
    journal_backlog: int | None = Field(
        default=None, ge=0, description="results in the journal not yet acknowledged by the broker"
    )
    camera: str | None = Field(
        default=None, description="camera state: starting, streaming, reconnecting, exhausted, stopped"
    )
    product_switches: int = Field(
        default=0, ge=0, description="activations of a different product since start (the first is none)"
    )
    product: str | None = Field(default=None, description="active product id")
    bundle: str | None = Field(default=None, description="active bundle id")
    backend: str | None = Field(default=None, description="inference backend of the active product")
    publisher: PublisherStats | None = Field(default=None, description="MQTT publisher and journal counters")
    drift: DriftStats | None = Field(default=None, description="good-part score drift against calibration")
    timestamp_unix_ns: int = Field(default_factory=unix_now_ns, description="when these stats were made")


def request_id_of(payload: bytes) -> str | None:
    """Best effort ``request_id`` of a command, so that even a refused command's answer can be matched."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(data, dict):
        rid = data.get("request_id")
        if isinstance(rid, str) and 0 < len(rid) <= 128:
            return rid
    return None


def _error_summary(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "payload"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def parse_command(name: CommandName, payload: bytes, max_bytes: int = DEFAULT_MAX_COMMAND_BYTES) -> Command:
    """Parse a command that arrived on the ``name`` topic, or raise CommandError saying what is wrong.

    A payload over ``max_bytes`` is refused before it is parsed. A product command's ``action`` defaults
    to the topic's and must agree with it.
    """
    if len(payload) > max_bytes:
        raise CommandError(
            f"command of {len(payload)} bytes exceeds the limit of {max_bytes} bytes; not parsed"
        )
    command: Command
    try:
        if name == "feedback":
            command = FeedbackPayload.model_validate_json(payload)
        else:
            command = ProductCommand.model_validate_json(payload)
    except ValidationError as exc:
        raise CommandError(f"invalid {name} command: {_error_summary(exc)}") from exc
    if isinstance(command, ProductCommand):
        if command.action is None:
            command = command.model_copy(update={"action": name})
        elif command.action != name:
            raise CommandError(
                f"action {command.action!r} sent on the product/{name} topic; "
                f"send it to product/{command.action}"
            )
    return command


# schema name → model, for the JSON Schema generator and for tests.
PAYLOAD_MODELS: dict[str, type[BaseModel]] = {
    "status": StatusPayload,
    "result": ResultPayload,
    "reject": RejectPayload,
    "product": ProductStatePayload,
    "product-command": ProductCommand,
    "command-response": CommandResponse,
    "feedback": FeedbackPayload,
    "stats": StatsPayload,
}


def schema_id(model: type[BaseModel]) -> str:
    """The ``schema`` value a model writes, e.g. ``linewatch.result/1``."""
    default: Any = model.model_fields["schema_name"].default
    return str(default)
