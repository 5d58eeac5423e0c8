"""The weight-sharing supernet of the hybrid space: single-path uniform sampling, three sharing modes.

Every conv position of a searchable block (first 3x3, second 3x3, 1x1 projection shortcut) is a
:class:`SuperConv` holding the weights of every operator choice; the inner width is a slice of
the first layer's output channels. Sharing modes:

* ``separate``: each operator has its own tensor (the supernet grows with the number of operators);
* ``shared``: one tensor per position, used as is by every operator;
* ``heterogeneous`` (ShiftAddNAS): one tensor per position; conv and bit-shift use it directly
  (a bit-shift weight is the power-of-two rounding of a conv weight, same distribution), the
  adder sees it through a learnable :class:`~shiftadd.nas.sharing.PiecewiseLinearRemap`, pulled
  toward a Laplacian by :func:`~shiftadd.nas.sharing.laplace_w2_distance` (``regularization_loss``).

The second (adder, out -> out) layer of a shift-add operator has a different shape and keeps its
own tensor in every mode, and so does the optional attention block (its own query/key/value/output
weights, sliced by width). BatchNorm is private to each (operator, width) choice. In the
supernet the bit-shift branch trains a latent float weight rounded to powers of two
(DeepShift-Q, straight-through); :meth:`Supernet.subnet` turns it into the DeepShift-PS layer of
the stand-alone network with the same effective weights.

In training mode each forward samples a path from ``numpy.random.default_rng([seed, step])``
where ``step`` is a counter buffer saved in the state dict: every data-parallel process samples the
same path without communication, and a resumed run continues the same sequence.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from shiftadd.errors import UserError
from shiftadd.nas.arch import Architecture, BlockChoice
from shiftadd.nas.sharing import PiecewiseLinearRemap, laplace_w2_distance
from shiftadd.nas.space import ATTENTION, DEFAULT_OPS, DEFAULT_WIDTHS, BlockSlot, SearchSpace, inner_channels

SHARING_MODES = ("separate", "shared", "heterogeneous")
SUPPORTED_OPS = ("conv", "adder", "shift-ps", "shiftadd")


def _kaiming_conv(shape) -> torch.Tensor:
    """The zoo's conv init (He normal, fan-out)."""
    w = torch.empty(shape)
    nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
    return w


def _initial_weight(op: str, shape) -> torch.Tensor:
    """Each family's own initialisation (as its stand-alone layer in the zoo gets it)."""
    from shiftadd.nn.adder import kaiming_like_conv

    if op == "conv":
        return _kaiming_conv(shape)
    if op == "adder":
        return torch.randn(shape)
    return kaiming_like_conv(shape)  # shift-ps and the shift part of shiftadd


class SuperConv(nn.Module):
    """One conv position of the supernet: ``kernel`` x ``kernel``, up to ``out_channels`` x ``in_channels``."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, ops: Sequence[str],
                 mode: str, num_bins: int = 16, weight_bits: int = 5) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel, self.stride = in_channels, out_channels, kernel, stride
        self.padding, self.mode, self.weight_bits, self.ops = kernel // 2, mode, weight_bits, tuple(ops)
        shape = (out_channels, in_channels, kernel, kernel)
        if mode == "separate":
            self.weights = nn.ParameterDict({op: nn.Parameter(_initial_weight(op, shape)) for op in ops})
        else:
            self.weight = nn.Parameter(_kaiming_conv(shape))
        self.remap = PiecewiseLinearRemap(num_bins) if mode == "heterogeneous" and "adder" in ops else None
        if "shiftadd" in ops:  # the adder half of shift-add: out -> out, its own tensor in every mode
            self.shiftadd_adder = nn.Parameter(torch.randn(out_channels, out_channels, kernel, kernel))
        self._adder_ops_used: set = set()  # adder / shiftadd branches run in training since the last step

    def take_adder_parameters(self) -> List[nn.Parameter]:
        """The parameters whose gradient came from adder computations since the last call (then forgets):
        AdderNet's adaptive learning rate (:func:`shiftadd.optim.scale_adder_gradients`) rescales them.
        A tensor shared with conv (``shared`` / ``heterogeneous``) is rescaled only on steps whose path used
        it as an adder kernel, and so is the heterogeneous remap's log-slopes."""
        used, self._adder_ops_used = self._adder_ops_used, set()
        params = []
        if "adder" in used:
            params.append(self.weights["adder"] if self.mode == "separate" else self.weight)
            if self.remap is not None:  # part of the adder weight's parametrisation, and the raw adder
                params.append(self.remap.log_slopes)  # gradient is unnormalised and large
        if "shiftadd" in used:
            params.append(self.shiftadd_adder)
        return params

    def full_weight(self, op: str) -> torch.Tensor:
        """The float weight operator ``op`` reads at full size (before slicing and power-of-two rounding)."""
        if self.mode == "separate":
            return self.weights[op]
        if op == "adder" and self.remap is not None:
            return self.remap(self.weight)
        return self.weight

    def weight_for(self, op: str, out_n: int, in_n: int) -> torch.Tensor:
        return self.full_weight(op)[:out_n, :in_n]

    def forward(self, x: torch.Tensor, op: str, out_n: int) -> torch.Tensor:
        from shiftadd.ops.adder import adder_conv2d
        from shiftadd.ops.bitshift import q_weight

        w = self.weight_for(op, out_n, x.shape[1])
        s, p = (self.stride, self.stride), (self.padding, self.padding)
        if self.training and op in ("adder", "shiftadd") and torch.is_grad_enabled():
            self._adder_ops_used.add(op)
        if op == "conv":
            return F.conv2d(x, w, None, s, p)
        if op == "adder":
            return adder_conv2d(x, w, None, s, p, (1, 1), 1, "full")
        y = F.conv2d(x, q_weight(w, self.weight_bits), None, s, p)
        if op == "shift-ps":
            return y
        a = self.shiftadd_adder[:out_n, :out_n]
        return adder_conv2d(y, a, None, (1, 1), p, (1, 1), 1, "full")

    @torch.no_grad()
    def export(self, op: str, layer: nn.Module) -> None:
        """Copy the weights ``op`` uses into the stand-alone layer ``layer`` (built by ``conv_layer(op, ...)``)."""
        out_n, in_n = layer.out_channels, layer.in_channels
        w = self.weight_for(op, out_n, in_n)
        if op in ("conv", "adder"):
            layer.weight.copy_(w)
        elif op == "shift-ps":
            layer.set_weight(w)
        else:
            layer.shift.set_weight(w)
            layer.adder.weight.copy_(self.shiftadd_adder[:out_n, :out_n])


def _attention_init(shape) -> torch.Tensor:
    w = torch.empty(shape)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Linear's default, as the stand-alone block
    return w


def _bn_key(op: str, width: float) -> str:
    return f"{op}-w{int(round(width * 1000))}"


class SuperBlock(nn.Module):
    """A searchable basic block: every (operator, width) choice of ``slot``, weights shared per ``mode``."""

    def __init__(self, slot: BlockSlot, ops: Sequence[str], widths: Sequence[float], mode: str,
                 num_bins: int, weight_bits: int) -> None:
        super().__init__()
        self.slot = slot
        if ATTENTION in ops:  # its own weights; the conv positions hold the operator families
            ops = tuple(o for o in ops if o != ATTENTION)
            max_inner = max(inner_channels(slot.planes, w) for w in widths)
            self.attn_q, self.attn_k, self.attn_v = (nn.Parameter(_attention_init((max_inner, slot.planes)))
                                                     for _ in range(3))
            self.attn_out = nn.Parameter(_attention_init((slot.planes, max_inner)))
            self.attn_norm = nn.ModuleDict({_bn_key(ATTENTION, w): nn.BatchNorm2d(slot.planes) for w in widths})
        cin, planes = slot.in_planes, slot.planes
        max_mid = max(inner_channels(planes, w) for w in widths)
        kw = dict(ops=ops, mode=mode, num_bins=num_bins, weight_bits=weight_bits)
        self.conv1 = SuperConv(cin, max_mid, 3, slot.stride, **kw)
        self.conv2 = SuperConv(max_mid, planes, 3, 1, **kw)
        self.bn1 = nn.ModuleDict({_bn_key(o, w): nn.BatchNorm2d(inner_channels(planes, w)) for o in ops for w in widths})
        self.bn2 = nn.ModuleDict({_bn_key(o, w): nn.BatchNorm2d(planes) for o in ops for w in widths})
        self.projection = slot.stride != 1 or cin != planes
        if self.projection:
            self.shortcut = SuperConv(cin, planes, 1, slot.stride, **kw)
            self.bn_shortcut = nn.ModuleDict({o: nn.BatchNorm2d(planes) for o in ops})

    def super_convs(self) -> List[SuperConv]:
        return [self.conv1, self.conv2] + ([self.shortcut] if self.projection else [])

    def forward(self, x: torch.Tensor, choice: BlockChoice) -> torch.Tensor:
        op, key = choice.op, _bn_key(choice.op, choice.width)
        mid = inner_channels(self.slot.planes, choice.width)
        if op == ATTENTION:
            from shiftadd.models.hybrid import attend

            return F.relu(x + attend(self.attn_norm[key](x), self.attn_q[:mid], self.attn_k[:mid],
                                     self.attn_v[:mid], self.attn_out[:, :mid]))
        out = F.relu(self.bn1[key](self.conv1(x, op, mid)))
        out = self.bn2[key](self.conv2(out, op, self.slot.planes))
        sc = self.bn_shortcut[op](self.shortcut(x, op, self.slot.planes)) if self.projection else x
        return F.relu(out + sc)

    @torch.no_grad()
    def export(self, choice: BlockChoice, block: nn.Module) -> None:
        """Copy this choice's weights and BatchNorm into a stand-alone ``BasicBlock`` / ``AttentionBlock``."""
        op, key = choice.op, _bn_key(choice.op, choice.width)
        if op == ATTENTION:
            mid = block.q_weight.shape[0]
            for name in ("q", "k", "v"):
                getattr(block, f"{name}_weight").copy_(getattr(self, f"attn_{name}")[:mid])
            block.out_weight.copy_(self.attn_out[:, :mid])
            block.norm.load_state_dict(self.attn_norm[key].state_dict())
            return
        self.conv1.export(op, block.conv1)
        self.conv2.export(op, block.conv2)
        block.bn1.load_state_dict(self.bn1[key].state_dict())
        block.bn2.load_state_dict(self.bn2[key].state_dict())
        if self.projection:
            self.shortcut.export(op, block.shortcut[0])
            block.shortcut[1].load_state_dict(self.bn_shortcut[op].state_dict())


class Supernet(nn.Module):
    """All architectures of ``space`` in one network; ``forward`` runs one path (see the module doc).

    ``sandwich=True``: each training step also runs the widest and the narrowest path (operators
    uniform) and distils the returned widest path's logits into them (in-place distillation,
    added by :meth:`regularization_loss`). ``reg_weight`` scales the Laplace regulariser of the
    heterogeneous mode.
    """

    #: the trainer re-estimates BatchNorm statistics on the evaluated path before each evaluation: the
    #: per-path BatchNorms' running averages mix inputs from every path sampled before them
    needs_bn_recalibration = True

    def __init__(self, space: SearchSpace, mode: str = "heterogeneous", num_classes: int = 10,
                 in_channels: int = 3, sandwich: bool = False, seed: int = 0, reg_weight: float = 0.05,
                 num_bins: int = 16, weight_bits: int = 5) -> None:
        super().__init__()
        from shiftadd.models.resnet import classifier, init_weights

        if mode not in SHARING_MODES:
            raise UserError(f"unknown sharing mode {mode!r}; choose one of: {', '.join(SHARING_MODES)}")
        unsupported = [op for op in space.ops if op not in SUPPORTED_OPS]
        if unsupported:
            raise UserError(f"the supernet has no branch for {unsupported}; supported: {', '.join(SUPPORTED_OPS)}")
        if not reg_weight >= 0:
            raise UserError(f"reg_weight must be >= 0, got {reg_weight}")
        self.space, self.mode, self.num_classes, self.in_channels = space, mode, num_classes, in_channels
        self.sandwich, self.seed, self.reg_weight = bool(sandwich), int(seed), float(reg_weight)
        self.weight_bits = int(weight_bits)
        width = space.base_width
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.blocks = nn.ModuleList(
            SuperBlock(s, space.ops_at(s.index), space.widths, mode, num_bins, weight_bits) for s in space.slots)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = classifier("conv", 4 * width, num_classes)
        init_weights(self)  # stem and classifier exactly as the stand-alone network initialises them
        self.register_buffer("sample_step", torch.zeros((), dtype=torch.long))
        self.active = Architecture(tuple(BlockChoice(space.ops[0], max(space.widths)) for _ in space.slots))
        self._students: List[torch.Tensor] = []
        self._teacher: Optional[torch.Tensor] = None

    @classmethod
    def from_options(cls, depth: int, num_classes: int = 10, in_channels: int = 3, width: int = 16,
                     mode: str = "heterogeneous", ops: Sequence[str] = DEFAULT_OPS,
                     widths: Sequence[float] = DEFAULT_WIDTHS, sandwich: bool = False, seed: int = 0,
                     reg_weight: float = 0.05, num_bins: int = 16, weight_bits: int = 5,
                     attention: bool = False) -> "Supernet":
        """Build from zoo/trainer options (``-O mode=shared -O ops=[conv,adder]``)."""
        if isinstance(ops, str):
            ops = [o.strip() for o in ops.split(",")]
        if isinstance(widths, (int, float)):
            widths = [widths]
        space = SearchSpace(depth, tuple(ops), tuple(float(w) for w in widths), int(width), bool(attention))
        return cls(space, mode, num_classes, in_channels, sandwich, seed, reg_weight, num_bins, weight_bits)

    # ---- paths
    def sample_path(self, step: int) -> Architecture:
        """The path of training step ``step``: uniform over the space, from a generator seeded by (seed, step)."""
        return self.space.sample(np.random.default_rng([self.seed, int(step)]))

    def _sandwich_paths(self, step: int) -> List[Architecture]:
        rng = np.random.default_rng([self.seed, int(step)])
        random_path = self.space.sample(rng)
        ends = []
        for w in (max(self.space.widths), min(self.space.widths)):
            ends.append(Architecture(tuple(BlockChoice(self.space.random_op(rng, s.index), w)
                                           for s in self.space.slots)))
        return [ends[0], ends[1], random_path]

    def set_active(self, arch: Architecture) -> "Supernet":
        """The path evaluation-mode forwards run."""
        self.active = self.space.validate(arch)
        return self

    def run_path(self, x: torch.Tensor, arch: Architecture) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for block, choice in zip(self.blocks, arch.blocks):
            x = block(x, choice)
        return self.fc(torch.flatten(self.pool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.run_path(x, self.active)
        step = int(self.sample_step)
        self.sample_step.add_(1)
        if not self.sandwich:
            return self.run_path(x, self.sample_path(step))
        big, *small = self._sandwich_paths(step)
        out = self.run_path(x, big)
        self._teacher = out
        self._students = [self.run_path(x, a) for a in small]
        return out

    # ---- losses
    def remapped_convs(self) -> List[SuperConv]:
        """The conv positions whose adder branch reads the shared tensor through a remap."""
        return [c for b in self.blocks for c in b.super_convs() if c.remap is not None]

    def laplace_regularizer(self) -> torch.Tensor:
        """Mean :func:`laplace_w2_distance` of every remapped (adder-view) shared tensor; 0 without remaps."""
        convs = self.remapped_convs()
        if not convs:
            return self.fc.weight.new_zeros(())
        return torch.stack([laplace_w2_distance(c.full_weight("adder")) for c in convs]).mean()

    def regularization_loss(self) -> torch.Tensor:
        """Added to the loss by the trainer: Laplace regulariser (heterogeneous) + sandwich distillation."""
        loss = self.reg_weight * self.laplace_regularizer() if self.reg_weight else self.fc.weight.new_zeros(())
        if self._teacher is not None:
            target = F.softmax(self._teacher.detach().float(), 1)
            for s in self._students:
                loss = loss + F.kl_div(F.log_softmax(s.float(), 1), target, reduction="batchmean")
            self._teacher, self._students = None, []
        if self.training:
            # DDP (built without find_unused_parameters) needs a gradient for every parameter: the
            # branches off this step's path get an exact zero, in one process as in several, so that
            # data-parallel training gives the single-process result.
            loss = loss + sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        return loss

    # ---- stand-alone networks
    def subnet(self, arch: Architecture) -> nn.Module:
        """The stand-alone ``hybrid-resnet`` of ``arch`` with this supernet's (transformed) weights."""
        from shiftadd.models.hybrid import HybridResNet

        self.space.validate(arch)
        opts: Dict[str, Any] = {} if self.weight_bits == 5 else {"weight_bits": self.weight_bits}
        net = HybridResNet(arch, self.num_classes, self.in_channels, self.space.base_width, **opts)
        with torch.no_grad():
            net.conv1.load_state_dict(self.conv1.state_dict())
            net.bn1.load_state_dict(self.bn1.state_dict())
            net.fc.load_state_dict(self.fc.state_dict())
            stand_alone = [b for stage in (net.layer1, net.layer2, net.layer3) for b in stage]
            for sb, block, choice in zip(self.blocks, stand_alone, arch.blocks):
                sb.export(choice, block)
        return net.to(self.fc.weight.device).train(self.training)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, sandwich={self.sandwich}, space={self.space.as_dict()}"


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

