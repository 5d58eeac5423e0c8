"""`shiftadd train` on the command line: re-running a command with --resume, progress output in logs."""
import io

import pytest
import torch

from shiftadd.cli import main
from shiftadd.train import load_checkpoint, make_config, train
from shiftadd.train.loop import show_progress_bar

ARGS = ["--model", "mnist-mlp", "--op", "shift-ps", "-O", "hidden=32", "--dataset", "embedded", "--subset", "64",
        "--test-subset", "100", "--batch-size", "16", "--test-batch-size", "50", "--recipe", "deepshift",
        "--milestones", "0.5", "--lr", "0.05", "--threads", "1", "--device", "cpu"]


class _Stop(Exception):
    pass


def _interrupted_run(out, epochs=3):
    """The run ``shiftadd train ARGS --epochs 3 --out OUT`` would start, stopped after its first epoch."""
    cfg = make_config("deepshift", model="mnist-mlp", op="shift-ps", model_options={"hidden": 32}, dataset="embedded",
                      subset=64, test_subset=100, batch_size=16, test_batch_size=50, milestones=[0.5], lr=0.05,
                      threads=1, device="cpu", epochs=epochs)

    def stop(msg):
        if msg.startswith("epoch 1/"):
            raise _Stop()

    with pytest.raises(_Stop):
        train(cfg, str(out), log=stop)
    assert load_checkpoint(str(out)).epoch == 1


def test_the_same_command_with_resume_added_continues_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    _interrupted_run(out)
    code = main(["train", *ARGS, "--epochs", "3", "--out", str(out), "--resume", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert load_checkpoint(str(out)).epoch == 3 and "resuming" in captured.out


def test_a_real_change_when_resuming_is_refused_naming_the_field_and_both_values(tmp_path, capsys):
    out = tmp_path / "run"
    _interrupted_run(out)
    args = [a if a != "16" else "32" for a in ARGS]  # --batch-size 32 instead of 16
    code = main(["train", *args, "--epochs", "3", "--resume", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--batch-size cannot change" in err and "16" in err and "32" in err
    code = main(["train", *ARGS, "-O", "hidden=64", "--epochs", "3", "--resume", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "-O hidden" in err and "32" in err and "64" in err
    # the resumable settings may differ (a longer run, other threads); the run then continues
    assert main(["train", *ARGS[:-4], "--threads", "1", "--epochs", "4", "--resume", str(out)]) == 0
    assert load_checkpoint(str(out)).epoch == 4


def test_progress_output_to_a_file_has_no_carriage_returns(tmp_path, monkeypatch):
    from shiftadd.data import load_dataset

    tr, te = load_dataset("embedded", subset=64, seed=0)
    data = (tr, te.subset(torch.arange(0, len(te), 10)))
    cfg = make_config("deepshift", model="mnist-mlp", op="shift-ps", model_options={"hidden": 32},
                      dataset="embedded", subset=64, batch_size=16, epochs=2, threads=1, progress=True)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    lines = []
    for stream, env, expect_bar in [(io.StringIO(), None, False), (Terminal(), "1", False), (Terminal(), None, True)]:
        monkeypatch.setattr("sys.stderr", stream)
        if env:
            monkeypatch.setenv("NO_PROGRESS", env)
        else:
            monkeypatch.delenv("NO_PROGRESS", raising=False)
        assert show_progress_bar(cfg) is expect_bar
        lines.clear()
        train(cfg, None, data=data, log=lines.append)
        written = stream.getvalue()
        assert ("\r" in written) is expect_bar  # a redrawn bar only on a terminal without NO_PROGRESS
        assert sum(line.startswith("epoch ") for line in lines) == 2  # one plain line per epoch either way
    assert not show_progress_bar(make_config(progress=False), Terminal())
