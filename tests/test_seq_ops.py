"""Sequence operators: lightweight convolutions (multiplicative, adder, shift-add), attention and the
two-branch block against independent loop references; incremental decoding against the full sequence."""
import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

from shiftadd import scale_adder_gradients
from shiftadd.nn import (
    TOKEN_MIXERS, AdderLightweightConv1d, AdderLinear, LightweightConv1d, MultiheadAttention,
    ShiftAddLightweightConv1d, ShiftLinear, TwoBranchBlock, token_mixer,
)
from shiftadd.ops.lightweight import adder_lightweight_conv1d, lightweight_conv1d


# ---------------------------------------------------------------- loop references (the equations)
def _window_value(x, mask, b, c, idx):
    """x[b, c, idx] inside the sequence and not padded, else 0 (zero padding)."""
    T = x.shape[2]
    if idx < 0 or idx >= T or (mask is not None and bool(mask[b, idx])):
        return None
    return x[b, c, idx]


def _left(K, causal):
    return K - 1 if causal else K // 2


def loop_lightweight(x, w, causal, mask):
    """Wu et al.: out[b,c,t] = sum_k softmax(w[h(c)])[k] x[b, c, t+k-pad] (autograd gives its gradients)."""
    B, C, T = x.shape
    H, K = w.shape
    p = torch.softmax(w, dim=1)
    left = _left(K, causal)
    rows = []
    for b in range(B):
        for c in range(C):
            h = c // (C // H)
            for t in range(T):
                acc = x.new_zeros(())
                for k in range(K):
                    v = _window_value(x, mask, b, c, t + k - left)
                    if v is not None:
                        acc = acc + p[h, k] * v
                rows.append(acc)
    return torch.stack(rows).view(B, C, T)


def loop_adder_with_grads(x, w, g, causal, mask):
    """out = -sum_k |x - w|, with AdderNet's full-precision weight and HardTanh input gradients (Eq. 5-6)."""
    B, C, T = x.shape
    H, K = w.shape
    left = _left(K, causal)
    out = torch.zeros(B, C, T, dtype=torch.float64)
    dx = torch.zeros(B, C, T, dtype=torch.float64)
    dw = torch.zeros(H, K, dtype=torch.float64)
    for b in range(B):
        for c in range(C):
            h = c // (C // H)
            for t in range(T):
                for k in range(K):
                    idx = t + k - left
                    v = _window_value(x, mask, b, c, idx)
                    xv = 0.0 if v is None else float(v)
                    wv = float(w[h, k])
                    out[b, c, t] -= abs(xv - wv)
                    dw[h, k] += (xv - wv) * float(g[b, c, t])
                    if v is not None:
                        dx[b, c, idx] += max(-1.0, min(1.0, wv - xv)) * float(g[b, c, t])
    return out.float(), dx.float(), dw.float()


CASES = [  # (B, C, T, H, K, causal, masked)
    (2, 4, 6, 1, 3, False, False),
    (2, 6, 7, 3, 3, True, False),
    (3, 4, 5, 2, 4, False, True),
    (2, 8, 6, 4, 5, True, True),
    (1, 2, 4, 2, 1, True, False),
]


def _mask(B, T, masked):
    if not masked:
        return None
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0] = T
    return torch.arange(T)[None, :] >= lengths[:, None]


@pytest.mark.parametrize("B,C,T,H,K,causal,masked", CASES)
def test_lightweight_conv_matches_loop_reference(B, C, T, H, K, causal, masked):
    torch.manual_seed(B * 100 + C * 10 + K)
    x = torch.randn(B, C, T, dtype=torch.float64, requires_grad=True)
    w = torch.randn(H, K, dtype=torch.float64, requires_grad=True)
    mask = _mask(B, T, masked)
    g = torch.randn(B, C, T, dtype=torch.float64)
    ref = loop_lightweight(x, w, causal, mask)
    rdx, rdw = torch.autograd.grad(ref, (x, w), g)
    out = lightweight_conv1d(x, w, causal, mask)
    dx, dw = torch.autograd.grad(out, (x, w), g)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(dx, rdx)
    torch.testing.assert_close(dw, rdw)
    if mask is not None:
        assert (dx.transpose(1, 2)[mask] == 0).all()


@pytest.mark.parametrize("B,C,T,H,K,causal,masked", CASES)
def test_adder_lightweight_conv_matches_loop_reference(B, C, T, H, K, causal, masked):
    torch.manual_seed(B * 100 + C * 10 + K)
    x = torch.randn(B, C, T, requires_grad=True)
    w = torch.randn(H, K, requires_grad=True)
    mask = _mask(B, T, masked)
    g = torch.randn(B, C, T)
    ref, rdx, rdw = loop_adder_with_grads(x.detach(), w.detach(), g, causal, mask)
    out = adder_lightweight_conv1d(x, w, causal, mask)
    dx, dw = torch.autograd.grad(out, (x, w), g)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx, rdx, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dw, rdw, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_adder_lightweight_conv_same_on_every_backend(backend, monkeypatch):
    torch.manual_seed(1)
    x = torch.randn(2, 8, 9, requires_grad=True)
    w = torch.randn(2, 3, requires_grad=True)
    g = torch.randn(2, 8, 9)
    ref, rdx, rdw = loop_adder_with_grads(x.detach(), w.detach(), g, True, None)
    monkeypatch.setenv("SHIFTADD_BACKEND", backend)
    out = adder_lightweight_conv1d(x, w, causal=True)
    dx, dw = torch.autograd.grad(out, (x, w), g)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx, rdx, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dw, rdw, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("cls", [LightweightConv1d, AdderLightweightConv1d, ShiftAddLightweightConv1d])
def test_padded_sentence_gets_its_unpadded_result(cls):
    torch.manual_seed(2)
    conv = cls(8, 3, heads=2, causal=False)
    x = torch.randn(2, 7, 8)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[1, 4:] = True
    x[1, 4:] = 100.0  # garbage in the padding must not leak
    out = conv(x, mask)
    alone = conv(x[1:, :4])
    torch.testing.assert_close(out[1:, :4], alone, atol=1e-5, rtol=1e-5)


def test_weight_dropout_only_while_training():
    torch.manual_seed(3)
    conv = LightweightConv1d(4, 5, heads=2, weight_dropout=0.5)
    x = torch.randn(2, 6, 4)
    conv.eval()
    torch.testing.assert_close(conv(x), conv(x))
    ref = lightweight_conv1d(x.transpose(1, 2), conv.weight).transpose(1, 2)
    torch.testing.assert_close(conv(x), ref)
    conv.train()
    assert not torch.allclose(conv(x), ref)


def test_adaptive_lr_scales_the_adder_time_conv():
    conv = AdderLightweightConv1d(4, 3, heads=2)
    conv(torch.randn(2, 5, 4)).sum().backward()
    assert scale_adder_gradients(conv) == 1
    g = conv.weight.grad
    torch.testing.assert_close(torch.linalg.vector_norm(g), torch.tensor(0.2 * math.sqrt(g.numel())))


def test_shiftadd_conv_is_shift_linear_then_adder_conv():
    torch.manual_seed(4)
    m = ShiftAddLightweightConv1d(6, 3, heads=3, causal=True)
    x = torch.randn(2, 5, 6)
    w_eff = m.shift.weight
    nz = w_eff[w_eff != 0].abs()
    assert torch.allclose(torch.log2(nz), torch.log2(nz).round())  # powers of two
    h = x @ w_eff.t()
    ref = adder_lightweight_conv1d(h.transpose(1, 2), m.adder.weight, causal=True).transpose(1, 2)
    torch.testing.assert_close(m(x), ref)


@pytest.mark.parametrize("cls", [ShiftLinear, AdderLinear])
def test_linear_layers_take_batch_time_channels(cls):
    layer = cls(6, 5)
    x = torch.randn(2, 7, 6)
    out = layer(x)
    assert out.shape == (2, 7, 5)
    torch.testing.assert_close(out[1, 3], layer(x[1, 3:4])[0])


# ---------------------------------------------------------------- attention
def loop_attention(x, mha, causal, mask, memory=None, memory_mask=None):
    """softmax(q k / sqrt(d)) v per (batch, head, query), keys skipped where masked."""
    B, T, C = x.shape
    H, d = mha.heads, C // mha.heads
    src = x if memory is None else memory
    kmask = mask if memory is None else memory_mask
    q, k, v = mha.q_proj(x), mha.k_proj(src), mha.v_proj(src)
    out = torch.zeros(B, T, C)
    for b in range(B):
        for h in range(H):
            sl = slice(h * d, (h + 1) * d)
            for i in range(T):
                keys = [j for j in range(src.shape[1])
                        if not (kmask is not None and kmask[b, j]) and not (causal and memory is None and j > i)]
                s = torch.stack([(q[b, i, sl] * k[b, j, sl]).sum() / math.sqrt(d) for j in keys])
                a = torch.softmax(s, 0)
                out[b, i, sl] = sum(a[n] * v[b, j, sl] for n, j in enumerate(keys))
    return mha.out_proj(out)


@pytest.mark.parametrize("causal,masked", [(False, False), (True, False), (False, True), (True, True)])
def test_attention_matches_loop_reference(causal, masked):
    torch.manual_seed(5)
    mha = MultiheadAttention(8, 2, causal=causal)
    x = torch.randn(2, 5, 8, requires_grad=True)
    mask = None
    if masked:
        mask = torch.zeros(2, 5, dtype=torch.bool)
        mask[1, 3:] = True
    g = torch.randn(2, 5, 8)
    ref = loop_attention(x, mha, causal, mask)
    params = [x] + list(mha.parameters())
    rgrads = torch.autograd.grad(ref, params, g)
    out = mha(x, mask)
    grads = torch.autograd.grad(out, params, g)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, rgrads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_cross_attention_matches_loop_reference():
    torch.manual_seed(6)
    mha = MultiheadAttention(8, 4)
    x, mem = torch.randn(2, 3, 8), torch.randn(2, 6, 8)
    mmask = torch.zeros(2, 6, dtype=torch.bool)
    mmask[0, 4:] = True
    out = mha(x, memory=mem, memory_padding_mask=mmask)
    torch.testing.assert_close(out, loop_attention(x, mha, False, None, mem, mmask), atol=1e-5, rtol=1e-5)


def test_two_branch_block_is_attention_and_lightweight_halves():
    torch.manual_seed(7)
    blk = TwoBranchBlock(8, 4, kernel_size=3, variant="adder", causal=True)
    x = torch.randn(2, 5, 8)
    out = blk(x)
    torch.testing.assert_close(out[..., :4], blk.attention(x[..., :4]))
    torch.testing.assert_close(out[..., 4:], blk.branch(x[..., 4:]))
    assert blk.attention.heads == 2 and blk.branch.conv.heads == 2


# ---------------------------------------------------------------- incremental decoding
@pytest.mark.parametrize("kind", TOKEN_MIXERS)
@pytest.mark.parametrize("chunks", [(1,) * 6, (2, 1, 3)])
def test_incremental_equals_full_sequence(kind, chunks):
    torch.manual_seed(8)
    block = token_mixer(kind, 8, 4, kernel_size=3, causal=True, proj_op="conv").eval()
    x = torch.randn(3, sum(chunks), 8)
    full = block(x)
    state, outs, t = {}, [], 0
    for n in chunks:
        outs.append(block(x[:, t:t + n], state=state))
        t += n
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)


def test_incremental_cross_attention_reuses_memory():
    torch.manual_seed(9)
    mha = MultiheadAttention(8, 2).eval()
    x, mem = torch.randn(2, 4, 8), torch.randn(2, 5, 8)
    full = mha(x, memory=mem)
    state = {}
    steps = [mha(x[:, t:t + 1], state=state, memory=mem) for t in range(4)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-6, rtol=1e-6)
    assert state["k"].shape == (2, 2, 5, 4)


class _Calls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.add(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


MULTIPLYING = {"conv1d", "conv2d", "linear", "matmul", "bmm", "mm", "einsum", "mul", "__mul__", "baddbmm", "addmm"}


@pytest.mark.parametrize("cls", [AdderLightweightConv1d, ShiftAddLightweightConv1d])
def test_incremental_adder_step_stays_multiplication_free(cls):
    """The cached time-convolution step goes through the adder primitive: no product anywhere.
    (The shift-add variant's channel mix is a ShiftLinear: power-of-two weights, i.e. shifts.)"""
    conv = cls(6, 3, heads=3, causal=True).eval()
    adder = conv.adder if isinstance(conv, ShiftAddLightweightConv1d) else conv
    x = torch.randn(2, 4, 6)
    state = {}
    with torch.no_grad():
        adder(x[:, :2], state=state)
        with _Calls() as calls:
            step = adder(x[:, 2:3], state=state)
    assert not (calls.names & MULTIPLYING), calls.names & MULTIPLYING
    torch.testing.assert_close(step, adder(x[:, :3])[:, 2:3])


def test_incremental_needs_causal():
    with pytest.raises(ValueError, match="causal"):
        LightweightConv1d(4, 3, causal=False)(torch.randn(1, 1, 4), state={})
    with pytest.raises(ValueError, match="causal"):
        MultiheadAttention(4, 2)(torch.randn(1, 1, 4), state={})
