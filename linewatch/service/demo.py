"""``linewatch demo``: the whole job on one machine, no camera or broker needed, in bounded time.

1. Makes a product: good parts from the synthetic camera's surface family, fitted with ``trainer fit`` (the
   shipped default backbone when installed, else a seeded untrained network, and the demo says which).
2. Starts a private mosquitto on a free loopback port.
3. Runs ``linewatch run`` — its own process, which never imports torch — with ``configs/demo.toml``: the
   synthetic camera injecting defects, the product above, the private broker.
4. Prints one line per second (parts/s, pass/fail counts, latency, results acknowledged by the broker),
   read from the daemon's journal (the same record the broker is fed from).
5. After ``--seconds`` it stops the daemon (SIGTERM: in-flight parts are finished), scores the run against
   the camera's ground truth (how many injected defects were caught, how many good parts were rejected),
   saves heatmaps of the fails to a folder it names, and removes everything else it made.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from linewatch.acquisition import SyntheticCameraConfig, SyntheticSource
from linewatch.bundle.registry import LoadedBundle, load_product
from linewatch.config import load_settings
from linewatch.errors import ConfigError, LinewatchError
from linewatch.inference.preprocessing import preprocess
from linewatch.inference.selection import InferenceConfig, create_backend
from linewatch.publish.journal import Journal, JournalConfig, JournalRecord
from linewatch.scoring.heatmap import heatmap_png
from linewatch.service.mosquitto import PrivateMosquitto, free_port

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "demo.toml"
GOOD_PARTS = 100  # all build the prototype and, cross-fitted, calibrate the threshold (the fit's default)
GOOD_SEED = 7  # the camera's parts use another seed: the demo inspects parts the fit never saw
MAX_HEATMAPS = 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the line runs (default 30)")
    parser.add_argument(
        "--out", type=Path, default=Path("demo-out"),
        help="folder for the heatmaps of the fails (default ./demo-out; its heatmaps/ is replaced)",
    )
    parser.add_argument(
        "--config", type=Path, default=DEMO_CONFIG, help="demo station config (synthetic camera)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (bundle, journal, logs)")


def say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------------------------------------- product


def build_demo_product(
    products_dir: Path, camera: SyntheticCameraConfig, product_id: str, n_good: int = GOOD_PARTS,
    backbone_name: str = "default",
) -> tuple[Path, str]:
    """Fit ``product_id`` on ``n_good`` good parts of ``camera``'s family with the shipped ``backbone_name``
    (``trainer.backbone``'s names); returns (bundle, backbone used).

    Imports the trainer (and so torch) in this process only; the daemon never does. (Imported by name:
    the trainer is typed separately from linewatch.)
    """
    backbones = importlib.import_module("trainer.backbone")
    fit = importlib.import_module("trainer.fit")
    model = importlib.import_module("trainer.model")

    good_dir = products_dir.parent / "good-parts"
    good_dir.mkdir(parents=True, exist_ok=True)
    good_parts = {"defect_rate": 0.0, "seed": GOOD_SEED, "frame_count": None}
    good = SyntheticSource(camera.model_copy(update=good_parts))
    for i in range(n_good):
        cv2.imwrite(str(good_dir / f"good-{i:03d}.png"), good.render(i)[0])
    backbone: Any
    try:
        backbone = backbones.load_backbone(backbone_name)
        notes = {"default": "the shipped default backbone (trained and untrained network, the line bank, the "
                            "whitened member where the texture is Gaussian, the grey-level extremes member "
                            "where it is not, and the context member)",
                 "default-trained": "the shipped trained network alone (h=16)"}
        note = notes.get(backbone_name, backbone_name)
    except backbones.BackboneError:
        model.torch.manual_seed(0)  # the trainer's torch: the same untrained network on every run
        backbone = model.FeatureNet(16)
        note = "an untrained FeatureNet(h=16) (no default backbone installed; `trainer pretrain` makes one)"
    result = fit.fit_product(good_dir, product_id, products_dir, backbone, fit.FitOptions())
    return Path(result.path), note


# ---------------------------------------------------------------------------------------------- live view


@dataclass
class Tally:
    records: list[JournalRecord]

    def count(self, verdict: str) -> int:
        return sum(r.result.verdict == verdict for r in self.records)

    def latency(self, last: int = 200) -> tuple[float | None, float | None]:
        values = [r.result.latencies_ms.get("total") for r in self.records[-last:]]
        clean = [v for v in values if v is not None]
        if not clean:
            return None, None
        p50, p99 = np.percentile(np.asarray(clean), [50, 99])
        return float(p50), float(p99)

    @property
    def acknowledged(self) -> int:
        return sum(r.published_unix_ns is not None for r in self.records)


def _ms(value: float | None) -> str:
    return "   -" if value is None else f"{value:4.0f}"


def live_line(elapsed_s: float, tally: Tally, fps: float) -> str:
    p50, p99 = tally.latency()
    return (
        f"[{elapsed_s:4.0f} s] {fps:5.1f} parts/s | pass {tally.count('pass'):4d}  "
        f"fail {tally.count('fail'):4d}  not inspected {tally.count('not_inspected'):3d} | "
        f"latency p50 {_ms(p50)} ms  p99 {_ms(p99)} ms | "
        f"broker acked {tally.acknowledged}/{len(tally.records)}"
    )


def read_journal(journal: Journal) -> list[JournalRecord]:
    try:
        return journal.query(limit=None)
    except LinewatchError:
        return []


# ---------------------------------------------------------------------------------------------- heatmaps


def save_heatmaps(bundle: LoadedBundle, fails: list[tuple[JournalRecord, str]], folder: Path) -> int:
    """Heatmaps of the fails, from the frames the daemon kept, through the same model and scoring code."""
    folder.mkdir(parents=True, exist_ok=True)
    backend, _ = create_backend(InferenceConfig(backend="onnxruntime"), bundle)
    m = bundle.manifest
    saved = 0
    try:
        for record, label in fails[:MAX_HEATMAPS]:
            if record.image_path is None or not record.image_path.is_file():
                continue
            image = cv2.imread(str(record.image_path), cv2.IMREAD_UNCHANGED)
            if image is None:
                continue
            batch = preprocess(image, m.input, m.preprocessing)[np.newaxis]
            out = backend.infer(batch, want_heatmap=True)[0]
            if out.heatmap is None:
                continue
            png = heatmap_png(image, out.heatmap, m, m.threshold)
            (folder / f"seq{record.result.seq:06d}-{label}.png").write_bytes(png)
            saved += 1
    finally:
        backend.close()
    return saved


# ---------------------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    if not args.config.is_file():
        print(f"linewatch demo: {args.config} not found (run it from a linewatch checkout)", file=sys.stderr)
        return 2
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"linewatch demo: {args.config} is invalid:\n{exc}", file=sys.stderr)
        return 2
    camera = settings.camera
    if not isinstance(camera, SyntheticCameraConfig) or settings.products.active is None:
        print("linewatch demo: the demo config needs a synthetic camera and products.active", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="linewatch-demo-"))
    heatmap_dir = args.out.resolve() / "heatmaps"
    daemon: subprocess.Popen[bytes] | None = None
    try:
        say(f"linewatch demo: making product {settings.products.active!r} from {GOOD_PARTS} good "
            f"{camera.family!r} parts (trainer fit) …")
        started = time.monotonic()
        products = work / "products"
        _, note = build_demo_product(products, camera, settings.products.active)
        bundle = load_product(products, settings.products.active)
        say(f"  bundle {bundle.bundle_id}: {bundle.manifest.input.width}x{bundle.manifest.input.height}, "
            f"threshold {bundle.manifest.threshold:.4g} ({bundle.manifest.calibration.method}), "
            f"{time.monotonic() - started:.0f} s, with {note}")
        with PrivateMosquitto(work / "broker") as broker:
            say(f"linewatch demo: private mosquitto on {broker.host}:{broker.port}")
            state = work / "state"
            metrics_port = free_port()
            say(f"linewatch demo: metrics on http://127.0.0.1:{metrics_port}/metrics while it runs")
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("LINEWATCH_")},
                "LINEWATCH_PRODUCTS__DIR": str(products),
                "LINEWATCH_STATE_DIR": str(state),
                "LINEWATCH_MQTT__HOST": broker.host,
                "LINEWATCH_MQTT__PORT": str(broker.port),
                # A free port: an installed instance may hold the default 9850.
                "LINEWATCH_METRICS__PORT": str(metrics_port),
            }
            env.pop("NOTIFY_SOCKET", None)
            log_path = work / "daemon.log"
            with log_path.open("wb") as log_file:
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "linewatch", "run", "--config", str(args.config)],
                    stdout=log_file, stderr=subprocess.STDOUT, env=env,
                )
                say(f"linewatch demo: daemon started (pid {daemon.pid}, log {log_path}); "
                    f"inspecting for {args.seconds:g} s, {camera.rate_hz or 'max'} parts/s, "
                    f"defect rate {camera.defect_rate:g}")
                records = watch(daemon, state, args.seconds, log_path)
                if daemon.poll() is None:
                    daemon.send_signal(signal.SIGTERM)
                try:
                    code = daemon.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    code = daemon.wait()
            if code != 0:
                tail = log_path.read_text(errors="replace")[-2000:]
                print(f"linewatch demo: the daemon exited with {code}:\n{tail}", file=sys.stderr)
                return 1
            records = final_records(state) or records
        return report(records, camera, bundle, heatmap_dir, args.seconds)
    except LinewatchError as exc:
        print(f"linewatch demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("linewatch demo: interrupted", file=sys.stderr)
        return 130
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if args.keep:
            say(f"linewatch demo: work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def watch(
    daemon: subprocess.Popen[bytes], state: Path, seconds: float, log_path: Path
) -> list[JournalRecord]:
    """One line per second until ``seconds`` have passed (from the first result) or the daemon ends."""
    deadline_start = time.monotonic() + 120.0  # bundle load and camera open must not take longer
    journal: Journal | None = None
    records: list[JournalRecord] = []
    first_result: float | None = None
    previous = 0
    next_line = time.monotonic() + 1.0
    try:
        while daemon.poll() is None:
            now = time.monotonic()
            if journal is None and (state / "journal.sqlite3").exists():
                journal = Journal(JournalConfig(state_dir=state))
            if journal is not None:
                records = read_journal(journal)
            if records and first_result is None:
                first_result = now
                next_line = now + 1.0
            if first_result is None:
                if now > deadline_start:
                    say(f"linewatch demo: no result after 120 s; see {log_path}")
                    break
                time.sleep(0.2)
                continue
            if now >= next_line:
                say(live_line(now - first_result, Tally(records), (len(records) - previous) / 1.0))
                previous = len(records)
                next_line += 1.0
            if now - first_result >= seconds:
                break
            time.sleep(max(0.0, min(0.2, next_line - time.monotonic())))
    finally:
        if journal is not None:
            journal.close()
    return records


def final_records(state: Path) -> list[JournalRecord]:
    if not (state / "journal.sqlite3").exists():
        return []
    journal = Journal(JournalConfig(state_dir=state))
    try:
        return read_journal(journal)
    finally:
        journal.close()


def report(
    records: list[JournalRecord],
    camera: SyntheticCameraConfig,
    bundle: LoadedBundle,
    heatmap_dir: Path,
    seconds: float,
) -> int:
    if not records:
        print("linewatch demo: no results were recorded", file=sys.stderr)
        return 1
    say(f"linewatch demo: scoring {len(records)} results against the camera's ground truth …")
    source = SyntheticSource(camera)
    caught: Counter[str] = Counter()
    injected: Counter[str] = Counter()
    good = rejected_good = not_inspected = 0
    fails: list[tuple[JournalRecord, str]] = []
    for record in records:
        result = record.result
        truth = source.render(result.frame_id)[1]
        kind = truth.defect_kind or "defect"
        if result.verdict == "not_inspected":
            not_inspected += 1
        if truth.defective:
            injected[kind] += 1
            if result.verdict == "fail":
                caught[kind] += 1
                fails.append((record, kind))
        else:
            good += 1
            if result.verdict != "pass":
                rejected_good += 1
                if result.verdict == "fail":
                    fails.append((record, "good-part"))
    n_defects = sum(injected.values())
    if heatmap_dir.exists():
        shutil.rmtree(heatmap_dir)
    saved = save_heatmaps(bundle, sorted(fails, key=lambda f: f[0].result.seq), heatmap_dir)
    tally = Tally(records)
    p50, p99 = tally.latency(last=len(records))
    span_s = max((records[-1].result.acquired_ns - records[0].result.acquired_ns) / 1e9, 1e-9)
    per_kind = ", ".join(f"{k} {caught[k]}/{injected[k]}" for k in sorted(injected))
    say("")
    rate = len(records) / span_s
    say(f"linewatch demo: {len(records)} parts inspected in {seconds:g} s ({rate:.1f} parts/s)")
    say(f"  injected defects caught: {sum(caught.values())} of {n_defects}"
        + (f" ({100 * sum(caught.values()) / n_defects:.0f} %)" if n_defects else "")
        + (f" — {per_kind}" if per_kind else ""))
    say(f"  good parts rejected:     {rejected_good} of {good}"
        + (f" ({100 * rejected_good / good:.1f} %)" if good else ""))
    say(f"  not inspected:           {not_inspected}")
    say(f"  latency acquire→publish: p50 {_ms(p50).strip()} ms, p99 {_ms(p99).strip()} ms")
    say(f"  results acknowledged by the broker: {tally.acknowledged} of {len(records)}")
    say(f"  heatmaps of the {len(fails)} fails: {heatmap_dir} ({saved} saved)")
    return 0
