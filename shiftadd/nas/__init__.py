"""Hybrid neural architecture search (ShiftAddNAS, You et al., ICML 2022) for CIFAR ResNets and Transformers.

* :mod:`~shiftadd.nas.arch`: an :class:`Architecture` (one operator + width per block), YAML/JSON;
* :mod:`~shiftadd.nas.space`: the :class:`SearchSpace` (sampling, mutation, crossover, validation);
* :mod:`~shiftadd.nas.supernet`: the weight-sharing :class:`Supernet` (separate / shared / heterogeneous);
* :mod:`~shiftadd.nas.sharing`: the learnable remap and the Laplace (Wasserstein-2) regulariser;
* :mod:`~shiftadd.nas.energy_table`: energy of a candidate from a per-(block, choice) table;
* :mod:`~shiftadd.nas.scoring`: validation split of the training set, BN recalibration, accuracy;
* :mod:`~shiftadd.nas.search`: evolutionary search (energy/parameter constraints) and NSGA-II (Optuna),
  over either space;
* :mod:`~shiftadd.nas.transformer_space`: :class:`TransformerArchitecture`, :class:`TransformerSearchSpace`;
* :mod:`~shiftadd.nas.supertransformer`: the weight-sharing :class:`SuperTransformer` (HAT-style slices);
* :mod:`~shiftadd.nas.transformer_energy`: energy per sentence of a Transformer from per-layer entries;
* :mod:`~shiftadd.nas.latency`: measured CPU latency per sentence and a fitted latency predictor.

>>> from shiftadd.nas import Architecture, SearchSpace
>>> arch = SearchSpace(depth=20).sample(__import__("numpy").random.default_rng(0))
>>> model = __import__("shiftadd").models.create("hybrid-resnet20", arch=arch)
"""
from shiftadd.nas.arch import Architecture, BlockChoice, as_architecture
from shiftadd.nas.energy_table import EnergyLookup
from shiftadd.nas.scoring import SubnetScorer, TranslationLossScorer, validation_split
from shiftadd.nas.search import EvolutionConfig, evolutionary_search, pareto_search
from shiftadd.nas.sharing import PiecewiseLinearRemap, laplace_w2_distance
from shiftadd.nas.space import DEFAULT_OPS, DEFAULT_WIDTHS, SearchSpace, family_properties
from shiftadd.nas.supernet import SHARING_MODES, Supernet
from shiftadd.nas.latency import LatencyPredictor, fit_latency_predictor, measure_latency
from shiftadd.nas.supertransformer import SuperTransformer
from shiftadd.nas.transformer_energy import TransformerEnergyLookup
from shiftadd.nas.transformer_space import LayerChoice, TransformerArchitecture, TransformerSearchSpace

__all__ = [
    "Architecture", "BlockChoice", "as_architecture", "SearchSpace", "DEFAULT_OPS", "DEFAULT_WIDTHS",
    "family_properties", "Supernet", "SHARING_MODES", "PiecewiseLinearRemap", "laplace_w2_distance",
    "EnergyLookup", "SubnetScorer", "validation_split", "EvolutionConfig", "evolutionary_search", "pareto_search",
    "LayerChoice", "TransformerArchitecture", "TransformerSearchSpace", "SuperTransformer", "TransformerEnergyLookup",
    "TranslationLossScorer", "LatencyPredictor", "fit_latency_predictor", "measure_latency",
]
