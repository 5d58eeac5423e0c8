"""Spatial shift operators against direct index-based references, and the shift networks."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn as nn

import shiftadd.ops.spatial_shift as S
from shiftadd.nn.spatial_shift import (ActiveShift2d, AddressShift, ChannelShift, ShortcutShift, SparseShift2d,
                                       SpatialShift, SpatialShift1d, SpatialShift2d, freeze_sparse_shifts,
                                       remove_zero_shift_layers, shift_sparsity_report, sparse_shift_penalty,
                                       total_shift_sparsity)

import shiftadd.models.shiftnet as SN  # registers the models even before shiftadd.models lists the module


# ---------------------------------------------------------------------------------------------
# direct, loop-based references (channels-first, any number of spatial axes)
# ---------------------------------------------------------------------------------------------
def ref_shift(x, offsets, stride):
    """y[n, c, p] = x[n, c, p*s + d_c] if inside, else 0 -- one element at a time."""
    N, C, *sizes = x.shape
    out_sizes = [(n - 1) // s + 1 for n, s in zip(sizes, stride)]
    y = torch.zeros(N, C, *out_sizes, dtype=x.dtype)
    for c in range(C):
        d = [int(v) for v in offsets[c]]
        for p in itertools.product(*[range(n) for n in out_sizes]):
            src = [pi * s + di for pi, s, di in zip(p, stride, d)]
            if all(0 <= q < n for q, n in zip(src, sizes)):
                y[(slice(None), c) + tuple(p)] = x[(slice(None), c) + tuple(src)]
    return y


def ref_shift_grad(g, offsets, stride, in_sizes):
    """Adjoint of ref_shift: scatter every output gradient back to the element it was read from."""
    N, C, *out_sizes = g.shape
    gx = torch.zeros(N, C, *in_sizes, dtype=g.dtype)
    for c in range(C):
        d = [int(v) for v in offsets[c]]
        for p in itertools.product(*[range(n) for n in out_sizes]):
            src = [pi * s + di for pi, s, di in zip(p, stride, d)]
            if all(0 <= q < n for q, n in zip(src, in_sizes)):
                gx[(slice(None), c) + tuple(src)] += g[(slice(None), c) + tuple(p)]
    return gx


def ref_bilinear(x, shift, stride):
    """Active shift, one output pixel at a time: bilinear read of x at p*s + shift_c, zero outside."""
    N, C, H, W = x.shape
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    y = torch.zeros(N, C, Ho, Wo, dtype=x.dtype)

    def at(c, i, j):
        return x[:, c, i, j] if 0 <= i < H and 0 <= j < W else torch.zeros(N, dtype=x.dtype)

    for c in range(C):
        dy, dx = float(shift[c, 0]), float(shift[c, 1])
        for i in range(Ho):
            for j in range(Wo):
                py, px = i * stride + dy, j * stride + dx
                i0, j0 = math.floor(py), math.floor(px)
                ty, tx = py - i0, px - j0
                y[:, c, i, j] = ((1 - ty) * (1 - tx) * at(c, i0, j0) + (1 - ty) * tx * at(c, i0, j0 + 1)
                                 + ty * (1 - tx) * at(c, i0 + 1, j0) + ty * tx * at(c, i0 + 1, j0 + 1))
    return y


@pytest.fixture(params=["slices", "sorted"])
def strategy(request, monkeypatch):
    """Run a test with both implementations: slice copies per channel run, and channels sorted by offset first."""
    monkeypatch.setattr(S, "MAX_SLICE_RUNS", 10 ** 6 if request.param == "slices" else 0)
    return request.param


def _random_offsets(C, dim, low=-3, high=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (C, dim), generator=g)


# ---------------------------------------------------------------------------------------------
# grouped / integer shift
# ---------------------------------------------------------------------------------------------
def test_grouped_offsets_assignment():
    offs = S.grouped_shift_offsets(20, 3)
    # 9 groups of 20 // 9 = 2 consecutive channels in raster order, the 2 remaining channels unshifted
    expected = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) for _ in range(2)] + [(0, 0), (0, 0)]
    assert [tuple(r) for r in offs.tolist()] == expected
    dil = S.grouped_shift_offsets(20, 3, dilation=2)
    assert torch.equal(dil, 2 * offs)
    five = S.grouped_shift_offsets(27, 5)  # 25 directions, one channel each, two unshifted
    assert len({tuple(r) for r in five[:25].tolist()}) == 25 and five[25:].abs().sum() == 0
    assert S.grouped_shift_offsets(9, 3, dim=1).shape == (9, 1)
    with pytest.raises(ValueError):
        S.grouped_shift_offsets(9, 2)


@pytest.mark.parametrize("stride", [1, 2, (2, 3), 3])
def test_shift_forward_backward_against_reference(strategy, stride):
    torch.manual_seed(0)
    x = torch.randn(2, 7, 6, 7, dtype=torch.float64, requires_grad=True)
    offs = _random_offsets(7, 2)
    offs[0] = torch.tensor([0, 9])   # entirely outside the map: all zeros
    offs[1] = torch.tensor([-6, 0])
    st = (stride, stride) if isinstance(stride, int) else stride
    y = S.spatial_shift(x, offs, stride)
    assert torch.equal(y, ref_shift(x.detach(), offs, st))
    assert torch.equal(y[:, 0], torch.zeros_like(y[:, 0]))
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.equal(gx, ref_shift_grad(g, offs, st, [6, 7]))


def test_all_directions_and_borders(strategy):
    """Each of the 9 directions of a 3x3 shift (and 25 of a dilated 5x5) against the reference."""
    x = torch.arange(2 * 9 * 5 * 6, dtype=torch.float64).view(2, 9, 5, 6)
    m = SpatialShift2d(9, kernel_size=3)
    y = m(x)
    assert torch.equal(y, ref_shift(x, m.offsets, (1, 1)))
    # explicit borders: channel 0 reads (i-1, j-1): its first row and first column are zero fill
    assert torch.equal(y[:, 0, 0], torch.zeros(2, 6, dtype=torch.float64))
    assert torch.equal(y[:, 0, :, 0], torch.zeros(2, 5, dtype=torch.float64))
    assert torch.equal(y[:, 0, 1:, 1:], x[:, 0, :-1, :-1])
    assert torch.equal(y[:, 4], x[:, 4])  # the centre group is not moved
    x5 = torch.randn(1, 27, 7, 8, dtype=torch.float64)
    m5 = SpatialShift2d(27, kernel_size=5, dilation=2)
    assert torch.equal(m5(x5), ref_shift(x5, m5.offsets, (1, 1)))


@pytest.mark.parametrize("dim", [1, 3])
def test_shift_1d_3d(strategy, dim):
    torch.manual_seed(1)
    sizes = [9] if dim == 1 else [4, 5, 3]
    x = torch.randn(2, 5, *sizes, dtype=torch.float64, requires_grad=True)
    offs = _random_offsets(5, dim, -2, 3, seed=dim)
    stride = (2,) * dim
    y = S.spatial_shift(x, offs, 2)
    assert torch.equal(y, ref_shift(x.detach(), offs, stride))
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.equal(gx, ref_shift_grad(g, offs, stride, sizes))
    if dim == 1:
        assert torch.equal(SpatialShift1d(5, offsets=offs, stride=2)(x), y)


def test_shift_layouts(strategy):
    """(N, H, W, C) tensors and channels_last memory format give the same result, format kept."""
    torch.manual_seed(2)
    x = torch.randn(2, 30, 6, 5)
    offs = _random_offsets(30, 2, -2, 3)
    ref = S.spatial_shift(x, offs, 2)
    xl = x.contiguous(memory_format=torch.channels_last)
    yl = S.spatial_shift(xl, offs, 2)
    assert torch.equal(yl, ref) and yl.is_contiguous(memory_format=torch.channels_last)
    nhwc = x.permute(0, 2, 3, 1).contiguous()
    y_nhwc = S.spatial_shift(nhwc, offs, 2, channels_last=True)
    assert torch.equal(y_nhwc.permute(0, 3, 1, 2), ref)
    # gradients in every layout equal the reference adjoint
    g = torch.randn_like(ref)
    for inp, gg, back in ((xl, g.contiguous(memory_format=torch.channels_last), lambda t: t),
                          (nhwc, g.permute(0, 2, 3, 1), lambda t: t.permute(0, 3, 1, 2))):
        inp = inp.clone().requires_grad_(True)
        out = S.spatial_shift(inp, offs, 2, channels_last=inp.dim() == 4 and inp.shape[-1] == 30)
        (gi,) = torch.autograd.grad(out, inp, gg)
        assert torch.allclose(back(gi), ref_shift_grad(g.double(), offs, (2, 2), [6, 5]).float())


def test_shift_gradcheck_and_double_backward():
    x = torch.randn(1, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    offs = torch.tensor([[1, 0], [0, -1], [-1, 2], [0, 0]])
    f = lambda t: S.spatial_shift(t, offs, (2, 1))  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_shift_is_movement_only():
    """Values are copied bit for bit (no arithmetic), and the module counts no multiplication."""
    x = torch.tensor([[[[1e-30, 3.3, -7.1e20]]]]).repeat(1, 9, 3, 1)
    y = SpatialShift2d(9)(x)
    vals = set(y.flatten().tolist()) - {0.0}
    assert vals <= set(x.flatten().tolist())
    assert SpatialShift2d(9).op_counts((2, 9, 8, 8)) == {"moves": 2 * 9 * 64, "mults": 0, "adds": 0}


def test_shift_bad_input():
    with pytest.raises(ValueError, match="channels"):
        SpatialShift2d(8)(torch.randn(1, 9, 4, 4))
    with pytest.raises(ValueError, match="4-D"):
        SpatialShift2d(8)(torch.randn(8, 4, 4))
    with pytest.raises(ValueError, match="integer"):
        S.spatial_shift(torch.randn(1, 2, 3, 3), torch.tensor([[0.5, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        S.spatial_shift(torch.randn(1, 2, 3, 3), torch.zeros(3, 2, dtype=torch.long))


def test_shift_state_dict_roundtrip():
    a = SpatialShift2d(5, offsets=torch.tensor([[1, 0], [0, 1], [-1, 0], [0, -1], [2, 2]]))
    b = SpatialShift2d(5)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 5, 4, 4)
    assert torch.equal(a(x), b(x))


# ---------------------------------------------------------------------------------------------
# active shift
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stride", [1, 2])
def test_active_shift_forward_against_bilinear_reference(stride):
    torch.manual_seed(3)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    shift = torch.tensor([[0.3, -0.7], [1.25, 0.5], [-0.4, -1.6], [2.0, -3.0]], dtype=torch.float64)
    assert torch.allclose(S.active_shift(x, shift, stride), ref_bilinear(x, shift, stride), atol=1e-12)


def test_active_shift_integer_shift_equals_shift():
    x = torch.randn(2, 3, 5, 5)
    offs = torch.tensor([[1, -2], [0, 0], [-1, 3]])
    assert torch.allclose(S.active_shift(x, offs.float()), S.spatial_shift(x, offs))


@pytest.mark.parametrize("stride", [1, 2])
def test_active_shift_gradients_finite_differences(stride):
    torch.manual_seed(4)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    shift = torch.tensor([[0.3, -0.7], [1.2, 0.45], [-1.4, -0.6]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: S.active_shift(a, b, stride), (x, shift))
    # the shift gradient by hand: d/dshift of sum(g * y), central differences on each entry
    y = S.active_shift(x, shift, stride)
    g = torch.randn_like(y)
    (gs,) = torch.autograd.grad(y, shift, g)
    eps = 1e-6
    for c, k in itertools.product(range(3), range(2)):
        sp, sm = shift.detach().clone(), shift.detach().clone()
        sp[c, k] += eps
        sm[c, k] -= eps
        fd = ((S.active_shift(x.detach(), sp, stride) - S.active_shift(x.detach(), sm, stride)) * g).sum() / (2 * eps)
        assert abs(float(fd) - float(gs[c, k])) < 1e-6


def test_active_shift_gradient_normalisation():
    torch.manual_seed(5)
    x = torch.randn(2, 4, 6, 6)
    shift = torch.randn(4, 2) * 0.8
    g = torch.randn(2, 4, 6, 6)
    s1 = shift.clone().requires_grad_(True)
    (raw,) = torch.autograd.grad(S.active_shift(x, s1), s1, g)
    s2 = shift.clone().requires_grad_(True)
    (nrm,) = torch.autograd.grad(S.active_shift(x, s2, normalize_grad=True), s2, g)
    assert torch.allclose(nrm.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(nrm * raw.norm(dim=1, keepdim=True), raw, atol=1e-5)
    layer = ActiveShift2d(4, normalize_grad=True)
    layer(x).mul(g).sum().backward()
    assert torch.allclose(layer.shift.grad.norm(dim=1), torch.ones(4), atol=1e-5)
    assert layer.op_counts((2, 4, 6, 6))["mults"] == 4 * 2 * 4 * 36


# ---------------------------------------------------------------------------------------------
# sparse shift
# ---------------------------------------------------------------------------------------------
def test_sparse_shift_forward_and_gradients(strategy):
    torch.manual_seed(6)
    x = torch.randn(2, 6, 5, 6, dtype=torch.float64, requires_grad=True)
    shift = (torch.rand(6, 2, dtype=torch.float64) * 4 - 2).requires_grad_(True)
    y = S.sparse_shift(x, shift, 2)
    offs = torch.round(shift.detach()).long()
    assert torch.equal(y, ref_shift(x.detach(), offs, (2, 2)))  # integer shift forward
    g = torch.randn_like(y)
    gx, gs = torch.autograd.grad(y, (x, shift), g)
    assert torch.equal(gx, ref_shift_grad(g, offs, (2, 2), [5, 6]))  # exact gradient of the forward
    s2 = shift.detach().clone().requires_grad_(True)
    (gs_asl,) = torch.autograd.grad(S.active_shift(x.detach(), s2, 2), s2, g)
    assert torch.allclose(gs, gs_asl)  # interpolation gradient at the real shift
    eps = 1e-6  # ... which is the derivative of the interpolated (active) shift: finite differences
    for c, k in itertools.product(range(6), range(2)):
        sp, sm = shift.detach().clone(), shift.detach().clone()
        sp[c, k] += eps
        sm[c, k] -= eps
        fd = ((S.active_shift(x.detach(), sp, 2) - S.active_shift(x.detach(), sm, 2)) * g).sum() / (2 * eps)
        assert abs(float(fd) - float(gs[c, k])) < 1e-6


def test_sparse_penalty_sparsity_and_removal():
    torch.manual_seed(7)
    model = nn.Sequential(SparseShift2d(8, l1=1e-3), nn.Conv2d(8, 8, 1), SparseShift2d(8, l1=1e-3),
                          nn.Sequential(nn.Conv2d(8, 8, 1), SparseShift2d(8, l1=1e-3)))
    layers = [model[0], model[2], model[3][1]]
    expected = sum(1e-3 * l.shift.abs().sum() for l in layers)
    assert torch.allclose(sparse_shift_penalty(model), expected)
    assert torch.allclose(sparse_shift_penalty(model, l1=2.0), 2000 * expected)
    with torch.no_grad():
        layers[0].shift.uniform_(-0.49, 0.49)          # rounds to zero everywhere
        layers[1].shift.zero_()
        layers[1].shift[3] = torch.tensor([0.0, 1.6])  # one shifted channel
        layers[2].shift.fill_(0.2)
    report = shift_sparsity_report(model)
    assert [r["layer"] for r in report] == ["0", "2", "3.1"]
    assert [r["unshifted"] for r in report] == [8, 7, 8]
    assert total_shift_sparsity(model) == pytest.approx(23 / 24)
    x = torch.randn(2, 8, 5, 5)
    before = model(x)
    removed = remove_zero_shift_layers(model)
    assert removed == ["0", "3.1"]
    assert isinstance(model[0], nn.Identity) and isinstance(model[3][1], nn.Identity)
    assert isinstance(model[2], SparseShift2d)
    assert torch.equal(model(x), before)
    freeze_sparse_shifts(model)
    assert isinstance(model[2], SpatialShift) and torch.equal(model(x), before)


def test_l1_penalty_drives_shifts_to_zero():
    """Fitting the identity on smooth maps from random shifts: the penalty zeroes every shift, no penalty does not."""
    unshifted = {}
    for l1 in (0.0, 5e-2):
        torch.manual_seed(8)
        layer = SparseShift2d(16, l1=l1, init_range=1.5)
        opt = torch.optim.SGD(layer.parameters(), lr=0.5)
        x = torch.randn(8, 16, 10, 10).cumsum(-1).cumsum(-2)
        x = x / x.std()
        start = layer.num_unshifted()
        for _ in range(60):
            opt.zero_grad()
            loss = (layer(x) - x).pow(2).mean() + layer.penalty()
            loss.backward()
            opt.step()
        unshifted[l1] = layer.num_unshifted()
    assert start < 8
    assert unshifted[5e-2] == 16 and unshifted[0.0] < 12


def test_sparse_shift_learns_a_needed_shift():
    """The interpolation gradient moves a channel's shift toward the displacement in the data."""
    torch.manual_seed(9)
    x = torch.randn(16, 1, 12, 12).cumsum(-1).cumsum(-2)  # smooth maps: informative gradients
    target = S.spatial_shift(x, torch.tensor([[0, 2]]))
    layer = SparseShift2d(1, l1=0.0, init_range=0.0)
    opt = torch.optim.SGD(layer.parameters(), lr=0.05)
    for _ in range(80):
        opt.zero_grad()
        (layer(x) - target).pow(2).mean().backward()
        opt.step()
    assert layer.integer_offsets().tolist() == [[0, 2]]


# ---------------------------------------------------------------------------------------------
# AddressNet primitives
# ---------------------------------------------------------------------------------------------
def test_channel_shift_against_reference():
    x = torch.randn(2, 10, 3, 3, dtype=torch.float64, requires_grad=True)
    y = ChannelShift(3)(x)
    for c in range(10):
        assert torch.equal(y[:, c], x[:, (c + 3) % 10])
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    for c in range(10):
        assert torch.equal(gx[:, (c + 3) % 10], g[:, c])
    assert torch.equal(S.channel_shift(x, -7), y)
    sh = S.channel_shuffle(x.detach(), 2)  # reference channel shuffle: c = i*g + j <- j*(C/g) + i
    for i, j in itertools.product(range(5), range(2)):
        assert torch.equal(sh[:, i * 2 + j], x.detach()[:, j * 5 + i])


def ref_address(x, direction):
    """Address shift by index: vertical = zero-fill shift, horizontal = walk along the flat plane."""
    N, C, H, W = x.shape
    flat = x.reshape(N, C, H * W)
    off = {"left": 1, "right": -1, "up": W, "down": -W}[direction]
    out = torch.zeros_like(flat)
    for k in range(H * W):
        if 0 <= k + off < H * W:
            out[:, :, k] = flat[:, :, k + off]
    return out.view(N, C, H, W)


@pytest.mark.parametrize("direction", S.ADDRESS_DIRECTIONS)
def test_address_shift_views(direction):
    torch.manual_seed(10)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    y = S.address_shift(x, direction)
    assert torch.equal(y, ref_address(x.detach(), direction))
    if direction in ("up", "down"):  # vertical: exactly the zero-fill shift by one row
        d = torch.tensor([[1 if direction == "up" else -1, 0]] * 3)
        assert torch.equal(y, S.spatial_shift(x, d))
    else:  # horizontal: interior columns are the zero-fill shift, the edge wraps to the neighbouring row
        d = torch.tensor([[0, 1 if direction == "left" else -1]] * 3)
        z = S.spatial_shift(x, d)
        cols = slice(0, 4) if direction == "left" else slice(1, 5)
        assert torch.equal(y[..., cols], z[..., cols])
        if direction == "left":
            assert torch.equal(y[:, :, :-1, -1], x[:, :, 1:, 0])
    assert torch.autograd.gradcheck(lambda t: S.address_shift(t, direction), (x,))
    # several directions are views of one buffer: no copy after the first
    buf = S.AddressBuffer.from_tensor(x.detach())
    v = buf.shifted(direction, slice(1, 3))
    assert v.untyped_storage().data_ptr() == buf.storage.untyped_storage().data_ptr()
    assert torch.equal(v, y.detach()[:, 1:3])


def test_address_shift_channels_last_and_groups():
    torch.manual_seed(11)
    x = torch.randn(2, 8, 4, 5)
    nhwc = x.permute(0, 2, 3, 1).contiguous()
    for d in ("up", "down"):  # vertical behaviour is layout independent
        assert torch.equal(S.address_shift(nhwc, d, channels_last=True).permute(0, 3, 1, 2), S.address_shift(x, d))
    y = S.address_shift(nhwc, "left", channels_last=True).permute(0, 3, 1, 2)
    assert torch.equal(y[..., :-1], x[..., 1:])
    layer = AddressShift(("left", "up", None, "down"))
    out = layer(x)
    groups = S.address_groups(8, 4)
    assert torch.equal(out[:, groups[0]], S.address_shift(x, "left")[:, groups[0]])
    assert torch.equal(out[:, groups[1]], S.address_shift(x, "up")[:, groups[1]])
    assert torch.equal(out[:, groups[2]], x[:, groups[2]])
    views = AddressShift(("left", "up", None, "down"), return_groups=True)(x)
    assert torch.equal(torch.cat(views, 1), out)
    with pytest.raises(ValueError):
        AddressShift(("sideways",))


def test_shortcut_shift():
    a = torch.randn(2, 3, 4, 4, requires_grad=True)
    b = torch.randn(2, 5, 4, 4, requires_grad=True)
    y = ShortcutShift()(a, b)
    assert torch.equal(y, torch.cat([a, b], 1))
    g = torch.randn_like(y)
    ga, gb = torch.autograd.grad(y, (a, b), g)
    assert torch.equal(ga, g[:, :3]) and torch.equal(gb, g[:, 3:])
    reuse = ShortcutShift(reuse_buffer=True)
    with torch.no_grad():
        p1 = reuse(a, b).data_ptr()
        p2 = reuse(b, a).data_ptr()
    assert p1 == p2
    with pytest.raises(ValueError):
        S.shortcut_shift([a, torch.randn(2, 3, 5, 4)])


# ---------------------------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------------------------
PUBLISHED_PARAMS_M = {  # Wu et al. 2018 / shiftresnet-cifar README: millions of parameters
    20: {1: 0.03, 3: 0.10, 6: 0.19, 9: 0.28},
    56: {1: 0.10, 3: 0.29, 6: 0.58, 9: 0.87},
    110: {1: 0.20, 3: 0.59, 6: 1.18, 9: 1.76},
}


def _params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_shiftresnet_parameter_counts(depth):
    from shiftadd.models import create

    for e, published in PUBLISHED_PARAMS_M[depth].items():
        m = create(f"shiftresnet{depth}", expansion=e)
        assert round(_params(m) / 1e6, 2) == published, (depth, e, _params(m))
    assert _params(create("shiftresnet20", expansion=3)) < 0.4 * _params(create("resnet20"))


def test_registry_names_and_forward():
    from shiftadd.models import create, list_models

    names = list_models()
    for n in ("shiftresnet20", "shiftresnet56", "shiftresnet110", "fe-net", "addressnet20"):
        assert n in names
    x = torch.randn(2, 3, 32, 32)
    for n in ("shiftresnet20", "fe_net", "addressnet20"):
        m = create(n, num_classes=7)
        y = m(x)
        assert y.shape == (2, 7)
        y.sum().backward()
        assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_shift_kinds_and_sparse_network():
    x = torch.randn(2, 3, 32, 32)
    for kind, cls in (("grouped", SpatialShift2d), ("active", ActiveShift2d), ("sparse", SparseShift2d)):
        m = SN.ShiftResNet(20, expansion=1, shift=kind)
        assert sum(isinstance(l, cls) for l in m.modules()) == 9
        assert m(x).shape == (2, 10)
    fe = SN.fe_net(shift_options={"l1": 1e-3})
    rows = shift_sparsity_report(fe)
    assert len(rows) == 9 and sparse_shift_penalty(fe) > 0
    with torch.no_grad():
        for l in fe.modules():
            if isinstance(l, SparseShift2d):
                l.shift.zero_()
    fe.eval()
    before = fe(x)
    assert len(remove_zero_shift_layers(fe)) == 9 and torch.allclose(fe(x), before)


def test_fe_block_partial_computation():
    """Units before the last touch only their first k channels; the rest pass through unchanged."""
    blk = SN.FEBlock("conv", 12, 12, units=3, stride=1, expansion=2).eval()
    assert blk.splits == [4, 8]
    x = torch.randn(2, 12, 6, 6)
    h = blk.inner[0](x[:, :4])
    assert torch.equal(torch.cat([h, x[:, 4:]], 1)[:, 8:], x[:, 8:])


@pytest.mark.parametrize("op", ["adder", "shiftadd"])
def test_shift_networks_with_other_operators(op):
    """The 1x1 layers come from conv_layer(op): e.g. a ShiftResNet whose 1x1 convs are shift-add."""
    from shiftadd.nn import ADDER_TYPES, SHIFTADD_TYPES

    types = SHIFTADD_TYPES if op == "shiftadd" else ADDER_TYPES
    x = torch.randn(2, 3, 16, 16)
    for m in (SN.ShiftResNet(20, op=op, expansion=1), SN.AddressNet(20, op=op, expansion=1)):
        n = sum(isinstance(l, types) for l in m.modules())
        assert n >= 18
        m(x).sum().backward()
