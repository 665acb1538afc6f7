"""``trainer build-engine`` where TensorRT cannot run: one clear line, exit status 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

from inference_support import BundleFactory, tensorrt_unavailable_reason


def test_build_engine_without_tensorrt_says_so_plainly(make_bundle: BundleFactory) -> None:
    reason = tensorrt_unavailable_reason("TensorRT and a GPU are usable here (tests/gpu builds engines)")
    bundle, _ = make_bundle()
    manifest_before = (bundle.path / "bundle.json").read_text()
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "build-engine", "--bundle", str(bundle.path),
         "--precision", "fp16"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"trainer build-engine: BackendUnavailableError: {reason}"
    assert "Traceback" not in result.stderr + result.stdout
    # nothing was written into the bundle
    assert (bundle.path / "bundle.json").read_text() == manifest_before
    assert not (bundle.path / "engines").exists()
    assert json.loads(manifest_before)["engines"] == []


def test_build_engine_on_a_missing_bundle_names_it(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "build-engine", "--bundle", "/nonexistent/prod"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 2
    assert "BundleNotFoundError: /nonexistent/prod: no such bundle directory" in result.stderr
    assert "Traceback" not in result.stderr
