"""Machine translation as a trainer task (``TrainConfig.task = "translation"``).

Multi30k (:mod:`shiftadd.data.text`) in the language pair ``src_lang`` -> ``tgt_lang``, the joint
SentencePiece vocabulary (trained once on the training split and cached; a copy goes into every
checkpoint, so a run translates without the cache), length-bucketed token batches of at most
``max_tokens`` padded tokens, label-smoothed cross-entropy normalised per target token, and the
recipe "transformer" (Adam (0.9, 0.98) with inverse-square-root warm-up per step). The loop
(:mod:`shiftadd.train.loop`) adds checkpoints, exact resume, the NaN guard and the metrics files.

Evaluation: loss per target token (teacher forcing) and detokenised sacreBLEU. The primary metric
is **validation BLEU** with greedy decoding, after every epoch (model selection uses the
validation split only); the test-2016 split is translated once at the end with beam search
(``beam``, ``length_penalty``), for the final and the best-validation model. ``subset`` keeps the
first N training pairs, ``val_split`` the first N validation pairs (quicker per-epoch BLEU),
``test_subset`` the first N test pairs.

Batches reach the loop as one tensor ``x = [src | tgt_in]`` (B, S + T) and ``y = tgt_out``
(B, T), so data-parallel processes can take slices along dim 0 like image batches.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from shiftadd.errors import DataError, UserError
from shiftadd.train import distributed as D
from shiftadd.train.config import TrainConfig
from shiftadd.train.task import TaskData, register_task

#: Splits of the Multi30k layout, by the names the trainer uses.
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class TranslationSplit:
    """One split: its text (for BLEU), its token ids (for batches) and the shared tokenizer."""

    name: str
    text: Any        # shiftadd.data.text.ParallelText
    data: Any        # shiftadd.data.text.TranslationData
    tokenizer: Any   # shiftadd.data.text.SubwordTokenizer

    def __len__(self) -> int:
        return len(self.data)

    def to(self, device: Union[str, torch.device]) -> "TranslationSplit":
        return self  # batches are built on the CPU and moved by TranslationTask.batch


class TranslationLoader:
    """Token batches of a split (:class:`shiftadd.data.text.TokenBatchLoader`) that remember the split,
    for BLEU, and the beam width it is evaluated with (1: greedy)."""

    def __init__(self, split: TranslationSplit, max_tokens: int, shuffle: bool, seed: int, beam: int,
                 length_penalty: float) -> None:
        from shiftadd.data.text import TokenBatchLoader

        self.split, self.beam, self.length_penalty = split, int(beam), float(length_penalty)
        # every process builds the same global batches; the loop gives each its slice
        self.batches = TokenBatchLoader(split.data, max_tokens, shuffle=shuffle, seed=seed, even_shards=False)

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches)


def pack(batch: Any, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: ``x = cat(src, tgt_in)`` along time, ``y = tgt_out`` (see :func:`unpack`)."""
    x = torch.cat([batch.src, batch.tgt_in], dim=1)
    return x.to(device, non_blocking=True), batch.tgt_out.to(device, non_blocking=True)


def unpack(x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(src, tgt_in)`` of a packed batch (``tgt_in`` has the length of ``y``)."""
    s = x.shape[1] - y.shape[1]
    return x[:, :s], x[:, s:]


def tokenizer_to_meta(tokenizer: Any) -> str:
    """The SentencePiece model (protobuf bytes) as base64 text, for a JSON checkpoint."""
    return base64.b64encode(tokenizer.model_proto).decode("ascii")


def tokenizer_from_meta(meta: Dict[str, Any], where: str = "the checkpoint") -> Any:
    """The tokenizer saved by :meth:`TranslationTask.data_meta`."""
    from shiftadd.data.text import SubwordTokenizer

    text = (meta.get("dataset") or {}).get("subword_model")
    if not text:
        raise UserError(f"{where} holds no subword vocabulary; is it a translation run?")
    try:
        return SubwordTokenizer(base64.b64decode(text))
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"{where}: the saved subword vocabulary cannot be read ({exc})") from None


class TranslationTask:
    """Sequence-to-sequence translation on Multi30k: label-smoothed CE per token, BLEU (sacreBLEU)."""

    metric = "bleu"
    higher_is_better = True
    train_metric = "acc"  # next-token accuracy under teacher forcing
    unit = "sentences"
    min_batch = 1  # no BatchNorm: a batch of one sentence is fine
    rate = ("tokens_per_second", "tok/s")

    @staticmethod
    def format_metric(value: float) -> str:
        return f"{value:.2f}"

    @staticmethod
    def describe_batch(config: TrainConfig) -> str:
        return f"batches of {config.max_tokens} tokens, {config.src_lang}->{config.tgt_lang}"

    # ---- data
    def tokenizer(self, config: TrainConfig) -> Any:
        from shiftadd.data.text import joint_tokenizer

        return joint_tokenizer(config.src_lang, config.tgt_lang, config.vocab_size, data_dir=config.data_dir)

    def load_split(self, config: TrainConfig, name: str, tokenizer: Any, limit: Optional[int] = None,
                   max_len: Optional[int] = None) -> TranslationSplit:
        """Split ``name`` of the run's data (the first ``limit`` pairs), encoded with ``tokenizer``."""
        from shiftadd.data.text import TranslationData, load_parallel

        text = load_parallel(name, config.src_lang, config.tgt_lang, config.data_dir)
        if limit is not None and limit < len(text):
            text = text.subset(limit)
        data = TranslationData.from_text(text, tokenizer, max_len)
        if len(data) == 0:
            raise DataError(f"no {name} sentence pair fits in {max_len} tokens")
        return TranslationSplit(name, text, data, tokenizer)

    def load(self, config: TrainConfig, data: Optional[Tuple[Any, Any]] = None) -> TaskData:
        from shiftadd.models.transformer import TransformerConfig

        if data is not None:
            raise UserError("the translation task loads Multi30k itself; pre-loaded data sets are not supported")
        tok = self.tokenizer(config)
        positions = int(config.model_options.get("max_positions", TransformerConfig.max_positions))
        train = self.load_split(config, "train", tok, config.subset, max_len=positions)
        val = self.load_split(config, "val", tok, config.val_split)
        test = self.load_split(config, "test", tok, config.test_subset)
        return TaskData(train, val, test)

    def model_dims(self, data: TaskData) -> Dict[str, Any]:
        return {"num_classes": None, "from_data": {"vocab_size": data.train.tokenizer.vocab_size}}

    def data_meta(self, config: TrainConfig, data: TaskData) -> Dict[str, Any]:
        return {"name": config.dataset, "src_lang": config.src_lang, "tgt_lang": config.tgt_lang,
                "vocab_size": data.train.tokenizer.vocab_size, "train_size": len(data.train),
                "val_size": len(data.val), "test_size": len(data.test),
                "subword_model": tokenizer_to_meta(data.train.tokenizer)}

    def loader(self, ds: TranslationSplit, config: TrainConfig, batch_size: int, seed: int, shuffle: bool = False,
               augment: bool = False) -> TranslationLoader:
        """Token batches of ``config.max_tokens`` (``batch_size`` is not used); the test split is
        evaluated with beam search, the others greedily."""
        beam = config.beam if ds.name == "test" else 1
        return TranslationLoader(ds, config.max_tokens, shuffle, seed, beam, config.length_penalty)

    # ---- training
    def batch(self, batch: Any, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        return pack(batch, device)

    def count(self, targets: torch.Tensor) -> int:
        from shiftadd.data.text import PAD_ID

        return int(targets.ne(PAD_ID).sum())

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
             config: TrainConfig) -> Tuple[torch.Tensor, torch.Tensor]:
        from shiftadd.data.text import PAD_ID
        from shiftadd.seq.loss import label_smoothed_cross_entropy

        src, tgt_in = unpack(inputs, targets)
        logits = model(src, tgt_in)
        loss_sum, _, ntok = label_smoothed_cross_entropy(logits, targets, config.label_smoothing, PAD_ID)
        with torch.no_grad():
            keep = targets.ne(PAD_ID)
            correct = int((logits.argmax(-1).eq(targets) & keep).sum())
        return loss_sum, torch.tensor([loss_sum.item(), correct, ntok], dtype=torch.float64)

    # ---- evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, device: torch.device, info: D.DistInfo,
                 config: TrainConfig) -> Dict[str, float]:
        """Loss per target token (label-smoothed, as trained; ``nll`` without smoothing) and BLEU of the
        decoded split (greedy, or beam search for a loader with ``beam`` > 1); each process decodes a
        slice of every batch."""
        from shiftadd.data.text import PAD_ID
        from shiftadd.decode import beam_search, greedy_decode
        from shiftadd.metrics import corpus_bleu
        from shiftadd.seq.loss import label_smoothed_cross_entropy

        if not isinstance(loader, TranslationLoader):
            raise TypeError("TranslationTask.evaluate needs a loader made by TranslationTask.loader")
        split = loader.split
        was_training = model.training
        model.eval()
        stats = torch.zeros(3, dtype=torch.float64)  # smoothed loss, nll, tokens
        hyps: Dict[int, str] = {}
        try:
            for batch in loader:
                src, tgt_in, tgt_out, index = batch.src, batch.tgt_in, batch.tgt_out, batch.index
                if info.enabled:
                    src, tgt_in, tgt_out, index = (torch.tensor_split(t, info.world_size)[info.rank]
                                                   for t in (src, tgt_in, tgt_out, index))
                    if len(index) == 0:
                        continue
                src, tgt_in, tgt_out = src.to(device), tgt_in.to(device), tgt_out.to(device)
                logits = model(src, tgt_in)
                loss, nll, ntok = label_smoothed_cross_entropy(logits, tgt_out, config.label_smoothing, PAD_ID)
                stats += torch.tensor([loss.item(), nll.item(), ntok], dtype=torch.float64)
                if loader.beam > 1:
                    out = beam_search(model, src, loader.beam, loader.length_penalty)
                else:
                    out = greedy_decode(model, src)
                for i, ids in zip(index.tolist(), out):
                    hyps[i] = split.tokenizer.decode(ids)
        finally:
            model.train(was_training)
        D.all_reduce_sum(stats, info)
        for part in D.gather_objects(hyps, info) or [hyps]:
            hyps.update(part)
        order = sorted(hyps)
        bleu = corpus_bleu([hyps[i] for i in order], [split.text.tgt[i] for i in order])
        n = max(stats[2].item(), 1.0)
        return {"loss": stats[0].item() / n, "nll": stats[1].item() / n, "bleu": bleu, "n": len(order),
                "tokens": int(stats[2].item())}


register_task("translation", TranslationTask)


# --------------------------------------------------------------------------- using a trained run
def load_translation_run(path: str, device: str = "cpu") -> Tuple[nn.Module, Any, TrainConfig, Any]:
    """``(model, tokenizer, config, checkpoint)`` of the translation run saved in ``path`` (eval mode)."""
    from shiftadd.train.runs import load_trained_model

    model, config, saved = load_trained_model(path, device)
    if config.task != "translation":
        raise UserError(f"{path} is a {config.task} run, not a translation run")
    return model, tokenizer_from_meta(saved.meta, path), config, saved


def evaluate_translation_run(path: str, split: str = "test", beam: Optional[int] = None,
                             length_penalty: Optional[float] = None, data_dir: Optional[str] = None,
                             device: str = "auto", limit: Optional[int] = None,
                             max_tokens: Optional[int] = None) -> Dict[str, Any]:
    """BLEU (and loss per token) of the run in ``path`` on ``split`` ("test" = test-2016 or "val"),
    decoded with ``beam`` (default: the run's beam for test, greedy for val); ``limit``: first N pairs."""
    if split not in ("val", "test"):
        raise UserError(f"unknown split {split!r}; choose val or test")
    model, tok, config, saved = load_translation_run(path, device)
    if data_dir is not None:
        config.data_dir = data_dir
    task = TranslationTask()
    ds = task.load_split(config, split, tok, limit)
    width = beam if beam is not None else (config.beam if split == "test" else 1)
    if width < 1:
        raise UserError(f"--beam must be >= 1, got {width}")
    lp = config.length_penalty if length_penalty is None else float(length_penalty)
    loader = TranslationLoader(ds, max_tokens or config.max_tokens, False, config.seed, width, lp)
    res = task.evaluate(model, loader, next(model.parameters()).device, D.DistInfo(), config)
    res.update({"split": split, "beam": width, "length_penalty": lp, "epoch": saved.epoch, "model": config.model,
                "preset": config.model_options.get("preset", "transformer"),
                "pair": f"{config.src_lang}-{config.tgt_lang}"})
    return res


def translate_lines(path: str, lines: Sequence[str], beam: int = 5, length_penalty: Optional[float] = None,
                    device: str = "cpu", max_tokens: int = 4096) -> List[str]:
    """Detokenised translations of ``lines`` by the run in ``path`` (empty lines stay empty)."""
    from shiftadd.seq.training import translate

    if beam < 1:
        raise UserError(f"--beam must be >= 1, got {beam}")
    model, tok, config, _ = load_translation_run(path, device)
    lp = config.length_penalty if length_penalty is None else float(length_penalty)
    keep = [i for i, s in enumerate(lines) if s.strip()]
    out = [""] * len(lines)
    if keep:
        for i, t in zip(keep, translate(model, tok, [lines[i].strip() for i in keep], beam, lp, max_tokens)):
            out[i] = t
    return out


__all__ = ["TranslationTask", "TranslationSplit", "TranslationLoader", "pack", "unpack", "load_translation_run",
           "evaluate_translation_run", "translate_lines", "tokenizer_from_meta", "tokenizer_to_meta"]
