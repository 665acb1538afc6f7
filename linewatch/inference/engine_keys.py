"""TensorRT plan keys and compatibility, as pure logic (no tensorrt import, testable anywhere).

A serialised TensorRT plan runs only on the GPU model it was built for (same compute capability, and in
practice the same SKU: kernels are chosen by timing on that device) and only with the TensorRT version that
built it. A plan is therefore keyed by (GPU name, compute capability, TensorRT version, precision, max
batch); a bundle may carry several, and the daemon picks the one matching its machine or builds one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from linewatch.bundle.manifest import EnginePlan

ENGINES_DIR = "engines"
PLAN_SUFFIX = ".plan"

Precision = Literal["fp32", "fp16"]


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """What a plan is bound to: the GPU and the TensorRT that build and run it."""

    gpu_name: str
    compute_capability: str  # "major.minor", e.g. "9.0"
    tensorrt_version: str  # full version string, e.g. "10.13.3.9"


def format_compute_capability(major: int, minor: int) -> str:
    return f"{major}.{minor}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "gpu"


def plan_key(device: DeviceKey, precision: Precision, max_batch: int) -> str:
    """File-name-safe key, e.g. ``nvidia-h200_sm90_trt10.13.3.9_fp16_b8``."""
    sm = device.compute_capability.replace(".", "")
    version = re.sub(r"[^0-9A-Za-z.]+", "-", device.tensorrt_version)
    return f"{_slug(device.gpu_name)}_sm{sm}_trt{version}_{precision}_b{max_batch}"


def plan_file(device: DeviceKey, precision: Precision, max_batch: int) -> str:
    """Path of the plan relative to the bundle: ``engines/<key>.plan``."""
    return f"{ENGINES_DIR}/{plan_key(device, precision, max_batch)}{PLAN_SUFFIX}"


def cache_file_name(backbone_id: str, device: DeviceKey, precision: Precision, max_batch: int) -> str:
    """Name of a plan built at daemon start in the engine cache directory: the backbone's sha256 prefix
    keeps plans of different models apart (bundles sharing a backbone share the plan)."""
    return f"{backbone_id[:16]}_{plan_key(device, precision, max_batch)}{PLAN_SUFFIX}"


@dataclass(frozen=True, slots=True)
class PlanSelection:
    """The chosen plan (or None: build one) and, for every plan not chosen, why."""

    plan: EnginePlan | None
    reasons: tuple[str, ...]

    def summary(self) -> str:
        if self.plan is not None:
            return f"using bundled plan {self.plan.file}"
        if not self.reasons:
            return "the bundle has no TensorRT plans"
        return "no usable bundled plan: " + "; ".join(self.reasons)


def incompatibility(plan: EnginePlan, device: DeviceKey) -> str | None:
    """Why ``plan`` cannot run on ``device`` (None when it can)."""
    differences = []
    if plan.tensorrt_version != device.tensorrt_version:
        differences.append(f"TensorRT {plan.tensorrt_version} (this machine has {device.tensorrt_version})")
    if plan.compute_capability != device.compute_capability:
        differences.append(
            f"compute capability {plan.compute_capability} (this GPU is {device.compute_capability})"
        )
    if plan.gpu_name != device.gpu_name:
        differences.append(f"GPU {plan.gpu_name!r} (this GPU is {device.gpu_name!r})")
    if not differences:
        return None
    return f"{plan.file} was built for " + ", ".join(differences)


def select_plan(
    engines: list[EnginePlan],
    gpu_name: str,
    compute_capability: str,
    tensorrt_version: str,
    precision: Precision | None = None,
    min_batch: int = 1,
) -> PlanSelection:
    """Pick the bundled plan for this device: exact GPU name, compute capability and TensorRT version,
    the requested precision (any when None) and a batch range reaching ``min_batch``. Among several
    matches the one with the largest max batch wins."""
    device = DeviceKey(gpu_name, compute_capability, tensorrt_version)
    reasons: list[str] = []
    candidates: list[EnginePlan] = []
    for plan in engines:
        why = incompatibility(plan, device)
        if why is None and precision is not None and plan.precision != precision:
            why = f"{plan.file} is {plan.precision}, {precision} was asked for"
        if why is None and plan.max_batch < min_batch:
            why = f"{plan.file} takes batches up to {plan.max_batch}, {min_batch} needed"
        if why is None:
            candidates.append(plan)
        else:
            reasons.append(why)
    if not candidates:
        return PlanSelection(None, tuple(reasons))
    best = max(candidates, key=lambda p: p.max_batch)
    return PlanSelection(best, tuple(reasons))
