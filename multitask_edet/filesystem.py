"""Output folders that are checked before work starts, and write failures said in one line.

A command that runs for an hour and then cannot write its result has wasted the hour:
``ensure_writable_dir`` proves a folder writable (by creating and removing a probe file)
before any work. When a write fails anyway (disk full, quota, read-only mount, permission),
``describe_os_error`` turns the ``OSError`` into one line that names the path and the cause,
and ``write_error_from`` recovers that ``OSError`` from libraries that wrap it (torch's
``torch.save`` raises "enforce fail at inline_container.cc"; safetensors raises its own
error type that quotes "os error N").

This module imports nothing heavy: the command line uses it before torch is loaded.
"""
from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path

#: errno → what a user should read, and what to do about it
_CAUSES = {
    errno.ENOSPC: ("no space left on the device", "free some space or write elsewhere"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space or write elsewhere"),
    errno.EFBIG: ("the file grew past the size limit (ulimit -f or the file system's maximum)",
                  "raise the limit or write elsewhere"),
    errno.EROFS: ("the file system is read-only", "choose a writable folder"),
    errno.EACCES: ("permission denied", "choose a folder you can write to, or fix its permissions"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write to, or fix its permissions"),
    errno.EIO: ("an input/output error from the device", "check the disk (dmesg) and retry"),
}


def describe_os_error(e: OSError) -> str:
    """One line: which path and why, e.g. "runs/x/last.pt: no space left on the device; free ..."."""
    where = e.filename if e.filename2 is None else f"{e.filename} -> {e.filename2}"
    cause, fix = _CAUSES.get(e.errno, (e.strerror or str(e), ""))
    text = f"{where}: {cause}" if where is not None else cause
    return text + (f"; {fix}" if fix else "")


_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)")


def write_error_from(e: BaseException, path: str | os.PathLike) -> OSError | None:
    """The ``OSError`` behind a library's write failure, with ``path`` as its file name.

    Looks through the exception's ``__cause__``/``__context__`` chain for an ``OSError``
    (torch.save writing to a Python file object keeps it there) and, failing that, for the
    "os error N" that Rust-based libraries (safetensors) quote. None when there is none.
    """
    seen = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno is not None:
            return OSError(cur.errno, os.strerror(cur.errno), os.fspath(path))
        m = _OS_ERROR_IN_TEXT.search(str(cur))
        if m:
            code = int(m.group(1))
            return OSError(code, os.strerror(code), os.fspath(path))
        cur = cur.__cause__ or cur.__context__
    return None


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def ensure_writable_dir(path: str | os.PathLike, create: bool = True) -> Path:
    """Make sure files can be written into folder ``path``; raise the ``OSError`` if not.

    ``create=True`` creates the folder (and its parents). ``create=False`` leaves the disk as
    it is: the folder, or the nearest existing folder above it, must accept a new file — for
    commands that must not leave a folder behind when they refuse to run. A probe file is
    created and removed at once (``os.access`` is wrong on read-only mounts, with ACLs, and
    for root).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(path))
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(path)) from None
        target = path
    else:
        target = _nearest_existing(path)
    try:
        with tempfile.TemporaryFile(dir=target, prefix=".mtedet-write-probe-"):
            pass
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(target)) from None
    return path


__all__ = ["describe_os_error", "ensure_writable_dir", "write_error_from"]
