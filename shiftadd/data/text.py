"""Parallel text for translation: Multi30k, a joint SentencePiece subword vocabulary, and
length-bucketed token batches with DDP sharding.

    pairs = load_parallel("train", "en", "de")                    # the shared Multi30k by default
    tok = joint_tokenizer("en", "de", vocab_size=8000)            # trained once, then cached
    data = TranslationData.from_text(pairs, tok)
    for batch in TokenBatchLoader(data, max_tokens=4096, shuffle=True, seed=0): ...

Multi30k layout (any folder with it works): gzipped UTF-8 files, one sentence per line,
line-aligned across languages: ``train.{en,de,fr}.gz`` (29,000), ``val.*.gz`` (1,014),
``test_2016_flickr.*.gz`` (1,000). Default folder: ``$SHIFTADD_MULTI30K``, else
``../shared/data/multi30k`` next to the project root.

The subword model is stored in ``<cache>/subword/`` (see :func:`shiftadd.data.cache_dir`) under a
key of the training files' paths, sizes and modification times and the options, so it is trained
once per data set and rebuilt when the data change. It is a SentencePiece model file (protobuf,
no pickle). Token ids: pad 0, bos 1, eos 2, unk 3.
"""
from __future__ import annotations

import contextlib
import gzip
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

from shiftadd.data import cache
from shiftadd.errors import DataError

PathLike = Union[str, "os.PathLike[str]"]
MULTI30K_ENV = "SHIFTADD_MULTI30K"
#: Split name -> file stem of the Multi30k layout.
SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


def default_multi30k_dir() -> Path:
    """``$SHIFTADD_MULTI30K`` or ``<project root>/../shared/data/multi30k``."""
    env = os.environ.get(MULTI30K_ENV)
    if env:
        return Path(env).expanduser()
    return (Path(__file__).resolve().parents[2].parent / "shared" / "data" / "multi30k").resolve()


def split_file(data_dir: Optional[PathLike], split: str, lang: str) -> Path:
    """The file of ``split`` ("train", "val", "test") in language ``lang``; DataError if missing."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    root = Path(data_dir).expanduser() if data_dir else default_multi30k_dir()
    if not root.is_dir():
        raise DataError(f"Multi30k folder {root} does not exist (pass --data-dir DIR or set {MULTI30K_ENV})")
    path = root / f"{SPLITS[split]}.{lang}.gz"
    if not path.is_file():
        raise DataError(f"{path} is missing: a Multi30k folder holds {{train,val,test_2016_flickr}}.<lang>.gz")
    return path


def read_lines(path: Path) -> List[str]:
    """The stripped lines of a gzipped (or plain) UTF-8 text file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:  # type: ignore[operator]
            return [line.rstrip("\n").strip() for line in handle]
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


@dataclass
class ParallelText:
    """Line-aligned sentences of one split in two languages."""

    src: List[str]
    tgt: List[str]
    src_lang: str
    tgt_lang: str
    split: str = ""

    def __len__(self) -> int:
        return len(self.src)

    def subset(self, n: int) -> "ParallelText":
        """The first ``n`` pairs."""
        return ParallelText(self.src[:n], self.tgt[:n], self.src_lang, self.tgt_lang, self.split)


def load_parallel(split: str, src_lang: str = "en", tgt_lang: str = "de",
                  data_dir: Optional[PathLike] = None) -> ParallelText:
    """Load ``split`` of a Multi30k-layout folder as sentence pairs (DataError if misaligned)."""
    if src_lang == tgt_lang:
        raise DataError(f"source and target language are both {src_lang!r}")
    a_path, b_path = split_file(data_dir, split, src_lang), split_file(data_dir, split, tgt_lang)
    a, b = read_lines(a_path), read_lines(b_path)
    if len(a) != len(b):
        raise DataError(f"{a_path} has {len(a)} lines but {b_path} has {len(b)}: the files must be line-aligned")
    if not a:
        raise DataError(f"{a_path} is empty")
    return ParallelText(a, b, src_lang, tgt_lang, split)


# --------------------------------------------------------------------------- subword vocabulary
def _spm():
    from shiftadd.metrics import require

    return require("sentencepiece")


class SubwordTokenizer:
    """A SentencePiece model: ``encode(text) -> ids`` and ``decode(ids) -> text`` (detokenised).

    Ids: pad 0, bos 1, eos 2, unk 3; ``encode`` adds no bos/eos, ``decode`` drops them.
    """

    def __init__(self, model_proto: bytes) -> None:
        spm = _spm()
        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (self.sp.pad_id(), self.sp.bos_id(),
                                                              self.sp.eos_id(), self.sp.unk_id())

    @property
    def vocab_size(self) -> int:
        return int(self.sp.get_piece_size())

    def encode(self, text: str) -> List[int]:
        return list(self.sp.encode(text))

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return [list(ids) for ids in self.sp.encode(list(texts))]

    def decode(self, ids: Sequence[int]) -> str:
        special = (self.pad_id, self.bos_id, self.eos_id)
        return self.sp.decode([int(i) for i in ids if int(i) not in special])

    @classmethod
    def train(cls, sentences: Iterable[str], vocab_size: int = 8000, model_type: str = "unigram",
              character_coverage: float = 1.0, seed: int = 0) -> "SubwordTokenizer":
        """Train a SentencePiece model (``model_type`` "unigram" or "bpe") on ``sentences``.

        ``vocab_size`` is an upper bound: a small corpus gets a smaller vocabulary.
        """
        spm = _spm()
        if model_type not in ("unigram", "bpe"):
            raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
        import io

        buf = io.BytesIO()
        spm.set_random_generator_seed(int(seed))
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter([s for s in sentences if s]), model_writer=buf, vocab_size=int(vocab_size),
            model_type=model_type, character_coverage=character_coverage, hard_vocab_limit=False,
            pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID, num_threads=1, minloglevel=2)
        return cls(buf.getvalue())

    def save(self, path: PathLike) -> None:
        Path(path).write_bytes(self.model_proto)

    @classmethod
    def load(cls, path: PathLike) -> "SubwordTokenizer":
        p = Path(path)
        if not p.is_file():
            raise DataError(f"subword model {p} does not exist")
        try:
            return cls(p.read_bytes())
        except RuntimeError as exc:
            raise DataError(f"{p} is not a SentencePiece model: {exc}") from None


def joint_tokenizer(src_lang: str = "en", tgt_lang: str = "de", vocab_size: int = 8000,
                    model_type: str = "unigram", data_dir: Optional[PathLike] = None,
                    use_cache: bool = True) -> SubwordTokenizer:
    """The joint source/target subword vocabulary of the training split, trained once and cached."""
    files = [split_file(data_dir, "train", lang) for lang in (src_lang, tgt_lang)]
    key = cache.key_of("subword", tuple(cache.file_signature(f) for f in files), vocab_size, model_type)
    name = f"multi30k-{src_lang}-{tgt_lang}-{key}.model"
    folder = cache.cache_dir() / "subword"

    def build() -> SubwordTokenizer:
        pairs = load_parallel("train", src_lang, tgt_lang, data_dir)
        return SubwordTokenizer.train(pairs.src + pairs.tgt, vocab_size, model_type)

    if not use_cache:
        return build()
    path = folder / name
    if path.is_file():
        with contextlib.suppress(DataError):
            return SubwordTokenizer.load(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return build()
    with cache.file_lock(folder / f".{name}.lock"):
        if path.is_file():
            with contextlib.suppress(DataError):
                return SubwordTokenizer.load(path)
        tok = build()
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}-", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(tok.model_proto)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return tok


# --------------------------------------------------------------------------- token batches
class TranslationBatch(NamedTuple):
    """``src`` (B, S) = ids + eos; ``tgt_in`` (B, T) = bos + ids; ``tgt_out`` (B, T) = ids + eos (all
    padded with 0); ``index`` (B,) positions of the pairs in the data set."""

    src: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    index: torch.Tensor

    @property
    def target_tokens(self) -> int:
        return int(self.tgt_out.ne(PAD_ID).sum())


@dataclass
class TranslationData:
    """Token ids of sentence pairs (no bos/eos; the batches add them)."""

    src: List[List[int]]
    tgt: List[List[int]]

    def __len__(self) -> int:
        return len(self.src)

    @classmethod
    def from_text(cls, text: ParallelText, tokenizer: SubwordTokenizer, max_len: Optional[int] = None) -> "TranslationData":
        """Encode ``text``; with ``max_len`` drop pairs where a side has more than ``max_len`` - 1 tokens."""
        src, tgt = tokenizer.encode_batch(text.src), tokenizer.encode_batch(text.tgt)
        if max_len is not None:
            keep = [i for i in range(len(src)) if len(src[i]) < max_len and len(tgt[i]) < max_len]
            src, tgt = [src[i] for i in keep], [tgt[i] for i in keep]
        return cls(src, tgt)

    def lengths(self) -> np.ndarray:
        """Padded length of each pair in a batch: max(len(src), len(tgt)) + 1 (eos or bos)."""
        return np.array([max(len(a), len(b)) + 1 for a, b in zip(self.src, self.tgt)], dtype=np.int64)

    def collate(self, indices: Sequence[int]) -> TranslationBatch:
        idx = list(indices)
        S = max(len(self.src[i]) for i in idx) + 1
        T = max(len(self.tgt[i]) for i in idx) + 1
        src = torch.full((len(idx), S), PAD_ID, dtype=torch.long)
        tgt_in = torch.full((len(idx), T), PAD_ID, dtype=torch.long)
        tgt_out = torch.full((len(idx), T), PAD_ID, dtype=torch.long)
        for row, i in enumerate(idx):
            a, b = self.src[i], self.tgt[i]
            src[row, : len(a) + 1] = torch.tensor(a + [EOS_ID])
            tgt_in[row, : len(b) + 1] = torch.tensor([BOS_ID] + b)
            tgt_out[row, : len(b) + 1] = torch.tensor(b + [EOS_ID])
        return TranslationBatch(src, tgt_in, tgt_out, torch.tensor(idx, dtype=torch.long))


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF]).generate_state(1)[0])


class TokenBatchLoader:
    """Batches of pairs of similar length, each with at most ``max_tokens`` padded tokens per side.

    The pairs are sorted by length (ties in a random order when ``shuffle``) and cut greedily
    into batches; with ``shuffle`` the batch order is drawn anew each epoch from (seed, epoch),
    see :meth:`set_epoch`. DDP sharding (``rank``, ``world_size``): every rank builds the same
    batch list, it is cut to a multiple of ``world_size`` (with ``even_shards``, the default
    for training, so that every rank runs the same number of steps) and rank r takes batches
    r, r + world_size, ...; ``even_shards=False`` keeps every batch (for evaluation).
    A pair longer than ``max_tokens`` gets a batch of its own.
    """

    def __init__(self, data: TranslationData, max_tokens: int = 4096, shuffle: bool = False, seed: int = 0,
                 rank: int = 0, world_size: int = 1, even_shards: bool = True) -> None:
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if len(data) == 0:
            raise ValueError("no sentence pairs to batch")
        self.data, self.max_tokens, self.shuffle, self.seed = data, max_tokens, bool(shuffle), int(seed)
        self.rank, self.world_size, self.even_shards = rank, world_size, bool(even_shards)
        self.epoch = 0
        self._lengths = data.lengths()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self) -> List[List[int]]:
        """This rank's batches (lists of pair indices) for the current epoch."""
        rng = np.random.default_rng(_epoch_seed(self.seed, self.epoch))
        order = rng.permutation(len(self._lengths)) if self.shuffle else np.arange(len(self._lengths))
        order = order[np.argsort(self._lengths[order], kind="stable")]
        batches: List[List[int]] = []
        current: List[int] = []
        for i in order.tolist():
            longest = self._lengths[i]  # sorted by length: the newest pair is the longest
            if current and longest * (len(current) + 1) > self.max_tokens:
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        if self.shuffle:
            batches = [batches[k] for k in rng.permutation(len(batches))]
        if self.world_size > 1:
            if self.even_shards:
                if len(batches) < self.world_size:
                    raise ValueError(f"{len(batches)} batches cannot be split into {self.world_size} equal shards")
                batches = batches[: len(batches) - len(batches) % self.world_size]
            batches = batches[self.rank::self.world_size]
        return batches

    def __len__(self) -> int:
        return len(self.batches())

    def __iter__(self) -> Iterator[TranslationBatch]:
        for idx in self.batches():
            yield self.data.collate(idx)


__all__ = ["SPLITS", "PAD_ID", "BOS_ID", "EOS_ID", "UNK_ID", "ParallelText", "SubwordTokenizer", "TranslationBatch",
           "TranslationData", "TokenBatchLoader", "default_multi30k_dir", "joint_tokenizer", "load_parallel",
           "read_lines", "split_file"]
