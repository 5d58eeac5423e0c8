"""Energy (and parameters) of a candidate from a table counted once per (block, choice).

A block's cost depends only on its own choice (its channels and stride are fixed by the stage,
its width multiplier scales only its inner channels), so each (block, choice) is priced once with
:func:`shiftadd.energy.profile` of that block alone, on its input size, and a candidate's energy is
the sum of its blocks' entries plus the fixed part (stem, pooling, classifier). This equals
``profile(create("hybrid-resnet..", arch=a))`` of the built network up to float rounding, for
networks whose bit-shift weights are all non-zero (a zero shift weight costs nothing in
:mod:`shiftadd.energy`, so the table is an upper bound for pruned or trained-to-zero shifts).
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from shiftadd.errors import UserError
from shiftadd.nas.arch import Architecture, BlockChoice
from shiftadd.nas.space import SearchSpace
from shiftadd.utils import atomic_write_json

PJ_PER_UJ = 1e6


def _key(c: BlockChoice) -> str:
    return f"{c.op}@{c.width:g}"


class EnergyLookup:
    """Per-(block, choice) inference energy of one sample (pJ) and parameters, for ``space``."""

    def __init__(self, space: SearchSpace, platform: str = "asic45nm", fmt: str = "fp32",
                 memory: Optional[str] = "sram", image_size: int = 32, in_channels: int = 3,
                 num_classes: int = 10) -> None:
        from shiftadd.energy import load_table

        table = load_table(platform)  # validates the platform and the format: one-line UserError
        table.format(fmt)
        self.space, self.platform, self.fmt, self.memory = space, table.name, fmt, memory
        self.table_space = space  # the space the table was counted for (``space`` may be narrowed)
        self.image_size, self.in_channels, self.num_classes = int(image_size), int(in_channels), int(num_classes)
        self.block_pj: List[Dict[str, float]] = []
        self.block_params: List[Dict[str, int]] = []
        self.fixed_pj, self.fixed_params = 0.0, 0
        self._build(platform)

    def _profile(self, module, shape, platform) -> Tuple[float, int]:
        from shiftadd.energy import profile

        p = profile(module, shape, platform=platform, fmt=self.fmt, memory=self.memory)
        return p.total_pj, sum(t.numel() for t in module.parameters())

    def _build(self, platform: str) -> None:
        from shiftadd.models.hybrid import make_block

        res = self.image_size
        for slot in self.space.slots:
            pj, params = {}, {}
            for c in self.space.choices(slot.index):
                block = make_block(c.op, slot.in_planes, slot.planes, slot.stride, c.width)
                pj[_key(c)], params[_key(c)] = self._profile(block, (1, slot.in_planes, res, res), platform)
            self.block_pj.append(pj)
            self.block_params.append(params)
            res = (res - 1) // slot.stride + 1
        ref = Architecture(tuple(self.space.choices(s.index)[0] for s in self.space.slots))
        total_pj, total_params = self._profile(self.build(ref), self.input_shape, platform)
        self.fixed_pj = total_pj - sum(self.block_pj[i][_key(c)] for i, c in enumerate(ref.blocks))
        self.fixed_params = total_params - sum(self.block_params[i][_key(c)] for i, c in enumerate(ref.blocks))

    @property
    def input_shape(self) -> Tuple[int, int, int, int]:
        return (1, self.in_channels, self.image_size, self.image_size)

    def build(self, arch: Architecture):
        """The stand-alone network of ``arch`` (what this table prices)."""
        from shiftadd.models.hybrid import HybridResNet

        return HybridResNet(arch, self.num_classes, self.in_channels, self.space.base_width)

    # ---- lookups
    def block_energies_pj(self, arch: Architecture) -> List[float]:
        self.space.validate(arch)
        return [self.block_pj[i][_key(c)] for i, c in enumerate(arch.blocks)]

    def energy_pj(self, arch: Architecture) -> float:
        """Inference energy of one sample (pJ): fixed part + the table entry of every block."""
        return self.fixed_pj + sum(self.block_energies_pj(arch))

    def energy_uj(self, arch: Architecture) -> float:
        return self.energy_pj(arch) / PJ_PER_UJ

    def params(self, arch: Architecture) -> int:
        self.space.validate(arch)
        return self.fixed_params + sum(self.block_params[i][_key(c)] for i, c in enumerate(arch.blocks))

    def min_params(self) -> int:
        """Parameters of the smallest network of the space."""
        return self.fixed_params + sum(min(p.values()) for p in self.block_params)

    def extreme(self, cheapest: bool = True) -> Architecture:
        """The cheapest (or most expensive) architecture of the space: per block the min (max) entry."""
        pick = min if cheapest else max
        return Architecture(tuple(pick(self.space.choices(i), key=lambda c, i=i: self.block_pj[i][_key(c)])
                                  for i in range(self.space.num_blocks)))

    def narrowed(self, space: Any) -> "EnergyLookup":
        """This table for a sub-space of its space (:func:`shiftadd.nas.space.restrict_space`): the
        entries and settings are the table's, the extremes and the budget check range over ``space``."""
        new = copy.copy(self)
        new.space = space
        return new

    def check_budget(self, budget_uj: Optional[float]) -> None:
        """One-line UserError when no architecture of the space fits ``budget_uj``."""
        if budget_uj is None:
            return
        low = self.energy_uj(self.extreme(True))
        if budget_uj < low:
            raise UserError(f"energy budget {budget_uj:g} uJ is below the cheapest network of the space "
                            f"({low:.4g} uJ on {self.platform}/{self.fmt}); raise --energy-budget")

    def breakdown(self, arch: Architecture) -> List[Dict[str, Any]]:
        """Per-block rows (block, stage, op, width, energy_pj, share) plus the fixed part."""
        total = self.energy_pj(arch)
        rows = [{"block": "stem+classifier", "stage": "-", "op": "conv", "width": 1.0,
                 "energy_pj": self.fixed_pj, "share": self.fixed_pj / total}]
        for (slot, c), e in zip(zip(self.space.slots, arch.blocks), self.block_energies_pj(arch)):
            rows.append({"block": str(slot.index), "stage": str(slot.stage + 1), "op": c.op, "width": c.width,
                         "energy_pj": e, "share": e / total})
        return rows

    # ---- persistence (a JSON cache: counting the table takes seconds)
    def settings(self) -> Dict[str, Any]:
        return {"space": self.table_space.as_dict(), "platform": self.platform, "format": self.fmt,
                "memory": self.memory, "image_size": self.image_size, "in_channels": self.in_channels,
                "num_classes": self.num_classes}

    def as_dict(self) -> Dict[str, Any]:
        return {"settings": self.settings(), "fixed_pj": self.fixed_pj, "fixed_params": self.fixed_params,
                "block_pj": self.block_pj, "block_params": self.block_params}

    def save(self, path: str) -> None:
        atomic_write_json(path, self.as_dict(), indent=None)

    @classmethod
    def cached(cls, path: Optional[str], space: SearchSpace, platform: str = "asic45nm", fmt: str = "fp32",
               memory: Optional[str] = "sram", image_size: int = 32, in_channels: int = 3,
               num_classes: int = 10) -> "EnergyLookup":
        """Load the table from ``path`` if it was counted with the same settings, else count (and save) it."""
        from shiftadd.energy import load_table

        want = {"space": space.as_dict(), "platform": load_table(platform).name, "format": fmt, "memory": memory,
                "image_size": int(image_size), "in_channels": int(in_channels), "num_classes": int(num_classes)}
        if path and os.path.isfile(path):
            with open(path) as f:
                data = json.load(f)
            if data.get("settings") == want:
                t = cls.__new__(cls)
                t.space, t.platform, t.fmt, t.memory = space, want["platform"], fmt, memory
                t.table_space = space
                t.image_size, t.in_channels, t.num_classes = want["image_size"], want["in_channels"], want["num_classes"]
                t.fixed_pj, t.fixed_params = data["fixed_pj"], data["fixed_params"]
                t.block_pj, t.block_params = data["block_pj"], data["block_params"]
                return t
        table = cls(space, platform, fmt, memory, image_size, in_channels, num_classes)
        if path:
            table.save(path)
        return table
