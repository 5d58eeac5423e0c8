"""Operation counting and hardware-energy estimates for any model.

>>> from shiftadd.energy import profile
>>> p = profile(model, (1, 3, 32, 32), platform="fpga", fmt="fix32")
>>> print(p.format_table())

* :func:`count_ops` (:mod:`~shiftadd.energy.recorder`) counts, per layer, the multiplications,
  additions, shifts, absolute values and comparisons of inference and of training (forward, input and weight
  gradients, quantizers, adaptive learning rate, optimizer update) into the records of
  :mod:`~shiftadd.energy.records`, with the cost rules of :mod:`~shiftadd.energy.rules`
  (:func:`register_cost_rule` / :func:`cost_rule` per module type, or a module's own ``op_counts``;
  :func:`function_rule` per torch function name).
* :func:`evaluate` / :func:`profile` price them with a platform table
  (``asic45nm``, ``fpga_zc706`` or a user YAML file), compute and data movement apart.
* :func:`training_energy` estimates the energy of a training run; :func:`plot_profile`
  draws a stacked bar chart.
"""
from shiftadd.energy.costs import EnergyTable, Entry, list_platforms, load_table, parse_table
from shiftadd.energy.recorder import count_ops
from shiftadd.energy.records import LayerOps, OpCounts
from shiftadd.energy.rules import (
    OPTIMIZER_OPS, CostRule, FunctionCall, LayerCall, cost_rule, find_cost_rule, function_rule, register_cost_rule,
)
from shiftadd.energy.profile import (
    EnergyProfile, LayerEnergy, RunEnergy, evaluate, format_energy, profile, training_energy,
)


def plot_profile(*args, **kwargs):
    """Stacked bar chart of energy per layer and operation type (see shiftadd.energy.plot)."""
    from shiftadd.energy.plot import plot_profile as _plot

    return _plot(*args, **kwargs)


__all__ = [
    "count_ops", "evaluate", "profile", "training_energy", "plot_profile", "load_table", "list_platforms",
    "parse_table", "EnergyTable", "Entry", "OpCounts", "LayerOps", "EnergyProfile", "LayerEnergy", "RunEnergy",
    "format_energy", "OPTIMIZER_OPS", "CostRule", "LayerCall", "FunctionCall", "cost_rule", "register_cost_rule",
    "find_cost_rule", "function_rule",
]
