"""Plan keys and the compatibility decision (pure logic; the GPU tests cover loading real plans)."""

from __future__ import annotations

from linewatch.bundle.manifest import EnginePlan
from linewatch.inference.engine_keys import DeviceKey, cache_file_name, plan_file, plan_key, select_plan

H200 = DeviceKey("NVIDIA H200", "9.0", "10.13.3.9")


def plan(file: str, gpu: str = "NVIDIA H200", cc: str = "9.0", trt: str = "10.13.3.9",
         precision: str = "fp16", max_batch: int = 8) -> EnginePlan:
    return EnginePlan(file=file, gpu_name=gpu, compute_capability=cc, tensorrt_version=trt,
                      precision=precision, max_batch=max_batch)  # type: ignore[arg-type]


def test_plan_key_and_file_names_are_path_safe_and_distinct() -> None:
    assert plan_key(H200, "fp16", 8) == "nvidia-h200_sm90_trt10.13.3.9_fp16_b8"
    assert plan_file(H200, "fp32", 1) == "engines/nvidia-h200_sm90_trt10.13.3.9_fp32_b1.plan"
    odd = DeviceKey("NVIDIA GeForce RTX 4090 / (rev a1)", "8.9", "11.0.0")
    key = plan_key(odd, "fp16", 4)
    assert "/" not in key and " " not in key
    assert key.startswith("nvidia-geforce-rtx-4090-rev-a1_sm89_trt11.0.0")
    assert cache_file_name("ab" * 32, H200, "fp16", 8).startswith("abababababababab_nvidia-h200")
    assert plan_key(H200, "fp16", 8) != plan_key(DeviceKey("NVIDIA H100", "9.0", "10.13.3.9"), "fp16", 8)


def test_matching_plan_is_selected_and_others_are_explained() -> None:
    engines = [
        plan("engines/a100.plan", gpu="NVIDIA A100-SXM4-80GB", cc="8.0"),
        plan("engines/old.plan", trt="10.0.1.6"),
        plan("engines/h200-fp32.plan", precision="fp32"),
        plan("engines/h200-b1.plan", max_batch=1),
        plan("engines/h200-b8.plan", max_batch=8),
    ]
    chosen = select_plan(engines, "NVIDIA H200", "9.0", "10.13.3.9", precision="fp16")
    assert chosen.plan is not None and chosen.plan.file == "engines/h200-b8.plan"  # largest batch wins
    assert chosen.summary() == "using bundled plan engines/h200-b8.plan"
    reasons = "\n".join(chosen.reasons)
    assert (
        "engines/a100.plan was built for compute capability 8.0 (this GPU is 9.0), "
        "GPU 'NVIDIA A100-SXM4-80GB'" in reasons
    )
    assert "engines/old.plan was built for TensorRT 10.0.1.6 (this machine has 10.13.3.9)" in reasons
    assert "engines/h200-fp32.plan is fp32, fp16 was asked for" in reasons
    # any precision when none is asked for; a batch requirement excludes small plans
    assert select_plan(engines, "NVIDIA H200", "9.0", "10.13.3.9", min_batch=4).plan is not None
    only_small = [plan("engines/h200-b1.plan", max_batch=1)]
    picked = select_plan(only_small, "NVIDIA H200", "9.0", "10.13.3.9", min_batch=4)
    assert picked.plan is None and picked.reasons == ("engines/h200-b1.plan takes batches up to 1, 4 needed",)


def test_no_compatible_plan_gives_none_with_every_reason() -> None:
    engines = [plan("engines/x.plan", trt="11.0.0"), plan("engines/y.plan", gpu="NVIDIA H100", cc="9.0")]
    result = select_plan(engines, "NVIDIA H200", "9.0", "10.13.3.9")
    assert result.plan is None and len(result.reasons) == 2
    assert result.summary().startswith("no usable bundled plan: engines/x.plan was built for TensorRT 11.0.0")
    assert "GPU 'NVIDIA H100' (this GPU is 'NVIDIA H200')" in result.summary()
    assert select_plan([], "NVIDIA H200", "9.0", "10.13.3.9").summary() == "the bundle has no TensorRT plans"
