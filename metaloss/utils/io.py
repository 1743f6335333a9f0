"""Safe file writes: atomic (a crash mid-write never leaves a half-written file under the final name),
and :func:`clashing_input`, which finds the input an output path would overwrite."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from metaloss.utils.memory import proc_status_field


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask (``mkstemp`` gives 0600).

    The umask is read from ``/proc/self/status`` where it is there: setting it to read it back would
    briefly change it for every thread of the process (writers run in threads)."""
    field = proc_status_field("Umask")
    if field is not None:
        umask = int(field, 8)
    else:
        umask = os.umask(0)
        os.umask(umask)
    return 0o666 & ~umask


def same_path(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` name one file or folder: equal resolved paths (``..`` and links
    followed, so this holds for paths that do not exist yet), or ``os.path.samefile`` when both exist
    (hard links, bind mounts)."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def clashing_input(output: str | os.PathLike[str], inputs: Iterable[Path]) -> Path | None:
    """The first of ``inputs`` that ``output`` names (see :func:`same_path`), or None.  Commands check
    their outputs with it before any work, so that a mistyped path never replaces a source."""
    return next((p for p in inputs if same_path(output, p)), None)


@contextlib.contextmanager
def naming_the_file(path: str | os.PathLike[str]) -> Iterator[None]:
    """An ``OSError`` raised inside that names no file is raised again naming ``path``: ``write()`` and
    ``fsync()`` name none, and a full disk must say which file could not be written."""
    try:
        yield
    except OSError as err:
        if err.filename is None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``; the file gets
    the permissions of a normally created one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with naming_the_file(path):
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, default_file_mode())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())
