"""The integer reference network: what the exported C computes, written with torch int64 math.

A traced model (:mod:`shiftadd.export.graph`) is lowered to a short list of integer ops on int8
activation tensors with power-of-two scales (a tensor ``t`` holds codes ``q`` with value
``q * 2^-frac``). Accumulating ops write int32 accumulators; a requantization op turns them back
into int8 (or into the int32 logits):

* ``conv`` (nn.Conv2d / nn.Linear, the zoo's multiplicative first and last layers): int8 weights
  with one scale per output channel, ``acc = sum qx * qw`` (multiplications, counted);
* ``adder``: input and weight share the input's scale 2^-f (the AdderNet hardware scheme):
  ``qw = clamp(round(w * 2^f))``, ``acc = -sum |qx - qw|`` (zero padding is qx = 0); with
  ``adder_range="folded"`` (default) f is set by the activations alone and the distance clipped off
  the weights goes into the requantization bias, exactly (:func:`shiftadd.quant.fold_adder_codes`);
  with ``"max"`` f also covers max|w| (nothing is clipped, activations get coarser codes);
* ``shift``: w = sign * 2^p, ``acc = sum sign * (qx << (p + e))``; e = -min p, lowered while the
  worst case would overflow int32, in which case taps with p + e < 0 use a rounded right shift;
* ``sumpool``: the window sum of an average pool (the division happens in the requantization);
* ``requant``: real = acc * S_c * a_c + b_c, where S_c is the accumulator's scale and (a, b) the
  folded BatchNorm (and bias). Output code = round(real * 2^fo). When every channel's multiplier
  is the same power of two this is ``(acc + B_c) >> n`` (shifts and adds only); otherwise the
  per-channel fixed-point multiplier ``(acc * M_c + B_c) >> n`` with int32 M_c, int64 product
  (these multiplications are counted). B_c includes the rounding half (round half up);
  saturates to [-127, 127] ([0, 127] when a ReLU is fused), int32 for the logits;
* ``add`` (residual): each operand aligned to the output scale by a rounded shift, summed, saturated;
* ``maxpool``, ``relu`` (when not fused), ``pad_channels`` (option-A shortcut) and ``pad`` (a
  zero border copied around the input of a padded conv-like layer, so its loops need no bounds
  checks): exact on codes.

Scales come from a calibration batch. ``calibration="mse"`` (default): every int8 tensor's frac is,
of the max-abs frac (the largest f with max|x| * 2^f <= 127, nothing clipped) and the two above it
(the largest values saturate), the one of least squared quantization error on the calibration batch;
``"max"``: the max-abs frac (docs/deploy.md compares the two on trained networks). A tensor whose ReLU
is fused into the op that writes it is calibrated after the ReLU. With ``adder_range="max"`` a tensor read by an adder layer also covers that
layer's weights (max-abs). Tensors joined by scale-preserving ops (ReLU, max-pool,
flatten) share one frac. The logits get the largest frac with max|logit| * 2^f <= 2^30.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from shiftadd.errors import UserError
from shiftadd.export.graph import ActivationRange, Node, UnsupportedModelError, max_abs_frac, record_ranges, trace

QMAX = 127
INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
ACCUMULATING = ("conv", "adder", "shift", "sumpool")
ADDER_RANGES = ("folded", "max")
CALIBRATIONS = ("max", "mse")


@dataclass
class Tensor:
    """An activation buffer: int8 codes (or int32 accumulators / logits) of shape (C, H, W)."""

    name: str
    shape: Tuple[int, int, int]
    dtype: str  # "int8" or "int32"
    group: Optional[int] = None  # frac group (int8 tensors sharing one scale)
    frac: Optional[int] = None

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    @property
    def nbytes(self) -> int:
        return self.numel * (1 if self.dtype == "int8" else 4)


@dataclass
class Op:
    """One integer op: ``kind``, input and output tensor names and its parameters (see module doc)."""

    kind: str
    name: str
    inputs: List[str]
    output: str
    params: Dict[str, Any] = field(default_factory=dict)


def _round_shift(x: torch.Tensor, k: int) -> torch.Tensor:
    """x * 2^-k rounded half up (k > 0: add half, arithmetic right shift; k < 0: left shift)."""
    if k > 0:
        return (x + (1 << (k - 1))) >> k
    return x * (1 << -k) if k < 0 else x


class IntegerNetwork:
    """The integer model the C code mirrors (build with :func:`build_integer_network`)."""

    def __init__(self, input_shape: Tuple[int, int, int], num_classes: int, bits: int = 8,
                 adder_range: str = "folded", calibration: str = "mse") -> None:
        if not 2 <= int(bits) <= 8:
            raise UserError(f"bits must be in [2, 8] (activations are stored as int8), got {bits}")
        if adder_range not in ADDER_RANGES:
            raise UserError(f"adder_range must be one of {', '.join(ADDER_RANGES)}, got {adder_range!r}")
        if calibration not in CALIBRATIONS:
            raise UserError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration!r}")
        self.adder_range, self.calibration = adder_range, calibration
        self.bits = int(bits)
        self.qmax = 2 ** (self.bits - 1) - 1
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.tensors: Dict[str, Tensor] = {}
        self.ops: List[Op] = []
        self.input_name = "input"
        self.output_name = ""
        self._group_max: Dict[int, float] = {}
        self._group_range: Dict[int, ActivationRange] = {}  # calibration statistics behind each group

    # ----------------------------------------------------------------------------- building
    def _tensor(self, shape: Tuple[int, int, int], dtype: str, group: Optional[int] = None) -> Tensor:
        t = Tensor(f"t{len(self.tensors)}", shape, dtype, group)
        self.tensors[t.name] = t
        return t

    def _new_group(self, stats: ActivationRange) -> int:
        g = len(self._group_max)
        self._group_max[g] = float(stats.max_abs)
        self._group_range[g] = stats
        return g

    @property
    def input_frac(self) -> int:
        return int(self.tensors[self.input_name].frac)

    @property
    def logit_frac(self) -> int:
        return int(self.tensors[self.output_name].frac)

    # ----------------------------------------------------------------------------- running
    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """int8 codes of a float (normalised) input batch: clamp(round(x * 2^f_in), -qmax, qmax)."""
        f = self.input_frac
        return torch.round(x.detach().double() * 2.0 ** f).clamp_(-self.qmax, self.qmax).to(torch.int8)

    @torch.no_grad()
    def run(self, q_input: torch.Tensor, keep: bool = False) -> Any:
        """int64 logits (N, classes) of int8 inputs (N, C, H, W); ``keep=True`` also returns every tensor."""
        if q_input.dtype != torch.int8 or tuple(q_input.shape[1:]) != self.input_shape:
            raise ValueError(f"expected int8 input (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {q_input.dtype} {tuple(q_input.shape)}")
        env: Dict[str, torch.Tensor] = {self.input_name: q_input.to(torch.int64)}
        for op in self.ops:
            x = [env[i] for i in op.inputs]
            t = self.tensors[op.output]
            y = _RUN[op.kind](self, op, *x)
            env[op.output] = y.reshape(y.shape[0], *t.shape)
        out = env[self.output_name].reshape(q_input.shape[0], -1)
        return (out, env) if keep else out

    #: images per chunk of :meth:`__call__`: the int64 reference holds every activation of a chunk
    #: (a ResNet-20 needs ~2 MB per image), so large batches are run in pieces
    chunk_size = 256

    def __call__(self, q_input: torch.Tensor) -> torch.Tensor:
        """int64 logits of int8 inputs, computed ``chunk_size`` images at a time (bounded memory)."""
        if len(q_input) <= self.chunk_size:
            return self.run(q_input)
        return torch.cat([self.run(part) for part in q_input.split(self.chunk_size)])

    def predict_float(self, x: torch.Tensor) -> torch.Tensor:
        """Float logits (logit codes * 2^-frac) of a float input batch."""
        return self.run(self.quantize_input(x)).double() * 2.0 ** -self.logit_frac

    # ----------------------------------------------------------------------------- reports
    def multiplications(self) -> Dict[str, int]:
        """Multiplications per inference in the generated code, by where they happen."""
        counts = {"conv_mac": 0, "requant": 0, "adder": 0, "shift": 0}
        for op in self.ops:
            if op.kind == "conv":
                counts["conv_mac"] += op.params["macs"]
            elif op.kind == "requant" and op.params["mode"] == "mult":
                counts["requant"] += self.tensors[op.output].numel
        counts["total"] = sum(counts.values())
        return counts

    def summary(self) -> List[Dict[str, Any]]:
        """One row per op: kind, output shape, frac and requant mode."""
        rows = []
        for op in self.ops:
            t = self.tensors[op.output]
            row = {"op": op.name, "kind": op.kind, "shape": t.shape, "dtype": t.dtype, "frac": t.frac}
            if op.kind == "requant":
                row["mode"] = op.params["mode"]
            rows.append(row)
        return rows


# --------------------------------------------------------------------------------- reference math
def _geom(op: Op) -> Dict[str, Any]:
    return op.params["geom"]


def _run_conv(net: IntegerNetwork, op: Op, x: torch.Tensor) -> torch.Tensor:
    g = _geom(op)
    x = x.reshape(x.shape[0], g["cin"], g["H"], g["W"]).double()
    y = F.conv2d(x, op.params["qweight"].double(), None, g["stride"], g["padding"], g["dilation"], g["groups"])
    return y.round().to(torch.int64)


def _run_adder(net: IntegerNetwork, op: Op, x: torch.Tensor) -> torch.Tensor:
    g = _geom(op)
    qw = op.params["qweight"].double()
    N = x.shape[0]
    x = x.reshape(N, g["cin"], g["H"], g["W"]).double()
    O, Cg, kh, kw = qw.shape
    G = g["groups"]
    outs = []
    for start in range(0, N, 16):  # bounded memory
        xb = x[start:start + 16]
        cols = F.unfold(xb, (kh, kw), dilation=g["dilation"], padding=g["padding"], stride=g["stride"])
        n, L = xb.shape[0], cols.shape[-1]
        K = Cg * kh * kw
        X = cols.view(n, G, K, L).permute(1, 0, 3, 2).reshape(G, n * L, K)
        Y = -torch.cdist(X, qw.reshape(G, O // G, K), p=1)
        outs.append(Y.view(G, n, L, O // G).permute(1, 0, 3, 2).reshape(n, O, g["OH"], g["OW"]))
    return torch.cat(outs).round().to(torch.int64)


def _run_shift(net: IntegerNetwork, op: Op, x: torch.Tensor) -> torch.Tensor:
    g = _geom(op)
    sh, sg = op.params["shift"].to(torch.int64), op.params["sign"].double()
    x = x.reshape(x.shape[0], g["cin"], g["H"], g["W"])
    args = (None, g["stride"], g["padding"], g["dilation"], g["groups"])
    left = torch.where(sh >= 0, sg * torch.pow(2.0, sh.clamp(min=0).double()), torch.zeros_like(sg))
    y = F.conv2d(x.double(), left, *args)
    for r in sorted(set((-sh[sh < 0]).tolist())):  # taps with a rounded right shift by r
        w = torch.where(sh == -r, sg, torch.zeros_like(sg))
        y = y + F.conv2d(_round_shift(x, int(r)).double(), w, *args)
    return y.round().to(torch.int64)


def _run_sumpool(net: IntegerNetwork, op: Op, x: torch.Tensor) -> torch.Tensor:
    p = op.params
    y = F.avg_pool2d(x.double(), p["kernel"], p["stride"], 0, divisor_override=1)
    return y.round().to(torch.int64)


def _run_maxpool(net: IntegerNetwork, op: Op, x: torch.Tensor) -> torch.Tensor:
    p = op.params
    return F.max_pool2d(x.double(), p["kernel"], p["stride"], p["padding"]).to(torch.int64)


def _run_requant(net: IntegerNetwork, op: Op, acc: torch.Tensor) -> torch.Tensor:
    p = op.params
    C = net.tensors[op.output].shape[0]
    acc = acc.reshape(acc.shape[0], C, -1)
    B = p["B"].view(1, C, 1)
    n = p["n"]
    if p["mode"] == "mult":
        y = (acc * p["M"].view(1, C, 1) + B) >> n
    elif n > 0:
        y = (acc + B) >> n
    else:
        y = acc * (1 << -n) + B
    return y.clamp(p["lo"], p["hi"])


def _run_add(net: IntegerNetwork, op: Op, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    p = op.params
    return (_round_shift(a, p["ka"]) + _round_shift(b, p["kb"])).clamp(p["lo"], p["hi"])


def _run_relu(net: IntegerNetwork, op: Op, x: torch.Tensor) -> torch.Tensor:
    return x.clamp(min=0)


def _run_pad(net: IntegerNetwork, op: Op, x: torch.Tensor) -> torch.Tensor:
    ph, pw = op.params["padding"]
    return F.pad(x, (pw, pw, ph, ph))


def _run_pad_channels(net: IntegerNetwork, op: Op, x: torch.Tensor) -> torch.Tensor:
    p = op.params
    x = x[:, :, ::p["stride"], ::p["stride"]]
    return F.pad(x, (0, 0, 0, 0, p["before"], p["after"]))


_RUN = {"conv": _run_conv, "adder": _run_adder, "shift": _run_shift, "sumpool": _run_sumpool,
        "maxpool": _run_maxpool, "requant": _run_requant, "add": _run_add, "relu": _run_relu,
        "pad": _run_pad, "pad_channels": _run_pad_channels}


# --------------------------------------------------------------------------------- lowering
@dataclass
class _Pending:
    """An accumulator not yet requantized: real = acc * S_c * a_c + b_c."""

    acc: str
    a: torch.Tensor
    b: torch.Tensor
    node: str  # the float node whose calibration range the requantized tensor uses


def _pair(v: Any) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _layer_weight(node: Node) -> Tuple[torch.Tensor, Optional[torch.Tensor], Dict[str, Any]]:
    """(weight (O, C/g, kh, kw), bias, geometry without sizes) of a conv / adder / shift node."""
    m = node.module
    was = m.training
    m.eval()
    with torch.no_grad():
        w = m.weight.detach().double().clone()
    m.train(was)
    mask = m._modules.get("pruning")
    if mask is not None and hasattr(mask, "mask"):
        w = w * mask.mask.double()
    bias = None if getattr(m, "bias", None) is None else m.bias.detach().double().clone()
    if w.dim() == 2:  # linear: a 1x1 conv on a (features, 1, 1) tensor
        return w[:, :, None, None], bias, {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1,
                                           "linear": True}
    if w.dim() != 4:
        raise UnsupportedModelError(f"{node.name}: only 2-D conv and linear layers can be exported")
    pad = m.padding
    if isinstance(pad, str):
        raise UnsupportedModelError(f"{node.name}: padding={pad!r} is not supported; give numbers")
    return w, bias, {"stride": _pair(m.stride), "padding": _pair(pad), "dilation": _pair(m.dilation),
                     "groups": int(m.groups), "linear": False}


def build_integer_network(model: nn.Module, calib_images: torch.Tensor, bits: int = 8,
                          adder_range: str = "folded", calibration: str = "mse") -> IntegerNetwork:
    """Lower ``model`` (eval mode) to an :class:`IntegerNetwork` calibrated on ``calib_images``
    (a float batch (N, C, H, W), normalised as the model expects); ``bits`` (2..8) is the width
    of activations and conv/adder weights (codes in [-(2^(bits-1) - 1), 2^(bits-1) - 1]);
    ``adder_range``: what an adder layer's shared scale covers; ``calibration``: how activation fracs are
    chosen (see the module docstring)."""
    if not isinstance(calib_images, torch.Tensor) or calib_images.dim() != 4 or not calib_images.is_floating_point():
        raise UserError("calibration images must be a float tensor (N, C, H, W)")
    model = model.eval()
    nodes, gm = trace(model)
    calib = calib_images.float()
    # the squared errors only mse calibration reads: max-abs and two finer fracs
    ranges = record_ranges(gm, calib, 2 ** (int(bits) - 1) - 1, candidates=3 if calibration == "mse" else 0)
    input_shape = tuple(int(s) for s in calib.shape[1:])
    with torch.no_grad():
        num_classes = int(model(calib[:1]).reshape(1, -1).shape[1])
    net = IntegerNetwork(input_shape, num_classes, bits, adder_range, calibration)
    _Lowering(net, nodes, ranges).run()
    _finalize(net)
    return net


class _Lowering:
    def __init__(self, net: IntegerNetwork, nodes: List[Node], ranges: Dict[str, ActivationRange]) -> None:
        self.net, self.nodes, self.ranges = net, nodes, ranges
        self.by_name = {n.name: n for n in nodes}
        self.users: Dict[str, int] = {}
        for n in nodes:
            for i in n.inputs:
                self.users[i] = self.users.get(i, 0) + 1
        self.val: Dict[str, Any] = {}  # node name -> tensor name or _Pending

    def op(self, kind: str, name: str, inputs: List[str], out: Tensor, **params: Any) -> Op:
        o = Op(kind, name, inputs, out.name, params)
        self.net.ops.append(o)
        return o

    def tensor_of(self, node_name: str) -> str:
        """The int8 tensor of a node's value, requantizing a pending accumulator."""
        v = self.val[node_name]
        if isinstance(v, _Pending):
            v = self.requant(v, relu=False, name=node_name)
            self.val[node_name] = v
        return v

    def requant(self, p: _Pending, relu: bool, name: str, logits: bool = False) -> str:
        acc = self.net.tensors[p.acc]
        if logits:
            out = self.net._tensor(acc.shape, "int32")
            out.frac = max_abs_frac(self.ranges[p.node].max_abs, 2.0 ** 30)
        else:
            out = self.net._tensor(acc.shape, "int8", self.net._new_group(self.ranges[p.node]))
        self.op("requant", f"{name}_requant", [p.acc], out, a=p.a, b=p.b, relu=relu, logits=logits)
        return out.name

    def run(self) -> None:
        net = self.net
        for n in self.nodes:
            getattr(self, f"_{n.kind}")(n)
        out_node = next(n for n in self.nodes if n.kind == "output")
        src = out_node.inputs[0]
        v = self.val[src]
        if isinstance(v, _Pending):
            net.output_name = self.requant(v, relu=False, name=src, logits=True)
        else:  # int8 tensor: widen to the int32 logits (a shift requant)
            t = net.tensors[v]
            acc = net._tensor(t.shape, "int32")
            ones = torch.ones(t.shape[0], dtype=torch.float64)
            self.op("sumpool", f"{src}_widen", [v], acc, kernel=(1, 1), stride=(1, 1), count=1)
            net.output_name = self.requant(_Pending(acc.name, ones, ones * 0, src), False, src, logits=True)
        if net.tensors[net.output_name].numel != net.num_classes:
            raise UnsupportedModelError("the model output must be a (N, classes) logit tensor")
        self._requant_early()

    def _requant_early(self) -> None:
        """Move every requantization right after the op that produced its accumulator (it reads
        nothing else, and nothing between reads its output), so the C can requantize channel by
        channel instead of storing the whole int32 tensor (a residual branch is requantized only
        when the add needs it, after the shortcut's ops)."""
        ops = self.net.ops
        for op in [o for o in ops if o.kind == "requant"]:
            ops.remove(op)
            at = next(i for i, o in enumerate(ops) if o.output == op.inputs[0])
            ops.insert(at + 1, op)

    # ---- node kinds
    def _input(self, n: Node) -> None:
        t = self.net._tensor(self.net.input_shape, "int8", self.net._new_group(self.ranges[n.name]))
        del self.net.tensors[t.name]
        t.name = self.net.input_name
        self.net.tensors[t.name] = t
        self.val[n.name] = t.name

    def _output(self, n: Node) -> None:
        pass

    def _accumulate(self, n: Node) -> None:
        x = self.net.tensors[self.tensor_of(n.inputs[0])]
        w, bias, geom = _layer_weight(n)
        O, Cg, kh, kw = w.shape
        if geom["linear"]:
            H = W = 1
            cin = x.numel
        else:
            cin, H, W = x.shape
        if cin != Cg * geom["groups"]:
            raise UnsupportedModelError(f"{n.name}: expects {Cg * geom['groups']} input channels, gets {cin}")
        (sh, sw), (ph, pw), (dh, dw) = geom["stride"], geom["padding"], geom["dilation"]
        OH = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        OW = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if ph or pw:  # copy into a zero-bordered buffer, so the layer's loops need no bounds checks
            padded = self.net._tensor((cin, H + 2 * ph, W + 2 * pw), "int8", x.group)
            self.op("pad", f"{n.name}_pad", [x.name], padded, padding=(ph, pw))
            x, H, W = padded, H + 2 * ph, W + 2 * pw
            geom["padding"] = (0, 0)
        geom.update(cin=cin, cout=O, kh=kh, kw=kw, H=H, W=W, OH=OH, OW=OW)
        acc = self.net._tensor((O, OH, OW), "int32")
        self.op(n.kind, n.name, [x.name], acc, geom=geom, weight=w)
        if n.kind == "adder" and self.net.adder_range == "max":  # the input's shared scale also covers the weights
            g = x.group
            self.net._group_max[g] = max(self.net._group_max[g], float(w.abs().max()))
        b = torch.zeros(O, dtype=torch.float64) if bias is None else bias
        self.val[n.name] = _Pending(acc.name, torch.ones(O, dtype=torch.float64), b, n.name)

    _conv = _adder = _shift = _accumulate

    def _bn(self, n: Node) -> None:
        v = self.val[n.inputs[0]]
        if not isinstance(v, _Pending) or self.users.get(n.inputs[0], 0) != 1:
            raise UnsupportedModelError(f"{n.name}: BatchNorm must directly follow a conv, adder or shift layer")
        m = n.module
        if m.running_mean is None:
            raise UnsupportedModelError(f"{n.name}: BatchNorm without running statistics cannot be folded")
        g = (m.weight.detach().double() if m.weight is not None else torch.ones_like(m.running_mean.double()))
        g = g / torch.sqrt(m.running_var.double() + m.eps)
        beta = m.bias.detach().double() if m.bias is not None else torch.zeros_like(g)
        self.val[n.name] = _Pending(v.acc, v.a * g, (v.b - m.running_mean.double()) * g + beta, n.name)

    def _relu(self, n: Node) -> None:
        src = n.inputs[0]
        v = self.val[src]
        if isinstance(v, _Pending) and self.users.get(src, 0) == 1:
            self.val[n.name] = self.requant(_Pending(v.acc, v.a, v.b, n.name), relu=True, name=n.name)
            return
        t_name = self.tensor_of(src)
        producer = next((o for o in reversed(self.net.ops) if o.output == t_name), None)
        if producer is not None and producer.kind in ("requant", "add") and self.users.get(src, 0) == 1:
            producer.params["relu"] = True  # fused: saturate at 0
            g = self.net.tensors[t_name].group  # its own group (made by that op): the range after the ReLU
            self.net._group_max[g], self.net._group_range[g] = self.ranges[n.name].max_abs, self.ranges[n.name]
            self.val[n.name] = t_name
            return
        t = self.net.tensors[t_name]
        out = self.net._tensor(t.shape, "int8", t.group)
        self.op("relu", n.name, [t_name], out)
        self.val[n.name] = out.name

    def _add(self, n: Node) -> None:
        a, b = (self.net.tensors[self.tensor_of(i)] for i in n.inputs)
        if a.shape != b.shape:
            raise UnsupportedModelError(f"{n.name}: residual add of shapes {a.shape} and {b.shape}")
        out = self.net._tensor(a.shape, "int8", self.net._new_group(self.ranges[n.name]))
        self.op("add", n.name, [a.name, b.name], out, relu=False)
        self.val[n.name] = out.name

    def _avgpool(self, n: Node) -> None:
        x = self.net.tensors[self.tensor_of(n.inputs[0])]
        C, H, W = x.shape
        if n.options.get("global"):
            k, s = (H, W), (H, W)
        else:
            k, s = n.options["kernel"], n.options["stride"]
        OH, OW = (H - k[0]) // s[0] + 1, (W - k[1]) // s[1] + 1
        acc = self.net._tensor((C, OH, OW), "int32")
        self.op("sumpool", n.name, [x.name], acc, kernel=k, stride=s, count=k[0] * k[1])
        ones = torch.ones(C, dtype=torch.float64)
        self.val[n.name] = _Pending(acc.name, ones, ones * 0, n.name)

    def _maxpool(self, n: Node) -> None:
        x = self.net.tensors[self.tensor_of(n.inputs[0])]
        C, H, W = x.shape
        k, s, p = n.options["kernel"], n.options["stride"], n.options["padding"]
        OH, OW = (H + 2 * p[0] - k[0]) // s[0] + 1, (W + 2 * p[1] - k[1]) // s[1] + 1
        out = self.net._tensor((C, OH, OW), "int8", x.group)
        self.op("maxpool", n.name, [x.name], out, kernel=k, stride=s, padding=p)
        self.val[n.name] = out.name

    def _flatten(self, n: Node) -> None:  # CHW order is already the flattened order
        self.val[n.name] = self.tensor_of(n.inputs[0])

    def _identity(self, n: Node) -> None:
        self.val[n.name] = self.val[n.inputs[0]]

    def _pad_shortcut(self, n: Node) -> None:
        x = self.net.tensors[self.tensor_of(n.inputs[0])]
        m = n.module
        C, H, W = x.shape
        s = int(m.stride)
        out = self.net._tensor((C + m.pad, (H + s - 1) // s, (W + s - 1) // s), "int8", x.group)
        self.op("pad_channels", n.name, [x.name], out, stride=s, before=m.pad // 2, after=m.pad - m.pad // 2)
        self.val[n.name] = out.name


# --------------------------------------------------------------------------------- finalisation
def _finalize(net: IntegerNetwork) -> None:
    """Choose every frac, quantize the weights and compute the requantization constants."""
    fracs = {g: _group_frac(net, g) for g in net._group_max}
    for t in net.tensors.values():
        if t.dtype == "int8":
            t.frac = fracs[t.group]
    acc_scale: Dict[str, torch.Tensor] = {}
    for op in net.ops:
        if op.kind in ("conv", "adder", "shift"):
            fin = net.tensors[op.inputs[0]].frac
            acc_scale[op.output] = _quantize_layer(op, fin, net.qmax)
        elif op.kind == "sumpool":
            fin = net.tensors[op.inputs[0]].frac
            C = net.tensors[op.output].shape[0]
            acc_scale[op.output] = torch.full((C,), 2.0 ** -fin / op.params["count"], dtype=torch.float64)
            op.params["bound"] = net.qmax * op.params["count"]
        elif op.kind == "requant":
            _requant_constants(net, op, acc_scale[op.inputs[0]], _producer(net, op).params.get("offset"))
        elif op.kind == "add":
            fo = net.tensors[op.output].frac
            a, b = (net.tensors[i].frac for i in op.inputs)
            op.params.update(ka=a - fo, kb=b - fo, lo=0 if op.params["relu"] else -net.qmax, hi=net.qmax)


def _group_frac(net: IntegerNetwork, g: int) -> int:
    """A group's frac: max-abs (nothing clipped), or with ``calibration="mse"`` the candidate frac (max-abs
    and up to two more bits, clipping the largest values) of least squared quantization error on the
    calibration batch; a group whose range also covers adder weights (``adder_range="max"``) keeps max-abs."""
    stats = net._group_range.get(g)
    f0 = max_abs_frac(net._group_max[g], net.qmax)
    if net.calibration == "max" or stats is None or not stats.sse or net._group_max[g] != stats.max_abs:
        return f0
    return min(stats.sse, key=lambda f: (stats.sse[f], f))


def _quantize_layer(op: Op, fin: int, qmax: int) -> torch.Tensor:
    """Integer weights of a conv / adder / shift op; returns the accumulator's per-channel scale."""
    w: torch.Tensor = op.params["weight"]
    O = w.shape[0]
    g = op.params["geom"]
    K = w[0].numel()
    if op.kind == "conv":
        wmax = w.reshape(O, -1).abs().amax(1)
        sw = torch.where(wmax > 0, wmax / qmax, torch.ones_like(wmax))
        q = torch.round(w / sw.view(-1, 1, 1, 1)).clamp(-qmax, qmax)
        op.params["qweight"] = q.to(torch.int8)
        op.params["bound"] = int(q.reshape(O, -1).abs().sum(1).max()) * qmax
        op.params["macs"] = _valid_taps(g) * (g["cin"] // g["groups"]) * O
        return sw * 2.0 ** -fin
    if op.kind == "adder":  # the true accumulator is acc - offset (fold_adder_codes; zero offset when w fits)
        from shiftadd.quant.shared import fold_adder_codes

        q, offset = fold_adder_codes(torch.round(w * 2.0 ** fin), -qmax, qmax)
        op.params["qweight"], op.params["offset"] = q.to(torch.int8), offset.to(torch.int64)
        op.params["bound"] = int((q.reshape(O, -1).abs() + qmax).sum(1).max())
        return torch.full((O,), 2.0 ** -fin, dtype=torch.float64)
    # shift: w = sign * 2^p
    nz = w != 0
    sign = torch.sign(w)
    p = torch.zeros_like(w, dtype=torch.int64)
    if bool(nz.any()):
        mant, ex = torch.frexp(w[nz])
        if not bool((mant.abs() == 0.5).all()):
            raise UnsupportedModelError(f"{op.name}: shift layer weights are not all 0 or +-2^p")
        p[nz] = ex.to(torch.int64) - 1
        e = int(-p[nz].min())
    else:
        e = 0
    while True:
        s = torch.where(nz, p + e, torch.zeros_like(p))
        bound = int((torch.where(nz, torch.pow(2.0, s.double()), torch.zeros_like(w)).reshape(O, -1).sum(1).max()
                     * qmax)) + K
        if bound <= INT32_MAX or e < -31:
            break
        e -= 1
    if int(s.max()) > 30 or int(s.min()) < -30:
        raise UnsupportedModelError(f"{op.name}: power-of-two weights span too many octaves for int32")
    op.params.update(shift=s.to(torch.int8), sign=sign.to(torch.int8), exponent=e, bound=bound)
    return torch.full((O,), 2.0 ** -(fin + e), dtype=torch.float64)


def _valid_taps(g: Dict[str, Any]) -> int:
    """How many (output pixel, kernel tap) pairs read inside the input (the padded ones are skipped)."""
    def axis(n, k, s, p, d, out):
        return sum(1 for o in range(out) for u in range(k) if 0 <= o * s - p + u * d < n)

    return (axis(g["H"], g["kh"], g["stride"][0], g["padding"][0], g["dilation"][0], g["OH"])
            * axis(g["W"], g["kw"], g["stride"][1], g["padding"][1], g["dilation"][1], g["OW"]))


def _requant_constants(net: IntegerNetwork, op: Op, S: torch.Tensor, offset: Optional[torch.Tensor] = None) -> None:
    """``offset``: subtracted from the accumulator (an adder's folded weight distance), joins the bias."""
    p = op.params
    out = net.tensors[op.output]
    fo = out.frac
    m = S * p["a"] * 2.0 ** fo  # code = round(acc * m + beta)
    b = p["b"] if offset is None else p["b"] - offset.double() * S * p["a"]
    beta = b * 2.0 ** fo
    if p["logits"]:
        p["lo"], p["hi"] = INT32_MIN, INT32_MAX
    else:
        p["lo"], p["hi"] = (0 if p["relu"] else -net.qmax), net.qmax
    mant, ex = torch.frexp(m)
    if bool((mant == 0.5).all()) and bool((ex == ex[0]).all()):  # one power of two 2^-n for all channels
        n = int(1 - ex[0])
        if n > 0:
            B = torch.round(beta * 2.0 ** n) + 2 ** (n - 1)
        else:
            B = torch.round(beta)
        p.update(mode="shift", n=n, B=B.to(torch.int64), M=None)
        return
    mmax = float(m.abs().max())
    bmax = float(beta.abs().max())
    if mmax == 0:
        n = 0
    else:
        n = int(math.floor(math.log2(INT32_MAX / mmax)))
    if bmax > 0:
        n = min(n, int(math.floor(math.log2(2.0 ** 60 / bmax))))
    n = min(n, 62 - max(1, net_bound(net, op).bit_length()) - 1)
    if n < 1:
        raise UnsupportedModelError(f"{op.name}: requantization multiplier out of range (scale {mmax:g})")
    M = torch.round(m * 2.0 ** n)
    B = torch.round(beta * 2.0 ** n) + 2 ** (n - 1)
    p.update(mode="mult", n=n, M=M.to(torch.int64), B=B.to(torch.int64))


def _producer(net: IntegerNetwork, op: Op) -> Op:
    """The op writing ``op``'s (first) input."""
    return next(o for o in net.ops if o.output == op.inputs[0])


def net_bound(net: IntegerNetwork, op: Op) -> int:
    """Worst-case |accumulator| of the op producing ``op``'s input."""
    return int(_producer(net, op).params["bound"])
