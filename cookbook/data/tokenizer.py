"""Byte-level BPE tokenizer training, packing documents into fixed-length blocks, each profile's cached blocks."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from cookbook.data import sources
from cookbook.env import cache_dir, quiet_progress

__all__ = ["EOS", "PAD", "blocks_for_profile", "for_profile", "load", "pack", "train", "trained"]

EOS = "<|endoftext|>"
PAD = "<|pad|>"
# Bytes per token of Python source with the profiles' BPE vocabularies (3.55 measured on the environment corpus
# with 8192 tokens): the first guess of how much text a token cap needs, re-measured as packing goes.
_BYTES_PER_TOKEN = 3.6
_BATCH = 1000  # documents per packing batch: the tail of each one that fills no block is dropped


def train(texts, vocab_size: int = 4096, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style: no unknown tokens) on an iterable of strings."""
    if vocab_size < 257 + 2:
        raise ValueError(f"vocab_size must exceed the 256 byte tokens + 2 specials, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is a token: nothing is ever unknown
        show_progress=False,
    )
    seen = 0

    def counted():
        nonlocal seen
        for text in texts:
            seen += bool(text)
            yield text

    tok.train_from_iterator(counted(), trainer=trainer)
    if not seen:
        raise ValueError("tokenizer training saw no text")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=EOS)


def load(folder: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved with `save_pretrained`."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").exists():
        raise FileNotFoundError(f"no tokenizer.json in {folder}")
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def trained(ds: datasets.Dataset, vocab_size: int, cache: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Train on `ds["text"]` once and reuse it: the result is cached under a key of the texts and vocab size."""
    digest = hashlib.sha256(str(vocab_size).encode())
    for text in ds["text"]:
        digest.update(text.encode("utf-8", "surrogatepass"))
    key = digest.hexdigest()[:12]
    folder = Path(cache or cache_dir()) / f"tokenizer-{vocab_size}-{key}"
    if (folder / "tokenizer.json").exists():
        return load(folder)
    tok = train(ds["text"], vocab_size)
    # one temporary folder per process: ranks of a node (or nodes sharing a filesystem) that train at once must
    # not write into each other's files; the first to finish publishes, the others keep that one
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    tok.save_pretrained(str(tmp))
    try:
        tmp.replace(folder)  # atomic: a half-written tokenizer is never picked up
    except OSError:  # another process published first (a non-empty folder cannot be replaced): keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        return load(folder)
    return tok


def _cutter(eos: int, block_size: int):
    """A batch of tokenized documents (an Arrow table) -> the full blocks of their EOS-joined token stream."""

    def cut(batch: pa.Table) -> pa.Table:
        docs = batch.column("ids").combine_chunks()
        lengths = docs.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
        stream = np.full(int(lengths.sum()) + len(lengths), eos, dtype=np.int64)
        is_token = np.ones(len(stream), dtype=bool)
        is_token[np.cumsum(lengths + 1) - 1] = False  # the EOS after each document
        stream[is_token] = docs.flatten().to_numpy(zero_copy_only=False)
        n = len(stream) // block_size * block_size
        offsets = pa.array(np.arange(0, n + 1, block_size, dtype=np.int32))
        return pa.table({"input_ids": pa.ListArray.from_arrays(offsets, pa.array(stream[:n]))})

    return cut


def pack(ds: datasets.Dataset, tokenizer, block_size: int, num_proc: int | None = None) -> datasets.Dataset:
    """Tokenize documents, join them with EOS separators and cut the stream into `block_size` blocks.

    The tail that does not fill a block is dropped (per batch of 1000 documents), so every block is full
    and no padding is needed. Deterministic: same input, same blocks, whatever `num_proc` (the processes
    that tokenize; the cutting is one vectorised pass).
    """
    packed, tokens = _pack(ds, tokenizer, block_size, num_proc)
    if len(packed) == 0:  # said here, not later as "Columns ['input_ids'] not in the dataset"
        raise _no_block(len(ds), tokens, block_size)
    return packed


def _pack(ds: datasets.Dataset, tokenizer, block_size: int, num_proc: int | None):
    """`pack` without the check: (blocks, tokens of `ds` with their EOS separators)."""
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; packing needs a document separator")
    ids = ds.map(lambda batch: {"ids": tokenizer(batch["text"], add_special_tokens=False)["input_ids"]},
                 batched=True, remove_columns=ds.column_names, num_proc=num_proc, desc="tokenizing")
    packed = ids.with_format("arrow").map(_cutter(eos, block_size), batched=True, batch_size=_BATCH,
                                          remove_columns=["ids"], desc=f"packing {block_size}").with_format(None)
    tokens = pc.sum(pc.list_value_length(ids.data.column("ids"))).as_py() or 0
    return packed, tokens + len(ids)


def _no_block(documents: int, tokens: int, block_size: int) -> ValueError:
    return ValueError(f"{documents} document(s) of {tokens} tokens (EOS separators included) fill no block of "
                      f"{block_size} tokens (the tail of each batch of {_BATCH} documents is dropped); use a "
                      "smaller block_size or more text")


def for_profile(profile, ds: datasets.Dataset | None = None) -> PreTrainedTokenizerFast:
    """The profile's tokenizer (cached): `vocab_size` BPE on `tokenizer_fraction` of the corpus's training split.

    The corpus is the profile's (`sources.for_profile`: the stdlib sample or the environment corpus) unless
    `ds` is given. Every notebook and `train.pretrained` go through here, so they all share one tokenizer.
    """
    ds = sources.for_profile(profile) if ds is None else ds
    return trained(sources.split(ds, fraction=profile.data.tokenizer_fraction)["train"], profile.data.vocab_size)


def _hash_order(part: datasets.Dataset) -> datasets.Dataset:
    """Documents in a fixed pseudo-random order of their paths: any prefix samples every package."""
    keys = [hashlib.sha1(path.encode()).digest() for path in part["path"]]
    return part.select(sorted(range(len(part)), key=keys.__getitem__))


def _pack_capped(part: datasets.Dataset, tok, seq_len: int, max_tokens: int, num_proc: int | None):
    """The first `max_tokens // seq_len` blocks of `part` in hash order, tokenizing only what they need.

    Pieces start at multiples of the packing batch, so they give exactly the blocks of one `pack` call.
    """
    part, need = _hash_order(part), max(1, max_tokens // seq_len)
    ends = np.cumsum(part["bytes"])
    pieces, blocks, start, per_token, tokens = [], 0, 0, _BYTES_PER_TOKEN, 0
    while blocks < need and start < len(part):
        # documents for the missing blocks at `per_token` bytes per token (+10%), then re-measure the rate
        target = (ends[start - 1] if start else 0) + 1.1 * (need - blocks) * seq_len * per_token
        end = min(len(part), -(-(int(np.searchsorted(ends, target)) + 1) // _BATCH) * _BATCH)
        piece, count = _pack(part.select(range(start, end)), tok, seq_len, num_proc)
        pieces.append(piece)
        blocks, start, tokens = blocks + len(piece), end, tokens + count
        per_token = ends[start - 1] / tokens
    packed = datasets.concatenate_datasets(pieces)
    if len(packed) == 0:
        raise _no_block(len(part), tokens, seq_len)
    return packed.select(range(min(need, len(packed))))


def blocks_for_profile(profile, tok, ds: datasets.Dataset | None = None,
                       num_proc: int | None = None) -> datasets.DatasetDict:
    """Train/validation blocks of the profile's `seq_len` from `data_fraction` of its corpus, cached.

    With `max_train_tokens` set, the training side is a hash-ordered sample of the documents capped at that
    many tokens (the validation side is hash-ordered too, so its first batches span every held-out
    package). The blocks are saved under `cookbook.env.cache_dir()`, keyed by the texts, the tokenizer and
    the sizes, so every notebook of a profile reuses one tokenization. `num_proc` tokenizes in parallel.
    """
    ds = sources.for_profile(profile) if ds is None else ds
    parts = sources.split(ds, fraction=profile.data.data_fraction)
    seq_len, cap = profile.data.seq_len, profile.data.max_train_tokens
    digest = hashlib.sha256(f"{seq_len}\0{cap}\0{_BATCH}\0".encode())
    digest.update(tok.backend_tokenizer.to_str().encode())
    for name, part in parts.items():
        digest.update(f"\0{name}\0".encode())
        for text in part["text"]:
            digest.update(text.encode("utf-8", "surrogatepass"))
    folder = cache_dir() / f"blocks-{seq_len}-{digest.hexdigest()[:12]}"
    if (folder / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(folder))
    if cap is None:
        blocks = datasets.DatasetDict({name: pack(part, tok, seq_len, num_proc) for name, part in parts.items()})
    else:
        blocks = datasets.DatasetDict(train=_pack_capped(parts["train"], tok, seq_len, cap, num_proc),
                                      validation=pack(_hash_order(parts["validation"]), tok, seq_len, num_proc))
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    with quiet_progress():
        blocks.save_to_disk(str(tmp))
    try:
        tmp.replace(folder)  # atomic: half-written blocks are never picked up
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(folder))
