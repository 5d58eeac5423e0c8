"""Issue 19: every failure a user can cause ends in one line (CLI exit 2), before any work is lost."""
import glob
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import shiftadd.nn as snn
from shiftadd.ops.adder import adder_conv2d

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--model", "mnist-mlp", "--op", "shift-ps", "-O", "hidden=16", "--dataset", "embedded", "--subset", "64",
         "--test-subset", "100", "--batch-size", "16", "--epochs", "1", "--threads", "1", "--device", "cpu"]


def cli(*args, cwd=None, env=None, user=None):
    """Run ``shiftadd ARGS`` in a subprocess; ``user`` runs it as that user (setpriv)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "shiftadd.cli", *map(str, args)]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user_group(user)}", "--clear-groups", *cmd]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


def user_group(user):
    return "nogroup" if user == "nobody" else user


def one_line_error(res, *words):
    err = res.stderr.strip()
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], err[-2000:])
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


# -- losing work or crashing late ------------------------------------------------------------------

def test_train_out_that_cannot_be_a_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = cli("train", *TRAIN, "--out", blocker / "run", cwd=tmp_path)
    one_line_error(res, "--out", "not a directory")
    assert "epoch" not in res.stdout  # nothing trained
    one_line_error(cli("train", *TRAIN, "--out", blocker, cwd=tmp_path), "is a file")


def test_bench_json_and_energy_plot_paths_checked_first(tmp_path):
    one_line_error(cli("bench", "--json", tmp_path / "missing" / "r.json", cwd=tmp_path), "--json", "does not exist")
    one_line_error(cli("bench", "--json", tmp_path, cwd=tmp_path), "--json", "is a directory")
    one_line_error(cli("energy", "--model", "resnet8", "--plot", tmp_path, cwd=tmp_path), "--plot", "is a directory")
    (tmp_path / "f").write_text("x")
    one_line_error(cli("demo", "--out", tmp_path / "f", cwd=tmp_path), "--out", "is a file")


def _shared_tmp():
    """A folder another user can enter (pytest's tmp_path is private to root)."""
    d = tempfile.mkdtemp(prefix="shiftadd-perm-")
    os.chmod(d, 0o755)
    return Path(d)


def _can_run_as_nobody():
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return "needs root and setpriv to run a command as another user"
    try:
        res = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c",
                              "import shiftadd"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"setpriv failed: {exc}"
    return None if res.returncode == 0 else f"user nobody cannot import shiftadd here: {res.stderr.strip()[-200:]}"


def test_checkpoint_files_respect_the_umask_and_unreadable_runs_say_permission_denied():
    why = _can_run_as_nobody()
    if why:
        pytest.skip(why)
    base = _shared_tmp()
    try:
        run = base / "run"
        old = os.umask(0o022)
        try:
            assert cli("train", *TRAIN, "--out", run, cwd=base).returncode == 0
        finally:
            os.umask(old)
        for f in run.iterdir():
            if f.is_file():
                assert stat.S_IMODE(f.stat().st_mode) == 0o644, (f, oct(f.stat().st_mode))
        res = cli("eval", "--checkpoint", run, "--json", cwd=base, user="nobody")
        assert res.returncode == 0, res.stderr  # another user can evaluate a shared run
        os.chmod(run, 0o700)
        one_line_error(cli("eval", "--checkpoint", run, cwd=base, user="nobody"), "permission denied", str(run))
        os.chmod(run, 0o755)
        state = next(run.glob("state-*.safetensors"))
        os.chmod(state, 0o600)
        one_line_error(cli("eval", "--checkpoint", run, cwd=base, user="nobody"), "permission denied", state.name)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_train_into_a_read_only_folder_fails_before_training_as_another_user():
    why = _can_run_as_nobody()
    if why:
        pytest.skip(why)
    base = _shared_tmp()
    try:
        res = cli("train", *TRAIN, "--out", base / "run", cwd=base, user="nobody")
        one_line_error(res, "permission denied", "--out")
        assert "epoch" not in res.stdout
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_resume_removes_stale_temporary_state_files_and_accepts_checkpoint_json(tmp_path):
    run = tmp_path / "run"
    assert cli("train", *TRAIN, "--out", run, cwd=tmp_path).returncode == 0
    stale = run / "state-0002.safetensors.tmp-999999"
    stale.write_bytes(b"half-written")
    res = cli("train", *TRAIN[:-6], "--epochs", "2", "--threads", "1", "--device", "cpu",
              "--resume", run / "checkpoint.json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert not stale.exists() and not glob.glob(str(run / "*.tmp-*"))
    assert json.loads((run / "checkpoint.json").read_text())["epoch"] == 2


@pytest.mark.parametrize("bad, words", [
    (["--dataset", "nosuch"], ["nosuch"]),
    (["--dataset", "cifar10", "--data-dir", "no/such/dir"], ["no/such/dir"]),
    (["-O", "no_such_option=1"], ["no_such_option"]),
    (["--tensorboard"], ["tensorboard"]),
])
def test_failed_validation_creates_no_output_folder(tmp_path, bad, words):
    if "--tensorboard" in bad:
        try:
            import torch.utils.tensorboard  # noqa: F401
            pytest.skip("tensorboard is installed: --tensorboard is valid here")
        except ImportError:
            pass
    args = list(TRAIN)
    if "--dataset" in bad:
        i = args.index("--dataset")
        del args[i:i + 2]
    res = cli("train", *args, *bad, "--out", tmp_path / "run", cwd=tmp_path)
    one_line_error(res, *words)
    assert not (tmp_path / "run").exists()


def test_relative_data_dir_is_stored_absolute_and_eval_suggests_data_dir(tmp_path):
    (tmp_path / "data").mkdir()
    res = cli("train", *TRAIN, "--data-dir", "data", "--out", "run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    meta = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert meta["config"]["data_dir"] == str(tmp_path / "data")
    # a run on a data set that lives in a folder: moved data -> the message names --data-dir
    meta["config"].update(dataset="mnist", data_dir=str(tmp_path / "moved"))
    (tmp_path / "run" / "checkpoint.json").write_text(json.dumps(meta))
    one_line_error(cli("eval", "--checkpoint", tmp_path / "run", cwd=tmp_path), "--data-dir")


# -- one-line errors ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    res = cli("train", *TRAIN, "--out", run)
    assert res.returncode == 0, res.stderr
    return run


def test_eval_unknown_device(finished_run):
    one_line_error(cli("eval", "--checkpoint", finished_run, "--device", "foo"), "foo", "device")


def test_unknown_shiftadd_backend_fails_at_start(tmp_path):
    res = cli("train", *TRAIN, "--out", tmp_path / "run", env={"SHIFTADD_BACKEND": "foo"})
    one_line_error(res, "SHIFTADD_BACKEND", "foo", "cpu")
    assert not (tmp_path / "run").exists()


def test_energy_platform_file_that_is_binary_or_badly_typed(tmp_path):
    import yaml

    binary = tmp_path / "b.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    one_line_error(cli("energy", "--model", "resnet8", "--platform", binary), str(binary))
    table = yaml.safe_load((ROOT / "shiftadd/energy/tables/asic45nm.yaml").read_text())
    table["formats"]["fp32"]["bits"] = "many"
    typed = tmp_path / "t.yaml"
    typed.write_text(yaml.safe_dump(table))
    one_line_error(cli("energy", "--model", "resnet8", "--platform", typed), "fp32", "bits")


@pytest.mark.parametrize("extra, words", [
    (["-O", "weight_bits=abc"], ["weight_bits", "integer"]),
    (["-O", "keep_first_last=maybe"], ["keep_first_last", "true or false"]),
    (["--eta", "nan"], ["adaptive_eta", "nan"]),
    (["--subset", "1"], ["no training step", "--subset"]),
    (["--test-subset", "100000"], ["test_subset", "larger than the test set"]),
])
def test_bad_training_values_are_one_line_errors(tmp_path, extra, words):
    one_line_error(cli("train", *TRAIN, *extra, "--out", tmp_path / "run"), *words)
    assert not (tmp_path / "run").exists()


def test_checkpoint_config_naming_another_model_than_its_weights(tmp_path, finished_run):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    meta = json.loads((run / "checkpoint.json").read_text())
    meta["config"]["model"] = "resnet20"
    (run / "checkpoint.json").write_text(json.dumps(meta))
    one_line_error(cli("eval", "--checkpoint", run), "resnet20", "mnist-mlp", "inconsistent")


def test_demo_writes_no_progress_redraws_to_logs_and_help_matches_docs(tmp_path):
    res = cli("demo", "--ops", "conv", "--epochs", "1", "--subset", "64", "--batch-size", "32",
              "--out", tmp_path / "demo", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "\r" not in res.stdout + res.stderr and "epoch 1/1" in res.stdout
    help_text = cli("demo", "--help").stdout
    assert "default 4" in help_text
    assert "`shiftadd demo` trains each variant for 4 epochs" in (ROOT / "docs/training.md").read_text()


# -- layers: dtype and padding as nn.Conv2d ------------------------------------------------------

CONV_TYPES = [snn.AdderConv2d, snn.ShiftConv2d, snn.ShiftAddConv2d]


@pytest.mark.parametrize("cls", CONV_TYPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtype_mismatch_raises_like_nn_conv2d(cls, dtype):
    x = torch.randn(1, 3, 6, 6, dtype=dtype)
    with pytest.raises(RuntimeError):
        nn.Conv2d(3, 4, 3)(x)
    with pytest.raises(RuntimeError, match="input dtype .* and weight dtype .* differ"):
        cls(3, 4, 3)(x)
    if dtype == torch.float64:  # a layer of the input's dtype runs in it
        assert cls(3, 4, 3).to(dtype)(x).dtype == dtype


@pytest.mark.parametrize("cls", CONV_TYPES)
@pytest.mark.parametrize("k, padding, mode, dilation", [
    (3, "same", "zeros", 1), (4, "same", "zeros", 1), (3, "same", "zeros", 2), (3, "valid", "zeros", 1),
    (3, 1, "reflect", 1), (3, (1, 2), "replicate", 1), (2, "same", "circular", 1), (5, 2, "circular", 1),
])
def test_padding_same_valid_and_modes_match_nn_conv2d_shapes(cls, k, padding, mode, dilation):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 8)
    layer = cls(3, 4, k, padding=padding, padding_mode=mode, dilation=dilation)
    ref = nn.Conv2d(3, 4, k, padding=padding, padding_mode=mode, dilation=dilation)
    assert layer(x).shape == ref(x).shape


@pytest.mark.parametrize("k, padding, mode", [(3, 1, "reflect"), (3, (2, 1), "replicate"), (3, 1, "circular"),
                                              (4, "same", "zeros"), (3, "same", "reflect")])
def test_adder_padding_modes_equal_padding_the_input_first(k, padding, mode):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 7, requires_grad=True)
    layer = snn.AdderConv2d(3, 4, k, padding=padding, padding_mode=mode)
    ref_conv = nn.Conv2d(3, 4, k, padding=padding, padding_mode=mode, bias=False)
    # nn.Conv2d's own padding, applied by hand: the reversed (before, after) pairs
    if padding == "same":
        pads = [((k - 1) // 2, k - 1 - (k - 1) // 2)] * 2
    else:
        p = (padding, padding) if isinstance(padding, int) else padding
        pads = [(v, v) for v in p]
    flat = [v for a, b in reversed(pads) for v in (a, b)]
    xp = F.pad(x, flat, mode="constant" if mode == "zeros" else mode)
    expected = adder_conv2d(xp, layer.weight)
    torch.testing.assert_close(layer(x), expected)
    assert layer(x).shape == ref_conv(x).shape
    g1 = torch.autograd.grad(layer(x).sum(), x)[0]
    g2 = torch.autograd.grad(adder_conv2d(F.pad(x, flat, mode="constant" if mode == "zeros" else mode),
                                          layer.weight).sum(), x)[0]
    torch.testing.assert_close(g1, g2)


def test_same_padding_with_stride_and_bad_mode_are_refused():
    with pytest.raises(ValueError, match="strided"):
        snn.AdderConv2d(3, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding_mode"):
        snn.ShiftConv2d(3, 4, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="same"):
        snn.ShiftAddConv2d(3, 4, 3, padding="full")
