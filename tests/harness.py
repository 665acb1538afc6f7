"""Test harness shared by every test module: integration requirements and a real mosquitto broker.

Test modules import from here (``from harness import Broker, free_port, missing_integration``), never from
``conftest`` (several conftest.py files exist; the name is ambiguous once the whole suite is collected).
A missing broker or camera simulator skips on a laptop, but fails the run when
LINEWATCH_REQUIRE_INTEGRATION=1 (which .ci/run sets).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from linewatch.bundle.manifest import MODEL_NAME
from linewatch.bundle.registry import read_manifest, sha256_file, write_manifest
from linewatch.service.mosquitto import BrokerError, PrivateMosquitto, free_port
from linewatch.service.mosquitto import mosquitto_binary as product_mosquitto_binary

__all__ = ["SHARED_DATA", "Broker", "free_port", "missing_integration", "mosquitto_binary", "relist_hashes"]

REQUIRE_INTEGRATION = os.environ.get("LINEWATCH_REQUIRE_INTEGRATION") == "1"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def missing_integration(what: str) -> None:
    """Skip (laptop) or fail (CI) because an integration component is not there."""
    if REQUIRE_INTEGRATION:
        pytest.fail(f"{what} (LINEWATCH_REQUIRE_INTEGRATION=1 makes this a failure)", pytrace=False)
    pytest.skip(what)


def mosquitto_binary() -> str | None:
    try:
        return product_mosquitto_binary()
    except BrokerError:
        return None


class Broker(PrivateMosquitto):
    """A running mosquitto on 127.0.0.1:port (the product's private broker) with persistence on, so that
    ``stop``/``start`` restart it on the same port with persistent sessions and their queued messages kept.
    ``extra_config`` and ``preamble`` (e.g. ``per_listener_settings true``, so the plain listener stays
    anonymous while a listener in extra_config requires a password) may be set before a (re)start."""

    def __init__(self, port: int, workdir: Path, extra_config: str = "", preamble: str = "") -> None:
        super().__init__(workdir, port=port, persistence=True, extra_config=extra_config, preamble=preamble)


def relist_hashes(bundle_dir: Path) -> None:
    """Re-list the sha256 of every file in a bundle after a test changed one on purpose, so the registry's
    hash check passes and the check under test (shapes, input spec, graph) is what answers."""
    manifest = read_manifest(bundle_dir)
    files = {name: sha256_file(bundle_dir / name) for name in manifest.files}
    write_manifest(bundle_dir, manifest.model_copy(update={"files": files, "backbone_id": files[MODEL_NAME]}))
