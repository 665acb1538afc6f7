"""TensorRT backend (TensorRT 10.x / 11.x Python API + pycuda) and the TensorRT plan build.

The only module that imports ``tensorrt`` and ``pycuda``; both are imported lazily by ``load_runtime`` so
that this module (and its config model) imports on machines without them, and a missing runtime becomes
one ``BackendUnavailableError`` saying what is missing.

On the device the whole decision runs in one engine: backbone, prototype subtraction, distance, pooled
maximum, plus an ``argmax`` output added to the network at build time (reshape N×H'×W' → N×(H'·W'), TopK
k=1). Per frame only the score and the argmax index come back to the host; the heatmap is copied only when
``want_heatmap`` is set.

Plan cache: plans built at start go to ``cache_dir`` (``$CACHE_DIRECTORY/engines`` under systemd), which
every instance on the host shares. Files there are written to a temporary name, flushed and renamed, so a
reader sees a whole file or none; a plan is used only when its ``.json`` sidecar's sha256 matches it; and
builds take a per-directory ``flock`` (``build_lock``), so two instances starting together build a plan
once and never interleave their timing-cache updates.

Threading: the backend retains the device's primary CUDA context (the one TensorRT's runtime API uses) in
its constructor, on the calling thread, and pushes it around every call and pops it before returning, so no
context is left current on any thread. All calls must come from one thread at a time (the inference stage).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from linewatch.bundle.manifest import EnginePlan
from linewatch.bundle.registry import LoadedBundle
from linewatch.errors import (
    BackendUnavailableError,
    BundleInputMismatchError,
    EngineIncompatibleError,
    InferenceError,
)
from linewatch.frames import InferenceOutput
from linewatch.inference.backend import (
    HEATMAP_OUTPUT,
    IMAGE_INPUT,
    MEAN_INPUT,
    SCALE_INPUT,
    SCORE_OUTPUT,
    ModelShapes,
)
from linewatch.inference.engine_keys import (
    DeviceKey,
    Precision,
    cache_file_name,
    format_compute_capability,
    select_plan,
)

log = logging.getLogger(__name__)

ARGMAX_OUTPUT = "argmax"  # added to the network at build time, not present in model.onnx

INSTALL_HINT = "install the GPU extra: pip install 'linewatch[gpu]'"


def default_cache_dir() -> Path:
    """``$CACHE_DIRECTORY/engines`` under systemd (``CacheDirectory=``), else ~/.cache/linewatch/engines."""
    systemd_cache = os.environ.get("CACHE_DIRECTORY")
    if systemd_cache:
        return Path(systemd_cache.split(":")[0]) / "engines"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "linewatch" / "engines"


class TensorrtConfig(BaseModel):
    """Settings of the TensorRT backend (``[inference.tensorrt]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["tensorrt"] = Field(default="tensorrt", description="Backend kind (fixed)")
    precision: Precision = Field(
        default="fp16",
        description="Plan precision to use: fp16 (mixed precision, distances in fp32) or fp32",
    )
    cuda_graph: bool = Field(
        default=True,
        description="Capture the engine's enqueue in a CUDA graph per batch size (fewer launches per frame); "
        "falls back to plain enqueue, once and logged, when capture fails",
    )
    device_index: int = Field(default=0, ge=0, description="CUDA device ordinal")
    build_if_missing: bool = Field(
        default=True,
        description="Build a plan from model.onnx on first start when the bundle has none for this GPU and "
        "TensorRT version (takes seconds to minutes; cached in cache_dir)",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="Where plans built at start are cached (never inside the read-only bundle); default "
        "$CACHE_DIRECTORY/engines under systemd, else ~/.cache/linewatch/engines",
    )
    timing_cache: Path | None = Field(
        default=None, description="TensorRT timing cache file; default <cache_dir>/timing.cache"
    )
    max_batch: int = Field(default=8, ge=1, le=256, description="Largest batch of plans built at start")
    workspace_mib: int = Field(default=1024, ge=16, description="Builder workspace memory limit in MiB")
    warmup_runs: int = Field(default=3, ge=1, description="Inference runs on a blank image at load")


@dataclass(frozen=True, slots=True)
class Runtime:
    """The imported modules (typed Any: neither ships type information)."""

    trt: Any
    cuda: Any


def load_runtime() -> Runtime:
    """Import tensorrt and pycuda and find a GPU, or raise BackendUnavailableError saying which is missing."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(f"tensorrt not installed ({INSTALL_HINT})") from exc
    except OSError as exc:  # the wheel is there but libnvinfer / CUDA libraries are not loadable
        raise BackendUnavailableError(f"tensorrt cannot load its libraries: {exc}") from exc
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise BackendUnavailableError(f"pycuda not installed ({INSTALL_HINT})") from exc
    except OSError as exc:
        raise BackendUnavailableError(f"pycuda cannot load the CUDA driver library: {exc}") from exc
    try:
        cuda.init()
        count = cuda.Device.count()
    except cuda.Error as exc:
        raise BackendUnavailableError(f"no usable CUDA driver/GPU: {exc}") from exc
    if count == 0:
        raise BackendUnavailableError("no CUDA GPU found")
    return Runtime(trt=trt, cuda=cuda)


def device_key(runtime: Runtime, device_index: int) -> DeviceKey:
    cuda = runtime.cuda
    count = cuda.Device.count()
    if device_index >= count:
        raise BackendUnavailableError(f"CUDA device {device_index} does not exist ({count} found)")
    device = cuda.Device(device_index)
    major, minor = device.compute_capability()
    return DeviceKey(
        gpu_name=str(device.name()),
        compute_capability=format_compute_capability(int(major), int(minor)),
        tensorrt_version=str(runtime.trt.__version__),
    )


def _make_logger(trt: Any) -> Any:
    """A TensorRT ILogger that keeps the recent warnings/errors (to quote them when something fails) and
    forwards them to Python logging."""

    class CollectingLogger(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: deque[str] = deque(maxlen=50)

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)  # INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
            if level <= 2:
                name = getattr(severity, "name", str(level))
                self.messages.append(f"[{name}] {msg}")
                log.log(logging.ERROR if level <= 1 else logging.WARNING, "TensorRT: %s", msg)
            elif level == 3:
                log.debug("TensorRT: %s", msg)

        def recent(self) -> str:
            return " | ".join(self.messages) or "(TensorRT logged nothing)"

    return CollectingLogger()


@contextlib.contextmanager
def _current(context: Any, cuda: Any) -> Iterator[None]:
    """Make ``context`` current for the block and pop it afterwards, whatever happens."""
    context.push()
    try:
        yield
    finally:
        cuda.Context.pop()


# --------------------------------------------------------------------------------------------- build


@dataclass(frozen=True, slots=True)
class BuiltPlan:
    plan: bytes
    device: DeviceKey
    build_s: float
    strongly_typed: bool


FP16Mode = Literal["none", "strongly_typed", "builder_flag"]


def _add_argmax_output(trt: Any, network: Any) -> None:
    heatmap = None
    for i in range(network.num_outputs):
        tensor = network.get_output(i)
        if tensor.name == HEATMAP_OUTPUT:
            heatmap = tensor
    if heatmap is None:
        names = [network.get_output(i).name for i in range(network.num_outputs)]
        raise BundleInputMismatchError(
            f"model.onnx has no output named {HEATMAP_OUTPUT!r} (outputs: {names})"
        )
    flat = network.add_shuffle(heatmap)
    flat.reshape_dims = (0, -1)  # 0 copies the (dynamic) batch dimension
    topk = network.add_topk(flat.get_output(0), op=trt.TopKOperation.MAX, k=1, axes=1 << 1)  # axis 1
    indices = topk.get_output(1)
    indices.name = ARGMAX_OUTPUT
    network.mark_output(indices)


def build_plan(
    onnx_bytes: bytes,
    *,
    height: int,
    width: int,
    max_batch: int,
    fp16_mode: FP16Mode = "none",
    timing_cache: Path | None = None,
    workspace_mib: int = 1024,
    device_index: int = 0,
    opt_batch: int = 1,
) -> BuiltPlan:
    """Compile ONNX bytes to a serialised TensorRT plan with one optimisation profile (batch 1..max_batch,
    tuned for ``opt_batch``) and an extra ``argmax`` output.

    ``fp16_mode``: ``strongly_typed`` builds a mixed-precision ONNX (see trainer/precision.py) with the
    types it declares (TensorRT 10 and 11); ``builder_flag`` lets TensorRT pick fp16 kernels in an fp32 graph
    (TensorRT 10 only: 11 removed the flag). The timing cache at ``timing_cache`` is read and written back.
    """
    runtime = load_runtime()
    trt, cuda = runtime.trt, runtime.cuda
    device = device_key(runtime, device_index)
    context = cuda.Device(device_index).retain_primary_context()
    logger = _make_logger(trt)
    try:
        with _current(context, cuda):
            start = time.perf_counter()
            builder = trt.Builder(logger)
            flags = 0
            strongly_typed_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
            if fp16_mode == "strongly_typed" and strongly_typed_flag is not None:
                flags |= 1 << int(strongly_typed_flag)
            # TensorRT 11 has no flag because every network is strongly typed there.
            strongly_typed = fp16_mode == "strongly_typed" or strongly_typed_flag is None
            network = builder.create_network(flags)
            parser = trt.OnnxParser(network, logger)
            if not parser.parse(onnx_bytes):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise InferenceError(f"TensorRT cannot parse the ONNX model: {errors or logger.recent()}")
            _add_argmax_output(trt, network)
            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
            if fp16_mode == "builder_flag":
                fp16_flag = getattr(trt.BuilderFlag, "FP16", None)
                if fp16_flag is None:
                    raise InferenceError(
                        f"TensorRT {trt.__version__} has no FP16 builder flag; build fp16 from a "
                        "mixed-precision ONNX instead (trainer build-engine --precision fp16)"
                    )
                config.set_flag(fp16_flag)
            profile = builder.create_optimization_profile()
            opt = min(max(opt_batch, 1), max_batch)
            profile.set_shape(
                IMAGE_INPUT, (1, 1, height, width), (opt, 1, height, width), (max_batch, 1, height, width)
            )
            config.add_optimization_profile(profile)
            cache = None
            if timing_cache is not None:
                previous = timing_cache.read_bytes() if timing_cache.is_file() else b""
                cache = config.create_timing_cache(previous)
                if not config.set_timing_cache(cache, ignore_mismatch=False):
                    log.warning("timing cache %s is from another device/TensorRT; starting a new one",
                                timing_cache)
                    cache = config.create_timing_cache(b"")
                    config.set_timing_cache(cache, ignore_mismatch=False)
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise InferenceError(f"TensorRT could not build the plan: {logger.recent()}")
            plan = bytes(serialized)
            if timing_cache is not None:
                _atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
            build_s = time.perf_counter() - start
    except (InferenceError, BundleInputMismatchError):
        raise
    except Exception as exc:  # TensorRT / pycuda raise plain RuntimeError / TypeError / cuda.Error
        raise InferenceError(f"TensorRT build failed: {exc} ({logger.recent()})") from exc
    finally:
        context.detach()
    log.info("built TensorRT plan for %s (sm %s, TensorRT %s) in %.1f s", device.gpu_name,
             device.compute_capability, device.tensorrt_version, build_s)
    return BuiltPlan(plan=plan, device=device, build_s=build_s, strongly_typed=strongly_typed)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write a temporary file beside ``path``, flush it to disk, rename it over ``path``: a reader (another
    instance sharing the cache directory) sees the old file or the new one, never a part, also after a
    power cut."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


BUILD_LOCK = ".build.lock"


@contextlib.contextmanager
def build_lock(cache_dir: Path) -> Iterator[None]:
    """One plan build at a time per cache directory, across processes: several instances share
    ``$CACHE_DIRECTORY``, so the second to need a plan waits for the first one's build and then loads its
    plan, and no two builds read-modify-write the timing cache at once. (flock: released by the kernel if
    the holder dies.)"""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / BUILD_LOCK, "ab") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is building a TensorRT plan in %s; waiting for it", cache_dir)
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _read_cached_plan(cached: Path, notes: list[str]) -> _Plan | None:
    """The plan cached at ``cached`` when its sidecar's sha256 matches (a half-replaced pair, or a plan
    from another build than its sidecar, does not: the caller rebuilds); why not goes into ``notes``."""
    sidecar = cached.with_suffix(".json")
    if not (cached.is_file() and sidecar.is_file()):
        return None
    try:
        data = cached.read_bytes()
        expected = json.loads(sidecar.read_text(encoding="utf-8")).get("sha256")
    except (OSError, ValueError) as exc:
        notes.append(f"cached {cached.name} unreadable ({exc}); rebuilding")
        return None
    if _sha256(data) != expected:
        notes.append(f"cached {cached.name} fails its hash check; rebuilding")
        return None
    return _Plan(data, "cache", cached, f"cached plan {cached} ({'; '.join(notes)})")


# ------------------------------------------------------------------------------------ CUDA graphs


class _CudaGraphs:
    """Stream capture through the CUDA driver API (pycuda does not wrap graphs). Handles are plain ints."""

    _CAPTURE_MODE_THREAD_LOCAL = 1  # other threads' CUDA calls are not affected by our capture

    def __init__(self) -> None:
        lib = ctypes.CDLL("libcuda.so.1")
        self._lib = lib
        vp = ctypes.c_void_p
        lib.cuStreamBeginCapture_v2.argtypes = [vp, ctypes.c_int]
        lib.cuStreamEndCapture.argtypes = [vp, ctypes.POINTER(vp)]
        lib.cuGraphInstantiateWithFlags.argtypes = [ctypes.POINTER(vp), vp, ctypes.c_ulonglong]
        lib.cuGraphLaunch.argtypes = [vp, vp]
        lib.cuGraphExecDestroy.argtypes = [vp]
        lib.cuGraphDestroy.argtypes = [vp]
        lib.cuGetErrorString.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        for name in ("cuStreamBeginCapture_v2", "cuStreamEndCapture", "cuGraphInstantiateWithFlags",
                     "cuGraphLaunch", "cuGraphExecDestroy", "cuGraphDestroy", "cuGetErrorString"):
            getattr(lib, name).restype = ctypes.c_int

    def _check(self, result: int, what: str) -> None:
        if result != 0:
            text = ctypes.c_char_p()
            self._lib.cuGetErrorString(result, ctypes.byref(text))
            raise InferenceError(f"{what} failed: CUDA error {result} ({(text.value or b'').decode()})")

    def capture(self, stream_handle: int, enqueue: Callable[[], bool]) -> int:
        """Record ``enqueue`` on the stream into an executable graph; returns its handle."""
        self._check(self._lib.cuStreamBeginCapture_v2(stream_handle, self._CAPTURE_MODE_THREAD_LOCAL),
                    "cuStreamBeginCapture")
        graph = ctypes.c_void_p()
        try:
            ok = enqueue()
        finally:
            end = self._lib.cuStreamEndCapture(stream_handle, ctypes.byref(graph))
        if not ok:
            if graph.value:
                self._lib.cuGraphDestroy(graph)
            raise InferenceError("execute_async_v3 failed during CUDA graph capture")
        self._check(end, "cuStreamEndCapture")
        executable = ctypes.c_void_p()
        try:
            self._check(self._lib.cuGraphInstantiateWithFlags(ctypes.byref(executable), graph, 0),
                        "cuGraphInstantiate")
        finally:
            self._lib.cuGraphDestroy(graph)
        return int(executable.value or 0)

    def launch(self, executable: int, stream_handle: int) -> None:
        self._check(self._lib.cuGraphLaunch(executable, stream_handle), "cuGraphLaunch")

    def destroy(self, executable: int) -> None:
        self._lib.cuGraphExecDestroy(executable)


# --------------------------------------------------------------------------------------- backend


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class _Plan:
    data: bytes
    source: str  # "bundle", "cache", "built" or "file" (given explicitly)
    path: Path
    note: str


class TensorrtBackend:
    """InferenceBackend on a TensorRT engine: page-locked host buffers and device buffers allocated once for
    the plan's largest batch, one stream, tensor addresses bound once, ``execute_async_v3`` (or the CUDA
    graph that recorded it). The prototype lives on the device; ``set_prototype`` is a host→device copy."""

    def __init__(
        self, bundle: LoadedBundle, config: TensorrtConfig | None = None, plan_file: Path | None = None
    ) -> None:
        """``plan_file`` runs that plan instead of selecting one (build-engine's parity check, benchmarks)."""
        self._config = config or TensorrtConfig()
        self._plan_file = plan_file
        self._manifest = bundle.manifest
        runtime = load_runtime()
        self._trt, self._cuda = runtime.trt, runtime.cuda
        self.device = device_key(runtime, self._config.device_index)
        self._shapes = ModelShapes.of(self._manifest)
        self._graphs: dict[int, int] = {}
        self._last_plain_batch: int | None = None  # batch of the last plain enqueue, shape unchanged since
        self._graph_api: _CudaGraphs | None = None
        self._graphs_disabled = not self._config.cuda_graph
        self._bound_batch = 0
        self._closed = False
        self._logger = _make_logger(self._trt)
        # The primary context is the one TensorRT's (runtime-API) calls use, so pycuda allocations and the
        # engine live in the same context.
        self._context = self._cuda.Device(self._config.device_index).retain_primary_context()
        try:
            with _current(self._context, self._cuda):
                notes: list[str] = []
                plan = self._obtain_plan(bundle, notes, skip_existing=False)
                try:
                    self._setup(plan)
                except EngineIncompatibleError as exc:
                    # A bundled/cached plan that TensorRT refuses (the message quotes TensorRT's log) is
                    # replaced by a fresh build when allowed.
                    if plan.source not in ("bundle", "cache") or not self._config.build_if_missing:
                        raise
                    log.warning("%s; building a new plan", exc)
                    notes.append(str(exc))
                    plan = self._obtain_plan(bundle, notes, skip_existing=True)
                    self._setup(plan)
                self.plan_source, self.plan_path, self.plan_note = plan.source, plan.path, plan.note
                self.set_prototype(bundle.prototype_mean, bundle.prototype_scale)
                self.warmup()
        except BaseException:
            self._release()
            raise
        log.info("tensorrt backend ready on %s: %s", self.device.gpu_name, self.plan_note)

    # -------------------------------------------------------------------------------- plans

    def _deserialize(self, data: bytes, where: Path) -> Any:
        runtime = self._trt.Runtime(self._logger)
        self._logger.messages.clear()
        try:
            engine = runtime.deserialize_cuda_engine(data)
        except Exception as exc:
            raise EngineIncompatibleError(
                f"{where}: TensorRT cannot deserialise the plan: {exc} ({self._logger.recent()})"
            ) from exc
        if engine is None:
            raise EngineIncompatibleError(
                f"{where}: TensorRT cannot deserialise the plan: {self._logger.recent()}"
            )
        self._runtime = runtime  # the runtime must outlive its engine
        return engine

    def _obtain_plan(self, bundle: LoadedBundle, notes: list[str], skip_existing: bool) -> _Plan:
        """The bundled plan for this device, else the cached one, else a new build (notes say why)."""
        cfg, dev = self._config, self.device
        if self._plan_file is not None:
            try:
                return _Plan(self._plan_file.read_bytes(), "file", self._plan_file, f"plan {self._plan_file}")
            except OSError as exc:
                raise EngineIncompatibleError(f"{self._plan_file}: unreadable plan ({exc})") from exc
        selection = select_plan(
            list(self._manifest.engines), dev.gpu_name, dev.compute_capability, dev.tensorrt_version,
            precision=cfg.precision,
        )
        plan: EnginePlan | None = None if skip_existing else selection.plan
        if plan is not None:
            if plan.file not in self._manifest.files:
                notes.append(f"{plan.file} is not hash-listed in bundle.json; not loaded")
            else:
                path = bundle.path / plan.file
                try:
                    return _Plan(path.read_bytes(), "bundle", path, f"bundled plan {plan.file}")
                except OSError as exc:
                    notes.append(f"{path}: unreadable ({exc})")
        elif not skip_existing:
            notes.append(selection.summary())
        cache_dir = cfg.cache_dir or default_cache_dir()
        cached = cache_dir / cache_file_name(self._manifest.backbone_id, dev, cfg.precision, cfg.max_batch)
        if not skip_existing:
            found = _read_cached_plan(cached, notes)
            if found is not None:
                return found
        if not cfg.build_if_missing:
            raise EngineIncompatibleError(
                "no usable TensorRT plan and build_if_missing is off: " + "; ".join(notes)
            )
        try:
            with build_lock(cache_dir):
                if not skip_existing:
                    # Another instance may have built it while this one waited for the lock.
                    found = _read_cached_plan(cached, [])
                    if found is not None:
                        return found
                return self._build_plan(bundle, cached, notes)
        except OSError as exc:  # a cache directory that cannot be created or written, a full disk
            raise InferenceError(f"cannot build and cache a TensorRT plan in {cache_dir}: {exc}") from exc

    def _build_plan(self, bundle: LoadedBundle, cached: Path, notes: list[str]) -> _Plan:
        """Build, then cache: the plan first, then its sidecar (the sha256 a reader checks it against). The
        caller holds the cache directory's build lock."""
        cfg, dev = self._config, self.device
        fp16_mode: FP16Mode = "none"
        if cfg.precision == "fp16":
            if hasattr(self._trt.BuilderFlag, "FP16"):
                fp16_mode = "builder_flag"
            else:
                notes.append(
                    f"fp16 on TensorRT {dev.tensorrt_version} needs a mixed-precision plan from "
                    "`trainer build-engine --precision fp16`; building fp32 meanwhile"
                )
        built = build_plan(
            bundle.model_path.read_bytes(),
            height=self._shapes.image[1], width=self._shapes.image[2], max_batch=cfg.max_batch,
            fp16_mode=fp16_mode, timing_cache=cfg.timing_cache or cached.parent / "timing.cache",
            workspace_mib=cfg.workspace_mib, device_index=cfg.device_index,
        )
        _atomic_write(cached, built.plan)
        _atomic_write(cached.with_suffix(".json"), json.dumps({
            "sha256": _sha256(built.plan), "backbone_id": self._manifest.backbone_id,
            "gpu_name": dev.gpu_name, "compute_capability": dev.compute_capability,
            "tensorrt_version": dev.tensorrt_version, "precision": cfg.precision, "fp16_mode": fp16_mode,
            "max_batch": cfg.max_batch,
        }, indent=2).encode())
        return _Plan(built.plan, "built", cached,
                     f"built plan in {built.build_s:.1f} s, cached at {cached} ({'; '.join(notes)})")

    # -------------------------------------------------------------------------------- buffers

    def _setup(self, plan: _Plan) -> None:
        trt, cuda = self._trt, self._cuda
        engine = self._deserialize(plan.data, plan.path)
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        expected = {IMAGE_INPUT, MEAN_INPUT, SCALE_INPUT, HEATMAP_OUTPUT, SCORE_OUTPUT, ARGMAX_OUTPUT}
        if names != expected:
            raise BundleInputMismatchError(
                f"{plan.path}: engine tensors {sorted(names)} differ from {sorted(expected)}"
            )
        shapes = {name: tuple(engine.get_tensor_shape(name)) for name in names}
        h, w = self._shapes.heatmap
        wanted = {
            IMAGE_INPUT: (-1, *self._shapes.image),
            MEAN_INPUT: self._shapes.prototype_mean,
            SCALE_INPUT: self._shapes.prototype_scale,
            HEATMAP_OUTPUT: (-1, h, w), SCORE_OUTPUT: (-1,), ARGMAX_OUTPUT: (-1, 1),
        }
        wrong = [f"{n} {list(shapes[n])} (manifest: {list(s)})" for n, s in wanted.items() if shapes[n] != s]
        if wrong:
            raise BundleInputMismatchError(
                f"{plan.path}: engine does not match bundle.json: " + "; ".join(wrong)
            )
        for name in (IMAGE_INPUT, MEAN_INPUT, SCALE_INPUT, HEATMAP_OUTPUT, SCORE_OUTPUT):
            if engine.get_tensor_dtype(name) != trt.float32:
                raise BundleInputMismatchError(
                    f"{plan.path}: tensor {name} is {engine.get_tensor_dtype(name)}, expected float32 "
                    "(fp16 plans keep float32 inputs and outputs)"
                )
        self.max_batch = int(engine.get_tensor_profile_shape(IMAGE_INPUT, 0)[2][0])
        self._engine = engine
        self._exec = engine.create_execution_context()
        if self._exec is None:
            raise InferenceError(f"cannot create a TensorRT execution context: {self._logger.recent()}")
        self._stream = cuda.Stream()
        n = self.max_batch
        argmax_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(ARGMAX_OUTPUT)))
        self._host = {
            IMAGE_INPUT: cuda.pagelocked_empty((n, *self._shapes.image), np.float32),
            HEATMAP_OUTPUT: cuda.pagelocked_empty((n, h, w), np.float32),
            SCORE_OUTPUT: cuda.pagelocked_empty((n,), np.float32),
            ARGMAX_OUTPUT: cuda.pagelocked_empty((n, 1), argmax_dtype),
        }
        self._device = {name: cuda.mem_alloc(arr.nbytes) for name, arr in self._host.items()}
        self._device[MEAN_INPUT] = cuda.mem_alloc(int(np.prod(self._shapes.prototype_mean)) * 4)
        self._device[SCALE_INPUT] = cuda.mem_alloc(int(np.prod(self._shapes.prototype_scale)) * 4)
        for name, allocation in self._device.items():
            if not self._exec.set_tensor_address(name, int(allocation)):
                raise InferenceError(f"set_tensor_address({name}) failed: {self._logger.recent()}")

    # -------------------------------------------------------------------------------- protocol

    @property
    def name(self) -> str:
        return f"tensorrt ({self._config.precision}, {self.device.gpu_name}, {self.plan_source} plan)"

    @property
    def backbone_id(self) -> str:
        return self._manifest.backbone_id

    def set_prototype(self, mean: npt.NDArray[np.float32], scale: npt.NDArray[np.float32]) -> None:
        self._shapes.check_prototype(mean, scale)
        mean_c = np.ascontiguousarray(mean, dtype=np.float32)
        scale_c = np.ascontiguousarray(scale, dtype=np.float32)
        try:
            with _current(self._context, self._cuda):
                # Synchronous copies (legacy stream, which our blocking stream orders against): the next
                # frame sees the new tensors.
                self._cuda.memcpy_htod(self._device[MEAN_INPUT], mean_c)
                self._cuda.memcpy_htod(self._device[SCALE_INPUT], scale_c)
        except self._cuda.Error as exc:
            raise InferenceError(f"copying the prototype to the GPU failed: {exc}") from exc

    def warmup(self) -> None:
        # The first enqueue for a shape pays lazy kernel loading and the CUDA graph capture; a few runs here
        # keep that off the first camera frame.
        blank = np.zeros((1, *self._shapes.image), dtype=np.float32)
        start = time.perf_counter()
        for _ in range(self._config.warmup_runs):
            self.infer(blank, want_heatmap=False)
        self.warmup_ms = (time.perf_counter() - start) * 1e3

    def infer(self, images: npt.NDArray[np.float32], want_heatmap: bool) -> list[InferenceOutput]:
        self._shapes.check_images(images)
        outputs: list[InferenceOutput] = []
        for start in range(0, images.shape[0], self.max_batch):
            outputs.extend(self._infer_chunk(images[start : start + self.max_batch], want_heatmap))
        return outputs

    def _enqueue(self) -> bool:
        return bool(self._exec.execute_async_v3(self._stream.handle))

    def _run(self, batch: int) -> None:
        if batch != self._bound_batch:
            if not self._exec.set_input_shape(IMAGE_INPUT, (batch, *self._shapes.image)):
                raise InferenceError(f"set_input_shape(batch {batch}) refused: {self._logger.recent()}")
            self._bound_batch = batch
            self._last_plain_batch = None
        graph = self._graphs.get(batch)
        if graph is not None and self._graph_api is not None:
            self._graph_api.launch(graph, self._stream.handle)
            return
        if not self._graphs_disabled and self._last_plain_batch == batch:
            # TensorRT wants one plain enqueue after a shape change before capture; that has happened.
            try:
                if self._graph_api is None:
                    self._graph_api = _CudaGraphs()
                self._graphs[batch] = self._graph_api.capture(self._stream.handle, self._enqueue)
                self._graph_api.launch(self._graphs[batch], self._stream.handle)
                return
            except (InferenceError, OSError, AttributeError) as exc:
                self._graphs_disabled = True
                log.warning("CUDA graph capture unavailable, using plain enqueue: %s", exc)
        if not self._enqueue():
            raise InferenceError(f"execute_async_v3 failed: {self._logger.recent()}")
        self._last_plain_batch = batch

    def _infer_chunk(self, images: npt.NDArray[np.float32], want_heatmap: bool) -> list[InferenceOutput]:
        cuda = self._cuda
        batch = images.shape[0]
        host = self._host
        try:
            with _current(self._context, cuda):
                np.copyto(host[IMAGE_INPUT][:batch], images, casting="same_kind")
                cuda.memcpy_htod_async(self._device[IMAGE_INPUT], host[IMAGE_INPUT][:batch], self._stream)
                self._run(batch)
                cuda.memcpy_dtoh_async(host[SCORE_OUTPUT][:batch], self._device[SCORE_OUTPUT], self._stream)
                cuda.memcpy_dtoh_async(host[ARGMAX_OUTPUT][:batch], self._device[ARGMAX_OUTPUT], self._stream)
                if want_heatmap:
                    cuda.memcpy_dtoh_async(host[HEATMAP_OUTPUT][:batch], self._device[HEATMAP_OUTPUT],
                                           self._stream)
                self._stream.synchronize()  # pycuda releases the GIL while waiting
        except cuda.Error as exc:
            raise InferenceError(f"CUDA failed on a batch of {batch}: {exc}") from exc
        width = self._shapes.heatmap[1]
        flat = host[ARGMAX_OUTPUT][:batch, 0]
        return [
            InferenceOutput(
                score=float(host[SCORE_OUTPUT][i]),
                argmax_rc=(int(flat[i]) // width, int(flat[i]) % width),
                heatmap=host[HEATMAP_OUTPUT][i].copy() if want_heatmap else None,
            )
            for i in range(batch)
        ]

    def measure_engine_ms(self, batch: int, runs: int) -> list[float]:
        """Device time of the engine alone (CUDA events around the enqueue or graph launch), per run, on
        whatever is in the input buffer: the "inside the engine" part of a frame for benchmarks."""
        cuda = self._cuda
        if not 1 <= batch <= self.max_batch:
            raise InferenceError(f"batch {batch} outside the plan's 1..{self.max_batch}")
        times: list[float] = []
        with _current(self._context, cuda):
            start, end = cuda.Event(), cuda.Event()
            for _ in range(runs):
                start.record(self._stream)
                self._run(batch)
                end.record(self._stream)
                end.synchronize()
                times.append(float(end.time_since(start)))
        return times

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with _current(self._context, self._cuda):
                if self._graph_api is not None:
                    for executable in self._graphs.values():
                        self._graph_api.destroy(executable)
                self._graphs.clear()
                for allocation in getattr(self, "_device", {}).values():
                    allocation.free()
                # Drop CUDA-owning objects while the context is current: context, engine, runtime in order.
                self._device = {}
                self._host = {}
                self._stream = None
                self._exec = None
                self._engine = None
                self._runtime = None
        finally:
            # After the pop: pycuda's detach of a context that is not current pushes it, releases the
            # primary-context reference and leaves it current (harmless: it is the device's primary context).
            self._context.detach()

    def close(self) -> None:
        self._release()
