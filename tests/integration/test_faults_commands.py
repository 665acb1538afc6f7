"""Hostile commands against a running ``linewatch run`` (a subprocess, real mosquitto): oversized, non-JSON,
deeply nested, wrongly typed, unknown keys, path-traversing or absolute product ids, a product directory that
is a symlink to a valid bundle outside ``products.dir``, bad feedback labels.

Promise: every command gets exactly one answer on ``product/response`` (matched by MQTT 5 CorrelationData),
each bad one refused with a reason; the line inspects on (consecutive seqs, the running product unchanged);
no traceback; and the daemon writes nothing outside its state directory — its working directory, HOME,
TMPDIR and the products directory are left as they were.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_support import daemon_config, journal_records
from fault_support import camera_config, fit_stripes_product
from harness import Broker
from mqtt_support import Subscriber, first_seen_seqs
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

BASE = "linewatch/cmd"
NESTED = ("[" * 1500 + "]" * 1500).encode()  # 3000 bytes: under the size limit, deeper than any parser likes


def hostile_commands(outside: Path) -> list[tuple[str, bytes, bool]]:
    """(topic suffix, payload, expected ok)."""
    return [
        ("product/set", json.dumps({"product_id": "../outside/evil"}).encode(), False),
        ("product/set", json.dumps({"product_id": str(outside)}).encode(), False),
        ("product/set", json.dumps({"product_id": ".."}).encode(), False),
        ("product/set", json.dumps({"product_id": "a.." + "b"}).encode(), False),
        ("product/set", json.dumps({"product_id": "x" * 65}).encode(), False),
        ("product/set", json.dumps({"product_id": "evil-link"}).encode(), False),  # symlink to a real bundle
        ("product/set", json.dumps({"product_id": "no-such-product"}).encode(), False),
        ("product/prepare", b'{"product_id": "' + b"p" * 1_000_000 + b'"}', False),  # 1 MB
        ("product/set", b"\xff\xfe not json at all", False),
        ("product/set", NESTED, False),
        ("product/set", json.dumps({"product_id": 5}).encode(), False),  # strict types
        ("product/set", json.dumps({"product_id": "stripes-part", "shell": "rm -rf /"}).encode(), False),
        ("product/set", json.dumps({"product_id": "stripes-part", "action": "prepare"}).encode(), False),
        ("feedback", json.dumps({"seq": 3, "label": "../../etc/passwd"}).encode(), False),
        ("feedback", json.dumps({"seq": -1, "label": "good"}).encode(), False),
        ("feedback", json.dumps({"seq": 3, "label": "good", "note": "../../outside/x\u0000"}).encode(), True),
        ("product/set", json.dumps({"product_id": "stripes-part"}).encode(), True),  # the running one: fine
    ]


def tree(root: Path, skip: set[Path]) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (not under ``skip``) with its size and mtime."""
    out = {}
    for path in root.rglob("*"):
        if any(path == s or s in path.parents for s in skip):
            continue
        if path.is_file() or path.is_symlink():
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def test_hostile_commands_are_refused_and_nothing_is_written_outside_state(
    broker: Broker, tmp_path: Path
) -> None:
    products = tmp_path / "products"
    fit_stripes_product(products)
    outside = tmp_path / "outside"
    shutil.copytree(products / "stripes-part", outside / "evil-bundle")  # a valid bundle, elsewhere
    (products / "evil-link").symlink_to(outside / "evil-bundle", target_is_directory=True)
    cwd, home, tmp = tmp_path / "cwd", tmp_path / "home", tmp_path / "tmp"
    for d in (cwd, home, tmp):
        d.mkdir()
    state = tmp_path / "state"
    config = daemon_config(
        tmp_path / "linewatch.toml", camera=camera_config(rate_hz=20.0).model_dump(mode="json"),
        products_dir=products, active="stripes-part", mqtt_port=broker.port, station="cmd",
        journal={"images_every_nth_pass": 1},  # feedback then has an image to copy into the review folder
    )  # fmt: skip
    log_path = tmp_path / "daemon.log"
    mine = {state, log_path, broker.workdir}  # the daemon's state, and what the test harness writes
    before = tree(tmp_path, mine)

    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEWATCH_") and k != "NOTIFY_SOCKET"}
    env.update(HOME=str(home), TMPDIR=str(tmp), PYTHONDONTWRITEBYTECODE="1")
    sub = Subscriber(broker.port, [f"{BASE}/#"])
    with log_path.open("wb") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "linewatch", "run", "--config", str(config)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)  # fmt: skip
        try:
            sub.wait_for(lambda: len(sub.on("result")) >= 10, 60, "10 results")
            commands = hostile_commands(outside)
            for i, (suffix, payload, _) in enumerate(commands):
                props = Properties(PacketTypes.PUBLISH)
                props.CorrelationData = f"cmd-{i}".encode()
                info = sub.client.publish(f"{BASE}/{suffix}", payload, qos=1, properties=props)
                info.wait_for_publish(5)
            sub.wait_for(lambda: len(responses(sub)) >= len(commands), 30, "an answer to every command")
            time.sleep(1.0)  # the line goes on after the commands
            seen_before_stop = len(sub.on("result"))
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(30) == 0, log_path.read_text()
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
            sub.close()
    output = log_path.read_text()
    assert "Traceback" not in output, output

    answers = responses(sub)
    assert set(answers) == {f"cmd-{i}" for i in range(len(commands))}  # every one answered
    assert sum(len(v) for v in answers.values()) == len(commands)
    for i, (suffix, payload, ok) in enumerate(commands):
        answer = answers[f"cmd-{i}"][0]
        assert answer["ok"] is ok, (suffix, payload[:80], answer)
        if not ok:
            assert answer["error"], answer
    assert "exceeds the limit" in answers["cmd-7"][0]["error"]
    assert "outside" in answers["cmd-5"][0]["error"]  # the symlinked bundle is not loaded

    # The line inspected on with its product: every seq, in order, all with stripes-part.
    records = journal_records(state)
    assert [r.result.seq for r in records] == list(range(len(records)))
    assert len(records) >= seen_before_stop > 10
    assert {r.result.product for r in records} == {"stripes-part"}
    assert first_seen_seqs(sub.json("result"))[: len(records)] == list(range(len(records)))
    # Nothing written outside the state directory (working dir, HOME, TMPDIR, products, the config).
    assert tree(tmp_path, mine) == before
    assert not (outside / "x").exists()
    review = list((state / "review").rglob("*.png")) if (state / "review").exists() else []
    print(f"figures: {len(commands)} hostile/edge commands, {len(commands)} answers, "
          f"{sum(not ok for *_, ok in commands)} refused; {len(records)} results; 0 files outside state "
          f"(review images {len(review)})")  # fmt: skip


def responses(sub: Subscriber) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for message in sub.on("response"):
        correlation = getattr(message.properties, "CorrelationData", None)
        key = correlation.decode() if correlation else "none"
        out.setdefault(key, []).append(json.loads(message.payload))
    return out
