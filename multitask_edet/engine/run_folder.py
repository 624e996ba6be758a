"""A run folder owned by one process, and written only once the command has decided to run.

Three rules keep a run folder from losing or mixing work:

1. **One owner.** ``acquire()`` takes an exclusive ``fcntl.flock`` on ``<run>/.lock`` and writes
   the owner (PID, host, start time) into it. A second process is refused at once with a
   ``RunFolderBusyError`` that names the owner. The kernel drops the lock when the owner's
   process ends, however it ends (exit, exception, ``kill -9``), so a crashed run never
   leaves the folder locked; the stale ``.lock`` file it leaves is simply taken over.
2. **Nothing written before the decision.** Until ``commit()`` (the command has checked its
   config, its resume checkpoint and its data, and will run), the write methods refuse. A
   command that is refused — a ``--resume`` whose checkpoint does not fit, say — therefore
   changes nothing: ``release()`` removes the lock file and any folder ``acquire()`` created.
   ``commit()`` also deletes the temporary files a killed atomic save left behind
   (checkpoint.remove_stale_temp_files), which is safe then because this process owns the folder.
3. **A run that did not start leaves nothing behind.** ``abandon()`` (a run that failed before
   its first completed step) deletes the files and folders this run created since ``commit()``
   — a ``last.pt`` of an untrained model would only make re-running the same command refuse —
   and keeps every entry that was there before (a resumed run's checkpoint stays); the
   following ``release()`` also removes the run folder itself if ``acquire()`` created it.

Use it as a context manager (``with RunFolder(path) as run: ...; run.commit()``): leaving the
block releases the lock, and leaving it by an exception before ``commit()`` rolls back.
Only one process per run should hold it (rank 0 under DDP).
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Callable

from ..errors import RunFolderBusyError
from .checkpoint import atomic_write, remove_stale_temp_files

LOCK_NAME = ".lock"


class RunFolder:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock_path = self.path / LOCK_NAME
        self._fd: int | None = None
        self._created: list[Path] = []  # folders acquire() made, innermost first
        self._committed = False
        self._abandoned = False
        self._before_commit: set[str] = set()

    # ------------------------------------------------------------------ ownership
    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def committed(self) -> bool:
        return self._committed

    def acquire(self) -> "RunFolder":
        """Own the folder (creating it if needed) or raise ``RunFolderBusyError`` naming the owner."""
        if self.held:
            return self
        self._created = [p for p in (self.path, *self.path.parents) if not p.exists()]
        self.path.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                owner = _read_owner(fd)
                os.close(fd)
                self._remove_created()
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise RunFolderBusyError(
                    f"run folder {self.path} is in use by {owner or 'another process'}; wait for that run to end "
                    "(or stop it), or choose another --output"
                ) from None
            # the previous owner may have removed the lock file between our open() and flock():
            # then we hold a lock on a file nobody else can see; start again on the current file
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} on host {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self._fd = fd
        return self

    def commit(self) -> list[Path]:
        """The command will run: writes are allowed from now on. Returns the stale temp files removed."""
        self._require_held()
        self._committed = True
        self._before_commit = {p.name for p in self.path.iterdir()}
        return remove_stale_temp_files(self.path)

    def release(self) -> None:
        """Give the folder up; before ``commit()`` this also undoes ``acquire()`` entirely."""
        if not self.held:
            return
        try:
            os.unlink(self.lock_path)  # while still locked: no one can be holding the same file
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
        if not self._committed or self._abandoned:
            self._remove_created()

    def abandon(self) -> list[Path]:
        """The run failed before its first completed step: delete what it created; keep the rest."""
        self._require_committed("abandon")
        self._abandoned = True
        removed = []
        for p in sorted(self.path.iterdir()):
            if p.name in self._before_commit or p.name == LOCK_NAME:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        return removed

    # ------------------------------------------------------------------ writing
    def file(self, name: str) -> Path:
        """The path of a file to write in the folder (only after ``commit()``)."""
        self._require_committed(f"write {name}")
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        return self.write(name, lambda tmp: Path(tmp).write_text(text))

    def write(self, name: str, write: Callable[[str], None]) -> Path:
        """Atomically write ``name`` through ``write(tmp_path)`` (checkpoint.atomic_write)."""
        return atomic_write(self.file(name), write)

    # ------------------------------------------------------------------ internals
    def _require_held(self) -> None:
        if not self.held:
            raise RuntimeError(f"run folder {self.path} is not acquired; call acquire() first")

    def _require_committed(self, what: str) -> None:
        self._require_held()
        if not self._committed:
            raise RuntimeError(f"cannot {what} in {self.path} before commit(): the command has not decided to run yet")

    def _remove_created(self) -> None:
        for p in self._created:  # innermost first; only folders that are (again) empty
            try:
                p.rmdir()
            except OSError:
                break
        self._created = []

    def __enter__(self) -> "RunFolder":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "committed" if self._committed else ("held" if self.held else "free")
        return f"RunFolder({str(self.path)!r}, {state})"


def _read_owner(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 512).decode(errors="replace").strip()
    except OSError:
        return ""


__all__ = ["LOCK_NAME", "RunFolder"]
