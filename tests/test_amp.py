"""GPU readiness of the trainer, checked on the CPU: mixed precision (``amp`` bf16/fp16 with a saved
GradScaler and exact resume), checkpoints of a GPU run continuing on CPU, the data-parallel backend choice."""
import json
import os

import pytest
import torch
import torch.nn as nn

import shiftadd.ops.adder as adder_ops
from shiftadd.cli import main
from shiftadd.errors import UserError
from shiftadd.nn import (
    ADDER_TYPES, ActiveShift2d, AdderConv2d, AdderLinear, ShiftAddConv2d, ShiftAddLinear, ShiftConv2d, ShiftLinear,
    SparseShift2d, SpatialShift2d,
)
from shiftadd.train import build as B
from shiftadd.train import distributed as D
from shiftadd.train import load_checkpoint, make_config, train
from shiftadd.train import loop as train_loop
from shiftadd.train.checkpoint import META_NAME


@pytest.fixture(scope="module")
def tiny_data():
    from shiftadd.data import load_dataset

    tr, te = load_dataset("embedded", subset=32, seed=0)
    return tr, te.subset(torch.arange(0, len(te), 20))  # 50 test images


def _quiet(_msg):
    pass


def _cfg(**kw):
    """A ResNet-8 with adder and bit-shift layers (op shiftadd), 4 steps an epoch."""
    base = dict(model="resnet8", op="shiftadd", model_options={"width": 4}, dataset="embedded", subset=32,
                epochs=2, batch_size=8, test_batch_size=50, lr=0.05, progress=False, threads=1, device="cpu",
                bn_recalibration=0, milestones=[0.5])
    base.update(kw)
    return make_config("shiftaddnet", **base)


class _Stop(Exception):
    pass


def _stop_after_first_epoch(msg):
    if msg.startswith("epoch 1/"):
        raise _Stop()


# --------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("kw,match", [(dict(amp="fp32"), "unknown amp 'fp32'"),
                                      (dict(amp="bf16", quant="fix8"), "cannot be combined with fixed-point")])
def test_bad_amp_settings_are_one_line_user_errors(kw, match):
    with pytest.raises(UserError, match=match) as err:
        _cfg(**kw)
    assert "\n" not in str(err.value)


def test_amp_context_autocasts_only_when_asked():
    cpu = torch.device("cpu")
    lin = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with B.amp_context("off", cpu):
        assert lin(x).dtype == torch.float32
    for amp, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with B.amp_context(amp, cpu):
            assert lin(x).dtype == dtype
    assert B.make_grad_scaler("off", cpu) is None and B.make_grad_scaler("bf16", cpu) is None
    assert isinstance(B.make_grad_scaler("fp16", cpu), torch.amp.GradScaler)


def test_amp_pytorch_cannot_do_is_refused_in_one_line(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    with pytest.raises(UserError, match="no autocast on device 'cpu'"):
        B.check_amp("bf16", cpu)
    B.check_amp("off", cpu)  # float32 needs nothing

    def no_scaler(*a, **k):
        raise RuntimeError("GradScaler is not supported on cpu")

    monkeypatch.setattr(torch.amp, "GradScaler", no_scaler)
    with pytest.raises(UserError, match="cannot scale float16 gradients on cpu .*use --amp bf16 or off"):
        B.make_grad_scaler("fp16", cpu)


# --------------------------------------------------------------------------- training under autocast
# What docs/training.md ("Mixed precision") states: the output dtype of each layer under autocast.
F32, AUTO, SAME = "float32", "autocast dtype", "input dtype"
DOCUMENTED_DTYPES = [
    ("AdderConv2d", lambda: AdderConv2d(4, 6, 3, padding=1), F32),
    ("AdderLinear", lambda: AdderLinear(8, 3), F32),
    ("ShiftAddConv2d", lambda: ShiftAddConv2d(4, 6, 3, padding=1), F32),
    ("ShiftAddLinear", lambda: ShiftAddLinear(8, 3), F32),
    ("ShiftConv2d ps", lambda: ShiftConv2d(4, 6, 3, padding=1, mode="ps"), AUTO),
    ("ShiftConv2d q", lambda: ShiftConv2d(4, 6, 3, padding=1, mode="q"), AUTO),
    ("ShiftLinear", lambda: ShiftLinear(8, 3), AUTO),
    ("Conv2d", lambda: nn.Conv2d(4, 6, 3), AUTO),
    ("SpatialShift2d", lambda: SpatialShift2d(4), SAME),
    ("ActiveShift2d", lambda: ActiveShift2d(4), SAME),
    ("SparseShift2d", lambda: SparseShift2d(4), SAME),
    ("BatchNorm2d", lambda: nn.BatchNorm2d(4), SAME),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,make,rule", DOCUMENTED_DTYPES, ids=[d[0] for d in DOCUMENTED_DTYPES])
def test_layer_output_dtypes_under_autocast_are_the_documented_ones(name, make, rule, dtype):
    torch.manual_seed(0)
    layer = make()
    for in_dtype in (torch.float32, dtype):
        x = torch.randn(2, 8) if "Linear" in name else torch.randn(2, 4, 8, 8)
        with torch.autocast("cpu", dtype=dtype):
            y = layer(x.to(in_dtype))
        want = {F32: torch.float32, AUTO: dtype, SAME: in_dtype}[rule]
        assert y.dtype == want, (name, in_dtype)


def test_bf16_training_on_cpu_keeps_adder_layers_in_float32(tiny_data, monkeypatch):
    seen = {"kernel": set(), "adder_out": set(), "conv_out": set()}
    original = adder_ops.select_backend

    def spy(x, *rest, **kw):  # the adder ops choose their kernel for the tensor they compute on
        if torch.is_grad_enabled():  # training steps (evaluation runs without autocast)
            seen["kernel"].add((x.dtype, torch.is_autocast_enabled("cpu")))
        return original(x, *rest, **kw)

    monkeypatch.setattr(adder_ops, "select_backend", spy)
    real_build = train_loop._build

    def build_with_hooks(*a, **k):
        model, opts, compression = real_build(*a, **k)
        def record(key):
            def hook(mod, inputs, output):
                if mod.training:
                    seen[key].add(output.dtype)
            return hook

        for m in model.modules():
            if isinstance(m, ADDER_TYPES):
                m.register_forward_hook(record("adder_out"))
            elif type(m) is nn.Conv2d:
                m.register_forward_hook(record("conv_out"))
        return model, opts, compression

    monkeypatch.setattr(train_loop, "_build", build_with_hooks)
    lines = []
    result = train(_cfg(amp="bf16", epochs=1), None, data=tiny_data, log=lines.append)
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.history)
    assert seen["conv_out"] == {torch.bfloat16}  # autocast was on
    assert seen["kernel"] == {(torch.float32, False)}  # the adder kernels got float32, autocast off ...
    assert seen["adder_out"] == {torch.float32}  # ... and the layers returned float32
    assert "mixed precision bf16 (adder layers in float32)" in lines[0]
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # master weights stay float32


def test_fp16_run_saves_its_grad_scaler_and_resumes_exactly(tmp_path, tiny_data, monkeypatch):
    # a scale that changes every step (grows, backs off on overflow): the resumed run must carry it on
    monkeypatch.setattr(train_loop, "make_grad_scaler",
                        lambda amp, device: torch.amp.GradScaler(device.type, init_scale=2.0 ** 10, growth_interval=1))
    full = train(_cfg(amp="fp16", epochs=3), str(tmp_path / "full"), data=tiny_data, log=_quiet)
    with pytest.raises(_Stop):
        train(_cfg(amp="fp16", epochs=3), str(tmp_path / "cut"), data=tiny_data, log=_stop_after_first_epoch)
    after_one = load_checkpoint(str(tmp_path / "cut")).meta["grad_scaler"]
    assert after_one["scale"] != 2.0 ** 10  # the state moved during the first epoch
    resumed = train(_cfg(amp="fp16", epochs=3), str(tmp_path / "cut"), resume=True, data=tiny_data, log=_quiet)
    keys = ("train_loss", "train_acc", "test_loss", "test_acc")
    assert [[h[k] for k in keys] for h in resumed.history] == [[h[k] for k in keys] for h in full.history]
    assert load_checkpoint(str(tmp_path / "cut")).meta["grad_scaler"] == \
        load_checkpoint(str(tmp_path / "full")).meta["grad_scaler"]
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


CLI_ARGS = ["--model", "resnet8", "--op", "shiftadd", "-O", "width=4", "--dataset", "embedded", "--subset", "32",
            "--test-subset", "50", "--batch-size", "8", "--test-batch-size", "50", "--lr", "0.05",
            "--bn-recalibration", "0", "--milestones", "0.5", "--threads", "1", "--device", "cpu"]


def test_resume_with_another_amp_is_refused(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *CLI_ARGS, "--epochs", "1", "--amp", "bf16", "--out", out]) == 0
    assert load_checkpoint(out).meta["config"]["amp"] == "bf16"
    capsys.readouterr()
    code = main(["train", *CLI_ARGS, "--epochs", "2", "--amp", "off", "--resume", out])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--amp cannot change" in err and "'bf16'" in err and "'off'" in err
    assert main(["train", "--epochs", "2", "--resume", out]) == 0  # the stored amp is kept
    assert load_checkpoint(out).epoch == 2


# --------------------------------------------------------------------------- checkpoints across devices
def _as_if_trained_on_cuda(run: str) -> None:
    """Rewrite a CPU run's checkpoint as a GPU run writes it: device "cuda" in its configuration and
    meta, and CUDA generator states next to the CPU ones."""
    from safetensors.torch import load_file, save_file

    from shiftadd.utils import sha256_file

    meta_path = os.path.join(run, META_NAME)
    meta = json.load(open(meta_path))
    tensor_path = os.path.join(run, meta["tensors"])
    tensors = load_file(tensor_path)
    tensors["rng.0.cuda.0"] = torch.randint(0, 255, (16,), dtype=torch.uint8)  # a GPU generator's state
    save_file(tensors, tensor_path, metadata={"format": "shiftadd-checkpoint", "version": "1"})
    meta["config"]["device"], meta["device"], meta["sha256"] = "cuda", "cuda", sha256_file(tensor_path)
    json.dump(meta, open(meta_path, "w"))


def test_a_gpu_run_continues_on_cpu_with_the_same_numbers(tmp_path, tiny_data, capsys):
    full = train(_cfg(epochs=2), str(tmp_path / "full"), data=tiny_data, log=_quiet)
    cut = str(tmp_path / "cut")
    with pytest.raises(_Stop):
        train(_cfg(epochs=2), cut, data=tiny_data, log=_stop_after_first_epoch)
    _as_if_trained_on_cuda(cut)
    if not torch.cuda.is_available():  # the stored device is refused with the fix, in one line
        capsys.readouterr()
        assert main(["train", "--resume", cut]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--resume OUT --device cpu" in err
    resumed = train(_cfg(epochs=2, device="cpu"), cut, resume=True, data=tiny_data, log=_quiet)
    keys = ("train_loss", "train_acc", "test_loss", "test_acc")
    assert [[h[k] for k in keys] for h in resumed.history] == [[h[k] for k in keys] for h in full.history]
    assert load_checkpoint(cut).meta["device"] == "cpu" and load_checkpoint(cut).meta["config"]["device"] == "cpu"


def test_checkpoint_tensors_are_read_onto_the_target_device(tmp_path, monkeypatch):
    """CPU and CUDA targets are handed to safetensors (no host copy); other devices get moved CPU tensors."""
    import safetensors.torch

    from shiftadd.train import checkpoint as ckpt

    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    ckpt.save_checkpoint(str(tmp_path), model, opt, {"epoch": 1})
    asked = []
    real = safetensors.torch.load_file

    def load_file(path, device="cpu"):
        asked.append(device)
        return real(path, device="cpu")

    monkeypatch.setattr(safetensors.torch, "load_file", load_file)
    for where, want in (("cpu", "cpu"), ("meta", "cpu")):
        ck = ckpt.load_checkpoint(str(tmp_path), map_location=where)
        assert asked[-1] == want
        assert {v.device.type for v in ck.model_state.values()} == {where}
        assert {v.device.type for s in ck.optimizer_state["state"].values() for v in s.values()
                if isinstance(v, torch.Tensor)} == {where}
    monkeypatch.setattr(ckpt, "_target_device", lambda where: torch.device("cuda:0"))
    ck = ckpt.load_checkpoint(str(tmp_path), map_location="cuda:0")
    assert asked[-1] == "cuda:0"


# --------------------------------------------------------------------------- data-parallel backend
def test_ddp_backend_is_nccl_on_cuda_and_gloo_on_cpu(monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    assert D.choose_backend("cpu") == "gloo"
    cuda = D.choose_backend("cuda")
    assert "cuda:nccl" in cuda.split(",") and "cpu:gloo" in cuda.split(",")  # CPU statistics go through gloo
    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)
    assert D.choose_backend("cpu") == "gloo"
    with pytest.raises(UserError, match="needs NCCL"):
        D.choose_backend("cuda")


@pytest.mark.parametrize("device_type,want", [("cpu", "gloo"), ("cuda", D.CUDA_BACKEND)])
def test_setup_joins_the_group_with_the_chosen_backend(monkeypatch, device_type, want):
    import torch.distributed as dist

    joined = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: joined.append(backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    info = D.setup(device_type)
    assert joined == [want] and (info.rank, info.world_size, info.local_rank, info.owns_group) == (1, 2, 1, True)
