"""`shiftadd train --quant/--prune/--freeze/--init-from` and `shiftadd prune`: the trainer's compression options."""
import json

import pytest
import torch

from shiftadd.cli import main
from shiftadd.errors import CheckpointError, UserError
from shiftadd.prune import get_mask
from shiftadd.quant import quantized_layers
from shiftadd.train import load_checkpoint, make_config, train
from shiftadd.train.runs import evaluate_checkpoint


@pytest.fixture(scope="module")
def tiny_data():
    from shiftadd.data import load_dataset

    tr, te = load_dataset("embedded", subset=64, seed=0)
    return tr, te.subset(torch.arange(0, len(te), 10))


def _quiet(_msg):
    pass


def _cfg(**kw):
    base = dict(model="mnist-mlp", op="shiftadd", dataset="embedded", subset=64, epochs=2, batch_size=16,
                test_batch_size=50, progress=False, threads=1, model_options={"hidden": 32}, milestones=[0.5])
    base.update(kw)
    return make_config("shiftaddnet", **base)


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("runs") / "base"
    train(_cfg(), str(out), data=tiny_data, log=_quiet)
    return out


def test_quant_option_trains_with_fixed_point_quantizers_and_they_come_back_on_resume(tmp_path, tiny_data):
    full = train(_cfg(quant="fix8"), str(tmp_path / "full"), data=tiny_data, log=_quiet)
    layers = quantized_layers(full.model)
    assert layers and all(v["config"].activation.bits == 8 and v["config"].grad_output.bits == 8
                          for v in layers.values())
    assert load_checkpoint(str(tmp_path / "full")).meta["config"]["quant"] == "fix8"

    def stop(msg):
        if msg.startswith("epoch 1/2"):
            raise _Stop()

    with pytest.raises(_Stop):
        train(_cfg(quant="fix8"), str(tmp_path / "cut"), data=tiny_data, log=stop)
    resumed = train(_cfg(quant="fix8"), str(tmp_path / "cut"), resume=True, data=tiny_data, log=_quiet)
    assert quantized_layers(resumed.model).keys() == layers.keys()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # evaluating the checkpoint quantizes the same way: same accuracy as the run's last epoch
    ev = evaluate_checkpoint(str(tmp_path / "full"), data=tiny_data)
    assert ev["acc"] == pytest.approx(full.final["test_acc"])


def test_quantization_changes_training(tmp_path, tiny_data):
    plain = train(_cfg(epochs=1), None, data=tiny_data, log=_quiet)
    fix4 = train(_cfg(epochs=1, quant="fix4"), None, data=tiny_data, log=_quiet)
    assert plain.final["train_loss"] != fix4.final["train_loss"]


def test_finetuning_from_a_run_prunes_keeps_masks_and_resumes_exactly(tmp_path, tiny_data, base_run):
    cfg = dict(init_from=str(base_run), prune=0.5, prune_types=["adder"], lr=0.01)
    full = train(_cfg(**cfg), str(tmp_path / "full"), data=tiny_data, log=_quiet)
    adders = [m for m in full.model.modules() if get_mask(m) is not None]
    assert adders
    for m in adders:  # the stored weights under the mask are still exactly zero after training
        assert torch.all(m.weight[~get_mask(m)] == 0)
    n = sum(m.weight.numel() for m in adders)
    zeros = sum(int((m.weight == 0).sum()) for m in adders)
    assert zeros == pytest.approx(0.5 * n, abs=1)
    # the starting point really is the base run: pruning 0 % and lr -> 0 reproduces its weights
    start = train(_cfg(init_from=str(base_run), epochs=1, lr=1e-12, weight_decay=0.0, adaptive_eta=0.0),
                  None, data=tiny_data, log=_quiet)
    base_state = load_checkpoint(str(base_run)).model_state
    w = {k: v for k, v in start.model.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert all(torch.allclose(w[k], base_state[k], atol=1e-6) for k in w)

    def stop(msg):
        if msg.startswith("epoch 1/2"):
            raise _Stop()

    with pytest.raises(_Stop):
        train(_cfg(**cfg), str(tmp_path / "cut"), data=tiny_data, log=stop)
    resumed = train(_cfg(**cfg), str(tmp_path / "cut"), resume=True, data=tiny_data, log=_quiet)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and any(k.endswith("pruning.mask") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert evaluate_checkpoint(str(tmp_path / "cut"), data=tiny_data)["acc"] == pytest.approx(resumed.final["test_acc"])


def test_init_from_a_different_architecture_is_a_clear_error(tmp_path, tiny_data, base_run):
    with pytest.raises(CheckpointError, match="does not match"):
        train(_cfg(init_from=str(base_run), op="conv"), None, data=tiny_data, log=_quiet)


def test_freeze_sign_keeps_every_sign_fixed(tiny_data):
    torch.manual_seed(0)
    res = train(_cfg(op="shift-ps", freeze=["sign"], epochs=1), None, data=tiny_data, log=_quiet)
    from shiftadd.nn import SHIFT_TYPES

    layers = [m for m in res.model.modules() if isinstance(m, SHIFT_TYPES)]
    assert layers and all(not m.sign.requires_grad and m.shift.requires_grad for m in layers)
    fresh = train(_cfg(op="shift-ps", freeze=["sign"], epochs=1, lr=1e-12), None, data=tiny_data, log=_quiet)
    signs = [m.sign for m in fresh.model.modules() if isinstance(m, SHIFT_TYPES)]
    assert all(torch.equal(a.sign, b) for a, b in zip(layers, signs))  # same seed, signs never moved


@pytest.mark.parametrize("bad, needle", [
    (dict(quant="fix1"), "quant"), (dict(prune=1.0), "prune"), (dict(prune_method="biggest"), "prune_method"),
    (dict(quant_types=["adder", "dense"]), "quant_types"), (dict(freeze=["bias"]), "freeze"),
])
def test_bad_compression_settings_are_user_errors(bad, needle):
    with pytest.raises(UserError, match=needle):
        _cfg(**bad)


def test_prune_command_reports_and_finetunes(tmp_path, capsys, base_run):
    code = main(["prune", "--checkpoint", str(base_run), "--ratio", "0.7", "--types", "adder", "--json",
                 "--threads", "1"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["sparsity"]["by_kind"]["adder"]["sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert 0 <= out["acc_pruned"] <= 1 and 0 <= out["acc_before"] <= 1
    code = main(["prune", "--checkpoint", str(base_run), "--ratio", "0.5", "--finetune-epochs", "1",
                 "--out", str(tmp_path / "ft"), "--json", "--threads", "1"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and "acc_finetuned" in out
    meta = load_checkpoint(str(tmp_path / "ft")).meta["config"]
    assert (meta["init_from"], meta["prune"], meta["epochs"]) == (str(base_run), 0.5, 1)
    code = main(["prune", "--checkpoint", str(base_run), "--ratio", "1.5"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "ratio" in err


def test_quantize_command_reports_accuracy_per_bit_width(capsys, base_run):
    code = main(["quantize", "--checkpoint", str(base_run), "--bits", "16,4", "--json", "--threads", "1"])
    out = json.loads(capsys.readouterr().out)
    acc = out["accuracy"]
    assert code == 0 and set(acc) == {"float", "int16", "int4"} and out["range"] == "folded"
    assert abs(acc["int16"] - acc["float"]) <= 0.02  # 16 bits: at most one test image in 50 flips
    assert main(["quantize", "--checkpoint", str(base_run), "--bits", "16", "--range", "max", "--json",
                 "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["range"] == "max"
    with pytest.raises(SystemExit) as exc:  # argparse's own error: one line, exit 2
        main(["quantize", "--checkpoint", str(base_run), "--bits", "1"])
    code, err = exc.value.code, capsys.readouterr().err
    assert code == 2 and "bit widths" in err and len(err.strip().splitlines()) == 1
