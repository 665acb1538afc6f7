"""Fixtures of the backend tests; the helpers live in ``inference_support`` (imported by that name)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from inference_support import BundleFactory, make_bundle_in


@pytest.fixture
def make_bundle(tmp_path: Path) -> BundleFactory:
    torch.set_num_threads(1)
    return partial(make_bundle_in, tmp_path)
