#!/usr/bin/env python3
"""Chaos run of linewatch: the real daemon (`linewatch run`, a subprocess) on a synthetic camera against a
private mosquitto, with combined faults at seeded random moments, then the integrator's invariants checked
from a persistent QoS 1 subscriber's records and the SQLite journal.

    .venv/bin/python benchmarks/chaos.py --seed 1 [--rate 8] [--workdir DIR]

About 4 minutes (two small products are fitted first). Exit 0 when every invariant held, 1 otherwise.
Everything it made (subscriber records, daemon logs, report.json) is in --workdir (default: a new temporary
directory, printed).

Faults (counts and moments drawn from --seed): broker killed (SIGTERM, persistence on, so the broker
keeps what it acknowledged) and restarted after 1-20 s; product/set between two products over MQTT and with
`linewatch product set`; product/prepare; set to a nonexistent product, a damaged bundle (a byte of its
prototype flipped) and `../x`; malformed commands (bad JSON, wrong types, unknown keys, unknown action,
oversized, empty, feedback for an unknown seq); SIGHUP after rewriting products.active; one SIGKILL + restart
of the daemon in the middle; SIGTERM at the end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv" / "bin"
sys.path.insert(0, str(REPO))

from linewatch.service.mosquitto import PrivateMosquitto  # noqa: E402

STATION = "chaos"
PREFIX = f"linewatch/{STATION}"
PRODUCTS = ("prod-a", "prod-b")
DAMAGED = "prod-damaged"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------------------
# products


def make_products(products: Path, cache: Path) -> dict[str, dict[str, Any]]:
    """prod-a (trained backbone) and prod-b (untrained backbone: a second engine), both fitted on good
    stripes parts at 128 px; prod-damaged = prod-a with a flipped byte. Cached in ``cache``."""
    if not all((cache / p / "bundle.json").exists() for p in PRODUCTS):
        synth = cache.parent / "synth"
        if not (synth / "train").exists():  # one family: the product is synth/ itself
            subprocess.run([VENV / "trainer", "synth", "--out", synth, "--families", "stripes", "--n-train",
                            "20", "--n-test-good", "1", "--n-test-defect", "1", "--size", "128", "--seed",
                            "0"], check=True, capture_output=True)
        for pid, backbone, frr in (("prod-a", "default-trained", "0.005"), ("prod-b", "default-untrained",
                                                                             "0.1")):
            subprocess.run([VENV / "trainer", "fit", "--good", synth / "train" / "good", "--product", pid,
                            "--out", cache, "--backbone", backbone, "--clusters", "16", "--threads", "1",
                            "--calibration", "holdout", "--calibration-fraction", "0.4", "--target-frr", frr],
                           check=True, capture_output=True)
    products.mkdir(parents=True, exist_ok=True)
    for pid in PRODUCTS:
        shutil.copytree(cache / pid, products / pid)
    shutil.copytree(cache / "prod-a", products / DAMAGED)
    manifest = json.loads((products / DAMAGED / "bundle.json").read_text())
    manifest["product_id"] = DAMAGED
    (products / DAMAGED / "bundle.json").write_text(json.dumps(manifest, indent=2))
    proto = products / DAMAGED / "prototype.npz"
    data = bytearray(proto.read_bytes())
    data[len(data) // 2] ^= 0xFF
    proto.write_bytes(bytes(data))
    info = {}
    for pid in PRODUCTS:
        m = json.loads((products / pid / "bundle.json").read_text())
        info[pid] = {"threshold": m["threshold"], "bundle_id": m["bundle_id"]}
    return info


def write_config(path: Path, products: Path, state: Path, port: int, active: str, rate: float) -> None:
    path.write_text(f"""state_dir = "{state}"
[station]
id = "{STATION}"
[camera]
kind = "synthetic"
family = "stripes"
style_seed = 0
width = 128
height = 128
rate_hz = {rate}
defect_rate = 0.2
defect_kinds = ["scratch", "spot", "crack", "noise_patch"]
seed = 1000
[products]
dir = "{products}"
active = "{active}"
command_timeout_s = 30.0
[mqtt]
host = "127.0.0.1"
port = {port}
reconnect_min_delay_s = 1
reconnect_max_delay_s = 2
keepalive_s = 5
heatmap_max_per_s = 5.0
[inference]
backend = "onnxruntime"
[inference.onnxruntime]
intra_op_threads = 1
[logging]
summary_interval_s = 5.0
[service]
stats_interval_s = 1.0
drain_timeout_s = 10.0
[metrics]
enabled = false
""")


# ------------------------------------------------------------------------------------------------------------
# MQTT clients


class Recorder:
    """The integrator's subscriber: MQTT 5, clean_start=False, session expiry 1 h, QoS 1 on PREFIX/#."""

    def __init__(self, port: int) -> None:
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.connects = 0
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="chaos-recorder",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props, keepalive=5)
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connects += 1
        if not flags.session_present:
            client.subscribe([(f"{PREFIX}/#", 1)])

    def _on_message(self, client: paho.Client, userdata: Any, m: paho.MQTTMessage) -> None:
        sub = m.topic[len(PREFIX) + 1:]
        rec: dict[str, Any] = {"t": time.time(), "topic": sub, "retain": bool(m.retain)}
        corr = getattr(m.properties, "CorrelationData", None) if m.properties else None
        rec["corr"] = bytes(corr).decode(errors="replace") if corr is not None else None
        if sub.startswith("heatmap"):
            rec["payload"] = None
        else:
            raw = bytes(m.payload)
            try:
                rec["payload"] = json.loads(raw)
            except ValueError:
                rec["payload"] = None
            rec["raw"] = raw[:300].decode(errors="replace")
        with self.lock:
            self.records.append(rec)

    def on(self, sub: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.records if r["topic"] == sub]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Commander:
    """Publishes commands (QoS 1, MQTT 5 CorrelationData = our id) while the broker is up."""

    def __init__(self, port: int) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="chaos-commander",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes, corr: str) -> bool:
        """True when the broker took it at once; False when paho queued it (broker away: it goes out after
        the reconnect, as an integrator's client would send it)."""
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = corr.encode()
        info = self.client.publish(f"{PREFIX}/{topic}", payload, qos=1, properties=props)
        if not self.client.is_connected():
            return False
        try:
            info.wait_for_publish(1.0)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ------------------------------------------------------------------------------------------------------------
# the daemon


class Daemon:
    def __init__(self, config: Path, logdir: Path) -> None:
        self.config = config
        self.logdir = logdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[tuple[float, int, str]] = []  # (time, run, line)
        self.runs = 0
        self.exit_codes: list[tuple[str, int | None]] = []
        self.gone: list[float] = []  # wall times a process was started or killed (not connected from there)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LINEWATCH_") and k != "NOTIFY_SOCKET"}
        self.runs += 1
        run = self.runs
        self.gone.append(time.time())
        self.proc = subprocess.Popen(
            [VENV / "linewatch", "run", "--config", self.config],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )
        proc = self.proc

        def reader() -> None:
            assert proc.stdout is not None
            with (self.logdir / f"daemon-{run}.log").open("w") as f:
                for raw in proc.stdout:
                    line = raw.decode(errors="replace").rstrip("\n")
                    now = time.time()
                    self.lines.append((now, run, line))
                    f.write(f"{now:.3f} {line}\n")
                    f.flush()

        threading.Thread(target=reader, daemon=True).start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        if sig == signal.SIGKILL:
            self.gone.append(time.time())
        self.proc.send_signal(sig)

    def wait(self, what: str, timeout_s: float = 60.0) -> int | None:
        assert self.proc is not None
        try:
            rc: int | None = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = None
        self.exit_codes.append((what, rc))
        return rc

    def connected_at(self, t: float) -> bool | None:
        """Was the daemon connected to the broker at wall time t (from its log)? None: unknown."""
        state = None
        gone = [g for g in self.gone if g <= t]
        for when, _run, line in list(self.lines):
            if when > t:
                break
            if gone and when < gone[-1]:
                continue
            if "connected to MQTT broker" in line and "disconnected" not in line:
                state = True
            elif "disconnected from MQTT broker" in line or "linewatch: " in line:
                state = False
        if state is None and gone:
            state = False
        return state


# ------------------------------------------------------------------------------------------------------------
# schedule


def schedule(rng: random.Random, duration: float, sigkill: bool) -> list[tuple[float, str, Any]]:
    ev: list[tuple[float, str, Any]] = []
    end = duration - 12.0
    # broker outages, not overlapping
    t = rng.uniform(8, 20)
    for length in rng.sample([1.5, 3.0, 6.0, 12.0, 20.0], 4):
        if t + length > end:
            break
        ev.append((t, "broker_down", length))
        t += length + rng.uniform(12, 30)
    for _ in range(16):
        ev.append((rng.uniform(4, end), "set", (rng.choice(PRODUCTS), rng.random() < 0.3)))
    for _ in range(3):
        ev.append((rng.uniform(4, end), "prepare", rng.choice(PRODUCTS)))
    for bad in ("prod-nope", DAMAGED, "prod-nope", DAMAGED, "../x"):
        ev.append((rng.uniform(4, end), "set_bad", bad))
    for kind in ("bad_json", "wrong_type", "unknown_key", "unknown_action", "oversized", "empty",
                 "feedback_unknown_seq", "feedback_ok"):
        ev.append((rng.uniform(4, end), "malformed", kind))
    for _ in range(3):
        ev.append((rng.uniform(4, end), "sighup", rng.choice((*PRODUCTS, DAMAGED) if _ == 1 else PRODUCTS)))
    for _ in range(2):  # three sets within ~0.1 s: only the last one's product may stay
        ev.append((rng.uniform(4, end), "set_burst", [rng.choice(PRODUCTS) for _ in range(3)]))
    if sigkill:
        outages = [(t, length) for t, k, length in ev if k == "broker_down"]
        if rng.random() < 0.5 and outages:  # killed while results wait in the journal: replay on restart
            t, length = max(outages, key=lambda o: o[1])
            ev.append((t + length * rng.uniform(0.3, 0.7), "sigkill", rng.uniform(1.0, 4.0)))
        else:
            ev.append((duration * rng.uniform(0.45, 0.55), "sigkill", rng.uniform(1.0, 4.0)))
    ev.sort(key=lambda e: e[0])
    return ev


# ------------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--duration", type=float, default=180.0)
    ap.add_argument("--rate", type=float, default=8.0)
    ap.add_argument("--no-sigkill", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        ap.error(f"--workdir {args.workdir} is not empty (nothing there is deleted: give a new directory)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix=f"linewatch-chaos-{args.seed}-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"work directory {work}")
    products = work / "products"
    info = make_products(products, work / "products-cache")
    log(f"products: {info}")
    broker = PrivateMosquitto(work / "broker", persistence=True)
    broker.start()
    port = broker.port
    config = work / "linewatch.toml"
    active = "prod-a"
    write_config(config, products, work / "state", port, active, args.rate)
    recorder = Recorder(port)
    time.sleep(0.5)
    commander = Commander(port)
    daemon = Daemon(config, work)
    sent: list[dict[str, Any]] = []  # every command we tried to send
    switch_events: list[tuple[float, str]] = []  # (wall time, what) that may change the product
    broker_windows: list[tuple[float, float]] = []
    daemon_down: list[tuple[float, float]] = []
    counts: Counter[str] = Counter()
    cli_threads: list[threading.Thread] = []
    outage_threads: list[threading.Thread] = []

    def send(topic: str, payload: bytes, kind: str, product: str | None = None) -> None:
        corr = f"chaos-{len(sent)}-{uuid.uuid4().hex[:6]}"
        now = time.time()
        ok = commander.send(topic, payload, corr)
        sent.append({"t": now, "corr": corr, "topic": topic, "kind": kind, "product": product,
                     "published": ok, "daemon_connected": daemon.connected_at(now)})
        counts[f"cmd_{kind}" + ("" if ok else "_not_published")] += 1

    def cli_set(product: str) -> None:
        now = time.time()
        rec: dict[str, Any] = {"t": now, "corr": None, "topic": "product/set", "kind": "cli_set",
                               "product": product, "published": None,
                               "daemon_connected": daemon.connected_at(now)}
        sent.append(rec)
        counts["cmd_cli_set"] += 1

        def go() -> None:
            p = subprocess.run([VENV / "linewatch", "product", "set", product, "--config", config,
                                "--timeout",
                                "40"], capture_output=True, text=True, cwd=REPO)
            rec["cli_rc"] = p.returncode
            rec["cli_out"] = (p.stdout + p.stderr).strip()[-300:]

        th = threading.Thread(target=go, daemon=True)
        th.start()
        cli_threads.append(th)

    events = schedule(rng, args.duration, not args.no_sigkill)
    (work / "schedule.json").write_text(json.dumps(events, indent=1))
    log(f"{len(events)} events scheduled over {args.duration:.0f} s; daemon starting")
    daemon.start()
    t0 = time.time()
    # wait for online
    deadline = time.time() + 60
    while not any(r["payload"] and r["payload"].get("state") == "online" for r in recorder.on("status")):
        if time.time() > deadline or not daemon.alive():
            log("daemon did not come online")
            break
        time.sleep(0.2)
    t0 = time.time()
    for at, kind, arg in events:
        delay = t0 + at - time.time()
        if delay > 0:
            time.sleep(delay)
        if kind == "broker_down":
            def outage(length: float = arg) -> None:
                log(f"broker down for {length:.1f} s")
                a = time.time()
                broker.stop()
                counts["broker_outages"] += 1
                time.sleep(length)
                broker.start()
                broker_windows.append((a, time.time()))
                counts["broker_outage_s"] += round(length)
                log("broker up")
            th = threading.Thread(target=outage, daemon=True)
            th.start()
            outage_threads.append(th)
        elif kind == "set":
            product, via_cli = arg
            switch_events.append((time.time(), f"set {product}"))
            if via_cli:
                cli_set(product)
            else:
                body = {"product_id": product, "request_id": f"r{len(sent)}"}
                send("product/set", json.dumps(body).encode(),
                     "set", product)
        elif kind == "set_burst":
            for product in arg:
                switch_events.append((time.time(), f"set {product}"))
                body = {"product_id": product, "request_id": f"r{len(sent)}"}
                send("product/set", json.dumps(body).encode(),
                     "set", product)
                time.sleep(0.03)
            counts["set_bursts"] += 1
        elif kind == "prepare":
            send("product/prepare", json.dumps({"product_id": arg, "request_id": f"r{len(sent)}"}).encode(),
                 "prepare", arg)
        elif kind == "set_bad":
            switch_events.append((time.time(), f"set {arg}"))
            send("product/set", json.dumps({"product_id": arg, "request_id": f"r{len(sent)}"}).encode(),
                 "set_bad", arg)
        elif kind == "malformed":
            payload = {
                "bad_json": b'{"product_id": "prod-a", ',
                "wrong_type": json.dumps({"product_id": 5, "request_id": "wt"}).encode(),
                "unknown_key": json.dumps({"product_id": "prod-a", "colour": "red"}).encode(),
                "unknown_action": json.dumps({"product_id": "prod-a", "action": "explode"}).encode(),
                "oversized": json.dumps({"product_id": "prod-a", "request_id": "x" * 10000}).encode(),
                "empty": b"",
                "feedback_unknown_seq": json.dumps({"seq": 10**9, "label": "good"}).encode(),
                "feedback_ok": json.dumps({"seq": 3, "label": "good", "note": "chaos"}).encode(),
            }[arg]
            topic = "feedback" if arg.startswith("feedback") else "product/set"
            if topic == "product/set":
                switch_events.append((time.time(), f"malformed {arg}"))
            send(topic, payload, f"malformed_{arg}")
        elif kind == "sighup":
            if daemon.alive():
                active = arg
                write_config(config, products, work / "state", port, active, args.rate)
                switch_events.append((time.time(), f"sighup {arg}"))
                daemon.signal(signal.SIGHUP)
                counts["sighup"] += 1
                log(f"SIGHUP -> {arg}")
        elif kind == "sigkill":
            log("SIGKILL daemon")
            a = time.time()
            switch_events.append((a, "sigkill"))
            daemon.signal(signal.SIGKILL)
            daemon.wait("sigkill", 10)
            counts["sigkill"] += 1
            time.sleep(arg)
            if active == DAMAGED:  # a restart with a damaged active product would refuse to start
                active = "prod-a"
                write_config(config, products, work / "state", port, active, args.rate)
            daemon.start()
            daemon_down.append((a, time.time()))
            switch_events.append((time.time(), "restart"))
            log("daemon restarted")
    left = t0 + args.duration - time.time()
    if left > 0:
        time.sleep(left)
    for th in outage_threads + cli_threads:
        th.join(60)
    # commands in flight when SIGTERM arrives: each must still get its one answer (ok or refused)
    for product in ("prod-b", "prod-a", "prod-b"):
        switch_events.append((time.time(), f"set {product}"))
        send("product/set", json.dumps({"product_id": product, "request_id": f"r{len(sent)}"}).encode(),
             "set_at_sigterm", product)
    send("product/set", b"{not json", "malformed_at_sigterm")
    send("feedback", json.dumps({"seq": 5, "label": "defect"}).encode(), "feedback_at_sigterm")
    time.sleep(0.05)
    log("SIGTERM")
    t_term = time.time()
    switch_events.append((t_term, "sigterm"))
    daemon.signal(signal.SIGTERM)
    rc = daemon.wait("sigterm", 90)
    log(f"daemon exit {rc} after {time.time() - t_term:.1f} s")
    time.sleep(3.0)  # let the broker deliver the rest
    recorder.close()
    commander.close()
    broker.stop()
    ok = check(work, info, recorder, daemon, sent, switch_events, counts, t0, broker_windows, daemon_down)
    return 0 if ok else 1


# ------------------------------------------------------------------------------------------------------------
# invariants


def check(work: Path, info: dict[str, Any], rec: Recorder, daemon: Daemon, sent: list[dict[str, Any]],
          switch_events: list[tuple[float, str]], counts: Counter[str], t0: float,
          broker_windows: list[tuple[float, float]], daemon_down: list[tuple[float, float]]) -> bool:
    report: dict[str, Any] = {"faults": dict(counts), "duration_s": round(time.time() - t0, 1)}
    failures: list[str] = []

    def inv(name: str, ok: bool, detail: Any) -> None:
        report.setdefault("invariants", {})[name] = {"ok": ok, "detail": detail}
        if not ok:
            failures.append(name)
        log(f"{'OK  ' if ok else 'FAIL'} {name}: {detail}")

    # -- journal
    conn = sqlite3.connect(f"file:{work / 'state' / 'journal.sqlite3'}?mode=ro", uri=True)
    rows = conn.execute("SELECT id, seq, product, bundle, verdict, threshold, acquired_unix_ns, "
                        "published_unix_ns FROM results ORDER BY id").fetchall()
    conn.close()
    jseqs = [r[1] for r in rows]
    dup = [s for s, n in Counter(jseqs).items() if n > 1]
    first, last = (min(jseqs), max(jseqs)) if jseqs else (0, -1)
    missing = sorted(set(range(first, last + 1)) - set(jseqs))
    inv("journal: every seq exactly once", not dup and not missing and first == 0,
        {"rows": len(rows), "first": first, "last": last, "duplicated": dup[:10], "missing": missing[:20],
         "n_missing": len(missing)})
    order_ok = all(b > a for a, b in itertools.pairwise(jseqs))
    inv("journal: seq increasing with record id", order_ok, f"{len(jseqs)} rows")
    unpublished = [r[1] for r in rows if r[7] is None]
    inv("journal: every result acknowledged by the broker at the end", not unpublished,
        {"unpublished": len(unpublished), "first": unpublished[:10]})

    # -- subscriber results
    results = [r for r in rec.on("result") if r["payload"]]
    first_copy: dict[int, dict[str, Any]] = {}
    order: list[int] = []
    for r in results:
        s = r["payload"]["seq"]
        if s not in first_copy:
            first_copy[s] = r["payload"]
            order.append(s)
    sub_missing = sorted(set(range(first, last + 1)) - set(first_copy))
    extra = sorted(set(first_copy) - set(range(first, last + 1)))
    inv("subscriber: every journaled seq received", not sub_missing and not extra,
        {"received": len(results), "distinct": len(first_copy), "duplicates": len(results) - len(first_copy),
         "missing": sub_missing[:20], "n_missing": len(sub_missing), "not_in_journal": extra[:10]})
    inversions = [(a, b) for a, b in itertools.pairwise(order) if b < a]
    inv("subscriber: first copies in increasing seq order", not inversions,
        {"inversions": len(inversions), "first": inversions[:5]})
    # journal and wire agree
    jmap = {r[1]: r for r in rows}
    disagree = [s for s, p in first_copy.items() if s in jmap and (p["verdict"] != jmap[s][4]
                                                                   or p["product"] != jmap[s][2])]
    inv("subscriber copy == journal row (verdict, product)", not disagree, {"disagree": disagree[:10]})

    # -- rejects
    rejects = {r["payload"]["seq"] for r in rec.on("reject") if r["payload"]}
    need = [s for s, p in first_copy.items() if p["verdict"] != "pass"]
    no_reject = [s for s in need if s not in rejects]
    stray = sorted(s for s in rejects if first_copy.get(s, {}).get("verdict") == "pass")
    vc = Counter(p["verdict"] for p in first_copy.values())
    inv("every fail/not_inspected has its reject", not no_reject and not stray,
        {"verdicts": dict(vc), "without_reject": no_reject[:10], "reject_for_pass": stray[:10]})

    # -- products, thresholds
    bad_thr = []
    no_product = []
    for s, p in first_copy.items():
        if p["product"] is None:
            no_product.append(s)
            continue
        want = info.get(p["product"])
        if want is None or p["bundle"] != want["bundle_id"] or (
                p["threshold"] is not None and abs(p["threshold"] - want["threshold"]) > 1e-9):
            bad_thr.append((s, p["product"], p["bundle"], p["threshold"]))
    per_product = Counter(p["product"] for p in first_copy.values())
    inv("every result names its product; bundle+threshold are that product's", not bad_thr and not no_product,
        {"per_product": dict(per_product), "no_product": no_product[:10], "mismatch": bad_thr[:5]})

    # -- commands: exactly one response each
    responses = [r for r in rec.on("product/response") if r["payload"]]
    by_corr: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_rid: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in responses:
        if r["corr"]:
            by_corr[r["corr"]].append(r)
        if r["payload"].get("request_id"):
            by_rid[r["payload"]["request_id"]].append(r)
    cmd_problems = []
    answered = 0
    lost_while_away = []  # sent while the daemon had no connection (restarting, reconnecting): reported apart
    delivered_at = {r["corr"]: r["t"] for r in rec.records if r["corr"] and r["topic"] in (
        "product/set", "product/prepare", "feedback")}
    for c in sent:
        c["t_rel"] = round(c["t"] - t0, 2)
        if c["corr"] in delivered_at:  # when the broker routed it (later than sent if paho queued it)
            c["delivered_rel"] = round(delivered_at[c["corr"]] - t0, 2)
            c["daemon_connected"] = daemon.connected_at(delivered_at[c["corr"]])
            c["published"] = True
        if c["daemon_connected"] is False:
            answered_once = c["published"] and len(by_corr.get(c["corr"], [])) == 1
            if (c["kind"] == "cli_set" and c.get("cli_rc") == 0) or answered_once:
                pass  # answered anyway (it waited for the subscription)
            elif c["kind"] == "cli_set" or c["published"]:
                lost_while_away.append({k: c.get(k) for k in ("t_rel", "delivered_rel", "kind", "product",
                                                               "cli_rc")})
                continue
        if c["kind"] == "cli_set":
            c["responses"] = None
            rc = c.get("cli_rc")
            if rc not in (0,):
                cmd_problems.append({k: c.get(k) for k in ("t_rel", "kind", "product", "cli_rc", "cli_out",
                                                           "daemon_connected")})
            else:
                answered += 1
            continue
        if not c["published"]:
            continue
        got = by_corr.get(c["corr"], [])
        c["responses"] = [g["payload"] for g in got]
        c["response_t"] = got[0]["t"] if got else None
        if len(got) != 1:
            cmd_problems.append({"t_rel": c["t_rel"], "kind": c["kind"], "product": c["product"],
                                 "n_responses": len(got), "daemon_connected": c["daemon_connected"]})
        else:
            answered += 1
            p = got[0]["payload"]
            expect_ok = c["kind"] in ("set", "prepare", "malformed_feedback_ok")
            if c["kind"].endswith("_at_sigterm"):
                expect_ok = p["ok"] if c["kind"].startswith("set") else c["kind"].startswith("feedback")
            if p["ok"] != expect_ok:
                cmd_problems.append({"t": round(c["t"] - t0, 1), "kind": c["kind"], "product": c["product"],
                                     "unexpected": p})
    # every command the broker saw has exactly one answer (by request_id for the CLI's)
    cli_rids = [r["payload"]["request_id"] for r in rec.on("product/set")
                if r["payload"] and str(r["payload"].get("request_id", "")).startswith("cli-")]
    lost_cli = sum(1 for c in lost_while_away if c["kind"] == "cli_set")
    for rid in cli_rids:
        if len(by_rid.get(rid, [])) > 1 or (not by_rid.get(rid) and (lost_cli := lost_cli - 1) < 0):
            cmd_problems.append({"cli_request": rid, "n_responses": len(by_rid.get(rid, []))})
    published = sum(1 for c in sent if c["published"] or c["kind"] == "cli_set")
    inv("every command got exactly one (expected) response", not cmd_problems,
        {"commands": published, "answered_once": answered, "responses": len(responses),
         "problems": cmd_problems[:12]})
    report["commands_lost_while_daemon_away"] = lost_while_away
    log(f"NOTE commands sent while the daemon had no broker connection (never delivered, no answer): "
        f"{len(lost_while_away)} {lost_while_away}")

    # -- switches: after a confirmed set P, every frame acquired later is inspected with P until the
    # next event that may change the product; after a refused set, the product stays
    viol = []
    checked_windows = 0
    seq_sorted = sorted(first_copy.values(), key=lambda p: p["seq"])
    for c in sent:
        if c["kind"] not in ("set", "set_bad") or not c.get("responses") or len(c["responses"]) != 1:
            continue
        resp = c["responses"][0]
        t_resp = resp["timestamp_unix_ns"] / 1e9
        nxt = min([t for t, _ in switch_events if t > c["t"] + 1e-6] + [float("inf")])
        if nxt <= t_resp:
            continue
        if resp["ok"]:
            want = c["product"]
        else:
            before = [p for p in seq_sorted if p["acquired_unix_ns"] / 1e9 < c["t"]]
            if not before:
                continue
            want = before[-1]["product"]
            # a set sent before this one may still be in progress: skip when ambiguous
            if any(c2["t"] < c["t"] and c2["kind"] in ("set", "cli_set") and (c2.get("response_t") or
                   float("inf")) > c["t"] - 0.01 for c2 in sent):
                continue
        window = [p for p in seq_sorted if t_resp < p["acquired_unix_ns"] / 1e9 < nxt]
        checked_windows += 1
        wrong = [(p["seq"], p["product"]) for p in window if p["product"] != want]
        if wrong:
            viol.append({"cmd": c["kind"], "product": c["product"], "ok": resp["ok"], "want": want,
                         "frames": len(window), "wrong": wrong[:5]})
    inv("no frame after a confirmed switch (or refusal) inspected with the wrong product", not viol,
        {"windows_checked": checked_windows, "violations": viol[:5]})

    # -- daemon exit, status
    codes = daemon.exit_codes
    inv("daemon exit 0 on SIGTERM, no other exit", codes[-1:] == [("sigterm", 0)] and all(
        w == "sigkill" for w, _ in codes[:-1]), codes)
    crashed = [ln for _, _, ln in daemon.lines if "Traceback" in ln or "CRITICAL" in ln]
    inv("no traceback in the daemon's log", not crashed, crashed[:5])
    states = [(round(r["t"] - t0, 3), r["payload"]["state"], r["retain"]) for r in rec.on("status")
              if r["payload"]]
    final = states[-1][1] if states else None
    offline_after_kill = True
    for a, _b in daemon_down:
        after = [s for t, s, _ in states if t >= a - t0]
        before = [s for t, s, _ in states if t < a - t0]
        # the broker's last will, then the restarted daemon's online (its 'starting' is not published while
        # it has no broker; when the broker was down at the kill, it sent the will as it shut down): between
        # the last 'online' before the kill and the first 'online' after it there is an 'offline'
        if "online" not in after:
            offline_after_kill = False
            continue
        last_on = max((i for i, s in enumerate(before) if s == "online"), default=-1)
        between = before[last_on + 1:] + after[:after.index("online")]
        if "offline" not in between:
            offline_after_kill = False
    inv("status ends 'stopped'; 'offline' then 'online' after the SIGKILL", final == "stopped" and
        offline_after_kill, {"final": final, "sequence": [s for _, s, _ in states][-12:],
                             "n_status": len(states)})

    # -- the retained product state at the end names the product of the last result
    # (the state published before SIGTERM: a command answered while stopping publishes active=null, the
    # pipeline having closed its product by then)
    # cut-off: the commands sent at SIGTERM (their switches happen while stopping)
    t_term = min([c["t"] for c in sent if c["kind"].endswith("_at_sigterm")] + [time.time()])
    pstates = [r["payload"] for r in rec.on("product") if r["payload"] and r["t"] < t_term]
    final_pstate = [r["payload"] for r in rec.on("product") if r["payload"]][-1:]
    last_result = max((p for p in first_copy.values() if p["acquired_unix_ns"] / 1e9 < t_term),
                      key=lambda p: p["seq"], default=None)
    inv("product state before SIGTERM: active == product of the last result", bool(pstates) and
        last_result is not None and pstates[-1]["active"] == last_result["product"],
        {"product_state": pstates[-1]["active"] if pstates else None, "after_stop": final_pstate,
         "last_result": None if last_result is None else (last_result["seq"], last_result["product"])})

    # -- last stats against what the subscriber saw
    stats = [r for r in rec.on("stats") if r["payload"]]
    runs = [(t, ln) for t, run, ln in daemon.lines if "first seq" in ln]
    if stats and runs:
        last_stats = stats[-1]["payload"]
        first_seq = int(runs[-1][1].rsplit("first seq", 1)[1].split()[0])
        n = last_stats["pass_count"] + last_stats["fail_count"] + last_stats["not_inspected_count"]
        seen = [first_copy[s] for s in range(first_seq, first_seq + n) if s in first_copy]
        by: dict[str, dict[str, int]] = defaultdict(dict)
        for p in seen:
            d = by[p["product"] or ""]
            d[p["verdict"]] = d.get(p["verdict"], 0) + 1
        sc = Counter(p["verdict"] for p in seen)
        ok = (len(seen) == n and dict(by) == last_stats["verdicts"]
              and sc["pass"] == last_stats["pass_count"] and sc["fail"] == last_stats["fail_count"]
              and sc["not_inspected"] == last_stats["not_inspected_count"]
              and last_stats["frames_out"] >= n and last_stats["frames_in"] >= last_stats["frames_out"])
        inv("last stats' counters == subscriber's results of that run", ok,
            {"run_first_seq": first_seq, "stats": {k: last_stats[k] for k in (
                "frames_in", "frames_out", "pass_count", "fail_count", "not_inspected_count")},
             "stats_verdicts": last_stats["verdicts"], "seen_verdicts": dict(by), "product_switches":
             last_stats["product_switches"], "publisher": last_stats.get("publisher")})
    else:
        inv("last stats' counters == subscriber's results of that run", False, "no stats or no run line")

    report["frames"] = {"results_distinct": len(first_copy), "journal_rows": len(rows), "verdicts": dict(vc)}
    report["commands"] = [{k: v for k, v in c.items() if k != "responses"} | {
        "responses": c.get("responses")} for c in sent]
    report["broker_outages"] = [(round(a - t0, 1), round(b - a, 1)) for a, b in broker_windows]
    report["daemon_down"] = [(round(a - t0, 1), round(b - a, 1)) for a, b in daemon_down]
    report["failed"] = failures
    report["status_timeline"] = states
    with (work / "records.jsonl").open("w") as f:
        for r in rec.records:
            f.write(json.dumps(r, default=str) + "\n")
    (work / "report.json").write_text(json.dumps(report, indent=1, default=str))
    log(f"faults: {dict(counts)}")
    log(f"{'ALL INVARIANTS HELD' if not failures else 'BROKEN: ' + ', '.join(failures)}; report "
        f"{work / 'report.json'}")
    return not failures


if __name__ == "__main__":
    sys.exit(main())
