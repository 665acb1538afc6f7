"""Soak: ``linewatch run`` for ``--minutes`` at this machine's sustainable rate, watched from outside.

    nice -n 10 .venv/bin/python benchmarks/soak.py [--minutes 10] [--size 256] [--rate-hz R]

What runs is the daemon as a line runs it: a synthetic camera (parts with defects), real ONNX Runtime, the
results journal (with reject images) and a private mosquitto on loopback with a QoS 1 subscriber counting
results. The camera rate is 70 % of what this machine sustains for render + preprocess + inference of one
frame, measured first (or ``--rate-hz``). Every ``--sample-s`` seconds the daemon's resident memory, open
file descriptors and threads are read from /proc/<pid>.

Prints one table of samples and a verdict against issue 6: RSS growth after warm-up < 20 MB, no fd or thread
growth, every acquired frame delivered. Exit status 0 when all hold, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from linewatch.acquisition import SyntheticCameraConfig, SyntheticSource  # noqa: E402
from linewatch.bundle.registry import load_product  # noqa: E402
from linewatch.inference.onnxruntime import OnnxruntimeBackend, OnnxruntimeConfig  # noqa: E402
from linewatch.inference.preprocessing import preprocess  # noqa: E402
from linewatch.publish.journal import Journal, JournalConfig  # noqa: E402
from linewatch.service.mosquitto import PrivateMosquitto  # noqa: E402

RSS_GROWTH_LIMIT_MB = 20.0  # issue 6
PRODUCT = "soak-part"


class ResultCounter:
    """A line integrator's subscriber: QoS 1 on result, counts distinct seqs and remembers the last one."""

    def __init__(self, port: int, station: str) -> None:
        self.seqs: set[int] = set()
        self.last_seq = -1
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="soak-subscriber",
                                  protocol=MQTTProtocolVersion.MQTTv5)  # fmt: skip
        topic = f"linewatch/{station}/result"
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        seq = int(json.loads(message.payload)["seq"])
        with self._lock:
            self.seqs.add(seq)
            self.last_seq = max(self.last_seq, seq)

    def count(self) -> int:
        with self._lock:
            return len(self.seqs)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass(frozen=True)
class Sample:
    elapsed_s: float
    rss_mb: float
    fds: int
    threads: int
    results: int


def sample(pid: int, started: float, results: int) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kb = int(fields["VmRSS"].split()[0])
    threads = int(fields["Threads"].strip())
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return Sample(time.monotonic() - started, rss_kb / 1024, fds, threads, results)


def camera(size: int, rate_hz: float | None) -> SyntheticCameraConfig:
    return SyntheticCameraConfig(family="fractal", width=size, height=size, rate_hz=rate_hz, defect_rate=0.1,
                                 seed=7)  # fmt: skip


def sustainable_rate_hz(products: Path, size: int, threads: int) -> tuple[float, float]:
    """(70 % of the frames/s one core sustains for render + preprocess + inference, ms per frame)."""
    bundle = load_product(products, PRODUCT)
    backend = OnnxruntimeBackend(bundle, OnnxruntimeConfig(intra_op_threads=threads))
    source = SyntheticSource(camera(size, None))
    source.open()
    manifest = bundle.manifest
    try:
        for _ in range(3):
            image = source.read(1.0).image
            backend.infer(preprocess(image, manifest.input, manifest.preprocessing)[None], want_heatmap=True)
        start = time.perf_counter()
        n = 30
        for _ in range(n):
            image = source.read(1.0).image
            backend.infer(preprocess(image, manifest.input, manifest.preprocessing)[None], want_heatmap=True)
        per_frame_s = (time.perf_counter() - start) / n
    finally:
        backend.close()
        source.close()
    return 0.7 / per_frame_s, per_frame_s * 1e3


def write_config(path: Path, *, products: Path, state: Path, port: int, size: int, rate_hz: float,
                 threads: int) -> None:  # fmt: skip
    path.write_text(
        f"""state_dir = "{state}"
[station]
id = "soak"
[camera]
kind = "synthetic"
family = "fractal"
width = {size}
height = {size}
rate_hz = {rate_hz:.3f}
defect_rate = 0.1
seed = 7
[products]
dir = "{products}"
active = "{PRODUCT}"
[inference]
backend = "onnxruntime"
[inference.onnxruntime]
intra_op_threads = {threads}
[mqtt]
host = "127.0.0.1"
port = {port}
[journal]
images_max_mb = 64.0
[logging]
summary_interval_s = 60.0
[service]
stats_interval_s = 10.0
"""
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the daemon runs (default 10)")
    parser.add_argument("--size", type=int, default=256, help="camera frame and model input side, px")
    parser.add_argument("--rate-hz", type=float, default=None, help="camera rate; default: 70%% of measured")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples (default 5)")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="growth is measured after this (60)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="linewatch-soak-"))
    products, state = work / "products", work / "state"
    broker_dir = work / "broker"
    broker_dir.mkdir()
    print(f"work directory {work}", flush=True)

    from linewatch.service.demo import build_demo_product  # imports the trainer (torch): this process only

    _, note = build_demo_product(products, camera(args.size, 10.0), PRODUCT)
    measured_hz, frame_ms = sustainable_rate_hz(products, args.size, args.threads)
    rate_hz = args.rate_hz or measured_hz
    print(f"bundle: {note}; one frame {frame_ms:.1f} ms (render+preprocess+infer) → camera at {rate_hz:.1f} "
          f"frames/s", flush=True)  # fmt: skip

    broker = PrivateMosquitto(broker_dir)  # its queue holds 100000 messages for a slow subscriber
    broker.start()
    port = broker.port
    counter = ResultCounter(port, "soak")
    config = work / "linewatch.toml"
    write_config(config, products=products, state=state, port=port, size=args.size, rate_hz=rate_hz,
                 threads=args.threads)  # fmt: skip
    log_path = work / "daemon.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEWATCH_") and k != "NOTIFY_SOCKET"}
    samples: list[Sample] = []
    exit_code: int | None = None
    with log_path.open("wb") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "linewatch", "run", "--config", str(config)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)  # fmt: skip
        try:
            while counter.count() == 0:  # started: model loaded, first result delivered
                if daemon.poll() is not None:
                    raise SystemExit(f"daemon exited with {daemon.returncode}:\n{log_path.read_text()}")
                time.sleep(0.2)
            started = time.monotonic()
            end = started + args.minutes * 60
            print(f"{'t s':>7} {'RSS MB':>8} {'fds':>5} {'threads':>7} {'results':>8} {'fps':>6}", flush=True)
            while True:
                s = sample(daemon.pid, started, counter.count())
                fps = 0.0
                if samples:
                    fps = (s.results - samples[-1].results) / (s.elapsed_s - samples[-1].elapsed_s)
                samples.append(s)
                print(f"{s.elapsed_s:7.0f} {s.rss_mb:8.1f} {s.fds:5d} {s.threads:7d} {s.results:8d} "
                      f"{fps:6.1f}", flush=True)  # fmt: skip
                if time.monotonic() >= end or daemon.poll() is not None:
                    break
                time.sleep(max(0.0, min(args.sample_s, end - time.monotonic())))
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
            exit_code = daemon.wait(60)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    time.sleep(1.0)  # the last acknowledgements reach the subscriber
    counter.close()
    broker.stop()

    journal = Journal(JournalConfig(state_dir=state))
    try:
        last_seq = journal.last_seq()
        unpublished = journal.unpublished_count()
    finally:
        journal.close()
    warm = next((s for s in samples if s.elapsed_s >= args.warmup_s), samples[0])
    last = samples[-1]
    growth = last.rss_mb - warm.rss_mb
    delivered = counter.count()
    acquired = -1 if last_seq is None else last_seq + 1
    every = delivered == acquired and unpublished == 0
    bounded = growth < RSS_GROWTH_LIMIT_MB
    checks = {
        f"RSS growth after {warm.elapsed_s:.0f} s warm-up < {RSS_GROWTH_LIMIT_MB:.0f} MB": bounded,
        "no fd growth (after warm-up)": last.fds <= warm.fds,
        "no thread growth (after warm-up)": last.threads <= warm.threads,
        "every acquired frame delivered (subscriber = journal, none unpublished)": every,
        "daemon exit 0 on SIGTERM": exit_code == 0,
    }
    print()
    print(f"{'':34} {'start':>10} {'after warm-up':>14} {'end':>10}")
    print(f"{'RSS MB':34} {samples[0].rss_mb:10.1f} {warm.rss_mb:14.1f} {last.rss_mb:10.1f}   "
          f"growth {growth:+.1f} MB")  # fmt: skip
    print(f"{'open fds':34} {samples[0].fds:10d} {warm.fds:14d} {last.fds:10d}")
    print(f"{'threads':34} {samples[0].threads:10d} {warm.threads:14d} {last.threads:10d}")
    minutes = last.elapsed_s / 60
    print(f"ran {minutes:.1f} min at {rate_hz:.1f} frames/s: {acquired} frames acquired, {delivered} "
          f"distinct results received, {unpublished} unpublished in the journal")  # fmt: skip
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
