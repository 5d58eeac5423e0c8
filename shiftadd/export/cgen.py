"""C99 code generation for an :class:`~shiftadd.export.intnet.IntegerNetwork`.

``model.h`` declares ``int model_run(const int8_t *input, int32_t *logits)`` and the sizes as
macros; ``model.c`` holds the weights as ``const`` arrays, ONE static activation arena whose
size and buffer offsets are planned at export time, and one ``static`` function per op
(``opNN_<kind>``) called in order by ``model_run``. No malloc, no libm, no floating point.

Every loop walks its arrays by adding constant strides to offsets and pointers (no index
products), so the adder/shift/pooling/add functions contain no multiplication instruction;
:func:`shiftadd.export.toolchain.multiplications_in_object` checks that in the disassembly.
The C relies on two's-complement behaviour that every C99 compiler for these targets has
(arithmetic right shift of negative integers; conversion of out-of-range unsigned to signed);
left shifts of possibly negative values go through ``uint32_t``/``uint64_t``.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Tuple

import torch
import torch.nn as nn

from shiftadd.export.intnet import ACCUMULATING, INT32_MAX, INT32_MIN, IntegerNetwork, Op, build_integer_network

#: Op kinds whose generated functions must contain no multiplication.
MULTIPLICATION_FREE_KINDS = ("adder", "shift", "sumpool", "maxpool", "add", "relu", "pad", "pad_channels")
ALIGN = 4  # elements


def fused_requant(net: IntegerNetwork) -> Dict[int, int]:
    """{accumulating op index: index of the requantization right after it} where the accumulator
    has no other reader: the C then requantizes each output channel as soon as it is computed,
    so only one channel of int32 accumulators is ever stored."""
    readers: Dict[str, int] = {}
    for op in net.ops:
        for t in op.inputs:
            readers[t] = readers.get(t, 0) + 1
    fused = {}
    for i, op in enumerate(net.ops[:-1]):
        nxt = net.ops[i + 1]
        if op.kind in ACCUMULATING and nxt.kind == "requant" and nxt.inputs == [op.output] and readers[op.output] == 1:
            fused[i] = i + 1
    return fused


def scratch_elements(net: IntegerNetwork) -> int:
    """Size of the one-channel accumulator scratch buffer (int32 elements)."""
    shapes = [net.tensors[net.ops[i].output].shape for i in fused_requant(net)]
    return max([s[1] * s[2] for s in shapes] or [0])


def plan_arena(net: IntegerNetwork) -> Tuple[Dict[str, int], Dict[str, int]]:
    """Offsets (in elements) of every internal tensor in its arena, and each arena's size in bytes.

    Two static arenas, ``int8`` activations and ``int32`` accumulators (one typed array each, so the C
    never accesses an object through another type); tensors alive at the same time never overlap.
    The input and the logits are the caller's buffers; accumulators requantized channel by channel
    (:func:`fused_requant`) share one channel-sized scratch buffer instead."""
    fused = fused_requant(net)
    call = {j: i for i, j in fused.items()}  # a fused requantization runs inside the op before it
    first: Dict[str, int] = {}
    last: Dict[str, int] = {}
    for j, op in enumerate(net.ops):
        i = call.get(j, j)
        first.setdefault(op.output, i)
        last[op.output] = max(last.get(op.output, i), i)
        for t in op.inputs:
            last[t] = i
    offsets: Dict[str, int] = {}
    sizes: Dict[str, int] = {}
    per_channel = {net.ops[i].output for i in fused}  # never stored whole
    for dtype in ("int8", "int32"):
        internal = [t for t in first if t not in (net.input_name, net.output_name) and t not in per_channel
                    and net.tensors[t].dtype == dtype]
        internal.sort(key=lambda t: (-net.tensors[t].numel, first[t]))
        placed: List[Tuple[int, int, int, int]] = []  # (offset, end, first, last)
        for t in internal:
            size = -(-net.tensors[t].numel // ALIGN) * ALIGN
            lo, hi = first[t], last[t]
            clashes = sorted((o, e) for o, e, f, l in placed if not (l < lo or f > hi))
            off = 0
            for o, e in clashes:
                if off + size <= o:
                    break
                off = max(off, e)
            offsets[t] = off
            placed.append((off, off + size, lo, hi))
        elements = max((e for _, e, _, _ in placed), default=0)
        sizes[dtype] = elements * (1 if dtype == "int8" else 4)
    return offsets, sizes


def _array(ctype: str, name: str, values: Iterable[int]) -> str:
    vals = [str(int(v)) for v in values]
    if ctype == "int64_t":
        vals = [f"INT64_C({v})" for v in vals]
    lines = [", ".join(vals[i:i + 24]) for i in range(0, len(vals), 24)] or ["0"]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{max(len(vals), 1)}] = {{\n    {body}\n}};\n"


def _round_shift_expr(x: str, k: int) -> str:
    if k > 0:
        return f"(({x} + {1 << (k - 1)}) >> {k})"
    if k < 0:
        return f"lsl32({x}, {-k})"
    return x


class _Emitter:
    def __init__(self, net: IntegerNetwork) -> None:
        self.net = net
        self.offsets, self.arena_sizes = plan_arena(net)
        self.fused = fused_requant(net)
        self.fused_into = {r: i for i, r in self.fused.items()}
        self.scratch = scratch_elements(net)
        self.arena_bytes = sum(self.arena_sizes.values()) + 4 * self.scratch
        self.data: List[str] = []
        self.requants: List[str] = []
        self.funcs: List[str] = []
        self.calls: List[str] = []

    def ref(self, tname: str, const: bool) -> str:
        t = self.net.tensors[tname]
        if tname == self.net.input_name:
            return "input"
        if tname == self.net.output_name:
            return "logits"
        off = self.offsets[tname]
        return f"(arena8 + {off})" if t.dtype == "int8" else f"(arena32 + {off})"

    @staticmethod
    def ctype(dtype: str) -> str:
        return "int8_t" if dtype == "int8" else "int32_t"

    def emit(self) -> str:
        for i, op in enumerate(self.net.ops):
            if i in self.fused_into:  # called channel by channel from the op before it
                continue
            fname = f"op{i:02d}_{op.kind}"
            out = op.output
            if i in self.fused:
                j = self.fused[i]
                self._requant_channel(f"op{j:02d}_requant", self.net.ops[j])
                self.rq = (f"op{j:02d}_requant", self.net.ops[j])
                out = self.net.ops[j].output
            else:
                self.rq = None
            getattr(self, f"_{op.kind}")(fname, op)
            args = ", ".join([self.ref(t, True) for t in op.inputs] + [self.ref(out, False)])
            self.calls.append(f"    {fname}({args});")
        return self._file()

    def _sink(self, fname: str, op: Op, c: str) -> Tuple[str, str, str, str]:
        """(output pointer setup, per-pixel store, per-channel end, signature) of an accumulating op:
        store the int32 sums, or requantize each channel into the next op's output as soon as it is done."""
        t = self.net.tensors[op.output]
        hw = t.shape[1] * t.shape[2]
        if self.rq is None:
            return "int32_t *o = out;", "*o++ = acc;", "", self._sig(fname, op)
        rq_name, rq = self.rq
        otype = self.ctype(self.net.tensors[rq.output].dtype)
        sig = f"static MODEL_NOINLINE void {fname}(const int8_t *restrict in0, {otype} *restrict out)"
        end = f"{rq_name}(model_acc, {c}, ob); ob += {hw};"
        return f"{otype} *ob = out; int32_t *o;", "*o++ = acc;", end, sig

    # ------------------------------------------------------------------ op kinds
    def _sig(self, fname: str, op: Op) -> str:
        params = [f"const {self.ctype(self.net.tensors[t].dtype)} *restrict in{j}" for j, t in enumerate(op.inputs)]
        params.append(f"{self.ctype(self.net.tensors[op.output].dtype)} *restrict out")
        return f"static MODEL_NOINLINE void {fname}({', '.join(params)})"

    def _conv_like(self, fname: str, op: Op) -> None:
        g = op.params["geom"]
        G, cin, cout = g["groups"], g["cin"], g["cout"]
        CG, OCG = cin // G, cout // G
        H, W, OH, OW, KH, KW = g["H"], g["W"], g["OH"], g["OW"], g["kh"], g["kw"]
        (SH, SW), (PH, PW), (DH, DW) = g["stride"], g["padding"], g["dilation"]
        if PH or PW:
            raise AssertionError("conv-like ops get their padding from a pad op")
        K = CG * KH * KW
        if op.kind == "shift":  # one byte per weight: 0 = zero weight, else sign * (shift + 32)
            code = op.params["sign"].to(torch.int64) * (op.params["shift"].to(torch.int64) + 32)
            self.data.append(_array("int8_t", f"{fname}_w", code.flatten().tolist()))
            has_right = bool((op.params["shift"][op.params["sign"] != 0] < 0).any())
            shifted = ("(s >= 0 ? lsl32(x, s) : ((x + (1 << (-s - 1))) >> -s))" if has_right else "lsl32(x, s)")
            inner = (f"if (*w != 0) {{ const int32_t x = *pv; const int neg = *w < 0; "
                     f"const int s = (neg ? -*w : *w) - 32; const int32_t t = {shifted}; acc += neg ? -t : t; }}")
        else:
            self.data.append(_array("int8_t", f"{fname}_w", op.params["qweight"].flatten().tolist()))
            if op.kind == "conv":
                inner = "acc += (int32_t)*pv * (int32_t)*w;"
            else:  # adder (the zero border of the pad op costs |0 - w|, as zero padding does in the float layer)
                inner = "{ const int32_t d = (int32_t)*pv - (int32_t)*w; acc -= (d < 0) ? -d : d; }"
        setup, store, end, sig = self._sink(fname, op, "ch")
        reset = "o = model_acc;" if self.rq is not None else ""
        # Only pointer increments by constant strides: no index products for the compiler to keep.
        self.funcs.append(f"""{sig}
{{
    /* {op.kind} {cin}->{cout}, {H}x{W} -> {OH}x{OW}, kernel {KH}x{KW}, stride {SH},{SW}, dilation {DH},{DW}, groups {G} */
    enum {{ CGHW = {CG * H * W}, HW = {H * W}, SHW = {SH * W}, SW = {SW}, DHW = {DH * W}, DW = {DW}, K = {K} }};
    const int8_t *w = {fname}_w;
    const int8_t *gin = in0;
    {setup}
    int ch = 0;
    for (int gi = 0; gi < {G}; gi++, gin += CGHW) {{
        for (int oc = 0; oc < {OCG}; oc++, ch++) {{
            const int8_t *const wo = w;
            const int8_t *prow = gin;
            {reset}
            for (int oy = 0; oy < {OH}; oy++, prow += SHW) {{
                const int8_t *px = prow;
                for (int ox = 0; ox < {OW}; ox++, px += SW) {{
                    int32_t acc = 0;
                    const int8_t *pc = px;
                    w = wo;
                    for (int c = 0; c < {CG}; c++, pc += HW) {{
                        const int8_t *pu = pc;
                        for (int u = 0; u < {KH}; u++, pu += DHW) {{
                            const int8_t *pv = pu;
                            for (int v = 0; v < {KW}; v++, pv += DW, w++) {{
                                {inner}
                            }}
                        }}
                    }}
                    {store}
                }}
            }}
            {end}
        }}
    }}
}}
""")

    _conv = _adder = _shift = _conv_like

    def _requant_channel(self, fname: str, op: Op) -> None:
        """``fname(acc, c, out)``: requantize the HW accumulators of channel c."""
        p = op.params
        t = self.net.tensors[op.output]
        C, HW = t.shape[0], t.shape[1] * t.shape[2]
        otype = self.ctype(t.dtype)
        self.data.append(_array("int64_t", f"{fname}_B", p["B"].tolist()))
        n = p["n"]
        if p["mode"] == "mult":
            self.data.append(_array("int32_t", f"{fname}_M", p["M"].tolist()))
            setup = f"const int32_t m = {fname}_M[c]; const int64_t b = {fname}_B[c];"
            expr = f"((int64_t)a[i] * m + b) >> {n}"
            what = f"per-channel multiplier, >> {n}"
        elif n > 0:
            setup = f"const int64_t b = {fname}_B[c];"
            expr = f"((int64_t)a[i] + b) >> {n}"
            what = f"shift only, >> {n}"
        else:
            setup = f"const int64_t b = {fname}_B[c];"
            expr = f"lsl64((int64_t)a[i], {-n}) + b"
            what = f"shift only, << {-n}"
        lo, hi = int(p["lo"]), int(p["hi"])
        lo_s = "INT32_MIN" if lo == INT32_MIN else str(lo)
        hi_s = "INT32_MAX" if hi == INT32_MAX else str(hi)
        self.requants.append(f"""static MODEL_NOINLINE void {fname}(const int32_t *restrict a, int c, {otype} *restrict o)
{{
    /* requantize channel c of {C} ({HW} accumulators; {what}), saturate to [{lo_s}, {hi_s}] */
    {setup}
    for (int i = 0; i < {HW}; i++) {{
        int64_t v = {expr};
        if (v < {lo_s}) v = {lo_s};
        if (v > {hi_s}) v = {hi_s};
        o[i] = ({otype})v;
    }}
}}
""")

    def _requant(self, fname: str, op: Op) -> None:
        """A requantization that reads a stored accumulator tensor: every channel in turn."""
        t = self.net.tensors[op.output]
        C, HW = t.shape[0], t.shape[1] * t.shape[2]
        self._requant_channel(f"{fname}_channel", op)
        self.funcs.append(f"""{self._sig(fname, op)}
{{
    const int32_t *a = in0;
    {self.ctype(t.dtype)} *o = out;
    for (int c = 0; c < {C}; c++, a += {HW}, o += {HW}) {fname}_channel(a, c, o);
}}
""")

    def _add(self, fname: str, op: Op) -> None:
        p = op.params
        t = self.net.tensors[op.output]
        a, b = _round_shift_expr("(int32_t)in0[i]", p["ka"]), _round_shift_expr("(int32_t)in1[i]", p["kb"])
        self.funcs.append(f"""{self._sig(fname, op)}
{{
    /* residual add: operands aligned by shifts ({p['ka']}, {p['kb']}), saturate to [{p['lo']}, {p['hi']}] */
    for (int i = 0; i < {t.numel}; i++) {{
        int32_t v = {a} + {b};
        if (v < {p['lo']}) v = {p['lo']};
        if (v > {p['hi']}) v = {p['hi']};
        out[i] = (int8_t)v;
    }}
}}
""")

    def _relu(self, fname: str, op: Op) -> None:
        t = self.net.tensors[op.output]
        self.funcs.append(f"""{self._sig(fname, op)}
{{
    for (int i = 0; i < {t.numel}; i++) out[i] = in0[i] > 0 ? in0[i] : 0;
}}
""")

    def _pool(self, fname: str, op: Op, is_max: bool) -> None:
        p = op.params
        x, t = self.net.tensors[op.inputs[0]], self.net.tensors[op.output]
        C, H, W = x.shape
        _, OH, OW = t.shape
        (KH, KW), (SH, SW) = p["kernel"], p["stride"]
        PH, PW = p.get("padding", (0, 0))
        if is_max:
            init, acc_t = "-128", "int32_t"
            inner = "if (inb && in0[ro + ix] > acc) acc = in0[ro + ix];"
            store = "*o++ = (int8_t)acc;"
        else:
            init, acc_t = "0", "int32_t"
            inner = "if (inb) acc += in0[ro + ix];"
        if is_max:
            setup, end, sig, reset = "int8_t *o = out;", "", self._sig(fname, op), ""
        else:
            setup, store, end, sig = self._sink(fname, op, "c")
            reset = "o = model_acc;" if self.rq is not None else ""
        self.funcs.append(f"""{sig}
{{
    /* {'max' if is_max else 'sum'} pool {C}x{H}x{W} -> {OH}x{OW}, kernel {KH}x{KW}, stride {SH},{SW}, pad {PH},{PW} */
    enum {{ H = {H}, W = {W}, HW = {H * W}, SHW = {SH * W}, PHW = {PH * W} }};
    {setup}
    for (int c = 0, plane = 0; c < {C}; c++, plane += HW) {{
        int iy0 = -{PH}, r0 = -PHW;
        {reset}
        for (int oy = 0; oy < {OH}; oy++, iy0 += {SH}, r0 += SHW) {{
            int ix0 = -{PW};
            for (int ox = 0; ox < {OW}; ox++, ix0 += {SW}) {{
                {acc_t} acc = {init};
                int iy = iy0, ro = plane + r0;
                for (int u = 0; u < {KH}; u++, iy++, ro += W) {{
                    const int rowin = (unsigned)iy < (unsigned)H;
                    int ix = ix0;
                    for (int v = 0; v < {KW}; v++, ix++) {{
                        const int inb = rowin && (unsigned)ix < (unsigned)W;
                        {inner}
                    }}
                }}
                {store}
            }}
        }}
        {end}
    }}
}}
""")

    def _maxpool(self, fname: str, op: Op) -> None:
        self._pool(fname, op, True)

    def _sumpool(self, fname: str, op: Op) -> None:
        self._pool(fname, op, False)

    def _pad(self, fname: str, op: Op) -> None:
        x, t = self.net.tensors[op.inputs[0]], self.net.tensors[op.output]
        C, H, W = x.shape
        ph, pw = op.params["padding"]
        OW = t.shape[2]
        self.funcs.append(f"""{self._sig(fname, op)}
{{
    /* zero border of {ph},{pw} around {C}x{H}x{W} */
    const int8_t *i = in0;
    int8_t *o = out;
    for (int c = 0; c < {C}; c++) {{
        for (int k = 0; k < {ph * OW}; k++) *o++ = 0;
        for (int y = 0; y < {H}; y++) {{
            for (int k = 0; k < {pw}; k++) *o++ = 0;
            for (int k = 0; k < {W}; k++) *o++ = *i++;
            for (int k = 0; k < {pw}; k++) *o++ = 0;
        }}
        for (int k = 0; k < {ph * OW}; k++) *o++ = 0;
    }}
}}
""")

    def _pad_channels(self, fname: str, op: Op) -> None:
        p = op.params
        x, t = self.net.tensors[op.inputs[0]], self.net.tensors[op.output]
        C, H, W = x.shape
        _, OH, OW = t.shape
        s = p["stride"]
        self.funcs.append(f"""{self._sig(fname, op)}
{{
    /* option-A shortcut: subsample by {s}, {p['before']} zero channels before and {p['after']} after */
    int8_t *o = out;
    for (int i = 0; i < {p['before'] * OH * OW}; i++) *o++ = 0;
    for (int c = 0, plane = 0; c < {C}; c++, plane += {H * W})
        for (int y = 0, row = plane; y < {OH}; y++, row += {s * W})
            for (int xx = 0, col = row; xx < {OW}; xx++, col += {s}) *o++ = in0[col];
    for (int i = 0; i < {p['after'] * OH * OW}; i++) *o++ = 0;
}}
""")

    # ------------------------------------------------------------------ files
    def _file(self) -> str:
        n8, n32 = self.arena_sizes["int8"], self.arena_sizes["int32"] // 4
        return f"""/* Generated by shiftadd.export: integer inference of a trained network.
 * C99, no malloc, no libm, no floating point. See model.h and docs/deploy.md. */
#include "model.h"

#if defined(__GNUC__)
#define MODEL_NOINLINE __attribute__((noinline))
#else
#define MODEL_NOINLINE
#endif

/* x * 2^s for s >= 0 without the undefined left shift of negative values */
static inline int32_t lsl32(int32_t x, int s) {{ return (int32_t)((uint32_t)x << s); }}
static inline int64_t lsl64(int64_t x, int s) {{ return (int64_t)((uint64_t)x << s); }}

/* the activation arenas, buffer offsets planned at export time ({self.arena_bytes} bytes in all):
   int8 activations and int32 accumulators, one typed array each (no type punning); MODEL_ARENA_BYTES also counts model_acc */
{f"static int8_t arena8[{n8}];" if n8 else ""}
{f"static int32_t arena32[{n32}];" if n32 else ""}
/* one output channel of int32 accumulators, requantized as soon as it is complete */
{f"static int32_t model_acc[{self.scratch}];" if self.scratch else ""}

{''.join(self.data)}
{''.join(self.requants)}
{''.join(self.funcs)}
int model_run(const int8_t *input, int32_t *logits)
{{
{chr(10).join(self.calls)}
    return 0;
}}
"""

    def header(self) -> str:
        net = self.net
        C, H, W = net.input_shape
        return f"""/* Generated by shiftadd.export. */
#ifndef SHIFTADD_MODEL_H
#define SHIFTADD_MODEL_H

#include <stdint.h>

#define MODEL_INPUT_CHANNELS {C}
#define MODEL_INPUT_HEIGHT {H}
#define MODEL_INPUT_WIDTH {W}
#define MODEL_INPUT_SIZE {C * H * W}
/* input code = clamp(round(x * 2^MODEL_INPUT_FRAC), -127, 127), x the normalised pixel, CHW order */
#define MODEL_INPUT_FRAC {net.input_frac}
#define MODEL_NUM_CLASSES {net.num_classes}
/* logit value = logits[i] * 2^-MODEL_LOGIT_FRAC */
#define MODEL_LOGIT_FRAC {net.logit_frac}
#define MODEL_ARENA_BYTES {self.arena_bytes}

#ifdef __cplusplus
extern "C" {{
#endif

/* Runs one image; writes MODEL_NUM_CLASSES int32 logits. Returns 0. Not reentrant (one static arena). */
int model_run(const int8_t *input, int32_t *logits);

#ifdef __cplusplus
}}
#endif

#endif
"""


def generate_c(net: IntegerNetwork) -> Dict[str, str]:
    """The C sources of ``net``: ``{"model.h": ..., "model.c": ...}``."""
    em = _Emitter(net)
    source = em.emit()
    return {"model.h": em.header(), "model.c": source}


def arena_bytes(net: IntegerNetwork) -> int:
    """Bytes of the static activation buffers the generated code uses (arenas + channel scratch)."""
    return sum(plan_arena(net)[1].values()) + 4 * scratch_elements(net)


def write_c(net: IntegerNetwork, out_dir: str) -> Dict[str, str]:
    """Write model.h and model.c into ``out_dir`` (created); returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, text in generate_c(net).items():
        path = os.path.join(out_dir, name)
        with open(path, "w") as f:
            f.write(text)
        paths[name] = path
    return paths


def export_c(model: nn.Module, calib_images: torch.Tensor, out_dir: str, bits: int = 8,
             adder_range: str = "folded", calibration: str = "mse") -> IntegerNetwork:
    """Quantize ``model`` on ``calib_images`` (float, normalised) and write its C library into ``out_dir``
    (``adder_range``, ``calibration``: see :func:`~shiftadd.export.intnet.build_integer_network`).

    Returns the :class:`IntegerNetwork` the C code reproduces bit for bit."""
    net = build_integer_network(model, calib_images, bits, adder_range, calibration)
    write_c(net, out_dir)
    return net
