"""shiftadd.utils and shiftadd.ops.im2col: the helpers shared by layers, kernels, conversion and pruning."""
from __future__ import annotations

import fnmatch
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from shiftadd.ops.im2col import col2im_grouped, conv_output_size, im2col_grouped
from shiftadd.utils import as_patterns, as_tuple, name_matches, pair, replace_module


def test_as_tuple_and_pair():
    assert as_tuple(3, 2) == (3, 3)
    assert as_tuple((1, 2, 3), 3) == (1, 2, 3)
    assert as_tuple(torch.Size([4, 5]), 2) == (4, 5)
    assert pair(2) == (2, 2) and pair([1, 3]) == (1, 3)
    assert all(type(v) is int for v in as_tuple((1.0, 2), 2))
    with pytest.raises(ValueError, match="stride must be an int or a tuple of 2 ints, got \\(1, 2, 3\\)"):
        as_tuple((1, 2, 3), 2, "stride")
    with pytest.raises(ValueError, match="kernel_size .* got the string '33'"):
        as_tuple("33", 2, "kernel_size")
    with pytest.raises(ValueError, match="padding must be >= 0"):
        as_tuple((0, -1), 2, "padding", minimum=0)
    assert as_tuple((0, -1), 2) == (0, -1)  # no minimum: not checked
    with pytest.raises(ValueError, match="dilation"):
        pair((1,), "dilation")


def _old_filter(names, include, exclude):
    """The filter as nn/convert.py and quant/qat.py wrote it before the shared helper."""
    def as_list(p):
        return [] if p is None else [p] if isinstance(p, str) else list(p)

    inc, exc = as_list(include), as_list(exclude)
    out = []
    for name in names:
        if inc and not any(fnmatch.fnmatchcase(name, p) for p in inc):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in exc):
            continue
        out.append(name)
    return out


NAMES = ["", "conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer2.0.shortcut.0", "fc", "Layer1.x"]
PATTERNS = [None, "layer1.*", ["layer1.*", "fc"], ("*conv1",), [], "*", "layer?.0.*", "LAYER1.*", "fc"]


@pytest.mark.parametrize("include,exclude", list(itertools.product(PATTERNS, PATTERNS)))
def test_name_matches_selects_what_the_old_filters_did(include, exclude):
    assert [n for n in NAMES if name_matches(n, include, exclude)] == _old_filter(NAMES, include, exclude)


def test_name_matches_semantics():
    assert name_matches("a.b")  # no patterns: everything
    assert name_matches("layer1.0.conv1", include="layer1.*")
    assert not name_matches("layer2.0.conv1", include="layer1.*")
    assert not name_matches("layer1.0.conv1", include="layer1.*", exclude="*.conv1")  # exclude wins
    assert not name_matches("Layer1.0", include="layer1.*")  # case-sensitive on every platform
    assert as_patterns(None) == [] and as_patterns("a*") == ["a*"] and as_patterns(iter(["a", "b"])) == ["a", "b"]


def _model():
    return nn.Sequential(nn.Conv2d(1, 2, 1), nn.Sequential(nn.ReLU(), nn.ModuleDict({"head": nn.Linear(2, 3)})))


def test_replace_module_by_dotted_name_including_sequential_indices():
    m = _model()
    keep = m[0]
    new_relu, new_head = nn.Tanh(), nn.Linear(2, 4)
    assert replace_module(m, "1.0", new_relu) is m
    assert replace_module(m, "1.1.head", new_head) is m
    assert m[1][0] is new_relu and m[1][1]["head"] is new_head and m[0] is keep
    assert [n for n, _ in m.named_modules()] == ["", "0", "1", "1.0", "1.1", "1.1.head"]  # order kept
    root = nn.ReLU()
    assert replace_module(nn.Linear(1, 1), "", root) is root  # the whole model


def test_replace_module_rejects_missing_names():
    m = _model()
    with pytest.raises(AttributeError):
        replace_module(m, "1.5", nn.ReLU())
    with pytest.raises(AttributeError):
        replace_module(m, "nothing.here", nn.ReLU())
    assert isinstance(m[1][0], nn.ReLU)


@pytest.mark.parametrize("seed", range(6))
def test_grouped_im2col_reproduces_conv2d(seed):
    g = torch.Generator().manual_seed(seed)
    rand = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
    G = rand(1, 4)
    N, C, O = rand(1, 3), G * rand(1, 3), G * rand(1, 3)
    k = (rand(1, 4), rand(1, 4))
    s, p, d = (rand(1, 3), rand(1, 3)), (rand(0, 3), rand(0, 3)), (rand(1, 3), rand(1, 3))
    H, W = rand(6, 11), rand(6, 11)
    x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    w = torch.randn(O, C // G, *k, generator=g, dtype=torch.float64)
    X, out_size = im2col_grouped(x, k, s, p, d, G)
    assert X.shape == (G, N * out_size[0] * out_size[1], C // G * k[0] * k[1])
    y = col2im_grouped(X @ w.reshape(G, O // G, -1).transpose(1, 2), N, out_size)
    ref = F.conv2d(x, w, None, s, p, d, G)
    assert out_size == tuple(ref.shape[2:]) == conv_output_size((H, W), k, s, p, d)
    torch.testing.assert_close(y, ref)
