"""`shiftadd models / train / eval`: outputs, files, and one-line errors with exit code 2."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shiftadd.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "embedded", "--subset", "40", "--test-subset", "100", "--epochs", "1", "--batch-size", "20",
        "--model", "resnet8", "-O", "width=4", "--threads", "1", "--no-progress"]


def run(args, capsys):
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_models_lists_architectures_and_ops(capsys):
    code, out, _ = run(["models"], capsys)
    assert code == 0
    for word in ("resnet20", "resnet110", "vgg-small", "vgg19-small", "mnist-mlp", "mnist-cnn", "lenet5", "har-cnn",
                 "shift-ps", "shiftadd-fixed", "adder"):
        assert word in out
    code, out, _ = run(["models", "--json"], capsys)
    data = json.loads(out)
    assert {m["name"] for m in data["models"]} >= {"resnet20", "vgg-small"}
    assert [o["name"] for o in data["ops"]][:2] == ["conv", "adder"]


def test_train_then_eval_and_resume(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run(["train", *TINY, "--op", "shiftadd", "--out", str(out_dir)], capsys)
    assert code == 0, err
    assert "done: test accuracy" in out
    rows = [json.loads(l) for l in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"} <= set(rows[0])
    assert (out_dir / "curves.png").is_file() and (out_dir / "checkpoint.json").is_file()
    assert not [p for p in os.listdir(out_dir) if ".tmp" in p]
    code, out, err = run(["eval", "--checkpoint", str(out_dir)], capsys)
    assert code == 0, err
    assert f"accuracy {100 * rows[0]['test_acc']:.2f}%" in out and f"loss {rows[0]['test_loss']:.4f}" in out
    code, out, _ = run(["eval", "--checkpoint", str(out_dir), "--json"], capsys)
    res = json.loads(out)
    assert res["acc"] == pytest.approx(rows[0]["test_acc"]) and res["n"] == 100
    # extend the finished run by one epoch
    code, out, err = run(["train", "--resume", str(out_dir), "--epochs", "2", "--no-progress"], capsys)
    assert code == 0, err
    assert len((out_dir / "metrics.jsonl").read_text().splitlines()) == 2


def test_yaml_config_and_flags_override_the_recipe(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("recipe: addernet\nlr: 0.05\nweight_decay: 0.001\nmodel_options: {width: 2}\n")
    out_dir = tmp_path / "run"
    code, _, err = run(["train", *TINY, "--op", "conv", "--config", str(cfg), "--lr", "0.02", "--out", str(out_dir)],
                       capsys)
    assert code == 0, err
    saved = json.loads((out_dir / "checkpoint.json").read_text())["config"]
    assert (saved["recipe"], saved["schedule"], saved["lr"], saved["weight_decay"]) == ("addernet", "cosine", 0.02,
                                                                                         0.001)
    assert saved["model_options"] == {"width": 4}  # -O from the command line wins over the file


@pytest.mark.parametrize("args, needles", [
    (["train", "--model", "resnet21", "--dataset", "embedded"], ["unknown model 'resnet21'"]),
    (["train", "--op", "mult", "--dataset", "embedded"], ["unknown op 'mult'"]),
    (["train", "--dataset", "imagenet"], ["unknown dataset"]),
    (["train", "--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], ["/nonexistent/cifar"]),
    (["train", "--dataset", "embedded", "--recipe", "fast"], ["unknown recipe 'fast'"]),
    (["train", "--dataset", "embedded", "--lr", "-1"], ["lr must be"]),
    (["train", "--dataset", "embedded", "--optimizer", "lbfgs"], ["unknown optimizer"]),
    (["train", "--dataset", "embedded", "--config", "/nonexistent.yaml"], ["config file not found"]),
    (["train", "--dataset", "embedded", "-O", "bogus_option=3", "--subset", "20", "--epochs", "1"],
     ["bogus_option"]),
    (["train", "--resume", "/nonexistent/run"], ["checkpoint not found"]),
    (["eval", "--checkpoint", "/nonexistent/run"], ["checkpoint not found"]),
    (["train", "--epochs", "0"], ["--epochs"]),
    (["train", "-O", "novalue"], ["KEY=VALUE"]),
])
def test_invalid_arguments_give_one_line_and_exit_2(args, needles, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(args, capsys)
    assert_user_error(code, err, *needles)


def test_invalid_files_give_one_line_and_exit_2(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("epochs: 1\nlearning_rate: 0.1\n")
    code, _, err = run(["train", "--dataset", "embedded", "--config", str(cfg)], capsys)
    assert_user_error(code, err, "unknown key 'learning_rate'")
    cfg.write_text("epochs: [1,\n")
    code, _, err = run(["train", "--dataset", "embedded", "--config", str(cfg)], capsys)
    assert_user_error(code, err, "not valid YAML")
    cfg.write_text("epochs: many\n")
    code, _, err = run(["train", "--dataset", "embedded", "--config", str(cfg)], capsys)
    assert_user_error(code, err, "epochs must be an integer")

    out_dir = tmp_path / "run"
    code, _, err = run(["train", *TINY, "--op", "conv", "--out", str(out_dir)], capsys)
    assert code == 0, err
    code, _, err = run(["train", *TINY, "--op", "conv", "--out", str(out_dir)], capsys)
    assert_user_error(code, err, "already holds a run", "--resume")
    code, _, err = run(["train", "--resume", str(out_dir), "--lr", "0.5"], capsys)
    assert_user_error(code, err, "--lr cannot change when resuming")
    code, _, err = run(["train", "--resume", str(out_dir)], capsys)
    assert_user_error(code, err, "already finished")
    tensors = next(out_dir.glob("state-*.safetensors"))
    tensors.write_bytes(b"\x00" * 16)
    code, _, err = run(["eval", "--checkpoint", str(out_dir)], capsys)
    assert_user_error(code, err, "corrupt")
    (out_dir / "checkpoint.json").write_text("[]")
    code, _, err = run(["eval", "--checkpoint", str(out_dir)], capsys)
    assert_user_error(code, err, "not a shiftadd checkpoint")


def test_errors_from_a_real_process_have_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "shiftadd.cli", "train", "--model", "nope", "--dataset", "embedded"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "unknown model 'nope'" in proc.stderr
