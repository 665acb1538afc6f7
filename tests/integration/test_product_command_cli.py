"""``linewatch product set`` without a daemon to answer: a clear message and exit 3, never a hang; and the
command handler's answers for what the switcher refuses or takes too long for."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_support import daemon_config
from harness import Broker, free_port
from products_support import RecordingFactory, backbone, write_product

from linewatch.errors import CommandError
from linewatch.pipeline.product import ProductHolder
from linewatch.products.commands import ProductCommandHandler
from linewatch.products.switcher import ProductSwitcher
from linewatch.publish.payloads import FeedbackPayload, ProductCommand
from linewatch.service.cli import main


@pytest.mark.mosquitto
def test_no_daemon_listening_is_a_clear_timeout(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = daemon_config(tmp_path / "lw.toml", camera={"kind": "synthetic"}, products_dir=tmp_path,
                           active=None, mqtt_port=broker.port, station="nobody")
    assert main(["product", "set", "alpha", "--config", str(config), "--timeout", "1"]) == 3
    err = capsys.readouterr().err
    assert "no answer on linewatch/nobody/product/response within 1 s" in err
    assert "is linewatch running for station 'nobody'" in err


def test_an_unreachable_broker_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = daemon_config(tmp_path / "lw.toml", camera={"kind": "synthetic"}, products_dir=tmp_path,
                           active=None, mqtt_port=free_port())
    assert main(["product", "prepare", "alpha", "--config", str(config), "--timeout", "1"]) == 3
    assert "cannot reach the MQTT broker at mqtt://127.0.0.1:" in capsys.readouterr().err


def test_the_handler_turns_every_refusal_into_a_command_error(tmp_path: Path) -> None:
    write_product(tmp_path, "alpha", backbone(1))
    holder = ProductHolder(RecordingFactory.new())  # nothing applies switches: set cannot finish
    switcher = ProductSwitcher(tmp_path, holder, RecordingFactory.new(), activate_timeout_s=30.0)
    handler = ProductCommandHandler(switcher, None, timeout_s=0.5)
    try:
        handler(ProductCommand(action="prepare", product_id="alpha"))  # ok: returns
        with pytest.raises(CommandError, match="no such bundle directory"):
            handler(ProductCommand(action="set", product_id="nope"))
        with pytest.raises(CommandError, match=r"not finished within 0.5 s; it goes on in the background"):
            handler(ProductCommand(action="set", product_id="alpha"))
        with pytest.raises(CommandError, match="no journal"):
            handler(FeedbackPayload(seq=1, label="good"))
        assert (handler.handled, handler.refused) == (4, 3)
    finally:
        holder.close()
        switcher.close()
