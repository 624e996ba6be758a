"""engine/run_folder.py: one owner per run folder, no writes before the decision, no debris."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from multitask_edet.engine.run_folder import LOCK_NAME, RunFolder
from multitask_edet.errors import RunFolderBusyError

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _holder(folder):
    """Another process that owns ``folder`` until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from multitask_edet.engine.run_folder import RunFolder
        RunFolder({str(folder)!r}).acquire()
        print("owned", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "owned"
    return proc


def test_a_second_process_is_refused_naming_the_owner_until_the_owner_dies(tmp_path):
    run = tmp_path / "run"
    proc = _holder(run)
    try:
        with pytest.raises(RunFolderBusyError) as e:
            RunFolder(run).acquire()
        message = str(e.value)
        assert f"PID {proc.pid} on host {socket.gethostname()}" in message and str(run) in message
        assert "\n" not in message
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no clean-up code runs
        proc.wait()
    assert (run / LOCK_NAME).exists()  # the dead owner's file is left ...
    with RunFolder(run) as folder:  # ... but its lock died with it
        assert f"PID {os.getpid()} " in (run / LOCK_NAME).read_text()
        assert folder.held


def test_nothing_is_written_before_commit_and_a_refusal_changes_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("tasks: [det]\n")
    (run / "last.pt").write_bytes(b"checkpoint bytes")
    before = _snapshot(run)
    with RunFolder(run) as folder:
        with pytest.raises(RuntimeError, match="before commit"):
            folder.write_text("config.yaml", "tasks: [seg]\n")
        with pytest.raises(RuntimeError, match="before commit"):
            folder.file("last.pt")
        # ... the command now finds that it must refuse (e.g. a --resume that does not fit)
    assert _snapshot(run) == before and not (run / LOCK_NAME).exists()

    fresh = tmp_path / "a" / "b" / "run"  # nothing of it exists yet
    with pytest.raises(ValueError):
        with RunFolder(fresh):
            raise ValueError("the data is broken")
    assert not (tmp_path / "a").exists()  # a failed start leaves no half-made folder


def test_commit_allows_writes_and_removes_stale_temp_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stale = [run / ".last.pt.k2j4x9_q.tmp", run / ".model.safetensors.abcdefgh.tmp"]
    for p in stale:
        p.write_bytes(b"x" * 1000)
    (run / "notes.tmp").write_text("the user's own file")
    with RunFolder(run) as folder:
        assert sorted(folder.commit()) == sorted(stale)
        folder.write_text("config.yaml", "tasks: [det]\n")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "notes.tmp"]


def test_abandon_removes_only_what_the_failed_run_created(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"the checkpoint a resume started from")
    with RunFolder(run) as folder:
        folder.commit()
        folder.write_text("config.yaml", "tasks: [det]\n")
        folder.write("model.safetensors", lambda tmp: open(tmp, "wb").write(b"untrained"))
        assert sorted(p.name for p in folder.abandon()) == ["config.yaml", "model.safetensors"]
    assert sorted(p.name for p in run.iterdir()) == ["last.pt"]
    assert (run / "last.pt").read_bytes() == b"the checkpoint a resume started from"
