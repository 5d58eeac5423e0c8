"""Translation pieces: label-smoothed loss, Adam with inverse-sqrt warm-up, a minimal training
loop, translation of raw sentences and BLEU evaluation.

Data and vocabulary: :mod:`shiftadd.data.text`; model: :mod:`shiftadd.models.transformer`;
decoding: :mod:`shiftadd.decode`; BLEU: :mod:`shiftadd.metrics`.
"""
from shiftadd.seq.loss import label_smoothed_cross_entropy
from shiftadd.seq.schedule import adam_inverse_sqrt, inverse_sqrt_factor
from shiftadd.seq.training import evaluate_bleu, train_steps, translate

__all__ = ["label_smoothed_cross_entropy", "adam_inverse_sqrt", "inverse_sqrt_factor", "train_steps", "translate",
           "evaluate_bleu"]
