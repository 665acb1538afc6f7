"""An inference fault: the backend (real ONNX Runtime behind FaultyBackend) raises on one frame. That frame
gets a ``not_inspected`` result naming the failure; the frames after it are inspected exactly as a backend
that never failed inspects them (same scores), and the line never stops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fault_support import (
    FaultyBackend,
    camera_config,
    load_stripes_product,
    ort_factory,
    running_line,
    thread_names,
    wait_for_threads,
    wait_until,
)
from harness import Broker
from mqtt_support import Subscriber, fast_config, first_seen_seqs

from linewatch.acquisition import SyntheticSource
from linewatch.bundle.registry import LoadedBundle
from linewatch.errors import InferenceError
from linewatch.inference.backend import InferenceBackend
from linewatch.inference.preprocessing import preprocess

pytestmark = pytest.mark.mosquitto

FRAMES = 40
FAILING_FRAME = 12


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> LoadedBundle:
    return load_stripes_product(tmp_path_factory.mktemp("faults-inference") / "products")


def reference_scores(bundle: LoadedBundle, source: SyntheticSource) -> list[float]:
    """What an ONNX Runtime backend that never failed says about the same frames."""
    backend = ort_factory()(bundle)
    manifest = bundle.manifest
    try:
        scores = []
        for i in range(FRAMES):
            batch = preprocess(source.render(i)[0], manifest.input, manifest.preprocessing)[np.newaxis]
            scores.append(backend.infer(batch, want_heatmap=False)[0].score)
        return scores
    finally:
        backend.close()


@pytest.mark.parametrize(
    "error",
    [InferenceError("injected: CUDA-like launch failure"), RuntimeError("injected: untranslated error")],
    ids=["translated", "untranslated"],
)
def test_one_failing_frame_is_not_inspected_and_the_next_are_fine(
    broker: Broker, bundle: LoadedBundle, tmp_path: Path, error: Exception
) -> None:
    before = thread_names()
    made: list[FaultyBackend] = []

    def factory(b: LoadedBundle) -> InferenceBackend:
        backend = FaultyBackend(ort_factory()(b), fail_on=lambda i: i == FAILING_FRAME, exc=lambda i: error)
        made.append(backend)
        return backend

    camera = camera_config(rate_hz=None, frame_count=FRAMES)
    sub = Subscriber(broker.port, ["linewatch/faults/result", "linewatch/faults/reject"])
    try:
        with running_line(SyntheticSource(camera), factory, bundle, tmp_path / "state",
                          fast_config(broker.port)) as line:  # fmt: skip
            wait_until(lambda: line.pipeline.finished, 60.0, "the finite source to run out")
            wait_until(lambda: line.pipeline.publishing.processed == FRAMES, 30.0, "every verdict")
            snap = line.pipeline.snapshot()
        sub.wait_for(lambda: len(first_seen_seqs(sub.json("result"))) == FRAMES, 10.0, f"{FRAMES} results")
    finally:
        sub.close()

    results = {r["seq"]: r for r in sub.json("result")}
    assert sorted(results) == list(range(FRAMES))
    failed = results[FAILING_FRAME]
    assert failed["verdict"] == "not_inspected" and failed["score"] is None
    assert failed["reason"] == f"inference failed: {error}"
    assert FAILING_FRAME in {r["seq"] for r in sub.json("reject")}
    others = [results[s] for s in range(FRAMES) if s != FAILING_FRAME]
    assert all(r["verdict"] in ("pass", "fail") for r in others)
    expected = reference_scores(bundle, SyntheticSource(camera))
    got = [r["score"] for r in others]
    want = [expected[s] for s in range(FRAMES) if s != FAILING_FRAME]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)  # the backend is intact after the fault
    assert made[0].failed_calls == [FAILING_FRAME] and made[0].calls == FRAMES
    assert snap.inference_failures == 1 and snap.not_inspected == 1
    assert snap.not_inspected_reasons == {"inference failed": 1}
    assert len(made) == 1 and made[0].closed  # no reload: the same backend went on
    assert wait_for_threads(before) == []
