"""ONNX Runtime backend: the bundle's model.onnx on the CPU (or another ORT execution provider).

The only module that imports ``onnxruntime``; every ORT exception is translated here, once, into the
linewatch tree (BundleInputMismatchError for a model that disagrees with its manifest, InferenceError for
anything that fails while loading or running).

ORT's Python binding releases the GIL for the whole ``run_with_iobinding`` call (pybind11
``gil_scoped_release`` around the session run), so the acquisition and publishing threads keep running while
a frame is inferred; ``benchmarks/backend.py`` measures it (Python work done by another thread during
inference).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# From its import on, ONNX Runtime (1.32 on Linux) keeps a telemetry store and a device id in
# $HOME/.cache/Microsoft/DeveloperTools/.onnxruntime. The daemon writes only to its configured directories,
# so telemetry is off unless the environment asks for it (ORT_DISABLE_TELEMETRY=0). Set before the import.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, field_validator

from linewatch.bundle.manifest import BundleManifest
from linewatch.bundle.registry import LoadedBundle
from linewatch.errors import BundleInputMismatchError, InferenceError
from linewatch.frames import InferenceOutput
from linewatch.inference.backend import (
    HEATMAP_OUTPUT,
    IMAGE_INPUT,
    MEAN_INPUT,
    SCALE_INPUT,
    SCORE_OUTPUT,
    ModelShapes,
)

log = logging.getLogger(__name__)

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class OnnxruntimeConfig(BaseModel):
    """Settings of the ONNX Runtime backend (``[inference.onnxruntime]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["onnxruntime"] = Field(default="onnxruntime", description="Backend kind (fixed)")
    intra_op_threads: int = Field(
        default=2, ge=0,
        description="Threads inside one operator (convolutions), the calling thread included; 2 suits the "
        "2-core line PC (set it to the cores this instance may use). 0 = ONNX Runtime's choice: one per "
        "physical core, pinned to cores, which the systemd unit refuses (one log line per thread)",
    )
    allow_spinning: bool = Field(
        default=False,
        description="Intra-op threads spin (busy-wait) for the next operator instead of sleeping "
        "(session.intra_op.allow_spinning). Off by default: on 2 shared cores the spinning threads take "
        "the CPU the other pipeline threads and ONNX Runtime's own workers need (linewatch bench: about "
        "1.5x the backend and 1.6x the pipeline frames/s with it off)",
    )
    inter_op_threads: int = Field(
        default=1, ge=0,
        description="Threads running independent operators in parallel; the graph is a chain, so 1 is enough",
    )
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        default="all", description="ONNX Runtime graph optimisation level (fusions, constant folding, layout)"
    )
    execution_providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        min_length=1,
        description="ONNX Runtime execution providers in order of preference, e.g. CPUExecutionProvider",
    )
    warmup_runs: int = Field(
        default=2, ge=1, description="Inference runs on a blank image at load, before the first camera frame"
    )

    @field_validator("execution_providers")
    @classmethod
    def _known_providers(cls, names: list[str]) -> list[str]:
        """A misspelt provider would only be an ONNX Runtime warning at load, and the model runs elsewhere."""
        unknown = [n for n in names if n not in ort.get_all_providers()]
        if unknown:
            raise ValueError(f"unknown execution provider(s) {', '.join(unknown)}; ONNX Runtime knows "
                             f"{', '.join(ort.get_all_providers())}")
        return names


def _available(configured: list[str]) -> list[str]:
    """The configured providers this machine has, in order; the others are named in the log (ONNX Runtime
    itself would only warn and run on what it has), and none at all is an error."""
    here = ort.get_available_providers()
    usable = [p for p in configured if p in here]
    missing = [p for p in configured if p not in here]
    if not usable:
        raise InferenceError(f"none of the configured execution providers ({', '.join(configured)}) is "
                             f"available on this machine; it has {', '.join(here)}")
    if missing:
        log.warning("execution provider(s) %s not available on this machine: running on %s",
                    ", ".join(missing), ", ".join(usable))
    return usable


@dataclass(frozen=True, slots=True)
class WarmupReport:
    """What the warm-up cost: the first run pays allocation; ``steady_ms`` is the last warm-up run."""

    runs: int
    first_ms: float
    steady_ms: float


def _dims(shape: list[Any]) -> tuple[int | str | None, ...]:
    return tuple(shape)


def _describe(args: list[Any]) -> str:
    return ", ".join(f"{a.name} {list(a.shape)}" for a in args) or "none"


def validate_model_io(session: ort.InferenceSession, manifest: BundleManifest, model_path: Path) -> None:
    """The model's inputs/outputs match what the manifest promises, or BundleInputMismatchError saying
    which tensor differs and how."""
    spec, shapes = manifest.input, ModelShapes.of(manifest)
    inputs = {a.name: a for a in session.get_inputs()}
    outputs = {a.name: a for a in session.get_outputs()}
    problems: list[str] = []

    def check(kind: str, table: dict[str, Any], name: str, fixed: tuple[int, ...], batch: bool) -> None:
        arg = table.get(name)
        if arg is None:
            problems.append(f"no {kind} named {name!r}")
            return
        if arg.type != "tensor(float)":
            problems.append(f"{kind} {name!r} is {arg.type}, expected tensor(float)")
        dims = _dims(arg.shape)
        if batch:
            if len(dims) != len(fixed) + 1 or tuple(dims[1:]) != fixed:
                problems.append(f"{kind} {name!r} has shape {list(dims)}, the manifest says [N, "
                                + ", ".join(str(d) for d in fixed) + "]")
        elif dims != fixed:
            problems.append(f"{kind} {name!r} has shape {list(dims)}, the manifest says {list(fixed)}")

    check("input", inputs, IMAGE_INPUT, (spec.channels, spec.height, spec.width), batch=True)
    check("input", inputs, MEAN_INPUT, shapes.prototype_mean, batch=False)
    check("input", inputs, SCALE_INPUT, shapes.prototype_scale, batch=False)
    check("output", outputs, HEATMAP_OUTPUT, shapes.heatmap, batch=True)
    check("output", outputs, SCORE_OUTPUT, (), batch=True)
    extra = sorted(set(inputs) - {IMAGE_INPUT, MEAN_INPUT, SCALE_INPUT})
    if extra:
        problems.append(f"unexpected inputs {extra}")
    if problems:
        raise BundleInputMismatchError(
            f"{model_path}: model does not match bundle.json: " + "; ".join(problems)
            + f" (model inputs: {_describe(session.get_inputs())};"
            + f" outputs: {_describe(session.get_outputs())})"
        )


class OnnxruntimeBackend:
    """InferenceBackend on ONNX Runtime with IO binding.

    The prototype tensors are OrtValues bound once as inputs; ``set_prototype`` rebinds them, so switching
    between products with the same ``backbone_id`` never reloads the session. Output buffers are allocated
    once per batch size and bound by address, so a frame allocates nothing but its result objects.
    """

    def __init__(self, bundle: LoadedBundle, config: OnnxruntimeConfig | None = None) -> None:
        self._config = config or OnnxruntimeConfig()
        self._manifest = bundle.manifest
        self._model_path = bundle.model_path
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._config.intra_op_threads
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if self._config.allow_spinning else "0"
        )
        options.inter_op_num_threads = self._config.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = _OPT_LEVELS[self._config.graph_optimization]
        options.log_severity_level = 3  # errors only: ORT's info lines would repeat on every load
        providers = _available(self._config.execution_providers)
        try:
            self._session = ort.InferenceSession(
                str(self._model_path), sess_options=options, providers=providers
            )
        except Exception as exc:  # ORT raises its own pybind11 classes (Fail, InvalidGraph, NoSuchFile ...)
            raise InferenceError(f"{self._model_path}: ONNX Runtime cannot load the model: {exc}") from exc
        validate_model_io(self._session, self._manifest, self._model_path)
        self._shapes = ModelShapes.of(self._manifest)
        self._binding = self._session.io_binding()
        # batch size → (heatmap, score) arrays bound as outputs; kept alive here because ORT holds pointers.
        self._outputs: dict[int, tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] = {}
        self._bound_batch = 0
        self._mean: ort.OrtValue | None = None
        self._scale: ort.OrtValue | None = None
        self.set_prototype(bundle.prototype_mean, bundle.prototype_scale)
        self.warmup_report = self._warmup()
        log.info(
            "onnxruntime backend loaded %s (providers %s, %d intra-op thread(s), spinning %s, warm-up first "
            "%.1f ms, steady %.1f ms)",
            self._model_path, self._session.get_providers(), self._config.intra_op_threads,
            "on" if self._config.allow_spinning else "off", self.warmup_report.first_ms,
            self.warmup_report.steady_ms,
        )

    @property
    def name(self) -> str:
        return f"onnxruntime ({','.join(self._session.get_providers())})"

    @property
    def backbone_id(self) -> str:
        return self._manifest.backbone_id

    @property
    def manifest(self) -> BundleManifest:
        return self._manifest

    def set_prototype(self, mean: npt.NDArray[np.float32], scale: npt.NDArray[np.float32]) -> None:
        self._shapes.check_prototype(mean, scale)
        # Own contiguous copies: the OrtValues point into these arrays for as long as they are bound.
        mean_c = np.array(mean, dtype=np.float32, order="C", copy=True)
        scale_c = np.array(scale, dtype=np.float32, order="C", copy=True)
        try:
            mean_v = ort.OrtValue.ortvalue_from_numpy(mean_c)
            scale_v = ort.OrtValue.ortvalue_from_numpy(scale_c)
            self._binding.bind_ortvalue_input(MEAN_INPUT, mean_v)
            self._binding.bind_ortvalue_input(SCALE_INPUT, scale_v)
        except Exception as exc:
            raise InferenceError(f"cannot bind the prototype tensors: {exc}") from exc
        self._mean, self._scale = mean_v, scale_v
        self._mean_array, self._scale_array = mean_c, scale_c

    def warmup(self) -> None:
        self.warmup_report = self._warmup()

    def _warmup(self) -> WarmupReport:
        # The first run allocates ORT's memory arena and prepacks the convolution weights; paying it here
        # keeps it off the first camera frame's latency.
        blank = np.zeros((1, *self._shapes.image), dtype=np.float32)
        times_ms: list[float] = []
        for _ in range(self._config.warmup_runs):
            start = time.perf_counter()
            self.infer(blank, want_heatmap=False)
            times_ms.append((time.perf_counter() - start) * 1e3)
        return WarmupReport(runs=len(times_ms), first_ms=times_ms[0], steady_ms=times_ms[-1])

    def _bind_outputs(self, batch: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        buffers = self._outputs.get(batch)
        if buffers is None:
            buffers = (
                np.empty((batch, *self._shapes.heatmap), dtype=np.float32),
                np.empty((batch,), dtype=np.float32),
            )
            self._outputs[batch] = buffers
        if self._bound_batch != batch:
            heatmap, score = buffers
            self._binding.bind_output(HEATMAP_OUTPUT, "cpu", 0, np.float32, list(heatmap.shape),
                                      heatmap.ctypes.data)
            self._binding.bind_output(SCORE_OUTPUT, "cpu", 0, np.float32, list(score.shape),
                                      score.ctypes.data)
            self._bound_batch = batch
        return buffers

    def infer(self, images: npt.NDArray[np.float32], want_heatmap: bool) -> list[InferenceOutput]:
        self._shapes.check_images(images)
        if images.dtype != np.float32 or not images.flags.c_contiguous:
            images = np.ascontiguousarray(images, dtype=np.float32)
        batch = images.shape[0]
        try:
            heatmap, score = self._bind_outputs(batch)
            self._binding.bind_cpu_input(IMAGE_INPUT, images)
            self._session.run_with_iobinding(self._binding)
        except Exception as exc:
            raise InferenceError(f"ONNX Runtime failed on a batch of {batch}: {exc}") from exc
        width = self._shapes.heatmap[1]
        flat = np.argmax(heatmap.reshape(batch, -1), axis=1)
        return [
            InferenceOutput(
                score=float(score[i]),
                argmax_rc=(int(flat[i]) // width, int(flat[i]) % width),
                heatmap=heatmap[i].copy() if want_heatmap else None,
            )
            for i in range(batch)
        ]

    def close(self) -> None:
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        self._outputs.clear()
        self._bound_batch = 0
