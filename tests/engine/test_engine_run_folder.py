"""engine/run_folder.py: one owner per run folder, no writes before the decision, no debris.

The unit tests drive RunFolder directly; the item tests go through `mtedet train`.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from multitask_edet.cli import main
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

    fresh = tmp_path / "new" / "run"  # a new run: its folders go too, once released
    with RunFolder(fresh) as folder:
        folder.commit()
        folder.write_text("config.yaml", "tasks: [det]\n")
        (fresh / "tb").mkdir()
        (fresh / "tb" / "events.out").write_bytes(b"x")
        assert sorted(p.name for p in folder.abandon()) == ["config.yaml", "tb"]
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------- through `mtedet train`

def _wait_for(predicate, proc, timeout=240.0):
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError("timed out")


def _stat(path):
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns


def test_item4_a_second_training_on_the_same_output_is_refused_and_writes_nothing(shapes_root, tmp_path, tiny_args,
                                                                                 capsys):
    out = tmp_path / "run"
    first = tiny_args(shapes_root, out, "det", "--epochs", "200", "--set", "eval.every_epochs=0")
    proc = subprocess.Popen([sys.executable, "-m", "multitask_edet", *first], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        metrics = out / "metrics.jsonl"
        _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, proc)  # it is training
        _wait_for(lambda: (out / "last.pt").exists(), proc)  # and has a checkpoint a --resume could take
        # Held still (SIGSTOP: alive, still the lock's owner) so that its own saves cannot change the
        # folder while the refused commands run: the folder must then be exactly as it was.
        proc.send_signal(signal.SIGSTOP)
        before = _snapshot_all(out)
        for second in (tiny_args(shapes_root, out, "det", "--max-steps", "1"), [*first, "--resume"]):
            assert main(second) == 73  # cli.EXIT_BUSY
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and f"PID {proc.pid} on host {socket.gethostname()}" in err
            assert f"run folder {out} is in use" in err
        assert _snapshot_all(out) == before  # config.yaml and everything else untouched, nothing added
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]  # the first run was never disturbed: stopped, resumable
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == sorted(set(steps)), steps  # one writer: no interleaved or repeated steps


def _snapshot_all(folder):
    return {p.relative_to(folder).as_posix(): _stat(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_item5_a_refused_resume_changes_nothing(shapes_root, tmp_path, tiny_args, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(shapes_root, out, "det", "--max-steps", "1")) == 0
    before = _snapshot_all(out)
    capsys.readouterr()
    # a change of the network: the checkpoint does not fit it, so the resume is refused
    assert main([*tiny_args(shapes_root, out, "det", "--max-steps", "2"), "--resume",
                 "--set", "model.neck.channels=24"]) == 2
    err = capsys.readouterr().err
    assert "does not fit this run" in err and "config.yaml" in err
    assert _snapshot_all(out) == before  # config.yaml, last.pt, metrics.jsonl: same bytes, same times
    assert not (out / LOCK_NAME).exists()


def _all_images(root):
    return sorted((root / "COCO" / "train2017").glob("*.jpg")) + sorted((root / "VOC" / "JPEGImages").glob("train_*.jpg"))


def test_item6_a_failure_before_the_first_step_leaves_nothing_that_blocks_a_rerun(shapes_root, tmp_path, tiny_args,
                                                                                 capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shapes_root, data)
    originals = {p: p.read_bytes() for p in _all_images(data)}
    assert originals
    for p in originals:  # every training image broken: the first batch fails to load
        p.write_bytes(p.read_bytes()[:200])
    out = tmp_path / "runs" / "first"
    argv = tiny_args(data, out, "det", "--max-steps", "1")
    assert main(argv) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # no last.pt, no model.safetensors, no config.yaml: no folder at all

    for p, raw in originals.items():
        p.write_bytes(raw)
    assert main(argv) == 0  # the same command simply runs
    assert (out / "last.pt").is_file() and (out / "model.safetensors").is_file()


def test_a_run_killed_before_its_first_checkpoint_is_simply_run_again(shapes_root, tmp_path, tiny_args):
    out = tmp_path / "run"
    # the first last.pt comes at the end of epoch 1 (4 steps): a kill at config.yaml lands before it
    argv = tiny_args(shapes_root, out, "det", "--max-steps", "6", "--set", "eval.every_epochs=0")
    proc = subprocess.Popen([sys.executable, "-m", "multitask_edet", *argv], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (out / "config.yaml").exists(), proc, timeout=240.0)
    proc.send_signal(signal.SIGKILL)  # no clean-up code runs: the .lock file and config.yaml stay behind
    proc.wait()
    assert (out / LOCK_NAME).exists() and not (out / "last.pt").exists()
    assert main(argv) == 0  # the dead process's lock died with it
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps == list(range(1, 7)) and not (out / LOCK_NAME).exists()


def test_item7_stale_temp_files_from_a_killed_save_are_removed_at_the_next_start(shapes_root, tmp_path, tiny_args,
                                                                               capsys):
    out = tmp_path / "run"
    assert main(tiny_args(shapes_root, out, "det", "--max-steps", "1")) == 0
    stale = [out / ".last.pt.3kd9x_2a.tmp", out / ".model.safetensors.q8z0b1xm.tmp", out / ".best.pt.aaaaaaaa.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint" * 1000)
    (out / "my_notes.tmp").write_text("a file of the user's, not a temp file of a save")
    capsys.readouterr()
    assert main([*tiny_args(shapes_root, out, "det", "--max-steps", "2"), "--resume"]) == 0
    assert "removed 3 temporary file(s) that an interrupted save left" in capsys.readouterr().out
    assert not any(p.exists() for p in stale) and (out / "my_notes.tmp").exists()
