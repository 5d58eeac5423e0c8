"""Energy of zoo models in every operator family, on every platform: the tables of docs/energy.md.

    python -m shiftadd.energy.summary [--models resnet20,vgg-small] [--img docs/img]

prints markdown tables (energy and saving against op=conv, inference and one training step,
batch 1, compute apart from data movement) and writes the figures.
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Optional, Sequence, Tuple

from shiftadd.energy.recorder import count_ops
from shiftadd.energy.records import OpCounts
from shiftadd.energy.profile import EnergyProfile, evaluate, format_energy

CONFIGS: Tuple[Tuple[str, str], ...] = (("asic45nm", "fp32"), ("asic45nm", "fix32"), ("asic45nm", "fix8"),
                                        ("fpga_zc706", "fp32"), ("fpga_zc706", "fix32"), ("fpga_zc706", "fix8"))
SHORT = {"asic45nm": "ASIC", "fpga_zc706": "FPGA"}


def family_counts(model: str, ops: Sequence[str], input_shape: Sequence[int] = (1, 3, 32, 32),
                  **options) -> Dict[str, OpCounts]:
    """Operation counts of ``model`` built in each family of ``ops`` (zoo defaults + ``options``)."""
    from shiftadd.models import create

    return {op: count_ops(create(model, op=op, **options), input_shape) for op in ops}


def markdown_table(counts: Dict[str, OpCounts], training: bool, configs: Sequence[Tuple[str, str]] = CONFIGS,
                   memory: Optional[str] = "sram", baseline: str = "conv") -> str:
    """Rows: families; columns: platform/format; cells: compute energy and saving vs ``baseline``."""
    head = ["op"] + [f"{SHORT.get(p, p)} {f.upper()}" for p, f in configs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = {cfg: evaluate(counts[baseline], cfg[0], cfg[1], training, memory) for cfg in configs}
    for op, c in counts.items():
        cells = [f"`{op}`"]
        for cfg in configs:
            p = evaluate(c, cfg[0], cfg[1], training, memory)
            if op == baseline:
                cells.append(format_energy(p.compute_pj))
            else:  # energy change against the baseline: -80% = 80% saved
                cells.append(f"{format_energy(p.compute_pj)} ({-100 * p.saving(base[cfg]):+.0f}%)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(counts: Dict[str, OpCounts], platform: str, fmt: str, training: bool,
                 baseline: str = "conv") -> str:
    """Compute vs data movement at each memory level, with the saving including data movement."""
    lines = ["| op | compute | + SRAM traffic | saving incl. SRAM | + DRAM traffic | saving incl. DRAM |",
             "|---|---|---|---|---|---|"]
    b_s = evaluate(counts[baseline], platform, fmt, training, "sram")
    b_d = evaluate(counts[baseline], platform, fmt, training, "dram")
    for op, c in counts.items():
        s = evaluate(c, platform, fmt, training, "sram")
        d = evaluate(c, platform, fmt, training, "dram")
        lines.append(f"| `{op}` | {format_energy(s.compute_pj)} | {format_energy(s.memory_pj)} | "
                     f"{100 * s.saving(b_s, True):.0f}% | {format_energy(d.memory_pj)} | {100 * d.saving(b_d, True):.0f}% |")
    return "\n".join(lines)


def breakdown(p: EnergyProfile) -> str:
    """Share of compute energy by layer kind and by role, one line each."""
    total = p.compute_pj or 1.0
    kinds = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(p.kind_energy_pj().items(),
                                                                        key=lambda kv: -kv[1]) if v / total >= 0.005)
    roles = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(p.role_energy_pj().items(),
                                                                        key=lambda kv: -kv[1]) if v / total >= 0.005)
    ops = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(p.op_energy_pj().items(),
                                                                      key=lambda kv: -kv[1]) if v / total >= 0.005)
    return f"by kind: {kinds}; by role: {roles}; by operation: {ops}"


def main(argv: Optional[List[str]] = None) -> int:
    from shiftadd.nn.families import families, family_names

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,vgg-small")
    ap.add_argument("--img", default=None, help="folder for the figures (none when omitted)")
    args = ap.parse_args(argv)
    for model in args.models.split(","):
        counts = family_counts(model, family_names())
        conv = counts["conv"]
        print(f"\n### {model}\n")
        print(f"conv: {conv.macs() / 1e6:.2f} M multiply-accumulates per image, {conv.params:,} parameters\n")
        for training in (False, True):
            print(f"#### {model}, {'one training step' if training else 'inference'} (one image, compute)\n")
            print(markdown_table(counts, training))
            print()
        sign = family_counts(model, [f.name for f in families(has_adder=True)], grad_mode="sign")
        sign = {"conv": conv, **{f"{k} (sign grad)": v for k, v in sign.items()}}
        print(f"#### {model}, one training step with sign gradients in the adder layers\n")
        print(markdown_table(sign, True))
        print()
        for training in (False, True):
            print(f"#### {model}, data movement, FPGA FIX32, {'training step' if training else 'inference'}\n")
            print(memory_table(counts, "fpga_zc706", "fix32", training))
            print()
        for op in ("adder", "shiftadd"):
            for training in (False, True):
                for plat, fmt in (("asic45nm", "fp32"), ("fpga_zc706", "fix32")):
                    p = evaluate(counts[op], plat, fmt, training)
                    print(f"- {model}/{op} {'training' if training else 'inference'} {plat} {fmt}: {breakdown(p)}")
        print()
        if args.img:
            from shiftadd.energy.plot import plot_panels, plot_profile

            for plat, fmt in (("asic45nm", "fp32"), ("fpga_zc706", "fix32")):
                panels = [(scope, [evaluate(c, plat, fmt, training, label=op) for op, c in counts.items()])
                          for scope, training in (("inference", False), ("one training step", True))]
                path = f"{args.img}/energy_{model}_{plat}_{fmt}.png"
                plot_panels(panels, path, f"{model}: energy per image by operator family, {plat} {fmt}, "
                                          "data movement at SRAM")
                print(f"figure: {path}")
            p = evaluate(counts["shiftadd"], "fpga_zc706", "fix32", False, label=f"{model}/shiftadd")
            path = f"{args.img}/energy_{model}_shiftadd_layers_fpga_fix32.png"
            plot_profile(p, path)
            print(f"figure: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
