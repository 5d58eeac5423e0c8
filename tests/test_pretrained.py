"""Pretrained weights: shipped file -> model -> recorded logits; SHA-256 and card checks."""
import json
import os

import pytest
import torch

from shiftadd.errors import CheckpointError, UserError
from shiftadd.models import create
from shiftadd.models import pretrained as P


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(P.ENV_VAR, str(tmp_path))
    return tmp_path


def _save_tiny(weights_dir, name="tiny-mlp"):
    torch.manual_seed(0)
    model = create("mnist-mlp", op="shift-ps")
    card = P.ModelCard(name=name, model="mnist-mlp", op="shift-ps", num_classes=10, dataset="mnist", sha256="")
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    P.save_pretrained(model, str(weights_dir), card, reference_input=x, reference_desc="rand seed 1")
    return model, x


def test_round_trip_gives_the_recorded_logits(weights_dir):
    model, x = _save_tiny(weights_dir)
    loaded = P.load_pretrained("tiny-mlp")
    card = P.load_card("tiny-mlp")
    with torch.no_grad():
        out = loaded(x)
        ref = model.eval()(x)
    assert torch.equal(out, ref)
    assert torch.allclose(out, torch.tensor(card.reference["logits"]), atol=1e-4)
    assert "tiny-mlp" in P.list_pretrained()
    assert P.find_pretrained("mnist-mlp", "shift-ps") == "tiny-mlp"
    assert not loaded.training


def test_sha256_mismatch_is_refused(weights_dir):
    _save_tiny(weights_dir)
    path = weights_dir / "tiny-mlp.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or altered"):
        P.load_pretrained("tiny-mlp")


def test_missing_name_and_missing_tensor_file(weights_dir):
    with pytest.raises(UserError, match="no pretrained weights named 'nope'"):
        P.load_pretrained("nope")
    _save_tiny(weights_dir)
    os.remove(weights_dir / "tiny-mlp.safetensors")
    with pytest.raises(CheckpointError, match="tensor file .* is missing"):
        P.load_pretrained("tiny-mlp")
    with pytest.raises(UserError, match="no pretrained weights for model 'resnet44'"):
        P.find_pretrained("resnet44", "adder")


def test_card_without_required_fields_is_refused(weights_dir):
    _save_tiny(weights_dir)
    card_path = weights_dir / "tiny-mlp.json"
    data = json.loads(card_path.read_text())
    del data["op"]
    card_path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="lacks the field"):
        P.load_card("tiny-mlp")
    card_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read model card"):
        P.load_card("tiny-mlp")


def test_weights_that_do_not_fit_the_architecture(weights_dir):
    _save_tiny(weights_dir)
    card_path = weights_dir / "tiny-mlp.json"
    data = json.loads(card_path.read_text())
    data["model"] = "mnist-cnn"
    card_path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="do not fit mnist-cnn/shift-ps"):
        P.load_pretrained("tiny-mlp")


def test_create_pretrained_loads_the_card_of_that_family(weights_dir):
    model, x = _save_tiny(weights_dir)
    loaded = create("mnist-mlp", op="shift-ps", pretrained=True)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    with pytest.raises(UserError, match="no pretrained weights for model 'mnist-mlp' with op 'adder'"):
        create("mnist-mlp", op="adder", pretrained=True)


def _save_embedded_resnet8(weights_dir, name="tiny-r8"):
    torch.manual_seed(0)
    model = create("resnet8", op="adder", width=4)
    card = P.ModelCard(name=name, model="resnet8", op="adder", num_classes=10, dataset="embedded", sha256="",
                       model_options={"width": 4})
    P.save_pretrained(model, str(weights_dir), card)
    return model


def test_eval_pretrained_and_list_from_the_cli(weights_dir):
    import subprocess
    import sys

    model = _save_embedded_resnet8(weights_dir)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = lambda *a: subprocess.run([sys.executable, "-m", "shiftadd.cli", "eval", *a], capture_output=True,
                                    text=True, env=env)
    listed = run("--list-pretrained")
    assert listed.returncode == 0 and "tiny-r8: resnet8 (adder) on embedded" in listed.stdout
    proc = run("--pretrained", "tiny-r8", "--test-subset", "100", "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    from shiftadd.train.runs import evaluate_pretrained

    assert res["n"] == 100 and res["acc"] == evaluate_pretrained("tiny-r8", test_subset=100)["acc"]
    bad = run("--pretrained", "nope")
    assert bad.returncode == 2 and "no pretrained weights named 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_init_from_pretrained_starts_from_the_checked_weights(weights_dir):
    from shiftadd.train.compress import inherited_settings, start_state

    model = _save_embedded_resnet8(weights_dir)
    settings = inherited_settings("pretrained:tiny-r8")
    assert settings == {"model": "resnet8", "op": "adder", "model_options": {"width": 4}, "dataset": "embedded"}
    state, what = start_state("pretrained:tiny-r8")
    assert "tiny-r8" in what
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v), k
    (weights_dir / "tiny-r8.safetensors").write_bytes(b"corrupt")
    with pytest.raises(CheckpointError):
        start_state("pretrained:tiny-r8")


SHIPPED = [n for n in P.list_pretrained() if os.path.isfile(os.path.join(P.PACKAGE_WEIGHTS, f"{n}.json"))]


@pytest.mark.parametrize("name", SHIPPED)  # empty (reported as skipped) until weights are shipped
def test_shipped_weights_reproduce_their_card(name, monkeypatch):
    """Every shipped model gives its recorded accuracy on the embedded CIFAR-10 test images."""
    from shiftadd.train.config import TrainConfig
    from shiftadd.train.runs import embedded_check

    monkeypatch.delenv(P.ENV_VAR, raising=False)
    card = P.load_card(name)
    model = P.load_pretrained(name)
    if card.check.get("dataset") != "embedded":
        pytest.skip(f"{name}: its check is on {card.check.get('dataset')!r}, not the embedded images")
    result, images = embedded_check(model, TrainConfig(model=card.model, op=card.op, dataset=card.dataset))
    assert result["n"] == card.check["images"]
    assert result["acc"] == pytest.approx(card.check["acc"], abs=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(model(images), torch.tensor(card.reference["logits"]), rtol=1e-3, atol=1e-3)
