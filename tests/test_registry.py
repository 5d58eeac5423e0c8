"""Operator-family registry (shiftadd.nn.families) and model-registry metadata (shiftadd.models.registry)."""
import json

import pytest
import torch
import torch.nn as nn

import shiftadd
from shiftadd.models import create, create_for_data, data_options, list_models, model_info, register_model
from shiftadd.models import registry
from shiftadd.nn import ADDER_TYPES, SHIFT_TYPES, conv_layer, linear_layer
from shiftadd.nn.families import (
    OperatorFamily, families, family_names, get_family, known_options, register_family, unregister_family,
)

BUILTIN = ("conv", "adder", "shift-q", "shift-ps", "shiftadd", "shiftadd-fixed")
# Options that shrink a zoo model (applied only where model_info says the builder takes them).
# Classifiers built with one operator family; supernets choose theirs per block (-O ops=[...]) and have their
# own options (tests/test_nas.py).
STATIC = [n for n in list_models(task="classification") if not n.startswith("supernet-")]
SHRINK = {"width": 8, "expansion": 1, "width_mult": 0.125, "widths": (4, 8, 8)}


def _small(name):
    info = model_info(name)
    return {k: v for k, v in SHRINK.items() if info.accepts(k)}


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def scratch_models(monkeypatch):
    """Registrations made in a test are discarded afterwards."""
    registry._load_all()
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))


# --- operator families ------------------------------------------------------------------------------------
def test_builtin_families_in_order_and_ops_derived():
    assert family_names()[:6] == BUILTIN
    assert shiftadd.nn.OPS == family_names()
    assert shiftadd.models.OPS == family_names()
    assert shiftadd.nn.factory.OPS == family_names()
    assert shiftadd.family_names is family_names and shiftadd.get_family is get_family
    assert [f.name for f in families(has_adder=True)] == ["adder", "shiftadd", "shiftadd-fixed"]
    assert [f.name for f in families(has_shift=True)] == ["shift-q", "shift-ps", "shiftadd", "shiftadd-fixed"]
    assert [f.name for f in families(multiplication_free=False)] == ["conv"]
    assert all(get_family(n).description and get_family(n).linear for n in BUILTIN)


@pytest.mark.parametrize("op", BUILTIN)
def test_family_properties_match_the_layers_it_builds(op):
    family = get_family(op)
    torch.manual_seed(0)
    model = create("resnet8", op=op, keep_first_last=False, width=4)
    mods = list(model.modules())
    assert any(isinstance(m, ADDER_TYPES) for m in mods) == family.has_adder
    assert any(isinstance(m, SHIFT_TYPES) for m in mods) == family.has_shift
    multiplies = any(type(m) in (nn.Conv1d, nn.Conv2d, nn.Linear) for m in mods)
    assert multiplies == (not family.multiplication_free)
    for m in mods:  # fixed options reach every layer of the family
        if isinstance(m, SHIFT_TYPES):
            assert m.mode == family.fixed_options["mode"]
        if hasattr(m, "fixed_shift"):
            assert m.fixed_shift == family.fixed_options.get("fixed_shift", False)
    conv, lin = conv_layer(op, 3, 4, 3, dim=1), linear_layer(op, 3, 4)
    assert type(conv) is family.conv[1] and type(lin) is family.linear


def test_layer_options_go_only_to_families_that_take_them():
    shift = conv_layer("shift-ps", 2, 2, 1, weight_bits=3, eta=0.5)  # eta is an adder option: dropped here
    assert shift.weight_bits == 3
    adder = conv_layer("adder", 2, 2, 1, weight_bits=3, eta=0.5)
    assert adder.eta == 0.5
    with pytest.raises(ValueError, match=r"unknown layer option\(s\) \['nope'\]"):
        conv_layer("conv", 2, 2, 1, nope=1)


def test_unknown_and_duplicate_family_errors():
    with pytest.raises(ValueError, match="unknown op 'mul'; choose one of: conv, adder, shift-q"):
        get_family("mul")
    with pytest.raises(ValueError, match="unknown op 'mul'"):
        conv_layer("mul", 2, 2, 1)
    with pytest.raises(ValueError, match="unknown op 'mul'"):
        create("resnet8", op="mul")
    with pytest.raises(ValueError, match="already registered"):
        register_family(get_family("adder"))
    with pytest.raises(ValueError, match="unknown family property"):
        families(is_fast=True)
    with pytest.raises(ValueError, match="both free and fixed"):
        OperatorFamily("bad", "x", conv={2: nn.Conv2d}, linear=nn.Linear, options={"mode"}, fixed_options={"mode": 1})
    assert family_names()[:6] == BUILTIN


class _ScaledConv2d(nn.Conv2d):
    def __init__(self, *args, scale: float = 1.0, gain: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale, self.gain = scale, gain


class _ScaledLinear(nn.Linear):
    def __init__(self, *args, scale: float = 1.0, gain: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale, self.gain = scale, gain


@pytest.fixture
def toy_family():
    family = register_family(OperatorFamily(
        "toy", "a test family", conv={2: _ScaledConv2d}, linear=_ScaledLinear, options=frozenset({"scale"}),
        fixed_options={"gain": 3.0}, multiplication_free=False))
    yield family
    unregister_family("toy")


def test_a_registered_family_is_usable_everywhere(toy_family):
    assert family_names()[-1] == "toy" and "toy" in shiftadd.nn.OPS
    assert "scale" in known_options()
    layer = conv_layer("toy", 3, 4, 3, scale=2.0, eta=0.1)  # eta belongs to another family: dropped
    assert type(layer) is _ScaledConv2d and layer.scale == 2.0 and layer.gain == 3.0
    with pytest.raises(ValueError, match=r"dim must be one of \[2\] for op 'toy'"):
        conv_layer("toy", 3, 4, 3, dim=1)
    model = create("resnet8", op="toy", keep_first_last=False, width=4, scale=0.5)
    inner = [m for m in model.modules() if isinstance(m, _ScaledConv2d)]
    assert inner and all(m.scale == 0.5 for m in inner)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="already registered"):
        register_family(toy_family)


def test_unregistered_family_is_gone(toy_family):
    unregister_family("toy")
    with pytest.raises(ValueError, match="unknown op 'toy'"):
        conv_layer("toy", 3, 4, 3)
    assert "scale" not in known_options()
    register_family(toy_family)  # the fixture removes it again


# --- every family builds every zoo model --------------------------------------------------------------------
@pytest.mark.parametrize("op", BUILTIN)
@pytest.mark.parametrize("name", STATIC)
def test_every_family_builds_every_model_on_its_input_shape(name, op):
    info = model_info(name)
    assert info.input_shape is not None, f"{name} declares no input_shape"
    torch.manual_seed(0)
    model = create(name, op=op, num_classes=info.num_classes, **_small(name))
    out = model(torch.randn(2, *info.input_shape))
    assert out.shape == (2, info.num_classes)
    assert torch.isfinite(out).all()


# --- model metadata -----------------------------------------------------------------------------------------
def test_models_declare_their_task():
    assert model_info("transformer-seq").task == "translation"
    assert model_info("resnet20").task == "classification"
    assert "transformer-seq" in list_models() and "transformer-seq" not in list_models(task="classification")
    assert list_models(task="translation") == ["supertransformer", "transformer-seq"]


def test_model_info_shapes_and_defaults():
    assert model_info("resnet20").input_shape == (3, 32, 32)
    assert model_info("vgg19-small").input_shape == (3, 32, 32)
    assert model_info("mnist-mlp").input_shape == (1, 28, 28)
    assert model_info("lenet5").input_shape == (1, 28, 28)
    assert model_info("har-cnn").input_shape == (6, 128)
    assert model_info("har-cnn").num_classes == 12 and model_info("resnet20").num_classes == 10
    assert "ResNet-20" in model_info("resnet20").description
    assert "Options:" not in model_info("resnet20").description


def test_model_info_options_come_from_the_signatures():
    resnet, vgg, mlp = model_info("resnet20"), model_info("vgg-small"), model_info("mnist-mlp")
    assert {"in_channels", "width", "shortcut", "keep_first_last", "eta", "weight_bits"} <= resnet.options
    assert not resnet.accepts("image_size") and not resnet.accepts("depth") and not resnet.accepts("op")
    assert {"in_channels", "image_size", "width_mult", "hidden"} <= vgg.options and not vgg.accepts("cfg")
    assert {"image_size", "hidden", "dropout"} <= mlp.options
    assert model_info("har-cnn").accepts("in_channels") and not model_info("har-cnn").accepts("image_size")
    assert model_info("shiftresnet20").accepts("expansion")


@pytest.mark.parametrize("name", STATIC)
def test_inferred_data_options_match_what_the_builder_really_takes(name):
    shape = model_info(name).input_shape
    for key, value in (("in_channels", shape[0]), ("image_size", shape[-1])):
        try:
            create(name, **_small(name), **{key: value})
            takes = True
        except (TypeError, ValueError):  # unexpected keyword / unknown layer option
            takes = False
        assert model_info(name).accepts(key) == takes, key


def test_explicit_and_opaque_builder_signatures(scratch_models):
    @register_model("toy-explicit", input_shape=(2, 8, 8), description="explicit", paper="none")
    def toy_explicit(op: str = "conv", num_classes: int = 4, image_size: int = 8, depth: int = 1):
        return nn.Flatten()

    @register_model("toy-opaque")
    def toy_opaque(op="conv", num_classes=10, **options):
        return nn.Flatten()

    info = model_info("toy-explicit")
    assert info.options == {"image_size", "depth"} and info.num_classes == 4 and info.input_shape == (2, 8, 8)
    assert (info.description, info.paper) == ("explicit", "none")
    assert model_info("toy-opaque").options is None and model_info("toy-opaque").input_shape is None
    assert data_options("toy-explicit", in_channels=3, image_size=16) == {"image_size": 16}
    assert data_options("toy-opaque", in_channels=3, image_size=16) == {}


def test_register_model_plain_form_and_duplicates(scratch_models):
    @register_model("toy-plain")
    def toy_plain(op="conv", num_classes=10):
        """A toy. Options: none."""
        return nn.Linear(1, num_classes)

    assert "toy-plain" in list_models() and model_info("toy-plain").description == "A toy."
    assert isinstance(create("toy-plain", num_classes=3), nn.Linear)
    with pytest.raises(ValueError, match="registered twice"):
        register_model("toy-plain")(toy_plain)
    with pytest.raises(ValueError, match="'fe_net' is registered twice"):
        register_model("toy-other", aliases=("fe_net",))(toy_plain)
    with pytest.raises(ValueError, match="'fe-net' is registered twice"):
        register_model("toy-other", aliases=("fe-net",))(toy_plain)


# --- names and aliases ----------------------------------------------------------------------------------------
def test_names_are_lowercase_hyphenated_and_aliases_resolve():
    names = list_models()
    assert all(n == n.lower() and "_" not in n and " " not in n for n in names)
    assert "fe-net" in names and "fe_net" not in names
    assert model_info("fe_net").name == "fe-net" and model_info("fe-net").aliases == ("fe_net",)
    assert model_info("vgg_small").name == "vgg-small"  # underscore spelling of any name
    assert registry.resolve_model_name("HAR_CNN") == "har-cnn"
    torch.manual_seed(0)
    old = create("fe_net", op="adder", expansion=1)
    torch.manual_seed(0)
    new = create("fe-net", op="adder", expansion=1)
    assert _same_state(old, new)
    with pytest.raises(ValueError, match="unknown model 'fe'; choose one of: addressnet20"):
        model_info("fe")


def test_config_accepts_an_old_model_name():
    from shiftadd.errors import UserError
    from shiftadd.train.config import make_config

    assert make_config("shiftaddnet", {"model": "fe_net", "op": "shift-ps"}).model == "fe_net"
    with pytest.raises(UserError, match="unknown model 'fe'"):
        make_config("shiftaddnet", {"model": "fe"})


# --- create_for_data ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expect", [("vgg-small", {"in_channels": 1, "image_size": 28}),
                                          ("mnist-cnn", {"in_channels": 1, "image_size": 28}),
                                          ("resnet8", {"in_channels": 1}),
                                          ("har-cnn", {"in_channels": 1})])
def test_create_for_data_passes_only_what_the_builder_takes(name, expect):
    assert data_options(name, in_channels=1, image_size=28) == expect
    opts = _small(name)
    torch.manual_seed(0)
    model = create_for_data(name, "adder", 5, in_channels=1, image_size=28, **opts)
    rng_after = torch.get_rng_state()
    torch.manual_seed(0)
    direct = create(name, "adder", 5, **expect, **opts)
    assert torch.equal(rng_after, torch.get_rng_state())  # no RNG used by a failed attempt
    assert _same_state(model, direct)
    x = torch.randn(2, 1, 28) if name == "har-cnn" else torch.randn(2, 1, 28, 28)
    assert model(x).shape == (2, 5)


def test_create_for_data_without_data_equals_create():
    torch.manual_seed(1)
    a = create_for_data("resnet8", "shift-ps", 10, width=4)
    torch.manual_seed(1)
    b = create("resnet8", "shift-ps", 10, width=4)
    assert _same_state(a, b)


# --- commands that read the registries ----------------------------------------------------------------------
def test_models_command_prints_both_tables(capsys):
    from shiftadd.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    fam = out[:out.index("architectures")]
    for f in families():
        line = next(l for l in fam.splitlines() if l.split()[:1] == [f.name])
        assert ("yes" if f.multiplication_free else "no") in line.split() and f.description in line
    fe = next(l for l in out.splitlines() if l.split()[:1] == ["fe-net"])
    assert "3x32x32" in fe and "fe_net" in fe
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_name = {m["name"]: m for m in data["models"]}
    assert by_name["har-cnn"]["input_shape"] == [6, 128] and by_name["fe-net"]["aliases"] == ["fe_net"]
    assert [o["name"] for o in data["ops"]] == list(family_names())
    assert [o["multiplication_free"] for o in data["ops"]][:2] == [False, True]


def test_help_texts_list_the_registered_families(toy_family):
    from shiftadd.nn.families import op_help

    assert "conv, adder, shift-q, shift-ps, shiftadd, shiftadd-fixed, toy" in op_help()
    assert "(default conv)" in op_help("conv")


def test_energy_uses_the_declared_input_shape(scratch_models):
    from shiftadd.energy.commands import default_input_shape

    assert default_input_shape("fe_net") == (3, 32, 32)
    assert default_input_shape("har-cnn") == (6, 128)
    assert default_input_shape("mnist-mlp") == (1, 28, 28)

    @register_model("toy-shapeless")
    def toy(op="conv", num_classes=10):
        return nn.Linear(1, num_classes)

    assert default_input_shape("toy-shapeless") is None


def test_a_run_saved_under_an_old_model_name_loads(tmp_path, capsys):
    from shiftadd.cli import main
    from shiftadd.train import load_trained_model

    out = tmp_path / "run"
    args = ["train", "--dataset", "embedded", "--subset", "20", "--test-subset", "20", "--epochs", "1",
            "--batch-size", "10", "--model", "fe_net", "-O", "expansion=1", "--op", "shift-ps", "--threads", "1",
            "--no-progress", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    model, config, _ = load_trained_model(str(out))
    assert config.model == "fe_net"
    assert type(model).__name__ == "FENet"
    assert main(["eval", "--checkpoint", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["model"] == "fe_net"
