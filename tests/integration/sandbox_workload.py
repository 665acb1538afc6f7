"""Start `linewatch run` inside the syscall sandbox that linewatch@.service asks systemd for.

Usage: python sandbox_workload.py SPEC.json  (written by test_service_sandbox.py)

First, before importing anything heavy, this process installs the same seccomp filters systemd derives from
the unit (libseccomp through ctypes, one filter per unit setting, like systemd stacks them):

- SystemCallFilter= (allow list, everything else fails with SystemCallErrorNumber=),
- RestrictAddressFamilies= (socket() with another family fails with EAFNOSUPPORT),
- MemoryDenyWriteExecute= (mmap W+X, mprotect/pkey_mprotect +X, shmat SHM_EXEC fail with EPERM).

Then it checks that the sandbox bites (a forbidden call of each kind is refused), serves and scrapes the
Prometheus endpoint, prints that as one JSON line, and execs the daemon command line from the spec, as
systemd execs ExecStart= (seccomp filters and no_new_privs survive execve).
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

    controls: dict[str, object] = {
        # @resources is removed from the allow list.
        "sched_setaffinity": refused(lambda: os.sched_setaffinity(0, os.sched_getaffinity(0))),
        # Not in RestrictAddressFamilies.
        "socket_af_packet": refused(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)),
        # MemoryDenyWriteExecute.
        "mmap_wx": refused(
            lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        ),
    }
    # The Prometheus endpoint (not wired into the daemon yet): served and scraped under the same filters.
    import urllib.request

    from linewatch.service.metrics import Metrics, MetricsConfig, serve

    metrics = Metrics(station="sandbox")
    metrics.set_frame_totals(acquired=3, dropped=0)
    server = serve(MetricsConfig(port=int(spec["metrics_port"])), metrics)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
        controls["metrics"] = response.read().decode()
    server.shutdown()
    print(json.dumps(controls), flush=True)

    # What systemd does next: exec ExecStart= with the filters in place (they survive execve).
    os.environ["WATCHDOG_PID"] = str(os.getpid())
    os.execv(spec["argv"][0], spec["argv"])


if __name__ == "__main__":
    main()
