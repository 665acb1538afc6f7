"""The product switcher: prepare → activate, the industrial recipe pattern (OPC UA Machine Vision
"PrepareRecipe" / "ActivateRecipe") on a running line.

``prepare(product_id)`` loads the bundle from ``products_dir``, verifies it (schema, the sha256 of every
file, prototype shapes) and warms it up *beside* the running product:

* the same ``backbone_id`` as the running backend (one compiled model.onnx): only the prototype tensors and
  the threshold are new; they wait in memory and activation rebinds them (``set_prototype``);
* another backbone: a second backend is made, its prototype set and warmed up now — the double buffer.
  Activation then only swaps it in. The engine it replaces stays loaded, prepared under its product, so
  switching back is a swap as well (at most ``max_prepared`` products are kept; the oldest go first).

``activate(product_id)`` prepares first when needed, then asks the pipeline's seam
(``ProductHolder.activate``) to switch between two frames: every frame is inspected with exactly one product
and its verdict names that product and bundle. A bundle that fails to load, verify, compile or warm up
leaves the running product untouched; the returned future fails with the reason.

Threads (the design):

* Callers — the MQTT command thread (product/set, product/prepare), the daemon's main thread (SIGHUP),
  tests and benchmarks — get a Future back at once. Nothing here blocks the caller or the inference thread.
* One worker thread, ``linewatch-products``, does all the work, one request at a time in arrival order, so
  two commands never race on the prepared set. Reading, hashing, session creation and warm-up run here.
  They compete with inspection for CPU cores, but never hold the inference thread.
* The inference thread only swaps (a pointer for a prepared engine, a tensor rebind for a shared backbone).

Backends and threads: an ONNX Runtime session may be created on one thread and run on another (its ``Run``
is thread-safe). The TensorRT backend retains the device's primary CUDA context and pushes/pops it around
every call, so it too is created here and then used by the inference thread: a hand-over, never two threads
at once — once a backend is given to the holder, this module never touches it again. A backend that would
have to be created on the inference thread itself (a runtime binding a context to its creating thread)
would still switch correctly through ``ProductHolder.activate(bundle)`` without a backend, paying its load
time there.

State: ``state()`` is the retained ``product`` payload (active product and bundle, prepared products, the
last error); ``on_state`` is called with it after every prepare/activate, successful or not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from linewatch.bundle.registry import LoadedBundle, load_product, read_manifest, validate_product_id
from linewatch.errors import BundleError, BundleInputMismatchError, LinewatchError
from linewatch.inference.backend import InferenceBackend
from linewatch.pipeline.product import ActiveProduct, BackendFactory, ProductHolder, ready_backend
from linewatch.publish.payloads import PreparedProduct, ProductStatePayload

log = logging.getLogger(__name__)

T = TypeVar("T")
StateCallback = Callable[[ProductStatePayload], None]


class ProductSwitchError(LinewatchError):
    """A switch could not be carried out (the pipeline did not take it in time, or the switcher is closed)."""


@dataclass(slots=True)
class _Prepared:
    bundle: LoadedBundle
    # None: the bundle shares the running backbone, so only its prototype tensors wait here.
    backend: InferenceBackend | None


@dataclass(frozen=True, slots=True)
class SwitcherCounters:
    prepared: int  # successful preparations (a new engine or new prototype tensors)
    prepare_failures: int
    switches: int  # activations carried out by the inference thread
    switch_failures: int
    last_switch_ms: float | None  # from handing the swap to the holder until frames use the new product


def _compatible(running: LoadedBundle, new: LoadedBundle) -> None:
    """Equal backbone_id means the same model.onnx bytes, so the tensor shapes must agree too."""
    a, b = running.manifest, new.manifest
    dims_a = (a.input.height, a.input.width, a.scoring.feature_dim, a.scoring.heatmap_height,
              a.scoring.heatmap_width)  # fmt: skip
    dims_b = (b.input.height, b.input.width, b.scoring.feature_dim, b.scoring.heatmap_height,
              b.scoring.heatmap_width)  # fmt: skip
    if dims_a != dims_b:
        raise BundleInputMismatchError(
            f"{new.path}: backbone_id equals the running {running.bundle_id}'s, but its input/feature "
            f"dimensions (h, w, features, heatmap h, w) {dims_b} differ from {dims_a}; the manifest is "
            "inconsistent with its model.onnx"
        )


class ProductSwitcher:
    """Prepares products beside the running one and activates them at a frame boundary (see module doc)."""

    def __init__(
        self,
        products_dir: Path,
        holder: ProductHolder,
        backend_factory: BackendFactory,
        *,
        max_prepared: int = 4,
        activate_timeout_s: float = 30.0,
        on_state: StateCallback | None = None,
    ) -> None:
        if max_prepared < 1:
            raise ValueError("max_prepared must be >= 1")
        self.products_dir = products_dir
        self.holder = holder
        self.max_prepared = max_prepared
        self.activate_timeout_s = activate_timeout_s
        self.on_state = on_state
        self._factory = backend_factory
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="linewatch-products")
        self._lock = threading.Lock()
        self._prepared: OrderedDict[str, _Prepared] = OrderedDict()
        self._last_error: str | None = None
        self._closed = False
        self._counts = {"prepared": 0, "prepare_failures": 0, "switches": 0, "switch_failures": 0}
        self._last_switch_ms: float | None = None

    # ---- requests (any thread) ---------------------------------------------------------------------------

    def prepare(self, product_id: str) -> Future[LoadedBundle]:
        """Load, verify and warm up ``product_id`` beside the running product; the future gives the verified
        bundle or fails with the reason (BundleError, InferenceError, ...). The running product is untouched
        either way."""
        return self._submit(lambda: self._prepare(product_id).bundle, product_id, "prepare")

    def activate(self, product_id: str) -> Future[ActiveProduct]:
        """Switch to ``product_id`` at the next frame boundary, preparing it first if it is not prepared.
        The future resolves once frames are inspected with it, or fails with the reason (the running product
        stays active)."""
        return self._submit(lambda: self._activate(product_id), product_id, "activate")

    def _submit(self, job: Callable[[], T], product_id: str, what: str) -> Future[T]:
        with self._lock:
            if not self._closed:
                return self._executor.submit(self._run, job, product_id, what)
        future: Future[T] = Future()
        future.set_exception(ProductSwitchError(f"cannot {what} {product_id!r}: the switcher is closed"))
        return future

    def _run(self, job: Callable[[], T], product_id: str, what: str) -> T:
        try:
            if self._closed:
                raise ProductSwitchError(f"cannot {what} {product_id!r}: the switcher is closed")
            validate_product_id(product_id)
            result = job()
        except Exception as exc:
            with self._lock:
                self._last_error = f"{what} {product_id}: {exc}"
            log.error("%s %s failed, the running product stays: %s", what, product_id, exc)
            self._publish()
            raise
        with self._lock:
            self._last_error = None
        self._publish()
        return result

    # ---- worker thread -----------------------------------------------------------------------------------

    def _prepare(self, product_id: str) -> _Prepared:
        try:
            entry = self._prepare_entry(product_id)
        except Exception:
            self._counts["prepare_failures"] += 1
            raise
        self._counts["prepared"] += 1
        return entry

    def _prepare_entry(self, product_id: str) -> _Prepared:
        started = time.perf_counter()
        bundle = load_product(self.products_dir, product_id)
        with self._lock:
            existing = self._prepared.get(product_id)
            if existing is not None and existing.bundle.bundle_id == bundle.bundle_id:
                self._prepared.move_to_end(product_id)
                return existing
        current = self.holder.current
        backend: InferenceBackend | None = None
        if current is not None and current.backend.backbone_id == bundle.manifest.backbone_id:
            _compatible(current.bundle, bundle)
        else:
            backend = ready_backend(self._factory, bundle)
        entry = _Prepared(bundle, backend)
        with self._lock:
            replaced = self._prepared.pop(product_id, None)
            self._prepared[product_id] = entry
            evicted = []
            while len(self._prepared) > self.max_prepared:
                evicted.append(self._prepared.popitem(last=False)[1])
        for old in ([replaced] if replaced is not None else []) + evicted:
            _close(old.backend)
        log.info(
            "prepared %s (%s) in %.0f ms", bundle.bundle_id,
            "new engine" if backend is not None else "shares the running backbone",
            (time.perf_counter() - started) * 1e3,
        )  # fmt: skip
        return entry

    def _activate(self, product_id: str) -> ActiveProduct:
        with self._lock:
            entry = self._prepared.get(product_id)
        if entry is not None and self._outdated(entry):
            entry = None  # refitted on disk since it was prepared: prepare the new bundle
        if entry is None:
            entry = self._prepare(product_id)
        current = self.holder.current
        if current is not None and current.bundle_id == entry.bundle.bundle_id:
            self._forget(product_id, entry)  # already inspecting with exactly this bundle
            return current
        backbone = entry.bundle.manifest.backbone_id
        if entry.backend is None and (current is None or current.backend.backbone_id != backbone):
            # Prepared while it shared the engine that has since been replaced: it needs its own now.
            entry.backend = ready_backend(self._factory, entry.bundle)
        # Out of the prepared set while it is being swapped in: the engine in use is never in it (so an
        # eviction can never close it).
        with self._lock:
            if self._prepared.get(product_id) is entry:
                del self._prepared[product_id]
        started = time.perf_counter()
        future = self.holder.activate(entry.bundle, entry.backend, retire=self._take_back)
        try:
            product = self._wait(future, product_id)
        except Exception:
            self._counts["switch_failures"] += 1
            if future.cancelled():
                self._keep(product_id, entry)  # never applied: still ours and still good
            else:
                _close(entry.backend)  # the inference thread refused it: not worth keeping
            raise
        self._last_switch_ms = (time.perf_counter() - started) * 1e3
        self._counts["switches"] += 1
        with self._lock:
            # Other prepared products of the now running model share it: their spare engines go.
            spares = []
            for e in self._prepared.values():
                if e.backend is not None and e.backend.backbone_id == product.backend.backbone_id:
                    spares.append(e.backend)
                    e.backend = None
        for backend in spares:
            _close(backend)
        return product

    def _outdated(self, entry: _Prepared) -> bool:
        try:
            return read_manifest(entry.bundle.path).bundle_id != entry.bundle.bundle_id
        except BundleError:
            return True  # changed or gone: loading it again says what is wrong

    def _keep(self, product_id: str, entry: _Prepared) -> None:
        """Put an entry (back) into the prepared set, evicting the oldest beyond ``max_prepared``."""
        to_close: list[InferenceBackend | None] = []
        with self._lock:
            if self._closed:
                to_close.append(entry.backend)
            else:
                existing = self._prepared.get(product_id)
                if existing is not None and existing.bundle.bundle_id != entry.bundle.bundle_id:
                    to_close.append(entry.backend)  # a newer bundle of this product is prepared already
                else:
                    if existing is not None and existing.backend is not entry.backend:
                        to_close.append(existing.backend)
                    self._prepared[product_id] = entry
                    self._prepared.move_to_end(product_id)
                    while len(self._prepared) > self.max_prepared:
                        to_close.append(self._prepared.popitem(last=False)[1].backend)
        for backend in to_close:
            self._close_later(backend)

    def _take_back(self, replaced: ActiveProduct) -> None:
        """Inference thread, during a swap: the replaced product keeps its engine, prepared, so switching
        back is a swap too (double buffer). Only bookkeeping here; closing evicted engines is queued."""
        self._keep(replaced.product_id, _Prepared(replaced.bundle, replaced.backend))

    def _close_later(self, backend: InferenceBackend | None) -> None:
        if backend is None:
            return
        try:
            self._executor.submit(_close, backend)  # off the inference thread
        except RuntimeError:  # the executor is shut down
            _close(backend)

    def _wait(self, future: Future[ActiveProduct], product_id: str) -> ActiveProduct:
        try:
            return future.result(self.activate_timeout_s)
        except FutureTimeoutError:
            if future.cancel():
                raise ProductSwitchError(
                    f"the inference thread did not switch to {product_id} within "
                    f"{self.activate_timeout_s:g} s (is the pipeline running?); the running product stays"
                ) from None
            return future.result()  # being applied right now: it ends within one swap

    def _forget(self, product_id: str, entry: _Prepared, close_backend: bool = True) -> None:
        with self._lock:
            if self._prepared.get(product_id) is entry:
                del self._prepared[product_id]
        if close_backend:
            _close(entry.backend)
            entry.backend = None

    # ---- state -------------------------------------------------------------------------------------------

    def state(self) -> ProductStatePayload:
        """The retained ``product`` payload: what inspects now, what is prepared, the last error."""
        current = self.holder.current
        with self._lock:
            prepared = [PreparedProduct(product=pid, bundle=e.bundle.bundle_id)
                        for pid, e in self._prepared.items()]
            error = self._last_error
        return ProductStatePayload(
            active=None if current is None else current.product_id,
            active_bundle=None if current is None else current.bundle_id,
            prepared=prepared,
            last_error=error,
        )

    def _publish(self) -> None:
        if self.on_state is None:
            return
        try:
            self.on_state(self.state())
        except Exception as exc:  # the state is re-published on the next change; a switch is not undone
            log.warning("publishing the product state failed: %s", exc)

    def publish_state(self) -> None:
        """Publish the current state through ``on_state`` (e.g. once the pipeline has started)."""
        self._publish()

    @property
    def counters(self) -> SwitcherCounters:
        c = self._counts
        return SwitcherCounters(c["prepared"], c["prepare_failures"], c["switches"], c["switch_failures"],
                                self._last_switch_ms)  # fmt: skip

    def close(self) -> None:
        """Finish the request in progress, refuse the rest, close the engines prepared but never used."""
        with self._lock:
            self._closed = True
        # Requests still queued fail at once (closed); engines queued for closing are closed.
        self._executor.shutdown(wait=True)
        with self._lock:
            entries = list(self._prepared.values())
            self._prepared.clear()
        for entry in entries:
            _close(entry.backend)


def _close(backend: InferenceBackend | None) -> None:
    if backend is None:
        return
    try:
        backend.close()
    except Exception as exc:
        log.warning("closing a prepared backend (%s) failed: %s", backend.name, exc)
