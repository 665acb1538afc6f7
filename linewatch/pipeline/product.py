"""The product the inference stage inspects with, and the seam where it changes: ``activate``.

``ProductHolder.activate(bundle)`` may be called from any thread; the switch itself runs on the inference
thread, between two frames (``apply_pending``), so every frame is inspected with exactly one product and
its Verdict names that product and bundle. A bundle whose ``backbone_id`` equals the running backend's
only swaps the prototype tensors and threshold; any other bundle gets a new backend, made, warmed up and
proven before the old one is closed. A failed activation leaves the running product untouched and fails
the returned future with the reason.

``activate(bundle, backend)`` takes a backend already made, prototyped and warmed up beside the running one
(``linewatch.products.switcher`` double-buffers a new engine on its own thread): the inference thread then
only swaps it in, so a switch costs no frame time. The holder owns that backend once the future succeeds.
With ``retire``, the replaced product's backend is handed to that callback instead of being closed, so the
switcher can keep it ready for switching back.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from linewatch.bundle.registry import LoadedBundle
from linewatch.errors import LinewatchError
from linewatch.inference.backend import InferenceBackend

log = logging.getLogger(__name__)

# Makes a backend for a bundle (loads its model.onnx or TensorRT plan). Called on the inference thread.
BackendFactory = Callable[[LoadedBundle], InferenceBackend]
# Takes over the backend of a product replaced by a switch (called on the inference thread: keep it short).
RetireCallback = Callable[["ActiveProduct"], None]


def ready_backend(factory: BackendFactory, bundle: LoadedBundle) -> InferenceBackend:
    """``factory(bundle)`` with the bundle's prototype set and warmed up; closed again when either fails (the
    failure is what the caller hears about, not a failing close)."""
    backend = factory(bundle)
    try:
        backend.set_prototype(bundle.prototype_mean, bundle.prototype_scale)
        backend.warmup()
    except BaseException:
        try:
            backend.close()
        except Exception as exc:
            log.warning("closing backend %s after its failed start failed: %s", backend.name, exc)
        raise
    return backend


@dataclass(frozen=True, slots=True)
class ActiveProduct:
    """One product as the inference stage runs it: the verified bundle and the backend feeding it."""

    bundle: LoadedBundle
    backend: InferenceBackend

    @property
    def product_id(self) -> str:
        return self.bundle.product_id

    @property
    def bundle_id(self) -> str:
        return self.bundle.bundle_id

    @property
    def threshold(self) -> float:
        return self.bundle.manifest.threshold


class ProductHolder:
    """Holds the active product; ``apply_pending`` and ``close`` belong to the inference thread."""

    def __init__(self, backend_factory: BackendFactory) -> None:
        self._factory = backend_factory
        self._requests: queue.SimpleQueue[
            tuple[LoadedBundle, InferenceBackend | None, RetireCallback | None, Future[ActiveProduct]]
        ] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._current: ActiveProduct | None = None
        self._closed = False
        self.activations = 0
        self.failed_activations = 0
        self.product_switches = 0  # activations that changed the product id (not the first, not a refit)

    @property
    def current(self) -> ActiveProduct | None:
        """The product frames are inspected with now (a snapshot; safe from any thread)."""
        with self._lock:
            return self._current

    def activate(
        self,
        bundle: LoadedBundle,
        backend: InferenceBackend | None = None,
        retire: RetireCallback | None = None,
    ) -> Future[ActiveProduct]:
        """Ask the inference thread to switch to ``bundle`` before its next frame.

        The future resolves with the new ActiveProduct once frames are inspected with it, or fails with the
        reason (the previous product stays active). ``backend``: one already loaded for ``bundle``, its
        prototype set and warmed up (installed as is); until the future succeeds it stays the caller's.
        ``retire``: receives the replaced product when its backend is not the new one's (instead of the
        holder closing that backend); from then on the callee owns it.
        """
        future: Future[ActiveProduct] = Future()
        with self._lock:
            if self._closed:
                future.set_exception(LinewatchError("the pipeline is stopped; no product can be activated"))
                return future
            self._requests.put((bundle, backend, retire, future))
        return future

    def pending(self) -> bool:
        return not self._requests.empty()

    def apply_pending(self) -> None:
        """Inference thread, between two frames: carry out every queued activation in order."""
        while True:
            try:
                bundle, backend, retire, future = self._requests.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            before = self.current
            try:
                product = self._switch(bundle, backend, retire)
            except Exception as exc:  # a broken bundle or backend must never stop inspection
                self.failed_activations += 1
                log.error(
                    "activating %s failed, %s stays active: %s", bundle.bundle_id, self._describe(), exc
                )
                future.set_exception(exc)
            else:
                self.activations += 1
                if before is not None and before.product_id != product.product_id:
                    self.product_switches += 1
                future.set_result(product)

    def _describe(self) -> str:
        current = self.current
        return "no product" if current is None else current.bundle_id

    def _retire(self, old: ActiveProduct, retire: RetireCallback | None) -> None:
        if retire is not None:
            try:
                retire(old)
                return
            except Exception as exc:
                log.warning("handing over the previous backend (%s) failed, closing it: %s",
                            old.backend.name, exc)
        try:
            old.backend.close()
        except Exception as exc:
            log.warning("closing the previous backend (%s) failed: %s", old.backend.name, exc)

    def _switch(
        self,
        bundle: LoadedBundle,
        prepared: InferenceBackend | None = None,
        retire: RetireCallback | None = None,
    ) -> ActiveProduct:
        current = self.current
        if prepared is not None:
            # Made and warmed up beside the running one: only the swap happens on this thread.
            product = ActiveProduct(bundle=bundle, backend=prepared)
            if current is not None and current.backend is not prepared:
                self._retire(current, retire)
        elif current is not None and current.backend.backbone_id == bundle.manifest.backbone_id:
            # Same compiled model: only the prototype tensors (and the threshold, which lives in the bundle)
            # change. set_prototype validates shapes before it changes anything.
            current.backend.set_prototype(bundle.prototype_mean, bundle.prototype_scale)
            product = ActiveProduct(bundle=bundle, backend=current.backend)
        else:
            product = ActiveProduct(bundle=bundle, backend=ready_backend(self._factory, bundle))
            if current is not None:
                self._retire(current, retire)
        with self._lock:
            self._current = product
        log.info(
            "product %s active (bundle %s, backend %s, threshold %.6g)",
            product.product_id, product.bundle_id, product.backend.name, product.threshold,
        )
        return product

    def close(self) -> None:
        """Inference thread, at exit: close the backend and fail activations still waiting."""
        with self._lock:
            self._closed = True
            current, self._current = self._current, None
        while True:
            try:
                _, _, _, future = self._requests.get_nowait()
            except queue.Empty:
                break
            if future.set_running_or_notify_cancel():
                future.set_exception(LinewatchError("the pipeline stopped before the product was activated"))
        if current is not None:
            try:
                current.backend.close()
            except Exception as exc:
                log.warning("closing backend %s failed: %s", current.backend.name, exc)
