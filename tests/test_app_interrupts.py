"""A second Ctrl-C while a checkpoint is being written: the write finishes, the run ends with one
line and exit code 130, and the run folder holds a complete checkpoint and no temporary file.

The signals are real (``os.kill`` of this process, handled by the app's own handler); they are
sent from inside the checkpoint's file writes, where torch's zip writer would otherwise turn the
KeyboardInterrupt into a RuntimeError and a traceback.
"""
import os
import signal

import pytest

from compressor import checkpoint as ckpt_io
from compressor.checkpoint import read_checkpoint
from compressor_apps import epochs
from compressor_apps.compress_classifier import main

ARGS = ["--arch", "simplenet_mnist", "--dataset", "digits", "-b", "64", "--etrs", "0.3",
        "--evs", "0.2", "--etes", "0.1", "--lr", "0.05", "--no-progress-bar", "--epochs", "1",
        "--seed", "1"]


class SignallingFile:
    """A file whose n-th writes send SIGINT to this process (then write as usual)."""

    def __init__(self, f, at):
        self.f, self.at, self.calls = f, at, 0

    def write(self, data):
        self.calls += 1
        if self.calls in self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def signal_during_checkpoint_writes(monkeypatch, at):
    real = ckpt_io.atomic_write
    monkeypatch.setattr(ckpt_io, "atomic_write",
                        lambda path, write: real(path, lambda f: write(SignallingFile(f, at))))


def only_dir(out):
    (d,) = os.listdir(out)
    return os.path.join(out, d)


@pytest.mark.slow   # trains part of an epoch in-process (~3 s)
def test_second_ctrl_c_while_saving_the_stop_checkpoint_lets_it_finish(tmp_path, monkeypatch, capsys):
    real_call = epochs.StopFlag.__call__
    steps = {"n": 0}

    def first_ctrl_c_after_step_2(self):
        steps["n"] += 1
        if steps["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_call(self)

    monkeypatch.setattr(epochs.StopFlag, "__call__", first_ctrl_c_after_step_2)
    signal_during_checkpoint_writes(monkeypatch, at={2})
    assert main(ARGS + ["-o", str(tmp_path)]) == 128 + signal.SIGINT
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and err == ""
    assert "Stopped by SIGINT at epoch 0, minibatch 2; saved" in out
    folder = only_dir(tmp_path)
    assert read_checkpoint(os.path.join(folder, "checkpoint.pth.tar"))["extras"]["resume_minibatch"] == 2
    assert not [f for f in os.listdir(folder) if f.startswith(".tmp")]


@pytest.mark.slow   # trains an epoch in-process (~4 s)
def test_two_ctrl_c_while_saving_an_epochs_checkpoint_finish_it_then_abort_in_one_line(
        tmp_path, monkeypatch, capsys):
    signal_during_checkpoint_writes(monkeypatch, at={2, 4})   # stop, then abort, mid-write
    assert main(ARGS + ["-o", str(tmp_path)]) == 130
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out + err, err
    assert lines[0].startswith("compress_classifier: interrupted")
    folder = only_dir(tmp_path)
    assert read_checkpoint(os.path.join(folder, "checkpoint.pth.tar"))["epoch"] == 0   # complete
    assert not [f for f in os.listdir(folder) if f.startswith(".tmp")]


def test_ctrl_c_inside_torchs_writer_is_a_keyboard_interrupt_and_leaves_no_file(tmp_path, monkeypatch):
    """Without the app's handler (a library user): torch wraps it in a RuntimeError; it comes out
    as the KeyboardInterrupt it was, and the temporary file is removed."""
    from compressor.models import create_model
    path = tmp_path / "c.pth.tar"

    def interrupting(f):
        class Raising(SignallingFile):
            def write(self, data):
                self.calls += 1
                if self.calls == 3:
                    raise KeyboardInterrupt
                return self.f.write(data)
        return Raising(f, set())

    real = ckpt_io.atomic_write
    monkeypatch.setattr(ckpt_io, "atomic_write",
                        lambda p, write: real(p, lambda f: write(interrupting(f))))
    with pytest.raises(KeyboardInterrupt):
        ckpt_io.save_checkpoint(str(path), create_model("simplenet_mnist"))
    assert os.listdir(tmp_path) == []
