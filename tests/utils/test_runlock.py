"""One writer per run directory (metaloss.utils.runlock)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from metaloss.utils import runlock
from metaloss.utils.runlock import LOCK_NAME, RunLock, RunLocked

HOLD = (
    "import sys, time; from metaloss.utils.runlock import RunLock; RunLock(sys.argv[1]).acquire(); "
    "print('held', flush=True); time.sleep(60)"
)


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    with RunLock(tmp_path / "run") as first:
        holder = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(RunLocked, match=rf"in use by PID {os.getpid()} on host {socket.gethostname()}"):
            RunLock(tmp_path / "run").acquire()
        assert first.fd is not None
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # released
    RunLock(tmp_path / "run").acquire().release()


def test_another_process_holding_the_lock_refuses_and_its_death_frees_it(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=f"PID {proc.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()
    lock = RunLock(tmp_path).acquire()  # the kernel released the dead holder's lock: taken over
    assert lock.took_over["pid"] == proc.pid
    lock.release()


def test_without_flock_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "fcntl", None)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "started": 0}))
    lock = RunLock(tmp_path).acquire()
    assert lock.took_over["pid"] == int(dead.stdout)
    with pytest.raises(RunLocked, match=f"PID {os.getpid()}"):  # a live holder is not taken over
        RunLock(tmp_path).acquire()
    lock.release()
