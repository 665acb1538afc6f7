"""The TensorRT plan cache that several instances share ($CACHE_DIRECTORY): writes are temp file + rename,
a plan is trusted only with a matching sidecar, and one build at a time per directory, across processes.
(No GPU needed: this is the file handling around the build.)"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from linewatch.inference.tensorrt import _atomic_write, _read_cached_plan, build_lock


def test_readers_see_the_old_file_or_the_new_one_never_a_part(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "x.plan"
    versions = [bytes([65 + i]) * (1 << 20) for i in range(4)]  # 1 MiB each: a write takes many syscalls
    _atomic_write(path, versions[0])
    seen: set[bytes] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            data = path.read_bytes()
            assert data in versions, f"a torn read: {len(data)} bytes starting {data[:1]!r}"
            seen.add(data[:1])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40):
            _atomic_write(path, versions[i % len(versions)])
    finally:
        stop.set()
        reader.join()
    assert path.read_bytes() == versions[39 % len(versions)]
    assert [p.name for p in path.parent.iterdir()] == ["x.plan"]  # no temporary file left behind


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "x.plan"
    _atomic_write(path, b"old")
    (tmp_path / "x.plan.dir").mkdir()
    with pytest.raises(OSError):
        _atomic_write(tmp_path / "x.plan.dir", b"new")  # cannot replace a directory with a file
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.plan", "x.plan.dir"]


def test_a_plan_is_used_only_with_its_own_sidecar(tmp_path: Path) -> None:
    plan = tmp_path / "abc_gpu.plan"
    notes: list[str] = []
    assert _read_cached_plan(plan, notes) is None and notes == []  # nothing cached yet
    _atomic_write(plan, b"plan built by instance B")
    # Instance A's sidecar next to instance B's plan (two builds interleaved): not trusted, rebuilt.
    other = json.dumps({"sha256": hashlib.sha256(b"plan built by instance A").hexdigest()})
    _atomic_write(plan.with_suffix(".json"), other.encode())
    assert _read_cached_plan(plan, notes) is None and "fails its hash check" in notes[0]
    digest = hashlib.sha256(b"plan built by instance B").hexdigest()
    _atomic_write(plan.with_suffix(".json"), json.dumps({"sha256": digest}).encode())
    found = _read_cached_plan(plan, [])
    assert found is not None and found.data == b"plan built by instance B" and found.source == "cache"
    plan.with_suffix(".json").write_text("{not json")
    notes = []
    assert _read_cached_plan(plan, notes) is None and "unreadable" in notes[0]


HOLDER = """
import sys
from pathlib import Path
from linewatch.inference.tensorrt import build_lock
with build_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_one_build_at_a_time_per_cache_directory_across_processes(tmp_path: Path) -> None:
    """Another instance (a process) holds the build lock: this one waits, and gets it when that one is done
    or dies (the kernel drops a dead holder's flock)."""
    for ending in ("finishes", "dies"):
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "locked"
        entered = threading.Event()

        def build(entered: threading.Event = entered) -> None:
            with build_lock(tmp_path):
                entered.set()

        waiter = threading.Thread(target=build)
        waiter.start()
        assert not entered.wait(0.5), "entered while another process held the lock"
        if ending == "finishes":
            holder.stdin.write("\n")
            holder.stdin.flush()
        else:
            holder.kill()
        assert entered.wait(10), f"the lock was not handed over when the holder {ending}"
        waiter.join()
        holder.wait(10)
        holder.stdin.close()
        holder.stdout.close()
