"""Training: recipes, schedules, optimizer groups, checkpoints, exact resume, divergence, DDP."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from shiftadd.errors import CheckpointError, UserError
from shiftadd.models import create
from shiftadd.train import (RECIPES, TrainingDiverged, build_optimizer, compare, format_table, load_checkpoint,
                            load_config_file, lr_factor, make_config, save_checkpoint, train)
from shiftadd.train import loop as train_loop
from shiftadd.train.evaluate import has_adder_layers
from shiftadd.train.checkpoint import get_rng_state, set_rng_state

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data():
    from shiftadd.data import load_dataset

    tr, te = load_dataset("embedded", subset=64, seed=0)
    return tr, te.subset(torch.arange(0, len(te), 10))  # 100 test images, all classes


def _quiet(_msg):
    pass


# --------------------------------------------------------------------------- configuration
def test_recipes_follow_the_papers():
    a, s, d = RECIPES["addernet"], RECIPES["shiftaddnet"], RECIPES["deepshift"]
    assert (a["optimizer"], a["lr"], a["schedule"], a["weight_decay"], a["adaptive_eta"]) == ("sgd", 0.1, "cosine",
                                                                                            5e-4, 0.2)
    assert (s["momentum"], s["lr"], s["weight_decay"], s["batch_size"], s["epochs"]) == (0.9, 0.1, 1e-4, 256, 160)
    assert d["shift_param_groups"] is True
    cfg = make_config("shiftaddnet")
    assert [lr_factor(cfg, e) for e in (0, 79, 80, 119, 120, 159)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cos = make_config("addernet", epochs=10)
    assert lr_factor(cos, 0) == 1 and lr_factor(cos, 5) == pytest.approx(0.5)
    # any field is overridable, and the adaptive adder LR is on by default in every recipe
    over = make_config("addernet", lr=0.05, epochs=3, optimizer="radam")
    assert (over.lr, over.epochs, over.optimizer, over.schedule) == (0.05, 3, "radam", "cosine")
    assert all(r["adaptive_eta"] == 0.2 for r in RECIPES.values())


def test_bad_configuration_is_a_user_error_naming_the_key(tmp_path):
    with pytest.raises(UserError, match="'lrr'"):
        make_config(lrr=0.1)
    with pytest.raises(UserError, match="lr must be"):
        make_config(lr=-1.0)
    with pytest.raises(UserError, match="epochs must be an integer"):
        make_config(epochs="ten")
    with pytest.raises(UserError, match="unknown recipe"):
        make_config("bogus")
    with pytest.raises(UserError, match="unknown model"):
        make_config(model="resnet21")
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 3\nlr: 0.05\nbatch_sise: 32\n")
    with pytest.raises(UserError, match="'batch_sise'"):
        load_config_file(str(f))
    f.write_text("epochs: [3\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config_file(str(f))
    f.write_text("epochs: 3\nlr: 0.05\nmodel_options: {width: 8}\n")
    assert load_config_file(str(f)) == {"epochs": 3, "lr": 0.05, "model_options": {"width": 8}}
    with pytest.raises(UserError, match="not found"):
        load_config_file(str(tmp_path / "missing.yaml"))


def test_deepshift_parameter_groups_have_no_weight_decay():
    model = create("mnist-cnn", op="shift-ps")
    opt = build_optimizer(make_config("deepshift", model="mnist-cnn", op="shift-ps", shift_lr=0.01), model)
    assert len(opt.param_groups) == 2
    rest, shift = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)].rsplit(".", 1)[-1] for p in shift["params"]} == {"shift", "sign"}
    assert shift["weight_decay"] == 0 and rest["weight_decay"] == 1e-4 and shift["lr"] == 0.01
    assert len(rest["params"]) + len(shift["params"]) == len(list(model.parameters()))
    # a shift_lr alone (any recipe) creates the group; without it the shiftaddnet recipe has one group
    sa = create("mnist-mlp", op="shiftadd")
    assert len(build_optimizer(make_config("shiftaddnet", shift_lr=1.0), sa).param_groups) == 2
    assert len(build_optimizer(make_config("shiftaddnet"), sa).param_groups) == 1
    radam = build_optimizer(make_config("deepshift", optimizer="radam"), create("mnist-mlp", op="shift-ps"))
    assert isinstance(radam, torch.optim.RAdam)


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_atomic_and_checked(tmp_path):
    torch.manual_seed(0)
    model = create("resnet8", op="shift-ps", width=4)
    opt = build_optimizer(make_config("deepshift", optimizer="radam"), model)
    model(torch.randn(4, 3, 8, 8)).sum().backward()
    opt.step()
    rng = get_rng_state()
    expected_draw = torch.rand(3)
    save_checkpoint(str(tmp_path), model, opt, {"epoch": 1, "note": "x"}, [rng])
    files = sorted(os.listdir(tmp_path))
    assert files == ["checkpoint.json", "state-0001.safetensors"]  # no temporary files left
    ck = load_checkpoint(str(tmp_path))
    assert ck.epoch == 1 and ck.meta["note"] == "x"
    for k, v in model.state_dict().items():
        assert torch.equal(ck.model_state[k], v)
    opt2 = build_optimizer(make_config("deepshift", optimizer="radam"), create("resnet8", op="shift-ps", width=4))
    opt2.load_state_dict(ck.optimizer_state)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for i in s1["state"]:
        for key, val in s1["state"][i].items():
            assert torch.equal(torch.as_tensor(val), torch.as_tensor(s2["state"][i][key]))
    torch.rand(100)
    set_rng_state(*ck.rng[0])
    assert torch.equal(torch.rand(3), expected_draw)
    # a second save replaces the first; a corrupted tensor file is refused with a clear error
    save_checkpoint(str(tmp_path), model, opt, {"epoch": 2}, [rng])
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.json", "state-0002.safetensors"]
    with open(tmp_path / "state-0002.safetensors", "r+b") as fh:
        fh.seek(-5, 2)
        fh.write(b"XXXXX")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(str(tmp_path))
    (tmp_path / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        load_checkpoint(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_checkpoint(str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "nowhere"))


# --------------------------------------------------------------------------- the loop
def _cfg(**kw):
    base = dict(model="mnist-mlp", op="shift-ps", dataset="embedded", subset=64, epochs=3, batch_size=16,
                test_batch_size=50, augment=True, progress=False, threads=1,
                model_options={"hidden": 32}, milestones=[0.5])
    base.update(kw)
    return make_config("deepshift", **base)


class _Stop(Exception):
    pass


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path, tiny_data):
    # dropout (torch RNG), augmentation (loader seed/epoch), momentum and a step LR change cross the cut
    full = train(_cfg(), str(tmp_path / "full"), data=tiny_data, log=_quiet)

    def stop_after_first_epoch(msg):
        if msg.startswith("epoch 1/3"):
            raise _Stop()

    with pytest.raises(_Stop):
        train(_cfg(), str(tmp_path / "cut"), data=tiny_data, log=stop_after_first_epoch)
    assert load_checkpoint(str(tmp_path / "cut")).epoch == 1
    resumed = train(_cfg(), str(tmp_path / "cut"), resume=True, data=tiny_data, log=_quiet)
    keys = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")
    assert [[h[k] for k in keys] for h in resumed.history] == [[h[k] for k in keys] for h in full.history]
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(l) for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [[r[k] for k in keys] for r in lines] == [[h[k] for k in keys] for h in full.history]
    assert (tmp_path / "cut" / "curves.png").stat().st_size > 1000
    with pytest.raises(UserError, match="already holds a run"):
        train(_cfg(), str(tmp_path / "full"), data=tiny_data, log=_quiet)
    with pytest.raises(UserError, match="already finished"):
        train(_cfg(), str(tmp_path / "full"), resume=True, data=tiny_data, log=_quiet)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, tiny_data, monkeypatch):
    state = {"epochs_done": 0}
    real_build = train_loop.build_model

    def build_with_poison(*args, **kwargs):
        model, opts = real_build(*args, **kwargs)

        def poison(mod, inp, out):
            return out * float("nan") if state["epochs_done"] >= 1 and mod.training else out

        model.register_forward_hook(poison)
        return model, opts

    def count(msg):
        if msg.startswith("epoch "):
            state["epochs_done"] += 1

    monkeypatch.setattr(train_loop, "build_model", build_with_poison)
    with pytest.raises(TrainingDiverged, match=r"diverged at epoch 2, step 1: loss = nan.*epoch 1\) kept"):
        train(_cfg(), str(tmp_path), data=tiny_data, log=count)
    assert load_checkpoint(str(tmp_path)).epoch == 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_exploding_loss_stops(tmp_path, tiny_data):
    with pytest.raises(TrainingDiverged, match="no checkpoint was written"):
        train(_cfg(max_loss=1e-3), str(tmp_path), data=tiny_data, log=_quiet)


def test_adaptive_adder_lr_is_applied_by_default(tmp_path, tiny_data, monkeypatch):
    import shiftadd.optim

    calls = []
    real = shiftadd.optim.scale_adder_gradients
    monkeypatch.setattr(shiftadd.optim, "scale_adder_gradients", lambda m, eta=None: calls.append(eta) or real(m, eta))
    cfg = dict(model="resnet8", op="adder", epochs=1, augment=False, model_options={"width": 2})
    train(_cfg(**cfg), None, data=tiny_data, log=_quiet)
    assert calls and set(calls) == {0.2}
    calls.clear()
    train(_cfg(adaptive_eta=0.0, **cfg), None, data=tiny_data, log=_quiet)
    assert calls == []


def test_tensorboard_is_optional_with_a_clear_message(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError, match="tensorboard package"):
        train(_cfg(tensorboard=True), str(tmp_path), data=tiny_data, log=_quiet)


def test_compare_returns_a_row_per_variant(tmp_path, tiny_data):
    rows = compare([("resnet8", "conv"), "resnet8:shift-ps"], dataset="embedded", epochs=1, subset=64,
                   batch_size=32, model_options={"width": 4}, threads=1, plot=str(tmp_path / "cmp.png"),
                   log=_quiet)
    assert [(r["model"], r["op"]) for r in rows] == [("resnet8", "conv"), ("resnet8", "shift-ps")]
    for r in rows:
        assert 0 <= r["test_acc"] <= 1 and r["params"] > 0 and r["train_seconds"] > 0 and len(r["history"]) == 1
    assert rows[1]["params"] > rows[0]["params"]  # shift-ps trains a shift and a sign per weight
    assert (tmp_path / "cmp.png").stat().st_size > 1000
    table = format_table(rows)
    assert "shift-ps" in table and table.count("\n") == 3


# --------------------------------------------------------------------------- data parallel
def test_distributed_batchnorm_matches_batchnorm():
    import torch.distributed as dist

    from shiftadd.train.distributed import convert_batchnorm

    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        ref = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 36, 5),
                            nn.BatchNorm1d(5))
        ours = convert_batchnorm(create_copy(ref))
        assert type(ours[1]).__name__ == "DistributedBatchNorm"
        assert set(ours.state_dict()) == set(ref.state_dict())
        x = torch.randn(6, 3, 8, 8) * 3 + 1
        for m in (ref, ours):
            m(x).pow(2).sum().backward()
        for (n, a), b in zip(ref.named_parameters(), ours.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=n)
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(v, ours.state_dict()[k], rtol=1e-5, atol=1e-6, msg=k)
    finally:
        dist.destroy_process_group()


def create_copy(module):
    import copy

    return copy.deepcopy(module)


def test_two_process_ddp_matches_one_process(one_and_two_processes):
    """torchrun --nproc_per_node 2 (gloo, CPU) gives the single-process result at the same global batch."""
    args = ["train", "--model", "resnet8", "--op", "adder", "-O", "width=4", "--dataset", "embedded",
            "--subset", "64", "--test-subset", "200", "--epochs", "2", "--batch-size", "32",
            "--recipe", "addernet", "--threads", "1", "--device", "cpu", "--no-progress"]
    a, b = one_and_two_processes(args)
    assert b.meta["world_size"] == 2 and a.meta["world_size"] == 1
    for ha, hb in zip(a.meta["history"], b.meta["history"]):
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-4)
        assert hb["test_loss"] == pytest.approx(ha["test_loss"], rel=1e-3)
        assert abs(hb["test_acc"] - ha["test_acc"]) <= 0.01
    # Adder layers followed by BatchNorm amplify rounding differences, yet weights agree closely.
    for k, v in a.model_state.items():
        if v.is_floating_point():
            torch.testing.assert_close(b.model_state[k], v, rtol=2e-2, atol=2e-2, msg=k)


def test_batchnorm_recalibration_replaces_lagging_running_statistics():
    from shiftadd.train import recalibrate_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Dropout(0.5), nn.Linear(3, 2))
    model[1].running_mean.fill_(100.0)  # stale statistics, as after fast-drifting adder outputs
    batches = [(torch.randn(8, 4) + 5, torch.zeros(8, dtype=torch.long)) for _ in range(3)]
    with torch.no_grad():
        feats = [model[0](x) for x, _ in batches]
    model.train()
    used = recalibrate_batchnorm(model, batches, 16, torch.device("cpu"))
    assert used == 16 and model.training and model[1].momentum == 0.1
    expected_mean = torch.stack([f.mean(0) for f in feats[:2]]).mean(0)
    expected_var = torch.stack([f.var(0) for f in feats[:2]]).mean(0)
    torch.testing.assert_close(model[1].running_mean, expected_mean)
    torch.testing.assert_close(model[1].running_var, expected_var)
    cfg = make_config(model="resnet8", op="adder")
    assert cfg.bn_recalibration is None  # auto: on for models with adder layers
    assert has_adder_layers(create("resnet8", op="shiftadd", width=2))
    assert not has_adder_layers(create("resnet8", op="shift-ps", width=2))


def test_background_batch_preparation_changes_nothing(tiny_data):
    a = train(_cfg(epochs=1), None, data=tiny_data, log=_quiet)
    b = train(_cfg(epochs=1, workers=2), None, data=tiny_data, log=_quiet)
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    assert a.history[0]["test_loss"] == b.history[0]["test_loss"]
