"""The product switcher on a running pipeline with real ONNX Runtime bundles: prepare beside, activate at a
frame boundary, every frame inspected with exactly one product (and scored as that product scores it), a
damaged bundle or an unknown id never disturbing the running product."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from daemon_support import CollectingSink, ScriptedSource
from products_support import (
    RecordingFactory,
    backbone,
    corrupt_copy,
    expected_score,
    frame_image,
    write_product,
)

from linewatch.bundle.registry import LoadedBundle
from linewatch.errors import BundleIntegrityError, BundleNotFoundError
from linewatch.frames import VerdictKind
from linewatch.pipeline.pipeline import Pipeline
from linewatch.pipeline.product import ProductHolder
from linewatch.products.switcher import ProductSwitcher, ProductSwitchError
from linewatch.publish.payloads import ProductStatePayload

THRESHOLD = 1.0  # alpha scores ~0.25 (pass); beta (alpha's backbone, shifted prototype) and gamma fail


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedBundle]:
    root = tmp_path_factory.mktemp("switch") / "products"
    shared, other = backbone(1), backbone(2)
    return {
        "alpha": write_product(root, "alpha", shared, threshold=THRESHOLD),
        "beta": write_product(root, "beta", shared, offset=1.0, threshold=THRESHOLD),
        "gamma": write_product(root, "gamma", other, offset=0.5, threshold=THRESHOLD),
    }


@pytest.fixture(scope="module")
def scores(products: dict[str, LoadedBundle]) -> dict[str, float]:
    image = frame_image()
    return {pid: expected_score(b, image) for pid, b in products.items()}


class Running:
    def __init__(self, products: dict[str, LoadedBundle], first: str = "alpha") -> None:
        self.dir = products[first].path.parent
        self.sink = CollectingSink(heatmaps_for=())
        self.factory = RecordingFactory.new()
        self.states: list[ProductStatePayload] = []
        self.pipeline = Pipeline(
            ScriptedSource([frame_image()], loop=True, interval_s=0.004), self.factory, self.sink,
            bundle=products[first], queue_size=64,
        )
        self.switcher = ProductSwitcher(self.dir, self.pipeline.holder, self.factory,
                                        activate_timeout_s=10.0, on_state=self.states.append)

    def frames(self, n: int) -> None:
        self.sink.wait_for(len(self.sink.verdicts) + n)


@pytest.fixture
def running(products: dict[str, LoadedBundle]) -> Iterator[Running]:
    r = Running(products)
    r.pipeline.start()
    try:
        yield r
    finally:
        r.pipeline.stop(drain_timeout_s=10.0)
        r.switcher.close()


def segments(names: list[str | None]) -> list[str | None]:
    """Consecutive runs collapsed: ['a', 'a', 'b', 'a'] → ['a', 'b', 'a']."""
    out: list[str | None] = []
    for name in names:
        if not out or out[-1] != name:
            out.append(name)
    return out


def test_switching_under_a_running_stream_names_the_right_product_and_scores(
    running: Running, scores: dict[str, float]
) -> None:
    running.frames(10)
    for pid in ("beta", "gamma", "alpha", "gamma", "beta"):  # shared, new engine, new engine, ..., new
        product = running.switcher.activate(pid).result(30)
        assert product.product_id == pid
        running.frames(8)
    running.pipeline.stop(drain_timeout_s=10.0)
    verdicts = running.sink.verdicts
    assert [v.seq for v in verdicts] == list(range(len(verdicts)))  # no frame lost, none twice
    assert segments([v.product_id for v in verdicts]) == ["alpha", "beta", "gamma", "alpha", "gamma", "beta"]
    for v in verdicts:
        assert v.verdict is not VerdictKind.NOT_INSPECTED, v
        assert v.score == pytest.approx(scores[v.product_id], rel=1e-4, abs=1e-5), (v.seq, v.product_id)
        assert v.bundle_id is not None and v.bundle_id.startswith(f"{v.product_id}@")
        assert v.threshold == THRESHOLD
        assert v.verdict is (VerdictKind.PASS if v.product_id == "alpha" else VerdictKind.FAIL)
    # New engines were made beside the running one, never on the inference thread.
    assert running.factory.threads[0] == "linewatch-inference"  # the first product, at start
    later = running.factory.threads[1:]
    assert later and all(t.startswith("linewatch-products") for t in later)
    counters = running.switcher.counters
    assert (counters.switches, counters.switch_failures) == (5, 0)
    final = running.states[-1]
    assert (final.active, final.last_error) == ("beta", None)
    assert final.active_bundle is not None and final.active_bundle.startswith("beta@")


def test_prepare_readies_an_engine_beside_the_running_one_and_set_only_swaps_it_in(
    running: Running,
) -> None:
    running.frames(5)
    first = running.factory.made[0]  # alpha's, made at start
    bundle = running.switcher.prepare("gamma").result(30)
    assert bundle.product_id == "gamma"
    gamma = running.factory.made[-1]
    state = running.switcher.state()
    assert state.active == "alpha" and [p.product for p in state.prepared] == ["gamma"]
    running.frames(5)
    assert {v.product_id for v in running.sink.verdicts} == {"alpha"}  # preparing changed nothing
    made = len(running.factory.made)
    product = running.switcher.activate("gamma").result(30)
    assert product.backend is gamma  # the prepared engine, swapped in as it was
    # alpha's engine stays loaded, prepared for switching back (the other half of the double buffer).
    state = running.switcher.state()
    assert state.active == "gamma" and [p.product for p in state.prepared] == ["alpha"]
    assert running.switcher.prepare("alpha").result(30).product_id == "alpha"  # already there
    assert len(running.factory.made) == made
    running.frames(3)
    back = running.switcher.activate("alpha").result(30)
    assert back.backend is first and len(running.factory.made) == made
    assert [p.product for p in running.switcher.state().prepared] == ["gamma"]
    # beta shares alpha's model: prepared, it is only a prototype; set rebinds it on the running engine.
    running.switcher.prepare("beta").result(30)
    assert len(running.factory.made) == made
    assert running.switcher.activate("beta").result(30).backend is first
    running.frames(5)
    assert running.sink.verdicts[-1].product_id == "beta"
    assert [p.product for p in running.switcher.state().prepared] == ["gamma"]


def test_at_most_max_prepared_engines_are_kept_and_the_evicted_ones_closed(
    products: dict[str, LoadedBundle],
) -> None:
    r = Running(products)
    r.switcher.max_prepared = 1
    r.pipeline.start()
    try:
        r.switcher.activate("gamma").result(30)  # alpha's engine is kept for switching back
        alpha_engine = r.factory.made[0]
        assert [p.product for p in r.switcher.state().prepared] == ["alpha"]
        r.switcher.prepare("beta").result(30)  # beta needs an engine beside gamma's: alpha's goes
        assert [p.product for p in r.switcher.state().prepared] == ["beta"]
        r.switcher.activate("beta").result(30)
        r.frames(3)
        assert r.sink.verdicts[-1].product_id == "beta"
        # Evicted, then closed on the switcher's thread (never on the inference thread).
        assert alpha_engine.closed_on is not None and alpha_engine.closed_on.startswith("linewatch-products")
        gamma_engine = r.factory.made[1]
        assert gamma_engine.closed_on is None  # replaced by beta: kept, prepared for switching back
        assert [p.product for p in r.switcher.state().prepared] == ["gamma"]
    finally:
        r.pipeline.stop(drain_timeout_s=10.0)
        r.switcher.close()
    assert all(b.closed_on is not None for b in r.factory.made)  # nothing left open after stop + close


def test_a_corrupt_bundle_prepared_under_load_leaves_the_running_product(
    running: Running, scores: dict[str, float]
) -> None:
    corrupt_copy(running.dir, "gamma", "broken")
    try:
        running.frames(5)
        with pytest.raises(BundleIntegrityError, match=r"model\.onnx.*sha256"):
            running.switcher.prepare("broken").result(30)
        with pytest.raises(BundleIntegrityError):
            running.switcher.activate("broken").result(30)
        state = running.switcher.state()
        assert state.active == "alpha" and state.prepared == []
        assert state.last_error is not None and "broken" in state.last_error and "sha256" in state.last_error
        running.frames(10)
        # The next good command clears the error.
        running.switcher.activate("beta").result(30)
        assert running.switcher.state().last_error is None
        running.frames(3)
    finally:
        shutil.rmtree(running.dir / "broken")
    running.pipeline.stop(drain_timeout_s=10.0)
    verdicts = running.sink.verdicts
    assert [v.seq for v in verdicts] == list(range(len(verdicts)))
    assert segments([v.product_id for v in verdicts]) == ["alpha", "beta"]
    assert all(v.score == pytest.approx(scores[v.product_id], rel=1e-4, abs=1e-5) for v in verdicts)


@pytest.mark.parametrize("product_id", ["nope", "../gamma", "a/b", "..", "", "gamma/../alpha", "/etc"])
def test_unknown_and_path_ids_are_refused_without_touching_the_running_product(
    running: Running, product_id: str
) -> None:
    with pytest.raises(BundleNotFoundError):
        running.switcher.activate(product_id).result(30)
    with pytest.raises(BundleNotFoundError):
        running.switcher.prepare(product_id).result(30)
    running.frames(3)
    assert running.pipeline.product is not None and running.pipeline.product.product_id == "alpha"
    assert {v.product_id for v in running.sink.verdicts} == {"alpha"}
    assert running.factory.threads == ["linewatch-inference"]  # nothing was loaded for it


def test_a_bundle_outside_products_dir_is_never_loaded(
    products: dict[str, LoadedBundle], tmp_path: Path
) -> None:
    root = tmp_path / "line" / "products"
    root.mkdir(parents=True)
    write_product(tmp_path / "line", "outside", backbone(1))
    holder = ProductHolder(RecordingFactory.new())
    switcher = ProductSwitcher(root, holder, RecordingFactory.new(), activate_timeout_s=1.0)
    try:
        for pid in ("../outside", "outside"):
            with pytest.raises(BundleNotFoundError):
                switcher.prepare(pid).result(10)
    finally:
        switcher.close()


def test_a_switch_the_inference_thread_never_takes_times_out_and_is_not_applied_later(
    products: dict[str, LoadedBundle],
) -> None:
    holder = ProductHolder(RecordingFactory.new())  # no inference thread applies anything
    switcher = ProductSwitcher(products["alpha"].path.parent, holder, RecordingFactory.new(),
                               activate_timeout_s=0.5)
    try:
        with pytest.raises(ProductSwitchError, match="did not switch to gamma"):
            switcher.activate("gamma").result(10)
        holder.apply_pending()
        assert holder.current is None  # the cancelled switch did not happen behind the caller's back
        assert [p.product for p in switcher.state().prepared] == ["gamma"]  # its engine stays ready
    finally:
        switcher.close()
        holder.close()


def test_requests_after_close_are_refused(products: dict[str, LoadedBundle]) -> None:
    holder = ProductHolder(RecordingFactory.new())
    switcher = ProductSwitcher(products["alpha"].path.parent, holder, RecordingFactory.new())
    switcher.close()
    with pytest.raises(ProductSwitchError, match="closed"):
        switcher.prepare("alpha").result(1)
    holder.close()


def test_commands_from_several_threads_are_carried_out_one_at_a_time(running: Running) -> None:
    results: dict[str, str] = {}

    def ask(pid: str) -> None:
        try:
            results[pid] = running.switcher.activate(pid).result(60).product_id
        except Exception as exc:  # pragma: no cover - reported below
            results[pid] = repr(exc)

    threads = [threading.Thread(target=ask, args=(pid,)) for pid in ("beta", "gamma", "alpha")]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join(60)
    assert results == {"beta": "beta", "gamma": "gamma", "alpha": "alpha"}
    running.frames(5)
    running.pipeline.stop(drain_timeout_s=10.0)
    names = [v.product_id for v in running.sink.verdicts]
    assert names[-1] == "alpha"
    assert np.all(np.diff([v.seq for v in running.sink.verdicts]) == 1)
