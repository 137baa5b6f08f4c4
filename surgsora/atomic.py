"""Outputs written whole or not at all: :func:`atomic_output` (dependency-free, used by every writer).

A file is written under a temporary name in its own folder, flushed to disk, and renamed over the final name only
when complete; on any failure (an exception, a full disk, Ctrl-C) the temporary file and any folder made for it
are removed. The file gets the permissions a plain ``open()`` would give it (0666 less the umask), not the 0600 of
:func:`tempfile.mkstemp`, so another account (a web server, a ComfyUI running as another user) can read it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_output", "default_file_mode"]


def default_file_mode() -> int:
    """0666 less this process's umask: the mode ``open(path, "w")`` would create a file with."""
    try:  # Linux reports it without changing it (os.umask would set it, racing other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it to ``path``.

    On any failure (exception, interrupt) the temporary file, and any folder created for it, are removed
    and ``path`` is left as it was: never a truncated file under the final name.
    """
    path = Path(path)
    created = []
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        created.append(parent)
        parent = parent.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
        tmp = Path(name)
        try:
            os.fchmod(fd, default_file_mode())
        except (AttributeError, OSError):  # no fchmod (Windows): mkstemp's mode stays
            pass
        os.close(fd)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        with contextlib.suppress(OSError):  # the rename itself reaches the disk (best effort, not on Windows)
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        for folder in created:  # deepest first; only if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
