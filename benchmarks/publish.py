"""Cost of the publishing side per result: journal append alone, and MqttPublisher.publish_result (journal +
paho) against a private mosquitto, with the time until the broker acknowledged everything.

    .venv/bin/python benchmarks/publish.py [--results N] [--batch-ms MS]

Prints one table. The pipeline's publishing stage calls publish_result once per frame; at the daemon's
target of >= 25 frames/s a frame lasts 40 ms, so the "% of a 40 ms frame" column is the share of the frame
budget the journal and MQTT hand-off take on the publishing thread (issue 5: journal writes must not lower
whole-pipeline throughput by more than 5 %).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from linewatch.frames import DefectLocation, Verdict, VerdictKind
from linewatch.publish.journal import Journal, JournalConfig
from linewatch.publish.mqtt import MqttConfig, MqttPublisher
from linewatch.publish.payloads import ResultPayload
from linewatch.service.mosquitto import PrivateMosquitto


def verdict(seq: int) -> Verdict:
    kind = VerdictKind.FAIL if seq % 20 == 0 else VerdictKind.PASS
    now = time.monotonic_ns()
    return Verdict(
        seq=seq,
        frame_id=seq,
        verdict=kind,
        product_id="widget",
        bundle_id="widget-b1",
        score=0.5,
        threshold=1.0,
        location=DefectLocation(x=3, y=4),
        timestamp_ns=now,
        acquired_ns=now,
        latencies_ms={"queue": 0.1, "inference": 30.0},
    )


def row(name: str, per_call_s: list[float], total_s: float, n: int) -> str:
    us = np.array(per_call_s) * 1e6
    p50, p99 = np.percentile(us, 50), np.percentile(us, 99)
    return f"{name:<44} {n / total_s:>10.0f} {p50:>9.1f} {p99:>9.1f} {100 * p50 / 40_000:>10.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=5000)
    parser.add_argument("--batch-ms", type=int, default=50)
    args = parser.parse_args()
    n = args.results
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"{'path':<44} {'results/s':>10} {'p50 µs':>9} {'p99 µs':>9} {'% of 40 ms':>10}")

        journal = Journal(JournalConfig(state_dir=root / "j1", batch_ms=args.batch_ms))
        payloads = [ResultPayload.from_verdict(verdict(i)) for i in range(n)]
        calls = []
        t0 = time.perf_counter()
        for p in payloads:
            t = time.perf_counter()
            journal.append(p)
            calls.append(time.perf_counter() - t)
        journal.flush()
        total = time.perf_counter() - t0
        journal.close()
        print(row("Journal.append (+ commit of all)", calls, total, n))

        with PrivateMosquitto(root / "broker") as broker:
            port = broker.port
            journal = Journal(JournalConfig(state_dir=root / "j2", batch_ms=args.batch_ms))
            publisher = MqttPublisher(MqttConfig(host="127.0.0.1", port=port), "bench", journal)
            publisher.start()
            while not publisher.connected:
                time.sleep(0.01)
            verdicts = [verdict(i) for i in range(n)]
            calls = []
            t0 = time.perf_counter()
            for v in verdicts:
                t = time.perf_counter()
                publisher.publish_result(v)
                calls.append(time.perf_counter() - t)
            acked = publisher.flush(60.0)
            total = time.perf_counter() - t0
            print(row("MqttPublisher.publish_result (+ all PUBACKs)", calls, total, n))
            stats = publisher.stats()
            publisher.close()
            journal.close()
            reopened = Journal(JournalConfig(state_dir=root / "j2"))
            left = reopened.unpublished_count()
            reopened.close()
            print(
                f"\nall acknowledged: {acked}; published {stats.results_published}/{n}; "
                f"spilled to disk {stats.spilled}; unpublished rows left {left}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
