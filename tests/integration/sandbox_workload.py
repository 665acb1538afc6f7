"""Run the daemon's real components inside the syscall sandbox that linewatch@.service asks systemd for.

Usage: python sandbox_workload.py SPEC.json  (written by test_service_sandbox.py)

First, before importing anything heavy, this process installs the same seccomp filters systemd derives from
the unit (libseccomp through ctypes, one filter per unit setting, like systemd stacks them):

- SystemCallFilter= (allow list, everything else fails with SystemCallErrorNumber=),
- RestrictAddressFamilies= (socket() with another family fails with EAFNOSUPPORT),
- MemoryDenyWriteExecute= (mmap W+X, mprotect/pkey_mprotect +X, shmat SHM_EXEC fail with EPERM).

Then it checks that the sandbox bites (a forbidden call of each kind is refused) and runs viky → Pipeline
(ONNX Runtime backend) → MqttPublisher + journal, with the Prometheus endpoint served and scraped. The
summary goes to stdout as one JSON line.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import socket
import sys

SCMP_ACT_ALLOW = 0x7FFF0000


def scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7
PR_SET_NO_NEW_PRIVS = 38
SHM_EXEC = 0o100000


class ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def install_filters(spec: dict[str, object]) -> None:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:  # NoNewPrivileges=yes
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")

    def nr(name: str) -> int:
        return int(lib.seccomp_syscall_resolve_name(name.encode()))

    def rule(ctx: int, action: int, syscall: str, *cmps: tuple[int, int, int, int]) -> None:
        number = nr(syscall)
        if number < 0:
            return  # not a syscall of this architecture
        array = (ArgCmp * max(1, len(cmps)))(*[ArgCmp(*c) for c in cmps])
        rc = lib.seccomp_rule_add_array(ctx, action, number, len(cmps), array)
        if rc < 0:
            raise OSError(-rc, f"seccomp_rule_add({syscall})")

    def load(ctx: int) -> None:
        rc = lib.seccomp_load(ctx)
        lib.seccomp_release(ctx)
        if rc < 0:
            raise OSError(-rc, "seccomp_load")

    families = set(spec["address_families"])  # type: ignore[call-overload]
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    for family in range(64):  # AF_MAX is 46 on Linux 6.x
        if family not in families:
            rule(ctx, scmp_act_errno(errno.EAFNOSUPPORT), "socket", (0, SCMP_CMP_EQ, family, 0))
    load(ctx)

    if spec["memory_deny_write_execute"]:
        ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
        eperm = scmp_act_errno(errno.EPERM)
        wx = mmap.PROT_WRITE | mmap.PROT_EXEC
        for call in ("mmap", "mmap2"):
            rule(ctx, eperm, call, (2, SCMP_CMP_MASKED_EQ, wx, wx))
        for call in ("mprotect", "pkey_mprotect"):
            rule(ctx, eperm, call, (2, SCMP_CMP_MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC))
        rule(ctx, eperm, "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
        load(ctx)

    # Last, as systemd does: the allow list does not contain seccomp() itself.
    allowed = list(spec["allowed_syscalls"])  # type: ignore[call-overload]
    ctx = lib.seccomp_init(scmp_act_errno(int(spec["errno"])))  # type: ignore[call-overload]
    for name in allowed:
        rule(ctx, SCMP_ACT_ALLOW, name)
    load(ctx)


def refused(action: object) -> str | None:
    """The errno name a forbidden call failed with, or None if it was allowed."""
    try:
        result = action()  # type: ignore[operator]
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    if hasattr(result, "close"):
        result.close()
    return None


def main() -> None:
    with open(sys.argv[1]) as spec_file:
        spec = json.load(spec_file)
    install_filters(spec)

    controls = {
        # @resources is removed from the allow list.
        "sched_setaffinity": refused(lambda: os.sched_setaffinity(0, os.sched_getaffinity(0))),
        # Not in RestrictAddressFamilies.
        "socket_af_packet": refused(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)),
        # MemoryDenyWriteExecute.
        "mmap_wx": refused(
            lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        ),
    }

    # Everything below is imported and run only now, inside the sandbox, like the daemon under systemd.
    import threading
    import time
    import urllib.request
    from pathlib import Path

    from linewatch.acquisition.genicam import GenicamCameraConfig, GenicamSource
    from linewatch.bundle.registry import load_bundle
    from linewatch.frames import Verdict, VerdictKind
    from linewatch.inference.onnxruntime import OnnxruntimeBackend
    from linewatch.pipeline.pipeline import Pipeline
    from linewatch.publish.journal import Journal, JournalConfig
    from linewatch.publish.mqtt import MqttConfig, MqttPublisher
    from linewatch.service.metrics import Metrics, MetricsConfig, serve

    frames_wanted = int(spec["frames"])
    metrics = Metrics(station="sandbox")
    server = serve(MetricsConfig(port=int(spec["metrics_port"])), metrics)
    journal = Journal(JournalConfig(state_dir=Path(spec["state_dir"])))
    publisher = MqttPublisher(
        MqttConfig(host="127.0.0.1", port=int(spec["broker_port"]), heatmap_every_nth_pass=1),
        "sandbox", journal,
    )
    done = threading.Event()

    class MeteredSink:
        """The daemon's shape: the publisher does the work, the metrics count it."""

        count = 0

        def heatmap_wanted(self, verdict: VerdictKind) -> bool:
            return publisher.heatmap_wanted(verdict)

        def publish_result(self, verdict: Verdict) -> None:
            start = time.monotonic()
            publisher.publish_result(verdict)
            metrics.observe_stage_latency("publish", time.monotonic() - start)
            metrics.observe_verdict(verdict)
            self.count += 1
            if self.count >= frames_wanted:
                done.set()

        def publish_heatmap(self, seq: int, png: bytes) -> None:
            publisher.publish_heatmap(seq, png)

    source = GenicamSource(GenicamCameraConfig.model_validate({
        "kind": "genicam", "cti": [spec["cti"]], "device_id": "VikyTL_DEV_red",
        "nodes": {"PixelFormat": "Mono8", "Width": 256, "Height": 256, "AcquisitionFrameRate": 50.0},
    }))
    publisher.start()
    deadline = time.monotonic() + 10
    while not publisher.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    sink = MeteredSink()
    pipeline = Pipeline(source, OnnxruntimeBackend, sink, bundle=load_bundle(Path(spec["bundle"])))
    pipeline.start()
    finished = done.wait(60)
    pipeline.stop(drain_timeout_s=10)
    source.close()
    flushed = publisher.flush(10)
    stats = publisher.stats()
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
        scraped = response.read().decode()
    publisher.close()
    journal.close()
    server.shutdown()
    snapshot = pipeline.snapshot()
    print(json.dumps({
        "controls": controls,
        "finished": finished,
        "flushed": flushed,
        "results_published": stats.results_published,
        "verdicts": {
            "pass": snapshot.passed, "fail": snapshot.failed, "not_inspected": snapshot.not_inspected,
        },
        "not_inspected_reasons": snapshot.not_inspected_reasons,
        "failed_stages": [f"{name}: {error}" for name, error in pipeline.failed_stages],
        "metrics": scraped,
    }))


if __name__ == "__main__":
    main()
