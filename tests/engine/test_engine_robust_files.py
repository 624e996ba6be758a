"""Files that go wrong: disk full, unwritable folders, empty or unsafe checkpoints, kills mid-save, stops."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from multitask_edet.cli import main

ENV = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("mtedet ")]
    assert "Traceback" not in err and len(lines) == 1, err[-3000:]
    return lines[0]


# ---------------------------------------------------------------------------- stops and disks

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])  # a scheduler's preemption; one Ctrl-C
def test_sigterm_stop_exits_with_the_resumable_code(signum, shapes_root, tmp_path, tiny_args, monkeypatch, capsys):
    from multitask_edet.engine.trainer import Trainer

    real = Trainer.run_step

    def step_then_sigterm(self, batch):
        real(self, batch)
        if self.step == 0:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(Trainer, "run_step", step_then_sigterm)
    out = tmp_path / "stopped"
    code = main(tiny_args(shapes_root, out, "det", "--max-steps", "3", "--set", "train.ema=false"))
    assert code == 75, capsys.readouterr()
    assert "--resume" in capsys.readouterr().out
    # the stop flag is read inside the next step (so that DDP ranks agree), which then finishes
    assert torch.load(out / "last.pt", weights_only=True)["state"]["step"] == 2
    monkeypatch.setattr(Trainer, "run_step", real)
    assert main([*tiny_args(shapes_root, out, "det", "--max-steps", "3", "--set", "train.ema=false"), "--resume"]) == 0


def _limit_file_size(limit: int):
    import resource

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_during_a_checkpoint_is_one_line_naming_the_file(shapes_root, tmp_path, tiny_args):
    # RLIMIT_FSIZE makes every write past 64 kB fail, as a full disk does (EFBIG instead of ENOSPC):
    # config.yaml and metrics.jsonl fit, the checkpoint does not
    out = tmp_path / "full"
    args = tiny_args(shapes_root, out, "det", "--max-steps", "1", "--set", "train.ema=false",
                     "--set", "eval.every_epochs=0")
    proc = subprocess.run([sys.executable, "-m", "multitask_edet", *args], env=ENV, capture_output=True, text=True,
                          preexec_fn=_limit_file_size(64 * 1024), timeout=300)
    line = _one_line(proc.stderr)
    assert proc.returncode == 74, proc.stderr[-2000:]
    assert str(out / "last.pt") in line and "size limit" in line
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no half-written file left behind


def test_eval_checks_its_output_folder_before_inference(trained_run, tmp_path, monkeypatch, capsys):
    import multitask_edet.engine.commands as commands_module

    calls = []
    monkeypatch.setattr(commands_module, "evaluate_trained", lambda *a, **k: calls.append(1))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["eval", "--checkpoint", str(trained_run / "best.pt"), "--device", "cpu",
                 "--output", str(blocker / "report")])
    line = _one_line(capsys.readouterr().err)
    assert code in (2, 74) and str(blocker) in line
    assert not calls, "the inference ran before the output folder was known to be writable"


def _refuses_writes(folder) -> bool:
    try:
        (folder / "probe").write_text("")
    except PermissionError:
        return True
    (folder / "probe").unlink()
    return False


@contextlib.contextmanager
def read_only_folder(folder):
    """``folder`` made unwritable; yields the cause the one-line error must give.

    chmod 0500 for a normal user. Root (CAP_DAC_OVERRIDE) writes into 0500 folders anyway, so
    for root the folder gets the immutable attribute (``chattr +i``, ext4/xfs/btrfs), which
    refuses new files to root as well (EPERM). Skips where neither bites.
    """
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if _refuses_writes(folder):
            yield "permission denied"
            return
        folder.chmod(0o700)
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("this user writes into 0500 folders (root) and the immutable attribute is unavailable here")
        try:
            if not _refuses_writes(folder):
                pytest.skip("neither chmod 0500 nor chattr +i stops this user writing")
            yield "operation not permitted"
        finally:
            subprocess.run([chattr, "-i", str(folder)], check=True)
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("command", ["train", "eval", "predict", "export"])
def test_read_only_output_folders_are_refused_before_work(command, trained_run, shapes_root, tmp_path, tiny_args,
                                                          capsys):
    ro = tmp_path / "ro"
    with read_only_folder(ro) as cause:
        ckpt = str(trained_run / "best.pt")
        argv = {
            "train": tiny_args(shapes_root, ro / "run", "det", "--max-steps", "1"),
            "eval": ["eval", "--checkpoint", ckpt, "--device", "cpu", "--output", str(ro / "ev")],
            "predict": ["predict", "--checkpoint", ckpt, str(shapes_root), "--out", str(ro / "p"), "--device", "cpu"],
            "export": ["export", "--checkpoint", ckpt, str(ro / "m.onnx"), "--no-check"],
        }[command]
        assert main(argv) == 74
        line = _one_line(capsys.readouterr().err)
        assert str(ro) in line and cause in line
        assert list(ro.iterdir()) == []  # refused before anything was written


# ---------------------------------------------------------------------------- checkpoints

def test_empty_checkpoint_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "last.pt"
    empty.write_bytes(b"")
    assert main(["eval", "--checkpoint", str(empty), "--device", "cpu"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(empty) in line and "empty (0 bytes)" in line
    assert main(["train", "--output", str(tmp_path), "--resume"]) == 2
    assert "empty (0 bytes)" in _one_line(capsys.readouterr().err)


class _Payload:
    """Pickles as a call that would create a file: proof of whether loading ran it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_checkpoint_is_not_loadable_safely(trained_run, tmp_path, capsys):
    from multitask_edet.engine.checkpoint import load_checkpoint
    from multitask_edet.errors import CheckpointError
    from multitask_edet.state_dict import read_state_dict

    marker = tmp_path / "payload-ran"
    ckpt = torch.load(trained_run / "best.pt", weights_only=True)
    ckpt["note"] = _Payload(marker)
    evil = tmp_path / "evil.pt"
    torch.save(ckpt, evil)
    assert main(["eval", "--checkpoint", str(evil), "--device", "cpu"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "not loadable safely" in line and "pickled Python objects" in line and "corrupt" not in line
    for load in (load_checkpoint, read_state_dict):
        with pytest.raises(CheckpointError, match="not loadable safely"):
            load(evil)
    assert not marker.exists()


def test_stale_temp_files_from_a_kill_during_save_are_removed(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = (run / "last.pt").read_bytes()
    # a real kill -9 in the middle of atomic_write: half the bytes written, the process gone
    script = textwrap.dedent(f"""
        import os, signal
        from multitask_edet.engine.checkpoint import atomic_write
        def write(tmp):
            with open(tmp, "wb") as f:
                f.write(b"x" * 100000)
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        atomic_write({str(run / 'last.pt')!r}, write)
    """)
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True)
        assert proc.returncode == -signal.SIGKILL
    stale = sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp"))
    assert len(stale) == 2 and all(n.startswith(".last.pt.") for n in stale)

    from multitask_edet.engine.checkpoint import remove_stale_temp_files

    removed = remove_stale_temp_files(run)
    assert sorted(p.name for p in removed) == stale
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert (run / "last.pt").read_bytes() == before  # the finished checkpoint is untouched
