"""One writer per run directory: an exclusive lock held for the life of the run.

Two ``metaloss run --resume RUN`` (a re-queued cluster job beside the one still running) would both
append to ``log.jsonl`` and replace ``checkpoints/last.pt``.  The lock is ``fcntl.flock`` on
``RUN/.lock``: the kernel releases it when its holder dies however it dies, so the lock of a dead process
is taken over without a timeout or a guess.  The file names the holder (PID, host, start time) for the
refusal message.  Where ``flock`` is unavailable (Windows, some network file systems) the file is created
exclusively instead, and a lock whose holder is a dead process on this host is taken over.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunLock", "RunLocked"]

LOCK_NAME = ".lock"


class RunLocked(RuntimeError):
    """Another live process holds the run directory's lock."""


def _holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    started = holder.get("started")
    since = (
        f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}"
        if isinstance(started, (int, float))
        else ""
    )
    return f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}{since}"


def _alive_here(holder: dict[str, Any]) -> bool:
    """Whether the holder is a live process on this host (a holder on another host counts as alive)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return bool(holder)
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


class RunLock:
    """``with RunLock(run_dir):`` holds ``run_dir/.lock`` (created with the directory's parents) or raises
    :class:`RunLocked` naming the holder.  ``took_over``: the holder of a stale lock, if one was replaced."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None
        self.took_over: dict[str, Any] = {}

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is not None:
            try:
                return self._flock()
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
        return self._exclusive_create()

    def _flock(self) -> RunLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLocked(
                    f"run directory {self.path.parent} is in use by {_describe(_holder(self.path))}"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            try:  # the file may have been removed by its last holder between our open and flock: lock it anew
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.took_over = _holder(self.path)  # a lock file left by a process that died holding it
        self._write(fd)
        return self

    def _exclusive_create(self) -> RunLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _holder(self.path)
                if _alive_here(holder):
                    raise RunLocked(f"run directory {self.path.parent} is in use by {_describe(holder)}") from None
                self.took_over = holder
                self.path.unlink(missing_ok=True)
                continue
            self._write(fd)
            return self
        raise RunLocked(
            f"run directory {self.path.parent}: another process took its lock while a stale one was replaced"
        )

    def _write(self, fd: int) -> None:
        self.fd = fd
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": round(time.time(), 3)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # before unlocking: a new holder never loses its file to us
        os.close(self.fd)  # closing releases the flock
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
