"""Outputs written whole or not at all: :func:`atomic_output` (dependency-free, used by every writer).

One rule for every output, a file or a folder (an adapter's ``save_pretrained`` folder, a folder of PNG frames):
it is written under a temporary name (``.NAME.*.partial``) in its own folder, flushed to disk, and renamed to the
final name only when complete. On any failure (an exception, a full disk, Ctrl-C) the temporary file or folder
and any folder made for it are removed; after a SIGKILL only the temporary name can be left, which no reader
takes for a finished output (they look for the final name only). Outputs get the permissions a plain ``open()``
/ ``mkdir()`` would give them (umask applied), not the 0600/0700 of :mod:`tempfile`, so another account (a web
server, a ComfyUI running as another user) can read them.

A write that fails for lack of space surfaces as an :class:`OSError` naming the *final* path, whatever library
wrote the bytes (safetensors and torch report it as their own exception types; :func:`as_write_error` converts
them), and :func:`describe_write_error` turns it into the one sentence the command lines print.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_output", "default_file_mode", "as_write_error", "describe_write_error", "DISK_FULL_ERRNOS",
           "fsync_dir"]

# A full disk, a file larger than the file system or the process's limit allows (RLIMIT_FSIZE), a full quota.
DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None)) if e is not None)
# Fault injection for the crash-safety tests: "SECONDS" or "SECONDS@GLOB" pauses (every output, or those whose
# final path, in / form, matches GLOB) with the output complete under its temporary name, just before the rename:
# the last moment a kill can leave anything behind.
_PAUSE_ENV = "SURGSORA_ATOMIC_PAUSE"


def default_file_mode(folder: bool = False) -> int:
    """0666 (0777 for a folder) less this process's umask: the mode ``open(path, "w")`` / ``mkdir`` would give."""
    base = 0o777 if folder else 0o666
    try:  # Linux reports it without changing it (os.umask would set it, racing other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return base & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return base & ~mask


def as_write_error(exc: BaseException, path: str | os.PathLike | None = None) -> OSError | None:
    """``exc`` as an :class:`OSError` naming ``path`` when it is a failed write, else None.

    An OSError is returned as it is, or, when it names no file or a temporary one, as a new OSError naming ``path``.

    safetensors reports an I/O error as ``SafetensorError("... (os error 28)")`` and torch's zip writer as a
    ``RuntimeError`` ("PytorchStreamWriter failed writing ...", "unexpected pos ..."); both become OSErrors with
    the errno they carry (ENOSPC when torch gives none: its writer fails only when the bytes cannot be written).
    """
    name = str(path) if path is not None else None
    if isinstance(exc, OSError):
        if name is None or exc.errno is None or (exc.filename and ".partial" not in str(exc.filename)):
            return exc
        return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), name)  # the user knows the final name
    text = str(exc)
    if type(exc).__name__ == "SafetensorError":
        m = re.search(r"os error (\d+)", text)
        if m:
            code = int(m.group(1))
            return OSError(code, os.strerror(code), name)
    if isinstance(exc, RuntimeError) and ("PytorchStreamWriter" in text or "unexpected pos" in text):
        m = re.search(r"errno (\d+)", text)
        code = int(m.group(1)) if m else errno.ENOSPC
        return OSError(code, os.strerror(code), name)
    return None


def describe_write_error(exc: BaseException, flag: str = "--out") -> str | None:
    """One sentence for a write that failed for lack of space (what failed, which file, the fix), else None."""
    err = as_write_error(exc)
    if err is None or err.errno not in DISK_FULL_ERRNOS:
        return None
    what = f"could not write {err.filename}" if err.filename else "could not write the output"
    reason = {errno.ENOSPC: "the disk is full", errno.EFBIG: "the file is larger than this disk or account allows"}
    return (f"{what}: {reason.get(err.errno, 'the disk quota is full')} ({err.strerror or os.strerror(err.errno)}); "
            f"nothing was left under that name. Free some space or choose another {flag}.")


def fsync_dir(p: Path) -> None:
    """Make a rename in folder ``p`` durable (best effort: Windows cannot open a folder for fsync, and its renames
    are durable without it)."""
    with contextlib.suppress(OSError):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pause_for_tests(path: Path) -> None:
    seconds, _, glob = os.environ.get(_PAUSE_ENV, "").strip().partition("@")
    if seconds and (not glob or fnmatch.fnmatch(path.as_posix(), glob)):
        time.sleep(float(seconds))


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it to ``path``.

    With ``folder=True`` the temporary path is an empty folder to fill (``save_pretrained``, frame files) and
    a folder already at ``path`` is replaced as a whole. On any failure (exception, interrupt) the temporary
    file or folder, and any parent folder created for it, are removed, ``path`` is left as it was, and a failed
    write is re-raised as an :class:`OSError` naming ``path`` (see :func:`as_write_error`): never a truncated
    output under the final name.
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
        if folder:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
            with contextlib.suppress(AttributeError, OSError):
                os.chmod(tmp, default_file_mode(folder=True))
        else:
            fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
            tmp = Path(name)
            try:
                os.fchmod(fd, default_file_mode())
            except (AttributeError, OSError):  # no fchmod (Windows): mkstemp's mode stays
                pass
            os.close(fd)
        yield tmp
        for f in (sorted(q for q in tmp.rglob("*") if q.is_file()) if folder else [tmp]):
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        _pause_for_tests(path)
        if folder and path.is_dir():  # replace the old folder: move it aside, rename, then delete it
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)  # the rename itself reaches the disk
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp) if folder else tmp.unlink()
        for d in created:  # deepest first; only if still empty
            with contextlib.suppress(OSError):
                d.rmdir()
        err = as_write_error(exc, path) if isinstance(exc, Exception) else None
        if err is not None and err is not exc:
            raise err from exc
        raise
