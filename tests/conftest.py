"""Shared fixtures: a real mosquitto broker on a free loopback port, viky.cti, the shared data sets.

The helpers behind them live in ``harness.py`` (import from there in test modules).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import SHARED_DATA, Broker, free_port, missing_integration, mosquitto_binary


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh mosquitto for one test (marker ``mosquitto``)."""
    if mosquitto_binary() is None:
        missing_integration("mosquitto is not installed (apt-get install -y mosquitto)")
    b = Broker(port=free_port(), workdir=tmp_path / "broker")
    b.workdir.mkdir()
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def viky_cti() -> Path:
    """Path of the viky.cti GenTL simulator shipped inside the genicam wheel (marker ``genicam``)."""
    try:
        import genicam
    except ImportError:
        missing_integration("the genicam wheel (viky.cti) is not installed")
    path = Path(genicam.__file__).parent / "viky.cti"
    if not path.is_file():
        missing_integration(f"viky.cti not found at {path}")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (KolektorSDD in MVTec layout, DAGM samples)."""
    if not SHARED_DATA.is_dir():
        missing_integration(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
